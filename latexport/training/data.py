"""Labelled text for fine-tuning, evaluation and tuning: CSV, TSV, JSON Lines, or a hub dataset.

Every bad row (missing or unknown label, empty text) is reported with its file
and line, all at once, so a user fixes a file in one pass.  Torch-free.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from latexport.runtime.errors import LatexportError

PROBLEMS = ("auto", "classification", "regression")


class DataError(LatexportError):
    """A data file is unreadable or has bad rows; the message lists them with line numbers."""


@dataclass
class Columns:
    text: str = "text"
    text_pair: Optional[str] = None
    label: str = "label"


@dataclass
class Examples:
    """Texts with raw labels as they appear in the data (strings, or floats for regression)."""

    source: str
    texts: list[str]
    labels: list
    text_pairs: Optional[list[str]] = None
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def read_examples(source: str, columns: Columns = Columns(), require_labels: bool = True) -> Examples:
    """Read a local file (by extension: .csv, .tsv, .jsonl/.json) or, failing that, a hub dataset
    given as ``name[:config]:split`` (needs the ``datasets`` package and a reachable hub)."""
    path = Path(source)
    if path.is_file():
        rows = _read_file(path)
    elif path.suffix in (".csv", ".tsv", ".jsonl", ".json") or path.parent != Path("."):
        raise DataError(f"{source}: no such data file")
    else:
        rows = _read_hub(source)
    return _to_examples(source, rows, columns, require_labels)


def read_documents(source: str, text_column: str = "text") -> list[str]:
    """Unlabelled documents for language-model fine-tuning: a plain-text file (.txt, .md)
    is one document; any source ``read_examples`` reads gives one per row of ``text_column``."""
    path = Path(source)
    if path.suffix.lower() in (".txt", ".md"):
        if not path.is_file():
            raise DataError(f"{source}: no such text file")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read ({error})") from error
        if not text.strip():
            raise DataError(f"{source}: the file is empty")
        return [text]
    return read_examples(source, Columns(text=text_column), require_labels=False).texts


def _read_file(path: Path) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    if suffix in (".jsonl", ".json"):
        stripped = text.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            try:
                return [(index + 1, row) for index, row in enumerate(json.loads(text))]
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: invalid JSON ({error})") from error
        rows, errors = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                errors.append(f"{path}:{number}: invalid JSON ({error.msg})")
                continue
            if not isinstance(row, dict):
                errors.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                continue
            rows.append((number, row))
        _raise_if(errors)
        return rows
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [(reader.line_num, row) for row in reader]
    raise DataError(f"{path}: unknown data format {suffix!r}; use .csv, .tsv, .jsonl or .json")


def _read_hub(name: str) -> list[tuple[int, dict]]:
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"{name}: not a local file, and the `datasets` package is not installed for hub datasets") from error
    parts = name.split(":")
    if len(parts) < 2:
        raise DataError(f"{name}: give a hub dataset as name[:config]:split, for example glue:sst2:validation")
    dataset_name, split = parts[0], parts[-1]
    config = parts[1] if len(parts) == 3 else None
    try:
        dataset = datasets.load_dataset(dataset_name, config, split=split)
    except Exception as error:  # network, missing split, unknown dataset
        raise DataError(f"{name}: cannot load from the hub ({error})") from error
    return [(index + 1, dict(row)) for index, row in enumerate(dataset)]


def _to_examples(source: str, rows: list[tuple[int, dict]], columns: Columns, require_labels: bool) -> Examples:
    if not rows:
        raise DataError(f"{source}: no rows")
    wanted = [columns.text] + ([columns.text_pair] if columns.text_pair else []) + ([columns.label] if require_labels else [])
    first_keys = set(rows[0][1])
    missing = [name for name in wanted if name not in first_keys]
    if missing:
        raise DataError(f"{source}: no column(s) {missing}; columns are {sorted(first_keys)}")
    texts, pairs, labels, lines, errors = [], [], [], [], []
    for line, row in rows:
        text = row.get(columns.text)
        if not isinstance(text, str) or not text.strip():
            errors.append(f"{source}:{line}: empty or missing text in column {columns.text!r}")
            continue
        if columns.text_pair:
            pair = row.get(columns.text_pair)
            if not isinstance(pair, str) or not pair.strip():
                errors.append(f"{source}:{line}: empty or missing text in column {columns.text_pair!r}")
                continue
            pairs.append(pair)
        label = row.get(columns.label) if require_labels else None
        if require_labels and (label is None or (isinstance(label, str) and not label.strip())):
            errors.append(f"{source}:{line}: missing label in column {columns.label!r}")
            continue
        texts.append(text)
        labels.append(label)
        lines.append(line)
    _raise_if(errors)
    return Examples(source=source, texts=texts, labels=labels, text_pairs=pairs if columns.text_pair else None, lines=lines)


def _raise_if(errors: list[str]) -> None:
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataError(f"{len(errors)} bad row(s):\n  {shown}{more}")


# --- labels ----------------------------------------------------------------
def label_key(label) -> str:
    """A label as a string, exactly as written in the data (1 and "1" are the same label)."""
    if isinstance(label, bool):
        return str(label).lower()
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label).strip() if isinstance(label, str) else str(label)


def decide_problem(labels: Sequence, problem: str = "auto") -> str:
    """Regression when asked, or when the labels are numbers that are not all integers."""
    if problem not in PROBLEMS:
        raise DataError(f"problem must be one of {PROBLEMS}, got {problem!r}")
    if problem != "auto":
        return problem
    numbers = [_as_number(label) for label in labels]
    if all(value is not None for value in numbers) and any(not float(value).is_integer() for value in numbers):
        return "regression"
    return "classification"


def label_names(labels: Sequence) -> list[str]:
    """The classes in a stable order: numerically when every label is an integer, else alphabetically."""
    keys = sorted({label_key(label) for label in labels})
    if all(_is_int(key) for key in keys):
        keys.sort(key=int)
    return keys


def encode_labels(examples: Examples, names: list[str]) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    ids, errors = [], []
    for line, label in zip(examples.lines, examples.labels):
        key = label_key(label)
        if key not in index:
            errors.append(f"{examples.source}:{line}: unknown label {key!r}; the model knows {names}")
        else:
            ids.append(index[key])
    _raise_if(errors)
    return ids


def regression_targets(examples: Examples) -> list[float]:
    values, errors = [], []
    for line, label in zip(examples.lines, examples.labels):
        value = _as_number(label)
        if value is None or math.isnan(value):
            errors.append(f"{examples.source}:{line}: label {label!r} is not a number")
        else:
            values.append(float(value))
    _raise_if(errors)
    return values


def _as_number(label) -> Optional[float]:
    if isinstance(label, bool):
        return None
    if isinstance(label, (int, float)):
        return float(label)
    try:
        return float(str(label))
    except ValueError:
        return None


def _is_int(key: str) -> bool:
    try:
        int(key)
        return True
    except ValueError:
        return False
