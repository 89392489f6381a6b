"""Latency budgets: the fit, the choice of keep ratio, calibrate's file and predict(target_ms)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from latexport.cli import main
from latexport.runtime.calibration import (
    CALIBRATION_FILE,
    CalibrationWarning,
    LatencyModel,
    batch_gflops,
)
from latexport.runtime.errors import InvalidInputError, ModelDirectoryError
from latexport.runtime.session import LatencyAdjustableSession

TEXTS = ["the film was very good and the music was great", "a dull , slow story"]


@pytest.fixture(scope="module")
def calibrated(calibrated_classifier):
    return calibrated_classifier


def synthetic_model(metadata, coefficients: dict) -> LatencyModel:
    """A latency model fitted to measurements generated from known coefficients."""
    measurements = []
    for batch in (1, 4, 16):
        for seq_len in (16, 64, 128):
            for ratio in (1.0, 0.5, 0.2, 0.05):
                features = LatencyModel.features(metadata.flops, metadata.profile, batch, seq_len, ratio)
                latency = sum(coefficients[name] * value for name, value in zip(coefficients, features))
                measurements.append({"batch": batch, "seq_len": seq_len, "keep_ratio": ratio, "median_ms": latency})
    return LatencyModel.fit(metadata, measurements, provider="cpu", intra_op_threads=1, machine={}, onnxruntime_version="")


@pytest.fixture(scope="module")
def metadata(bert_classifier):
    return LatencyAdjustableSession(bert_classifier).metadata


def test_the_fit_recovers_known_coefficients(metadata):
    truth = {"overhead_ms": 2.0, "token_ms": 0.01, "linear_gflop_ms": 30.0, "quadratic_gflop_ms": 90.0}
    model = synthetic_model(metadata, truth)
    for name, value in truth.items():
        assert model.coefficients[name] == pytest.approx(value, rel=1e-6)
    assert model.fit_error["max"] < 1e-9


def best_nonnegative_fit(design: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """The reference: every subset of the features fitted by least squares, the best one
    whose coefficients are all >= 0 (the true non-negative optimum for four features)."""
    from itertools import combinations

    weights = 1.0 / observed
    best, best_residual = np.zeros(design.shape[1]), np.inf
    for size in range(1, design.shape[1] + 1):
        for subset in combinations(range(design.shape[1]), size):
            columns = list(subset)
            fitted, *_ = np.linalg.lstsq(design[:, columns] * weights[:, None], observed * weights, rcond=None)
            if (fitted < 0).any():
                continue
            solution = np.zeros(design.shape[1])
            solution[columns] = fitted
            residual = float(np.sum(((design @ solution - observed) * weights) ** 2))
            if residual < best_residual - 1e-12:
                best, best_residual = solution, residual
    return best


@pytest.mark.parametrize("truth", [
    {"overhead_ms": 30.0, "token_ms": -0.005, "linear_gflop_ms": 30.0, "quadratic_gflop_ms": 0.0},
    {"overhead_ms": 4.0, "token_ms": 0.02, "linear_gflop_ms": -1.0, "quadratic_gflop_ms": 60.0},
], ids=["time-falls-with-tokens", "negative-linear-term"])
def test_the_fit_is_the_best_non_negative_one(metadata, truth):
    """Latency no model with non-negative costs can follow is fitted with the best such costs."""
    model = synthetic_model(metadata, truth)
    rows = model.measurements
    assert min(m["median_ms"] for m in rows) > 0  # the synthetic timings themselves are plausible
    design = np.array([LatencyModel.features(metadata.flops, metadata.profile, m["batch"], m["seq_len"], m["keep_ratio"])
                       for m in rows])
    expected = best_nonnegative_fit(design, np.array([m["median_ms"] for m in rows]))
    got = np.array([model.coefficients[name] for name in truth])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert (got >= 0).all() and (got == 0).any()


def test_the_fit_refuses_timings_that_are_not_positive(metadata):
    rows = [{"batch": 1, "seq_len": 16, "keep_ratio": 1.0, "median_ms": 2.0},
            {"batch": 1, "seq_len": 64, "keep_ratio": 1.0, "median_ms": 0.0}]
    with pytest.raises(InvalidInputError, match="median_ms"):
        LatencyModel.fit(metadata, rows, provider="cpu", intra_op_threads=1, machine={}, onnxruntime_version="")


def test_shape_corrections_follow_what_the_fit_misses(metadata):
    truth = {"overhead_ms": 1.0, "token_ms": 0.0, "linear_gflop_ms": 50.0, "quadratic_gflop_ms": 100.0}
    exact = synthetic_model(metadata, truth)
    # Batches of 16 run 20% slower than any linear model says (a cache effect, say).
    slowed = [{k: v for k, v in m.items() if k != "predicted_ms"} for m in exact.measurements]
    for m in slowed:
        m["median_ms"] *= 1.2 if m["batch"] == 16 else 1.0
    model = LatencyModel.fit(metadata, slowed, provider="cpu", intra_op_threads=1, machine={}, onnxruntime_version="")
    assert model.fit_error["max"] < 0.05
    for m in slowed:
        assert model.predict_ms(m["batch"], m["seq_len"], m["keep_ratio"]) == pytest.approx(m["median_ms"], rel=0.05)
    linear_only = LatencyModel(**{**model.__dict__, "shape_correction": {}})
    worst_linear = max(abs(linear_only.predict_ms(m["batch"], m["seq_len"], m["keep_ratio"]) / m["median_ms"] - 1)
                       for m in slowed)
    assert worst_linear > 0.05  # what the correction is for: a linear fit cannot follow the step
    assert model.correction(64, 64) == pytest.approx(model.correction(16, 64))  # constant beyond the grid


def test_quadratic_work_shrinks_with_the_ratio(metadata):
    full = batch_gflops(metadata.flops, metadata.profile, 64, 2, 1.0)
    pruned = batch_gflops(metadata.flops, metadata.profile, 64, 2, 0.1)
    assert pruned[0] < full[0] and pruned[1] < full[1]
    assert batch_gflops(metadata.flops, metadata.profile, 64, 4, 0.5)[0] == pytest.approx(
        2 * batch_gflops(metadata.flops, metadata.profile, 64, 2, 0.5)[0])


def test_the_chosen_ratio_is_the_largest_that_fits(metadata):
    model = synthetic_model(metadata, {"overhead_ms": 1.0, "token_ms": 0.0, "linear_gflop_ms": 50.0, "quadratic_gflop_ms": 100.0})
    full = model.predict_ms(4, 128, 1.0)
    floor = model.predict_ms(4, 128, 0.05)
    assert model.choose_keep_ratio(4, 128, full * 2) == pytest.approx((1.0, full))
    assert model.choose_keep_ratio(4, 128, floor / 2) == pytest.approx((0.05, floor))  # cannot fit: the fastest allowed
    previous = 0.0
    for budget in np.linspace(floor, full, 9)[1:-1]:
        ratio, predicted = model.choose_keep_ratio(4, 128, budget)
        assert predicted <= budget
        assert model.predict_ms(4, 128, min(ratio + 0.01, 1.0)) > budget or ratio > 0.99
        assert ratio >= previous  # a larger budget never buys a smaller ratio
        previous = ratio


def test_calibrate_writes_a_loadable_fit(calibrated):
    stored = json.loads((calibrated / CALIBRATION_FILE).read_text())
    assert len(stored["measurements"]) == 2 * 2 * 3
    assert all(m["median_ms"] > 0 for m in stored["measurements"])
    model = LatencyModel.load(calibrated)
    assert model.intra_op_threads == 1 and model.provider == "cpu"
    assert model.predict_ms(4, 64, 1.0) >= model.predict_ms(4, 64, 0.1)


def test_predict_with_a_budget(calibrated):
    session = LatencyAdjustableSession(calibrated, intra_op_threads=1)
    generous = session.predict(TEXTS, target_ms=10_000)
    assert generous.keep_ratio == 1.0 and generous.predicted_ms < 10_000
    np.testing.assert_allclose(generous.logits, session.predict(TEXTS, keep_ratio=1.0).logits, atol=1e-6)
    impossible = session.predict(TEXTS, target_ms=1e-3)
    assert impossible.keep_ratio == pytest.approx(0.05)
    np.testing.assert_allclose(impossible.logits, session.predict(TEXTS, keep_ratio=0.05).logits, atol=1e-6)
    assert session.predict(TEXTS, keep_ratio=0.5).keep_ratio == 0.5


@pytest.mark.parametrize("target", [0, -5, float("nan"), float("inf"), "10", True])
def test_bad_budgets_are_refused(calibrated, target):
    session = LatencyAdjustableSession(calibrated, intra_op_threads=1)
    with pytest.raises(InvalidInputError, match="target_ms"):
        session.predict(TEXTS, target_ms=target)


def test_ratio_and_budget_together_are_refused(calibrated):
    with pytest.raises(InvalidInputError, match="not both"):
        LatencyAdjustableSession(calibrated, intra_op_threads=1).predict(TEXTS, keep_ratio=0.5, target_ms=10)


def test_a_budget_without_calibration_says_how_to_get_one(bert_classifier):
    with pytest.raises(ModelDirectoryError, match="latexport calibrate"):
        LatencyAdjustableSession(bert_classifier).predict(TEXTS, target_ms=10)


def test_a_corrupt_or_foreign_calibration_is_refused(calibrated, converted, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(calibrated, broken)
    (broken / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ModelDirectoryError, match="calibrate again"):
        LatencyAdjustableSession(broken, intra_op_threads=1).predict(TEXTS, target_ms=10)
    foreign = tmp_path / "foreign"
    shutil.copytree(converted[("distilbert", "text-classification")], foreign)
    stored = json.loads((calibrated / CALIBRATION_FILE).read_text())
    stored["flops"]["hidden_size"] += 1  # measured for a different model shape
    (foreign / CALIBRATION_FILE).write_text(json.dumps(stored))
    with pytest.raises(ModelDirectoryError, match="different model"):
        LatencyAdjustableSession(foreign, intra_op_threads=1).predict(TEXTS, target_ms=10)


def test_other_threads_or_provider_are_flagged(calibrated):
    with pytest.warns(CalibrationWarning, match="threads"):
        LatencyAdjustableSession(calibrated, intra_op_threads=2).predict(TEXTS, target_ms=10)
    model = LatencyModel.load(calibrated)
    session = LatencyAdjustableSession(calibrated, intra_op_threads=1)
    with pytest.raises(InvalidInputError, match="provider"):
        model.check_matches(session.metadata, "cuda", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.check_matches(session.metadata, "cpu", 1)


def test_calibrate_and_run_commands(bert_classifier, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(bert_classifier, model_dir)
    runner = CliRunner()
    result = runner.invoke(main, ["calibrate", str(model_dir), "--batch-sizes", "1,2", "--seq-lens", "8,32",
                                  "--keep-ratios", "1,0.3", "--repeats", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "fit error" in result.output and (model_dir / CALIBRATION_FILE).is_file()
    result = runner.invoke(main, ["run", str(model_dir), "--target-ms", "10000", TEXTS[0]])
    assert result.exit_code == 0, result.output
    assert "keep_ratio 1: " in result.output and "budget 10000 ms" in result.output
    result = runner.invoke(main, ["calibrate", str(model_dir), "--batch-sizes", "0"])
    assert result.exit_code == 2 and "positive" in result.output
    result = runner.invoke(main, ["calibrate", str(model_dir), "--seq-lens", "4096"])
    assert result.exit_code == 2 and "sequence lengths" in result.output


def test_the_margin_comes_from_slow_calls(metadata):
    truth = {"overhead_ms": 1.0, "token_ms": 0.0, "linear_gflop_ms": 50.0, "quadratic_gflop_ms": 100.0}
    exact = synthetic_model(metadata, truth)
    jittery = [dict(m, p90_ms=m["median_ms"] * 1.1) for m in exact.measurements]
    model = LatencyModel.fit(metadata, [{k: v for k, v in m.items() if k != "predicted_ms"} for m in jittery],
                             provider="cpu", intra_op_threads=1, machine={}, onnxruntime_version="")
    assert model.margin == pytest.approx(0.1, rel=1e-6)
    ratio, guarded = model.choose_keep_ratio(4, 128, model.predict_ms(4, 128, 1.0) * 1.05)
    assert ratio < 1.0  # 5% headroom is not enough once 10% is kept for slow calls
    assert guarded == pytest.approx(model.predict_ms(4, 128, ratio) * 1.1)
