"""``latexport bench`` for generation: end-to-end generation against keep_ratio.

Each call runs the pruned prompt pass at the ratio (an encoder-decoder's
encoder and first decoder step, which computes every layer's cross-attention
keys and values from the kept states; a decoder-only model's prefill), then
``new_tokens - 1`` cached steps.  </s> is suppressed
so every call decodes the same number of tokens.  Ratios are interleaved in
shuffled rounds after a warm-up, as in ``latexport.bench.encoder``, and the figures
are medians: total latency, time to the first token, encoder time and the
decoding rate after the first token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort

from latexport.runtime.atomic import save_figure_atomic
from latexport.runtime.estimate import estimated_speedup
from latexport.runtime.generation import open_generator
from latexport.runtime.timing import interleaved, make_feed

DEFAULT_RATIOS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)


@dataclass
class GenerationMeasurement:
    keep_ratio: float
    #: Word-vectors the last layer kept (encoder) or attends to (decoder-only cache).
    kept: int
    median_total_ms: float
    median_first_token_ms: float
    median_prompt_ms: float
    #: Tokens per second after the first token (the cached decoding steps).
    decode_tokens_per_s: float
    total_speedup: float = 1.0
    first_token_speedup: float = 1.0
    #: The FLOPs model's speedup of the pruned prompt pass (the encoder, or the prefill).
    estimated_prompt_speedup: float = 1.0


@dataclass
class GenerationBenchResult:
    model_dir: str
    provider: str
    prompt_tokens: int
    batch: int
    new_tokens: int
    threads: int
    repeats: int
    rows: list[GenerationMeasurement] = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def bench_generation(
    model_dir: Path,
    prompt_tokens: int = 512,
    new_tokens: int = 32,
    batch: int = 1,
    keep_ratios: tuple[float, ...] = DEFAULT_RATIOS,
    provider: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    threads: int = 0,
) -> GenerationBenchResult:
    """Time generation from random ``prompt_tokens``-token prompts at each ratio (module doc)."""
    generator = open_generator(model_dir, provider=provider, intra_op_threads=threads)
    metadata = generator.session.metadata
    feed = make_feed(metadata, batch, prompt_tokens, mixed_lengths=False)
    ratios = tuple(dict.fromkeys((1.0, *keep_ratios)))
    runs: dict[str, list] = {f"{ratio:g}": [] for ratio in ratios}

    def call(ratio: float) -> None:
        runs[f"{ratio:g}"].append(generator.generate_ids(feed, ratio, new_tokens, min_new_tokens=new_tokens))

    times = interleaved({f"{ratio:g}": (lambda r=ratio: call(r)) for ratio in ratios}, repeats, warmup)
    result = GenerationBenchResult(
        model_dir=str(model_dir), provider=provider, prompt_tokens=prompt_tokens, batch=batch, new_tokens=new_tokens,
        threads=threads, repeats=repeats, environment={"onnxruntime": ort.__version__},
    )
    for ratio in ratios:
        timed = runs[f"{ratio:g}"][warmup:]
        total = float(np.median(times[f"{ratio:g}"])) * 1e3
        first = float(np.median([run.first_token_ms for run in timed]))
        decoding = [(run.total_ms - run.first_token_ms) / 1e3 for run in timed]
        result.rows.append(
            GenerationMeasurement(
                keep_ratio=ratio,
                kept=int(timed[0].kept_tokens[0]),
                median_total_ms=total,
                median_first_token_ms=first,
                median_prompt_ms=float(np.median([run.prompt_ms for run in timed])),
                decode_tokens_per_s=batch * (new_tokens - 1) / float(np.median(decoding)) if new_tokens > 1 else float("nan"),
                estimated_prompt_speedup=estimated_speedup(metadata.flops, metadata.profile, prompt_tokens, ratio),
            )
        )
    full = result.rows[0]
    for row in result.rows:
        row.total_speedup = full.median_total_ms / row.median_total_ms
        row.first_token_speedup = full.median_first_token_ms / row.median_first_token_ms
    return result


def render_generation(result: GenerationBenchResult) -> str:
    lines = [
        f"{result.model_dir}: generation, batch {result.batch}, prompt {result.prompt_tokens} tokens, "
        f"{result.new_tokens} new tokens, provider {result.provider}, threads {result.threads or 'auto'}, "
        f"{result.repeats} interleaved repeats (medians)",
        f"{'keep_ratio':>10} {'kept':>5} {'prompt ms':>10} {'1st token ms':>13} {'decode tok/s':>13} {'total ms':>9} "
        f"{'total':>7} {'1st token':>10} {'prompt est.':>12}",
    ]
    for row in result.rows:
        lines.append(
            f"{row.keep_ratio:>10g} {row.kept:>5} {row.median_prompt_ms:>10.1f} {row.median_first_token_ms:>13.1f} "
            f"{row.decode_tokens_per_s:>13.1f} {row.median_total_ms:>9.1f} {row.total_speedup:>6.2f}x "
            f"{row.first_token_speedup:>9.2f}x {row.estimated_prompt_speedup:>11.2f}x"
        )
    return "\n".join(lines)


def plot_generation(result: GenerationBenchResult, path: Path, title: Optional[str] = None) -> None:
    """Latency (left) and speedup against keep_ratio 1 (right); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    ratios = [row.keep_ratio for row in rows]
    figure, (latency_axis, speedup_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    latency_axis.plot(ratios, [r.median_total_ms for r in rows], marker="o", label=f"total ({result.new_tokens} new tokens)")
    latency_axis.plot(ratios, [r.median_first_token_ms for r in rows], marker="s", label="time to first token")
    latency_axis.plot(ratios, [r.median_prompt_ms for r in rows], marker="^", label="prompt pass")
    latency_axis.set_ylabel("median ms")
    speedup_axis.plot(ratios, [r.total_speedup for r in rows], marker="o", label="total")
    speedup_axis.plot(ratios, [r.first_token_speedup for r in rows], marker="s", label="time to first token")
    speedup_axis.plot(ratios, [r.estimated_prompt_speedup for r in rows], "--", label="prompt pass estimate (FLOPs model)")
    speedup_axis.set_ylabel("speedup vs keep_ratio 1")
    for axis in (latency_axis, speedup_axis):
        axis.set_xlabel("keep_ratio")
        axis.invert_xaxis()
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        title or f"generation, prompt {result.prompt_tokens} tokens, batch {result.batch}, {result.provider}"
    )
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)
