"""How close delivered latencies come to latency budgets: in-process, and through the HTTP service under load.

    python examples/latency_budget.py [--model OUT_DIR] [--threads 2]

1. Calibrates the model on this machine (``latexport calibrate``; default: the
   BERT-base-shaped model of examples/speed_bert_base.py, random weights with
   the real uncased vocabulary, converted by latexport).
2. For real texts (Rotten Tomatoes reviews, batches of 1, 8 and 32; Jane Austen
   passages of 256 tokens, batches of 1 and 8) and budgets spanning the model's
   fastest to slowest call, calls ``predict(texts, target_ms=budget)`` in
   shuffled rounds and records the delivered latency (tokenisation included)
   and the keep ratio chosen.
3. Starts examples/serve/app.py on loopback and runs the bounded load test
   (8 clients, 2,000 single-review requests) at keep ratios 1.0 and 0.3, then
   with budgets of 100%, 75% and 50% of the p50 latency measured at 1.0 under
   that same load: what a service under pressure gets by shedding tokens.

Writes graphs/latency-budget.json and graphs/latency-budget.png.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from latexport.runtime import LatencyAdjustableSession
from latexport.runtime.atomic import save_figure_atomic, write_text_atomic
from latexport.runtime.calibrate import calibrate, render
from latexport.training.corpora import splits

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = ROOT / "graphs"
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "examples" / "serve"))

from loadtest import run_load  # noqa: E402


def texts_of(corpus: str, count: int, seed: int = 0) -> list[str]:
    rows = [json.loads(line)["text"] for line in splits(corpus)["test"].read_text(encoding="utf-8").splitlines()]
    return random.Random(seed).sample(rows, count)


def default_model() -> Path:
    from speed_bert_base import bert_base_checkpoint

    from latexport.assets import cache_dir
    from latexport.export import convert

    out_dir = cache_dir() / "bert-base-random-latexport-budget"
    if not (out_dir / "model.onnx").exists():
        convert(str(bert_base_checkpoint()), out_dir, overwrite=True)
    return out_dir


def measure_budgets(session: LatencyAdjustableSession, workloads: dict[str, list[str]], rounds: int) -> list[dict]:
    """Delivered latency of predict(target_ms=...) over budgets between each workload's fastest and slowest call."""
    rows = []
    for name, texts in workloads.items():
        feed = session.encode(texts)
        model = session.latency_model()
        batch, width = feed["attention_mask"].shape
        slowest = model.predict_ms(batch, width, 1.0)
        fastest = model.predict_ms(batch, width, 0.05)
        budgets = np.geomspace(fastest * 1.1, slowest * 1.1, 8)
        times = {float(b): [] for b in budgets}
        ratios = {float(b): 0.0 for b in budgets}
        for budget in budgets:  # warm-up
            session.predict(texts, target_ms=float(budget))
        order = list(times)
        shuffler = random.Random(0)
        for _ in range(rounds):
            shuffler.shuffle(order)
            for budget in order:
                start = time.perf_counter()
                prediction = session.predict(texts, target_ms=budget)
                times[budget].append((time.perf_counter() - start) * 1000)
                ratios[budget] = prediction.keep_ratio
        for budget, delivered in times.items():
            delivered = np.array(delivered)
            rows.append({
                "workload": name, "batch": batch, "width": width, "target_ms": budget,
                "keep_ratio": ratios[budget], "median_ms": float(np.median(delivered)),
                "p90_ms": float(np.percentile(delivered, 90)), "met": float((delivered <= budget).mean()),
            })
            print(f"{name:<28} budget {budget:8.1f} ms  keep {ratios[budget]:.3f}  delivered median "
                  f"{np.median(delivered):8.1f} ms  p90 {np.percentile(delivered, 90):8.1f}  within budget {rows[-1]['met']:.0%}")
    return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_service(model_dir: Path, threads: int, reviews: list[str], requests: int) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "examples" / "serve" / "app.py"), str(model_dir),
                               "--port", str(port), "--threads", str(threads)])
    results = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the service did not start")
                time.sleep(0.5)
        modes = [("keep_ratio", 1.0), ("keep_ratio", 0.3)] + [("target_ms", fraction) for fraction in (1.0, 0.75, 0.5)]
        full_p50 = None
        for field, value in modes:
            if field == "target_ms":
                value = round(full_p50 * value, 1)
            def payload(i: int, field=field, value=value) -> dict:
                return {"texts": [reviews[i % len(reviews)]], field: value}

            run_load(url, clients=8, requests=40, payload=payload)  # warm-up
            report = run_load(url, clients=8, requests=requests, payload=payload)
            print(f"\n[service, 8 clients, {requests} requests, {field}={value:g}]\n{report.render()}")
            results.append({"mode": field, "value": value, **asdict(report)})
            if full_p50 is None:
                full_p50 = report.server_latency_ms["p50"]
        results.append({"metrics": httpx.get(url + "/metrics").json()})
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for name in dict.fromkeys(row["workload"] for row in rows):
        mine = [row for row in rows if row["workload"] == name]
        budgets = [row["target_ms"] for row in mine]
        left.plot(budgets, [row["median_ms"] for row in mine], marker="o", label=name)
        right.plot(budgets, [row["keep_ratio"] for row in mine], marker="o", label=name)
    low = min(row["target_ms"] for row in rows)
    high = max(row["target_ms"] for row in rows)
    left.plot([low, high], [low, high], color="grey", linestyle="--", label="delivered = budget")
    left.set(xscale="log", yscale="log", xlabel="budget (ms)", ylabel="delivered median (ms)",
             title="predict(texts, target_ms=budget)")
    right.set(xscale="log", xlabel="budget (ms)", ylabel="keep_ratio chosen", title="keep ratio the budget allowed")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    right.grid(alpha=0.3, which="both")
    figure.tight_layout()
    save_figure_atomic(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="A converted classifier (default: BERT-base shape, random weights).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()

    model_dir = args.model or default_model()
    # The grid covers the workloads below (up to 32 texts, 256 tokens), so no budget relies on extrapolation.
    latency_model = calibrate(model_dir, batch_sizes=(1, 8, 32), seq_lens=(16, 32, 64, 128, 256),
                              intra_op_threads=args.threads, progress=True)
    print(render(latency_model))

    reviews = texts_of("rotten_tomatoes", 200)
    passages = texts_of("austen", 8)
    workloads = {
        "1 review": reviews[:1],
        "8 reviews": reviews[:8],
        "32 reviews": reviews[:32],
        "1 Austen passage (256 tok)": passages[:1],
        "8 Austen passages": passages[:8],
    }
    session = LatencyAdjustableSession(model_dir, intra_op_threads=args.threads, truncation="silent")
    rows = measure_budgets(session, workloads, args.rounds)
    service = measure_service(model_dir, args.threads, reviews, args.requests)

    GRAPHS.mkdir(exist_ok=True)
    result = {
        "model": str(model_dir),
        "threads": args.threads,
        "calibration": {"coefficients": latency_model.coefficients, "fit_error": latency_model.fit_error,
                        "margin": latency_model.margin},
        "in_process": rows,
        "service": service,
        "minutes": (time.perf_counter() - started) / 60,
    }
    write_text_atomic(GRAPHS / "latency-budget.json", json.dumps(result, indent=2) + "\n")
    plot(rows, GRAPHS / "latency-budget.png")
    print(f"\nwrote graphs/latency-budget.json and .png in {result['minutes']:.1f} min")


if __name__ == "__main__":
    main()
