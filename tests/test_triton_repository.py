"""examples/triton-server/make_repository.py: a repository Triton's ONNX Runtime backend would load.

Triton does not run here.  The config is parsed with Triton's own ModelConfig
protobuf (shipped in tritonclient) and checked against the model as ONNX
Runtime reports it, with the load-time rules Triton applies (core, then the
ONNX Runtime backend; the source lines are cited in make_repository.py).  Then
the repository's model is run on what Triton would hand it: core reshapes
each request, the batcher stacks requests along the batch dim, and the
backend binds an input that ONNX Runtime reports without dims as a rank-0
tensor of the first element.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from latexport.runtime.session import LatencyAdjustableSession

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "triton-server"
sys.path.insert(0, str(EXAMPLE))

from make_repository import make_repository  # noqa: E402

NAME = "latexport_classifier"
ORT_TO_TRITON = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
ATOL = 1e-5


@pytest.fixture(scope="module")
def model_config_pb2():
    """Triton's ModelConfig protobuf, from tritonclient (in the [test] extra: missing is an error)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def parse_config(model_config_pb2, model_repo: Path):
    from google.protobuf import text_format

    return text_format.Parse((model_repo / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def load_session(model_repo: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_repo / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def model_inputs(session: ort.InferenceSession) -> dict:
    """Every input a request may carry, as the backend sees them: ONNX Runtime's inputs and overridable initializers."""
    return {tensor.name: tensor for tensor in [*session.get_inputs(), *session.get_overridable_initializers()]}


def assert_triton_would_load(config, model_config_pb2, model_repo: Path) -> None:
    """Triton's load-time checks of a config against its ONNX model (core, then the ONNX Runtime backend)."""
    session = load_session(model_repo)
    required = [tensor.name for tensor in session.get_inputs()]
    assert len(config.input) - sum(io.optional for io in config.input) == len(required), \
        "the backend wants as many non-optional config inputs as ONNX Runtime inputs"
    for io in config.input:
        assert not (io.optional and config.max_batch_size > 0), f"{io.name}: no optional input with batching"
        assert io.optional or io.name in required, f"{io.name}: an input with a default must be optional"
    assert [io.name for io in config.output] == [tensor.name for tensor in session.get_outputs()]
    graph = {**model_inputs(session), **{tensor.name: tensor for tensor in session.get_outputs()}}
    for io in [*config.input, *config.output]:
        assert io.dims, f"{io.name}: Triton requires non-empty dims"
        assert all(dim >= 1 or dim == -1 for dim in io.dims), io.dims
        if io.HasField("reshape"):
            assert io.reshape.shape or config.max_batch_size > 0, f"{io.name}: Triton refuses an empty reshape without batching"
            assert np.prod(io.dims) == np.prod(io.reshape.shape), f"{io.name}: dims and reshape differ in size"
        tensor = graph[io.name]
        assert model_config_pb2.DataType.Name(io.data_type) == ORT_TO_TRITON[tensor.type], io.name
        dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        model_shape = [dim if isinstance(dim, int) else -1 for dim in tensor.shape]
        if not model_shape:  # rank 0, or unknown rank: ONNX Runtime reports no dims for either
            assert dims == [1] * len(dims), f"{io.name}: an input without dims takes all-1 dims"
        else:
            batch = [-1] if config.max_batch_size > 0 else []
            assert batch + dims == model_shape, io.name


def triton_feed(config, session: ort.InferenceSession, requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """What the ONNX Runtime backend binds for ``requests`` merged into one model call.

    Core reshapes each request's input after its batch dim, the batcher
    concatenates the requests, and the backend binds an input that ONNX
    Runtime reports without dims as a rank-0 tensor of the first element.
    """
    graph = model_inputs(session)
    feed = {}
    for io in config.input:
        sent = [request[io.name] for request in requests if io.name in request]
        if not sent:
            continue
        assert len(sent) == len(requests), f"{io.name}: sent by some requests only"
        if io.HasField("reshape"):
            batch = [-1] if config.max_batch_size > 0 else []
            sent = [array.reshape(batch + list(io.reshape.shape)) for array in sent]
        merged = np.concatenate(sent) if config.max_batch_size > 0 else sent[0]
        feed[io.name] = merged.reshape(-1)[:1].reshape(()) if not graph[io.name].shape else merged
    return feed


def pad_to(feed: dict[str, np.ndarray], width: int, pad_token_id: int) -> dict[str, np.ndarray]:
    """The batcher merges only requests of equal shapes: pad each to one width (masked, so the rows are unchanged)."""
    padded = {}
    for name, array in feed.items():
        filler = pad_token_id if name == "input_ids" else 0
        padded[name] = np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=filler)
    return padded


def test_default_repository_copies_the_model_and_declares_keep_ratio_as_one_optional_float(
        bert_classifier, tmp_path, model_config_pb2):
    model_repo = make_repository(bert_classifier, tmp_path / "repo")

    assert model_repo == tmp_path / "repo" / NAME
    copied = model_repo / "1" / "model.onnx"
    assert copied.read_bytes() == (bert_classifier / "model.onnx").read_bytes()

    config = parse_config(model_config_pb2, model_repo)
    assert (config.name, config.backend, config.max_batch_size) == (NAME, "onnxruntime", 0)
    graph_inputs = [value.name for value in onnx.load(str(copied), load_external_data=False).graph.input]
    assert [io.name for io in config.input] == graph_inputs
    inputs = {io.name: io for io in config.input}
    for name in ("input_ids", "attention_mask"):
        assert model_config_pb2.DataType.Name(inputs[name].data_type) == "TYPE_INT64"
        assert list(inputs[name].dims) == [-1, -1] and not inputs[name].optional
    keep_ratio = inputs["keep_ratio"]
    assert model_config_pb2.DataType.Name(keep_ratio.data_type) == "TYPE_FP32"
    assert list(keep_ratio.dims) == [1] and not keep_ratio.HasField("reshape") and keep_ratio.optional
    [logits] = config.output
    assert (logits.name, model_config_pb2.DataType.Name(logits.data_type), list(logits.dims)) == ("logits", "TYPE_FP32", [-1, 3])
    [instances] = config.instance_group
    assert (instances.count, model_config_pb2.ModelInstanceGroup.Kind.Name(instances.kind)) == (1, "KIND_CPU")
    assert not config.HasField("dynamic_batching")
    assert_triton_would_load(config, model_config_pb2, model_repo)


def test_without_batching_a_request_sends_one_ratio_or_none(bert_classifier, tmp_path, model_config_pb2):
    model_repo = make_repository(bert_classifier, tmp_path)
    config, session = parse_config(model_config_pb2, model_repo), load_session(model_repo)
    runtime = LatencyAdjustableSession(bert_classifier)
    feed = runtime.encode(["a gripping, funny film", "two hours I will never get back, long and slow and dull"])

    sent = triton_feed(config, session, [{**feed, "keep_ratio": np.array([0.1], np.float32)}])
    assert sent["keep_ratio"].shape == ()
    np.testing.assert_allclose(session.run(["logits"], sent)[0], runtime.run(feed, keep_ratio=0.1), atol=ATOL, rtol=0)
    # Left out, it is the file's default.
    default = session.run(["logits"], triton_feed(config, session, [feed]))[0]
    np.testing.assert_allclose(default, runtime.run(feed), atol=ATOL, rtol=0)
    assert np.abs(default - runtime.run(feed, keep_ratio=0.1)).max() > ATOL


def test_batched_repository_declares_keep_ratio_per_row(bert_classifier, tmp_path, model_config_pb2):
    model_repo = make_repository(bert_classifier, tmp_path, name="batched", max_batch_size=8, instance_count=2,
                                 kind="KIND_GPU", dynamic_batching=True)

    config = parse_config(model_config_pb2, model_repo)
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert {io.name: list(io.dims) for io in config.input} == {
        "input_ids": [-1], "attention_mask": [-1], "token_type_ids": [-1], "keep_ratio": [1]}
    keep_ratio = next(io for io in config.input if io.name == "keep_ratio")
    assert keep_ratio.HasField("reshape") and list(keep_ratio.reshape.shape) == [] and not keep_ratio.optional
    assert [list(io.dims) for io in config.output] == [[3]]
    [instances] = config.instance_group
    assert (instances.count, model_config_pb2.ModelInstanceGroup.Kind.Name(instances.kind)) == (2, "KIND_GPU")
    assert "own keep_ratio" in (model_repo / "config.pbtxt").read_text()
    # The copy takes keep_ratio as a required [batch] input; nothing else changed.
    original = onnx.load(str(bert_classifier / "model.onnx"))
    copied = onnx.load(str(model_repo / "1" / "model.onnx"))
    assert [tensor.name for tensor in load_session(model_repo).get_inputs()][-1] == "keep_ratio"
    assert [dim.dim_param for dim in copied.graph.input[-1].type.tensor_type.shape.dim] == ["batch"]
    assert {i.name for i in original.graph.initializer} - {i.name for i in copied.graph.initializer} == {"keep_ratio"}
    assert copied.graph.node == original.graph.node and copied.metadata_props == original.metadata_props
    assert_triton_would_load(config, model_config_pb2, model_repo)


def test_batched_requests_each_run_at_their_own_ratio(bert_classifier, tmp_path, model_config_pb2):
    """Two requests merged by the dynamic batcher give what each gives alone."""
    model_repo = make_repository(bert_classifier, tmp_path, max_batch_size=8, dynamic_batching=True)
    config, session = parse_config(model_config_pb2, model_repo), load_session(model_repo)
    runtime = LatencyAdjustableSession(bert_classifier)
    fast = runtime.encode(["the story was long and the ending was bad, but the music was good", "boring plot"])
    full = runtime.encode(["a good film"])
    width = max(fast["input_ids"].shape[1], full["input_ids"].shape[1])
    fast, full = (pad_to(feed, width, runtime.metadata.pad_token_id) for feed in (fast, full))
    requests = [{**fast, "keep_ratio": np.full((2, 1), 0.1, np.float32)},
                {**full, "keep_ratio": np.full((1, 1), 1.0, np.float32)}]

    sent = triton_feed(config, session, requests)
    assert sent["keep_ratio"].tolist() == pytest.approx([0.1, 0.1, 1.0]) and sent["input_ids"].shape == (3, width)
    merged = session.run(["logits"], sent)[0]
    apart = np.concatenate([session.run(["logits"], triton_feed(config, session, [request]))[0] for request in requests])
    np.testing.assert_allclose(merged, apart, atol=ATOL, rtol=0)
    alone = np.concatenate([runtime.run(fast, keep_ratio=0.1), runtime.run(full, keep_ratio=1.0)])
    np.testing.assert_allclose(merged, alone, atol=ATOL, rtol=0)
    # At one ratio for all three (what the backend gave before), the fast rows would differ.
    assert np.abs(merged[:2] - runtime.run(fast, keep_ratio=1.0)).max() > ATOL


def test_refusals(bert_classifier, tmp_path):
    make_repository(bert_classifier, tmp_path)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_repository(bert_classifier, tmp_path)
    make_repository(bert_classifier, tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="max_batch_size > 0"):
        make_repository(bert_classifier, tmp_path / "other", dynamic_batching=True)

    plain = tmp_path / "plain"
    plain.mkdir()
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])])
    onnx.save(onnx.helper.make_model(identity), str(plain / "model.onnx"))
    with pytest.raises(ValueError, match="keep_ratio"):
        make_repository(plain, tmp_path / "other")


def test_an_older_file_with_a_scalar_keep_ratio_serves_without_batching_only(bert_classifier, tmp_path,
                                                                            model_config_pb2):
    older = tmp_path / "older"
    older.mkdir()
    model = onnx.load(str(bert_classifier / "model.onnx"))
    kept = [initializer for initializer in model.graph.initializer if initializer.name != "keep_ratio"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.input[-1].CopyFrom(onnx.helper.make_tensor_value_info("keep_ratio", onnx.TensorProto.FLOAT, []))
    onnx.save(model, str(older / "model.onnx"))

    model_repo = make_repository(older, tmp_path / "repo")
    config = parse_config(model_config_pb2, model_repo)
    keep_ratio = next(io for io in config.input if io.name == "keep_ratio")
    assert list(keep_ratio.dims) == [1] and not keep_ratio.optional
    assert_triton_would_load(config, model_config_pb2, model_repo)
    with pytest.raises(ValueError, match="older latexport"):
        make_repository(older, tmp_path / "repo", name="batched", max_batch_size=8)


def test_command_line(bert_classifier, tmp_path):
    command = [sys.executable, str(EXAMPLE / "make_repository.py"), str(bert_classifier), str(tmp_path), "--name", "cli"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "config.pbtxt").is_file() and (tmp_path / "cli" / "1" / "model.onnx").is_file()

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
