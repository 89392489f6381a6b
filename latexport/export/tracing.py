"""Tracing a PyTorch module into an ONNX file, and stamping the result.

Both exported graphs of latexport (the pruned pass and the decode step) are
traced into a scratch ``.traced`` file, may be post-processed there (ONNX
Runtime fusions), and are then rewritten with onnx-ir under the final name
with latexport as their producer.

Two exporters (``EXPORTERS``): the TorchScript exporter, the default, and
torch.export (``convert --exporter torch-export``, with ``onnxscript``
installed), which PyTorch recommends now that TorchScript is deprecated.
Measured on BERT-base by ``examples/exporters.py`` (graphs/README.md, "The
exporter"): torch.export's graphs ran 1.01-1.20x slower, because it refuses
the keep-everything skip as ``torch.cond``; it exported 3.2x slower; and it
takes the encoders and T5's classifier but not yet the decoders' prompt pass.
So TorchScript stays the default while it ships with torch.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import onnx_ir as ir
import torch

from latexport import __version__
from latexport.runtime.errors import ExportError, SettingsError


@dataclass(frozen=True)
class Traced:
    """A scratch ``.traced`` file, and the size of every output axis that is not dynamic.

    The exporter's own shape inference loses static sizes behind data-dependent
    shapes (a ``logits`` output came out [batch, ?] rather than [batch, 3]);
    serving configs such as Triton's read them, so they are restated from the
    example run."""

    path: Path
    static_dims: dict[str, dict[int, int]]


TORCHSCRIPT = "torchscript"
TORCH_EXPORT = "torch-export"
EXPORTERS = (TORCHSCRIPT, TORCH_EXPORT)
#: The lowest opset torch.export's ONNX translation writes.
TORCH_EXPORT_MIN_OPSET = 18


def trace(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict,
    opset: int,
    exporter: str = TORCHSCRIPT,
) -> Traced:
    """Trace ``module`` on ``args`` into ``path``'s scratch file.

    The TorchScript exporter (``dynamo=False``) takes every layer's data-dependent
    keep count as a tensor and the scripted selection's keep-everything branch as
    an ONNX ``If``.  torch.export (``exporter="torch-export"``) carries the keep
    count as an unbacked size instead (``selection.select_tokens_unbacked``);
    ``dynamic_axes`` name the axes for both.  Module doc: why TorchScript is the
    default."""
    if exporter not in EXPORTERS:
        raise SettingsError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    traced_path = Path(path).with_name(Path(path).name + ".traced")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = module(*args)
        example = example if isinstance(example, (tuple, list)) else (example,)
        static_dims = {
            name: {axis: int(size) for axis, size in enumerate(tensor.shape) if axis not in dynamic_axes.get(name, {})}
            for name, tensor in zip(output_names, example)
        }
        if exporter == TORCH_EXPORT:
            export_with_torch_export(module, args, traced_path, input_names, output_names, dynamic_axes, opset)
            return Traced(traced_path, static_dims)
        torch.onnx.export(
            module,
            args,
            str(traced_path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return Traced(traced_path, static_dims)


def export_with_torch_export(
    module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
    dynamic_axes: dict, opset: int,
) -> None:
    """``torch.onnx.export(dynamo=True)``: the axes named alike in ``dynamic_axes`` share one ``Dim``.

    Output sizes follow from the exported program, so only the inputs' axes are declared."""
    if importlib.util.find_spec("onnxscript") is None:
        raise SettingsError("--exporter torch-export needs onnxscript: pip install onnxscript")
    dims: dict[str, torch.export.Dim] = {}
    examples = dict(zip(input_names, args))

    def shape_of(name: str) -> Optional[dict]:
        # An axis of size 1 in the example stays static: torch.export specialises sizes 0 and 1.
        axes = {axis: label for axis, label in dynamic_axes.get(name, {}).items() if examples[name].shape[axis] > 1}
        return {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()} or None

    shapes, names = {}, iter(input_names)
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            # {} rather than None for a static one: torch.onnx hands a tuple of Nones on as a list, which torch.export refuses.
            shapes[parameter.name] = tuple(shape_of(name) or {} for name in names)
        else:
            shapes[parameter.name] = shape_of(next(names))
    try:
        torch.onnx.export(
            module, args, str(path), dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=shapes, opset_version=max(opset, TORCH_EXPORT_MIN_OPSET), verbose=False,
        )
    except Exception as error:  # the exporter's own failure, told in one line with the way around it
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        why = f"{type(root).__name__}: {str(root).strip().splitlines()[0] if str(root).strip() else ''}"
        raise ExportError(f"torch.export could not export this model ({why}); the default exporter "
                          f"(--exporter {TORCHSCRIPT}) takes it") from error
    # torch.onnx has been seen to write a file whose dynamic axis was fixed to the example's size, without a word.
    written = {value.name: value for value in ir.load(str(path)).graph.inputs}
    for name, shape in shapes_by_input(shapes, input_names).items():
        fixed = [axis for axis in (shape or {}) if not isinstance(written[name].shape[axis], ir.SymbolicDim)]
        if fixed:
            raise ExportError(f"torch.export fixed axis {fixed[0]} of {name} to the example's size "
                              f"{written[name].shape[fixed[0]]}; the default exporter (--exporter {TORCHSCRIPT}) keeps it dynamic")


def shapes_by_input(shapes: dict, input_names: list[str]) -> dict:
    """The declared dynamic axes by input name, varargs unpacked, in ``input_names``' order."""
    flat = [entry for value in shapes.values() for entry in (value if isinstance(value, tuple) else (value,))]
    return dict(zip(input_names, flat))


def save_traced(traced: Traced, path: Path, edit: Optional[Callable[[ir.Model], None]] = None) -> None:
    """Rewrite the traced file as ``path`` (after ``edit``), with latexport as producer,
    its outputs' static sizes restated and its weights inside; drop the scratch files."""
    model = ir.load(str(traced.path))
    # torch.export writes the weights beside the graph (``.traced.data``); bring them in, so the final file is one file.
    model = ir.external_data.load_to_model(model)
    for value in model.graph.outputs:
        dims = traced.static_dims.get(value.name)
        if dims and value.shape is not None:
            value.shape = ir.Shape([dims.get(axis, dim) for axis, dim in enumerate(value.shape)])
    if edit is not None:
        edit(model)
    model.producer_name = "latexport"
    model.producer_version = __version__
    ir.save(model, str(path))
    os.unlink(traced.path)
    sidecar = traced.path.with_name(traced.path.name + ".data")
    if sidecar.exists():
        os.unlink(sidecar)
