"""Which words each layer keeps, read from the file: the runtime reader, `run --show-kept` and `explain`.

Every check compares with the file's taps read through the export side's own
pass (``with_int64_outputs``, over ``onnx``), not through the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from latexport.cli import main
from latexport.export.passes import with_int64_outputs
from latexport.runtime.kept_positions import KeptPositionsReader, with_kept_positions_outputs
from latexport.runtime.session import LatencyAdjustableSession
from tiny import make_checkpoint

TEXTS = ["a good film", "the story was long and the ending was bad, but the music was good and funny"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from latexport.export.conversion import convert

    root = tmp_path_factory.mktemp("kept")
    return convert(str(make_checkpoint(root / "checkpoint", "bert", "text-classification", seed=5)), root / "bert").out_dir


def file_taps(model_dir, texts, ratio: float) -> list[list[list[int]]]:
    """Per text, per layer: the kept positions through onnx's pass."""
    session = LatencyAdjustableSession(model_dir)
    taps = session.metadata.kept_positions_taps
    raw = ort.InferenceSession(with_int64_outputs(model_dir / "model.onnx", taps), providers=["CPUExecutionProvider"])
    layers = raw.run(taps, {**session.encode(texts), "keep_ratio": np.array(ratio, dtype=np.float32)})
    return [[[int(p) for p in layer[row] if p >= 0] for layer in layers] for row in range(len(texts))]


def test_the_reader_returns_the_files_taps_and_output(model_dir):
    session = LatencyAdjustableSession(model_dir)
    words = KeptPositionsReader(session).read(TEXTS, keep_ratio=0.3)
    assert [w.kept for w in words] == file_taps(model_dir, TEXTS, 0.3)
    np.testing.assert_allclose(np.stack([w.output for w in words]), session.run(session.encode(TEXTS), 0.3), atol=1e-6)
    assert words[0].tokens[0] == "[CLS]" and words[0].tokens[-1] == "[SEP]"
    assert len(words[1].tokens) == int(session.encode(TEXTS)["attention_mask"][1].sum())
    # The plain file still declares the task output alone; the merge-appended outputs are extra.
    plain = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in plain.get_outputs()] == ["logits"]
    tapped = ort.InferenceSession(with_kept_positions_outputs((model_dir / "model.onnx").read_bytes(),
                                                              session.metadata.kept_positions_taps))
    assert [o.name for o in tapped.get_outputs()] == ["logits", *session.metadata.kept_positions_taps]


def kept_from_printed(lines: list[str], tokens: int) -> list[list[int]]:
    """The positions a `layer N ...` line shows as words rather than dots."""
    kept = []
    for line in lines:
        cells = line.split("  ", 1)[1].rsplit("  (", 1)[0].strip().split(" ")
        assert len(cells) == tokens, line
        kept.append([i for i, cell in enumerate(cells) if cell != "·" * len(cell)])
    return kept


def test_run_show_kept_prints_the_files_kept_positions(model_dir):
    result = CliRunner().invoke(main, ["run", str(model_dir), "--keep-ratio", "0.3", "--show-kept", *TEXTS])
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")[1:]
    assert len(blocks) == len(TEXTS)
    expected = file_taps(model_dir, TEXTS, 0.3)
    for block, text, kept in zip(blocks, TEXTS, expected):
        lines = block.strip().splitlines()
        assert lines[0].startswith(text[:20]) and "(keep_ratio 0.3)" in lines[0]
        tokens = int(lines[1].rsplit("(", 1)[1].split()[0])
        layer_lines = [line for line in lines if line.startswith("layer ")]
        assert len(layer_lines) == len(kept)
        assert kept_from_printed(layer_lines, tokens) == kept
    # Something was really dropped: the long text keeps fewer words in its last layer.
    assert len(expected[1][-1]) < len(expected[1][0])


def test_explain_draws_the_files_kept_positions(model_dir, tmp_path):
    graphs = tmp_path / "graphs"
    result = CliRunner().invoke(main, ["explain", str(model_dir), *TEXTS, "--keep-ratio", "0.2", "--graphs", str(graphs)])
    assert result.exit_code == 0, result.output
    image, data = graphs / "explain-bert-r0.2.png", graphs / "explain-bert-r0.2.json"
    assert image.stat().st_size > 5_000 and image.read_bytes()[:4] == b"\x89PNG"
    record = json.loads(data.read_text())
    assert record["keep_ratio"] == pytest.approx(0.2)
    assert [entry["kept_positions"] for entry in record["inputs"]] == file_taps(model_dir, TEXTS, 0.2)
    labels = LatencyAdjustableSession(model_dir).predict(TEXTS, keep_ratio=0.2).labels
    assert [entry["label"] for entry in record["inputs"]] == labels
    assert f"wrote {image}" in result.output


def test_explain_runs_at_the_files_default_without_a_ratio(model_dir, tmp_path):
    result = CliRunner().invoke(main, ["explain", str(model_dir), TEXTS[1], "--graphs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "explain-bert-r1.json").read_text())
    assert record["inputs"][0]["kept_positions"] == file_taps(model_dir, TEXTS[1:], 1.0)[0]
