"""Accuracy at measured speed on real text: LAT against plain fine-tuning and the rivals a user has.

    python examples/finetune_benchmark.py               # the whole matrix; resumes where it stopped
    python examples/finetune_benchmark.py --quick       # TREC at 1,000 examples, one seed, with rivals
    python examples/finetune_benchmark.py --tasks trec --sizes 1000 --seeds 0,1,2 --no-rivals
    python examples/finetune_benchmark.py --list        # the cells, and which are done

The matrix is tasks x training-set sizes x seeds x variants, from the real
all-MiniLM-L6-v2 weights, through the same functions as the commands a user
runs, with their defaults (nothing here is tuned per task):

* ``plain``: ``finetune --recipe plain``, the reference accuracy ("plain full"
  is its accuracy at keep_ratio 1), also evaluated with dropping (the ablation);
* ``lat``: ``finetune`` (the LAT recipe), ``convert``, ``tune --max-drop 0.01``
  on the validation split, then ``evaluate`` on the held-out test split;
* ``int8``: both of those converted with ``--quantize dynamic``;
* ``plain-converged`` (many-class tasks, first seed): plain fine-tuning with
  far more patience and three times the step budget, the "trained to
  convergence" reference that the defaults' early stopping is checked against;
* the rivals, at seed 0: ``truncate-L`` (plain fine-tuning with a smaller
  ``max_length``: the input cut to L tokens) and ``layers-K`` (plain
  fine-tuning of the model with its top layers removed).

Training sets of a given size are drawn from the training split
(``corpora.subsampled``, seed 0); validation and test are the corpus's own.
Speed: ``evaluate`` measures every ratio of one file side by side; across files
(the rivals), every ONNX file of a (task, size, seed 0) group is timed
interleaved in one run on the same test batches (``timing`` below).

Each finished cell is written at once to ``graphs/finetune-matrix/``, so a
stopped run resumes where it stopped (the checkpoints live in the latexport
cache; the results in ``graphs/``).  ``--report`` rebuilds the tables and the
plots (``graphs/finetune-{task}-n{size}.png``) from whatever is done.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from latexport.assets import MINILM, cache_dir, fetch
from latexport.export import convert
from latexport.runtime.atomic import atomic_directory, save_figure_atomic, write_text_atomic
from latexport.runtime.reprofile import reprofile
from latexport.runtime.session import LatencyAdjustableSession
from latexport.runtime.timing import interleaved
from latexport.training.corpora import splits, subsampled
from latexport.training.data import read_examples
from latexport.training.evaluate import TUNING_RATIOS, evaluate, render, tune, write_metadata
from latexport.training.finetune import FinetuneSettings, completed_run, finetune, step_budget

RESULTS = Path(__file__).resolve().parent.parent / "graphs" / "finetune-matrix"
GRAPHS = RESULTS.parent
RATIOS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03)
#: LAT is tuned with ``tune``'s defaults (ratios and profile powers), and its test
#: curve covers every ratio tune may choose.
LAT_RATIOS = TUNING_RATIOS
MAX_DROP = 0.01
SUBSAMPLE_SEED = 0
TIMED_BATCHES, TIMING_ROUNDS = 12, 5


@dataclass(frozen=True)
class Task:
    corpus: str
    kind: str
    max_length: int
    train_batch: int
    eval_batch: int
    sizes: tuple[int, ...]  # training examples; 0: the whole training split
    truncations: tuple[int, ...] = ()  # max_length of each truncation rival
    layer_counts: tuple[int, ...] = ()  # layers kept by each fewer-layers rival
    converged_reference: bool = False  # also a plain run trained to convergence (``CONVERGED``), at the first seed


TASKS = {
    "rotten_tomatoes": Task("rotten_tomatoes", "short texts: movie-review sentiment", 64, 32, 32, (2000, 1000),
                            truncations=(16, 24), layer_counts=(3, 4)),
    "trec": Task("trec", "short texts: question classification", 48, 32, 32, (1000, 2000),
                 truncations=(8, 12), layer_counts=(3, 4)),
    "austen": Task("austen", "256-token passages: which Austen novel", 256, 16, 8, (1200,),
                   truncations=(64, 128), layer_counts=(2, 3, 4)),
    "austen_512": Task("austen_512", "512-token passages: which Austen novel", 512, 16, 8, (0,),
                       truncations=(128, 256), layer_counts=(2, 3, 4)),
    "trec_fine": Task("trec_fine", "many classes, short: 50 fine TREC labels", 48, 32, 32, (0,), converged_reference=True),
    "austen_volumes": Task("austen_volumes", "many classes, long: novel and volume of a 512-token passage", 512, 16, 8, (0,),
                           converged_reference=True),
}
#: "Trained to convergence", the reference the defaults' early stopping is checked against on many-class
#: tasks: plain fine-tuning with far more patience and three times the default step budget.
CONVERGED = "plain-converged"
CONVERGED_PATIENCE, CONVERGED_BUDGET_FACTOR = 10, 3
#: LAT recipes measured against the default one (``--ablations``): the FinetuneSettings they change.
#: ``PLAIN_TEACHER`` stands for the same (task, size, seed)'s plain checkpoint.
PLAIN_TEACHER = "plain"
ABLATIONS = {"lat-power-range": {"power_range": (1.5, 3.0)}, "lat-teacher": {"teacher": PLAIN_TEACHER}}
QUICK = {"tasks": ("trec",), "sizes": (1000,), "seeds": (0,)}


@dataclass(frozen=True)
class Cell:
    task: str
    size: int
    seed: int
    variant: str  # plain, lat, an ABLATIONS name, truncate-L, layers-K

    @property
    def lat(self) -> bool:
        return self.variant == "lat" or self.variant in ABLATIONS

    @property
    def name(self) -> str:
        return f"{self.task}-n{self.size or 'all'}-s{self.seed}-{self.variant}"

    @property
    def result_path(self) -> Path:
        return RESULTS / f"{self.name}.json"

    @property
    def work(self) -> Path:
        return cache_dir() / "finetune-matrix" / self.name

    def done(self) -> bool:
        """Finished, and by the current recipe: a LAT cell from before tune chose the
        profile power is redone (its checkpoint is reused, so only convert, tune and
        evaluate run again)."""
        if not self.result_path.exists():
            return False
        return not self.lat or "power" in json.loads(self.result_path.read_text()).get("tuned", {})


def cells(tasks, sizes: Optional[tuple[int, ...]], seeds, rivals: bool, ablations: tuple[str, ...] = ()) -> list[Cell]:
    """Most informative first: plain and LAT at seed 0 everywhere, then more seeds, then the rivals."""
    chosen = [Cell(name, size, seed, variant) for variant in ablations for seed in seeds for name in tasks
              for size in sizes or TASKS[name].sizes]
    for seed in seeds:
        for name in tasks:
            task = TASKS[name]
            for size in sizes or task.sizes:
                chosen += [Cell(name, size, seed, "plain"), Cell(name, size, seed, "lat")]
    chosen += [Cell(name, size, seeds[0], CONVERGED) for name in tasks if TASKS[name].converged_reference
               for size in sizes or TASKS[name].sizes]
    if rivals:
        for name in tasks:
            task = TASKS[name]
            for size in sizes or task.sizes:
                chosen += [Cell(name, size, seeds[0], f"truncate-{length}") for length in task.truncations]
                chosen += [Cell(name, size, seeds[0], f"layers-{count}") for count in task.layer_counts]
    return chosen


def data_files(cell: Cell) -> dict[str, Path]:
    return subsampled(TASKS[cell.task].corpus, cell.size, SUBSAMPLE_SEED) if cell.size else splits(TASKS[cell.task].corpus)


def fewer_layers_base(count: int) -> Path:
    """MiniLM with only its lowest ``count`` layers, saved as a checkpoint to fine-tune from."""
    target = cache_dir() / "finetune-matrix" / f"minilm-{count}-layers"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModel, AutoTokenizer

    base = str(fetch(MINILM))
    model = AutoModel.from_pretrained(base, num_hidden_layers=count)
    with atomic_directory(target, overwrite=True) as scratch:
        model.save_pretrained(scratch)
        AutoTokenizer.from_pretrained(base).save_pretrained(scratch)
    return target


def trained(cell: Cell, files: dict[str, Path]) -> Path:
    """The fine-tuned checkpoint of this cell, training (or resuming) it unless a finished one is there."""
    task = TASKS[cell.task]
    recipe = "lat" if cell.lat else "plain"
    max_length = int(cell.variant.split("-")[1]) if cell.variant.startswith("truncate-") else task.max_length
    base = str(fewer_layers_base(int(cell.variant.split("-")[1])) if cell.variant.startswith("layers-") else fetch(MINILM))
    changes = dict(ABLATIONS.get(cell.variant, {}))
    if changes.get("teacher") == PLAIN_TEACHER:
        changes["teacher"] = str(trained(Cell(cell.task, cell.size, cell.seed, "plain"), files))
    if cell.variant == CONVERGED:
        examples = len(read_examples(str(files["train"])).texts)
        changes.update(patience=CONVERGED_PATIENCE,
                       max_steps=CONVERGED_BUDGET_FACTOR * step_budget(examples, task.train_batch))
    settings = FinetuneSettings(recipe=recipe, batch_size=task.train_batch, max_length=max_length, seed=cell.seed,
                                **changes)
    checkpoint = cell.work / "checkpoint"
    if completed_run(checkpoint, settings):
        return checkpoint
    finetune(base, checkpoint, str(files["train"]), str(files["validation"]), settings=settings)
    return checkpoint


def evaluation_record(evaluation) -> dict:
    record = json.loads(evaluation.to_json())
    return {"examples": record["examples"], "batch_size": record["batch_size"], "rows": record["rows"]}


def run_cell(cell: Cell) -> dict:
    task = TASKS[cell.task]
    files = data_files(cell)
    started = time.perf_counter()
    checkpoint = trained(cell, files)
    record = json.loads((checkpoint / "latexport_finetune.json").read_text())
    timings = {"finetune": time.perf_counter() - started}
    result = {"cell": asdict(cell), "kind": task.kind, "train_examples": len(read_examples(str(files["train"])).texts),
              "stopping": {k: v for k, v in record.get("stopping", {}).items() if k != "history"},
              "history": record.get("stopping", {}).get("history", []), "power": record.get("power"),
              "steps": record.get("step")}
    variants = {"float32": {}, "int8": {"quantize": "dynamic"}} if cell.variant == "plain" or cell.lat else {"float32": {}}
    for precision, options in variants.items():
        start = time.perf_counter()
        model_dir = cell.work / f"onnx-{precision}"
        convert(str(checkpoint), model_dir, overwrite=True, **options)
        if cell.variant.startswith("truncate-"):  # the rival reads only what it was trained on
            write_metadata(model_dir / "model.onnx", {"max_length": cell.variant.split("-")[1]})
        if cell.lat and precision == "float32":
            tuned = tune(model_dir, str(files["validation"]), max_drop=MAX_DROP, batch_size=task.eval_batch)
            result["tuned"] = {"keep_ratio": tuned.keep_ratio, "power": tuned.power, "constraint": tuned.constraint,
                               "note": tuned.note, "validation": evaluation_record(tuned.evaluation),
                               "by_power": {f"{power:g}": ratio for power, ratio in tuned.choices.items()}}
        if cell.lat and precision == "int8":  # the int8 file runs the profile tune chose
            reprofile(model_dir / "model.onnx", result["tuned"]["power"])
        ratios = (LAT_RATIOS if cell.lat
                  else RATIOS if (cell.variant == "plain" and precision == "float32") else (1.0,))
        evaluation = evaluate(model_dir, str(files["test"]), keep_ratios=ratios, batch_size=task.eval_batch)
        result[precision] = evaluation_record(evaluation)
        timings[f"convert and evaluate {precision}"] = time.perf_counter() - start
        print(render(evaluation), flush=True)
    result["timings_seconds"] = timings
    return result


# --- speed across files ---------------------------------------------------------
def timing(task_name: str, size: int, seed: int) -> Optional[dict]:
    """Every ONNX file of one (task, size, seed) timed interleaved on the same test batches.

    Speedups are against plain fine-tuning's file at keep_ratio 1; each call runs
    all ``TIMED_BATCHES`` batches, and the median of ``TIMING_ROUNDS`` rounds counts.
    """
    task = TASKS[task_name]
    group = [cell for cell in cells((task_name,), (size,), (seed,), rivals=True) if cell.done()]
    if not any(cell.variant == "plain" for cell in group):
        return None
    examples = read_examples(str(data_files(group[0])["test"]))
    texts = [examples.texts[start:start + task.eval_batch] for start in range(0, len(examples.texts), task.eval_batch)]
    texts = texts[:TIMED_BATCHES]
    calls, labels = {}, {}
    for cell in group:
        for precision in ("float32", "int8"):
            model_dir = cell.work / f"onnx-{precision}"
            if not (model_dir / "model.onnx").exists():
                continue
            session = LatencyAdjustableSession(model_dir, intra_op_threads=2, truncation="silent")
            feeds = [session.encode(batch) for batch in texts]
            ratios = LAT_RATIOS if cell.lat else (1.0,)
            for ratio in ratios:
                key = f"{cell.variant} {precision} {ratio:g}"
                calls[key] = (lambda s=session, f=feeds, r=ratio: [s.run(feed, r) for feed in f])
                labels[key] = {"variant": cell.variant, "precision": precision, "keep_ratio": ratio}
    times = interleaved(calls, repeats=TIMING_ROUNDS, warmup=1)
    medians = {key: float(np.median(values)) for key, values in times.items()}
    reference = medians["plain float32 1"]
    rows = [{**labels[key], "median_seconds": seconds, "speedup_over_plain": reference / seconds}
            for key, seconds in medians.items()]
    return {"task": task_name, "size": size, "seed": seed, "batches": len(texts), "batch_size": task.eval_batch,
            "rounds": TIMING_ROUNDS, "rows": rows}


def timing_path(task_name: str, size: int, seed: int) -> Path:
    return RESULTS / f"{task_name}-n{size or 'all'}-s{seed}-timing.json"


# --- report ------------------------------------------------------------------
def load(cell: Cell) -> Optional[dict]:
    return json.loads(cell.result_path.read_text()) if cell.done() else None


def accuracy(rows: list[dict], ratio: float) -> Optional[dict]:
    row = next((row for row in rows if row["keep_ratio"] == ratio), None)
    return None if row is None else {"accuracy": row["metrics"]["accuracy"], "interval": row.get("interval"),
                                     "speedup": row["speedup"]}


def summarize(task_name: str, size: int, seeds, recipe: str = "lat") -> Optional[dict]:
    """Per seed: plain full, LAT at 1.0, the ratio tune chose on validation and what it gives on test
    (``recipe``: ``lat`` or an ablation)."""
    per_seed = []
    for seed in seeds:
        plain, lat = load(Cell(task_name, size, seed, "plain")), load(Cell(task_name, size, seed, recipe))
        if not (plain and lat):
            continue
        plain_full = accuracy(plain["float32"]["rows"], 1.0)["accuracy"]
        tuned_ratio = lat["tuned"]["keep_ratio"]
        tuned = accuracy(lat["float32"]["rows"], tuned_ratio)
        within = [row for row in lat["float32"]["rows"] if row["metrics"]["accuracy"] >= plain_full - MAX_DROP]
        best = max(within, key=lambda row: row["speedup"]) if within else None
        per_seed.append({
            "seed": seed,
            "plain_full": plain_full,
            "lat_full": accuracy(lat["float32"]["rows"], 1.0)["accuracy"],
            "tuned_keep_ratio": tuned_ratio,
            "tuned_power": lat["tuned"].get("power", lat.get("power")),
            "tuned_test_accuracy": tuned["accuracy"],
            "tuned_test_drop_points": 100 * (plain_full - tuned["accuracy"]),
            "tuned_test_speedup": tuned["speedup"],
            "best_within_one_point": None if best is None else {"keep_ratio": best["keep_ratio"], "speedup": best["speedup"]},
            "lat_steps": lat["steps"], "plain_steps": plain["steps"],
            "lat_stopping": lat["stopping"].get("reason"), "plain_stopping": plain["stopping"].get("reason"),
        })
    if not per_seed:
        return None

    def mean(key):
        return float(np.mean([entry[key] for entry in per_seed]))

    return {"task": task_name, "size": size, "recipe": recipe, "seeds": [entry["seed"] for entry in per_seed], "per_seed": per_seed,
            "mean_plain_full": mean("plain_full"), "mean_lat_full": mean("lat_full"),
            "mean_lat_full_minus_plain_points": 100 * (mean("lat_full") - mean("plain_full")),
            "mean_tuned_test_drop_points": mean("tuned_test_drop_points"),
            "mean_tuned_test_speedup": mean("tuned_test_speedup")}


def print_summary(summary: dict) -> None:
    print(f"\n== {summary['task']}, {summary['size'] or 'all'} training examples, seeds {summary['seeds']}, "
          f"recipe {summary.get('recipe', 'lat')} ==")
    print(f"{'seed':>4} {'plain full':>10} {'LAT 1.0':>8} {'tuned':>10} {'test acc':>8} {'drop':>7} {'speedup':>8} "
          f"{'best<=1p':>13} {'steps plain/LAT':>16}")
    for entry in summary["per_seed"]:
        best = entry["best_within_one_point"]
        best_text = f"{best['speedup']:.2f}x@{best['keep_ratio']:g}" if best else "-"
        print(f"{entry['seed']:>4} {entry['plain_full']:>10.4f} {entry['lat_full']:>8.4f} {_tuned(entry):>10} "
              f"{entry['tuned_test_accuracy']:>8.4f} {entry['tuned_test_drop_points']:>6.2f}p "
              f"{entry['tuned_test_speedup']:>7.2f}x {best_text:>13} {entry['plain_steps']:>7}/{entry['lat_steps']}")
    reference = summary.get("converged_reference")
    if reference:
        defaults = ", ".join(f"{variant} {reference[f'default_{variant}_full']:.4f} ({reference[f'default_{variant}_steps']} steps)"
                             for variant in ("plain", "lat") if f"default_{variant}_full" in reference)
        print(f"seed {reference['seed']}: plain trained to convergence {reference['converged_plain_full']:.4f} "
              f"({reference['converged_steps']} steps); the defaults at 1.0: {defaults}")
    print(f"mean: plain full {summary['mean_plain_full']:.4f}, LAT at 1.0 {summary['mean_lat_full_minus_plain_points']:+.2f} "
          f"points; the tuned ratio on test: {summary['mean_tuned_test_drop_points']:.2f} points down at "
          f"{summary['mean_tuned_test_speedup']:.2f}x")


def converged_reference(task_name: str, size: int, seed: int) -> Optional[dict]:
    """The defaults against plain fine-tuning trained to convergence, at keep_ratio 1 on test."""
    converged = load(Cell(task_name, size, seed, CONVERGED))
    if converged is None:
        return None
    entry = {"seed": seed, "converged_plain_full": accuracy(converged["float32"]["rows"], 1.0)["accuracy"],
             "converged_steps": converged["steps"], "converged_stopping": converged["stopping"].get("reason")}
    for variant in ("plain", "lat"):
        result = load(Cell(task_name, size, seed, variant))
        if result:
            entry[f"default_{variant}_full"] = accuracy(result["float32"]["rows"], 1.0)["accuracy"]
            entry[f"default_{variant}_steps"] = result["steps"]
    return entry


def _tuned(entry: dict) -> str:
    return f"{entry['tuned_keep_ratio']:g}@p{entry['tuned_power']:g}" if entry.get("tuned_power") else f"{entry['tuned_keep_ratio']:g}"


def plot_pareto(task_name: str, size: int, seed: int, path: Path) -> bool:
    """Accuracy against measured speed (over plain at 1.0) for LAT, int8 and the rivals, one (task, size, seed)."""
    timed_path = timing_path(task_name, size, seed)
    if not timed_path.exists():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = {(row["variant"], row["precision"], row["keep_ratio"]): row["speedup_over_plain"]
             for row in json.loads(timed_path.read_text())["rows"]}
    figure, axis = plt.subplots(figsize=(7.2, 4.6))
    plain = load(Cell(task_name, size, seed, "plain"))
    plain_full = accuracy(plain["float32"]["rows"], 1.0)["accuracy"]
    for variant, precision, style, label in (("lat", "float32", "o-", "LAT float32"), ("lat", "int8", "s-", "LAT int8"),
                                             ("plain", "float32", "x", "plain"), ("plain", "int8", "D", "plain int8")):
        result = load(Cell(task_name, size, seed, variant))
        if not result or precision not in result:
            continue
        points = [(speed[(variant, precision, row["keep_ratio"])], row) for row in result[precision]["rows"]
                  if (variant, precision, row["keep_ratio"]) in speed]
        xs = [x for x, _ in points]
        ys = [100 * row["metrics"]["accuracy"] for _, row in points]
        errors = [[100 * (row["metrics"]["accuracy"] - row["interval"][0]) for _, row in points],
                  [100 * (row["interval"][1] - row["metrics"]["accuracy"]) for _, row in points]] \
            if points and points[0][1].get("interval") else None
        axis.errorbar(xs, ys, yerr=errors, fmt=style, capsize=2, markersize=4, label=label, alpha=0.85)
    for variant in [c.variant for c in cells((task_name,), (size,), (seed,), rivals=True) if c.variant.split("-")[0] in ("truncate", "layers")]:
        result = load(Cell(task_name, size, seed, variant))
        if result and (variant, "float32", 1.0) in speed:
            row = result["float32"]["rows"][0]
            axis.plot(speed[(variant, "float32", 1.0)], 100 * row["metrics"]["accuracy"], "^" if variant.startswith("truncate") else "v",
                      markersize=8, label=variant)
    axis.axhline(100 * plain_full - 1, color="gray", linestyle=":", label="plain full - 1 point")
    axis.set_xlabel("measured speedup over plain fine-tuning at keep_ratio 1 (CPU, 2 threads)")
    axis.set_ylabel("test accuracy (%), bootstrap 95% interval")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    axis.set_title(f"MiniLM-L6, {task_name}, {size or 'all'} training examples, seed {seed}", fontsize=9)
    figure.tight_layout()
    save_figure_atomic(figure, path)
    return True


def report(tasks, sizes, seeds, ablations: tuple[str, ...] = ()) -> None:
    for name in tasks:
        for size in sizes or TASKS[name].sizes:
            for recipe in ablations:
                summary = summarize(name, size, seeds, recipe)
                if summary is not None:
                    print_summary(summary)
                    write_text_atomic(RESULTS / f"{name}-n{size or 'all'}-{recipe}-summary.json",
                                      json.dumps(summary, indent=2))
            summary = summarize(name, size, seeds)
            if summary is None:
                continue
            summary["converged_reference"] = converged_reference(name, size, seeds[0])
            print_summary(summary)
            write_text_atomic(RESULTS / f"{name}-n{size or 'all'}-summary.json", json.dumps(summary, indent=2))
            if plot_pareto(name, size, seeds[0], GRAPHS / f"finetune-{name}-n{size or 'all'}.png"):
                print(f"plot: graphs/finetune-{name}-n{size or 'all'}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--sizes", default="", help="training-set sizes (default: each task's own)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-rivals", action="store_true", help="only plain and LAT")
    parser.add_argument("--ablations", default="", help=f"LAT recipes to run first, of: {', '.join(ABLATIONS)}")
    parser.add_argument("--quick", action="store_true", help="TREC at 1,000 examples, seed 0, with the rivals")
    parser.add_argument("--list", action="store_true", help="list the cells and which are done")
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tasks = QUICK["tasks"] if args.quick else tuple(args.tasks.split(","))
    sizes = QUICK["sizes"] if args.quick else tuple(int(s) for s in args.sizes.split(",") if s)
    seeds = QUICK["seeds"] if args.quick else tuple(int(s) for s in args.seeds.split(","))
    unknown = set(tasks) - set(TASKS)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; known: {', '.join(TASKS)}")
    ablations = tuple(a for a in args.ablations.split(",") if a)
    if set(ablations) - set(ABLATIONS):
        parser.error(f"unknown ablations {sorted(set(ablations) - set(ABLATIONS))}; known: {', '.join(ABLATIONS)}")
    todo = cells(tasks, sizes or None, seeds, rivals=not args.no_rivals, ablations=ablations)
    if args.list:
        for cell in todo:
            print(f"{'done' if cell.done() else 'todo':>4}  {cell.name}")
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not args.report:
        for cell in todo:
            if cell.done():
                continue
            print(f"\n## {cell.name}", flush=True)
            write_text_atomic(cell.result_path, json.dumps(run_cell(cell), indent=2))
        for name in tasks:
            for size in sizes or TASKS[name].sizes:
                path = timing_path(name, size, seeds[0])
                group = [c for c in cells((name,), (size,), (seeds[0],), rivals=not args.no_rivals)]
                newest = max((c.result_path.stat().st_mtime for c in group if c.done()), default=0)
                if all(c.done() for c in group) and (not path.exists() or path.stat().st_mtime < newest):
                    measured = timing(name, size, seeds[0])
                    if measured:
                        write_text_atomic(path, json.dumps(measured, indent=2))
    report(tasks, sizes or None, seeds, ablations)
    print(f"\nfinished in {(time.perf_counter() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
