"""T5 and Flan-T5: the pruned encoder, its relative position bias, export of the three
tasks, and generation through the decoder graphs, against transformers and our PyTorch model."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from tiny import make_t5_checkpoint
from transformers import GenerationConfig
from transformers.modeling_outputs import BaseModelOutput

from latexport.cli import main
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.pooling import pool
from latexport.export.selection import relative_position_bias
from latexport.export.validate import pytorch_output, right_padded, validation_inputs
from latexport.runtime.errors import (
    InvalidInputError,
    ModelDirectoryError,
    SettingsError,
    UnsupportedModelError,
)
from latexport.runtime.estimate import FlopsModel, estimated_speedup
from latexport.runtime.generation import Sampling, Seq2SeqGenerator
from latexport.runtime.metadata import ModelMetadata
from latexport.runtime.profile import EliminationProfile
from latexport.runtime.session import LatencyAdjustableSession

SHAPES = ("t5", "flan-t5")
TASKS = ("text2text-generation", "text-classification", "feature-extraction")
KEYS = [(shape, task) for shape in SHAPES for task in TASKS]
PROMPTS = ["the film was very good and the plot quite long but the ending was sad", "bad movie", "a long story"]


def _tensors(feed):
    return {name: torch.from_numpy(value) for name, value in feed.items()}


def _greedy(loaded, tokens=32):
    config = loaded.config
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_new_tokens=tokens, do_sample=False, num_beams=1,
    )


def _strip(row, eos):
    row = list(row)
    return row[: row.index(eos) + 1] if eos in row else row


# --- the PyTorch model ----------------------------------------------------------


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_ratio_one_reproduces_transformers_exactly(t5_checkpoints, key):
    loaded = load_checkpoint(str(t5_checkpoints[key]))
    lat = build_model(loaded)
    for feed in validation_inputs(loaded, seed=4).values():
        tensors = _tensors(feed)
        with torch.no_grad():
            result = lat(tensors["input_ids"], tensors["attention_mask"], None, 1.0)
            got = result.output
            tensors = _tensors(right_padded(feed))  # transformers' T5 classifier decodes the pads of a left-padded row
            if key[1] == "text-classification":
                expected = loaded.model(**tensors).logits
            elif key[1] == "feature-extraction":
                expected = pool(loaded.model(**tensors).last_hidden_state, tensors["attention_mask"] > 0, "mean")
            else:  # the kept states, real tokens first; compare the real ones
                mask = result.attention_mask[..., None]
                expected = loaded.model.get_encoder()(**tensors).last_hidden_state[:, : got.shape[1]] * mask
                got = got * mask
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_kept_tokens_see_their_original_relative_positions(t5_checkpoints):
    """The bias between two kept word-vectors is the unpruned model's bias between
    their original positions, whatever was dropped between them; surplus keys are masked."""
    loaded = load_checkpoint(str(t5_checkpoints[("flan-t5", "text2text-generation")]))
    core = loaded.family.core(loaded.model)
    width = 40
    with torch.no_grad():
        table = loaded.family.relative_position_table(core, width, torch.float32)
        full = relative_position_bias(table, torch.arange(width).unsqueeze(0), torch.ones(1, width, dtype=torch.bool))
        torch.testing.assert_close(full, core.block[0].layer[0].SelfAttention.compute_bias(width, width), atol=0, rtol=0)
        kept = torch.tensor([[0, 3, 4, 17, 30, 39], [1, 2, 20, 21, 22, 38]])
        kept_valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
        pruned = relative_position_bias(table, kept, kept_valid)
    for row in range(2):
        expected = full[0][:, kept[row]][:, :, kept[row]]
        alive = int(kept_valid[row].sum())
        torch.testing.assert_close(pruned[row][:, :, :alive], expected[:, :, :alive], atol=0, rtol=0)
        assert (pruned[row][:, :, alive:] < -1e38).all()


def test_nothing_is_forced_to_stay_and_counts_follow_the_profile(t5_checkpoints):
    loaded = load_checkpoint(str(t5_checkpoints[("t5", "text2text-generation")]))
    lat = build_model(loaded)
    feed = validation_inputs(loaded, seed=6)["padded batch"]
    tensors = _tensors(feed)
    lengths = feed["attention_mask"].sum(axis=1)
    with torch.no_grad():
        result = lat(tensors["input_ids"], tensors["attention_mask"], None, 0.3)
    assert result.attention_mask.shape == result.output.shape[:2]
    for row, length in enumerate(lengths):
        counts = [int((kept[row] >= 0).sum()) for kept in result.kept_positions]
        assert counts == lat.profile.kept_counts(int(length), 0.3)
        assert int(result.attention_mask[row].sum()) == counts[-1]
    first_kept = {int(kept[0]) for kept in result.kept_positions[-1]}
    assert first_kept != {0}, "T5 has no [CLS]: position 0 is not pinned"


# --- export -----------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_conversion_validates_and_writes_the_expected_graphs(t5_converted, key):
    result = t5_converted[key]
    assert result.report.passed, result.report.render()
    files = {p.name for p in result.out_dir.iterdir()}
    assert {"model.onnx", "tokenizer.json", "config.json"} <= files
    generation = key[1] == "text2text-generation"
    assert ({"decoder_model.onnx", "decoder_with_past_model.onnx"} <= files) == generation
    assert not any(name.startswith(("encoder_model", "decoder_model_merged", "optimum-export")) for name in files)
    proto = onnx.load(str(result.out_dir / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask", "keep_ratio"]
    outputs = [o.name for o in proto.graph.output]
    expected_outputs = {
        "text2text-generation": ["last_hidden_state", "encoder_attention_mask"],
        "text-classification": ["logits"],
        "feature-extraction": ["sentence_embedding"],
    }[key[1]]
    assert outputs == expected_outputs
    layers = json.loads({p.key: p.value for p in proto.metadata_props}["latexport.profile"])["num_layers"]
    assert len([n for n in proto.graph.node if n.op_type == "If"]) == layers
    if generation:
        references = {check.reference for check in result.report.checks}
        assert {"transformers", "latexport-pt", "hf greedy", "pt greedy"} <= references


def test_flops_model_knows_the_t5_shapes(t5_converted):
    flan = ModelMetadata.from_props(
        {p.key: p.value for p in onnx.load(str(t5_converted[("flan-t5", "text-classification")].out_dir / "model.onnx")).metadata_props}
    )
    assert flan.flops.feed_forward_matrices == 3
    assert flan.flops.attention_size == 4 * (32 // 4 + 4)
    assert flan.flops.decoder_layers == 2  # the classifier's unpruned decoder
    t5_encoder = ModelMetadata.from_props(
        {p.key: p.value for p in onnx.load(str(t5_converted[("t5", "text2text-generation")].out_dir / "model.onnx")).metadata_props}
    )
    assert t5_encoder.flops.feed_forward_matrices == 2 and t5_encoder.flops.decoder_layers == 0
    # An unpruned decoder dilutes the speedup of pruning the encoder.
    profile = EliminationProfile(num_layers=4)
    alone = estimated_speedup(t5_encoder.flops, profile, 128, 0.2)
    with_decoder = estimated_speedup(FlopsModel(**{**t5_encoder.flops.__dict__, "decoder_layers": 4}), profile, 128, 0.2)
    assert 1.0 < with_decoder < alone


def test_onnx_matches_transformers_at_one_on_fresh_prompts(t5_checkpoints, t5_converted):
    """Independent of convert's own validation: new prompts, 32 greedy tokens, logits."""
    for shape in SHAPES:
        key = (shape, "text2text-generation")
        loaded = load_checkpoint(str(t5_checkpoints[key]))
        generator = Seq2SeqGenerator(t5_converted[key].out_dir)
        feed = generator.encoder.encode(PROMPTS)
        states, mask = generator.encode_states(feed, 1.0)
        with torch.no_grad():
            reference = loaded.model.get_encoder()(**_tensors(feed)).last_hidden_state.numpy()
        valid = feed["attention_mask"][..., None]
        np.testing.assert_allclose(states * valid, reference * valid, atol=1e-4, rtol=0)

        decoder_ids = np.array([[0, 7, 9, 11, 5]] * len(PROMPTS), dtype=np.int64)
        logits = generator.decoder.run(
            ["logits"], {"input_ids": decoder_ids, "encoder_hidden_states": states, "encoder_attention_mask": mask}
        )[0]
        with torch.no_grad():
            expected = loaded.model(**_tensors(feed), decoder_input_ids=torch.from_numpy(decoder_ids)).logits.numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

        got = generator.generate_ids(feed, 1.0, max_new_tokens=32).token_ids
        with torch.no_grad():
            expected_ids = loaded.model.generate(**_tensors(feed), generation_config=_greedy(loaded)).numpy()[:, 1:]
        assert got == [_strip(row, loaded.config.eos_token_id) for row in expected_ids]
        assert max(len(row) for row in got) > 3, "the comparison covers more than an immediate </s>"


def test_generation_at_half_equals_transformers_fed_our_pruned_encoder(t5_checkpoints, t5_converted):
    for shape in SHAPES:
        key = (shape, "text2text-generation")
        loaded = load_checkpoint(str(t5_checkpoints[key]))
        lat = build_model(loaded)
        generator = Seq2SeqGenerator(t5_converted[key].out_dir)
        feed = generator.encoder.encode(PROMPTS)
        result = generator.generate_ids(feed, 0.5, max_new_tokens=24)
        assert result.kept_tokens[0] < result.prompt_tokens[0]
        tensors = _tensors(feed)
        with torch.no_grad():
            pruned = lat(tensors["input_ids"], tensors["attention_mask"], None, 0.5)
            expected = loaded.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=pruned.output),
                attention_mask=pruned.attention_mask,
                generation_config=_greedy(loaded, 24),
            ).numpy()[:, 1:]
        assert result.token_ids == [_strip(row, loaded.config.eos_token_id) for row in expected]
        states, mask = generator.encode_states(feed, 0.5)
        np.testing.assert_array_equal(mask, pruned.attention_mask.numpy())
        np.testing.assert_allclose(states * mask[..., None], pytorch_output(lat, feed, 0.5)[0], atol=1e-4, rtol=0)


def test_classifier_and_encoder_run_through_the_runtime(t5_checkpoints, t5_converted):
    classifier = LatencyAdjustableSession(t5_converted[("flan-t5", "text-classification")].out_dir)
    loaded = load_checkpoint(str(t5_checkpoints[("flan-t5", "text-classification")]))
    feed = classifier.encode(PROMPTS)
    with torch.no_grad():
        expected = loaded.model(**_tensors(feed)).logits.numpy()
    prediction = classifier.predict(PROMPTS, keep_ratio=1.0)
    np.testing.assert_allclose(prediction.logits, expected, atol=1e-4, rtol=0)
    assert prediction.labels == [loaded.config.id2label[i] for i in expected.argmax(axis=1)]
    embedder = LatencyAdjustableSession(t5_converted[("t5", "feature-extraction")].out_dir)
    assert embedder.embed(PROMPTS, keep_ratio=0.5).shape == (3, 32)


# --- generation: the CLI and the Python API ---------------------------------------


def test_generate_command_prints_the_continuations(t5_converted):
    out_dir = t5_converted[("flan-t5", "text2text-generation")].out_dir
    runner = CliRunner()
    result = runner.invoke(main, ["generate", str(out_dir), PROMPTS[0], PROMPTS[1], "--keep-ratio", "0.5", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    expected = Seq2SeqGenerator(out_dir).generate(PROMPTS[:2], keep_ratio=0.5, max_new_tokens=6).texts
    assert result.stdout.splitlines() == expected
    assert "keep_ratio 0.5" in result.stderr and "first token" in result.stderr
    sampled = runner.invoke(main, ["generate", str(out_dir), PROMPTS[0], "--sample", "--seed", "3", "--top-k", "5"])
    again = runner.invoke(main, ["generate", str(out_dir), PROMPTS[0], "--sample", "--seed", "3", "--top-k", "5"])
    assert sampled.exit_code == 0 and sampled.stdout == again.stdout


def test_sampling_is_reproducible_and_top_k_one_is_greedy(t5_converted):
    generator = Seq2SeqGenerator(t5_converted[("t5", "text2text-generation")].out_dir)
    greedy = generator.generate(PROMPTS, keep_ratio=0.5, max_new_tokens=10)
    assert generator.generate(PROMPTS, keep_ratio=0.5, max_new_tokens=10, sampling=Sampling(top_k=1, seed=1)).token_ids == greedy.token_ids
    first = generator.generate(PROMPTS, max_new_tokens=10, sampling=Sampling(temperature=1.5, top_p=0.9, seed=7))
    second = generator.generate(PROMPTS, max_new_tokens=10, sampling=Sampling(temperature=1.5, top_p=0.9, seed=7))
    assert first.token_ids == second.token_ids
    assert first.token_ids != greedy.token_ids
    fixed = generator.generate(PROMPTS, max_new_tokens=9, min_new_tokens=9)
    assert [len(ids) for ids in fixed.token_ids] == [9, 9, 9]


def test_bad_generation_requests_get_clear_errors(t5_converted, converted):
    generator = Seq2SeqGenerator(t5_converted[("t5", "text2text-generation")].out_dir)
    for call, message in [
        (lambda: generator.generate([], max_new_tokens=4), "empty batch"),
        (lambda: generator.generate([""], max_new_tokens=4), "empty"),
        (lambda: generator.generate(PROMPTS, keep_ratio=1.5), "keep_ratio"),
        (lambda: generator.generate(PROMPTS, max_new_tokens=0), "max_new_tokens"),
        (lambda: generator.generate(PROMPTS, max_new_tokens=10**9), "max_new_tokens"),
        (lambda: generator.generate(PROMPTS, max_new_tokens=4, min_new_tokens=5), "min_new_tokens"),
        (lambda: Sampling(temperature=0), "temperature"),
        (lambda: Sampling(top_p=0), "top_p"),
        (lambda: generator.generate_ids({"input_ids": np.zeros((1, 300), np.int64), "attention_mask": np.ones((1, 300), np.int64)}), "exceeds"),
        (lambda: generator.generate_ids({"input_ids": np.zeros((1, 4), np.float32), "attention_mask": np.ones((1, 4), np.int64)}), "integers"),
        (lambda: LatencyAdjustableSession(generator.model_dir).predict(PROMPTS), "Seq2SeqGenerator"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            call()
    with pytest.raises(ModelDirectoryError, match="text2text-generation"):
        Seq2SeqGenerator(converted[("bert", "text-classification")])
    result = CliRunner().invoke(main, ["run", str(generator.model_dir), "hello"])
    assert result.exit_code == 2 and "latexport generate" in result.output


def test_conversion_refuses_what_it_cannot_do(t5_checkpoints, checkpoints, tmp_path):
    with pytest.raises(SettingsError, match="text2text-generation"):
        convert(str(t5_checkpoints[("t5", "text2text-generation")]), tmp_path / "int8", quantize="dynamic")
    with pytest.raises(UnsupportedModelError, match="text2text-generation"):
        convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "bert", task="text2text-generation")
    assert not (tmp_path / "int8").exists() and not (tmp_path / "bert").exists()


def test_a_fresh_t5_shape_converts_with_default_task_inferred(tmp_path):
    """Six layers, hidden 48, three heads: a shape no fixture uses."""
    checkpoint = make_t5_checkpoint(tmp_path / "ckpt", flan=True, layers=6, hidden=48, heads=3, seed=9)
    result = convert(str(checkpoint), tmp_path / "out", validation_ratios=(0.5,))
    assert result.metadata.task == "text2text-generation" and result.report.passed


def test_bench_times_the_encoder_and_then_generation(t5_converted, tmp_path):
    out_dir = t5_converted[("t5", "text2text-generation")].out_dir
    result = CliRunner().invoke(main, [
        "bench", str(out_dir), "--seq-len", "48", "--keep-ratios", "1,0.5,0.1", "--repeats", "4", "--no-memory",
        "--new-tokens", "5", "--graphs", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    encoder = json.loads((tmp_path / f"bench-{out_dir.name}-b1-s48.json").read_text())
    assert encoder["task"] == "text2text-generation" and len(encoder["rows"]) == 3
    generation = json.loads((tmp_path / f"bench-{out_dir.name}-b1-s48-generation.json").read_text())
    assert (tmp_path / f"bench-{out_dir.name}-b1-s48-generation.png").stat().st_size > 0
    profile = EliminationProfile(num_layers=4)
    assert [row["keep_ratio"] for row in generation["rows"]] == [1.0, 0.5, 0.1]
    assert [row["kept"] for row in generation["rows"]] == [profile.kept_counts(48, r)[-1] for r in (1.0, 0.5, 0.1)]
    assert generation["rows"][0]["total_speedup"] == 1.0 and generation["new_tokens"] == 5
    for row in generation["rows"]:
        assert 0 < row["median_prompt_ms"] < row["median_first_token_ms"] < row["median_total_ms"]
        assert row["decode_tokens_per_s"] > 0
