"""The classification service behind both servers (uvicorn and Ray Serve).

It owns one ``LatencyAdjustableSession`` and the request metrics, and knows
nothing about HTTP: ``app.py`` (FastAPI) and ``ray_app.py`` (Ray Serve) are thin
skins over ``ClassificationService.classify`` and ``ClassificationService.metrics``.

Requests are batched on the fly.  One worker thread (``workers``) runs the
model, ONNX Runtime using every core inside each call; whenever it is free it
takes the oldest waiting request together with every other waiting request,
up to ``max_batch`` texts, whatever ratio or budget each asks for: the graph
takes one keep ratio per row, and a row's answer is the one it gets alone.
An idle service therefore adds no wait, and a loaded one answers eight queued
requests in one call instead of eight calls in a row.

A call lasts as long as its widest row needs.  Rows with a latency budget
(``target_ms``, end to end inside the service) run at the largest ratio that
keeps the call within the tightest budget left among them, after queueing and
tokenisation, or at the highest explicit ratio in the call when that is larger:
such a row already sets the call's length, so the budgeted rows lose nothing
by keeping as much.  (A budget can then be missed; the metrics count it.)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from latexport.runtime.errors import InvalidInputError
from latexport.runtime.session import (
    LatencyAdjustableSession,
    Prediction,
    check_keep_ratio,
    check_target_ms,
    check_texts,
    reported_ratio,
)

#: Percentiles are computed over the most recent requests, so /metrics stays O(window).
METRICS_WINDOW = 10_000
#: Histogram buckets (seconds) from a tiny model's few milliseconds to a long batch's seconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: A request still unanswered after this long is failed rather than left hanging.
ANSWER_TIMEOUT_S = 120.0


@dataclass
class RequestRecord:
    latency_ms: float
    queue_ms: float
    #: The ratio the request ran at (the mean over its texts when it gave one per text).
    keep_ratio: float
    target_ms: Optional[float]
    #: Texts in the model call that answered this request (its own and its batch-mates').
    call_texts: int = 1


class ServiceMetrics:
    """Request counts since start, and latency percentiles over a sliding window. Thread-safe.

    The same events also feed Prometheus counters and histograms (``prometheus()``),
    in a registry of this service's own, for monitoring stacks that scrape.
    """

    def __init__(self, window: int = METRICS_WINDOW):
        self._lock = threading.Lock()
        self._records: deque[RequestRecord] = deque(maxlen=window)
        self.started = time.time()
        self.requests = 0
        self.errors = {"invalid": 0, "internal": 0}
        self.texts = 0
        self.budget_requests = 0
        self.budget_met = 0
        self.registry = CollectorRegistry()
        self._outcomes = Counter("latexport_requests", "Classification requests by outcome", ["outcome"], registry=self.registry)
        self._texts = Counter("latexport_texts", "Texts classified", registry=self.registry)
        self._budgets = Counter("latexport_budget_requests", "Requests with a latency budget, by whether it was met",
                                ["met"], registry=self.registry)
        self._latency = Histogram("latexport_request_latency_seconds", "Time from arrival to answer inside the service",
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self._queue = Histogram("latexport_queue_seconds", "Time a request waited for the model worker",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        self._ratio = Histogram("latexport_keep_ratio", "Keep ratio each request ran at",
                                buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0), registry=self.registry)

    def record(self, record: RequestRecord, texts: int) -> None:
        with self._lock:
            self._records.append(record)
            self.requests += 1
            self.texts += texts
            if record.target_ms is not None:
                self.budget_requests += 1
                self.budget_met += record.latency_ms <= record.target_ms
        self._outcomes.labels("succeeded").inc()
        self._texts.inc(texts)
        if record.target_ms is not None:
            self._budgets.labels(str(record.latency_ms <= record.target_ms).lower()).inc()
        self._latency.observe(record.latency_ms / 1000)
        self._queue.observe(record.queue_ms / 1000)
        self._ratio.observe(record.keep_ratio)

    def record_error(self, kind: str) -> None:
        with self._lock:
            self.requests += 1
            self.errors[kind] += 1
        self._outcomes.labels(kind).inc()

    def prometheus(self) -> bytes:
        """The Prometheus text exposition of this service's metrics."""
        return generate_latest(self.registry)

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
        call_texts = np.array([r.call_texts for r in records])
        return {
            **counts,
            "uptime_s": round(time.time() - self.started, 1),
            "window": len(records),
            "latency_ms": _percentiles(latencies),
            "queue_ms": _percentiles(queue),
            "keep_ratio": _percentiles(ratios, digits=3),
            "texts_per_call": _percentiles(call_texts, digits=1),
        }


def _percentiles(values: np.ndarray, digits: int = 2) -> dict:
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), digits), "p90": round(float(p90), digits), "p99": round(float(p99), digits),
            "max": round(float(values.max()), digits)}


@dataclass
class PendingRequest:
    """A validated request waiting for the worker; ``done`` is set once it has an answer."""

    texts: list[str]
    text_pairs: Optional[list[str]]
    #: A float32 scalar, or one ratio per text; None with a budget.
    keep_ratio: Optional[np.ndarray]
    target_ms: Optional[float]
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    prediction: Optional[Prediction] = None
    error: Optional[BaseException] = None
    started: float = 0.0
    call_texts: int = 0

    def batch_key(self) -> bool:
        """Requests with equal keys can share one model call: any ratios and budgets, but text
        pairs are tokenised together, so pairs and single texts go in separate calls."""
        return self.text_pairs is not None


class ClassificationService:
    """Classify texts at a requested keep ratio, or at the one a latency budget allows."""

    def __init__(self, model_dir: Union[str, Path], intra_op_threads: int = 0, max_concurrent_calls: int = 1,
                 max_batch: int = 64, provider: str = "cpu"):
        """``max_concurrent_calls`` model calls run side by side (one worker thread each);
        ``max_batch`` caps the texts of one request and of one batched call."""
        self.session = LatencyAdjustableSession(model_dir, provider=provider, intra_op_threads=intra_op_threads,
                                                truncation="silent")
        if self.session.metadata.task != "text-classification":
            raise InvalidInputError(f"{model_dir} is a {self.session.metadata.task} model; this service classifies")
        self.model_dir = Path(model_dir)
        self.max_batch = max_batch
        self.metrics = ServiceMetrics()
        self.budget_available = (self.model_dir / "calibration.json").is_file()
        if self.budget_available:
            self.session.latency_model()  # fail at start-up, not on the first budgeted request
        self._waiting: deque[PendingRequest] = deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self._workers = [threading.Thread(target=self._work, name=f"model-worker-{i}", daemon=True)
                         for i in range(max_concurrent_calls)]
        for worker in self._workers:
            worker.start()

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

    def close(self) -> None:
        """Stop the workers once the requests already waiting are answered."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify_all()
        for worker in self._workers:
            worker.join(timeout=ANSWER_TIMEOUT_S)

    # --- one request ------------------------------------------------------------------
    def classify(self, texts: Union[str, Sequence[str]], keep_ratio: Union[float, Sequence[float], None] = None,
                 target_ms: Optional[float] = None, text_pairs: Optional[Sequence[str]] = None) -> dict:
        """One request, timed from arrival; raises InvalidInputError for a bad request."""
        arrived = time.perf_counter()
        try:
            request = self._validate(texts, keep_ratio, target_ms, text_pairs, arrived)
            with self._wakeup:
                if self._closed:
                    raise RuntimeError("the service is shutting down")
                self._waiting.append(request)
                self._wakeup.notify()
            if not request.done.wait(ANSWER_TIMEOUT_S):
                raise TimeoutError(f"no answer within {ANSWER_TIMEOUT_S:.0f} s")
            if request.error is not None:
                raise request.error
        except InvalidInputError:
            self.metrics.record_error("invalid")
            raise
        except Exception:
            self.metrics.record_error("internal")
            raise
        prediction = request.prediction
        latency_ms = (time.perf_counter() - arrived) * 1000
        queue_ms = (request.started - arrived) * 1000
        ratios = np.atleast_1d(prediction.keep_ratio)
        self.metrics.record(RequestRecord(latency_ms, queue_ms, float(ratios.mean()), target_ms, request.call_texts),
                            len(prediction.logits))
        response = {
            "keep_ratio": [round(float(r), 4) for r in ratios] if isinstance(prediction.keep_ratio, list)
            else round(float(prediction.keep_ratio), 4),
            "latency_ms": round(latency_ms, 3),
            "queue_ms": round(queue_ms, 3),
            "call_texts": request.call_texts,
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

    def _validate(self, texts, keep_ratio, target_ms, text_pairs, arrived: float) -> PendingRequest:
        """Everything that can be wrong with one request, found before it can share a call with others."""
        texts = check_texts(texts, "texts")
        if len(texts) > self.max_batch:
            raise InvalidInputError(f"at most {self.max_batch} texts per request, got {len(texts)}")
        if text_pairs is not None:
            text_pairs = check_texts(text_pairs, "text_pairs")
            if len(text_pairs) != len(texts):
                raise InvalidInputError(f"got {len(texts)} texts but {len(text_pairs)} text_pairs")
        if target_ms is not None:
            if keep_ratio is not None:
                raise InvalidInputError("give keep_ratio or target_ms, not both")
            if not self.budget_available:
                raise InvalidInputError("this service has no calibration.json; run `latexport calibrate MODEL_DIR` to allow target_ms")
            target_ms = check_target_ms(target_ms)
            ratio = None
        else:
            ratio = check_keep_ratio(keep_ratio, self.session.default_keep_ratio, batch=len(texts))
        return PendingRequest(texts, text_pairs, ratio, target_ms, arrived)

    # --- the worker ---------------------------------------------------------------------
    def _budget_ratio(self, batch: list[PendingRequest], feed: dict) -> tuple[Optional[float], Optional[float]]:
        """(ratio of the call's budgeted rows, predicted call latency), or (None, None) without budgets (module doc)."""
        budgeted = [request for request in batch if request.target_ms is not None]
        if not budgeted:
            return None, None
        remaining = min(request.target_ms - (time.perf_counter() - request.arrived) * 1000 for request in budgeted)
        # A call whose budget is already spent runs as fast as it is allowed to.
        ratio, predicted_ms = self.session.keep_ratio_for_budget(feed, max(remaining, 1e-3))
        explicit = [float(np.max(request.keep_ratio)) for request in batch if request.target_ms is None]
        if explicit and max(explicit) > ratio:
            ratio = max(explicit)
            batch_size, width = feed["attention_mask"].shape
            predicted_ms = self.session.latency_model().guarded_ms(batch_size, width, ratio)
        return ratio, predicted_ms

    def _work(self) -> None:
        while True:
            with self._wakeup:
                while not self._waiting and not self._closed:
                    self._wakeup.wait()
                if not self._waiting:
                    return
                batch = self._take_batch()
            self._answer(batch)

    def _take_batch(self) -> list[PendingRequest]:
        """The oldest waiting request and every later one that can share its call (lock held)."""
        first = self._waiting.popleft()
        batch, texts, key = [first], len(first.texts), first.batch_key()
        for request in list(self._waiting):
            if request.batch_key() == key and texts + len(request.texts) <= self.max_batch:
                self._waiting.remove(request)
                batch.append(request)
                texts += len(request.texts)
        return batch

    def _answer(self, batch: list[PendingRequest]) -> None:
        started = time.perf_counter()
        try:
            texts = [text for request in batch for text in request.texts]
            pairs = [pair for request in batch for pair in request.text_pairs] if batch[0].text_pairs else None
            feed = self.session.encode(texts, pairs)
            budget_ratio, predicted_ms = self._budget_ratio(batch, feed)
            per_request = [np.broadcast_to(request.keep_ratio if request.target_ms is None else budget_ratio,
                                           len(request.texts)).astype(np.float32) for request in batch]
            ratios = np.concatenate(per_request)
            prediction = self.session.prediction_from_logits(self.session.run(feed, ratios), None, predicted_ms)
            offset = 0
            for request, request_ratios in zip(batch, per_request):
                rows = slice(offset, offset + len(request.texts))
                offset = rows.stop
                request.prediction = Prediction(
                    logits=prediction.logits[rows],
                    labels=None if prediction.labels is None else prediction.labels[rows],
                    scores=None if prediction.scores is None else prediction.scores[rows],
                    values=None if prediction.values is None else prediction.values[rows],
                    keep_ratio=reported_ratio(request.keep_ratio if request.target_ms is None else request_ratios[0]),
                    predicted_ms=predicted_ms if request.target_ms is not None else None,
                )
        except BaseException as error:  # every waiting request gets the failure, none is left hanging
            for request in batch:
                request.error = error
        finally:
            for request in batch:
                request.started = started
                request.call_texts = sum(len(r.texts) for r in batch)
                request.done.set()
