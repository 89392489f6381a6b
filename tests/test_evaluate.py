"""evaluate and tune: the accuracy/speed curve of the ONNX file, and the recorded default."""

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from test_finetune import sentiment_rows, write

from latexport.cli import main
from latexport.runtime.errors import LatexportError
from latexport.runtime.session import LatencyAdjustableSession
from latexport.training.evaluate import (
    Evaluation,
    RatioResult,
    bootstrap_indices,
    choose_ratio,
    evaluate,
    intervals_against_full,
    percentile_interval,
    resampled_accuracy,
    resampled_pearson,
    tune,
)

LABELS = ["label_a", "label_b", "label_c"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    rows = [{"text": row["text"], "label": LABELS[i % 3]} for i, row in enumerate(sentiment_rows(40, 7))]
    return write(tmp_path_factory.mktemp("eval") / "data.jsonl", rows)


@pytest.fixture
def model_copy(bert_classifier, tmp_path):
    import shutil

    target = tmp_path / "model"
    shutil.copytree(bert_classifier, target)
    return target


def test_evaluate_reports_metric_and_speed_per_ratio(bert_classifier, labelled):
    result = evaluate(bert_classifier, labelled, keep_ratios=(1.0, 0.5, 0.1), batch_size=8)
    assert [row.keep_ratio for row in result.rows] == [1.0, 0.5, 0.1]
    assert result.metric == "accuracy" and result.examples == 40
    session = LatencyAdjustableSession(bert_classifier)
    texts = [json.loads(line)["text"] for line in open(labelled)]
    labels = [json.loads(line)["label"] for line in open(labelled)]
    indices = bootstrap_indices(40)
    correct = {}
    for row in result.rows:
        predicted = [session.predict(texts[i : i + 8], keep_ratio=row.keep_ratio).labels for i in range(0, 40, 8)]
        predicted = sum(predicted, [])
        correct[row.keep_ratio] = np.array([p == l for p, l in zip(predicted, labels)])
        assert row.metrics["accuracy"] == pytest.approx(correct[row.keep_ratio].mean())
        assert row.metrics["macro_f1"] == pytest.approx(macro_f1(predicted, labels)) and row.seconds > 0
        # the intervals come from these very predictions, paired with the full model's on the same resamples
        assert row.interval == pytest.approx(percentile_interval(resampled_accuracy(correct[row.keep_ratio], indices)))
        paired = resampled_accuracy(correct[1.0], indices) - resampled_accuracy(correct[row.keep_ratio], indices)
        assert row.drop_interval == pytest.approx(percentile_interval(paired))
        assert row.interval[0] <= row.metrics["accuracy"] <= row.interval[1]
    assert result.full.speedup == 1.0 and result.full.drop_interval == (0.0, 0.0)
    assert evaluate(bert_classifier, labelled, keep_ratios=(1.0, 0.5, 0.1), batch_size=8).rows[2].interval == result.rows[2].interval
    rows = json.loads(result.to_json())["rows"]
    assert [row["drop_interval"] for row in rows] == [list(row.drop_interval) for row in result.rows]


def macro_f1(predicted: list, labels: list) -> float:
    """The textbook definition, counted by hand: per label 2TP / (2TP + FP + FN), averaged
    over the labels that occur in either list."""
    scores = []
    for label in sorted(set(labels) | set(predicted)):
        true_pos = sum(p == label and l == label for p, l in zip(predicted, labels))
        false_pos = sum(p == label and l != label for p, l in zip(predicted, labels))
        false_neg = sum(p != label and l == label for p, l in zip(predicted, labels))
        scores.append(2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return float(np.mean(scores))


def test_bootstrap_accuracy_interval_matches_a_plain_loop_and_the_normal_approximation():
    n = 1000
    correct = np.random.default_rng(5).random(n) < 0.85
    low, high = percentile_interval(resampled_accuracy(correct, bootstrap_indices(n)))
    draw = random.Random(1)
    reference = sorted(sum(draw.choices(list(correct), k=n)) / n for _ in range(2000))
    assert (low, high) == pytest.approx((reference[49], reference[1949]), abs=0.003)
    p = correct.mean()
    half_width = 1.96 * np.sqrt(p * (1 - p) / n)
    assert (low, high) == pytest.approx((p - half_width, p + half_width), abs=0.003)


def test_bootstrap_pearson_is_the_correlation_of_each_resample():
    rng = np.random.default_rng(2)
    targets = rng.normal(size=50)
    values = targets + rng.normal(size=50)
    indices = bootstrap_indices(50, resamples=20)
    expected = [np.corrcoef(values[row], targets[row])[0, 1] for row in indices]
    np.testing.assert_allclose(resampled_pearson(values, targets, indices), expected)
    assert not resampled_pearson(np.ones(50), targets, indices).any()  # constant predictions: 0, as the point metric


def test_paired_drop_interval_is_narrow_when_predictions_mostly_agree():
    n = 500
    rng = np.random.default_rng(3)
    full = rng.random(n) < 0.8
    dropped = full.copy()
    flipped = rng.choice(n, size=15, replace=False)  # 3% of predictions differ, right or wrong
    dropped[flipped] = ~dropped[flipped]
    indices = bootstrap_indices(n)
    intervals = intervals_against_full({1.0: resampled_accuracy(full, indices), 0.5: resampled_accuracy(dropped, indices)})
    low, high = intervals[0.5][1]
    point = full.mean() - dropped.mean()
    assert low <= point <= high and intervals[1.0][1] == (0.0, 0.0)
    unpaired = percentile_interval(
        resampled_accuracy(full, bootstrap_indices(n, seed=1)) - resampled_accuracy(dropped, bootstrap_indices(n, seed=2))
    )
    assert high - low < 0.5 * (unpaired[1] - unpaired[0])
    # the paired interval is that of the mean per-example difference, whatever the accuracies
    difference = full.astype(float) - dropped
    assert high - low == pytest.approx(2 * 1.96 * difference.std() / np.sqrt(n), rel=0.15)


def _curve(points, examples=10):
    """An Evaluation from (ratio, accuracy, speedup[, drop interval]); without an interval
    the drop is taken as known exactly."""
    full = points[0][1]
    rows = [
        RatioResult(r, {"accuracy": a}, 1 / s, 1.0, (a, a), rest[0] if rest else (full - a, full - a), s)
        for r, a, s, *rest in points
    ]
    return Evaluation("m", "d", examples, 8, "accuracy", rows)


def test_choose_ratio_for_a_metric_budget_or_a_speed_target():
    curve = _curve([(1.0, 0.90, 1.0), (0.7, 0.895, 1.3), (0.5, 0.885, 1.6), (0.3, 0.86, 2.0), (0.1, 0.80, 2.6)])
    assert choose_ratio(curve, max_drop=0.01)[0] == 0.7
    assert choose_ratio(curve, max_drop=0.02)[0] == 0.5
    assert choose_ratio(curve, max_drop=0.5)[0] == 0.1
    assert choose_ratio(curve, target_speedup=1.5)[0] == 0.5
    assert choose_ratio(curve, target_speedup=1.0)[0] == 1.0
    with pytest.raises(LatexportError, match="fastest measured was 2.60x at keep_ratio 0.1"):
        choose_ratio(curve, target_speedup=3)
    with pytest.raises(LatexportError, match="exactly one"):
        choose_ratio(curve)


def test_max_drop_holds_the_drop_interval_to_the_budget():
    curve = _curve(
        [(1.0, 0.90, 1.0), (0.7, 0.895, 1.3, (0.001, 0.009)), (0.5, 0.892, 1.6, (0.002, 0.014)), (0.3, 0.86, 2.0, (0.03, 0.05))],
        examples=500,
    )
    ratio, constraint, note = choose_ratio(curve, max_drop=0.01)
    assert ratio == 0.7  # 0.5's point drop (0.008) is within the budget, its interval's upper bound is not
    assert "interval" in constraint and "500 examples" in constraint
    needed = round(500 * ((0.014 - 0.008) / (0.01 - 0.008)) ** 2)  # the upper arm shrinking like 1/sqrt(n)
    assert needed == 4500 and "keep_ratio 0.5" in note and f"about {needed} validation examples" in note
    ratio, _, note = choose_ratio(curve, max_drop=0.02)
    assert ratio == 0.5 and note is None  # clearly fine: the interval fits, and nothing faster met the budget
    assert choose_ratio(curve, max_drop=0.0)[0] == 1.0  # the full model always qualifies
    ratio, _, note = choose_ratio(curve, max_drop=0.008)  # 0.5's point drop is the whole budget
    assert ratio == 1.0 and "no number of examples" in note


def test_tune_records_the_default_the_runtime_then_uses(model_copy, labelled):
    result = tune(model_copy, labelled, max_drop=0.0, keep_ratios=(1.0, 0.5, 0.2), batch_size=8)
    allowed = [row for row in result.evaluation.rows if row.drop_interval[1] <= 0]  # no drop on any resample
    assert result.keep_ratio == max(allowed, key=lambda row: row.speedup).keep_ratio
    session = LatencyAdjustableSession(model_copy)
    assert session.default_keep_ratio == result.keep_ratio
    assert session.metadata.tuning["metric"] == "accuracy"
    assert [point["keep_ratio"] for point in session.metadata.tuning["curve"]] == [1.0, 0.5, 0.2]
    for point, row in zip(session.metadata.tuning["curve"], result.evaluation.rows):
        assert point["interval"] == list(row.interval) and point["drop_interval"] == list(row.drop_interval)
    assert "interval" in session.metadata.tuning["constraint"] and session.metadata.tuning["note"] == result.note
    feed = session.encode(["a good film", "a dull plot"])
    np.testing.assert_array_equal(session.run(feed), session.run(feed, result.keep_ratio))
    assert not [p for p in model_copy.iterdir() if p.name.endswith(".partial")]


def test_evaluate_and_tune_commands(model_copy, labelled, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(model_copy), "--data", labelled, "--keep-ratios", "1,0.3",
                                  "--batch-size", "8", "--graphs", str(tmp_path / "graphs")])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    data = json.loads((tmp_path / "graphs" / "evaluate-model-data.json").read_text())
    assert [row["keep_ratio"] for row in data["rows"]] == [1.0, 0.3]
    assert (tmp_path / "graphs" / "evaluate-model-data.png").stat().st_size > 1000
    full = data["rows"][0]
    assert f"{full['metrics']['accuracy']:.4f} [{full['interval'][0]:.4f}, {full['interval'][1]:.4f}]" in result.output
    result = runner.invoke(main, ["tune", str(model_copy), "--data", labelled, "--max-drop", "0", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    session = LatencyAdjustableSession(model_copy)
    tuning = session.metadata.tuning
    chosen = next(point for point in tuning["curve"] if point["keep_ratio"] == session.default_keep_ratio)
    (low, high), (drop_low, drop_high) = chosen["interval"], chosen["drop_interval"]
    drop = tuning["curve"][0]["accuracy"] - chosen["accuracy"]
    assert (f"({tuning['constraint']}): accuracy {chosen['accuracy']:.4f} [{low:.4f}, {high:.4f}], "
            f"drop {100 * drop:.2f} [{100 * drop_low:.2f}, {100 * drop_high:.2f}] points") in result.output
    assert (f"note: {tuning['note']}" in result.output) == (tuning["note"] is not None)
    result = runner.invoke(main, ["tune", str(model_copy), "--data", labelled, "--target-speedup", "500"])
    assert result.exit_code == 2 and "no keep_ratio reached a 500x speedup" in result.output
    result = runner.invoke(main, ["tune", str(model_copy), "--data", labelled])
    assert result.exit_code == 2 and "exactly one of --max-drop or --target-speedup" in result.output
