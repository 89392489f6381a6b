"""Accuracy and measured CPU speed of LAT fine-tuning on real text, against plain fine-tuning.

    python examples/finetune_benchmark.py [--tasks rotten_tomatoes,trec,austen]

For each task (fixed splits, see latexport/training/corpora.py) and the real
all-MiniLM-L6-v2 weights, through the same commands a user runs:

1. ``finetune --recipe plain``: ordinary fine-tuning, the reference accuracy;
2. ``finetune --recipe lat``: fine-tuning with elimination active;
3. ``convert`` both, ``tune`` the LAT model on the validation split
   (``--max-drop 0.01``), then ``evaluate`` both on the held-out test split at
   every ratio, measuring accuracy and latency in ONNX Runtime.

Writes graphs/finetune-{task}.png and .json, and prints the tables and timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from latexport.assets import MINILM, cache_dir, fetch
from latexport.export import convert
from latexport.runtime.atomic import save_figure_atomic, write_text_atomic
from latexport.training.corpora import splits
from latexport.training.evaluate import evaluate, render, tune
from latexport.training.finetune import FinetuneSettings, finetune

TUNE_RATIOS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03)
GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03)


@dataclass
class Task:
    name: str
    kind: str
    max_length: int
    train_batch: int
    eval_batch: int
    epochs: int
    train_limit: int = 0  # 0: the whole training split

    def settings(self, recipe: str) -> FinetuneSettings:
        """The defaults of `latexport finetune`, but for the sizes each task needs."""
        return FinetuneSettings(
            recipe=recipe, epochs=self.epochs, batch_size=self.train_batch, max_length=self.max_length, seed=13
        )


TASKS = {
    "rotten_tomatoes": Task("rotten_tomatoes", "short texts: movie-review sentiment", 64, 32, 32, 2),
    "trec": Task("trec", "short texts: question classification", 48, 32, 32, 3),
    "austen": Task("austen", "long texts: which Austen novel a 200-word passage is from", 256, 16, 8, 2,
                   train_limit=1200),
}


def limited(path: Path, count: int, folder: Path) -> str:
    if not count:
        return str(path)
    lines = path.read_text().splitlines(keepends=True)[:count]
    target = folder / f"{path.stem}-first{count}.jsonl"
    write_text_atomic(target, "".join(lines))
    return str(target)


def run_task(task: Task, work: Path) -> dict:
    files = splits(task.name)
    base = str(fetch(MINILM))
    work.mkdir(parents=True, exist_ok=True)
    train = limited(files["train"], task.train_limit, work)
    timings, evaluations = {}, {}
    for recipe in ("plain", "lat"):
        start = time.perf_counter()
        settings = task.settings(recipe)
        checkpoint = work / f"{recipe}-checkpoint-{Path(train).stem}"  # a finished run is reused only for the same data
        record_path = checkpoint / "latexport_finetune.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        recorded = replace(settings, power=record.get("power", settings.power))  # the record holds the resolved power
        if not (record.get("completed") and record.get("fingerprint") == recorded.fingerprint()):
            finetune(base, checkpoint, train, str(files["validation"]), settings=settings, overwrite=True)
        timings[f"finetune {recipe}"] = time.perf_counter() - start
        start = time.perf_counter()
        model_dir = work / f"{recipe}-onnx"
        convert(str(checkpoint), model_dir, overwrite=True)
        timings[f"convert {recipe}"] = time.perf_counter() - start
        if recipe == "lat":
            start = time.perf_counter()
            tuned = tune(model_dir, str(files["validation"]), max_drop=0.01, batch_size=task.eval_batch, keep_ratios=TUNE_RATIOS)
            timings["tune lat"] = time.perf_counter() - start
        start = time.perf_counter()
        evaluations[recipe] = evaluate(model_dir, str(files["test"]), keep_ratios=RATIOS, batch_size=task.eval_batch)
        timings[f"evaluate {recipe}"] = time.perf_counter() - start
    plain_full = evaluations["plain"].full.metrics["accuracy"]
    summary = {
        "task": task.name,
        "kind": task.kind,
        "plain_full_accuracy": plain_full,
        "tuned_keep_ratio": tuned.keep_ratio,
        "rows": [
            {
                "keep_ratio": row.keep_ratio,
                "lat_accuracy": row.metrics["accuracy"],
                "plain_accuracy": evaluations["plain"].row(row.keep_ratio).metrics["accuracy"],
                "lat_drop_points": 100 * (plain_full - row.metrics["accuracy"]),
                "measured_speedup": row.speedup,
                "estimated_speedup": row.estimated_speedup,
            }
            for row in evaluations["lat"].rows
        ],
        "timings_seconds": timings,
        "eval_batch": task.eval_batch,
        "test_examples": evaluations["lat"].examples,
    }
    print(f"\n== {task.name} ({task.kind}) ==")
    print("LAT fine-tuning, test split:\n" + render(evaluations["lat"]))
    print(f"plain fine-tuning, full model: accuracy {plain_full:.4f}; LAT tuned on validation to keep_ratio {tuned.keep_ratio:g}")
    print(f"{'keep_ratio':>10} {'plain+drop':>10} {'LAT':>8} {'LAT drop':>9} {'speedup':>8}")
    for row in summary["rows"]:
        print(f"{row['keep_ratio']:>10g} {row['plain_accuracy']:>10.4f} {row['lat_accuracy']:>8.4f} "
              f"{row['lat_drop_points']:>8.2f}p {row['measured_speedup']:>7.2f}x")
    print("timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    ratios = [row["keep_ratio"] for row in rows]
    figure, accuracy_axis = plt.subplots(figsize=(6.8, 4.4))
    accuracy_axis.plot(ratios, [100 * r["lat_accuracy"] for r in rows], marker="o", label="LAT fine-tuning")
    accuracy_axis.plot(ratios, [100 * r["plain_accuracy"] for r in rows], marker="x", label="plain fine-tuning, dropped")
    accuracy_axis.axhline(100 * summary["plain_full_accuracy"] - 1, color="gray", linestyle=":", label="plain full - 1 point")
    accuracy_axis.set_xscale("log")
    accuracy_axis.invert_xaxis()
    accuracy_axis.set_xlabel("keep_ratio (log scale)")
    accuracy_axis.set_ylabel("test accuracy (%)")
    accuracy_axis.grid(True, which="both", alpha=0.3)
    speed_axis = accuracy_axis.twinx()
    speed_axis.plot(ratios, [r["measured_speedup"] for r in rows], color="tab:red", marker="s", alpha=0.7, label="measured speedup")
    speed_axis.set_ylabel("measured CPU speedup", color="tab:red")
    lines = accuracy_axis.get_legend_handles_labels()
    extra = speed_axis.get_legend_handles_labels()
    accuracy_axis.legend(lines[0] + extra[0], lines[1] + extra[1], loc="lower left", fontsize=8)
    accuracy_axis.set_title(f"MiniLM-L6 on {summary['task']} ({summary['kind']}), batch {summary['eval_batch']}", fontsize=9)
    figure.tight_layout()
    save_figure_atomic(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="rotten_tomatoes,trec,austen")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    GRAPHS.mkdir(exist_ok=True)
    for name in args.tasks.split(","):
        summary = run_task(TASKS[name], cache_dir() / "finetune-benchmark" / name)
        write_text_atomic(GRAPHS / f"finetune-{name}.json", json.dumps(summary, indent=2))
        plot(summary, GRAPHS / f"finetune-{name}.png")
    print(f"\nbenchmark finished in {(time.perf_counter() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
