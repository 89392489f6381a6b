"""A bounded load test: N concurrent clients send M requests in all, over real HTTP.

    python examples/serve/loadtest.py http://127.0.0.1:8000 --clients 8 --requests 2000
    python examples/serve/loadtest.py http://127.0.0.1:8000 --target-ms 20     # budgeted requests
    python examples/serve/loadtest.py http://127.0.0.1:8000 --target-ms 10,20,40,80,160   # mixed budgets
    python examples/serve/loadtest.py http://127.0.0.1:8000 --compare --json graphs/serve-mixed.json

Each client is a thread with its own keep-alive connection, sending the next
request as soon as the previous answer arrives (closed loop), so the server is
never offered more than N requests at once.  Prints p50/p90/p99 latency as the
clients saw it, throughput, errors, and for budgeted requests how the
service-side latency compared with each budget.  ``--compare`` runs the same
load three ways against one server, one after the other: every request at one
ratio, a rotating mix of five ratios, and a rotating mix of budgets, taking
turns for ``--rounds`` rounds, and prints them side by side (req/s and
p50/p90/p99 over all rounds), with the mixes' throughput as a share of the fixed
ratio's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import httpx
import numpy as np

from latexport.runtime.atomic import write_text_atomic

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
    #: ``pooled`` reports: how many runs they pool.
    rounds: int = 1
    #: Every answered request's latency, kept only when asked (``run_load(keep_samples=True)``), for pooling.
    client_samples_ms: list[float] = field(default_factory=list, repr=False)
    server_samples_ms: list[float] = field(default_factory=list, repr=False)

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


#: The rotating mix of ratios (the default payload) and of budgets (``--target-ms`` with several values).
MIXED_RATIOS = (1.0, 0.7, 0.5, 0.3, 0.1)


def default_payloads(batch: int = 1, keep_ratio: Optional[float] = None,
                     target_ms: Union[float, Sequence[float], None] = None) -> Callable[[int], dict]:
    """Request ``i``: a rotating batch of sample texts, at a ratio, at a budget (or a rotating mix of
    budgets), or by default at a rotating mix of ratios."""
    budgets = None if target_ms is None else tuple(np.atleast_1d(target_ms).tolist())

    def payload(i: int) -> dict:
        texts = [SAMPLE_TEXTS[(i + j) % len(SAMPLE_TEXTS)] for j in range(batch)]
        if budgets is not None:
            return {"texts": texts, "target_ms": budgets[i % len(budgets)]}
        return {"texts": texts, "keep_ratio": keep_ratio if keep_ratio is not None else MIXED_RATIOS[i % len(MIXED_RATIOS)]}

    return payload


def compare_mixes(url: str, clients: int, requests: int, batch: int, fixed_ratio: float,
                  budgets: Optional[Sequence[float]], rounds: int = 3) -> dict[str, LoadReport]:
    """The same load at one ratio, at the rotating mix of ratios, and (with ``budgets``) at a mix of budgets.

    The loads take turns for ``rounds`` rounds, so that a slow spell of the machine
    falls on all of them; each load's report pools its rounds (``pooled``).
    """
    loads = {f"fixed {fixed_ratio:g}": default_payloads(batch, keep_ratio=fixed_ratio),
             f"mix of ratios {'/'.join(f'{r:g}' for r in MIXED_RATIOS)}": default_payloads(batch)}
    if budgets:
        loads[f"mix of budgets {'/'.join(f'{b:g}' for b in budgets)} ms"] = default_payloads(batch, target_ms=budgets)
    run_load(url, clients, max(clients * 10, requests // 10), loads[f"fixed {fixed_ratio:g}"])  # warm-up, not reported
    runs: dict[str, list[LoadReport]] = {name: [] for name in loads}
    for _ in range(rounds):
        for name, payload in loads.items():
            runs[name].append(run_load(url, clients, requests, payload, keep_samples=True))
    return {name: pooled(reports) for name, reports in runs.items()}


def pooled(reports: list[LoadReport]) -> LoadReport:
    """Several runs of one load as one: requests over summed wall time, percentiles over every request."""
    client_ms = [value for report in reports for value in report.client_samples_ms]
    server_ms = [value for report in reports for value in report.server_samples_ms]
    wall = sum(report.wall_s for report in reports)
    return LoadReport(
        clients=reports[0].clients, requests=sum(r.requests for r in reports), errors=sum(r.errors for r in reports),
        error_samples=[sample for r in reports for sample in r.error_samples][:5], wall_s=wall,
        requests_per_s=len(client_ms) / wall if wall > 0 else 0.0,
        client_latency_ms=_summary(client_ms), server_latency_ms=_summary(server_ms),
        budget_requests=sum(r.budget_requests for r in reports), budget_met=sum(r.budget_met for r in reports),
        rounds=len(reports),
    )


def render_comparison(reports: dict[str, LoadReport]) -> str:
    fixed = next(iter(reports.values()))
    lines = [f"{'load':<40} {'req/s':>7} {'share':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p90/p50':>8} {'errors':>6}"]
    for name, report in reports.items():
        c = report.client_latency_ms
        lines.append(f"{name:<40} {report.requests_per_s:>7.0f} {report.requests_per_s / fixed.requests_per_s:>6.0%} "
                     f"{c['p50']:>8.2f} {c['p90']:>8.2f} {c['p99']:>8.2f} {c['p90'] / c['p50']:>8.2f} {report.errors:>6}")
    return "\n".join(lines)


def run_load(url: str, clients: int = 8, requests: int = 2000, payload: Optional[Callable[[int], dict]] = None,
             timeout_s: float = 30.0, keep_samples: bool = False) -> LoadReport:
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
        client_samples_ms=client_ms if keep_samples else [],
        server_samples_ms=server_ms if keep_samples else [],
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
    group.add_argument("--target-ms", type=_budgets, help="Every request with this latency budget, or a comma list to rotate.")
    group.add_argument("--compare", action="store_true",
                       help="Fixed ratio (--fixed-ratio), the rotating mix of ratios, and the mix of --budgets, side by side.")
    parser.add_argument("--fixed-ratio", type=float, default=0.5, help="--compare: the fixed ratio (default 0.5).")
    parser.add_argument("--budgets", type=_budgets, help="--compare: the budgets to rotate (needs a calibrated model).")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: rounds in which the loads take turns.")
    parser.add_argument("--json", type=str, help="Also write the report as JSON here.")
    parser.add_argument("--plot", type=str, help="--compare: also plot req/s and p50/p90/p99 per load (PNG) here.")
    args = parser.parse_args()
    if args.compare:
        reports = compare_mixes(args.url, args.clients, args.requests, args.batch, args.fixed_ratio, args.budgets, args.rounds)
        print(render_comparison(reports))
        if args.plot:
            plot_comparison(reports, Path(args.plot))
        result = {name: {key: value for key, value in asdict(report).items() if not key.endswith("_samples_ms")}
                  for name, report in reports.items()}
        failed = any(report.errors for report in reports.values())
    else:
        report = run_load(args.url, args.clients, args.requests, default_payloads(args.batch, args.keep_ratio, args.target_ms))
        print(report.render())
        result, failed = asdict(report), bool(report.errors)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(result, indent=2))
    raise SystemExit(1 if failed else 0)


def plot_comparison(reports: dict[str, LoadReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latexport.runtime.atomic import save_figure_atomic

    names = list(reports)
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4))
    throughput.barh(names, [reports[name].requests_per_s for name in names])
    throughput.set_xlabel("requests/s")
    throughput.invert_yaxis()
    positions = np.arange(len(names))
    for offset, percentile in zip((-0.25, 0.0, 0.25), ("p50", "p90", "p99")):
        latency.barh(positions + offset, [reports[name].client_latency_ms[percentile] for name in names], height=0.25, label=percentile)
    latency.set_yticks(positions, [""] * len(names))
    latency.invert_yaxis()
    latency.set_xlabel("client latency (ms)")
    latency.legend()
    figure.suptitle(f"{next(iter(reports.values())).clients} closed-loop clients, one server")
    figure.tight_layout()
    save_figure_atomic(figure, path)


def _budgets(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))


if __name__ == "__main__":
    main()
