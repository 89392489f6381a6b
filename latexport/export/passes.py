"""Post-export graph passes over onnx-ir: small, named, testable one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from latexport.runtime.keep_ratio_input import default_from_props
from latexport.runtime.metadata import KEEP_RATIO_INPUT


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
    """Set ``props`` and the keep_ratio input's default to the one they record
    (``latexport.runtime.keep_ratio_input``, where the proto form lives for later edits)."""
    for key, value in props.items():
        model.metadata_props[key] = value
    declare_keep_ratio(model, default_from_props(props))


def declare_keep_ratio(model: ir.Model, default: float) -> None:
    """keep_ratio: float32 of any rank (a scalar, or [batch] for one ratio per row), and an
    overridable initializer holding ``default``, so that feeding it is optional."""
    value = next((value for value in model.graph.inputs if value.name == KEEP_RATIO_INPUT), None)
    if value is None:
        return
    value.shape = None
    value.const_value = ir.tensor(np.array(default, dtype=np.float32), name=KEEP_RATIO_INPUT)
    if KEEP_RATIO_INPUT not in model.graph.initializers:
        model.graph.register_initializer(value)


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
