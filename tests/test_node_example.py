"""examples/node: model.onnx run by onnxruntime-node gives Python's logits at every keep_ratio,
one for all rows or one per row.

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
from latexport.training.evaluate import write_metadata

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


@pytest.fixture
def tuned_classifier(bert_classifier, tmp_path) -> Path:
    """The tiny BERT with a default of 0.3 recorded the way `latexport tune` records it."""
    model_dir = tmp_path / "tuned"
    shutil.copytree(bert_classifier, model_dir)
    write_metadata(model_dir / "model.onnx", {"default_keep_ratio": "0.3"})
    return model_dir


def test_node_uses_the_default_keep_ratio_recorded_in_the_file(node_example, tuned_classifier, tmp_path):
    session = LatencyAdjustableSession(tuned_classifier)
    assert session.default_keep_ratio == pytest.approx(0.3)
    inputs_path = tmp_path / "inputs.json"
    feed = write_inputs(session, inputs_path)
    output = classify(node_example, tuned_classifier, "--inputs", str(inputs_path))
    assert output["keep_ratio"] == pytest.approx(0.3)
    np.testing.assert_allclose(np.array(output["logits"]), session.run(feed), rtol=0, atol=ATOL)
    assert np.abs(session.run(feed) - session.run(feed, keep_ratio=1.0)).max() > ATOL


#: Plain onnxruntime-node on the file as written, then on the bytes classify.js loads.
LIST_INPUTS_JS = """
const fs = require('node:fs');
const ort = require('onnxruntime-node');
const { withoutInitializer } = require('./classify.js');
(async () => {
  const [modelPath, inputsPath] = process.argv.slice(1);
  const bytes = fs.readFileSync(modelPath);
  const inputs = JSON.parse(fs.readFileSync(inputsPath, 'utf8'));
  const session = await ort.InferenceSession.create(bytes, { logSeverityLevel: 3 });
  const feed = {};
  for (const name of session.inputNames) {
    feed[name] = new ort.Tensor('int64', BigInt64Array.from(inputs[name].flat(), BigInt), [inputs[name].length, inputs[name][0].length]);
  }
  const logits = async (extra) => Array.from((await session.run({ ...feed, ...extra }))[session.outputNames[0]].data);
  const stripped = await ort.InferenceSession.create(withoutInitializer(bytes, 'keep_ratio'), { logSeverityLevel: 3 });
  console.log(JSON.stringify({
    inputNames: session.inputNames,
    omitted: await logits({}),
    fed: await logits({ keep_ratio: new ort.Tensor('float32', Float32Array.of(1.0), []) }),
    strippedInputNames: stripped.inputNames,
  }));
})();
"""


def test_plain_onnxruntime_node_lists_only_the_token_inputs_and_runs_at_the_default(node_example, tuned_classifier,
                                                                                    tmp_path):
    """keep_ratio has a default in the file, so onnxruntime-node neither lists it nor feeds it (classify.js
    removes the default to make it an input); left out, the graph runs at the recorded default."""
    session = LatencyAdjustableSession(tuned_classifier)
    inputs_path = tmp_path / "inputs.json"
    feed = write_inputs(session, inputs_path)
    result = subprocess.run(["node", "-e", LIST_INPUTS_JS, str(tuned_classifier / "model.onnx"), str(inputs_path)],
                            cwd=node_example, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    token_inputs = ["input_ids", "attention_mask", "token_type_ids"]
    assert listed["inputNames"] == token_inputs
    assert listed["strippedInputNames"] == [*token_inputs, "keep_ratio"]
    at_default = session.run(feed, keep_ratio=0.3).reshape(-1)
    np.testing.assert_allclose(listed["omitted"], at_default, rtol=0, atol=ATOL)
    # A keep_ratio fed to the unmodified file is dropped: still the default, not 1.0.
    np.testing.assert_allclose(listed["fed"], at_default, rtol=0, atol=ATOL)
    assert np.abs(at_default - session.run(feed, keep_ratio=1.0).reshape(-1)).max() > ATOL


def test_node_runs_each_row_at_its_own_ratio(node_example, classifier, tmp_path):
    """--keep-ratio with one value per row: each row's logits are the ones it gets alone at its ratio."""
    session = LatencyAdjustableSession(classifier)
    inputs_path = tmp_path / "inputs.json"
    feed = write_inputs(session, inputs_path)
    ratios = [1.0, 0.1, 0.5]
    output = classify(node_example, classifier, "--inputs", str(inputs_path), "--keep-ratio", ",".join(map(str, ratios)))
    assert output["keep_ratio"] == ratios
    logits = np.array(output["logits"], dtype=np.float32)
    alone = np.concatenate([session.predict([text], keep_ratio=ratio).logits for text, ratio in zip(TEXTS, ratios)])
    np.testing.assert_allclose(logits, alone, rtol=0, atol=ATOL)
    np.testing.assert_allclose(logits, session.run(feed, keep_ratio=ratios), rtol=0, atol=ATOL)
    assert output["labels"] == predicted_labels(session, alone)
    # The long row really runs at 0.1, not at a ratio shared by the batch.
    assert np.abs(logits[1] - session.run(feed, keep_ratio=1.0)[1]).max() > ATOL

    arguments = [argument for text in TEXTS for argument in ("--text", text)]
    by_text = classify(node_example, classifier, *arguments, "--keep-ratio", ",".join(map(str, ratios)))
    np.testing.assert_allclose(np.array(by_text["logits"]), alone, rtol=0, atol=ATOL)


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


@pytest.mark.parametrize(("ratio", "bad"), [("1.5", "1.5"), ("0", "0"), ("-0.2", "-0.2"), ("nan", "nan"),
                                           ("0.5,1.5,0.5", "1.5"), ("0.5,,0.5", "")])
def test_node_rejects_a_keep_ratio_outside_0_1(node_example, bert_classifier, tmp_path, ratio, bad):
    inputs_path = tmp_path / "inputs.json"
    write_inputs(LatencyAdjustableSession(bert_classifier), inputs_path)
    result = run_classify(node_example, bert_classifier, "--inputs", str(inputs_path), f"--keep-ratio={ratio}")
    assert_one_line_usage_error(result, f'--keep-ratio must be a number in (0, 1], got "{bad}"')


def test_node_rejects_one_ratio_per_row_of_another_batch(node_example, bert_classifier, tmp_path):
    inputs_path = tmp_path / "inputs.json"
    write_inputs(LatencyAdjustableSession(bert_classifier), inputs_path)
    result = run_classify(node_example, bert_classifier, "--inputs", str(inputs_path), "--keep-ratio", "0.5,0.5")
    assert_one_line_usage_error(result, "keep_ratio has 2 values for a batch of 3 rows")


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
