"""ModernBERT: rotary and sliding windows follow the survivors' original positions.

The family-wide checks (parity with transformers at 1.0 for any padding, the
independent reference below 1.0, per-row ratios) run for ModernBERT through
``tiny.FAMILIES``; these are the family's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import make_checkpoint, tiny_config

from latexport.export.conversion import convert
from latexport.export.families import family_for
from latexport.export.families.modernbert import ModernBertAttentionInputs


def test_the_tiny_window_bites(checkpoints):
    """The tiny config's window of 8 changes transformers' output at 40 tokens: the
    family-wide validation therefore exercises the local layers' masks."""
    from transformers import AutoModel

    path = str(checkpoints[("modernbert", "feature-extraction")])
    windowed = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    wide = AutoModel.from_pretrained(path, attn_implementation="eager", local_attention=256).eval()
    ids = torch.randint(5, 60, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (windowed(ids).last_hidden_state - wide(ids).last_hidden_state).abs().max()
    assert difference > 1e-3  # ten times the validation tolerance


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_both_classifier_poolings_and_regression_validate(tmp_path, pooling):
    checkpoint = make_checkpoint(tmp_path / "ckpt", "modernbert", num_labels=1 if pooling == "cls" else 3, pooling=pooling)
    result = convert(str(checkpoint), tmp_path / "out")
    assert result.report.passed
    assert result.metadata.problem_type == ("regression" if pooling == "cls" else "single_label_classification")


def _window_by_column(self, dtype):
    """A planted bug: the window counted in the pruned tensor's columns, not original positions."""
    columns = torch.arange(self.positions.shape[1]).expand_as(self.positions)
    distance = (columns.unsqueeze(2) - columns.unsqueeze(1)).abs()
    allowed = torch.logical_and(distance <= self.half_window, self.valid.unsqueeze(1)).unsqueeze(1)
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


def test_validation_catches_a_window_over_new_indices(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(ModernBertAttentionInputs, "window_mask", _window_by_column)
    result = convert(str(checkpoints[("modernbert", "text-classification")]), tmp_path / "out", keep_invalid=True)
    failed = [check for check in result.report.checks if not check.passed]
    assert failed and all(check.keep_ratio < 1.0 and check.reference == "independent" for check in failed)


def test_validation_catches_rotary_over_new_indices(checkpoints, tmp_path, monkeypatch):
    """A planted bug: queries and keys rotated by their column in the pruned tensor."""
    original = ModernBertAttentionInputs.__init__

    def by_column(self, valid, positions, *rest):
        original(self, valid, torch.arange(positions.shape[1]).expand_as(positions), *rest)

    monkeypatch.setattr(ModernBertAttentionInputs, "__init__", by_column)
    result = convert(str(checkpoints[("modernbert", "feature-extraction")]), tmp_path / "out", keep_invalid=True)
    assert not result.report.passed


def test_flops_model_knows_the_gated_feed_forward():
    shape = family_for(tiny_config("modernbert")).layer_shape(tiny_config("modernbert"))
    assert (shape.num_layers, shape.hidden_size, shape.intermediate_size, shape.feed_forward_matrices) == (4, 32, 48, 3)


def test_local_layers_score_by_the_plain_sum(checkpoints):
    """ACC in a local layer is the plain sum over the queries that see each key (the module
    doc says why): the kept sets match the independent reference, which sums plainly, at
    every ratio, so normalising by the window's query count would show up as a difference.
    Here: that normalisation changes which word-vectors survive on the validation's inputs."""
    from latexport.export.checkpoint import load_checkpoint
    from latexport.export.validate import validation_inputs

    loaded = load_checkpoint(str(checkpoints[("modernbert", "text-classification")]))
    feed = validation_inputs(loaded)["long sequence"]
    with torch.no_grad():
        attentions = loaded.model(
            input_ids=torch.from_numpy(feed["input_ids"]), attention_mask=torch.from_numpy(feed["attention_mask"]),
            output_attentions=True,
        ).attentions
    probs = attentions[1][0].numpy()  # [H, N, N] of layer 1, a local layer
    plain = probs.sum(axis=(0, 1))
    seen_by = (probs[0] > 0).sum(axis=0)  # queries whose window holds each key
    normalised = plain / seen_by
    half = len(plain) // 2
    assert set(np.argsort(-plain)[:half]) != set(np.argsort(-normalised)[:half])
