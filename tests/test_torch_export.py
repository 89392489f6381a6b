"""`convert --exporter torch-export`: PyTorch's newer exporter writes the same graphs, validated alike."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from latexport.cli import main
from latexport.export.conversion import convert
from latexport.export.tracing import TORCH_EXPORT_MIN_OPSET
from latexport.runtime.errors import ExportError, SettingsError

pytest.importorskip("onnxscript", reason="--exporter torch-export needs onnxscript (the test extra installs it)")


def graph_opset(path) -> int:
    return next(entry.version for entry in onnx.load(str(path)).opset_import if entry.domain in ("", "ai.onnx"))


def test_an_encoder_exported_by_torch_export_validates_and_equals_the_torchscript_file(checkpoints, tmp_path):
    """convert's whole validation passes (transformers at 1.0, the independent reference below it), the file
    is torch.export's (its opset), and it gives what the TorchScript file gives, kept positions included."""
    checkpoint = str(checkpoints[("bert", "text-classification")])
    exported = convert(checkpoint, tmp_path / "torch-export", exporter="torch-export")
    traced = convert(checkpoint, tmp_path / "torchscript")
    assert exported.report.passed and any(check.reference == "independent" for check in exported.report.checks)
    assert graph_opset(exported.out_dir / "model.onnx") >= TORCH_EXPORT_MIN_OPSET > graph_opset(traced.out_dir / "model.onnx")

    rng = np.random.default_rng(3)
    ids = rng.integers(5, 90, (3, 21)).astype(np.int64)
    mask = (np.arange(21)[None, :] < np.array([[21], [9], [14]])).astype(np.int64)
    mask[2] = mask[2][::-1]  # one left-padded row
    feed = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    sessions = [ort.InferenceSession(str(result.out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
                for result in (exported, traced)]
    for ratio in (1.0, 0.5, 0.1):
        outputs = [session.run(None, {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})[0] for session in sessions]
        np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_a_decoder_exported_by_torch_export_validates_with_its_decode_step(decoder_checkpoints, tmp_path):
    """The prompt pass (the decoder scoring rule: spread scores, copy sources) and the decode step both
    come from torch.export, and convert's validation, greedy tokens equal to transformers' included, passes."""
    converted = convert(str(decoder_checkpoints[("llama", "text-generation")]), tmp_path / "llama", exporter="torch-export")
    assert converted.report.passed
    for name in ("model.onnx", "decoder_with_past_model.onnx"):
        assert graph_opset(converted.out_dir / name) >= TORCH_EXPORT_MIN_OPSET
        model = onnx.load(str(converted.out_dir / name))
        assert all(dim.dim_param for dim in model.graph.input[0].type.tensor_type.shape.dim), "an axis was fixed"
    references = {check.reference for check in converted.report.checks}
    assert {"hf greedy", "pt greedy", "independent"} <= references, references


def test_an_exporter_failure_is_one_clear_error_and_writes_nothing(checkpoints, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 + 32")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(ExportError, match="torch.export could not export this model.*u0 \\+ 32.*--exporter torchscript"):
        convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "out", exporter="torch-export")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SettingsError, match="exporter must be one of"):
        convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "out", exporter="dynamo")
    result = CliRunner().invoke(main, ["convert", str(checkpoints[("bert", "text-classification")]), "-o",
                                       str(tmp_path / "cli"), "--exporter", "torch-export"])
    assert result.exit_code != 0 and "torch.export could not export" in result.output and "Traceback" not in result.output


def test_without_onnxscript_the_torch_export_route_says_what_to_install(checkpoints, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "onnxscript" else real(name, *rest))
    with pytest.raises(SettingsError, match="pip install onnxscript"):
        convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "out", exporter="torch-export")
    assert not (tmp_path / "out").exists()


def test_a_file_whose_dynamic_axis_came_out_fixed_is_refused(checkpoints, tmp_path, monkeypatch):
    """torch.onnx once wrote `input_ids` as [batch, 16] without complaint; convert must not pass such a file on."""
    real_export = torch.onnx.export

    def fixing_every_axis(*args, **kwargs):
        return real_export(*args, **{**kwargs, "dynamic_shapes": None})

    monkeypatch.setattr(torch.onnx, "export", fixing_every_axis)
    with pytest.raises(ExportError, match="fixed axis 0 of input_ids to the example's size 2"):
        convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "out", exporter="torch-export")
    assert not (tmp_path / "out").exists()


def test_weights_the_exporter_wrote_beside_the_graph_end_up_inside_the_one_file(tmp_path):
    """torch.export writes a large model's weights to ``<file>.data``; the final file must not depend on it."""
    import onnx_ir as ir

    from latexport.export.tracing import Traced, save_traced

    weight = ir.tensor(np.arange(4096, dtype=np.float32).reshape(64, 64), name="weight")
    x = ir.Value(name="x", shape=ir.Shape([1, 64]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.node("MatMul", [x, ir.Value(name="weight", const_value=weight)], num_outputs=1)
    node.outputs[0].name = "y"
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[node.inputs[1]], opset_imports={"": 18})
    traced_path = tmp_path / "model.onnx.traced"
    ir.save(ir.Model(graph, ir_version=10), str(traced_path), external_data="model.onnx.traced.data", size_threshold_bytes=0)
    assert (tmp_path / "model.onnx.traced.data").is_file()

    save_traced(Traced(traced_path, {}), tmp_path / "model.onnx")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]
    loaded = onnx.load(str(tmp_path / "model.onnx"))
    assert all(initializer.data_location != onnx.TensorProto.EXTERNAL for initializer in loaded.graph.initializer)
    result = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"x": np.ones((1, 64), np.float32)})[0]
    np.testing.assert_array_equal(result, np.ones((1, 64), np.float32) @ np.arange(4096, dtype=np.float32).reshape(64, 64))
