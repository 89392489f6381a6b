"""The torch-free runtime: loading, input checks, outputs, threads."""

import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from latexport.runtime.errors import (
    InvalidInputError,
    ModelDirectoryError,
    ProviderError,
)
from latexport.runtime.session import (
    LatencyAdjustableSession,
    TruncationWarning,
    check_keep_ratio,
)

TEXTS = ["a very good film with a great story", "the plot was dull and the ending was bad", "fun"]


@pytest.fixture(scope="module")
def classifier(bert_classifier):
    return LatencyAdjustableSession(bert_classifier)


@pytest.fixture(scope="module")
def embedder(converted):
    return LatencyAdjustableSession(converted[("roberta", "feature-extraction")])


def test_runtime_imports_and_runs_without_torch(bert_classifier):
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "optimum", "onnx"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from latexport.runtime.session import LatencyAdjustableSession
        session = LatencyAdjustableSession({str(bert_classifier)!r})
        print(session.predict(["a good film"], keep_ratio=0.5).labels[0])
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in {"label_a", "label_b", "label_c"}


def test_predict_returns_labels_and_probabilities(classifier):
    prediction = classifier.predict(TEXTS, keep_ratio=0.5)
    assert prediction.logits.shape == (3, 3)
    assert set(prediction.labels) <= {"label_a", "label_b", "label_c"}
    np.testing.assert_allclose(prediction.scores.sum(axis=1), 1.0, rtol=1e-6)
    assert prediction.labels == [classifier.labels[i] for i in prediction.logits.argmax(axis=1)]


def test_regression_returns_values(regressor):
    prediction = LatencyAdjustableSession(regressor).predict(TEXTS, keep_ratio=0.6)
    assert prediction.labels is None and prediction.values.shape == (3,)
    np.testing.assert_array_equal(prediction.values, prediction.logits[:, 0])


def test_text_pairs(classifier):
    single = classifier.predict(["good film"], keep_ratio=1.0).logits
    paired = classifier.predict(["good film"], keep_ratio=1.0, text_pairs=["bad plot"]).logits
    assert single.shape == paired.shape and not np.allclose(single, paired)


def test_keep_ratio_is_per_call_and_defaults_to_the_recorded_one(embedder):
    full = embedder.embed(TEXTS * 3, keep_ratio=1.0)
    assert embedder.default_keep_ratio == 1.0
    np.testing.assert_array_equal(embedder.embed(TEXTS * 3), full)
    assert np.abs(embedder.embed(TEXTS * 3, keep_ratio=0.2) - full).max() > 1e-3
    normalized = embedder.embed(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), 0.0, -0.1, 1.5, True, "0.5", np.array([0.5, 0.5]), np.array(1, np.int64)]
)
def test_bad_keep_ratios_are_named(classifier, bad):
    with pytest.raises(InvalidInputError, match="keep_ratio"):
        classifier.predict(TEXTS, keep_ratio=bad)


def test_good_keep_ratio_forms():
    for good in (0.5, 1, np.float64(0.3), np.array(0.3, np.float32), np.array([0.7])):
        value = check_keep_ratio(good)
        assert value.dtype == np.float32 and value.shape == ()


@pytest.mark.parametrize("texts, message", [([], "empty batch"), (["ok", "  "], r"texts\[1\] is empty"), (["ok", 3], r"texts\[1\] must be a string"), (None, "must be a string or a list")])
def test_bad_texts(classifier, texts, message):
    with pytest.raises(InvalidInputError, match=message):
        classifier.predict(texts)


def test_over_long_text_is_truncated_with_a_warning_or_refused(bert_classifier):
    long_text = " ".join(["film"] * 400)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LatencyAdjustableSession(bert_classifier).predict([long_text, "short"])
    assert any(issubclass(w.category, TruncationWarning) and "texts [0]" in str(w.message) for w in caught)
    with pytest.raises(InvalidInputError, match="longer than"):
        LatencyAdjustableSession(bert_classifier, truncation="error").predict([long_text])


def _feed(width=6, batch=2):
    return {
        "input_ids": np.full((batch, width), 7, np.int64),
        "attention_mask": np.ones((batch, width), np.int64),
        "token_type_ids": np.zeros((batch, width), np.int64),
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.update(input_ids=f["input_ids"].astype(np.float32)), "input_ids must hold integers"),
        (lambda f: f.update(attention_mask=f["attention_mask"][:, :3]), "attention_mask has shape"),
        (lambda f: f.update(input_ids=f["input_ids"][0]), "must be 2-D"),
        (lambda f: f["attention_mask"].__setitem__((1, slice(None)), 0), r"rows \[1\] of attention_mask are all padding"),
        (lambda f: f["input_ids"].__setitem__((0, 0), 10**6), "input_ids must lie in"),
        (lambda f: f["attention_mask"].__setitem__((0, 0), 3), "only 0 and 1"),
        (lambda f: f.pop("token_type_ids"), "missing"),
        (lambda f: f.update(extra=f["input_ids"]), "unexpected"),
    ],
)
def test_bad_tensors_are_named(classifier, change, message):
    feed = _feed()
    change(feed)
    with pytest.raises(InvalidInputError, match=message):
        classifier.run(feed, 0.5)


def test_empty_and_too_long_tensors(classifier):
    with pytest.raises(InvalidInputError, match="batch is empty"):
        classifier.run(_feed(batch=0), 0.5)
    with pytest.raises(InvalidInputError, match="sequences are empty"):
        classifier.run(_feed(width=0), 0.5)
    with pytest.raises(InvalidInputError, match="exceeds the model's maximum of 128"):
        classifier.run(_feed(width=129), 0.5)


def test_int32_ids_are_accepted(classifier):
    feed = {name: value.astype(np.int32) for name, value in _feed().items()}
    np.testing.assert_array_equal(classifier.run(feed, 0.5), classifier.run(_feed(), 0.5))


def test_providers(bert_classifier):
    with pytest.raises(ProviderError, match="unknown provider"):
        LatencyAdjustableSession(bert_classifier, provider="tpu")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ProviderError, match="not available here"):
            LatencyAdjustableSession(bert_classifier, provider="cuda")


def test_bad_model_directories(bert_classifier, tmp_path):
    with pytest.raises(ModelDirectoryError, match="not a directory"):
        LatencyAdjustableSession(tmp_path / "missing")
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        LatencyAdjustableSession(tmp_path)
    (tmp_path / "model.onnx").write_bytes((bert_classifier / "model.onnx").read_bytes()[:5000])
    with pytest.raises(ModelDirectoryError, match="corrupt or truncated"):
        LatencyAdjustableSession(tmp_path)


def test_a_plain_onnx_file_is_not_a_latexport_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "model.onnx"))
    with pytest.raises(ModelDirectoryError, match="not a latexport model"):
        LatencyAdjustableSession(tmp_path)


def test_a_model_from_an_incompatible_version_says_convert_again(bert_classifier, tmp_path):
    import shutil

    import onnx

    stale = tmp_path / "stale"
    shutil.copytree(bert_classifier, stale)
    proto = onnx.load(str(stale / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "latexport.profile":
            prop.value = '{"name": "geometric", "num_layers": 4}'  # an older profile format
    onnx.save(proto, str(stale / "model.onnx"))
    with pytest.raises(ModelDirectoryError, match="written by latexport .* convert the checkpoint again"):
        LatencyAdjustableSession(stale)


def test_one_session_is_safe_across_threads(classifier):
    rng = np.random.default_rng(0)
    calls = [(list(rng.choice(TEXTS, size=int(rng.integers(1, 4)))), float(rng.choice([1.0, 0.7, 0.4, 0.1]))) for _ in range(160)]
    expected = [classifier.predict(texts, keep_ratio=ratio).logits for texts, ratio in calls]
    results = [None] * len(calls)

    def worker(start):
        for index in range(start, len(calls), 8):
            texts, ratio = calls[index]
            results[index] = classifier.predict(texts, keep_ratio=ratio).logits

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_io_binding_gives_the_same_outputs(bert_classifier):
    """The CUDA path binds inputs and outputs; the same code runs on CPU here."""
    plain = LatencyAdjustableSession(bert_classifier)
    bound = LatencyAdjustableSession(bert_classifier, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    for ratio in (1.0, 0.5, 0.1):
        np.testing.assert_array_equal(bound.predict(TEXTS, keep_ratio=ratio).logits, plain.predict(TEXTS, keep_ratio=ratio).logits)
