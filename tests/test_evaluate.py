"""evaluate and tune: the accuracy/speed curve of the ONNX file, and the recorded default."""

import json

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
    choose_ratio,
    evaluate,
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
    for row in result.rows:
        predicted = [session.predict(texts[i : i + 8], keep_ratio=row.keep_ratio).labels for i in range(0, 40, 8)]
        predicted = sum(predicted, [])
        expected = np.mean([p == l for p, l in zip(predicted, labels)])
        assert row.metrics["accuracy"] == pytest.approx(expected)
        assert row.metrics["macro_f1"] == pytest.approx(macro_f1(predicted, labels)) and row.seconds > 0
    assert result.full.speedup == 1.0


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


def _curve(points):
    return Evaluation("m", "d", 10, 8, "accuracy", [RatioResult(r, {"accuracy": a}, 1 / s, 1.0, s) for r, a, s in points])


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


def test_tune_records_the_default_the_runtime_then_uses(model_copy, labelled):
    result = tune(model_copy, labelled, max_drop=0.0, keep_ratios=(1.0, 0.5, 0.2), batch_size=8)
    full = result.evaluation.full.metrics["accuracy"]
    allowed = [row for row in result.evaluation.rows if row.metrics["accuracy"] >= full]  # no drop at all
    assert result.keep_ratio == max(allowed, key=lambda row: row.speedup).keep_ratio
    session = LatencyAdjustableSession(model_copy)
    assert session.default_keep_ratio == result.keep_ratio
    assert session.metadata.tuning["metric"] == "accuracy"
    assert [point["keep_ratio"] for point in session.metadata.tuning["curve"]] == [1.0, 0.5, 0.2]
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
    result = runner.invoke(main, ["tune", str(model_copy), "--data", labelled, "--target-speedup", "500"])
    assert result.exit_code == 2 and "no keep_ratio reached a 500x speedup" in result.output
    result = runner.invoke(main, ["tune", str(model_copy), "--data", labelled])
    assert result.exit_code == 2 and "exactly one of --max-drop or --target-speedup" in result.output
