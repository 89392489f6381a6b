"""MPNet: the relative position bias rebuilt from the survivors' original positions,
the drop after the attention's own output projection, and the fused export."""

import pytest
import torch
from tiny import make_checkpoint

from latexport.export import model as layer_loop
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.selection import relative_position_bias, select_tokens_and_bias
from latexport.export.validate import (
    independent_check,
    pytorch_output,
    reference_output,
    validation_inputs,
)
from latexport.runtime.errors import ValidationError


@pytest.fixture(scope="module")
def mpnet_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("mpnet") / "ckpt", "mpnet", "text-classification", seed=3)


@pytest.fixture(scope="module")
def loaded(mpnet_checkpoint):
    return load_checkpoint(str(mpnet_checkpoint))


def test_the_bias_of_kept_pairs_is_transformers_bias_at_their_original_distance(loaded):
    core = loaded.family.core(loaded.model)
    width = 60
    with torch.no_grad():
        full = core.encoder.compute_position_bias(torch.zeros(1, width, 1))  # transformers' own, [1, H, n, n]
        table = loaded.family.relative_position_table(core, width, torch.float32)
        ours = relative_position_bias(table, torch.arange(width).unsqueeze(0), torch.ones(1, width, dtype=torch.bool))
        torch.testing.assert_close(ours, full, atol=0, rtol=0)
        kept = torch.tensor([[0, 3, 4, 17, 30, 59], [0, 1, 20, 21, 45, 58]])
        kept_valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
        pruned = relative_position_bias(table, kept, kept_valid)
    for row in range(2):
        alive = int(kept_valid[row].sum())
        expected = full[0][:, kept[row]][:, :, kept[row]]
        torch.testing.assert_close(pruned[row][:, :, :alive], expected[:, :, :alive], atol=0, rtol=0)
        assert (pruned[row][:, :, alive:] < -1e38).all(), "surplus keys are masked"
    # The buckets bite at these lengths: pairs 13 and 3 apart (original against new indices) get other biases.
    assert not torch.equal(full[0, :, 0, 13], full[0, :, 0, 3])


def _bias_from_new_indices(probs, valid, always_keep, keep, residual, mixed, positions, bias, distance_table):
    """A planted bug: the survivors' bias rebuilt from their new indices instead of their original positions."""
    residual, mixed, kept_valid, kept_positions, _ = select_tokens_and_bias(
        probs, valid, always_keep, keep, residual, mixed, positions, bias, distance_table
    )
    columns = torch.arange(kept_positions.shape[1]).unsqueeze(0).expand_as(kept_positions)
    return residual, mixed, kept_valid, kept_positions, relative_position_bias(distance_table, columns, kept_valid)


def test_validation_catches_positions_taken_from_new_indices(loaded, monkeypatch):
    """The independent reference (each row alone, transformers' own bias indexed by original
    positions) passes the real model and fails the planted bug."""
    lat = build_model(loaded)
    feed = validation_inputs(loaded, seed=7)["padded batch"]

    def check(ratio):
        got, got_kept = pytorch_output(lat, feed, ratio)
        return independent_check(loaded, lat, feed, "padded batch", ratio, got, got_kept, 1e-4)

    assert all(check(ratio).passed for ratio in (1.0, 0.5, 0.25))
    monkeypatch.setattr(layer_loop, "select_tokens_and_bias", _bias_from_new_indices)
    assert check(1.0).passed, "nothing is dropped at 1.0 in a batch as wide as its longest row"
    for ratio in (0.5, 0.25):
        assert not check(ratio).passed, ratio


def test_convert_refuses_a_graph_with_positions_from_new_indices(mpnet_checkpoint, monkeypatch, tmp_path):
    """The same bug in both the traced graph and the PyTorch model: only the independent check can see it."""
    monkeypatch.setattr(layer_loop, "select_tokens_and_bias", _bias_from_new_indices)
    monkeypatch.setattr(layer_loop, "select_tokens_and_bias_for_export", torch.jit.script(_bias_from_new_indices))
    with pytest.raises(ValidationError) as raised:
        convert(str(mpnet_checkpoint), tmp_path / "out", validation_ratios=(0.5,))
    failed = [line for line in raised.value.report.splitlines() if "FAILED" in line]
    assert failed and all("independent" in line for line in failed), raised.value.report


def test_a_fused_regressor_validates_and_knows_its_shapes(loaded, tmp_path):
    assert loaded.family.name == "mpnet"
    assert loaded.family.max_positions(loaded.config) == loaded.config.max_position_embeddings - 2  # after padding_idx 1
    assert not loaded.family.uses_token_type_ids(loaded.config)
    regressor = make_checkpoint(tmp_path / "regressor", "mpnet", "text-classification", num_labels=1, seed=6)
    result = convert(str(regressor), tmp_path / "fused", optimize=True)
    assert result.report.passed, result.report.render()
    assert result.metadata.problem_type == "regression"
    flops = result.metadata.flops
    assert not flops.output_projection_after_drop
    assert (flops.hidden_size, flops.intermediate_size, flops.num_heads) == (32, 64, 4)
    assert result.metadata.profile.num_layers == loaded.config.num_hidden_layers
    assert result.metadata.optimizations == ["fusions-cpu"]


def test_the_pruned_row_matches_the_reference_at_the_longest_length(loaded):
    """128 tokens: distances far beyond the exact buckets, in every layer."""
    lat = build_model(loaded)
    feed = validation_inputs(loaded, seed=9)["long sequence"]
    for ratio in (0.3, 0.05):
        got, got_kept = pytorch_output(lat, feed, ratio)
        check = independent_check(loaded, lat, feed, "long sequence", ratio, got, got_kept, 1e-4)
        assert check.passed, (ratio, check)


def test_the_buckets_are_transformers_not_the_configs(tmp_path):
    """transformers buckets MPNet's bias into 32 whatever ``relative_attention_num_buckets`` says;
    with a 64-row table the rows past 32 are never read, and latexport must not read them either."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", "mpnet", "feature-extraction", seed=2,
                                 config_overrides={"relative_attention_num_buckets": 64})
    loaded = load_checkpoint(str(checkpoint))
    with torch.no_grad():
        loaded.family.core(loaded.model).encoder.relative_attention_bias.weight[32:] = 100.0
    lat = build_model(loaded)
    feed = validation_inputs(loaded, seed=3)["long sequence"]
    got, _ = pytorch_output(lat, feed, 1.0)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(reference_output(loaded, feed, "mean")),
                               atol=1e-5, rtol=0)
