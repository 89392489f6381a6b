"""Throughput of batch_inference.py on real text: all-MiniLM-L6-v2 over Rotten Tomatoes snippets.

    python examples/ray_data/throughput.py [--task text-classification] [--ratios 1.0,0.5] [--repeats 3] [--texts 3000]

Converts the real all-MiniLM-L6-v2 (``latexport.assets``; for classification
with a new, untrained two-label head, so only the speed means anything) into
the latexport cache once, writes the first ``--texts`` review snippets of the
training split (a random sample of the corpus: the splits are shuffled with a
fixed seed, ``latexport.training.corpora``) one per line, starts one local Ray
instance and runs the whole job (read, actors loading the model, every batch,
Parquet written and renamed) at each ratio, interleaved in shuffled rounds.  A
job over a single text, in the same rounds, measures the fixed cost of a job
(actor start-up and model loading).  Needs the ``export`` and ``ray`` extras.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import batch_inference
import numpy as np

from latexport.assets import MINILM, cache_dir, fetch
from latexport.runtime.atomic import write_text_atomic
from latexport.training.corpora import read_jsonl, splits

SEED = 0
ONE_TEXT = "one text"


def converted_minilm(task: str) -> Path:
    out_dir = cache_dir() / f"ray-data-minilm-{task}"
    if not (out_dir / "model.onnx").exists():
        import torch

        from latexport.export.conversion import convert

        torch.manual_seed(SEED)  # the classification head is new: the same random head every time
        convert(str(fetch(MINILM)), out_dir, task=task, overwrite=True)
    return out_dir


def review_file(count: int) -> Path:
    path = cache_dir() / f"ray-data-rotten-tomatoes-{count}.txt"
    if not path.exists():
        rows = read_jsonl(splits("rotten_tomatoes")["train"])[:count]
        write_text_atomic(path, "".join(row["text"] + "\n" for row in rows))
    return path


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="text-classification", choices=batch_inference.TASKS)
    parser.add_argument("--ratios", default="1.0,0.5", help="Keep ratios to compare, comma-separated.")
    parser.add_argument("--repeats", type=int, default=3, help="Shuffled rounds; medians are reported.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--texts", type=int, default=3000, help="Review snippets per job (up to 8,452, the training split).")
    parser.add_argument("--json", type=Path, help="Also write every job's timing here.")
    parser.add_argument("--model-dir", type=Path,
                        help="A converted directory to time instead (say, a fine-tuned and tuned classifier); "
                             "'default' in --ratios is then its recorded ratio.")
    args = parser.parse_args()

    model_dir, texts = args.model_dir or converted_minilm(args.task), review_file(args.texts)
    if "default" in args.ratios:
        from latexport.runtime.inspection import load_metadata

        args.ratios = args.ratios.replace("default", repr(load_metadata(model_dir).default_keep_ratio))
    count = len(texts.read_text(encoding="utf-8").splitlines())
    ratios = [float(value) for value in args.ratios.split(",")]
    settings = dict(batch_size=args.batch_size, workers=args.workers, threads=args.threads, overwrite=True)
    rng, seconds = random.Random(SEED), {variant: [] for variant in [*ratios, ONE_TEXT]}
    ray.init(**batch_inference.local_ray_options(args.workers, args.threads))
    try:
        with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
            one_text = Path(scratch) / "one.txt"
            one_text.write_text(texts.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
            for round_index in range(args.repeats):
                variants = list(seconds)
                rng.shuffle(variants)
                for variant in variants:
                    if variant == ONE_TEXT:
                        result = batch_inference.run_job(model_dir, one_text, Path(scratch) / "out", **settings)
                    else:
                        result = batch_inference.run_job(model_dir, texts, Path(scratch) / "out", keep_ratio=variant,
                                                         **settings)
                    seconds[variant].append(result.seconds)
                    print(f"round {round_index + 1}: {variant}: {result.rows} texts in {result.seconds:.1f} s", flush=True)
    finally:
        ray.shutdown()

    fixed = float(np.median(seconds[ONE_TEXT]))
    print(f"\n{count} Rotten Tomatoes snippets, {model_dir.name} {args.task}, {args.workers} workers x {args.threads} threads, "
          f"batch {args.batch_size}, local Ray; medians of {args.repeats} rounds; a one-text job took {fixed:.1f} s")
    print(f"{'keep_ratio':>10} {'seconds':>8} {'texts/s':>8} {'excl. fixed cost':>17}")
    for ratio in ratios:
        median = float(np.median(seconds[ratio]))
        print(f"{ratio:>10g} {median:>8.1f} {count / median:>8.0f} {count / (median - fixed):>17.0f}")
    if args.json:
        write_text_atomic(args.json, json.dumps({"texts": count, "task": args.task, "settings": settings,
                                                 "seconds": {str(k): v for k, v in seconds.items()},
                                                 "measured": time.strftime("%Y-%m-%d %H:%M")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
