"""examples/web in headless Chromium, and a --transformers-js directory in transformers.js.

The page runs model.onnx with ONNX Runtime Web (WASM) and tokenises with the
model's tokenizer.json in the page; at two keep ratios its scores must equal
Python's to 1e-4 and the tokens it highlights in each layer's row must be the
file's own kept positions (read through the export side's tap pass, not the
page's code).  Needs node and npm (`npm ci` installs examples/web/node_modules
on first use), and for the browser test chromium, chromedriver (Debian's
`chromium`, `chromium-driver`) and selenium; each test skips, saying which is
missing.  The screenshot is kept in the test's tmp_path and, where
$LATEXPORT_ARTIFACTS is set, copied there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from latexport.export.passes import with_int64_outputs
from latexport.runtime.session import LatencyAdjustableSession
from latexport.training.evaluate import write_metadata
from npm_example import npm_ci
from tiny import make_checkpoint

WEB_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "web"
sys.path.insert(0, str(WEB_EXAMPLE))
from browser import find_chromium  # noqa: E402

ATOL = 1e-4
TEXT = "the story was long and the ending was bad, but the music and the actors were very good and funny"
RATIOS = (0.5, 0.2)

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not on PATH (needed for examples/web's npm packages)",
)


@pytest.fixture(scope="module")
def web_example() -> Path:
    return npm_ci(WEB_EXAMPLE)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier, converted with the transformers.js layout."""
    from latexport.export.conversion import convert

    root = tmp_path_factory.mktemp("web")
    checkpoint = make_checkpoint(root / "checkpoint", "bert", "text-classification", seed=3)
    return convert(str(checkpoint), root / "tiny-bert", transformers_js=True).out_dir


def file_kept_positions(model_dir: Path, feed: dict, ratio: float) -> list[list[int]]:
    """Row 0's kept positions per layer, through the export side's pass (independent of the page and the runtime)."""
    session = LatencyAdjustableSession(model_dir)
    taps = session.metadata.kept_positions_taps
    raw = ort.InferenceSession(with_int64_outputs(model_dir / "model.onnx", taps), providers=["CPUExecutionProvider"])
    outputs = raw.run(taps, {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})
    return [[int(p) for p in layer[0] if p >= 0] for layer in outputs]


def test_the_page_gives_pythons_scores_and_highlights_the_files_kept_positions(web_example, model_dir, tmp_path):
    pytest.importorskip("selenium", reason="selenium drives the browser (pip install latexport[test])")
    browser, driver = find_chromium()
    if browser is None or driver is None:
        pytest.skip("chromium and chromedriver are not on PATH (Debian: apt-get install chromium chromium-driver)")
    from browser import headless_chromium, open_page, read_page, served, set_text_and_ratio

    session = LatencyAdjustableSession(model_dir)
    feed = session.encode([TEXT])
    shown = {}
    with served(model_dir) as url, headless_chromium() as chromium:
        open_page(chromium, url)
        for ratio in RATIOS:
            set_text_and_ratio(chromium, TEXT, ratio)
            page = read_page(chromium)
            shown[ratio] = page
            expected = session.predict([TEXT], keep_ratio=ratio)
            assert page["ids"] == feed["input_ids"][0].tolist(), "the page tokenises differently from Python"
            scores = np.array([page["scores"][label] for label in session.labels])
            np.testing.assert_allclose(scores, expected.scores[0], rtol=0, atol=ATOL, err_msg=f"keep_ratio={ratio}")
            assert page["label"] == expected.labels[0]
            assert page["kept"] == file_kept_positions(model_dir, feed, ratio), f"keep_ratio={ratio}"
            assert len(page["tokens"]) == feed["input_ids"].shape[1]
            assert page["latency"].endswith("ms)") and float(page["latency"].split(" ms")[0]) > 0
        screenshot = tmp_path / "web-tiny-bert.png"
        chromium.save_screenshot(str(screenshot))
    # The picture really changes with the ratio: fewer tokens alive in the last layer at 0.2.
    assert len(shown[0.2]["kept"][-1]) < len(shown[0.5]["kept"][-1])
    assert screenshot.stat().st_size > 10_000
    artifacts = os.environ.get("LATEXPORT_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, Path(artifacts) / screenshot.name)


#: transformers.js's text-classification pipeline on a local folder, the hub switched off.
PIPELINE_JS = """
import { pipeline, env } from '@huggingface/transformers';
const [root, name, texts] = process.argv.slice(1);
env.allowRemoteModels = false;
env.localModelPath = root;
const classify = await pipeline('text-classification', name);
console.log(JSON.stringify(await classify(JSON.parse(texts), { top_k: null })));
"""


@pytest.fixture
def tuned_model_dir(model_dir, tmp_path) -> Path:
    """A copy whose recorded default keep ratio is 0.3, as `latexport tune` would leave it."""
    tuned = tmp_path / "tuned-tiny-bert"
    shutil.copytree(model_dir, tuned, symlinks=True)
    write_metadata(tuned / "model.onnx", {"default_keep_ratio": "0.3"})
    return tuned


def test_transformers_js_classifies_with_a_converted_directory_at_its_default_ratio(web_example, tuned_model_dir):
    assert (tuned_model_dir / "onnx" / "model.onnx").resolve() == (tuned_model_dir / "model.onnx").resolve()
    assert json.loads((tuned_model_dir / "config.json").read_text())["transformers.js_config"] == {"dtype": "fp32"}
    texts = ["a good film", TEXT, "boring plot"]
    result = subprocess.run(
        ["node", "--input-type=module", "-e", PIPELINE_JS, str(tuned_model_dir.parent) + "/", tuned_model_dir.name,
         json.dumps(texts)],
        cwd=web_example, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    session = LatencyAdjustableSession(tuned_model_dir)
    assert session.default_keep_ratio == pytest.approx(0.3)
    # Each text alone, as the pipeline's batch of one text would be; at the file's default, not at 1.0.
    for text, ranked in zip(texts, json.loads(result.stdout)):
        expected = session.predict([text])
        by_label = {entry["label"]: entry["score"] for entry in ranked}
        np.testing.assert_allclose([by_label[label] for label in session.labels], expected.scores[0], rtol=0, atol=ATOL)
        assert ranked[0]["label"] == expected.labels[0]
    full = session.predict([TEXT], keep_ratio=1.0).scores[0]
    assert np.abs(session.predict([TEXT]).scores[0] - full).max() > ATOL, "the default must be distinguishable from 1.0"


def test_convert_refuses_the_transformers_js_layout_for_feature_extraction(tmp_path):
    from latexport.export.conversion import convert
    from latexport.runtime.errors import SettingsError

    checkpoint = make_checkpoint(tmp_path / "checkpoint", "bert", "feature-extraction", seed=4)
    with pytest.raises(SettingsError, match="text-classification"):
        convert(str(checkpoint), tmp_path / "out", transformers_js=True)
    assert not (tmp_path / "out").exists()
