"""Speed of a pruned T5 encoder, and of generation through it, on a T5-base-shaped model.

    python examples/speed_t5_base.py [--seq-len 512] [--new-tokens 32] [--repeats 10] [--threads 2]

Builds T5-base (12 + 12 layers, d_model 768, 12 heads, ReLU feed-forward 3072;
random weights are enough for speed) and converts it with
``--task text2text-generation`` (latexport's encoder and decoder graphs,
validated against transformers).  No T5 vocabulary is available
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
import logging
import shutil
import time
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from latexport.assets import cache_dir
from latexport.bench.encoder import bench as bench_encoder
from latexport.bench.encoder import plot, render
from latexport.bench.generation import (
    bench_generation,
    plot_generation,
    render_generation,
)
from latexport.export import convert
from latexport.runtime.atomic import write_text_atomic

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

    generation = bench_generation(
        result.out_dir, prompt_tokens=args.seq_len, new_tokens=args.new_tokens, keep_ratios=RATIOS,
        repeats=max(3, args.repeats // 2), threads=args.threads,
    )
    print(render_generation(generation))
    write_text_atomic(GRAPHS / "speed-t5-base-generation.json", generation.to_json())
    plot_generation(
        generation, GRAPHS / "speed-t5-base-generation.png",
        title=f"T5-base shape, {args.seq_len}-token prompt, {args.new_tokens} new tokens, CPU {args.threads} threads",
    )


if __name__ == "__main__":
    main()
