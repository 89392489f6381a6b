"""Speed of a pruned T5 encoder, and of generation through it, on a T5-base-shaped model.

    python examples/speed_t5_base.py [--seq-len 512] [--new-tokens 32] [--repeats 10] [--threads 2]

Builds T5-base (12 + 12 layers, d_model 768, 12 heads, ReLU feed-forward 3072;
random weights are enough for speed) and converts it with
``--task text2text-generation`` (latexport's encoder plus optimum's decoder
graphs, validated against transformers).  No T5 vocabulary is available
offline, so the checkpoint carries a small synthetic SentencePiece-style
tokenizer; the timed inputs are random ids over the model's 32,128-token
vocabulary and never pass through it.

Then, in one process, interleaved:

* the encoder at batch 1 and ``--seq-len`` tokens, at every keep ratio, with
  optimum's plain T5 encoder export beside it (``latexport bench``);
* end-to-end generation (encoder, first decoder step, then ``--new-tokens - 1``
  cached steps; </s> is suppressed so every call decodes the same number of
  tokens) at every keep ratio: total latency and time to the first token.

Writes graphs/speed-t5-base-encoder-seq{N}.json/.png and
graphs/speed-t5-base-generation.json/.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration  # noqa: E402

from latexport.assets import cache_dir  # noqa: E402
from latexport.atomic import write_bytes_atomic, write_text_atomic  # noqa: E402
from latexport.bench import interleaved, make_feed, plot, render  # noqa: E402
from latexport.bench import bench as bench_encoder  # noqa: E402
from latexport.estimate import estimated_speedup  # noqa: E402
from latexport.export import convert  # noqa: E402
from latexport.generation import Seq2SeqGenerator  # noqa: E402

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)
WORDS = "the a of and to in is was it for on that with as by at this be not are from or an but have".split()


def synthetic_t5_tokenizer() -> PreTrainedTokenizerFast:
    """T5's special ids (<pad> 0, </s> 1, <unk> 2) over a few dozen English pieces."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -3.0) for word in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz.,"]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def t5_base_checkpoint() -> Path:
    folder = cache_dir() / "t5-base-random"
    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    config = T5Config(  # t5-base's published shape
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    T5ForConditionalGeneration(config).save_pretrained(tmp)
    synthetic_t5_tokenizer().save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def bench_generation(model_dir: Path, seq_len: int, new_tokens: int, repeats: int, threads: int) -> dict:
    """Median end-to-end latency and time to first token at each ratio, interleaved."""
    generator = Seq2SeqGenerator(model_dir, intra_op_threads=threads)
    feed = make_feed(generator.encoder.metadata, 1, seq_len, mixed_lengths=False)
    results: dict[str, list] = {}

    def call(ratio: float):
        result = generator.generate_ids(feed, ratio, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        results.setdefault(f"{ratio:g}", []).append(result)

    times = interleaved({f"{ratio:g}": (lambda r=ratio: call(r)) for ratio in RATIOS}, repeats=repeats, warmup=1)
    metadata = generator.encoder.metadata
    rows = []
    for ratio in RATIOS:
        timed = results[f"{ratio:g}"][-repeats:]  # the warm-up call is not timed
        rows.append({
            "keep_ratio": ratio,
            "median_total_ms": float(np.median(times[f"{ratio:g}"]) * 1e3),
            "median_first_token_ms": float(np.median([r.first_token_ms for r in timed])),
            "median_encoder_ms": float(np.median([r.encoder_ms for r in timed])),
            "kept_by_encoder": int(timed[0].kept_tokens[0]),
            "new_tokens": len(timed[0].token_ids[0]),
            "estimated_encoder_speedup": estimated_speedup(metadata.flops, metadata.profile, seq_len, ratio),
        })
    full = rows[0]
    for row in rows:
        row["total_speedup"] = full["median_total_ms"] / row["median_total_ms"]
        row["first_token_speedup"] = full["median_first_token_ms"] / row["median_first_token_ms"]
        row["decoding_ms_per_token"] = (row["median_total_ms"] - row["median_first_token_ms"]) / max(1, row["new_tokens"] - 1)
    return {"model_dir": str(model_dir), "seq_len": seq_len, "new_tokens": new_tokens, "threads": threads,
            "repeats": repeats, "rows": rows}


def render_generation(result: dict) -> str:
    lines = [
        f"T5-base generation: prompt {result['seq_len']} tokens, {result['new_tokens']} new tokens, batch 1, "
        f"{result['threads']} threads, {result['repeats']} interleaved repeats (medians)",
        f"{'keep_ratio':>10} {'kept':>5} {'encoder ms':>11} {'1st token ms':>13} {'ms/token':>9} {'total ms':>9} "
        f"{'total x':>8} {'1st tok x':>10} {'enc. est.':>10}",
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['keep_ratio']:>10g} {row['kept_by_encoder']:>5} {row['median_encoder_ms']:>11.1f} "
            f"{row['median_first_token_ms']:>13.1f} {row['decoding_ms_per_token']:>9.1f} {row['median_total_ms']:>9.1f} "
            f"{row['total_speedup']:>7.2f}x {row['first_token_speedup']:>9.2f}x {row['estimated_encoder_speedup']:>9.2f}x"
        )
    return "\n".join(lines)


def plot_generation(result: dict, path: Path) -> None:
    rows = result["rows"]
    ratios = [row["keep_ratio"] for row in rows]
    figure, (latency_axis, speedup_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    latency_axis.plot(ratios, [r["median_total_ms"] for r in rows], marker="o", label=f"total ({result['new_tokens']} new tokens)")
    latency_axis.plot(ratios, [r["median_first_token_ms"] for r in rows], marker="s", label="time to first token")
    latency_axis.plot(ratios, [r["median_encoder_ms"] for r in rows], marker="^", label="encoder")
    latency_axis.set_xlabel("keep_ratio")
    latency_axis.set_ylabel("median ms")
    latency_axis.invert_xaxis()
    latency_axis.legend()
    speedup_axis.plot(ratios, [r["total_speedup"] for r in rows], marker="o", label="total")
    speedup_axis.plot(ratios, [r["first_token_speedup"] for r in rows], marker="s", label="time to first token")
    speedup_axis.plot(ratios, [r["estimated_encoder_speedup"] for r in rows], "--", label="encoder estimate (FLOPs)")
    speedup_axis.set_xlabel("keep_ratio")
    speedup_axis.set_ylabel("speedup vs keep_ratio 1")
    speedup_axis.invert_xaxis()
    speedup_axis.legend()
    figure.suptitle(f"T5-base shape, generation from a {result['seq_len']}-token prompt, CPU {result['threads']} threads")
    figure.tight_layout()
    from io import BytesIO

    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    checkpoint = t5_base_checkpoint()
    start = time.perf_counter()
    result = convert(str(checkpoint), cache_dir() / "t5-base-random-latexport", overwrite=True)
    print(result.report.render())
    print(f"converted T5-base (text2text-generation) in {time.perf_counter() - start:.0f} s\n")

    GRAPHS.mkdir(exist_ok=True)
    encoder = bench_encoder(
        result.out_dir, seq_len=args.seq_len, batch=1, keep_ratios=RATIOS, baselines=("optimum",),
        repeats=args.repeats, threads=args.threads, memory=False,
    )
    print(render(encoder), "\n")
    stem = f"speed-t5-base-encoder-seq{args.seq_len}"
    write_text_atomic(GRAPHS / f"{stem}.json", encoder.to_json())
    plot(encoder, GRAPHS / f"{stem}.png", title=f"T5-base encoder, batch 1, sequence {args.seq_len}, CPU {args.threads} threads")

    generation = bench_generation(result.out_dir, args.seq_len, args.new_tokens, max(3, args.repeats // 2), args.threads)
    print(render_generation(generation))
    write_text_atomic(GRAPHS / "speed-t5-base-generation.json", json.dumps(generation, indent=2))
    plot_generation(generation, GRAPHS / "speed-t5-base-generation.png")


if __name__ == "__main__":
    main()
