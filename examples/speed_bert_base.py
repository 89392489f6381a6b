"""Speed of one latexport file against plain exports, on a BERT-base-shaped model.

    python examples/speed_bert_base.py [--seq-lens 128,512] [--repeats 10] [--threads 2]

Builds BERT-base (12 layers, hidden 768; random weights are enough for speed,
with the real uncased BERT vocabulary from the all-MiniLM-L6-v2 package),
converts it with latexport (validated), exports it plainly with optimum and
with torch.onnx, then times everything interleaved in one process at batch 1.
Writes graphs/speed-bert-base-seq{N}.json and .png and prints the tables.
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
from latexport.atomic import write_text_atomic
from latexport.bench import bench, plot, render
from latexport.export import convert

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001)


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
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baselines", default="optimum,torch,optimum-O2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    checkpoint = bert_base_checkpoint()
    model_dir = cache_dir() / "bert-base-random-latexport"
    start = time.perf_counter()
    result = convert(str(checkpoint), model_dir, overwrite=True)
    print(result.report.render())
    print(f"converted BERT-base in {time.perf_counter() - start:.0f} s")

    for seq_len in (int(n) for n in args.seq_lens.split(",")):
        result = bench(
            model_dir, seq_len=seq_len, batch=1, keep_ratios=RATIOS, baselines=tuple(args.baselines.split(",")),
            repeats=args.repeats, threads=args.threads,
        )
        print(render(result))
        print()
        GRAPHS.mkdir(exist_ok=True)
        write_text_atomic(GRAPHS / f"speed-bert-base-seq{seq_len}.json", result.to_json())
        plot(result, GRAPHS / f"speed-bert-base-seq{seq_len}.png",
             title=f"BERT-base shape, batch 1, sequence {seq_len}, CPU {args.threads} threads")


if __name__ == "__main__":
    main()
