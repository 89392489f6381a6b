"""graphs/web-minilm-demo.png: the page on the real all-MiniLM-L6-v2, in headless Chromium.

    python examples/web/screenshot.py [--checkpoint DIR] [--out-dir out/web-minilm] [--keep-ratio 0.3]

Converts a MiniLM sentiment classifier with --transformers-js, unless OUT_DIR
already holds it, then serves the page on loopback, moves the slider as a
user would and saves the screenshot.  The classifier: ``--checkpoint``, or by
default the real all-MiniLM-L6-v2 LAT fine-tuned on 1,000 Rotten Tomatoes
reviews by ``python examples/finetune_benchmark.py`` (its cached cell
``rotten_tomatoes-n1000-s0-lat-teacher``, 83.8% validation accuracy at 1.0),
so that the label and scores mean something.  Without that cell it falls back
to the real MiniLM weights (the ``latexport demo`` asset) with a new, untrained
head (seed 0), and says so: the rows of kept words are then the only point.
Needs latexport[export], selenium, chromium and chromedriver, and `npm ci` here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from browser import headless_chromium, open_page, read_page, served, set_text_and_ratio  # noqa: E402

REPO = HERE.parents[1]
TEXT = ("A slow, muddled first hour, but the last act is so warm and funny that I left the theatre grinning, "
        "and the music stayed with me for days.")


def sentiment_checkpoint() -> Path | None:
    """The LAT fine-tuned MiniLM sentiment cell of examples/finetune_benchmark.py, if it has run here."""
    from latexport.assets import cache_dir

    checkpoint = cache_dir() / "finetune-matrix" / "rotten_tomatoes-n1000-s0-lat-teacher" / "checkpoint"
    return checkpoint if (checkpoint / "config.json").is_file() else None


def convert_minilm(out_dir: Path, checkpoint: Path | None) -> Path:
    if (out_dir / "onnx" / "model.onnx").exists():
        return out_dir
    import torch

    from latexport.assets import MINILM, fetch
    from latexport.export.conversion import convert

    if checkpoint is None:
        print("no fine-tuned classifier found (run examples/finetune_benchmark.py, or pass --checkpoint): "
              "converting MiniLM with an untrained head, so its label means nothing")
        checkpoint = fetch(MINILM)
        torch.manual_seed(0)  # the new classifier head
    return convert(str(checkpoint), out_dir, task="text-classification", transformers_js=True, overwrite=True).out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a fine-tuned classifier (default: the finetune benchmark's MiniLM sentiment cell)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "out" / "web-minilm")
    parser.add_argument("--keep-ratio", type=float, default=0.3)
    parser.add_argument("--png", type=Path, default=REPO / "graphs" / "web-minilm-demo.png")
    arguments = parser.parse_args()
    model_dir = convert_minilm(arguments.out_dir, arguments.checkpoint or sentiment_checkpoint())

    from latexport.runtime.session import LatencyAdjustableSession

    session = LatencyAdjustableSession(model_dir)
    expected = session.predict([TEXT], keep_ratio=arguments.keep_ratio)
    with served(model_dir) as url, headless_chromium(width=1700, height=820) as chromium:
        open_page(chromium, url)
        for ratio in (0.7, arguments.keep_ratio):  # a slider move, then the ratio shown
            set_text_and_ratio(chromium, TEXT, ratio)
        page = read_page(chromium)
        arguments.png.parent.mkdir(parents=True, exist_ok=True)
        chromium.save_screenshot(str(arguments.png))
    worst = max(abs(page["scores"][label] - score) for label, score in zip(session.labels, expected.scores[0]))
    print(f"page: {page['label']} {page['latency']}; largest score difference from Python {worst:.1e}; "
          f"kept in the last layer {len(page['kept'][-1])} of {len(page['tokens'])} tokens")
    print(f"wrote {arguments.png}")


if __name__ == "__main__":
    main()
