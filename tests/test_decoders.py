"""GPT-2 and Llama: causal ACC, padding on either side, classification export, and
generation through the pruned prompt pass and the decode step."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from latexport.cli import main
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.decoding import DecodeStep, LayerCache, PyTorchGenerator
from latexport.export.selection import acc_scores
from latexport.runtime.errors import (
    InvalidInputError,
    SettingsError,
    UnsupportedModelError,
)
from latexport.runtime.generation import CausalGenerator, Sampling, open_generator
from latexport.runtime.metadata import cache_names
from latexport.runtime.profile import EliminationProfile, prompt_pass_profile
from latexport.runtime.session import LatencyAdjustableSession

FAMILIES = ("gpt2", "llama")
TASKS = ("text-generation", "text-classification")
KEYS = [(family, task) for family in FAMILIES for task in TASKS]
PROMPTS = ["the film was a very long story", "the movie", "a story of the film and the movie"]


def padded(rows: list[list[int]], pad: int, side: str) -> dict[str, np.ndarray]:
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[index, span], mask[index, span] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


def random_rows(seed: int, lengths=(23, 9, 16), vocab: int = 250) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=length).tolist() for length in lengths]


# --- the selection math ---------------------------------------------------------


def test_causal_acc_divides_by_the_queries_that_see_each_key():
    probs = torch.softmax(torch.randn(2, 3, 6, 6), dim=-1) * torch.tril(torch.ones(6, 6))
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    expected = torch.zeros(2, 6)
    for b in range(2):
        for j in range(6):
            queries = [i for i in range(j, 6) if valid[b, i]]
            expected[b, j] = sum(probs[b, :, i, j].sum() for i in queries) / max(1, len(queries))
    torch.testing.assert_close(acc_scores(probs, valid, causal=True), expected)
    torch.testing.assert_close(acc_scores(probs, valid), (probs * valid[:, None, :, None]).sum(dim=(1, 2)))


# --- the PyTorch model ------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_ratio_one_reproduces_transformers_with_left_and_right_padding(decoder_checkpoints, key):
    loaded = load_checkpoint(str(decoder_checkpoints[key]))
    lat = build_model(loaded)
    rows = random_rows(1)
    for side in ("right", "left"):  # padded with the padding id, which transformers' classifier looks for
        feed = {name: torch.from_numpy(value) for name, value in padded(rows, loaded.config.pad_token_id, side).items()}
        positions = (feed["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
        with torch.no_grad():
            got = lat(feed["input_ids"], feed["attention_mask"], None, 1.0, cache=LayerCache()).output
            reference = loaded.model(**feed, position_ids=positions).logits
        if key[1] == "text-generation":
            last = feed["attention_mask"].shape[1] - 1 - feed["attention_mask"].flip(1).argmax(dim=1)
            reference = reference[torch.arange(3), last]
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_side_does_not_change_any_ratio(decoder_checkpoints, family):
    loaded = load_checkpoint(str(decoder_checkpoints[(family, "text-generation")]))
    lat = build_model(loaded)
    rows = random_rows(2)
    for ratio in (1.0, 0.5, 0.2):
        outputs = {}
        for side in ("right", "left"):
            feed = {name: torch.from_numpy(value) for name, value in padded(rows, 0, side).items()}
            with torch.no_grad():
                outputs[side] = lat(feed["input_ids"], feed["attention_mask"], None, ratio, cache=LayerCache()).output
        torch.testing.assert_close(outputs["left"], outputs["right"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_token_is_always_kept_and_order_is_preserved(decoder_checkpoints, family):
    loaded = load_checkpoint(str(decoder_checkpoints[(family, "text-classification")]))
    lat = build_model(loaded)
    feed = padded(random_rows(3), 0, "right")
    lengths = feed["attention_mask"].sum(axis=1)
    for ratio in (0.5, 0.1, 0.01):
        with torch.no_grad():
            result = lat(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]), None, ratio)
        for row, length in enumerate(lengths):
            for kept in result.kept_positions:
                alive = kept[row][kept[row] >= 0].tolist()
                assert alive[-1] == length - 1, "the last real token must always be kept"
                assert alive == sorted(alive)
            assert [int((kept[row] >= 0).sum()) for kept in result.kept_positions] == lat.profile.kept_counts(int(length), ratio)


def test_decode_step_continues_exactly_like_a_longer_prompt(decoder_checkpoints):
    """At 1.0, prompt pass + a 3-token decode step == transformers on the prompt plus those tokens."""
    loaded = load_checkpoint(str(decoder_checkpoints[("llama", "text-generation")]))
    lat = build_model(loaded)
    feed = {name: torch.from_numpy(value) for name, value in padded(random_rows(4), 0, "left").items()}
    cache = LayerCache()
    with torch.no_grad():
        result = lat(feed["input_ids"], feed["attention_mask"], None, 1.0, cache=cache)
        past = cache.flat(result.cache_masks)
        new = torch.tensor([[5, 6, 7]] * 3)
        start = feed["attention_mask"].sum(dim=1, keepdim=True)
        logits, *_ = DecodeStep(loaded.model, loaded.family)(new, start + torch.arange(3), *past)
        full_ids = torch.cat([feed["input_ids"], new], dim=1)
        full_mask = torch.cat([feed["attention_mask"], torch.ones_like(new)], dim=1)
        reference = loaded.model(full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(logits, reference[:, -3:], atol=1e-5, rtol=0)


# --- export -----------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_conversion_validates_and_writes_the_graphs(decoder_converted, key):
    result = decoder_converted[key]
    assert result.report.passed, result.report.render()
    files = {p.name for p in result.out_dir.iterdir()}
    generation = key[1] == "text-generation"
    assert ("decoder_with_past_model.onnx" in files) == generation
    proto = onnx.load(str(result.out_dir / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask", "keep_ratio"]
    outputs = [o.name for o in proto.graph.output]
    if generation:
        assert outputs == ["logits", *cache_names(4, "present")]
        references = {check.reference for check in result.report.checks}
        assert {"transformers", "latexport-pt", "hf greedy", "pt greedy"} <= references
        step = onnx.load(str(result.out_dir / "decoder_with_past_model.onnx"))
        assert [i.name for i in step.graph.input] == ["input_ids", "position_ids", *cache_names(4, "past")]
    else:
        assert outputs == ["logits"]


def test_cache_lengths_differ_by_layer_and_follow_the_profile(decoder_converted):
    generator = CausalGenerator(decoder_converted[("gpt2", "text-generation")].out_dir)
    feed = padded(random_rows(5, lengths=(40,)), 0, "right")
    _, cache = generator.prefill(feed, 0.3)
    lengths = [cache[f"past.{layer}.mask"].shape[1] for layer in range(4)]
    counts = generator.prompt.metadata.profile.kept_counts(40, 0.3)
    assert lengths == [40, *counts[:-1]]
    assert cache["past.2.key"].shape[2] == lengths[2] and cache["past.2.key"].shape[0] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_generation_matches_transformers_at_one_for_32_tokens(decoder_checkpoints, decoder_converted, family):
    """Fresh prompts, left-padded as transformers' generate wants them; logits and 32 greedy tokens."""
    key = (family, "text-generation")
    loaded = load_checkpoint(str(decoder_checkpoints[key]))
    generator = CausalGenerator(decoder_converted[key].out_dir)
    feed = padded(random_rows(6), 0, "left")
    result = generator.generate_ids(feed, 1.0, max_new_tokens=32)
    tensors = {name: torch.from_numpy(value) for name, value in feed.items()}
    with torch.no_grad():
        expected = loaded.model.generate(
            **tensors, max_new_tokens=32, do_sample=False, num_beams=1,
            eos_token_id=generator.settings["eos_token_id"], pad_token_id=generator.settings["pad_token_id"],
        )[:, feed["input_ids"].shape[1]:]
        reference_logits = loaded.model(**tensors, position_ids=(tensors["attention_mask"].cumsum(1) - 1).clamp(min=0)).logits[:, -1]
    eos = generator.settings["eos_token_id"]
    assert result.token_ids == [row[: row.index(eos) + 1] if eos in row else row for row in expected.tolist()]
    assert max(len(row) for row in result.token_ids) > 8
    np.testing.assert_allclose(result.first_logits, reference_logits.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_generation_at_half_equals_the_pytorch_graphs(decoder_checkpoints, decoder_converted, family):
    key = (family, "text-generation")
    loaded = load_checkpoint(str(decoder_checkpoints[key]))
    generator = CausalGenerator(decoder_converted[key].out_dir)
    feed = padded(random_rows(7), 0, "right")
    got = generator.generate_ids(feed, 0.5, max_new_tokens=20)
    assert got.kept_tokens[0] < got.prompt_tokens[0]
    expected, expected_logits = PyTorchGenerator(build_model(loaded)).greedy(feed, 0.5, 20, generator.settings["eos_token_id"])
    assert got.token_ids == expected
    np.testing.assert_allclose(got.first_logits, expected_logits, atol=1e-4, rtol=0)


def test_classifiers_run_through_the_runtime(decoder_checkpoints, decoder_converted):
    for family in FAMILIES:
        key = (family, "text-classification")
        session = LatencyAdjustableSession(decoder_converted[key].out_dir)
        loaded = load_checkpoint(str(decoder_checkpoints[key]))
        feed = session.encode(PROMPTS)
        with torch.no_grad():
            expected = loaded.model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        prediction = session.predict(PROMPTS, keep_ratio=1.0)
        np.testing.assert_allclose(prediction.logits, expected, atol=1e-4, rtol=0)
        assert session.predict(PROMPTS, keep_ratio=0.3).logits.shape == (3, 3)


# --- generation through the CLI and the API ---------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_command_works_for_both_families(decoder_converted, family):
    out_dir = decoder_converted[(family, "text-generation")].out_dir
    result = CliRunner().invoke(main, ["generate", str(out_dir), PROMPTS[0], PROMPTS[1], "--keep-ratio", "0.5", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    expected = open_generator(out_dir).generate(PROMPTS[:2], keep_ratio=0.5, max_new_tokens=8).texts
    assert result.stdout == "".join(text + "\n" for text in expected)
    assert "keep_ratio 0.5" in result.stderr
    sampled = [CliRunner().invoke(main, ["generate", str(out_dir), PROMPTS[0], "--sample", "--seed", "5"]).stdout for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_sampling_and_fixed_lengths(decoder_converted):
    generator = open_generator(decoder_converted[("llama", "text-generation")].out_dir)
    greedy = generator.generate(PROMPTS, keep_ratio=0.5, max_new_tokens=10)
    assert generator.generate(PROMPTS, keep_ratio=0.5, max_new_tokens=10, sampling=Sampling(top_k=1)).token_ids == greedy.token_ids
    fixed = generator.generate(PROMPTS, max_new_tokens=7, min_new_tokens=7)
    assert [len(ids) for ids in fixed.token_ids] == [7, 7, 7]


def test_bench_reports_time_to_first_token(decoder_converted, tmp_path):
    out_dir = decoder_converted[("gpt2", "text-generation")].out_dir
    result = CliRunner().invoke(main, [
        "bench", str(out_dir), "--seq-len", "48", "--keep-ratios", "1,0.3", "--repeats", "4", "--no-memory",
        "--new-tokens", "4", "--graphs", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    generation = json.loads((tmp_path / f"bench-{out_dir.name}-b1-s48-generation.json").read_text())
    rows = generation["rows"]
    assert [row["keep_ratio"] for row in rows] == [1.0, 0.3]
    assert rows[0]["kept"] == 48 and rows[1]["kept"] < 48
    assert all(row["decode_tokens_per_s"] > 0 and row["median_first_token_ms"] < row["median_total_ms"] for row in rows)


def test_bad_requests_and_conversions_get_clear_errors(decoder_checkpoints, decoder_converted, checkpoints, tmp_path):
    generator = CausalGenerator(decoder_converted[("gpt2", "text-generation")].out_dir)
    long_prompt = padded([list(range(3, 120))], 0, "right")
    with pytest.raises(InvalidInputError, match="exceeds the model's maximum"):
        generator.generate_ids(long_prompt, max_new_tokens=20)
    with pytest.raises(InvalidInputError, match="keep_ratio"):
        generator.generate(PROMPTS, keep_ratio=0.0)
    with pytest.raises(InvalidInputError, match="empty"):
        generator.generate([""])
    with pytest.raises(SettingsError, match="text-generation"):
        convert(str(decoder_checkpoints[("gpt2", "text-generation")]), tmp_path / "int8", quantize="dynamic")
    with pytest.raises(UnsupportedModelError, match="feature-extraction"):
        convert(str(decoder_checkpoints[("llama", "text-generation")]), tmp_path / "features", task="feature-extraction")
    with pytest.raises(UnsupportedModelError, match="text-generation"):
        convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "bert", task="text-generation")
    assert not any((tmp_path / name).exists() for name in ("int8", "features", "bert"))


def test_gpt2_with_the_real_tokenizer_converts_and_generates(tmp_path):
    """A tiny random GPT-2 over the real 50,257-token GPT-2 vocabulary (from the npm
    registry, as latexport.assets fetches it); prompts are real English."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from latexport.assets import gpt2_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer())
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=32, n_layer=3, n_head=4)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    result = convert(str(tmp_path / "gpt2"), tmp_path / "out")
    assert result.metadata.task == "text-generation" and result.report.passed
    cli = CliRunner().invoke(main, [
        "generate", str(tmp_path / "out"), "It is a truth universally acknowledged", "--keep-ratio", "0.5", "--max-new-tokens", "5",
    ])
    assert cli.exit_code == 0, cli.output
    generated = open_generator(tmp_path / "out").generate(["It is a truth universally acknowledged"], keep_ratio=0.5, max_new_tokens=5)
    assert cli.stdout == generated.texts[0] + "\n" and len(generated.token_ids[0]) == 5


def test_language_model_fine_tuning_writes_a_checkpoint_that_converts(decoder_checkpoints, tmp_path):
    """The pruned-prompt recipe runs end to end on a tiny Llama, is reproducible, and
    convert reuses the power it recorded."""
    from safetensors.torch import load_file

    from latexport.training.finetune_lm import (
        LanguageModelSettings,
        finetune_language_model,
    )

    texts = [" ".join(["the film and the story of the movie"] * 30)] * 2
    settings = LanguageModelSettings(steps=3, prompt_tokens=24, scored_tokens=6, power=1.0, learning_rate=1e-3)
    first = finetune_language_model(str(decoder_checkpoints[("llama", "text-generation")]), tmp_path / "a", texts, settings, progress=False)
    second = finetune_language_model(str(decoder_checkpoints[("llama", "text-generation")]), tmp_path / "b", texts, settings, progress=False)
    assert len(first) == 3 and first == second
    weights_a, weights_b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    original = load_file(decoder_checkpoints[("llama", "text-generation")] / "model.safetensors")
    assert any(not torch.equal(original[name], weights_a[name]) for name in weights_a), "training changed nothing"
    converted = convert(str(tmp_path / "a"), tmp_path / "onnx")
    assert converted.report.passed and converted.metadata.profile.power == 1.0
    with pytest.raises(SettingsError, match="recipe"):
        LanguageModelSettings(recipe="sandwich")


def test_convert_reuses_the_whole_profile_a_fine_tuning_run_recorded(tmp_path):
    """A record's profile keeps its delay; a record from before profiles were recorded gives its power;
    a profile for another depth, or an unreadable record, gives none (the family's default then)."""
    from latexport.export.checkpoint import finetuned_profile

    def record(fields):
        (tmp_path / "latexport_finetune.json").write_text(json.dumps(fields) if isinstance(fields, dict) else fields)
        return finetuned_profile(str(tmp_path), 4)

    delayed = EliminationProfile(4, power=0.25, delay=1)
    assert record({"power": 0.25, "profile": json.loads(delayed.to_json())}) == delayed
    assert record({"power": 1.0}) == EliminationProfile(4, power=1.0)
    assert record({"power": 0.25, "profile": json.loads(EliminationProfile(6, power=0.25, delay=1).to_json())}) is None
    assert record("{not json") is None and record({"power": 9.0}) is None


def test_language_model_fine_tuning_trains_for_the_prompt_pass_profile_by_default(decoder_checkpoints, tmp_path):
    from latexport.training.finetune_lm import (
        LanguageModelSettings,
        finetune_language_model,
    )

    checkpoint = str(decoder_checkpoints[("llama", "text-generation")])
    texts = [" ".join(["the film and the story of the movie"] * 30)]
    finetune_language_model(checkpoint, tmp_path / "lm", texts, LanguageModelSettings(steps=1, prompt_tokens=24, scored_tokens=6),
                            progress=False)
    trained = json.loads((tmp_path / "lm" / "latexport_finetune.json").read_text())["profile"]
    layers = trained["num_layers"]
    assert EliminationProfile.from_json(json.dumps(trained)) == prompt_pass_profile(layers)
    with pytest.raises(SettingsError, match="power"):
        LanguageModelSettings(power=9.0)


def test_finetune_lm_command_reads_text_files_and_rows(decoder_checkpoints, tmp_path):
    """The command trains from a .txt document plus JSON Lines rows, with the library's defaults,
    and refuses texts too short for one span with a clear message."""
    import inspect as signature_inspect

    from latexport.training.finetune_lm import LanguageModelSettings

    (tmp_path / "novel.txt").write_text(" ".join(["the film and the story of the movie"] * 30))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"body": " ".join(["a story of the film"] * 40)}) + "\n")
    checkpoint = str(decoder_checkpoints[("llama", "text-generation")])
    result = CliRunner().invoke(main, [
        "finetune-lm", checkpoint, "-o", str(tmp_path / "lm"), "--text", str(tmp_path / "novel.txt"),
        "--text", str(tmp_path / "rows.jsonl"), "--text-column", "body", "--steps", "2", "--prompt-tokens", "24",
        "--scored-tokens", "6", "--power", "1.0",
    ])
    assert result.exit_code == 0, result.output
    assert "after 2 steps" in result.stdout
    record = json.loads((tmp_path / "lm" / "latexport_finetune.json").read_text())
    assert record["settings"]["min_keep_ratio"] == LanguageModelSettings.min_keep_ratio and record["power"] == 1.0
    options = {option.name: option.default for option in main.commands["finetune-lm"].params}
    defaults = {name: parameter.default for name, parameter in signature_inspect.signature(LanguageModelSettings).parameters.items()}
    for name in ("steps", "prompt_tokens", "scored_tokens", "learning_rate", "recipe", "min_keep_ratio", "power", "seed"):
        assert options[name] == defaults[name], name

    too_short = CliRunner().invoke(main, ["finetune-lm", checkpoint, "-o", str(tmp_path / "x"), "--text", str(tmp_path / "novel.txt")])
    assert too_short.exit_code == 2 and "no training text is longer than 576 tokens" in too_short.output
    (tmp_path / "empty.txt").write_text("  \n")
    empty = CliRunner().invoke(main, ["finetune-lm", checkpoint, "-o", str(tmp_path / "y"), "--text", str(tmp_path / "empty.txt")])
    assert empty.exit_code == 2 and "empty" in empty.output and not (tmp_path / "y").exists()
