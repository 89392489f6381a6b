"""Tracing a PyTorch module into an ONNX file, and stamping the result.

Both exported graphs of latexport (the pruned pass and the decode step) are
traced with the TorchScript exporter into a scratch ``.traced`` file, may be
post-processed there (ONNX Runtime fusions), and are then rewritten with
onnx-ir under the final name with latexport as their producer.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import onnx_ir as ir
import torch

from latexport import __version__


def trace(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict,
    opset: int,
) -> Path:
    """Trace ``module`` on ``args`` into ``path``'s scratch file and return that file.

    The TorchScript exporter (``dynamo=False``) takes every layer's data-dependent
    keep count as a tensor; the dynamo exporter's graphs ran 5-25% slower in ONNX
    Runtime and it exports 7x slower."""
    traced_path = Path(path).with_name(Path(path).name + ".traced")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
    return traced_path


def save_traced(traced_path: Path, path: Path, edit: Optional[Callable[[ir.Model], None]] = None) -> None:
    """Rewrite the traced file as ``path`` (after ``edit``), with latexport as producer; drop the scratch file."""
    model = ir.load(str(traced_path))
    if edit is not None:
        edit(model)
    model.producer_name = "latexport"
    model.producer_version = __version__
    ir.save(model, str(path))
    os.unlink(traced_path)
