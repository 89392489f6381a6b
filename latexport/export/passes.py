"""Post-export graph passes over onnx-ir: small, named, testable one at a time."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir


def hide_outputs(model: ir.Model, names: list[str]) -> None:
    """Drop graph outputs but keep the values that feed them.

    The kept-positions taps are exported as outputs so that validation can
    read them; the production signature is the task output alone.  The tiny
    nodes behind a hidden tap stay in the file (ONNX Runtime skips them), so
    validation can expose them again by name.
    """
    wanted = set(names)
    outputs = model.graph.outputs
    for index in reversed(range(len(outputs))):
        if outputs[index].name in wanted:
            outputs.pop(index)


def set_metadata(model: ir.Model, props: dict[str, str]) -> None:
    for key, value in props.items():
        model.metadata_props[key] = value


def with_int64_outputs(model_path: Path, names: list[str]) -> bytes:
    """A copy of a saved model with internal int64 values exposed as extra outputs."""
    proto = onnx.load(str(model_path))
    existing = {output.name for output in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    return proto.SerializeToString()


def finish_saved_model(model_path: Path, hidden: list[str], props: dict[str, str]) -> None:
    """Hide the taps and set the metadata of a file another tool has rewritten."""
    model = ir.load(str(model_path))
    hide_outputs(model, hidden)
    set_metadata(model, props)
    ir.save(model, str(model_path))
