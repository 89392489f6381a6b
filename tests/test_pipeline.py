"""transformers' pipeline over a latexport file without optimum, with keep_ratio per call or per text."""

import numpy as np
import pytest
import torch

from latexport.integrations.pipeline import LatexportForSequenceClassification, pipeline
from latexport.runtime.errors import InvalidInputError, ModelDirectoryError
from latexport.runtime.session import LatencyAdjustableSession

TEXTS = ["the film was very good and the music was great , one of the best", "a dull , slow story with a bad ending"]


def test_the_pipeline_gives_the_runtime_scores_at_each_ratio(bert_classifier):
    classifier = pipeline(bert_classifier)
    session = LatencyAdjustableSession(bert_classifier)
    for ratio in (1.0, 0.5, 0.1):
        expected = session.predict(TEXTS, keep_ratio=ratio)
        got = classifier(TEXTS, keep_ratio=ratio)
        assert [row["label"] for row in got] == list(expected.labels)
        np.testing.assert_allclose([row["score"] for row in got], expected.scores.max(axis=1), atol=1e-5)
    # the ratio really reaches the file: the tiny model's scores move between 1.0 and 0.1
    full, low = classifier(TEXTS, keep_ratio=1.0), classifier(TEXTS, keep_ratio=0.1)
    assert max(abs(a["score"] - b["score"]) for a, b in zip(full, low)) > 1e-4
    default = classifier(TEXTS)
    at_default = session.predict(TEXTS, keep_ratio=session.default_keep_ratio)
    np.testing.assert_allclose([row["score"] for row in default], at_default.scores.max(axis=1), atol=1e-5)


def test_the_model_forward_takes_torch_or_numpy_and_checks_its_inputs(bert_classifier):
    model = LatexportForSequenceClassification.from_directory(bert_classifier)
    session = LatencyAdjustableSession(bert_classifier)
    feed = session.encode(TEXTS)
    expected = session.run(feed, keep_ratio=0.3)
    from_torch = model(**{name: torch.from_numpy(value) for name, value in feed.items()}, keep_ratio=0.3).logits
    np.testing.assert_allclose(from_torch.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(model(**feed, keep_ratio=0.3).logits.numpy(), expected, atol=1e-6)
    with pytest.raises(InvalidInputError):
        model(input_ids=feed["input_ids"])
    with pytest.raises(InvalidInputError, match="keep_ratio"):
        pipeline(bert_classifier)(TEXTS, keep_ratio=1.5)


#: One ratio per text: the first (long) text really changes between 1.0 and 0.1.
PER_TEXT = [0.1, 1.0]


def alone(session: LatencyAdjustableSession, texts, ratios) -> np.ndarray:
    """Each text's logits run by itself at its own ratio."""
    return np.concatenate([session.predict([text], keep_ratio=ratio).logits for text, ratio in zip(texts, ratios)])


def test_the_model_forward_takes_one_ratio_per_row(bert_classifier):
    model = LatexportForSequenceClassification.from_directory(bert_classifier)
    session = LatencyAdjustableSession(bert_classifier)
    feed = session.encode(TEXTS)
    expected = alone(session, TEXTS, PER_TEXT)
    torch_feed = {name: torch.from_numpy(value) for name, value in feed.items()}
    for ratios in (PER_TEXT, np.array(PER_TEXT, dtype=np.float32), torch.tensor(PER_TEXT)):
        np.testing.assert_allclose(model(**torch_feed, keep_ratio=ratios).logits.numpy(), expected, atol=1e-5)
    assert np.abs(expected[0] - session.run(feed, keep_ratio=1.0)[0]).max() > 1e-4
    with pytest.raises(InvalidInputError, match="3 values for a batch of 2"):
        model(**feed, keep_ratio=[0.5, 0.5, 0.5])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_the_pipeline_takes_one_ratio_per_text(bert_classifier, batch_size):
    """With a list of texts, keep_ratio may hold one ratio per text, also through the pipeline's own batching."""
    classifier = pipeline(bert_classifier)
    session = LatencyAdjustableSession(bert_classifier)
    expected = alone(session, TEXTS, PER_TEXT)
    scores = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    got = classifier(TEXTS, keep_ratio=PER_TEXT, batch_size=batch_size, top_k=None)
    for row, answers in enumerate(got):
        by_label = {answer["label"]: answer["score"] for answer in answers}
        np.testing.assert_allclose([by_label[label] for label in session.labels], scores[row], atol=1e-5)
    with pytest.raises(InvalidInputError, match="one ratio per text"):
        classifier(TEXTS[0], keep_ratio=PER_TEXT)
    with pytest.raises(InvalidInputError, match="one ratio per text"):
        classifier(TEXTS, keep_ratio=[0.5, 0.5, 0.5])
    with pytest.raises(InvalidInputError, match="keep_ratio"):
        classifier(TEXTS, keep_ratio=[0.5, 1.5])


def test_a_non_classifier_is_refused(converted):
    with pytest.raises(ModelDirectoryError, match="feature-extraction"):
        LatexportForSequenceClassification.from_directory(converted[("bert", "feature-extraction")])
