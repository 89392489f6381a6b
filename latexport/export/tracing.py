"""Tracing a PyTorch module into an ONNX file, and stamping the result.

Both exported graphs of latexport (the pruned pass and the decode step) are
traced with the TorchScript exporter into a scratch ``.traced`` file, may be
post-processed there (ONNX Runtime fusions), and are then rewritten with
onnx-ir under the final name with latexport as their producer.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import onnx_ir as ir
import torch

from latexport import __version__


@dataclass(frozen=True)
class Traced:
    """A scratch ``.traced`` file, and the size of every output axis that is not dynamic.

    The exporter's own shape inference loses static sizes behind data-dependent
    shapes (a ``logits`` output came out [batch, ?] rather than [batch, 3]);
    serving configs such as Triton's read them, so they are restated from the
    example run."""

    path: Path
    static_dims: dict[str, dict[int, int]]


def trace(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict,
    opset: int,
) -> Traced:
    """Trace ``module`` on ``args`` into ``path``'s scratch file.

    The TorchScript exporter (``dynamo=False``) takes every layer's data-dependent
    keep count as a tensor and the scripted selection's keep-everything branch as
    an ONNX ``If``.  PyTorch has deprecated it; torch.export was weighed by
    ``examples/exporters.py`` (graphs/README.md, "The exporter"): on BERT-base
    its graphs ran 1.01-1.20x slower, it exported 3.2x slower, it refuses the
    ``If`` as ``torch.cond``, and it takes the encoders and T5 but not yet the
    decoders."""
    traced_path = Path(path).with_name(Path(path).name + ".traced")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = module(*args)
        example = example if isinstance(example, (tuple, list)) else (example,)
        static_dims = {
            name: {axis: int(size) for axis, size in enumerate(tensor.shape) if axis not in dynamic_axes.get(name, {})}
            for name, tensor in zip(output_names, example)
        }
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


def save_traced(traced: Traced, path: Path, edit: Optional[Callable[[ir.Model], None]] = None) -> None:
    """Rewrite the traced file as ``path`` (after ``edit``), with latexport as producer,
    its outputs' static sizes restated; drop the scratch file."""
    model = ir.load(str(traced.path))
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
