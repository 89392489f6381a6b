"""``latexport bench``: measured latency against keep_ratio, side by side.

Every variant (latexport at each ratio, and the plain exports with
``--baseline``) runs in the same process, interleaved round-robin, and the
figures are medians after warm-up.  A short pause before each timed call
lets the previous session's spinning worker threads go idle; without it a
session's threads steal the CPU from the next session's call (measured: a
plain export read 7% slower right after a latexport run than after a pause).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnxruntime as ort

from latexport.bench.memory import measure_peak_memory
from latexport.runtime.atomic import save_figure_atomic
from latexport.runtime.errors import InvalidInputError
from latexport.runtime.estimate import estimated_batch_speedup, estimated_speedup
from latexport.runtime.metadata import ModelMetadata
from latexport.runtime.session import (
    MODEL_FILE,
    choose_providers,
    load_session,
    read_metadata,
)
from latexport.runtime.timing import interleaved, make_feed, session_options

DEFAULT_RATIOS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)


@dataclass
class Measurement:
    name: str
    variant: str  # "latexport", "latexport+int8-dynamic", "plain (optimum)", ...
    keep_ratio: Optional[float]
    median_ms: float
    p90_ms: float
    throughput: float
    speedup_vs_full: Optional[float] = None
    speedup_vs_baseline: Optional[float] = None
    estimated_speedup: Optional[float] = None
    peak_mib: Optional[float] = None
    working_mib: Optional[float] = None
    #: ``row_ratios``: the ratio of each row of the batch (``keep_ratio`` is then their highest).
    row_ratios: Optional[list[float]] = None


@dataclass
class BenchResult:
    model_dir: str
    provider: str
    seq_len: int
    batch: int
    threads: int
    repeats: int
    baseline_names: list[str]
    fastest_baseline: Optional[str]
    rows: list[Measurement] = field(default_factory=list)
    #: Baselines asked for that this environment cannot export, with the reason.
    skipped_baselines: dict[str, str] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    #: The timed file's task (a text2text-generation file is its encoder).
    task: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def variant_label(metadata: ModelMetadata) -> str:
    """'latexport', or 'latexport+fusions+int8-dynamic' for an optimized file."""
    return "+".join(["latexport", *metadata.optimizations])


def bench(
    model_dir: Path,
    seq_len: int = 128,
    batch: int = 1,
    keep_ratios: tuple[float, ...] = DEFAULT_RATIOS,
    provider: str = "cpu",
    baselines: tuple[str, ...] = (),
    checkpoint: Optional[str] = None,
    repeats: int = 20,
    warmup: int = 2,
    threads: int = 0,
    mixed_lengths: bool = False,
    memory: bool = True,
    compare: tuple[Path, ...] = (),
    row_ratios: tuple[float, ...] = (),
    memory_arena: bool = True,
) -> BenchResult:
    """Time ``model_dir`` at each ratio; ``baselines`` name plain exporters (see ``latexport.export.baseline``)
    applied to ``checkpoint`` (default: the checkpoint the model was converted from); ``compare``
    names other latexport directories (an int8 or fused variant) timed at the same ratios.
    ``row_ratios`` adds one call per file whose rows run at these ratios in turn (one per row):
    its latency follows its widest row, and its estimate says so (``estimated_batch_speedup``).
    ``memory_arena=False`` gives every session memory back after each call (``session_options``).

    Speedups "vs 1.0" are against the same file at keep_ratio 1.0 (plain exports: against
    ``model_dir`` at 1.0), "vs plain" against the fastest baseline.  With ``memory``, each
    variant's peak memory is then measured in a fresh process (``latexport.bench.memory``), after
    all timing is done.
    """
    providers = choose_providers(provider)
    models = []  # (label, path, session, metadata), the main model first
    for directory in (model_dir, *compare):
        path = Path(directory) / MODEL_FILE
        session = load_session(path, providers, session_options(threads, memory_arena))
        metadata = read_metadata(session, path)
        label = variant_label(metadata)
        if label in {existing[0] for existing in models}:
            label = f"{label} ({Path(directory).name})"
        models.append((label, path, session, metadata))
    main_label, _, _, metadata = models[0]
    if seq_len > metadata.max_length:
        raise InvalidInputError(f"--seq-len {seq_len} exceeds the model's maximum of {metadata.max_length}")
    feed = make_feed(metadata, batch, seq_len, mixed_lengths)

    calls: dict[str, Callable[[], object]] = {}
    # What a fresh process needs to repeat each call (for the memory figures).
    recipes: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}
    # name -> (variant, keep_ratio, metadata of the latexport file, None for plain exports)
    kinds: dict[str, tuple[str, Optional[float], Optional[ModelMetadata]]] = {}
    # name -> the ratio of each row, for the ``row_ratios`` calls
    per_row_ratios: dict[str, list[float]] = {}
    baseline_names, skipped = [], {}
    if baselines:
        from latexport.export.baseline import baseline_path, unavailable_reason

        source = checkpoint or metadata.source
        if not source:
            raise InvalidInputError("this model does not record its source checkpoint; pass --checkpoint for the baseline")
        for exporter in baselines:
            reason = unavailable_reason(exporter)
            if reason is not None:
                skipped[f"plain ({exporter})"] = reason
                continue
            plain_path = baseline_path(source, metadata.task, exporter)
            plain = load_session(plain_path, providers, session_options(threads, memory_arena))
            plain_inputs = {i.name for i in plain.get_inputs()}
            plain_feed = {name: value for name, value in feed.items() if name in plain_inputs}
            name = f"plain ({exporter})"
            baseline_names.append(name)
            calls[name] = lambda s=plain, f=plain_feed: s.run(None, f)
            recipes[name] = (plain_path, plain_feed)
            kinds[name] = (name, None, None)
    for label, path, session, model_metadata in models:
        for ratio in keep_ratios:
            name = f"{label} {ratio:g}"
            ratio_feed = {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)}
            calls[name] = lambda s=session, f=ratio_feed, o=model_metadata.output_name: s.run([o], f)
            recipes[name] = (path, ratio_feed)
            kinds[name] = (label, ratio, model_metadata)
        if row_ratios:
            per_row = np.array([row_ratios[row % len(row_ratios)] for row in range(batch)], dtype=np.float32)
            name = f"{label} rows {'/'.join(f'{r:g}' for r in row_ratios)}"
            rows_feed = {**feed, "keep_ratio": per_row}
            calls[name] = lambda s=session, f=rows_feed, o=model_metadata.output_name: s.run([o], f)
            recipes[name] = (path, rows_feed)
            kinds[name] = (label, float(per_row.max()), model_metadata)
            per_row_ratios[name] = per_row.tolist()

    # The estimate of a per-row call reads each row's own length (all equal unless --mixed-lengths).
    row_lengths = feed["attention_mask"].sum(axis=1).tolist()
    times = interleaved(calls, repeats, warmup)
    memory_figures = (
        {name: measure_peak_memory(model_path, call_feed, providers, threads) for name, (model_path, call_feed) in recipes.items()}
        if memory
        else {}
    )
    medians = {name: float(np.median(values)) for name, values in times.items()}
    # "vs 1.0" compares each latexport file with itself at keep_ratio 1 (what the FLOPs
    # estimate predicts); plain exports are compared with the main file at 1.
    full_of = {label: medians.get(f"{label} 1") for label, *_ in models}
    fastest = min(baseline_names, key=lambda name: medians[name]) if baseline_names else None
    result = BenchResult(
        model_dir=str(model_dir),
        provider=provider,
        seq_len=seq_len,
        batch=batch,
        threads=threads,
        repeats=repeats,
        baseline_names=baseline_names,
        fastest_baseline=fastest,
        skipped_baselines=skipped,
        task=metadata.task,
        environment={
            "onnxruntime": ort.__version__,
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "mixed_lengths": mixed_lengths,
            "compared": [str(directory) for directory in compare],
        },
    )
    for name, values in times.items():
        variant, ratio, model_metadata = kinds[name]
        median = medians[name]
        rows_ratios = per_row_ratios.get(name)
        result.rows.append(
            Measurement(
                name=name,
                variant=variant,
                keep_ratio=ratio,
                median_ms=median * 1000,
                p90_ms=float(np.percentile(values, 90)) * 1000,
                throughput=batch / median,
                speedup_vs_full=_ratio(full_of.get(variant, full_of[main_label]), median),
                speedup_vs_baseline=medians[fastest] / median if fastest else None,
                estimated_speedup=(
                    None if model_metadata is None
                    else estimated_batch_speedup(model_metadata.flops, model_metadata.profile, row_lengths, rows_ratios)
                    if rows_ratios else estimated_speedup(model_metadata.flops, model_metadata.profile, seq_len, ratio)
                ),
                row_ratios=rows_ratios,
                peak_mib=memory_figures[name].peak_mib if name in memory_figures else None,
                working_mib=memory_figures[name].working_mib if name in memory_figures else None,
            )
        )
    return result


def render(result: BenchResult) -> str:
    lines = [
        f"{result.model_dir}: batch {result.batch}, sequence {result.seq_len}, provider {result.provider}, "
        f"threads {result.threads or 'auto'}, {result.repeats} interleaved repeats (medians)"
        + (f"; 'vs plain' is against the fastest plain export, {result.fastest_baseline}" if result.fastest_baseline else ""),
        f"{'variant':<36} {'median ms':>10} {'p90 ms':>9} {'seq/s':>8} {'vs 1.0':>7} {'vs plain':>9} {'estimate':>9} {'of est.':>8}"
        f" {'peak MiB':>9} {'working':>8}",
    ]
    for row in result.rows:
        of_estimate = (
            row.speedup_vs_full / row.estimated_speedup if row.speedup_vs_full and row.estimated_speedup else None
        )
        lines.append(
            f"{row.name:<36} {row.median_ms:>10.2f} {row.p90_ms:>9.2f} {row.throughput:>8.1f} "
            f"{_cell(row.speedup_vs_full, '6.2f', 'x'):>7} {_cell(row.speedup_vs_baseline, '8.2f', 'x'):>9} "
            f"{_cell(row.estimated_speedup, '8.2f', 'x'):>9} {_cell(of_estimate, '7.0%', ''):>8}"
            f" {_cell(row.peak_mib, '9.0f', ''):>9} {_cell(row.working_mib, '8.0f', ''):>8}"
        )
    lines.extend(f"skipped {name}: {reason}" for name, reason in result.skipped_baselines.items())
    return "\n".join(lines)


def _ratio(reference: Optional[float], median: float) -> Optional[float]:
    return reference / median if reference else None


def _cell(value: Optional[float], spec: str, suffix: str) -> str:
    return "-" if value is None else format(value, spec).strip() + suffix


def plot(result: BenchResult, path: Path, title: Optional[str] = None) -> None:
    """Measured and estimated speedup against keep_ratio (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [row for row in result.rows if row.keep_ratio is not None]
    variants = list(dict.fromkeys(row.variant for row in timed))
    figure, axis = plt.subplots(figsize=(6.8, 4.4))
    main_rows = [row for row in timed if row.variant == variants[0]]
    ratios = [row.keep_ratio for row in main_rows]
    axis.plot(ratios, [row.estimated_speedup for row in main_rows], "--", marker="o", label="estimate (FLOPs model)")
    for variant in variants:
        rows = [row for row in timed if row.variant == variant]
        axis.plot([row.keep_ratio for row in rows], [row.speedup_vs_full for row in rows], marker="s",
                  label=f"{variant}, measured vs itself at 1.0")
        if result.fastest_baseline:
            axis.plot([row.keep_ratio for row in rows], [row.speedup_vs_baseline for row in rows], marker="^",
                      linestyle=":", label=f"{variant}, measured vs {result.fastest_baseline}")
    axis.set_xscale("log")
    axis.set_xlabel("keep_ratio (log scale)")
    axis.set_ylabel("speedup")
    axis.invert_xaxis()
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title or f"batch {result.batch}, sequence {result.seq_len}, {result.provider}")
    figure.tight_layout()
    save_figure_atomic(figure, path)
