"""Gemma 2 and Gemma 3 (text) (latexport.export.families.gemma; Gemma 1, which comes with them,
runs through test_open_decoders with every tiny decoder config).

Each converts with its task inferred and passes convert's validation.  Here:
greedy tokens on left-padded batches and classifiers at 1.0 against
transformers; soft-capping (attention logits capped before the softmax, so ACC
sums capped probabilities; final logits capped on the language-model head,
never on the classifier); sliding windows that bite; and planted bugs in
Gemma 3's per-layer-type rotary that validation must catch.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_decoders import random_rows
from tiny import GEMMA2_ATTENTION_CAP, GEMMA_FINAL_CAP, TINY_WINDOW, tiny_decoder_config

from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.families import family_for
from latexport.export.families.gemma import GLOBAL, Gemma3Family
from latexport.export.reference import reference_batch
from latexport.runtime.errors import UnsupportedModelError
from latexport.runtime.generation import CausalGenerator
from latexport.runtime.session import LatencyAdjustableSession

FAMILIES = ("gemma2", "gemma3")
#: An attention cap small enough to bound every probability ratio tightly (the tiny config's is 3).
TINY_CAP = 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_matches_transformers_at_one_and_is_not_capped(decoder_checkpoints, decoder_converted, family):
    key = (family, "text-classification")
    session = LatencyAdjustableSession(decoder_converted[key].out_dir)
    loaded = load_checkpoint(str(decoder_checkpoints[key]))
    texts = ["the film was a very long story and the movie was not", "the movie", "a story of the film"]
    feed = session.encode(texts)
    with torch.no_grad():
        expected = loaded.model(**{name: torch.from_numpy(value) for name, value in feed.items()}).logits.numpy()
    got = session.predict(texts, keep_ratio=1.0).logits
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)
    # transformers' *ForSequenceClassification does not soft-cap its scores, and neither does latexport.
    assert np.abs(expected).max() > 2 * GEMMA_FINAL_CAP


def _attention_probabilities(model, ids: torch.Tensor, layer: int) -> np.ndarray:
    """[H, n, n]: what this layer's attention module returns (the probabilities ACC sums)."""
    captured = []
    attention = model.model.layers[layer].self_attn
    handle = attention.register_forward_hook(lambda module, args, output: captured.append(output[1]))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return captured[0][0].numpy()


def test_acc_sums_the_soft_capped_probabilities(decoder_checkpoints, tmp_path):
    """Gemma 2 caps attention logits at ``cap * tanh(logit / cap)`` before the softmax, so among the keys
    a query sees no probability exceeds another by more than exp(2 cap).  With a tiny cap, the
    probabilities transformers' attention returns obey that bound and the uncapped ones do not; the
    first layer's kept set (whose input capping cannot change) equals the independent reference's,
    which scores the returned probabilities, and differs from the one uncapped ACC would keep; and
    convert's validation passes."""
    checkpoint = tmp_path / "tiny-cap"
    shutil.copytree(decoder_checkpoints[("gemma2", "text-classification")], checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["attn_logit_softcapping"] == GEMMA2_ATTENTION_CAP
    (checkpoint / "config.json").write_text(json.dumps({**config, "attn_logit_softcapping": TINY_CAP}))
    loaded = load_checkpoint(str(checkpoint))
    ids = torch.tensor(random_rows(17, lengths=(40,)))
    global_layer = loaded.config.layer_types.index("full_attention")
    capped = _attention_probabilities(loaded.model, ids, global_layer)[:, -1, :]  # the last query sees every key
    assert (capped.max(axis=1) / capped.min(axis=1)).max() <= np.exp(2 * TINY_CAP) * (1 + 1e-5)

    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
    lat = build_model(loaded)
    with torch.no_grad():
        kept = lat(ids, torch.ones_like(ids), None, 0.5).kept_positions[0][0].tolist()
    reference = reference_batch(loaded.model, "text-classification", lat.exponents, feed, 0.5)[0]
    expected = reference.kept_positions[0].tolist()
    assert kept == expected

    caps = [layer.self_attn.attn_logit_softcapping for layer in loaded.model.model.layers]
    for layer in loaded.model.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    uncapped = _attention_probabilities(loaded.model, ids, global_layer)[:, -1, :]
    assert (uncapped.max(axis=1) / uncapped.min(axis=1)).max() > 4 * np.exp(2 * TINY_CAP)
    with torch.no_grad():
        kept_uncapped = lat(ids, torch.ones_like(ids), None, 0.5).kept_positions[0][0].tolist()
    assert kept_uncapped != kept, "capping must change which word-vectors the first layer keeps"
    for layer, cap in zip(loaded.model.model.layers, caps):
        layer.self_attn.attn_logit_softcapping = cap

    result = convert(str(checkpoint), tmp_path / "out", validation_ratios=(0.5,))
    assert result.report.passed, result.report.render()


@pytest.mark.parametrize("family", FAMILIES)
def test_final_logits_are_soft_capped_like_transformers(decoder_checkpoints, decoder_converted, family):
    key = (family, "text-generation")
    loaded = load_checkpoint(str(decoder_checkpoints[key]))
    ids = torch.tensor(random_rows(18, lengths=(24,)))
    with torch.no_grad():
        states = loaded.model.model(ids).last_hidden_state[0, -1]
        uncapped = loaded.model.lm_head(states).numpy()
        expected = loaded.model(ids).logits[0, -1].numpy()
    assert np.abs(expected).max() < GEMMA_FINAL_CAP and np.abs(expected - uncapped).max() > 1e-2
    logits, _ = CausalGenerator(decoder_converted[key].out_dir).prefill(
        {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}, 1.0)
    np.testing.assert_allclose(logits[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sliding_window_bites_and_is_reproduced_at_one(decoder_checkpoints, decoder_converted, family):
    """The local layers' window changes transformers' own output on a prompt longer than it, and the
    converted prompt pass reproduces the windowed model."""
    from transformers import AutoModelForCausalLM

    checkpoint = decoder_checkpoints[(family, "text-generation")]
    windowed = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    assert windowed.config.sliding_window == TINY_WINDOW
    assert {"sliding_attention", "full_attention"} == set(windowed.config.layer_types)
    wide = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager", sliding_window=128).eval()
    ids = torch.tensor(random_rows(8, lengths=(40,)))
    with torch.no_grad():
        with_window, without = windowed(ids).logits[0, -1].numpy(), wide(ids).logits[0, -1].numpy()
    assert np.abs(with_window - without).max() > 1e-3, "the window must change the tiny model's output"
    generator = CausalGenerator(decoder_converted[(family, "text-generation")].out_dir)
    logits, _ = generator.prefill({"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}, 1.0)
    np.testing.assert_allclose(logits[0], with_window, atol=1e-4, rtol=0)


def _global_table_everywhere(self, layer, inputs):
    return inputs.rotary[GLOBAL]


def _tables_by_column(self, core, positions):
    return ROTARY(self, core, torch.arange(positions.shape[1]).expand_as(positions))


ROTARY = Gemma3Family.rotary


@pytest.mark.parametrize("bug", ["global table in local layers", "positions from columns"])
def test_validation_catches_a_planted_rotary_bug(decoder_checkpoints, tmp_path, monkeypatch, bug):
    """Local layers rotated by the global layers' table differ from transformers at 1.0 already;
    rotation by the survivors' columns differs once anything is dropped (at 1.0 the packed
    columns are the positions), so the independent reference must catch it."""
    if bug == "global table in local layers":
        monkeypatch.setattr(Gemma3Family, "layer_rotary", _global_table_everywhere)
    else:
        monkeypatch.setattr(Gemma3Family, "rotary", _tables_by_column)
    result = convert(str(decoder_checkpoints[("gemma3", "text-classification")]), tmp_path / "out", keep_invalid=True,
                     validation_ratios=(0.5,))
    failed = [check for check in result.report.checks if not check.passed]
    assert failed, f"validation passed a Gemma 3 with its {bug}"
    if bug == "global table in local layers":
        assert any(check.reference == "transformers" and check.keep_ratio == 1.0 for check in failed)
    else:
        assert any(check.reference == "independent" and check.keep_ratio < 1.0 for check in failed)


def test_bidirectional_gemma3_is_refused_by_name():
    config = tiny_decoder_config("gemma3")
    assert family_for(config).name == "gemma3"
    config.use_bidirectional_attention = True
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention"):
        family_for(config)
