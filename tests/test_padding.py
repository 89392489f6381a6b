"""Any padding side, any extra width, every family and task: a row's answer is its own.

Each exported file is fed the same rows three ways (right-padded to the longest
row, right-padded wider, left-padded wider) straight through ONNX Runtime, as
a client that pads its own way would.  At 1.0 every row must equal
transformers run on that row alone; at every ratio the three layouts must give
the same outputs and keep the same word-vectors, and padding must never be
kept as a real word-vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny import DECODER_CONFIG_FAMILIES, FAMILIES
from tokenizers import Tokenizer

from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import convert
from latexport.export.passes import with_int64_outputs
from latexport.runtime.metadata import ModelMetadata

TEXTS = [
    "the film was a very long story and the ending was sad but the music was great",
    "bad movie",
    "a story of the film, the actors and the plot",
]
LAYOUTS = ("right", "right-wide", "left-wide")
EXTRA_WIDTH = 6


@pytest.fixture(scope="module")
def cls_pooled(checkpoints, tmp_path_factory):
    checkpoint = checkpoints[("bert", "feature-extraction")]
    return convert(str(checkpoint), tmp_path_factory.mktemp("cls") / "out", pooling="cls").out_dir


def _cases(request) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint, converted directory), from the session's fixtures; the decoder and T5
    conversions are made when a case asks for them."""
    checkpoints, converted = request.getfixturevalue("checkpoints"), request.getfixturevalue("converted")
    cases = {f"{family}-{task}": (checkpoints[(family, task)], out) for (family, task), out in converted.items()}
    cases["bert-regression"] = (request.getfixturevalue("regression_checkpoint"), request.getfixturevalue("regressor"))
    cases["bert-cls-pooling"] = (checkpoints[("bert", "feature-extraction")], request.getfixturevalue("cls_pooled"))
    return _LazyCases(request, cases)


class _LazyCases(dict):
    def __init__(self, request, cases):
        super().__init__(cases)
        self.request = request

    def __missing__(self, name):
        for fixture in ("t5", "decoder"):
            sources = self.request.getfixturevalue(f"{fixture}_checkpoints")
            for key in sources.keys():
                if "-".join(key) == name:
                    return sources[key], self.request.getfixturevalue(f"{fixture}_converted")[key].out_dir
        raise KeyError(name)


CASE_NAMES = (
    [f"{f}-{t}" for f in FAMILIES for t in ("text-classification", "feature-extraction")]
    + ["bert-regression", "bert-cls-pooling"]
    + [f"{s}-{t}" for s in ("t5", "flan-t5") for t in ("text2text-generation", "text-classification", "feature-extraction")]
    + [f"{f}-{t}" for f in DECODER_CONFIG_FAMILIES for t in ("text-generation", "text-classification")]
)


def laid_out(rows: list[list[int]], pad: int, layout: str) -> dict[str, np.ndarray]:
    width = max(len(row) for row in rows) + (EXTRA_WIDTH if layout.endswith("wide") else 0)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        columns = slice(width - len(row), width) if layout.startswith("left") else slice(0, len(row))
        ids[index, columns], mask[index, columns] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


class OnnxRows:
    """The file run as a plain ONNX Runtime client, with the kept-position taps exposed."""

    def __init__(self, model_dir: Path):
        stored = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
        self.metadata = ModelMetadata.from_props({prop.key: prop.value for prop in stored.metadata_props})
        model = with_int64_outputs(model_dir / "model.onnx", self.metadata.kept_positions_taps)
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def rows(self) -> list[list[int]]:
        return [self.tokenizer.encode(text).ids for text in TEXTS]

    def run(self, feed: dict[str, np.ndarray], ratio: float):
        """Per row: the output (a text2text row's real kept states) and its kept positions per layer."""
        feed = dict(feed)
        if "token_type_ids" in self.metadata.input_names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        names = [self.metadata.output_name, *self.metadata.kept_positions_taps]
        output, *kept = self.session.run(names, {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})
        results = []
        for row in range(output.shape[0]):
            row_kept = [layer[row][layer[row] >= 0] for layer in kept]
            row_output = output[row][: len(row_kept[-1])] if self.metadata.task == "text2text-generation" else output[row]
            results.append((row_output, row_kept))
        return results


def transformers_row(loaded, ids: list[int], pooling: str) -> np.ndarray:
    """The unmodified transformers model on one row alone: no padding, so no layout question."""
    tensor = torch.tensor([ids])
    with torch.no_grad():
        if loaded.task == "text2text-generation":
            return loaded.model.get_encoder()(input_ids=tensor).last_hidden_state[0].numpy()
        output = loaded.model(input_ids=tensor)
    if loaded.task == "text-generation":
        return output.logits[0, -1].numpy()
    if loaded.task == "feature-extraction":
        states = output.last_hidden_state[0]
        return (states[0] if pooling == "cls" else states.mean(dim=0)).numpy()
    return output.logits[0].numpy()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_row_gives_its_own_answer_whatever_its_padding(request, name):
    checkpoint, model_dir = _cases(request)[name]
    onnx_rows = OnnxRows(model_dir)
    loaded = load_checkpoint(str(checkpoint))
    rows = onnx_rows.rows()
    pad = onnx_rows.metadata.pad_token_id
    pinned = {"first": 0, "last": -1, None: None}[
        "last" if loaded.family.causal else (None if loaded.family.name == "t5" else "first")
    ]
    expected_at_one = [transformers_row(loaded, row, onnx_rows.metadata.pooling or "mean") for row in rows]
    for ratio in (1.0, 0.5, 0.1):
        by_layout = {layout: onnx_rows.run(laid_out(rows, pad, layout), ratio) for layout in LAYOUTS}
        for layout, results in by_layout.items():
            for index, (output, kept) in enumerate(results):
                length = len(rows[index])
                if ratio == 1.0:
                    np.testing.assert_allclose(output, expected_at_one[index], atol=1e-4, rtol=0,
                                               err_msg=f"{layout} row {index} against transformers")
                right_output, right_kept = by_layout["right"][index]
                np.testing.assert_allclose(output, right_output, atol=1e-5, rtol=0, err_msg=f"{layout} row {index}")
                for layer, positions in enumerate(kept):
                    assert positions.tolist() == right_kept[layer].tolist(), f"{layout} row {index} layer {layer}"
                    assert positions.min() >= 0 and positions.max() < length, "padding kept as a real word-vector"
                    assert len(set(positions.tolist())) == len(positions)
                    if pinned is not None:
                        assert int(np.arange(length)[pinned]) in positions.tolist(), "the head's token was dropped"


def test_fixed_column_heads_read_the_real_first_token_not_transformers_column_zero(checkpoints, converted):
    """The documented choice: under left padding transformers' BERT pooler reads a pad
    (column 0) and counts positions by column; latexport reads the row's real
    [CLS] and positions, i.e. what transformers gives for the row padded on the right."""
    key = ("bert", "text-classification")
    onnx_rows = OnnxRows(converted[key])
    loaded = load_checkpoint(str(checkpoints[key]))
    rows = onnx_rows.rows()
    left = laid_out(rows, onnx_rows.metadata.pad_token_id, "left-wide")
    right = laid_out(rows, onnx_rows.metadata.pad_token_id, "right-wide")
    with torch.no_grad():
        hf_left = loaded.model(**{k: torch.from_numpy(v) for k, v in left.items()}).logits.numpy()
        hf_right = loaded.model(**{k: torch.from_numpy(v) for k, v in right.items()}).logits.numpy()
    ours_left = np.stack([output for output, _ in onnx_rows.run(left, 1.0)])
    assert np.abs(hf_left - hf_right).max() > 1e-2  # transformers itself depends on the side
    np.testing.assert_allclose(ours_left, hf_right, atol=1e-4, rtol=0)
