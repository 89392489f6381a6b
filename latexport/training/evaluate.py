"""``latexport evaluate`` and ``latexport tune``: the accuracy/speed curve of one
ONNX file on labelled data, and choosing its default keep_ratio from that curve.

Evaluation runs the exported file through the runtime session, exactly as an
application would.  Every batch is run at every ratio, in a shuffled order,
so the latencies of all ratios are measured side by side in one run.

Validation sets are often a few hundred examples, where one point of accuracy
is a handful of predictions; so every metric comes with a percentile bootstrap
95% interval, and every drop with a paired one (the same resampled examples at
both ratios), and ``tune --max-drop`` holds the drop's interval to the budget.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from latexport.runtime.atomic import save_figure_atomic, write_bytes_atomic
from latexport.runtime.errors import LatexportError
from latexport.runtime.estimate import estimated_speedup
from latexport.runtime.keep_ratio_input import set_props
from latexport.runtime.metadata import PREFIX
from latexport.runtime.profile import EliminationProfile
from latexport.runtime.reprofile import profile_of, reprofile
from latexport.runtime.session import MODEL_FILE, LatencyAdjustableSession
from latexport.training.data import (
    Columns,
    encode_labels,
    read_examples,
    regression_targets,
)

EVALUATION_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
TUNING_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01, 0.005)
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Drops are differences of means, so one of exactly max_drop can come out a hair above it.
_ROUNDING = 1e-9


@dataclass
class RatioResult:
    """One ratio's point of the curve.

    ``interval``: 95% bootstrap interval of the evaluation's metric.  ``drop_interval``:
    95% interval of the full model's metric minus this ratio's, paired (both on
    the same resampled examples), so (0, 0) at keep_ratio 1.
    """

    keep_ratio: float
    metrics: dict
    seconds: float
    median_batch_ms: float
    interval: tuple[float, float]
    drop_interval: tuple[float, float]
    speedup: float = 1.0
    estimated_speedup: float = 1.0


@dataclass
class Evaluation:
    model_dir: str
    data: str
    examples: int
    batch_size: int
    metric: str
    rows: list[RatioResult] = field(default_factory=list)

    def row(self, ratio: float) -> RatioResult:
        return next(row for row in self.rows if row.keep_ratio == ratio)

    @property
    def full(self) -> RatioResult:
        return self.row(1.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def evaluate(
    model_dir: Path,
    data: str,
    columns: Columns = Columns(),
    keep_ratios: tuple[float, ...] = EVALUATION_RATIOS,
    batch_size: int = 32,
    threads: int = 0,
    provider: str = "cpu",
    seed: int = 0,
) -> Evaluation:
    session = LatencyAdjustableSession(model_dir, provider=provider, intra_op_threads=threads, truncation="silent")
    examples = read_examples(data, columns)
    regression = session.metadata.problem_type == "regression"
    if session.metadata.task != "text-classification":
        raise LatexportError(f"{model_dir} does {session.metadata.task}; evaluate needs a classification or regression model")
    targets = np.array(regression_targets(examples) if regression else encode_labels(examples, session.labels))
    ratios = tuple(sorted(set(keep_ratios) | {1.0}, reverse=True))

    batches = []
    for start in range(0, len(examples), batch_size):
        stop = min(start + batch_size, len(examples))
        pairs = examples.text_pairs[start:stop] if examples.text_pairs else None
        batches.append(session.encode(examples.texts[start:stop], pairs))
    outputs = {ratio: [] for ratio in ratios}
    times = {ratio: [] for ratio in ratios}
    shuffler = random.Random(seed)
    order = list(ratios)
    for feed in batches:
        session.run(feed, 1.0)  # warm this batch shape
        shuffler.shuffle(order)
        for ratio in order:
            start = time.perf_counter()
            outputs[ratio].append(session.run(feed, ratio))
            times[ratio].append(time.perf_counter() - start)

    lengths = np.concatenate([feed["attention_mask"].sum(axis=1) for feed in batches])
    typical_length = int(np.median(lengths))
    evaluation = Evaluation(
        model_dir=str(model_dir), data=str(data), examples=len(examples), batch_size=batch_size,
        metric="pearson" if regression else "accuracy",
    )
    predictions = {ratio: np.concatenate(outputs[ratio]) for ratio in ratios}
    indices = bootstrap_indices(len(examples))
    resampled = {
        ratio: resampled_pearson(scores[:, 0], targets, indices) if regression
        else resampled_accuracy(scores.argmax(axis=1) == targets, indices)
        for ratio, scores in predictions.items()
    }
    intervals = intervals_against_full(resampled)
    full_seconds = sum(times[1.0])
    for ratio in ratios:
        seconds = sum(times[ratio])
        evaluation.rows.append(
            RatioResult(
                keep_ratio=ratio,
                metrics=_metrics(predictions[ratio], targets, regression),
                seconds=seconds,
                median_batch_ms=float(np.median(times[ratio])) * 1000,
                interval=intervals[ratio][0],
                drop_interval=intervals[ratio][1],
                speedup=full_seconds / seconds,
                estimated_speedup=estimated_speedup(session.metadata.flops, session.metadata.profile, typical_length, ratio),
            )
        )
    return evaluation


def _metrics(predictions: np.ndarray, targets: np.ndarray, regression: bool) -> dict:
    if regression:
        values = predictions[:, 0]
        pearson = float(np.corrcoef(values, targets)[0, 1]) if values.std() > 0 else 0.0
        return {"pearson": pearson, "mse": float(np.mean((values - targets) ** 2))}
    predicted = predictions.argmax(axis=1)
    f1s = []
    # Over the labels that occur as a target or a prediction, as scikit-learn's macro F1 counts them.
    for label in np.union1d(targets, predicted):
        true_positive = np.sum((predicted == label) & (targets == label))
        precision = true_positive / max(np.sum(predicted == label), 1)
        recall = true_positive / max(np.sum(targets == label), 1)
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float(np.mean(predicted == targets)), "macro_f1": float(np.mean(f1s))}


# --- bootstrap intervals --------------------------------------------------------
def bootstrap_indices(examples: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``resamples`` rows of ``examples`` indices drawn with replacement, seeded so that
    reruns report the same intervals; reusing one matrix for every ratio pairs them."""
    return np.random.default_rng(seed).integers(0, examples, size=(resamples, examples), dtype=np.int32)


def resampled_accuracy(correct: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Accuracy on each resample, from the per-example correctness vector."""
    return np.asarray(correct, dtype=bool)[indices].mean(axis=1)


def resampled_pearson(values: np.ndarray, targets: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Pearson correlation on each resample (0 where either side is constant, as in the point metric)."""
    x = np.asarray(values, dtype=np.float64)[indices]
    y = np.asarray(targets, dtype=np.float64)[indices]
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    covariance = (x * y).sum(axis=1)
    scale = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > 0)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def intervals_against_full(resampled: dict[float, np.ndarray]) -> dict[float, tuple[tuple[float, float], tuple[float, float]]]:
    """Each ratio's (metric interval, drop interval), from its metric on the same
    resamples as keep_ratio 1's: the drop is taken resample by resample, which is
    what makes it narrow when the two ratios mostly predict alike."""
    full = resampled[1.0]
    return {ratio: (percentile_interval(values), percentile_interval(full - values)) for ratio, values in resampled.items()}


def _with_interval(value: float, interval: tuple[float, float], scale: float = 1.0, digits: int = 4) -> str:
    low, high = interval
    return f"{scale * value:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def describe(evaluation: Evaluation, row: RatioResult) -> str:
    """One ratio's metric and drop, with their intervals, for a sentence."""
    drop = evaluation.full.metrics[evaluation.metric] - row.metrics[evaluation.metric]
    return (
        f"{evaluation.metric} {_with_interval(row.metrics[evaluation.metric], row.interval)}, "
        f"drop {_with_interval(drop, row.drop_interval, scale=100, digits=2)} points"
    )


def render(evaluation: Evaluation) -> str:
    metric = evaluation.metric
    lines = [
        f"{evaluation.model_dir} on {evaluation.data}: {evaluation.examples} examples, batches of {evaluation.batch_size}",
        f"{'keep_ratio':>10}  {metric + ' [95% interval]':<24} {'drop, points [95%]':<21} "
        f"{'speedup':>8} {'estimate':>9} {'batch ms':>9}",
    ]
    full = evaluation.full.metrics[metric]
    for row in evaluation.rows:
        value = row.metrics[metric]
        lines.append(
            f"{row.keep_ratio:>10g}  {_with_interval(value, row.interval):<24} "
            f"{_with_interval(full - value, row.drop_interval, scale=100, digits=2):<21} "
            f"{row.speedup:>7.2f}x {row.estimated_speedup:>8.2f}x {row.median_batch_ms:>9.2f}"
        )
    lines.append(
        f"intervals: percentile bootstrap over {BOOTSTRAP_RESAMPLES} resamples of the examples; "
        "each drop's is paired, on the same resamples as keep_ratio 1"
    )
    return "\n".join(lines)


def plot(evaluation: Evaluation, path: Path, title: Optional[str] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [row.keep_ratio for row in evaluation.rows]
    figure, metric_axis = plt.subplots(figsize=(6.4, 4.2))
    metric_axis.plot(ratios, [row.metrics[evaluation.metric] for row in evaluation.rows], marker="o", color="tab:blue")
    metric_axis.set_xlabel("keep_ratio")
    metric_axis.set_ylabel(evaluation.metric, color="tab:blue")
    metric_axis.invert_xaxis()
    speed_axis = metric_axis.twinx()
    speed_axis.plot(ratios, [row.speedup for row in evaluation.rows], marker="s", color="tab:red", label="measured")
    speed_axis.plot(ratios, [row.estimated_speedup for row in evaluation.rows], "--", color="tab:red", alpha=0.5, label="estimate")
    speed_axis.set_ylabel("speedup over keep_ratio 1", color="tab:red")
    speed_axis.legend(loc="upper left")
    metric_axis.grid(True, alpha=0.3)
    metric_axis.set_title(title or Path(evaluation.model_dir).name)
    figure.tight_layout()
    save_figure_atomic(figure, path)


# --- offline tuning -----------------------------------------------------------
#: Profile shapes ``tune`` tries by default (``latexport.runtime.profile``): rewriting
#: the exponents is cheap (``latexport.runtime.reprofile``), and which shape loses
#: least at a given speed depends on the checkpoint and the task.
TUNING_POWERS = (1.0, 1.5, 2.0, 3.0)


@dataclass
class TuneResult:
    keep_ratio: float
    constraint: str
    evaluation: Evaluation
    note: Optional[str] = None
    power: Optional[float] = None
    """The profile power chosen; ``evaluations`` holds each power tried, ``choices``
    the ratio each power's own curve chose."""
    evaluations: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)


def choose_ratio(
    evaluation: Evaluation, max_drop: Optional[float] = None, target_speedup: Optional[float] = None
) -> tuple[float, str, Optional[str]]:
    """The ratio that meets the constraint, the constraint in words, and a note (or None).

    ``max_drop``: the fastest ratio whose drop interval's upper bound is within
    ``max_drop`` (absolute, 0.01 = one point) of the full model's metric, so that
    the data, not the luck of a small sample, supports the budget; keep_ratio 1
    always qualifies.  The note says when a faster ratio met the budget only by
    its point estimate.  ``target_speedup``: the most accurate ratio whose
    measured speedup reaches the target.
    """
    if (max_drop is None) == (target_speedup is None):
        raise LatexportError("give exactly one of max_drop or target_speedup")
    if max_drop is not None and not max_drop >= 0:
        raise LatexportError(f"max_drop must be 0 or more, got {max_drop}")
    if target_speedup is not None and not target_speedup > 0:
        raise LatexportError(f"target_speedup must be positive, got {target_speedup}")
    metric = evaluation.metric
    full = evaluation.full.metrics[metric]
    if max_drop is not None:
        best = _fastest(
            row for row in evaluation.rows if row.keep_ratio == 1.0 or row.drop_interval[1] <= max_drop + _ROUNDING
        )
        by_point = _fastest(row for row in evaluation.rows if full - row.metrics[metric] <= max_drop + _ROUNDING)
        constraint = (
            f"upper bound of the 95% interval of the {metric} drop within {max_drop:g} "
            f"of the full model's {full:.4f}, on {evaluation.examples} examples"
        )
        note = _examples_needed(evaluation, by_point, max_drop) if by_point.speedup > best.speedup else None
        return best.keep_ratio, constraint, note
    fast = [row for row in evaluation.rows if row.speedup >= target_speedup]
    if not fast:
        top = max(evaluation.rows, key=lambda row: row.speedup)
        raise LatexportError(
            f"no keep_ratio reached a {target_speedup:g}x speedup on this data; the fastest measured was "
            f"{top.speedup:.2f}x at keep_ratio {top.keep_ratio:g}"
        )
    best = max(fast, key=lambda row: (row.metrics[metric], row.keep_ratio))
    return best.keep_ratio, f"measured speedup of at least {target_speedup:g}x", None


def _fastest(rows) -> RatioResult:
    return max(rows, key=lambda row: (row.speedup, row.keep_ratio))


def _examples_needed(evaluation: Evaluation, row: RatioResult, max_drop: float) -> str:
    """Why ``row``, within the budget by its point estimate, was passed over, and roughly
    how many examples would let its interval fit: the interval's upper arm shrinks
    like 1/sqrt(n), so n_needed = n * (upper arm / room left under the budget)^2."""
    drop = evaluation.full.metrics[evaluation.metric] - row.metrics[evaluation.metric]
    upper_arm = row.drop_interval[1] - drop
    passed_over = (
        f"keep_ratio {row.keep_ratio:g} ({row.speedup:.2f}x) is within the budget by its point estimate "
        f"(drop {100 * drop:.2f} points) but its interval reaches {100 * row.drop_interval[1]:.2f} points"
    )
    if drop >= max_drop - _ROUNDING:
        return f"{passed_over}; its drop equals the budget, so no number of examples would make the interval fit"
    needed = round(evaluation.examples * (upper_arm / (max_drop - drop)) ** 2)
    return (
        f"{passed_over}; about {needed} validation examples (now {evaluation.examples}) would narrow it enough, "
        "an estimate that assumes the drop stays the same"
    )


def choose_profile(
    evaluations: dict[float, Evaluation], max_drop: Optional[float] = None, target_speedup: Optional[float] = None
) -> tuple[float, dict[float, tuple[float, str, Optional[str]]]]:
    """The chosen power, and each power's own (ratio, constraint, note) by ``choose_ratio``.

    The chosen power is the one whose ratio is fastest (under ``target_speedup``,
    the most accurate); a power whose curve cannot reach ``target_speedup`` is left
    out, and only when none can is that an error.  Each curve's speedups are
    against its own keep_ratio 1, the same computation at any power, so they
    compare across powers.
    """
    if not evaluations:
        raise LatexportError("no profile was evaluated")
    choices, refusals = {}, []
    for power, evaluation in evaluations.items():
        try:
            choices[power] = choose_ratio(evaluation, max_drop, target_speedup)
        except LatexportError as error:
            refusals.append(f"power {power:g}: {error}")
    if not choices:
        raise LatexportError("; ".join(refusals))
    metric = next(iter(evaluations.values())).metric

    def merit(power: float):
        row = evaluations[power].row(choices[power][0])
        return row.speedup if max_drop is not None else (row.metrics[metric], row.speedup)

    return max(choices, key=merit), choices


def tune(
    model_dir: Path,
    data: str,
    columns: Columns = Columns(),
    max_drop: Optional[float] = None,
    target_speedup: Optional[float] = None,
    keep_ratios: tuple[float, ...] = TUNING_RATIOS,
    batch_size: int = 32,
    threads: int = 0,
    powers: Optional[tuple[float, ...]] = TUNING_POWERS,
) -> TuneResult:
    """Evaluate on held-out ``data`` at each profile power, choose the power and
    the ratio, and record both in the model's file (the power by rewriting its
    exponents).  ``powers=None`` keeps the file's own power."""
    if (max_drop is None) == (target_speedup is None):
        raise LatexportError("give exactly one of --max-drop or --target-speedup")
    model_path = Path(model_dir) / MODEL_FILE
    if not model_path.is_file():
        raise LatexportError(f"{model_path} does not exist; give a directory written by latexport convert")
    _require_classifier(model_path)
    current = profile_of(model_path).power
    tried = sorted({float(p) for p in powers}) if powers else [current]
    for power in tried:
        EliminationProfile(num_layers=1, power=power)  # refuses an out-of-range power before any work
    evaluations = {}
    with tempfile.TemporaryDirectory(prefix="latexport-tune-") as scratch:
        for power in tried:
            evaluations[power] = evaluate(
                with_power(Path(model_dir), power, Path(scratch) / f"power-{power:g}", current),
                data, columns, keep_ratios, batch_size, threads,
            )
    power, choices = choose_profile(evaluations, max_drop, target_speedup)
    ratio, constraint, note = choices[power]
    evaluation = evaluations[power]
    for each in evaluations.values():
        each.model_dir = str(model_dir)
    record = {
        "constraint": constraint,
        "note": note,
        "data": str(data),
        "examples": evaluation.examples,
        "metric": evaluation.metric,
        "batch_size": batch_size,
        "power": power,
        "curve": _curve(evaluation),
        "powers": {f"{p:g}": _curve(each) for p, each in evaluations.items()},
    }
    values = {"default_keep_ratio": repr(float(ratio)), "tuning": json.dumps(record)}
    if power != current:
        reprofile(model_path, power, metadata={PREFIX + key: value for key, value in values.items()})
    else:
        write_metadata(model_path, values)
    return TuneResult(ratio, constraint, evaluation, note, power, evaluations,
                      {each: choice[0] for each, choice in choices.items()})


def render_powers(result: TuneResult) -> str:
    """One line per power tried: the ratio its own curve chose, and what that gives."""
    lines = ["profile powers tried (each curve on the same data; speedups against its own keep_ratio 1):"]
    for power, evaluation in sorted(result.evaluations.items()):
        if power not in result.choices:
            lines.append(f"  power {power:<4g} reached no ratio meeting the constraint")
            continue
        ratio = result.choices[power]
        row = evaluation.row(ratio)
        marker = "  <- chosen" if power == result.power else ""
        lines.append(f"  power {power:<4g} keep_ratio {ratio:<5g} {describe(evaluation, row)}, {row.speedup:.2f}x{marker}")
    return "\n".join(lines)


def task_of(model_dir: Path) -> Optional[str]:
    """The task a converted directory's model.onnx records (None when it records none or is missing)."""
    import onnx

    model_path = Path(model_dir) / MODEL_FILE
    if not model_path.is_file():
        return None
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # a truncated or foreign file: protobuf's DecodeError, OSError, ...
        raise LatexportError(f"{model_path}: not a readable ONNX file ({type(error).__name__}: {error})") from error
    return {p.key: p.value for p in proto.metadata_props}.get(PREFIX + "task")


def _require_classifier(model_path: Path) -> None:
    """Refuse a file tune cannot evaluate before any power is written or tried."""
    task = task_of(model_path.parent)
    if task != "text-classification":
        raise LatexportError(f"{model_path.parent} does {task}; tune needs a classification or regression model")


def _curve(evaluation: Evaluation) -> list[dict]:
    return [
        {
            "keep_ratio": row.keep_ratio,
            evaluation.metric: row.metrics[evaluation.metric],
            "interval": list(row.interval),
            "drop_interval": list(row.drop_interval),
            "speedup": row.speedup,
        }
        for row in evaluation.rows
    ]


def with_power(model_dir: Path, power: float, scratch: Path, current: float) -> Path:
    """``model_dir`` itself at its own power, else a scratch directory that links its
    files and holds the model rewritten to ``power``."""
    if power == current:
        return model_dir
    scratch.mkdir(parents=True)
    for entry in model_dir.iterdir():
        if entry.name != MODEL_FILE:
            (scratch / entry.name).symlink_to(entry.resolve())
    reprofile(model_dir / MODEL_FILE, power, target=scratch / MODEL_FILE)
    return scratch


def write_metadata(model_path: Path, values: dict[str, str]) -> None:
    """Set ``latexport.*`` metadata keys in place, atomically (the file is rewritten beside and renamed)."""
    import onnx

    proto = onnx.load(str(model_path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({PREFIX + key: value for key, value in values.items()})
    set_props(proto, props)
    write_bytes_atomic(model_path, proto.SerializeToString())
