"""``latexport explain``: a picture of which words survive each layer, for a few inputs.

Reads the kept positions from the file itself (``latexport.runtime.kept_positions``)
and draws one grid per input: a row per layer, a column per token, kept cells
dark.  The same positions go into a JSON beside the image, so a test (or a
reader) can check the picture against the file.  Torch-free: onnxruntime,
tokenizers and matplotlib.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from latexport.runtime.atomic import write_text_atomic
from latexport.runtime.kept_positions import KeptPositionsReader, KeptWords
from latexport.runtime.session import LatencyAdjustableSession


@dataclass
class Explanation:
    words: list[KeptWords]
    #: One label per text for a classifier, else None.
    labels: Optional[list[str]]
    image: Path
    json: Path


def explain(model_dir: Path, texts: Sequence[str], keep_ratio: Optional[float] = None,
            graphs_dir: Path = Path("graphs")) -> Explanation:
    """Kept positions of ``texts`` at ``keep_ratio`` (default: the file's), drawn into
    ``graphs_dir/explain-MODEL-rRATIO.png`` with the positions in the ``.json`` beside it."""
    session = LatencyAdjustableSession(model_dir, truncation="silent")
    words = KeptPositionsReader(session).read(list(texts), keep_ratio)
    labels = None
    if session.metadata.task == "text-classification" and session.metadata.problem_type != "regression":
        labels = session.prediction_from_logits(np.stack([w.output for w in words])).labels
    ratio = words[0].keep_ratio
    stem = f"explain-{Path(model_dir).resolve().name}-r{ratio:g}"
    graphs_dir = Path(graphs_dir)
    graphs_dir.mkdir(parents=True, exist_ok=True)
    image, data = graphs_dir / f"{stem}.png", graphs_dir / f"{stem}.json"
    plot(words, image, labels)
    record = {
        "model_dir": str(model_dir),
        "keep_ratio": ratio,
        "inputs": [
            {"text": w.text, "tokens": w.tokens, "kept_positions": w.kept, **({"label": labels[i]} if labels else {})}
            for i, w in enumerate(words)
        ],
    }
    write_text_atomic(data, json.dumps(record, indent=1))
    return Explanation(words, labels, image, data)


def plot(words: Sequence[KeptWords], path: Path, labels: Optional[Sequence[str]] = None) -> None:
    """One grid per input, stacked: rows are the input and each layer, columns the tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    widest = max(len(w.tokens) for w in words)
    layers = len(words[0].kept)
    figure, axes = plt.subplots(
        len(words), 1, squeeze=False,
        figsize=(min(40.0, max(6.0, 0.32 * widest + 1.5)), (0.32 * (layers + 1) + 1.4) * len(words)),
    )
    colours = ListedColormap(["#eeeeee", "#2b6cb0"])
    for index, (w, axis) in enumerate(zip(words, axes[:, 0])):
        grid = [[1] * len(w.tokens)] + [[int(alive) for alive in w.kept_mask(layer)] for layer in range(layers)]
        axis.imshow(grid, cmap=colours, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        axis.set_xlim(-0.5, widest - 0.5)  # the same cell width for every input
        axis.set_xticks(range(len(w.tokens)), w.tokens, rotation=90, fontsize=8)
        axis.set_yticks(range(layers + 1), ["input"] + [f"layer {l + 1} ({len(w.kept[l])})" for l in range(layers)],
                        fontsize=8)
        axis.set_xticks([x - 0.5 for x in range(1, len(w.tokens))], minor=True)
        axis.set_yticks([y - 0.5 for y in range(1, layers + 1)], minor=True)
        axis.grid(which="minor", color="white", linewidth=1)
        axis.tick_params(which="minor", length=0)
        verdict = f" → {labels[index]}" if labels else ""
        text = w.text if len(w.text) <= 90 else w.text[:89] + "…"
        axis.set_title(f"“{text}”{verdict}   keep_ratio {w.keep_ratio:g}", fontsize=9, loc="left")
    figure.suptitle("word-vectors alive after each layer (dark: kept)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
