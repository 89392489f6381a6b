"""The open decoders beside Llama: Qwen2, Qwen3, Mistral, Phi-3 and Gemma 2/3.

Every family converts with its task inferred and passes convert's validation
(at 1.0 against transformers and its ``generate``, below 1.0 against the eager
graphs and the independent reference, prompt pass and decode step alike).
Padding and mixed ratios are covered family-wide by test_padding and
test_per_row_ratios.  Here: greedy tokens on left-padded batches, the eager
graphs below 1.0, and sliding windows, which must bite in the tiny configs
and follow original positions in both graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_decoders import padded, random_rows
from tiny import DECODER_CONFIG_FAMILIES, TINY_WINDOW

from latexport.cli import main
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.decoding import PyTorchGenerator
from latexport.export.families import decoder as decoder_module
from latexport.export.families.decoder import DecoderFamily
from latexport.runtime.generation import CausalGenerator, open_generator

FAMILIES = tuple(family for family in DECODER_CONFIG_FAMILIES if family not in ("gpt2", "llama"))
KEYS = [(family, task) for family in FAMILIES for task in ("text-generation", "text-classification")]
#: The tiny configs with sliding windows: every layer (Mistral, Phi-3), or some (Qwen2, Gemma).
WINDOWED = ("qwen2", "mistral", "phi3")


@pytest.mark.parametrize("key", KEYS, ids=["-".join(k) for k in KEYS])
def test_each_family_converts_with_its_task_inferred_and_validates(decoder_converted, key):
    result = decoder_converted[key]
    assert result.metadata.task == key[1]
    assert result.report.passed, result.report.render()
    checks = result.report.checks
    assert any(check.reference == "transformers" and check.keep_ratio == 1.0 for check in checks)
    assert any(check.reference == "independent" and check.keep_ratio < 1.0 for check in checks)
    if key[1] == "text-generation":
        assert {"hf greedy", "pt greedy"} <= {check.reference for check in checks}
        step_checks = [c for c in checks if c.inputs.endswith(" step") and c.reference == "independent"]
        assert step_checks and all(c.keep_ratio < 1.0 for c in step_checks)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_greedy_tokens_and_first_logits_equal_transformers(decoder_checkpoints, decoder_converted, family):
    key = (family, "text-generation")
    loaded = load_checkpoint(str(decoder_checkpoints[key]))
    generator = CausalGenerator(decoder_converted[key].out_dir)
    feed = padded(random_rows(6, lengths=(31, 9, 20)), generator.settings["pad_token_id"], "left")
    result = generator.generate_ids(feed, 1.0, max_new_tokens=24)
    tensors = {name: torch.from_numpy(value) for name, value in feed.items()}
    with torch.no_grad():
        expected = loaded.model.generate(
            **tensors, max_new_tokens=24, do_sample=False, num_beams=1,
            eos_token_id=generator.settings["eos_token_id"], pad_token_id=generator.settings["pad_token_id"],
        )[:, feed["input_ids"].shape[1]:]
        first = loaded.model(**tensors, position_ids=(tensors["attention_mask"].cumsum(1) - 1).clamp(min=0)).logits[:, -1]
    eos = generator.settings["eos_token_id"]
    assert result.token_ids == [row[: row.index(eos) + 1] if eos in row else row for row in expected.tolist()]
    assert max(len(row) for row in result.token_ids) > 8
    np.testing.assert_allclose(result.first_logits, first.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_below_one_equals_the_eager_graphs(decoder_checkpoints, decoder_converted, family):
    key = (family, "text-generation")
    generator = CausalGenerator(decoder_converted[key].out_dir)
    feed = padded(random_rows(7, lengths=(36, 12, 25)), generator.settings["pad_token_id"], "right")
    got = generator.generate_ids(feed, 0.4, max_new_tokens=16)
    assert got.kept_tokens[0] < got.prompt_tokens[0]
    lat = build_model(load_checkpoint(str(decoder_checkpoints[key])))
    expected, expected_logits = PyTorchGenerator(lat).greedy(feed, 0.4, 16, generator.settings["eos_token_id"])
    assert got.token_ids == expected
    np.testing.assert_allclose(got.first_logits, expected_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", WINDOWED)
def test_the_sliding_window_bites_and_is_reproduced_at_one(decoder_checkpoints, decoder_converted, family):
    """The tiny window changes transformers' own output on a prompt longer than it, and the
    converted prompt pass reproduces the windowed model, not the unwindowed one."""
    from transformers import AutoConfig, AutoModelForCausalLM

    checkpoint = decoder_checkpoints[(family, "text-generation")]
    windowed = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    assert windowed.config.sliding_window == TINY_WINDOW
    config = AutoConfig.from_pretrained(checkpoint)
    config.sliding_window = None
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * len(config.layer_types)
    unwindowed = AutoModelForCausalLM.from_pretrained(checkpoint, config=config, attn_implementation="eager").eval()
    ids = torch.tensor(random_rows(8, lengths=(40,)))
    with torch.no_grad():
        with_window, without = windowed(ids).logits[0, -1].numpy(), unwindowed(ids).logits[0, -1].numpy()
    assert np.abs(with_window - without).max() > 1e-3, "the window must change the tiny model's output"
    generator = CausalGenerator(decoder_converted[(family, "text-generation")].out_dir)
    logits, _ = generator.prefill({"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}, 1.0)
    np.testing.assert_allclose(logits[0], with_window, atol=1e-4, rtol=0)


def _failures(result) -> list:
    return [check for check in result.report.checks if not check.passed]


def test_a_window_measured_on_columns_fails_validation(decoder_checkpoints, tmp_path, monkeypatch):
    """Planted bug: windows between the survivors' columns instead of their original positions.
    At 1.0 columns are positions in the prompt pass, so the pruned prompt checks must catch it."""

    def on_columns(query_positions, key_positions, window):
        queries = torch.arange(query_positions.shape[1]).unsqueeze(1) + key_positions.shape[1] - query_positions.shape[1]
        return ((queries - torch.arange(key_positions.shape[1]).unsqueeze(0)) < window).unsqueeze(0)

    monkeypatch.setattr(decoder_module, "within_window", on_columns)
    result = convert(str(decoder_checkpoints[("mistral", "text-generation")]), tmp_path / "columns", keep_invalid=True)
    failed = _failures(result)
    assert failed, "validation passed a window measured on columns"
    assert any(check.reference == "independent" and check.keep_ratio < 1.0 and not check.inputs.endswith(" step")
               for check in failed), result.report.render()


def test_a_decode_step_that_ignores_the_window_fails_the_independent_step_check(decoder_checkpoints, tmp_path, monkeypatch):
    """Planted bug: the decode step lets the new token see the whole cache.  The eager decode step
    shares the bug, so below 1.0 only the independent step check can catch it, and it must."""
    step_inputs = DecoderFamily.step_inputs

    def unwindowed(self, core, key_slots, query_positions, dtype):
        inputs = step_inputs(self, core, key_slots, query_positions, dtype)
        inputs.window_mask = inputs.mask
        return inputs

    monkeypatch.setattr(DecoderFamily, "step_inputs", unwindowed)
    result = convert(str(decoder_checkpoints[("mistral", "text-generation")]), tmp_path / "unwindowed", keep_invalid=True)
    failed = _failures(result)
    below_one = [check for check in failed if check.keep_ratio < 1.0]
    assert below_one and all(check.reference == "independent" and check.inputs.endswith(" step") for check in below_one), (
        result.report.render()
    )


def test_generate_command_samples_from_a_windowed_family(decoder_converted):
    out_dir = decoder_converted[("phi3", "text-generation")].out_dir
    greedy = CliRunner().invoke(main, ["generate", str(out_dir), "the film was a very long story", "--keep-ratio", "0.5",
                                       "--max-new-tokens", "6"])
    assert greedy.exit_code == 0, greedy.output
    expected = open_generator(out_dir).generate(["the film was a very long story"], keep_ratio=0.5, max_new_tokens=6)
    assert greedy.stdout == expected.texts[0] + "\n"
    sampled = [
        CliRunner().invoke(main, ["generate", str(out_dir), "the movie", "--sample", "--seed", "3", "--top-k", "5"]).stdout
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
