"""``convert --transformers-js``: the directory laid out as transformers.js loads it.

transformers.js (``@huggingface/transformers``) reads ``config.json``,
``tokenizer.json`` and ``tokenizer_config.json`` at the top of a model folder
and the graph from ``onnx/model{suffix}.onnx``, where the suffix follows the
dtype it picks: none for ``fp32``, ``_quantized`` for ``q8`` (its default on
WASM, the browser's CPU).  So the layout adds:

- ``onnx/model.onnx``: a relative symlink to ``../model.onnx`` (a copy where
  the filesystem has no symlinks), so the file stays one file and a later
  ``tune`` or ``reprofile`` of ``model.onnx`` is seen through it;
- ``"transformers.js_config": {"dtype": "fp32"}`` in ``config.json``: the
  suffix-less file on every device.  "fp32" names the file, not its precision:
  an int8 or fp16 conversion is still ``model.onnx``.

transformers.js feeds the inputs the session lists (``input_ids``,
``attention_mask``, ``token_type_ids``), never ``keep_ratio``, which the file
holds as an overridable initializer (``latexport.runtime.keep_ratio_input``):
the pipeline runs at the file's recorded default ratio.  Only text
classification is offered: its ``logits`` output is what the pipeline reads;
a feature-extraction file's pooled ``sentence_embedding`` is not
(transformers.js pools ``last_hidden_state`` itself).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from latexport.export.families import TASK_CLASSIFICATION
from latexport.runtime.errors import SettingsError

ONNX_FOLDER = "onnx"
CONFIG_KEY = "transformers.js_config"


def check_task(task: str) -> None:
    if task != TASK_CLASSIFICATION:
        raise SettingsError(f"--transformers-js lays out text-classification directories; this checkpoint converts "
                            f"to {task}, whose output transformers.js's pipelines do not read")


def write_layout(out_dir: Path, model_file: str = "model.onnx") -> None:
    """Add ``onnx/model.onnx`` and the dtype setting to a converted directory."""
    folder = Path(out_dir) / ONNX_FOLDER
    folder.mkdir(exist_ok=True)
    target = folder / model_file
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        os.symlink(Path("..") / model_file, target)
    except OSError:  # no symlinks here (Windows without developer mode): a copy
        shutil.copyfile(Path(out_dir) / model_file, target)
    config_path = Path(out_dir) / "config.json"
    config = json.loads(config_path.read_text())
    config[CONFIG_KEY] = {**config.get(CONFIG_KEY, {}), "dtype": "fp32"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
