"""latexport models as optimum ORTModels and inside transformers' pipeline; stock optimum runs them at their default."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import pipeline as transformers_pipeline

pytest.importorskip("optimum.onnxruntime", reason='the optimum integration needs `pip install "latexport[optimum]"`')

from latexport.integrations.ortmodel import (  # noqa: E402
    LatexportModelForSequenceClassification,
    LatexportTextClassificationPipeline,
    pipeline,
)
from latexport.runtime.errors import InvalidInputError, ModelDirectoryError
from latexport.runtime.session import LatencyAdjustableSession
from latexport.training.evaluate import write_metadata

TEXTS = ["the film was very good and the music was great , one of the best", "a dull , slow story with a bad ending"]


@pytest.fixture(scope="module")
def model(bert_classifier):
    return LatexportModelForSequenceClassification.from_pretrained(bert_classifier)


def test_forward_matches_the_runtime_at_every_ratio(model, bert_classifier):
    session = LatencyAdjustableSession(bert_classifier)
    feed = session.encode(TEXTS)
    torch_inputs = {name: torch.from_numpy(array) for name, array in feed.items()}
    for ratio in (1.0, 0.5, 0.1):
        expected = session.run(feed, keep_ratio=ratio)
        from_torch = model(**torch_inputs, keep_ratio=ratio).logits
        assert isinstance(from_torch, torch.Tensor)
        np.testing.assert_allclose(from_torch.numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(model(**feed, keep_ratio=ratio).logits, expected, atol=1e-6)
    # The ratio is really applied: the tiny model's logits move between 1.0 and 0.1.
    assert np.abs(session.run(feed, keep_ratio=1.0) - session.run(feed, keep_ratio=0.1)).max() > 1e-3


def test_forward_takes_one_ratio_per_row(model, bert_classifier):
    """Each row gets the logits it gets alone at its own ratio, through both optimum paths."""
    session = LatencyAdjustableSession(bert_classifier)
    feed = session.encode(TEXTS)
    ratios = [0.1, 1.0]
    alone = np.concatenate([session.predict([text], keep_ratio=ratio).logits for text, ratio in zip(TEXTS, ratios)])
    torch_inputs = {name: torch.from_numpy(array) for name, array in feed.items()}
    bound = LatexportModelForSequenceClassification.from_pretrained(bert_classifier, use_io_binding=True)
    for per_row in (ratios, np.array(ratios, dtype=np.float32), torch.tensor(ratios)):
        np.testing.assert_allclose(model(**torch_inputs, keep_ratio=per_row).logits.numpy(), alone, atol=1e-5)
        np.testing.assert_allclose(bound(**torch_inputs, keep_ratio=per_row).logits.numpy(), alone, atol=1e-5)
    np.testing.assert_allclose(model(**feed, keep_ratio=ratios).logits, alone, atol=1e-5)
    assert np.abs(alone[0] - session.run(feed, keep_ratio=1.0)[0]).max() > 1e-4
    with pytest.raises(InvalidInputError, match="3 values for a batch of 2"):
        model(**feed, keep_ratio=[0.5, 0.5, 0.5])

    classifier = transformers_pipeline("text-classification", model=model, tokenizer=model.tokenizer,
                                       pipeline_class=LatexportTextClassificationPipeline)
    scores = np.exp(alone) / np.exp(alone).sum(axis=1, keepdims=True)
    answers = classifier(TEXTS, keep_ratio=ratios, batch_size=2)
    np.testing.assert_allclose([answer["score"] for answer in answers], scores.max(axis=1), atol=1e-5)


def test_stock_optimum_runs_a_converted_classifier_at_its_recorded_default(bert_classifier, tmp_path):
    """optimum's own class, knowing nothing of keep_ratio, feeds only the token inputs: the file's default applies."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    tuned = tmp_path / "tuned"
    shutil.copytree(bert_classifier, tuned)
    write_metadata(tuned / "model.onnx", {"default_keep_ratio": "0.25"})  # as `latexport tune` records it
    stock = ORTModelForSequenceClassification.from_pretrained(tuned)
    assert type(stock) is ORTModelForSequenceClassification
    assert "keep_ratio" not in [tensor.name for tensor in stock.session.get_inputs()]
    assert [tensor.name for tensor in stock.session.get_overridable_initializers()] == ["keep_ratio"]

    session = LatencyAdjustableSession(tuned)
    feed = session.encode(TEXTS)
    logits = stock(**{name: torch.from_numpy(array) for name, array in feed.items()}).logits.numpy()
    np.testing.assert_allclose(logits, session.run(feed, keep_ratio=0.25), atol=1e-6)
    assert np.abs(logits - session.run(feed, keep_ratio=1.0)).max() > 1e-4


def test_io_binding_gives_the_same_logits(bert_classifier):
    bound = LatexportModelForSequenceClassification.from_pretrained(bert_classifier, use_io_binding=True)
    session = LatencyAdjustableSession(bert_classifier)
    feed = session.encode(TEXTS)
    logits = bound(**{name: torch.from_numpy(array) for name, array in feed.items()}, keep_ratio=0.3).logits
    np.testing.assert_allclose(logits.numpy(), session.run(feed, keep_ratio=0.3), atol=1e-6)


def test_default_ratio_then_attribute_then_call(bert_classifier, tmp_path):
    import onnx

    tuned = tmp_path / "tuned"
    shutil.copytree(bert_classifier, tuned)
    proto = onnx.load(tuned / "model.onnx")
    for prop in proto.metadata_props:
        if prop.key == "latexport.default_keep_ratio":
            prop.value = "0.25"
    onnx.save(proto, tuned / "model.onnx")
    session = LatencyAdjustableSession(tuned)
    feed = session.encode(TEXTS)
    model = LatexportModelForSequenceClassification.from_pretrained(tuned)
    assert model.default_keep_ratio == 0.25
    np.testing.assert_allclose(model(**feed).logits, session.run(feed, keep_ratio=0.25), atol=1e-6)
    model.keep_ratio = 0.6
    np.testing.assert_allclose(model(**feed).logits, session.run(feed, keep_ratio=0.6), atol=1e-6)
    np.testing.assert_allclose(model(**feed, keep_ratio=0.9).logits, session.run(feed, keep_ratio=0.9), atol=1e-6)


def test_inside_transformers_pipeline(model, bert_classifier):
    session = LatencyAdjustableSession(bert_classifier)
    stock = transformers_pipeline("text-classification", model=model, tokenizer=model.tokenizer)
    assert [answer["label"] for answer in stock(TEXTS)] == session.predict(TEXTS, keep_ratio=1.0).labels
    classifier = transformers_pipeline("text-classification", model=model, tokenizer=model.tokenizer,
                                       pipeline_class=LatexportTextClassificationPipeline)
    for ratio in (1.0, 0.3):
        answers = classifier(TEXTS, keep_ratio=ratio)
        # The pipeline runs one text at a time (no padding), so compare text by text.
        for text, answer in zip(TEXTS, answers):
            expected = session.predict([text], keep_ratio=ratio)
            assert answer["label"] == expected.labels[0]
            assert answer["score"] == pytest.approx(float(expected.scores[0].max()), abs=1e-5)
    with pytest.raises(InvalidInputError, match="keep_ratio"):
        classifier(TEXTS, keep_ratio=1.5)


def test_pipeline_helper_and_a_model_without_token_type_ids(converted):
    roberta = converted[("roberta", "text-classification")]
    classifier = pipeline(roberta)
    session = LatencyAdjustableSession(roberta)
    answer = classifier(TEXTS[0], keep_ratio=0.2, top_k=None)
    expected = session.predict([TEXTS[0]], keep_ratio=0.2)
    scores = {item["label"]: item["score"] for item in answer}
    for label, score in zip(session.labels, expected.scores[0]):
        assert scores[label] == pytest.approx(float(score), abs=1e-5)


def test_bad_inputs_are_named(model, bert_classifier):
    feed = LatencyAdjustableSession(bert_classifier).encode(TEXTS)
    with pytest.raises(InvalidInputError, match="keep_ratio"):
        model(**feed, keep_ratio=0.0)
    with pytest.raises(InvalidInputError, match="input_ids must lie"):
        model(**{**feed, "input_ids": feed["input_ids"] + 10_000})
    with pytest.raises(InvalidInputError, match="all padding"):
        model(**{**feed, "attention_mask": np.zeros_like(feed["attention_mask"])})
    with pytest.raises(InvalidInputError, match="required"):
        model(input_ids=feed["input_ids"])


def test_other_directories_are_refused(converted, tmp_path):
    with pytest.raises(ModelDirectoryError, match="feature-extraction"):
        LatexportModelForSequenceClassification.from_pretrained(converted[("bert", "feature-extraction")])
    plain = tmp_path / "plain"
    shutil.copytree(converted[("bert", "text-classification")], plain)
    import onnx

    proto = onnx.load(plain / "model.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, plain / "model.onnx")
    with pytest.raises(ModelDirectoryError, match="not a latexport model"):
        LatexportModelForSequenceClassification.from_pretrained(plain)
