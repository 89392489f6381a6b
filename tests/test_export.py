"""`convert`: the ONNX file, its contract, and its parity with the references."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny import FAMILIES

from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.passes import with_int64_outputs
from latexport.export.validate import (
    pytorch_output,
    reference_output,
    validation_inputs,
)
from latexport.runtime.errors import (
    CheckpointError,
    OutputExistsError,
    UnsupportedModelError,
    ValidationError,
)

KEYS = [(family, task) for family in FAMILIES for task in ("text-classification", "feature-extraction")]


def session_with_taps(model_dir):
    proto = onnx.load(str(model_dir / "model.onnx"))
    taps = json.loads({p.key: p.value for p in proto.metadata_props}["latexport.kept_positions_taps"])
    return ort.InferenceSession(with_int64_outputs(model_dir / "model.onnx", taps), providers=["CPUExecutionProvider"]), taps


def fresh_inputs(loaded, seed):
    """Inputs the converter's own validation never saw."""
    return validation_inputs(loaded, seed=seed)


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_directory_is_self_contained(converted, key):
    out = converted[key]
    assert {"model.onnx", "tokenizer.json", "config.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_graph_contract(converted, key):
    family, task = key
    proto = onnx.load(str(converted[key] / "model.onnx"))
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    expected = ["input_ids", "attention_mask"] + (["token_type_ids"] if family in ("bert", "electra", "albert") else []) + ["keep_ratio"]
    # RoBERTa-style models have a single token type, so they take no token_type_ids
    assert list(inputs) == expected
    assert inputs["keep_ratio"].elem_type == onnx.TensorProto.FLOAT and len(inputs["keep_ratio"].shape.dim) == 0
    for name in expected[:-1]:
        assert inputs[name].elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in inputs[name].shape.dim] == ["batch", "sequence"]
    assert [o.name for o in proto.graph.output] == ["logits" if task == "text-classification" else "sentence_embedding"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["latexport.family"] == {"xlm-roberta": "roberta"}.get(family, family)
    assert props["latexport.task"] == task
    assert json.loads(props["latexport.profile"])["name"] == "power"
    if task == "text-classification":
        assert json.loads(props["latexport.labels"]) == ["label_a", "label_b", "label_c"]
    layers = json.loads(props["latexport.profile"])["num_layers"]
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    assert len(ifs) == layers, "one keep-everything shortcut per layer"
    dropping = [n for n in ifs[0].attribute if n.name == "else_branch"][0].g
    assert {"TopK", "Gather", "MatMul"} <= {n.op_type for n in dropping.node}


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_onnx_matches_transformers_at_one_and_pytorch_below(converted, checkpoints, key):
    loaded = load_checkpoint(str(checkpoints[key]))
    lat = build_model(loaded, pooling="mean")
    session, taps = session_with_taps(converted[key])
    output_name = session.get_outputs()[0].name
    for feed in fresh_inputs(loaded, seed=11).values():
        got = session.run([output_name], {**feed, "keep_ratio": np.array(1.0, np.float32)})[0]
        np.testing.assert_allclose(got, reference_output(loaded, feed, "mean"), atol=1e-4, rtol=0)
        for ratio in (0.9, 0.6, 0.3, 0.15, 0.05):
            got, *kept = session.run([output_name, *taps], {**feed, "keep_ratio": np.array(ratio, np.float32)})
            expected, expected_kept = pytorch_output(lat, feed, ratio)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
            for a, b in zip(kept, expected_kept):
                np.testing.assert_array_equal(a, b)


def test_kept_counts_never_grow_with_depth_or_smaller_ratio(converted, checkpoints):
    key = ("roberta", "text-classification")
    session, taps = session_with_taps(converted[key])
    feed = fresh_inputs(load_checkpoint(str(checkpoints[key])), seed=3)["padded batch"]
    previous = None
    for ratio in (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.01):
        kept = session.run(taps, {**feed, "keep_ratio": np.array(ratio, np.float32)})
        counts = np.stack([(layer >= 0).sum(axis=1) for layer in kept], axis=1)  # [batch, layers]
        assert (np.diff(counts, axis=1) <= 0).all(), counts
        if previous is not None:
            assert (counts <= previous).all()
        previous = counts
    assert (previous >= 1).all()


def test_regression_model(regressor, regression_checkpoint):
    loaded = load_checkpoint(str(regression_checkpoint))
    assert loaded.problem_type == "regression"
    session = ort.InferenceSession(str(regressor / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = fresh_inputs(loaded, seed=2)["padded batch"]
    got = session.run(None, {**feed, "keep_ratio": np.array(1.0, np.float32)})[0]
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got, reference_output(loaded, feed, None), atol=1e-4, rtol=0)


def test_graph_clamps_keep_ratio_instead_of_crashing(bert_classifier):
    session = ort.InferenceSession(str(bert_classifier / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": np.full((2, 20), 9, np.int64),
        "attention_mask": np.ones((2, 20), np.int64),
        "token_type_ids": np.zeros((2, 20), np.int64),
    }
    feed["input_ids"][:, 5:] = np.arange(15) + 10

    def run(ratio):
        return session.run(None, {**feed, "keep_ratio": np.array(ratio, np.float32)})[0]

    np.testing.assert_array_equal(run(5.0), run(1.0))
    np.testing.assert_array_equal(run(float("nan")), run(1.0))
    np.testing.assert_array_equal(run(-1.0), run(0.0))
    assert np.isfinite(run(0.0)).all()
    assert np.isfinite(run(float("inf"))).all() and np.isfinite(run(float("-inf"))).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_rows_do_not_depend_on_their_batch(converted, checkpoints, family):
    key = (family, "text-classification")
    session = ort.InferenceSession(str(converted[key] / "model.onnx"), providers=["CPUExecutionProvider"])
    loaded_feed = validation_inputs(load_checkpoint(str(checkpoints[key])), seed=5)["padded batch"]
    for ratio in (1.0, 0.5, 0.2):
        r = np.array(ratio, np.float32)
        batched = session.run(None, {**loaded_feed, "keep_ratio": r})[0]
        for row in range(batched.shape[0]):
            length = int(loaded_feed["attention_mask"][row].sum())
            solo = {name: value[row : row + 1, :length] for name, value in loaded_feed.items()}
            np.testing.assert_allclose(batched[row : row + 1], session.run(None, {**solo, "keep_ratio": r})[0], atol=1e-5, rtol=0)


def test_failed_validation_leaves_nothing(checkpoints, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValidationError) as raised:
        convert(str(checkpoints[("bert", "text-classification")]), out, atol=1e-30)
    assert "FAILED" in raised.value.report
    assert list(tmp_path.iterdir()) == []


def test_keep_invalid_keeps_the_file(checkpoints, tmp_path):
    result = convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "out", atol=1e-30, keep_invalid=True)
    assert not result.report.passed
    assert (tmp_path / "out" / "model.onnx").exists()


def test_existing_output_is_refused_unless_overwrite(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ckpt = str(checkpoints[("distilbert", "text-classification")])
    with pytest.raises(OutputExistsError):
        convert(ckpt, out)
    assert (out / "keep.txt").read_text() == "mine"
    convert(ckpt, out, overwrite=True)
    assert (out / "model.onnx").exists() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    from transformers import FunnelConfig, FunnelModel

    FunnelModel(FunnelConfig(vocab_size=50, block_sizes=[1], d_model=16, n_head=2, d_head=8, d_inner=16)).save_pretrained(tmp_path / "funnel")
    with pytest.raises(UnsupportedModelError, match="Supported model types: .*albert.*bert.*distilbert.*mpnet"):
        convert(str(tmp_path / "funnel"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_task_is_refused(checkpoints, tmp_path):
    with pytest.raises(UnsupportedModelError, match="Supported tasks"):
        convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "out", task="token-classification")


@pytest.fixture
def broken_checkpoint(checkpoints, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoints[("bert", "text-classification")], target)
    return target


def test_missing_weights(broken_checkpoint, tmp_path):
    (broken_checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights"):
        convert(str(broken_checkpoint), tmp_path / "out")


def test_truncated_safetensors(broken_checkpoint, tmp_path):
    weights = broken_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated|cannot load"):
        convert(str(broken_checkpoint), tmp_path / "out")


def test_bad_config_json(broken_checkpoint, tmp_path):
    (broken_checkpoint / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json"):
        convert(str(broken_checkpoint), tmp_path / "out")


def test_missing_config_and_missing_directory(broken_checkpoint, tmp_path):
    (broken_checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        convert(str(broken_checkpoint), tmp_path / "out")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        convert(str(tmp_path / "nowhere"), tmp_path / "out")


def test_partial_weights(broken_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(broken_checkpoint / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, str(broken_checkpoint / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="partial"):
        convert(str(broken_checkpoint), tmp_path / "out")
