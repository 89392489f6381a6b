"""Shared fixtures: tiny checkpoints of every family, converted once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import (  # noqa: E402
    DECODER_CONFIG_FAMILIES,
    FAMILIES,
    make_checkpoint,
    make_decoder_checkpoint,
    make_t5_checkpoint,
)

TASKS = ("text-classification", "feature-extraction")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict:
    """(family, task) -> tiny checkpoint directory."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        (family, task): make_checkpoint(root / f"{family}-{task}", family, task, seed=index)
        for index, (family, task) in enumerate((f, t) for f in FAMILIES for t in TASKS)
    }


@pytest.fixture(scope="session")
def conversions(checkpoints, tmp_path_factory) -> dict:
    """(family, task) -> ConvertResult (validated by convert itself; its report is kept)."""
    from latexport.export.conversion import convert

    root = tmp_path_factory.mktemp("converted")
    return {key: convert(str(path), root / f"{key[0]}-{key[1]}") for key, path in checkpoints.items()}


@pytest.fixture(scope="session")
def converted(conversions) -> dict:
    """(family, task) -> converted model directory."""
    return {key: result.out_dir for key, result in conversions.items()}


@pytest.fixture(scope="session")
def bert_classifier(converted) -> Path:
    return converted[("bert", "text-classification")]


@pytest.fixture(scope="session")
def variants(checkpoints, tmp_path_factory):
    """The same tiny BERT converted plain, fused, fused + int8, and fused for CUDA + fp16."""
    from latexport.export.conversion import convert

    checkpoint = str(checkpoints[("bert", "text-classification")])
    root = tmp_path_factory.mktemp("variants")
    return {
        "plain": convert(checkpoint, root / "plain"),
        "fused": convert(checkpoint, root / "fused", optimize=True),
        "int8": convert(checkpoint, root / "int8", optimize=True, quantize="dynamic"),
        "fp16": convert(checkpoint, root / "fp16", optimize="cuda", fp16=True),
    }


@pytest.fixture(scope="session")
def regression_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("regression") / "ckpt", "bert", num_labels=1, seed=42)


@pytest.fixture(scope="session")
def regressor(regression_checkpoint, tmp_path_factory) -> Path:
    from latexport.export.conversion import convert

    return convert(str(regression_checkpoint), tmp_path_factory.mktemp("regressor") / "out").out_dir


@pytest.fixture(scope="session")
def calibrated_classifier(bert_classifier, tmp_path_factory) -> Path:
    """A copy of the tiny classifier with a quick calibration.json (the shared fixture stays uncalibrated)."""
    import shutil

    from latexport.runtime.calibrate import calibrate

    model_dir = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(bert_classifier, model_dir)
    calibrate(model_dir, batch_sizes=(1, 4), seq_lens=(16, 64), keep_ratios=(1.0, 0.5, 0.1), repeats=3, warmup=1,
              intra_op_threads=1)
    return model_dir


T5_SHAPES = ("t5", "flan-t5")
T5_TASKS = ("text2text-generation", "text-classification", "feature-extraction")
T5_KEYS = [(shape, task) for shape in T5_SHAPES for task in T5_TASKS]
DECODER_FAMILIES = DECODER_CONFIG_FAMILIES
DECODER_TASKS = ("text-generation", "text-classification")
DECODER_KEYS = [(family, task) for family in DECODER_FAMILIES for task in DECODER_TASKS]


@pytest.fixture(scope="session")
def t5_checkpoints(tmp_path_factory):
    """(shape, task) -> tiny T5 or Flan-T5 checkpoint."""
    root = tmp_path_factory.mktemp("t5")
    return {
        (shape, task): make_t5_checkpoint(root / f"{shape}-{task}", flan=shape == "flan-t5", task=task, seed=index)
        for index, (shape, task) in enumerate(T5_KEYS)
    }


@pytest.fixture(scope="session")
def t5_converted(t5_checkpoints, tmp_path_factory):
    """(shape, task) -> ConvertResult."""
    from latexport.export.conversion import convert

    root = tmp_path_factory.mktemp("t5-converted")
    return {key: convert(str(path), root / "-".join(key)) for key, path in t5_checkpoints.items()}


class LazyMap(dict):
    """A session fixture's map whose entries are built on first use: a run that needs two of
    the sixteen decoder conversions pays for those two."""

    def __init__(self, keys, build):
        super().__init__()
        self._keys, self._build = list(keys), build

    def __missing__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        value = self[key] = self._build(key)
        return value

    def keys(self):
        return list(self._keys)

    def items(self):
        return [(key, self[key]) for key in self._keys]


@pytest.fixture(scope="session")
def decoder_checkpoints(tmp_path_factory):
    """(family, task) -> tiny decoder checkpoint (``tiny.DECODER_CONFIG_FAMILIES``)."""
    root = tmp_path_factory.mktemp("decoders")
    seeds = {key: index for index, key in enumerate(DECODER_KEYS)}
    return LazyMap(DECODER_KEYS, lambda key: make_decoder_checkpoint(root / "-".join(key), key[0], key[1], seed=seeds[key]))


@pytest.fixture(scope="session")
def decoder_converted(decoder_checkpoints, tmp_path_factory):
    """(family, task) -> ConvertResult."""
    from latexport.export.conversion import convert

    root = tmp_path_factory.mktemp("decoders-converted")
    return LazyMap(DECODER_KEYS, lambda key: convert(str(decoder_checkpoints[key]), root / "-".join(key)))
