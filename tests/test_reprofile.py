"""reprofile: a converted file given another profile power drops exactly what that profile says."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from latexport.cli import main
from latexport.export.passes import with_int64_outputs
from latexport.runtime.errors import LatexportError, SettingsError
from latexport.runtime.profile import EliminationProfile
from latexport.runtime.reprofile import EXPONENT_NAME, ReprofileError, profile_of, reprofile
from latexport.runtime.session import LatencyAdjustableSession
from latexport.training.evaluate import choose_profile, tune

RATIOS = (1.0, 0.7, 0.4, 0.2, 0.05)
TEXTS = ["a good film", "a dull plot that goes nowhere at all, slowly and at length", "fine", "not bad, not great"]


@pytest.fixture
def model_copy(bert_classifier, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(bert_classifier, target)
    return target


def kept_counts_by_layer(model_dir, feed, ratio) -> np.ndarray:
    """[B, layers]: word-vectors the graph itself keeps after each layer, read from its hidden taps."""
    session = LatencyAdjustableSession(model_dir)
    taps = session.metadata.kept_positions_taps
    raw = ort.InferenceSession(with_int64_outputs(model_dir / "model.onnx", taps), providers=["CPUExecutionProvider"])
    values = raw.run(taps, {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})
    return np.stack([(positions >= 0).sum(axis=1) for positions in values], axis=1)


def mismatched_counts(model_dir, profile: EliminationProfile) -> list[tuple]:
    """(ratio, row, graph's counts, profile's counts) wherever the file disagrees with ``profile``."""
    session = LatencyAdjustableSession(model_dir)
    feed = session.encode(TEXTS)
    lengths = feed["attention_mask"].sum(axis=1)
    wrong = []
    for ratio in RATIOS:
        got = kept_counts_by_layer(model_dir, feed, ratio)
        for row, length in enumerate(lengths):
            expected = profile.kept_counts(int(length), ratio)
            if got[row].tolist() != expected:
                wrong.append((ratio, row, got[row].tolist(), expected))
    return wrong


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_a_reprofiled_file_keeps_what_the_new_profile_says(model_copy, power):
    old = profile_of(model_copy / "model.onnx")
    assert not mismatched_counts(model_copy, old)
    new = reprofile(model_copy / "model.onnx", power)
    assert new == EliminationProfile(num_layers=old.num_layers, power=power)
    assert profile_of(model_copy / "model.onnx") == new
    assert LatencyAdjustableSession(model_copy).metadata.profile == new
    assert not mismatched_counts(model_copy, new)
    assert mismatched_counts(model_copy, old), "the two profiles must differ on these inputs for the test to mean anything"


def test_the_count_check_catches_a_planted_rewrite_in_the_wrong_layer_order(model_copy):
    path = model_copy / "model.onnx"
    new = reprofile(path, 3.0)
    proto = onnx.load(str(path))
    exponents = {tensor.name: tensor for tensor in proto.graph.initializer if tensor.name.startswith("latexport.profile")}
    first, last = EXPONENT_NAME.format(layer=0), EXPONENT_NAME.format(layer=new.num_layers - 1)
    swapped = onnx.numpy_helper.to_array(exponents[first]).copy()
    exponents[first].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(exponents[last]), first))
    exponents[last].CopyFrom(onnx.numpy_helper.from_array(swapped, last))
    onnx.save(proto, str(path))
    assert mismatched_counts(model_copy, new)


def test_at_keep_ratio_one_any_power_gives_the_same_output(bert_classifier, model_copy):
    reprofile(model_copy / "model.onnx", 3.0)
    original, rewritten = LatencyAdjustableSession(bert_classifier), LatencyAdjustableSession(model_copy)
    feed = original.encode(TEXTS)
    np.testing.assert_array_equal(original.run(feed, 1.0), rewritten.run(feed, 1.0))
    assert not np.array_equal(original.run(feed, 0.2), rewritten.run(feed, 0.2))


def test_reprofiling_matches_converting_with_that_power(checkpoints, model_copy, tmp_path):
    """An independent path to the same file: the exporter traced with --power 2 from the start."""
    from latexport.export.conversion import convert

    reprofile(model_copy / "model.onnx", 2.0)
    exported = convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "exported", power=2.0).out_dir
    rewritten, converted = LatencyAdjustableSession(model_copy), LatencyAdjustableSession(exported)
    feed = rewritten.encode(TEXTS)
    for ratio in RATIOS:
        np.testing.assert_allclose(rewritten.run(feed, ratio), converted.run(feed, ratio), atol=1e-5)


def test_reprofile_drops_a_tuned_default_and_can_write_elsewhere(model_copy, tmp_path):
    from latexport.training.evaluate import write_metadata

    path = model_copy / "model.onnx"
    write_metadata(path, {"default_keep_ratio": "0.3", "tuning": json.dumps({"power": 1.5})})
    before = path.read_bytes()
    target = tmp_path / "elsewhere.onnx"
    reprofile(path, 2.0, target=target)
    assert path.read_bytes() == before
    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert "latexport.default_keep_ratio" not in props and "latexport.tuning" not in props
    assert json.loads(props["latexport.profile"])["power"] == 2.0


def test_reprofile_refuses_what_it_cannot_rewrite(model_copy, tmp_path):
    path = model_copy / "model.onnx"
    before = path.read_bytes()
    with pytest.raises(SettingsError, match="power must be in"):
        reprofile(path, 9.0)
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "latexport.profile":
            prop.value = json.dumps({"name": "power", "num_layers": json.loads(prop.value)["num_layers"], "power": 2.5})
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))
    with pytest.raises(ReprofileError, match="not those of its recorded profile"):
        reprofile(edited, 2.0)
    del proto.metadata_props[:]
    onnx.save(proto, str(edited))
    with pytest.raises(ReprofileError, match="no latexport.profile metadata"):
        reprofile(edited, 2.0)
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["keep_ratio"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("keep_ratio", onnx.TensorProto.FLOAT, [])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])]))
    plain.metadata_props.add(key="latexport.profile", value=EliminationProfile(num_layers=2).to_json())
    onnx.save(plain, str(edited))
    with pytest.raises(ReprofileError, match="found 0 keep_ratio exponents for a 2-layer profile"):
        reprofile(edited, 2.0)
    assert path.read_bytes() == before


def test_reprofile_works_on_the_int8_and_fused_variants(checkpoints, tmp_path):
    from latexport.export.conversion import convert

    out = convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "int8", quantize="dynamic",
                  optimize="cpu").out_dir
    new = reprofile(out / "model.onnx", 3.0)
    assert not mismatched_counts(out, new)


def test_choose_profile_takes_the_fastest_power_whose_ratio_fits():
    from test_evaluate import _curve

    flat = _curve([(1.0, 0.9, 1.0), (0.5, 0.9, 1.3), (0.2, 0.7, 1.9)])
    steep = _curve([(1.0, 0.9, 1.0), (0.5, 0.9, 1.1), (0.2, 0.9, 1.6)])
    power, choices = choose_profile({1.0: flat, 3.0: steep}, max_drop=0.01)
    assert power == 3.0 and choices[3.0][0] == 0.2 and choices[1.0][0] == 0.5
    power, choices = choose_profile({1.0: flat, 3.0: steep}, target_speedup=1.5)
    assert (power, choices[power][0]) == (3.0, 0.2)  # the most accurate of the ratios reaching 1.5x
    # a power whose curve never reaches the target is left out, not fatal
    power, choices = choose_profile({1.0: flat, 3.0: steep}, target_speedup=1.8)
    assert (power, choices[power][0]) == (1.0, 0.2) and set(choices) == {1.0}
    with pytest.raises(LatexportError, match="power 1: .*power 3: "):
        choose_profile({1.0: flat, 3.0: steep}, target_speedup=5)


def test_tune_chooses_a_power_writes_it_and_the_session_runs_it(model_copy, tmp_path):
    from test_evaluate import LABELS
    from test_finetune import sentiment_rows, write

    rows = [{"text": row["text"], "label": LABELS[i % 3]} for i, row in enumerate(sentiment_rows(24, 3))]
    data = write(tmp_path / "data.jsonl", rows)
    result = tune(model_copy, data, max_drop=0.05, keep_ratios=(1.0, 0.4, 0.1), batch_size=8, powers=(1.0, 3.0))
    assert set(result.evaluations) == {1.0, 3.0} and result.power in (1.0, 3.0)
    assert result.choices[result.power] == result.keep_ratio
    session = LatencyAdjustableSession(model_copy)
    assert session.metadata.profile.power == result.power and session.default_keep_ratio == result.keep_ratio
    assert session.metadata.tuning["power"] == result.power and set(session.metadata.tuning["powers"]) == {"1", "3"}
    assert not mismatched_counts(model_copy, session.metadata.profile)
    assert [p.name for p in model_copy.iterdir() if p.name.startswith(".")] == []


def test_reprofile_command(model_copy):
    runner = CliRunner()
    result = runner.invoke(main, ["reprofile", str(model_copy), "--power", "2"])
    assert result.exit_code == 0, result.output
    assert "power 1.5 -> 2 over" in result.output
    assert profile_of(model_copy / "model.onnx").power == 2.0
    result = runner.invoke(main, ["reprofile", str(model_copy / "missing"), "--power", "2"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_tune_command_powers_option(model_copy, tmp_path):
    from test_evaluate import LABELS
    from test_finetune import sentiment_rows, write

    rows = [{"text": row["text"], "label": LABELS[i % 3]} for i, row in enumerate(sentiment_rows(16, 4))]
    data = write(tmp_path / "data.jsonl", rows)
    runner = CliRunner()
    result = runner.invoke(main, ["tune", str(model_copy), "--data", data, "--max-drop", "0.05", "--powers", "file"])
    assert result.exit_code == 0, result.output
    assert "chose power 1.5," in result.output and "profile powers tried" not in result.output
    result = runner.invoke(main, ["tune", str(model_copy), "--data", data, "--max-drop", "0.05", "--powers", "1,3"])
    assert result.exit_code == 0, result.output
    assert "power 1 " in result.output and "power 3 " in result.output and "<- chosen" in result.output
    for bad in ("9", "two", ""):
        result = runner.invoke(main, ["tune", str(model_copy), "--data", data, "--max-drop", "0.05", "--powers", bad])
        assert result.exit_code == 2 and "--powers" in result.output, (bad, result.output)


def test_tune_refuses_a_non_classifier_before_touching_it(converted, tmp_path):
    target = tmp_path / "features"
    shutil.copytree(converted[("bert", "feature-extraction")], target)
    before = (target / "model.onnx").read_bytes()
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(LatexportError, match="does feature-extraction; tune needs a classification"):
        tune(target, str(data), max_drop=0.01, powers=(1.0, 3.0))
    with pytest.raises(LatexportError, match="does not exist"):
        tune(tmp_path / "missing", str(data), max_drop=0.01)
    assert (target / "model.onnx").read_bytes() == before
