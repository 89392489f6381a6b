"""``latexport inspect``: what a model file is, and what a keep_ratio does to it.

Reads only the file's metadata; prints the per-layer kept counts for one
sequence length and the FLOPs-model speedup (formula in ``latexport.runtime.estimate``),
or, for a batch whose rows have their own lengths and ratios, each row's counts
and the batch's, which follow its widest row.  Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from latexport.runtime.estimate import (
    estimated_batch_speedup,
    estimated_speedup,
    layer_counts,
    padded_batch_counts,
)
from latexport.runtime.metadata import ModelMetadata
from latexport.runtime.session import MODEL_FILE, load_session, read_metadata


def load_metadata(model_dir: Path) -> ModelMetadata:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    path = Path(model_dir) / MODEL_FILE
    return read_metadata(load_session(path, ["CPUExecutionProvider"], options), path)


@dataclass
class Plan:
    seq_len: int
    keep_ratio: float
    counts: list[tuple[int, int]]
    estimated_speedup: float


def plan(metadata: ModelMetadata, seq_len: int, keep_ratio: float) -> Plan:
    return Plan(
        seq_len=seq_len,
        keep_ratio=keep_ratio,
        counts=layer_counts(metadata.profile, seq_len, keep_ratio),
        estimated_speedup=estimated_speedup(metadata.flops, metadata.profile, seq_len, keep_ratio),
    )


def render(metadata: ModelMetadata, seq_len: int, keep_ratio: float) -> str:
    chosen = plan(metadata, seq_len, keep_ratio)
    profile = metadata.profile
    lines = [
        f"latexport version   {metadata.version}",
        f"family / task       {metadata.family} / {metadata.task}"
        + (f" ({metadata.problem_type})" if metadata.problem_type else "")
        + (f", {metadata.pooling} pooling" if metadata.pooling else ""),
        f"inputs -> output    {', '.join(metadata.input_names)} -> {describe_outputs(metadata)}",
        f"labels              {', '.join(metadata.labels) if metadata.labels else '-'}",
        f"max length          {metadata.max_length}",
        f"profile             {profile.describe()}",
        f"which survive       {metadata.scoring.describe()}",
        f"default keep_ratio  {metadata.default_keep_ratio:g}",
        f"graph variant       {' + '.join(metadata.optimizations) or 'float32, unfused'}",
    ]
    if metadata.generation is not None:
        graphs = [metadata.generation[name] for name in ("decoder", "decoder_with_past") if name in metadata.generation]
        lines.append(f"decoder graphs      {', '.join(graphs)} (the estimates below are the prompt pass's)")
    lines += [
        "",
        f"At keep_ratio {keep_ratio:g} and {seq_len} tokens:",
        f"{'layer':>5} {'entering':>9} {'kept':>6}",
    ]
    for layer, (entering, kept) in enumerate(chosen.counts, start=1):
        lines.append(f"{layer:>5} {entering:>9} {kept:>6}")
    lines.append(f"estimated speedup (FLOPs model): {chosen.estimated_speedup:.2f}x")
    lines.append("")
    lines.append(f"{'keep_ratio':>10} {'est. speedup':>13} {'kept by last layer':>19}")
    for ratio in (1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01):
        row = plan(metadata, seq_len, ratio)
        lines.append(f"{ratio:>10g} {row.estimated_speedup:>12.2f}x {row.counts[-1][1]:>19}")
    return "\n".join(lines)


def render_batch(metadata: ModelMetadata, seq_lens: list[int], keep_ratios: list[float]) -> str:
    """Kept counts per layer of each row and of the padded batch, and their estimated speedups.

    Each row alone would run at its own estimate; in the batch every layer is as
    wide as its widest row, so the batch's estimate is what its latency follows.
    """
    rows = [plan(metadata, length, ratio) for length, ratio in zip(seq_lens, keep_ratios)]
    batch_counts = padded_batch_counts(metadata.profile, seq_lens, keep_ratios)
    header = " ".join(f"{f'row {i} kept':>11}" for i in range(len(rows)))
    lines = [
        f"A batch of {len(rows)} rows: " + ", ".join(f"{p.seq_len} tokens at {p.keep_ratio:g}" for p in rows),
        f"{'layer':>5} {header} {'batch width':>12}",
    ]
    for layer, (_, width) in enumerate(batch_counts):
        cells = " ".join(f"{p.counts[layer][1]:>11}" for p in rows)
        lines.append(f"{layer + 1:>5} {cells} {width:>12}")
    alone = ", ".join(f"{p.estimated_speedup:.2f}x" for p in rows)
    batch = estimated_batch_speedup(metadata.flops, metadata.profile, seq_lens, keep_ratios)
    lines.append(f"estimated speedup alone, per row: {alone}")
    lines.append(f"estimated speedup of the batch (follows its widest row in every layer): {batch:.2f}x")
    return "\n".join(lines)


def describe_outputs(metadata: ModelMetadata) -> str:
    if metadata.task == "text-generation":
        return f"{metadata.output_name}, present.{{0..{metadata.profile.num_layers - 1}}}.{{key,value,mask}}"
    return ", ".join(metadata.output_names)
