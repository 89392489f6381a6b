"""examples/triton-server/make_repository.py: a repository Triton's ONNX Runtime backend would load.

Triton does not run here.  The config is parsed with Triton's own ModelConfig
protobuf (shipped in tritonclient), and checked against the model as ONNX
Runtime reports it, with the load-time rules Triton applies: core refuses empty
dims and an empty reshape without Triton batching; the ONNX Runtime backend
accepts a scalar model input only with all-1 dims, and otherwise wants the
model's shape after the batch dim when max_batch_size > 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "triton-server"
sys.path.insert(0, str(EXAMPLE))

from make_repository import make_repository  # noqa: E402

NAME = "latexport_classifier"
ORT_TO_TRITON = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


@pytest.fixture(scope="module")
def model_config_pb2():
    """Triton's ModelConfig protobuf, from tritonclient (in the [test] extra: missing is an error)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def parse_config(model_config_pb2, model_repo: Path):
    from google.protobuf import text_format

    return text_format.Parse((model_repo / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def assert_triton_would_load(config, model_config_pb2, model_path: Path) -> None:
    """Triton's load-time checks of a config against its ONNX model (core, then the ONNX Runtime backend)."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for declared, graph in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [io.name for io in declared] == [tensor.name for tensor in graph]
        for io, tensor in zip(declared, graph):
            assert io.dims, f"{io.name}: Triton requires non-empty dims"
            assert all(dim >= 1 or dim == -1 for dim in io.dims), io.dims
            assert not (io.HasField("reshape") and not io.reshape.shape and config.max_batch_size == 0), \
                f"{io.name}: Triton refuses an empty reshape without batching"
            assert model_config_pb2.DataType.Name(io.data_type) == ORT_TO_TRITON[tensor.type], io.name
            model_shape = [dim if isinstance(dim, int) else -1 for dim in tensor.shape]
            if not model_shape:
                assert list(io.dims) == [1] * len(io.dims), f"{io.name}: a scalar model input takes all-1 dims"
            else:
                batch = [-1] if config.max_batch_size > 0 else []
                assert batch + list(io.dims) == model_shape, io.name


def test_default_repository_copies_the_model_and_declares_keep_ratio_as_one_float(bert_classifier, tmp_path,
                                                                                 model_config_pb2):
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
        assert list(inputs[name].dims) == [-1, -1]
    keep_ratio = inputs["keep_ratio"]
    assert model_config_pb2.DataType.Name(keep_ratio.data_type) == "TYPE_FP32"
    assert list(keep_ratio.dims) == [1] and not keep_ratio.HasField("reshape")
    [logits] = config.output
    assert (logits.name, model_config_pb2.DataType.Name(logits.data_type), list(logits.dims)) == ("logits", "TYPE_FP32", [-1, 3])
    [instances] = config.instance_group
    assert (instances.count, model_config_pb2.ModelInstanceGroup.Kind.Name(instances.kind)) == (1, "KIND_CPU")
    assert not config.HasField("dynamic_batching")
    assert_triton_would_load(config, model_config_pb2, copied)


def test_batched_repository_drops_the_batch_dim_except_from_keep_ratio(bert_classifier, tmp_path, model_config_pb2):
    model_repo = make_repository(bert_classifier, tmp_path, name="batched", max_batch_size=8, instance_count=2,
                                 kind="KIND_GPU", dynamic_batching=True)

    config = parse_config(model_config_pb2, model_repo)
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert {io.name: list(io.dims) for io in config.input} == {
        "input_ids": [-1], "attention_mask": [-1], "token_type_ids": [-1], "keep_ratio": [1]}
    assert [list(io.dims) for io in config.output] == [[3]]
    [instances] = config.instance_group
    assert (instances.count, model_config_pb2.ModelInstanceGroup.Kind.Name(instances.kind)) == (2, "KIND_GPU")
    assert "same keep_ratio" in (model_repo / "config.pbtxt").read_text()
    assert_triton_would_load(config, model_config_pb2, model_repo / "1" / "model.onnx")


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


def test_command_line(bert_classifier, tmp_path):
    command = [sys.executable, str(EXAMPLE / "make_repository.py"), str(bert_classifier), str(tmp_path), "--name", "cli"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "config.pbtxt").is_file() and (tmp_path / "cli" / "1" / "model.onnx").is_file()

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
