"""Timing calls side by side: the primitive that ``calibrate`` and ``bench`` share.

Every variant runs in the same process, interleaved round-robin in a freshly
shuffled order, and the figures are medians after warm-up.  A short pause
before each timed call lets the previous session's spinning worker threads go
idle; without it a session's threads steal the CPU from the next session's
call (measured: a plain export read 7% slower right after a latexport run
than after a pause).  Torch-free: it lives on the deploy side because
``latexport calibrate`` runs where the app runs.
"""

from __future__ import annotations

import random
import time
from typing import Callable

import numpy as np
import onnxruntime as ort

from latexport.runtime.metadata import ModelMetadata

PAUSE_SECONDS = 0.03


def make_feed(metadata: ModelMetadata, batch: int, seq_len: int, mixed_lengths: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random in-vocabulary ids; with ``mixed_lengths`` rows are 25-100% valid (right-padded)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if metadata.vocab_size > 2000 else 5, metadata.vocab_size, size=(batch, seq_len))
    mask = np.ones((batch, seq_len), dtype=np.int64)
    if mixed_lengths:
        for row, length in enumerate(rng.integers(max(1, seq_len // 4), seq_len + 1, size=batch)):
            mask[row, length:] = 0
            ids[row, length:] = metadata.pad_token_id
    feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask}
    if "token_type_ids" in metadata.input_names:
        feed["token_type_ids"] = np.zeros((batch, seq_len), dtype=np.int64)
    return feed


def session_options(threads: int, memory_arena: bool = True) -> ort.SessionOptions:
    """``memory_arena=False`` returns each call's memory when it ends: at thousands of tokens
    a session's arena keeps its peak (gigabytes of attention probabilities), and two such
    sessions in one benchmark process outgrow the machine."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call for each variant: ``repeats`` rounds after ``warmup`` rounds, each
    round calling every variant once in a freshly shuffled order (so no variant always
    follows the same neighbour)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    shuffler = random.Random(seed)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name in order:
            call = calls[name]
            time.sleep(PAUSE_SECONDS)
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times
