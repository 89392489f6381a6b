"""What int8 costs in accuracy, and buys in speed, on the real fine-tuning benchmark.

    python examples/finetune_benchmark.py --tasks rotten_tomatoes,trec --seeds 0 --no-rivals   # first
    python examples/int8_accuracy.py [--tasks rotten_tomatoes,trec]

For each task, the seed-0 LAT checkpoint of the fine-tuning matrix (the
task's first training-set size) is converted
twice, ``--optimize`` (float32) and ``--optimize --quantize dynamic`` (int8),
and both are evaluated on the held-out test split at every ratio.  Latency is
then timed side by side, interleaved in one process, on batches of the test
texts' own shape.  Writes graphs/int8-{task}.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from latexport.export import convert
from latexport.runtime import LatencyAdjustableSession
from latexport.runtime.atomic import write_text_atomic
from latexport.runtime.timing import interleaved
from latexport.training.corpora import splits
from latexport.training.evaluate import evaluate

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
BATCH = 32


def run_task(task: str) -> dict:
    from finetune_benchmark import TASKS, Cell

    work = Cell(task, TASKS[task].sizes[0], 0, "lat").work
    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").exists():
        raise SystemExit(f"{checkpoint} is missing: run examples/finetune_benchmark.py --tasks {task} --seeds 0 first")
    test = str(splits(task)["test"])
    folders = {}
    for name, options in {"float32": {"optimize": True}, "int8": {"optimize": True, "quantize": "dynamic"}}.items():
        folders[name] = convert(str(checkpoint), work / f"lat-onnx-{name}", overwrite=True, **options).out_dir
    accuracy = {name: evaluate(folder, test, keep_ratios=RATIOS, batch_size=BATCH) for name, folder in folders.items()}

    # Speed: the same real batch through both files, every (file, ratio) interleaved.
    sessions = {name: LatencyAdjustableSession(folder) for name, folder in folders.items()}
    texts = [json.loads(line)["text"] for line in Path(test).read_text().splitlines()[:BATCH]]
    inputs = sessions["float32"].encode(texts)
    calls = {
        (name, ratio): (lambda s=session, r=ratio: s.run(inputs, keep_ratio=r))
        for name, session in sessions.items()
        for ratio in RATIOS
    }
    times = interleaved(calls, repeats=15, warmup=2)
    medians = {key: float(np.median(values)) for key, values in times.items()}
    full = medians[("float32", 1.0)]
    rows = [
        {
            "keep_ratio": ratio,
            "float32_accuracy": accuracy["float32"].row(ratio).metrics["accuracy"],
            "int8_accuracy": accuracy["int8"].row(ratio).metrics["accuracy"],
            "float32_speedup": full / medians[("float32", ratio)],
            "int8_speedup": full / medians[("int8", ratio)],
            "int8_over_float32": medians[("float32", ratio)] / medians[("int8", ratio)],
        }
        for ratio in RATIOS
    ]
    summary = {"task": task, "batch": BATCH, "sequence": int(inputs["input_ids"].shape[1]), "rows": rows}
    print(f"\n== {task}: int8 against float32 (both fused), test split, batches of {BATCH} ==")
    print(f"{'keep_ratio':>10} {'fp32 acc':>9} {'int8 acc':>9} {'fp32 speedup':>13} {'int8 speedup':>13} {'int8/fp32':>10}")
    for row in rows:
        print(f"{row['keep_ratio']:>10g} {row['float32_accuracy']:>9.4f} {row['int8_accuracy']:>9.4f} "
              f"{row['float32_speedup']:>12.2f}x {row['int8_speedup']:>12.2f}x {row['int8_over_float32']:>9.2f}x")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="rotten_tomatoes,trec")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    GRAPHS.mkdir(exist_ok=True)
    for task in args.tasks.split(","):
        write_text_atomic(GRAPHS / f"int8-{task}.json", json.dumps(run_task(task), indent=2))
    print(f"\nfinished in {(time.perf_counter() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
