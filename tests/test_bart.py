"""BART, mBART and Marian: the pruned encoder with absolute positions, latexport's decoder graphs,
generation against transformers' generate, classification, and what convert refuses."""

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from tiny import MBART_LANGUAGES, make_seq2seq_checkpoint, tiny_seq2seq_config

from latexport.cli import main
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.families import family_for
from latexport.export.families.bart import BartFamily
from latexport.export.reference import reference_batch
from latexport.export.validate import (
    only_generation_config,
    pytorch_output,
    right_padded,
    seq2seq_greedy_config,
)
from latexport.runtime.errors import UnsupportedModelError
from latexport.runtime.generation import Sampling, open_generator
from latexport.runtime.metadata import ModelMetadata
from latexport.runtime.session import LatencyAdjustableSession

GENERATION = [(family, "text2text-generation") for family in ("bart", "mbart", "marian")]
CLASSIFICATION = [(family, "text-classification") for family in ("bart", "mbart")]
KEYS = [*GENERATION, *CLASSIFICATION, ("bart", "feature-extraction")]
PROMPTS = ["the film was very good and the plot quite long but the ending was sad", "bad movie", "a long story of love"]
#: Fewer ratios than convert's default keep these tests fast; convert's own validation runs at each.
RATIOS = (0.5, 0.2)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine torch's thread pool
    made every 32-wide matmul 20 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def seq2seq_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    return {key: make_seq2seq_checkpoint(root / "-".join(key), *key, seed=index) for index, key in enumerate(KEYS)}


@pytest.fixture(scope="module")
def seq2seq_converted(seq2seq_checkpoints, tmp_path_factory):
    """Each checkpoint converted with its task inferred from the checkpoint (none is passed)."""
    root = tmp_path_factory.mktemp("seq2seq-converted")
    return {key: convert(str(path), root / "-".join(key), validation_ratios=RATIOS) for key, path in seq2seq_checkpoints.items()}


def _left_padded(feed):
    """The same rows with their padding moved to the left."""
    feed = {name: value.copy() for name, value in feed.items()}
    for row, length in enumerate(feed["attention_mask"].sum(axis=1)):
        for name in feed:
            feed[name][row] = np.roll(feed[name][row], feed[name].shape[1] - int(length))
    return feed


def _transformers_greedy(loaded, feed, settings, tokens):
    """transformers' greedy tokens for the rows right-padded (it counts absolute positions by column)."""
    config = seq2seq_greedy_config(settings, tokens)
    tensors = {name: torch.from_numpy(value) for name, value in right_padded(feed).items()}
    with torch.no_grad(), only_generation_config(loaded.model, config):
        rows = loaded.model.generate(**tensors, generation_config=config).numpy()[:, 1:].tolist()
    eos = settings["eos_token_id"]
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_conversion_infers_the_task_and_validates(seq2seq_converted, key):
    result = seq2seq_converted[key]
    assert result.metadata.task == key[1] and result.metadata.family == key[0]
    assert result.report.passed, result.report.render()
    files = {path.name for path in result.out_dir.iterdir()}
    assert ({"decoder_model.onnx", "decoder_with_past_model.onnx"} <= files) == (key[1] == "text2text-generation")
    proto = onnx.load(str(result.out_dir / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask", "keep_ratio"]
    references = {check.reference for check in result.report.checks}
    assert {"transformers", "latexport-pt", "independent"} <= references
    if key[1] == "text2text-generation":
        assert {"hf greedy", "pt greedy"} <= references


def test_layer_shape_and_flops(seq2seq_converted):
    config = tiny_seq2seq_config("mbart", layers=3)
    config.decoder_layers, config.encoder_ffn_dim = 5, 80
    shape = family_for(config).layer_shape(config)
    assert (shape.num_layers, shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.decoder_layers) == (3, 32, 80, 4, 5)
    assert not family_for(config).output_projection_after_drop  # the drop follows out_proj

    def flops(key):
        props = {p.key: p.value for p in onnx.load(str(seq2seq_converted[key].out_dir / "model.onnx")).metadata_props}
        return ModelMetadata.from_props(props).flops

    assert flops(("bart", "text-classification")).decoder_layers == 2  # the classifier's unpruned decoder
    assert flops(("marian", "text2text-generation")).decoder_layers == 0


@pytest.mark.parametrize("family", ["bart", "mbart", "marian"])
def test_greedy_tokens_equal_transformers_generate_on_left_and_right_padding(seq2seq_checkpoints, seq2seq_converted, family):
    key = (family, "text2text-generation")
    loaded = load_checkpoint(str(seq2seq_checkpoints[key]))
    generator = open_generator(seq2seq_converted[key].out_dir)
    feed = generator.session.encode(PROMPTS)
    assert len(set(feed["attention_mask"].sum(axis=1))) == 3, "rows of different lengths"
    expected = _transformers_greedy(loaded, feed, generator.settings, 24)
    assert generator.generate_ids(feed, 1.0, 24).token_ids == expected
    assert generator.generate_ids(_left_padded(feed), 1.0, 24).token_ids == expected
    assert max(len(row) for row in expected) > 3, "the comparison covers more than an immediate </s>"
    if family == "mbart":  # mBART-50's target language, forced as the first token
        language = loaded.tokenizer.convert_tokens_to_ids(MBART_LANGUAGES[1])
        assert generator.settings["forced_bos_token_id"] == language and {row[0] for row in expected} == {language}
    if family == "marian":  # opus-mt never generates its padding
        assert generator.settings["suppressed_token_ids"] == [loaded.config.pad_token_id]


@pytest.mark.parametrize("family", ["bart", "mbart", "marian"])
def test_below_one_onnx_equals_eager_and_the_reference(seq2seq_checkpoints, seq2seq_converted, family):
    key = (family, "text2text-generation")
    loaded = load_checkpoint(str(seq2seq_checkpoints[key]))
    lat = build_model(loaded)
    generator = open_generator(seq2seq_converted[key].out_dir)
    feed = _left_padded(generator.session.encode(PROMPTS))
    states, mask = generator.encode_states(feed, 0.4)
    assert mask.sum() < feed["attention_mask"].sum()
    eager, kept = pytorch_output(lat, feed, 0.4)
    np.testing.assert_allclose(states * mask[..., None], eager, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(mask, (kept[-1] >= 0).astype(np.int64))
    for row, expected in enumerate(reference_batch(loaded.model, loaded.task, lat.exponents, feed, 0.4)):
        np.testing.assert_allclose(states[row][mask[row] > 0], expected.output, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(kept[-1][row][kept[-1][row] >= 0], expected.kept_positions[-1])


def test_validation_fails_when_decoder_positions_come_from_new_columns(seq2seq_checkpoints, monkeypatch, tmp_path):
    """A planted bug: positions from the columns of a call instead of the original positions.

    In the encoder positions are added at the embedding, before anything is dropped, so a
    survivor's column there is its original position; the decoder graphs are where a column
    and a position differ (a step after P cached tokens is at position P, in column 0)."""
    embed_with_positions = BartFamily.embed_with_positions

    def from_new_columns(self, stack, input_ids, positions):
        columns = torch.arange(positions.shape[-1], dtype=torch.int64).unsqueeze(0)
        return embed_with_positions(self, stack, input_ids, columns)

    monkeypatch.setattr(BartFamily, "embed_with_positions", from_new_columns)
    planted = convert(str(seq2seq_checkpoints[("bart", "text2text-generation")]), tmp_path / "planted", keep_invalid=True,
                      validation_ratios=(0.5,))
    failed = [check for check in planted.report.checks if not check.passed]
    assert failed, "decoder positions from the new columns must fail validation"
    assert {check.reference for check in failed} <= {"hf greedy", "pt greedy"}
    assert "hf greedy" in {check.reference for check in failed}


def test_generate_command_greedy_and_sampled(seq2seq_converted):
    out_dir = seq2seq_converted[("marian", "text2text-generation")].out_dir
    runner = CliRunner()
    greedy = runner.invoke(main, ["generate", str(out_dir), PROMPTS[0], PROMPTS[1], "--keep-ratio", "0.5", "--max-new-tokens", "6"])
    assert greedy.exit_code == 0, greedy.output
    assert greedy.stdout.splitlines() == open_generator(out_dir).generate(PROMPTS[:2], keep_ratio=0.5, max_new_tokens=6).texts
    command = ["generate", str(out_dir), PROMPTS[0], "--sample", "--seed", "3", "--top-k", "5", "--max-new-tokens", "8"]
    sampled, again = runner.invoke(main, command), runner.invoke(main, command)
    assert sampled.exit_code == 0 and sampled.stdout == again.stdout, sampled.output
    generator = open_generator(seq2seq_converted[("mbart", "text2text-generation")].out_dir)
    drawn = generator.generate(PROMPTS, max_new_tokens=8, sampling=Sampling(temperature=1.5, seed=1)).token_ids
    language = generator.settings["forced_bos_token_id"]
    assert {row[0] for row in drawn} == {language}, "the forced first token holds when sampling too"


@pytest.mark.parametrize("family", ["bart", "mbart"])
def test_classification_per_row_ratios_and_padding(seq2seq_checkpoints, seq2seq_converted, family):
    key = (family, "text-classification")
    session = LatencyAdjustableSession(seq2seq_converted[key].out_dir)
    loaded = load_checkpoint(str(seq2seq_checkpoints[key]))
    feed = session.encode(PROMPTS)
    with torch.no_grad():
        expected = loaded.model(**{name: torch.from_numpy(value) for name, value in feed.items()}).logits.numpy()
    np.testing.assert_allclose(session.run(feed, 1.0), expected, atol=1e-4, rtol=0)
    ratios = [1.0, 0.3, 0.5]
    mixed = session.run(_left_padded(feed), ratios)
    for row, ratio in enumerate(ratios):
        alone = session.encode([PROMPTS[row]])
        np.testing.assert_allclose(mixed[row], session.run(alone, ratio)[0], atol=1e-5, rtol=0)


def test_bad_requests_get_clear_errors(seq2seq_checkpoints, tmp_path):
    with pytest.raises(UnsupportedModelError, match="cannot export task 'text-classification' for model_type 'marian'"):
        convert(str(seq2seq_checkpoints[("marian", "text2text-generation")]), tmp_path / "marian-cls", task="text-classification")
    with pytest.raises(UnsupportedModelError, match="text-generation"):
        convert(str(seq2seq_checkpoints[("bart", "text2text-generation")]), tmp_path / "bart-lm", task="text-generation")
    assert not (tmp_path / "marian-cls").exists() and not (tmp_path / "bart-lm").exists()
