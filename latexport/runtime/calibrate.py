"""``latexport calibrate``: time one converted file over a grid of shapes and
ratios on this machine, fit ``calibration.LatencyModel`` and store it beside
the file, where a session's ``target_ms`` finds it.

Apart from ``calibration`` because it drives a session, while the session
only reads the fitted model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from latexport.runtime.calibration import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_KEEP_RATIOS,
    LatencyModel,
    machine_fingerprint,
)
from latexport.runtime.errors import InvalidInputError
from latexport.runtime.session import LatencyAdjustableSession
from latexport.runtime.timing import interleaved, make_feed


def default_seq_lens(max_length: int) -> tuple[int, ...]:
    """Powers of two from 16 up to the model's maximum (at most 512), plus the maximum itself if smaller."""
    top = min(max_length, 512)
    lengths = [length for length in (16, 32, 64, 128, 256, 512) if length <= top]
    if not lengths or lengths[-1] != top:
        lengths.append(top)
    return tuple(lengths)


def calibrate(
    model_dir: Path,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seq_lens: Optional[Sequence[int]] = None,
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    repeats: int = 5,
    warmup: int = 2,
    provider: str = "cpu",
    intra_op_threads: int = 0,
    progress: bool = False,
) -> LatencyModel:
    """Time the model over the grid on this machine, fit, and store calibration.json.

    The calls are interleaved in shuffled rounds (``timing.interleaved``) so a
    slow phase of the machine spreads over every grid point.  Each call goes
    through the runtime session exactly as ``predict`` makes it.
    """
    import onnxruntime as ort


    if repeats < 1 or warmup < 0:
        raise InvalidInputError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InvalidInputError(f"batch sizes must be positive, got {list(batch_sizes)}")
    if not keep_ratios or any(not (0.0 < r <= 1.0) for r in keep_ratios):
        raise InvalidInputError(f"keep ratios must lie in (0, 1], got {list(keep_ratios)}")
    session = LatencyAdjustableSession(model_dir, provider=provider, intra_op_threads=intra_op_threads)
    metadata = session.metadata
    seq_lens = tuple(seq_lens) if seq_lens else default_seq_lens(metadata.max_length)
    if min(seq_lens) < 1 or max(seq_lens) > metadata.max_length:
        raise InvalidInputError(f"sequence lengths must lie in [1, {metadata.max_length}], got {list(seq_lens)}")

    measurements = []
    shapes = [(batch, seq_len) for batch in batch_sizes for seq_len in seq_lens]
    iterator = shapes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(shapes, desc="calibrating", unit="shape")
    for batch, seq_len in iterator:
        feed = make_feed(metadata, batch, seq_len, mixed_lengths=False)
        calls = {ratio: (lambda ratio=ratio: session.run(feed, keep_ratio=ratio)) for ratio in keep_ratios}
        times = interleaved(calls, repeats=repeats, warmup=warmup)
        for ratio, seconds in times.items():
            measurements.append({
                "batch": batch, "seq_len": seq_len, "keep_ratio": ratio,
                "median_ms": float(np.median(seconds) * 1000), "p90_ms": float(np.percentile(seconds, 90) * 1000),
            })
    model = LatencyModel.fit(
        metadata,
        measurements,
        provider=provider,
        intra_op_threads=intra_op_threads,
        machine=machine_fingerprint(),
        onnxruntime_version=ort.__version__,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    model.save(Path(model_dir))
    return model


def render(model: LatencyModel) -> str:
    """The fit as a table: each grid point measured against predicted."""
    c = model.coefficients
    lines = [
        f"latency_ms = {c['overhead_ms']:.3f} + {c['token_ms'] * 1000:.3f}e-3 * tokens"
        f" + {c['linear_gflop_ms']:.3f} * linear GFLOPs + {c['quadratic_gflop_ms']:.3f} * quadratic GFLOPs",
        f"fit error on the grid: median {model.fit_error['median']:.1%}, worst {model.fit_error['max']:.1%}; "
        f"budgets keep a {model.margin:.1%} margin",
        "",
        f"{'batch':>5} {'seq':>5} {'keep':>6} {'measured ms':>12} {'predicted ms':>13}",
    ]
    for m in model.measurements:
        lines.append(f"{m['batch']:>5} {m['seq_len']:>5} {m['keep_ratio']:>6.2f} {m['median_ms']:>12.2f} {m['predicted_ms']:>13.2f}")
    return "\n".join(lines)
