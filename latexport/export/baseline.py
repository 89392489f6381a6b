"""Plain exports of the same checkpoint, to hold latexport's graph against.

* ``optimum``: optimum-onnx's exporter, exactly what a user would otherwise ship;
* ``torch``: torch.onnx (TorchScript) of the eager-attention model, the graph
  latexport starts from, without any token dropping;
* ``optimum-O2``: optimum's export plus ONNX Runtime's transformer fusions.

For text2text-generation the plain file is optimum's encoder graph, the part
latexport prunes; the decoder graphs are not part of this comparison.

Exports are cached per checkpoint (path and modification time) under the
latexport cache folder, so repeated benchmarks do not re-export.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

from latexport.assets import cache_dir
from latexport.export.families import TASK_TEXT2TEXT
from latexport.runtime.atomic import atomic_directory
from latexport.runtime.errors import CheckpointError

log = logging.getLogger(__name__)

EXPORTERS = ("optimum", "torch", "optimum-O2")


def baseline_path(checkpoint: str, task: str, exporter: str) -> Path:
    """Export (once) and return the plain ONNX file for ``checkpoint``."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    folder = cache_dir() / "baselines" / f"{_fingerprint(checkpoint)}-{task}-{exporter}"
    model = folder / "model.onnx"
    if model.exists():
        return model
    with atomic_directory(folder, overwrite=True) as scratch:
        if exporter == "torch":
            _export_torch(checkpoint, task, scratch / "model.onnx")
        else:
            _export_optimum(checkpoint, task, scratch, optimize="O2" if exporter == "optimum-O2" else None)
    return model


def unavailable_reason(exporter: str) -> Optional[str]:
    """Why ``exporter`` cannot run in this environment, or None when it can."""
    if exporter.startswith("optimum") and importlib.util.find_spec("optimum.exporters") is None:
        return ('optimum is not installed: `pip install "latexport[optimum]"` adds it '
                "(optimum-onnx 0.1.0 needs transformers<4.58)")
    return None


def _fingerprint(checkpoint: str) -> str:
    path = Path(checkpoint)
    if path.exists():
        stamp = max((p.stat().st_mtime_ns for p in path.iterdir()), default=0)
        key = f"{path.resolve()}:{stamp}"
    else:
        key = checkpoint
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _export_optimum(checkpoint: str, task: str, folder: Path, optimize) -> None:
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(checkpoint, folder, task=task, optimize=optimize, do_validation=False, local_files_only=os.path.isdir(checkpoint))
    # An encoder-decoder export's counterpart of latexport's model.onnx is its encoder.
    stem = "encoder_model" if (folder / "encoder_model.onnx").exists() else "model"
    optimized = folder / f"{stem}_optimized.onnx"
    chosen = optimized if optimize and optimized.exists() else folder / f"{stem}.onnx"
    if chosen.exists() and chosen != folder / "model.onnx":
        os.replace(chosen, folder / "model.onnx")
    if not (folder / "model.onnx").exists():
        raise CheckpointError(f"optimum wrote no model.onnx for {checkpoint}")


def _export_torch(checkpoint: str, task: str, path: Path) -> None:
    import torch

    from latexport.export.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, task=task)
    names = ["input_ids", "attention_mask"]
    if loaded.family.uses_token_type_ids(loaded.config):
        names.append("token_type_ids")
    args = tuple(torch.ones((1, 8), dtype=torch.int64) for _ in names)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                loaded.family.core(loaded.model) if task == TASK_TEXT2TEXT else loaded.model,
                args,
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=names,
                output_names=["output"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
            )
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
            # transformers' own mask code does not always trace (a Qwen2 with sliding windows
            # fails inside torch.onnx with "unordered_map::at"): no baseline, said plainly.
            raise CheckpointError(
                f"the plain torch.onnx export of {checkpoint} failed ({str(error).splitlines()[0]}); "
                "run bench without --baseline torch, or with --baseline optimum"
            ) from error
