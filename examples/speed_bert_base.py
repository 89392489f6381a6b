"""Speed of latexport files against plain exports, on a BERT-base-shaped model.

    python examples/speed_bert_base.py [--seq-lens 128,512] [--repeats 15] [--threads 2]

Builds BERT-base (12 layers, hidden 768; random weights are enough for speed,
with the real uncased BERT vocabulary from the all-MiniLM-L6-v2 package),
converts it with latexport three ways (plain, ``--optimize``, and
``--optimize --quantize dynamic``; each validated), exports it plainly with
optimum (also ONNX Runtime-optimized, O2) and with torch.onnx, then times
everything interleaved in one process:

* batch 1 at each sequence length, every variant at every ratio;
* batch 32 of mixed lengths (rows 25-100% of 128 tokens, right-padded).

Writes graphs/speed-bert-base-seq{N}.json/.png and
graphs/speed-bert-base-batch32-mixed.json/.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from latexport.assets import MINILM, cache_dir, fetch
from latexport.bench.encoder import bench, plot, render
from latexport.export import convert
from latexport.runtime.atomic import write_text_atomic

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001, 0.0001)
BATCH_RATIOS = (1.0, 0.5, 0.2, 0.1)


def bert_base_checkpoint() -> Path:
    folder = cache_dir() / "bert-base-random"
    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(fetch(MINILM))).save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="128,512")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baselines", default="optimum,torch,optimum-O2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    checkpoint = bert_base_checkpoint()
    variants = {}
    for name, options in {"plain": {}, "fused": {"optimize": True}, "int8": {"optimize": True, "quantize": "dynamic"}}.items():
        start = time.perf_counter()
        result = convert(str(checkpoint), cache_dir() / f"bert-base-random-latexport-{name}", overwrite=True, **options)
        print(result.report.render())
        if result.variant_report:
            print(result.variant_report.render())
        print(f"converted BERT-base ({name}) in {time.perf_counter() - start:.0f} s\n")
        variants[name] = result.out_dir

    baselines = tuple(args.baselines.split(","))
    compare = (variants["fused"], variants["int8"])
    GRAPHS.mkdir(exist_ok=True)
    for seq_len in (int(n) for n in args.seq_lens.split(",")):
        result = bench(
            variants["plain"], seq_len=seq_len, batch=1, keep_ratios=RATIOS, baselines=baselines, compare=compare,
            repeats=args.repeats, threads=args.threads,
        )
        report(result, f"speed-bert-base-seq{seq_len}", f"BERT-base shape, batch 1, sequence {seq_len}, CPU {args.threads} threads")

    result = bench(
        variants["plain"], seq_len=128, batch=32, keep_ratios=BATCH_RATIOS, baselines=baselines, compare=compare,
        repeats=max(3, args.repeats // 3), threads=args.threads, mixed_lengths=True,
    )
    report(result, "speed-bert-base-batch32-mixed", f"BERT-base shape, batch 32 of mixed lengths (<= 128), CPU {args.threads} threads")


def report(result, stem: str, title: str) -> None:
    print(render(result))
    print()
    write_text_atomic(GRAPHS / f"{stem}.json", result.to_json())
    plot(result, GRAPHS / f"{stem}.png", title=title)


if __name__ == "__main__":
    main()
