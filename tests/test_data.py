"""Reading labelled data, and reporting bad rows by file and line."""

import json

import pytest

from latexport.training.data import (
    Columns,
    DataError,
    decide_problem,
    encode_labels,
    label_names,
    read_examples,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_csv_tsv_and_jsonl_read_the_same(tmp_path):
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad, slow film", "label": "neg"}]
    (tmp_path / "d.csv").write_text('text,label\ngood film,pos\n"bad, slow film",neg\n')
    (tmp_path / "d.tsv").write_text("text\tlabel\ngood film\tpos\nbad, slow film\tneg\n")
    write_jsonl(tmp_path / "d.jsonl", rows)
    for name in ("d.csv", "d.tsv", "d.jsonl"):
        examples = read_examples(str(tmp_path / name))
        assert examples.texts == ["good film", "bad, slow film"] and examples.labels == ["pos", "neg"]


def test_pairs_and_custom_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"a": "x", "b": "y", "y": 1}])
    examples = read_examples(str(path), Columns(text="a", text_pair="b", label="y"))
    assert examples.text_pairs == ["y"] and examples.labels == [1]


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"text": "fine", "label": "a"}, {"text": "", "label": "a"}, {"text": "no label"}, {"text": "ok", "label": " "}],
    )
    with path.open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(DataError) as raised:
        read_examples(str(path))
    message = str(raised.value)
    assert "bad.jsonl:5: invalid JSON" in message
    with pytest.raises(DataError) as raised:
        read_examples(str(write_jsonl(tmp_path / "bad2.jsonl", json.loads("[" + ",".join(path.read_text().splitlines()[:4]) + "]"))))
    message = str(raised.value)
    assert "3 bad row(s)" in message
    assert "bad2.jsonl:2: empty or missing text" in message
    assert "bad2.jsonl:3: missing label" in message
    assert "bad2.jsonl:4: missing label" in message


def test_unknown_labels_are_reported(tmp_path):
    examples = read_examples(str(write_jsonl(tmp_path / "v.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "zzz"}])))
    with pytest.raises(DataError, match=r"v.jsonl:2: unknown label 'zzz'"):
        encode_labels(examples, ["a", "b"])


def test_missing_columns_and_files(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"sentence": "x", "label": 1}])
    with pytest.raises(DataError, match=r"no column\(s\) \['text'\]"):
        read_examples(str(path))
    with pytest.raises(DataError, match="no such data file"):
        read_examples(str(tmp_path / "missing.csv"))


def test_labels_keep_their_written_form_and_order():
    assert label_names(["neg", "pos", "neg"]) == ["neg", "pos"]
    assert label_names([2, 10, 1, 2]) == ["1", "2", "10"]
    assert label_names(["1", 1, 1.0]) == ["1"]
    assert decide_problem([0, 1, 1]) == "classification"
    assert decide_problem([0.5, 3.25, 1]) == "regression"
    assert decide_problem(["0.5", "a"]) == "classification"
    assert decide_problem([0, 1], "regression") == "regression"
