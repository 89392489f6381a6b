"""ModernBERT on long inputs: speed against the FLOPs estimate and a plain export,
and how ACC behaves in its sliding-window layers.

    python examples/speed_modernbert_long.py [--seq-lens 2048,8192] [--repeats 3] [--threads 2]
    python examples/speed_modernbert_long.py --acc-only

Builds ModernBERT-base (22 layers, hidden 768, 12 heads, a 128-token window in
two layers of three, global layers every third; random weights are enough for
speed, with the real uncased BERT vocabulary from the all-MiniLM-L6-v2
package), converts it with latexport (validated), exports it plainly with
torch.onnx (eager attention), and times both interleaved in one process at
batch 1 for each length.  Writes graphs/speed-modernbert-base-seq{N}.json/.png.
From 4,096 tokens two ONNX Runtime sessions holding their peak memory in their
arenas outgrow 24 GiB, so the ratios are timed first (arena on, as deployed),
then keep_ratio 1.0 against the plain export with the arena off in both
(``-vs-plain``): without the arena every call allocates afresh, which costs the
dropping layers far more than layers that keep everything (measured at 4,096
tokens: keep_ratio 0.5 took 2x as long as 1.0 without the arena, 0.8x with it).
A length whose JSON exists is skipped (delete it to measure again).

Both graphs compute a local layer's attention densely and mask it, as
transformers' eager attention does, so the FLOPs estimate counts local layers
as global ones.

``--acc`` measures the choice documented in ``latexport.export.families.modernbert``:
in a local layer of the same model, after the second half of a 2,048-token
input was thinned to a quarter, the plain ACC sum and the sum divided by the
number of queries that see each key, averaged over the dense and the thinned
half.  Writes graphs/modernbert-local-acc.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, ModernBertConfig, ModernBertForSequenceClassification

from latexport.assets import MINILM, cache_dir, fetch
from latexport.bench.encoder import bench, plot, render
from latexport.export import convert
from latexport.export.baseline import baseline_path
from latexport.runtime.atomic import write_text_atomic

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.5, 0.1)
LONGEST = 8192
#: From this length the plain export is timed in a second run (``measure_speed``).
SEPARATE_FROM = 4096


def modernbert_base_checkpoint() -> Path:
    folder = cache_dir() / "modernbert-base-random"
    if (folder / "model.safetensors").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(str(fetch(MINILM)), model_max_length=LONGEST)
    config = ModernBertConfig(
        num_labels=2, max_position_embeddings=LONGEST, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )  # the rest is ModernBERT-base's shape: the config class's defaults
    torch.manual_seed(0)
    model = ModernBertForSequenceClassification(config)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def measure_speed(checkpoint: Path, seq_lens: list[int], repeats: int, threads: int, prepare_only: bool = False) -> None:
    out_dir = cache_dir() / "modernbert-base-random-latexport"
    if not (out_dir / "model.onnx").exists():  # convert writes the directory whole or not at all
        start = time.perf_counter()
        result = convert(str(checkpoint), out_dir)
        print(result.report.render())
        print(f"converted ModernBERT-base in {time.perf_counter() - start:.0f} s\n")
    baseline_path(str(checkpoint), "text-classification", "torch")  # exported once, cached
    if prepare_only:
        return
    for seq_len in seq_lens:
        stem = f"speed-modernbert-base-seq{seq_len}"
        if (GRAPHS / f"{stem}.json").exists():
            print(f"{stem}.json exists: skipped")
            continue
        title = f"ModernBERT-base shape, batch 1, sequence {seq_len}, CPU {threads} threads"
        if seq_len < SEPARATE_FROM:
            timed = bench(out_dir, seq_len=seq_len, batch=1, keep_ratios=RATIOS, baselines=("torch",),
                          repeats=repeats, threads=threads, memory=False)
            report(timed, stem, title)
            continue
        # Two sessions' arenas holding these peaks outgrow 24 GiB: the ratios with the arena (as deployed),
        # then keep_ratio 1.0 against the plain export with no arena in either.
        report(bench(out_dir, seq_len=seq_len, batch=1, keep_ratios=RATIOS, repeats=repeats, warmup=1, threads=threads,
                     memory=False), stem, title)
        report(bench(out_dir, seq_len=seq_len, batch=1, keep_ratios=(1.0,), baselines=("torch",), repeats=repeats,
                     warmup=1, threads=threads, memory=False, memory_arena=False), f"{stem}-vs-plain", title + ", no arena")


def report(timed, stem: str, title: str) -> None:
    print(render(timed), "\n")
    write_text_atomic(GRAPHS / f"{stem}.json", timed.to_json())
    plot(timed, GRAPHS / f"{stem}.png", title=title)


def measure_local_acc(checkpoint: Path, length: int = 2048, kept_share: float = 0.25) -> dict:
    """Plain and per-query-normalised ACC in local layer 1, by region, after thinning the second half."""
    model = ModernBertForSequenceClassification.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    base = model.model
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1000, 30000, size=(1, length)))
    thinned = np.sort(rng.choice(np.arange(length // 2, length), size=int(length // 2 * kept_share), replace=False))
    positions = np.concatenate([np.arange(length // 2), thinned])
    half_window = base.config.local_attention // 2
    allowed = np.abs(positions[:, None] - positions[None, :]) <= half_window
    mask = torch.zeros(allowed.shape).masked_fill(torch.from_numpy(~allowed), torch.finfo(torch.float32).min)[None, None]
    with torch.no_grad():
        hidden = base.embeddings(ids)
        hidden = run_layer(base, 0, hidden, torch.arange(length)[None], torch.zeros(1, 1, 1, length))
        hidden = hidden[:, torch.from_numpy(positions)]
        captured = []
        handle = base.layers[1].attn.register_forward_hook(lambda module, args, output: captured.append(output[-1]))
        run_layer(base, 1, hidden, torch.from_numpy(positions)[None], mask)
        handle.remove()
    probs = captured[0][0].numpy().astype(np.float64)  # [H, n, n]
    plain = probs.sum(axis=(0, 1))
    normalised = plain / allowed.sum(axis=0)
    dense, sparse = positions < length // 2, positions >= length // 2
    away_from_ends = (positions >= half_window) & (positions < length - half_window)
    summary = {
        "length": length, "thinned_half_kept": kept_share, "half_window": half_window, "layer": 1,
        "plain_dense": float(plain[dense & away_from_ends].mean()), "plain_thinned": float(plain[sparse & away_from_ends].mean()),
        "normalised_dense": float(normalised[dense & away_from_ends].mean()),
        "normalised_thinned": float(normalised[sparse & away_from_ends].mean()),
        "plain_first_tokens": float(plain[:half_window].mean()),
    }
    summary["plain_thinned_over_dense"] = summary["plain_thinned"] / summary["plain_dense"]
    summary["normalised_thinned_over_dense"] = summary["normalised_thinned"] / summary["normalised_dense"]
    return summary


def run_layer(base, index, hidden, position_ids, mask):
    """One transformers layer on these word-vectors at these original positions, in either transformers line."""
    layer = base.layers[index]
    if hasattr(layer, "attention_type"):  # transformers 5
        rotary = base.rotary_emb(hidden, position_ids, layer.attention_type)
        output = layer(hidden, attention_mask=mask, position_embeddings=rotary)
    else:
        output = layer(hidden, attention_mask=mask, sliding_window_mask=mask, position_ids=position_ids,
                       output_attentions=True)
    return output[0] if isinstance(output, tuple) else output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="2048,8192")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--acc-only", action="store_true")
    parser.add_argument("--prepare-only", action="store_true", help="Convert and export, time nothing.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    GRAPHS.mkdir(exist_ok=True)
    checkpoint = modernbert_base_checkpoint()
    if not args.prepare_only:
        acc = measure_local_acc(checkpoint)
        print(json.dumps(acc, indent=1))
        write_text_atomic(GRAPHS / "modernbert-local-acc.json", json.dumps(acc, indent=1) + "\n")
    if not args.acc_only:
        measure_speed(checkpoint, [int(n) for n in args.seq_lens.split(",")], args.repeats, args.threads,
                      args.prepare_only)


if __name__ == "__main__":
    main()
