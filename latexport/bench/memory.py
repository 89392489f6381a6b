"""Peak memory of one inference configuration, measured in a fresh process.

Resident memory is per process and only ever grows, so variants timed side by
side in one process cannot be told apart.  Each measurement therefore loads
the model in a spawned child, resets the kernel's high-water mark once the
session is ready (Linux ``/proc/self/clear_refs``), runs the call a few times
and reads the peak back: ``peak_mib`` is the whole process at its highest,
weights included, and ``working_mib`` what the calls added over the loaded
session (activations and arena growth).  Torch-free.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

CALLS = 3


@dataclass(frozen=True)
class MemoryFigures:
    peak_mib: float
    working_mib: Optional[float]  # None where the high-water mark cannot be reset


def measure_peak_memory(
    model_path: Path, feed: dict[str, np.ndarray], providers: list[str], threads: int, timeout_s: float = 300.0
) -> MemoryFigures:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result = pool.apply_async(_run_and_measure, (str(model_path), feed, providers, threads))
        return result.get(timeout=timeout_s)


def _run_and_measure(model_path: str, feed: dict[str, np.ndarray], providers: list[str], threads: int) -> MemoryFigures:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model_path, options, providers=providers)
    resettable = _reset_high_water_mark()
    loaded = _status_kib("VmRSS") if resettable else None
    for _ in range(CALLS):
        session.run(None, feed)
    if resettable:
        peak = _status_kib("VmHWM")
        return MemoryFigures(peak_mib=peak / 1024, working_mib=max(0, peak - loaded) / 1024)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return MemoryFigures(peak_mib=maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024), working_mib=None)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
