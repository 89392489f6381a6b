"""The classification service behind both servers (uvicorn and Ray Serve).

It owns one ``LatencyAdjustableSession`` and the request metrics, and knows
nothing about HTTP: ``app.py`` (FastAPI) and ``ray_app.py`` (Ray Serve) are thin
skins over ``ClassificationService.classify`` and ``ClassificationService.metrics``.

Model calls are admitted ``max_concurrent_calls`` at a time (default 1, with
ONNX Runtime using every core inside the call): on a CPU, two calls running
side by side each take about twice as long, so admitting more only adds
variance.  A request's latency budget (``target_ms``) is end to end inside the
service: the time it waited for admission is taken off the budget before the
keep ratio is chosen.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from latexport.errors import InvalidInputError
from latexport.runtime import LatencyAdjustableSession

#: Percentiles are computed over the most recent requests, so /metrics stays O(window).
METRICS_WINDOW = 10_000


@dataclass
class RequestRecord:
    latency_ms: float
    queue_ms: float
    keep_ratio: float
    target_ms: Optional[float]


class ServiceMetrics:
    """Request counts since start, and latency percentiles over a sliding window. Thread-safe."""

    def __init__(self, window: int = METRICS_WINDOW):
        self._lock = threading.Lock()
        self._records: deque[RequestRecord] = deque(maxlen=window)
        self.started = time.time()
        self.requests = 0
        self.errors = {"invalid": 0, "internal": 0}
        self.texts = 0
        self.budget_requests = 0
        self.budget_met = 0

    def record(self, record: RequestRecord, texts: int) -> None:
        with self._lock:
            self._records.append(record)
            self.requests += 1
            self.texts += texts
            if record.target_ms is not None:
                self.budget_requests += 1
                self.budget_met += record.latency_ms <= record.target_ms

    def record_error(self, kind: str) -> None:
        with self._lock:
            self.requests += 1
            self.errors[kind] += 1

    def snapshot(self) -> dict:
        with self._lock:
            records = list(self._records)
            counts = {
                "requests": self.requests,
                "succeeded": self.requests - sum(self.errors.values()),
                "errors": dict(self.errors),
                "texts": self.texts,
                "budget_requests": self.budget_requests,
                "budget_met": self.budget_met,
            }
        latencies = np.array([r.latency_ms for r in records])
        queue = np.array([r.queue_ms for r in records])
        ratios = np.array([r.keep_ratio for r in records])
        return {
            **counts,
            "uptime_s": round(time.time() - self.started, 1),
            "window": len(records),
            "latency_ms": _percentiles(latencies),
            "queue_ms": _percentiles(queue),
            "keep_ratio": _percentiles(ratios, digits=3),
        }


def _percentiles(values: np.ndarray, digits: int = 2) -> dict:
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), digits), "p90": round(float(p90), digits), "p99": round(float(p99), digits),
            "max": round(float(values.max()), digits)}


class ClassificationService:
    """Classify texts at a requested keep ratio, or at the one a latency budget allows."""

    def __init__(self, model_dir: Union[str, Path], intra_op_threads: int = 0, max_concurrent_calls: int = 1,
                 max_batch: int = 64, provider: str = "cpu"):
        self.session = LatencyAdjustableSession(model_dir, provider=provider, intra_op_threads=intra_op_threads,
                                                truncation="silent")
        if self.session.metadata.task != "text-classification":
            raise InvalidInputError(f"{model_dir} is a {self.session.metadata.task} model; this service classifies")
        self.model_dir = Path(model_dir)
        self.max_batch = max_batch
        self._admission = threading.BoundedSemaphore(max_concurrent_calls)
        self.metrics = ServiceMetrics()
        self.budget_available = (self.model_dir / "calibration.json").is_file()
        if self.budget_available:
            self.session.latency_model()  # fail at start-up, not on the first budgeted request

    def health(self) -> dict:
        meta = self.session.metadata
        return {
            "status": "ok",
            "model": str(self.model_dir),
            "labels": meta.labels,
            "default_keep_ratio": meta.default_keep_ratio,
            "max_length": meta.max_length,
            "latency_budgets": self.budget_available,
        }

    def classify(self, texts: Union[str, Sequence[str]], keep_ratio: Optional[float] = None,
                 target_ms: Optional[float] = None, text_pairs: Optional[Sequence[str]] = None) -> dict:
        """One request, timed from arrival; raises InvalidInputError for a bad request."""
        arrived = time.perf_counter()
        try:
            if isinstance(texts, (list, tuple)) and len(texts) > self.max_batch:
                raise InvalidInputError(f"at most {self.max_batch} texts per request, got {len(texts)}")
            if target_ms is not None:
                if not self.budget_available:
                    raise InvalidInputError("this service has no calibration.json; run `latexport calibrate MODEL_DIR` to allow target_ms")
                if isinstance(target_ms, bool) or not isinstance(target_ms, (int, float)) or not np.isfinite(target_ms) or target_ms <= 0:
                    raise InvalidInputError(f"target_ms must be a positive number of milliseconds, got {target_ms!r}")
            with self._admission:
                queue_ms = (time.perf_counter() - arrived) * 1000
                # Waiting counts against the budget; a request that waited it all out runs as fast as allowed.
                remaining = None if target_ms is None else max(float(target_ms) - queue_ms, 1e-3)
                prediction = self.session.predict(texts, keep_ratio=keep_ratio, text_pairs=text_pairs, target_ms=remaining)
        except InvalidInputError:
            self.metrics.record_error("invalid")
            raise
        except Exception:
            self.metrics.record_error("internal")
            raise
        latency_ms = (time.perf_counter() - arrived) * 1000
        self.metrics.record(RequestRecord(latency_ms, queue_ms, prediction.keep_ratio, target_ms), len(prediction.logits))
        response = {
            "keep_ratio": round(prediction.keep_ratio, 4),
            "latency_ms": round(latency_ms, 3),
            "queue_ms": round(queue_ms, 3),
        }
        if prediction.values is not None:
            response["values"] = prediction.values.tolist()
        else:
            response["labels"] = prediction.labels
            response["scores"] = prediction.scores.max(axis=1).round(6).tolist()
        if target_ms is not None:
            response["target_ms"] = target_ms
            response["predicted_ms"] = round(prediction.predicted_ms, 3)
        return response
