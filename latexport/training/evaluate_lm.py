"""``latexport tune`` for decoders: the fastest keep ratio whose continuation perplexity,
on the user's own text, stays within a rise budget.

A decoder's knob costs what its pruned prompt pass no longer predicts.  So the
measure is the one ``examples/long_prompts.py`` reports: each window of the
text is a prompt of ``prompt_tokens`` tokens and the ``scored_tokens`` that
follow; at every ratio the prompt graph runs pruned and the decode-step graph
scores the continuation against its cache (``CausalGenerator.continuation_nll``).
The rise is ``exp(mean NLL at r - mean NLL at 1) - 1`` over all scored tokens.

Texts are small samples of what a user will send, so every rise carries a
paired percentile bootstrap 95% interval: windows are resampled, the same
resamples at every ratio.  ``--max-rise`` holds the interval's upper bound to
the budget, as ``--max-drop`` does for classifiers (``evaluate.choose_ratio``).
Speed is the prompt pass alone on the first window, every ratio interleaved
in shuffled rounds, medians.  Profile powers are tried as for classifiers:
each is a rewritten copy of the file (``latexport.runtime.reprofile``).

Needs onnxruntime, numpy and tokenizers only.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from latexport.runtime.errors import LatexportError
from latexport.runtime.generation import CausalGenerator
from latexport.runtime.metadata import PREFIX
from latexport.runtime.profile import EliminationProfile
from latexport.runtime.reprofile import profile_of, reprofile
from latexport.runtime.session import MODEL_FILE
from latexport.runtime.timing import interleaved
from latexport.training.data import read_documents
from latexport.training.evaluate import (
    bootstrap_indices,
    percentile_interval,
    with_power,
    write_metadata,
)

#: Ratios tried by default: a decoder's prompt pass pays off at small ratios.
GENERATION_TUNING_RATIOS = (1.0, 0.7, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02)
#: Powers tried by default, each after the file's own delay: a prompt pass does best at
#: low powers (``latexport.runtime.profile.prompt_pass_profile``).
GENERATION_TUNING_POWERS = (0.25, 0.5, 1.0, 1.5)
DEFAULT_MAX_RISE = 0.05
_ROUNDING = 1e-9


@dataclass
class RiseRow:
    keep_ratio: float
    #: Perplexity over every scored token, and its rise over keep_ratio 1 with the paired interval.
    perplexity: float
    rise: float
    rise_interval: tuple[float, float]
    prompt_ms: float
    speedup: float


@dataclass
class LanguageEvaluation:
    model_dir: str
    windows: int
    prompt_tokens: int
    scored_tokens: int
    rows: list[RiseRow] = field(default_factory=list)

    def row(self, keep_ratio: float) -> RiseRow:
        return next(row for row in self.rows if row.keep_ratio == keep_ratio)

    @property
    def full(self) -> RiseRow:
        return self.row(1.0)


def text_windows(
    generator: CausalGenerator, sources: list[str], text_column: str, prompt_tokens: int, scored_tokens: int,
    max_windows: int,
) -> list[list[int]]:
    """Windows of ``prompt_tokens + scored_tokens`` token ids: consecutive, non-overlapping
    spans of each document, taken round-robin over the documents (so one long document
    does not fill the sample), at most ``max_windows``."""
    from tokenizers import Tokenizer

    width = prompt_tokens + scored_tokens
    if width > generator.prompt.max_length:
        raise LatexportError(
            f"a window of {prompt_tokens} prompt and {scored_tokens} scored tokens exceeds the model's maximum of "
            f"{generator.prompt.max_length} positions; pass a smaller --prompt-tokens"
        )
    tokenizer = Tokenizer.from_file(str(generator.model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    per_document = []
    for source in sources:
        for text in read_documents(source, text_column):
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            per_document.append([ids[start : start + width] for start in range(0, len(ids) - width + 1, width)])
    windows, depth = [], 0
    while len(windows) < max_windows and any(depth < len(spans) for spans in per_document):
        windows.extend(spans[depth] for spans in per_document if depth < len(spans))
        depth += 1
    if not windows:
        longest = max((len(spans) for spans in per_document), default=0)
        raise LatexportError(
            f"the text gives no window of {width} tokens ({prompt_tokens} prompt + {scored_tokens} scored; "
            f"{len(per_document)} documents, {longest} windows in the longest); give more text or a smaller --prompt-tokens"
        )
    return windows[:max_windows]


def evaluate_language_model(
    model_dir: Path, sources: list[str], text_column: str = "text", keep_ratios=GENERATION_TUNING_RATIOS,
    prompt_tokens: int = 1024, scored_tokens: int = 64, max_windows: int = 32, repeats: int = 5, threads: int = 0,
) -> LanguageEvaluation:
    """Perplexity rise and measured prompt-pass speedup of a text-generation directory at each ratio."""
    ratios = sorted({1.0, *(float(r) for r in keep_ratios)}, reverse=True)
    if any(not 0.0 < r <= 1.0 for r in ratios):
        raise LatexportError(f"keep ratios must be in (0, 1], got {ratios}")
    generator = CausalGenerator(model_dir, intra_op_threads=threads)
    windows = text_windows(generator, sources, text_column, prompt_tokens, scored_tokens, max_windows)
    nll = np.array([[generator.continuation_nll(w[:prompt_tokens], w[prompt_tokens:], r) for w in windows] for r in ratios])
    resamples = bootstrap_indices(len(windows))
    tokens = len(windows) * scored_tokens
    mean_nll = nll.sum(axis=1) / tokens
    resampled = nll[:, resamples].sum(axis=2) / (resamples.shape[1] * scored_tokens)  # [ratios, resamples]

    first = np.array([windows[0][:prompt_tokens]], dtype=np.int64)
    feed = {"input_ids": first, "attention_mask": np.ones_like(first)}
    times = interleaved({f"{r:g}": (lambda r=r: generator.prefill(feed, r)) for r in ratios}, repeats, 1)
    medians = {r: float(np.median(times[f"{r:g}"])) * 1e3 for r in ratios}
    evaluation = LanguageEvaluation(str(model_dir), len(windows), prompt_tokens, scored_tokens)
    for index, ratio in enumerate(ratios):
        rises = np.expm1(resampled[index] - resampled[0])
        evaluation.rows.append(RiseRow(
            keep_ratio=ratio, perplexity=float(math.exp(mean_nll[index])), rise=float(math.expm1(mean_nll[index] - mean_nll[0])),
            rise_interval=percentile_interval(rises), prompt_ms=medians[ratio], speedup=medians[1.0] / medians[ratio],
        ))
    return evaluation


def choose_ratio(
    evaluation: LanguageEvaluation, max_rise: Optional[float] = None, target_speedup: Optional[float] = None
) -> tuple[float, str, Optional[str]]:
    """The ratio, the constraint in words, and a note (or None); as ``evaluate.choose_ratio``.

    ``max_rise``: the fastest ratio whose rise interval's upper bound is within the
    budget (keep_ratio 1 always qualifies); the note says when a faster one met it
    by its point estimate only, and about how many windows would narrow its interval.
    ``target_speedup``: the ratio with the smallest rise among those that reach it.
    """
    check_constraint(max_rise, target_speedup)
    if max_rise is not None:
        fastest = lambda rows: max(rows, key=lambda row: (row.speedup, row.keep_ratio))  # noqa: E731
        best = fastest(row for row in evaluation.rows if row.keep_ratio == 1.0 or row.rise_interval[1] <= max_rise + _ROUNDING)
        by_point = fastest(row for row in evaluation.rows if row.rise <= max_rise + _ROUNDING)
        constraint = (
            f"upper bound of the 95% interval of the perplexity rise within {100 * max_rise:g}%, "
            f"on {evaluation.windows} windows of {evaluation.prompt_tokens} + {evaluation.scored_tokens} tokens"
        )
        note = _windows_needed(evaluation, by_point, max_rise) if by_point.speedup > best.speedup else None
        return best.keep_ratio, constraint, note
    fast = [row for row in evaluation.rows if row.speedup >= target_speedup]
    if not fast:
        top = max(evaluation.rows, key=lambda row: row.speedup)
        raise LatexportError(
            f"no keep_ratio reached a {target_speedup:g}x speedup on this text; the fastest measured was "
            f"{top.speedup:.2f}x at keep_ratio {top.keep_ratio:g}"
        )
    best = min(fast, key=lambda row: (row.rise, -row.keep_ratio))
    return best.keep_ratio, f"measured prompt-pass speedup of at least {target_speedup:g}x", None


def check_constraint(max_rise: Optional[float], target_speedup: Optional[float]) -> None:
    if (max_rise is None) == (target_speedup is None):
        raise LatexportError("give exactly one of --max-rise or --target-speedup")
    if max_rise is not None and not max_rise >= 0:
        raise LatexportError(f"max_rise must be 0 or more, got {max_rise}")
    if target_speedup is not None and not target_speedup > 0:
        raise LatexportError(f"target_speedup must be positive, got {target_speedup}")


def _windows_needed(evaluation: LanguageEvaluation, row: RiseRow, max_rise: float) -> str:
    passed_over = (
        f"keep_ratio {row.keep_ratio:g} ({row.speedup:.2f}x) is within the budget by its point estimate "
        f"(+{100 * row.rise:.1f}%) but its interval reaches +{100 * row.rise_interval[1]:.1f}%"
    )
    if row.rise >= max_rise - _ROUNDING:
        return f"{passed_over}; its rise equals the budget, so no amount of text would make the interval fit"
    needed = round(evaluation.windows * ((row.rise_interval[1] - row.rise) / (max_rise - row.rise)) ** 2)
    return f"{passed_over}; about {needed} windows (now {evaluation.windows}) would narrow it enough, if the rise stays the same"


@dataclass
class LanguageTuneResult:
    keep_ratio: float
    power: float
    constraint: str
    evaluation: LanguageEvaluation
    note: Optional[str] = None
    evaluations: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)


def tune_language_model(
    model_dir: Path, sources: list[str], text_column: str = "text", max_rise: Optional[float] = None,
    target_speedup: Optional[float] = None, keep_ratios=GENERATION_TUNING_RATIOS,
    powers: Optional[tuple] = GENERATION_TUNING_POWERS,
    prompt_tokens: int = 1024, scored_tokens: int = 64, max_windows: int = 32, repeats: int = 5, threads: int = 0,
) -> LanguageTuneResult:
    """Evaluate at each profile power, choose the power and ratio, record both in model.onnx."""
    if max_rise is None and target_speedup is None:
        max_rise = DEFAULT_MAX_RISE
    check_constraint(max_rise, target_speedup)
    model_dir = Path(model_dir)
    model_path = model_dir / MODEL_FILE
    if not model_path.is_file():
        raise LatexportError(f"{model_path} does not exist; give a directory written by latexport convert")
    current = profile_of(model_path).power
    tried = sorted({float(p) for p in powers}) if powers else [current]
    for power in tried:
        EliminationProfile(num_layers=1, power=power)  # refuses an out-of-range power before any work
    evaluations, choices = {}, {}
    with tempfile.TemporaryDirectory(prefix="latexport-tune-") as scratch:
        for power in tried:
            directory = with_power(model_dir, power, Path(scratch) / f"power-{power:g}", current)
            evaluations[power] = evaluate_language_model(
                directory, sources, text_column, keep_ratios, prompt_tokens, scored_tokens, max_windows, repeats, threads)
    refusals = []
    for power, evaluation in evaluations.items():
        evaluation.model_dir = str(model_dir)
        try:
            choices[power] = choose_ratio(evaluation, max_rise, target_speedup)
        except LatexportError as error:
            refusals.append(f"power {power:g}: {error}")
    if not choices:
        raise LatexportError("; ".join(refusals))

    def merit(power: float):
        row = evaluations[power].row(choices[power][0])
        return row.speedup if max_rise is not None else (-row.rise, row.speedup)

    power = max(choices, key=merit)
    ratio, constraint, note = choices[power]
    record = {
        "constraint": constraint, "note": note, "data": [str(s) for s in sources], "windows": evaluations[power].windows,
        "metric": "perplexity rise", "power": power, "prompt_tokens": prompt_tokens, "scored_tokens": scored_tokens,
        "curve": _curve(evaluations[power]), "powers": {f"{p:g}": _curve(e) for p, e in evaluations.items()},
    }
    values = {"default_keep_ratio": repr(float(ratio)), "tuning": json.dumps(record)}
    if power != current:
        reprofile(model_path, power, metadata={PREFIX + key: value for key, value in values.items()})
    else:
        write_metadata(model_path, values)
    return LanguageTuneResult(ratio, power, constraint, evaluations[power], note, evaluations,
                              {p: choice[0] for p, choice in choices.items()})


def _curve(evaluation: LanguageEvaluation) -> list[dict]:
    return [{"keep_ratio": row.keep_ratio, "perplexity": row.perplexity, "rise": row.rise,
             "rise_interval": list(row.rise_interval), "speedup": row.speedup} for row in evaluation.rows]


def render(evaluation: LanguageEvaluation) -> str:
    lines = [
        f"{evaluation.model_dir}: {evaluation.windows} windows of {evaluation.prompt_tokens} prompt + "
        f"{evaluation.scored_tokens} scored tokens; rises with paired bootstrap 95% intervals",
        f"{'keep_ratio':>10} {'perplexity':>10} {'rise [95% interval]':>28} {'prompt ms':>10} {'speedup':>8}",
    ]
    for row in evaluation.rows:
        low, high = row.rise_interval
        lines.append(f"{row.keep_ratio:>10g} {row.perplexity:>10.3f} {f'{100 * row.rise:+.1f}% [{100 * low:+.1f}, {100 * high:+.1f}]':>28} "
                     f"{row.prompt_ms:>10.1f} {row.speedup:>7.2f}x")
    return "\n".join(lines)


def render_powers(result: LanguageTuneResult) -> str:
    lines = ["profile powers tried (each on the same windows; speedups against its own keep_ratio 1):"]
    for power, evaluation in sorted(result.evaluations.items()):
        if power not in result.choices:
            lines.append(f"  power {power:<4g} reached no ratio meeting the constraint")
            continue
        row = evaluation.row(result.choices[power])
        marker = "  <- chosen" if power == result.power else ""
        lines.append(f"  power {power:<4g} keep_ratio {row.keep_ratio:<5g} rise {100 * row.rise:+.1f}% "
                     f"[{100 * row.rise_interval[0]:+.1f}, {100 * row.rise_interval[1]:+.1f}], {row.speedup:.2f}x{marker}")
    return "\n".join(lines)
