"""examples/node: model.onnx run by onnxruntime-node gives Python's logits at every keep_ratio.

Needs node and npm; the first run installs examples/node/node_modules with
`npm ci` (from the npm registry or its cache), later runs reuse it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from latexport.runtime.session import LatencyAdjustableSession

NODE_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
ATOL = 1e-4

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not on PATH (needed for the Node.js example in examples/node)",
)

#: npm's codes for a registry it cannot reach: the one failure that is the machine's, not the example's.
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH", "EHOSTUNREACH")

# A padded batch: the long row is what keep_ratio shortens most.
TEXTS = [
    "a good film",
    "the story was long and the ending was bad, but the music and the actors were very good and funny",
    "boring plot",
]


def installed_matches_lockfile() -> bool:
    """Whether node_modules holds exactly the versions package-lock.json pins.

    npm writes node_modules/.package-lock.json on every install; comparing
    versions (not mtimes) survives checkouts and catches a changed pin.
    """
    installed_path = NODE_EXAMPLE / "node_modules" / ".package-lock.json"
    if not installed_path.is_file():
        return False
    wanted = json.loads((NODE_EXAMPLE / "package-lock.json").read_text())["packages"]
    installed = json.loads(installed_path.read_text())["packages"]
    return all(
        installed.get(name, {}).get("version") == entry.get("version") for name, entry in wanted.items() if name
    )


@pytest.fixture(scope="module")
def node_example() -> Path:
    """examples/node with its dependencies installed by `npm ci` when missing or stale."""
    if not installed_matches_lockfile():
        started = time.perf_counter()
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_EXAMPLE, capture_output=True, text=True, timeout=300, check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0 and any(code in output for code in NETWORK_ERRORS):
            pytest.skip(f"the npm registry is unreachable and node_modules is not installed ({NODE_EXAMPLE}): "
                        f"{next(line for line in output.splitlines() if any(c in line for c in NETWORK_ERRORS))}")
        assert result.returncode == 0, f"npm ci failed in {NODE_EXAMPLE}:\n{output}"
        print(f"npm ci took {time.perf_counter() - started:.1f} s")
    return NODE_EXAMPLE


def run_classify(node_example: Path, model_dir: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", "classify.js", str(model_dir), *arguments],
        cwd=node_example, capture_output=True, text=True, timeout=120, check=False,
    )


def classify(node_example: Path, model_dir: Path, *arguments: str) -> dict:
    result = run_classify(node_example, model_dir, *arguments)
    assert result.returncode == 0, f"classify.js failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def write_inputs(session: LatencyAdjustableSession, path: Path) -> dict[str, np.ndarray]:
    feed = session.encode(TEXTS)
    path.write_text(json.dumps({name: array.tolist() for name, array in feed.items()}))
    return feed


def predicted_labels(session: LatencyAdjustableSession, logits: np.ndarray) -> list[str]:
    return [session.labels[index] for index in logits.argmax(axis=1)]


@pytest.fixture(params=["bert", "roberta"])
def classifier(request, converted) -> Path:
    """BERT feeds token_type_ids; RoBERTa's graph has no such input."""
    return converted[(request.param, "text-classification")]


def test_node_logits_match_python_at_each_keep_ratio(node_example, classifier, tmp_path):
    session = LatencyAdjustableSession(classifier)
    inputs_path = tmp_path / "inputs.json"
    feed = write_inputs(session, inputs_path)
    assert ("token_type_ids" in feed) == ("token_type_ids" in session.metadata.input_names)

    logits_by_ratio = {}
    for ratio in (1.0, 0.3):
        output = classify(node_example, classifier, "--inputs", str(inputs_path), "--keep-ratio", str(ratio))
        expected = session.run(feed, keep_ratio=ratio)
        logits = np.array(output["logits"], dtype=np.float32)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=ATOL, err_msg=f"keep_ratio={ratio}")
        assert output["keep_ratio"] == ratio
        assert output["labels"] == predicted_labels(session, expected)
        logits_by_ratio[ratio] = logits

    # Otherwise the comparison above could not tell a ratio that was ignored.
    assert np.abs(logits_by_ratio[0.3] - logits_by_ratio[1.0]).max() > ATOL

    # No --keep-ratio: the file's default, like the Python runtime.
    output = classify(node_example, classifier, "--inputs", str(inputs_path))
    assert output["keep_ratio"] == session.default_keep_ratio
    np.testing.assert_allclose(np.array(output["logits"]), session.run(feed), rtol=0, atol=ATOL)


def test_node_uses_the_default_keep_ratio_recorded_in_the_file(node_example, bert_classifier, tmp_path):
    """A tuned file's default (metadata, as `latexport tune` records it) is read from model.onnx."""
    import onnx

    model_dir = tmp_path / "tuned"
    shutil.copytree(bert_classifier, model_dir)
    model = onnx.load(str(model_dir / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "latexport.default_keep_ratio":
            prop.value = "0.3"
    onnx.save(model, str(model_dir / "model.onnx"))

    session = LatencyAdjustableSession(model_dir)
    assert session.default_keep_ratio == pytest.approx(0.3)
    inputs_path = tmp_path / "inputs.json"
    feed = write_inputs(session, inputs_path)
    output = classify(node_example, model_dir, "--inputs", str(inputs_path))
    assert output["keep_ratio"] == pytest.approx(0.3)
    np.testing.assert_allclose(np.array(output["logits"]), session.run(feed), rtol=0, atol=ATOL)
    assert np.abs(session.run(feed) - session.run(feed, keep_ratio=1.0)).max() > ATOL


def test_node_tokenises_text_like_python(node_example, classifier):
    session = LatencyAdjustableSession(classifier)
    arguments = [argument for text in TEXTS for argument in ("--text", text)]
    output = classify(node_example, classifier, *arguments, "--keep-ratio", "0.3")
    expected = session.predict(TEXTS, keep_ratio=0.3)
    np.testing.assert_allclose(np.array(output["logits"]), expected.logits, rtol=0, atol=ATOL)
    assert output["labels"] == expected.labels


def assert_one_line_usage_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("classify.js: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("ratio", ["1.5", "0", "-0.2", "nan"])
def test_node_rejects_a_keep_ratio_outside_0_1(node_example, bert_classifier, tmp_path, ratio):
    inputs_path = tmp_path / "inputs.json"
    write_inputs(LatencyAdjustableSession(bert_classifier), inputs_path)
    result = run_classify(node_example, bert_classifier, "--inputs", str(inputs_path), f"--keep-ratio={ratio}")
    assert_one_line_usage_error(result, f'--keep-ratio must be a number in (0, 1], got "{ratio}"')


def drop_last_token_of_row_1(feed: dict) -> dict:
    return {name: [rows[0], rows[1][:-1], *rows[2:]] for name, rows in feed.items()}


def drop_attention_mask(feed: dict) -> dict:
    return {name: rows for name, rows in feed.items() if name != "attention_mask"}


def make_ids_fractional(feed: dict) -> dict:
    return {**feed, "input_ids": [[token + 0.5 for token in row] for row in feed["input_ids"]]}


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (drop_last_token_of_row_1, "input_ids[1] must be an array of"),
        (drop_attention_mask, "the inputs file lacks attention_mask"),
        (make_ids_fractional, "not an integer"),
    ],
)
def test_node_rejects_malformed_inputs(node_example, bert_classifier, tmp_path, spoil, message):
    feed = LatencyAdjustableSession(bert_classifier).encode(TEXTS)
    inputs_path = tmp_path / "inputs.json"
    inputs_path.write_text(json.dumps(spoil({name: array.tolist() for name, array in feed.items()})))
    result = run_classify(node_example, bert_classifier, "--inputs", str(inputs_path))
    assert_one_line_usage_error(result, message)


def test_node_rejects_a_missing_model(node_example, bert_classifier, tmp_path):
    inputs_path = tmp_path / "inputs.json"
    write_inputs(LatencyAdjustableSession(bert_classifier), inputs_path)
    result = run_classify(node_example, tmp_path / "no-model", "--inputs", str(inputs_path))
    assert_one_line_usage_error(result, "model.onnx does not exist")
