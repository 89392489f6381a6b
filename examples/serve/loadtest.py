"""A bounded load test: N concurrent clients send M requests in all, over real HTTP.

    python examples/serve/loadtest.py http://127.0.0.1:8000 --clients 8 --requests 2000
    python examples/serve/loadtest.py http://127.0.0.1:8000 --target-ms 20     # budgeted requests

Each client is a thread with its own keep-alive connection, sending the next
request as soon as the previous answer arrives (closed loop), so the server is
never offered more than N requests at once.  Prints p50/p90/p99 latency as the
clients saw it, throughput, errors, and for budgeted requests how the
service-side latency compared with each budget.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import httpx
import numpy as np

SAMPLE_TEXTS = (
    "a gripping, funny film with a score to remember",
    "two hours I will never get back",
    "the plot is thin but the actors carry every scene with warmth and wit",
    "slow, dull and far too long; the ending made no sense at all",
    "one of the best films of the year, bright and sad and full of love",
    "not bad",
)


@dataclass
class LoadReport:
    clients: int
    requests: int
    errors: int
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    requests_per_s: float = 0.0
    client_latency_ms: dict = field(default_factory=dict)
    server_latency_ms: dict = field(default_factory=dict)
    #: Budgeted requests only: how many met their budget (service-side latency).
    budget_requests: int = 0
    budget_met: int = 0
    budget_overshoot_ms: dict = field(default_factory=dict)

    def render(self) -> str:
        c, s = self.client_latency_ms, self.server_latency_ms
        lines = [
            f"{self.requests} requests from {self.clients} clients in {self.wall_s:.1f} s ({self.requests_per_s:.0f} req/s), "
            f"{self.errors} errors",
            f"client latency ms: p50 {c['p50']:.2f}  p90 {c['p90']:.2f}  p99 {c['p99']:.2f}  max {c['max']:.2f}",
            f"server latency ms: p50 {s['p50']:.2f}  p90 {s['p90']:.2f}  p99 {s['p99']:.2f}  max {s['max']:.2f}",
        ]
        if self.budget_requests:
            o = self.budget_overshoot_ms
            lines.append(
                f"budgets met: {self.budget_met}/{self.budget_requests} ({self.budget_met / self.budget_requests:.1%}); "
                f"latency minus budget ms: p50 {o['p50']:+.2f}  p99 {o['p99']:+.2f}"
            )
        lines += [f"error: {sample}" for sample in self.error_samples]
        return "\n".join(lines)


def default_payloads(batch: int = 1, keep_ratio: Optional[float] = None, target_ms: Optional[float] = None) -> Callable[[int], dict]:
    """Request ``i``: a rotating batch of sample texts, at a ratio, a budget, or (by default) varying ratios."""
    ratios = (1.0, 0.7, 0.5, 0.3, 0.1)

    def payload(i: int) -> dict:
        texts = [SAMPLE_TEXTS[(i + j) % len(SAMPLE_TEXTS)] for j in range(batch)]
        if target_ms is not None:
            return {"texts": texts, "target_ms": target_ms}
        return {"texts": texts, "keep_ratio": keep_ratio if keep_ratio is not None else ratios[i % len(ratios)]}

    return payload


def run_load(url: str, clients: int = 8, requests: int = 2000, payload: Optional[Callable[[int], dict]] = None,
             timeout_s: float = 30.0) -> LoadReport:
    """Send ``requests`` POST /classify calls from ``clients`` threads; never raises for a failed request."""
    payload = payload or default_payloads()
    counter = itertools.count()
    lock = threading.Lock()
    client_ms: list[float] = []
    server_ms: list[float] = []
    overshoot_ms: list[float] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as http:
            while True:
                index = next(counter)
                if index >= requests:
                    return
                body = payload(index)
                start = time.perf_counter()
                try:
                    response = http.post("/classify", json=body)
                    elapsed = (time.perf_counter() - start) * 1000
                    if response.status_code != 200:
                        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                    answer = response.json()
                except Exception as error:  # a load test counts failures rather than stopping at one
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")
                    continue
                with lock:
                    client_ms.append(elapsed)
                    server_ms.append(answer["latency_ms"])
                    if "target_ms" in body:
                        overshoot_ms.append(answer["latency_ms"] - body["target_ms"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    overshoot = np.array(overshoot_ms)
    return LoadReport(
        clients=clients,
        requests=requests,
        errors=len(errors),
        error_samples=errors[:5],
        wall_s=wall,
        requests_per_s=len(client_ms) / wall if wall > 0 else 0.0,
        client_latency_ms=_summary(client_ms),
        server_latency_ms=_summary(server_ms),
        budget_requests=len(overshoot_ms),
        budget_met=int((overshoot <= 0).sum()),
        budget_overshoot_ms=_summary(overshoot_ms) if overshoot_ms else {},
    )


def _summary(values: list[float]) -> dict:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(np.max(values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1, help="Texts per request.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep-ratio", type=float, help="Every request at this ratio (default: a rotating mix).")
    group.add_argument("--target-ms", type=float, help="Every request with this latency budget.")
    parser.add_argument("--json", type=str, help="Also write the report as JSON here.")
    args = parser.parse_args()
    report = run_load(args.url, args.clients, args.requests, default_payloads(args.batch, args.keep_ratio, args.target_ms))
    print(report.render())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(asdict(report), handle, indent=2)
    raise SystemExit(1 if report.errors else 0)


if __name__ == "__main__":
    main()
