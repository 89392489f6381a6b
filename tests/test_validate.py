"""Validation that can fail: selection bugs planted in the exported graph, or in
the selection that the graph and our PyTorch model share, must make
``latexport convert`` exit non-zero with a report that names the layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
from click.testing import CliRunner
from tiny import DECODER_CONFIG_FAMILIES

import latexport.export.conversion
from latexport.cli import main
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model
from latexport.export.reference import (
    reference_acc,
    reference_batch,
    reference_keep_count,
    reference_pick,
)
from latexport.export.validate import right_padded, validation_inputs


def _drop_branch(model: ir.Model, layer: int) -> ir.Graph:
    """The branch of layer ``layer``'s If that scores and drops (the other one passes everything on)."""
    ifs = [node for node in model.graph if node.op_type == "If"]
    return ifs[layer].attributes["else_branch"].as_graph()


def reverse_ranking(layer: int):
    """Plant: the TopK that finds each row's k-th best ACC picks the k-th worst instead."""

    def edit(model: ir.Model) -> None:
        topk = next(node for node in _drop_branch(model, layer) if node.op_type == "TopK")
        topk.attributes["largest"] = ir.AttrInt64("largest", 0)

    return edit


def mask_not_carried(layer: int):
    """Plant: the drop branch reports every kept slot as real, surplus slots included."""

    def edit(model: ir.Model) -> None:
        branch = _drop_branch(model, layer)
        kept_valid = branch.outputs[2]
        negated = ir.node("Not", [kept_valid])
        everything = ir.node("Or", [kept_valid, negated.outputs[0]])
        branch.extend([negated, everything])
        branch.outputs[2] = everything.outputs[0]

    return edit


def _plant(monkeypatch, plant) -> None:
    original = latexport.export.conversion.save_traced

    def save_with_bug(traced_path, path, edit=None):
        def both(model):
            if edit is not None:
                edit(model)
            if Path(path).name == latexport.export.conversion.MODEL_FILE:
                plant(model)

        original(traced_path, path, both)

    monkeypatch.setattr(latexport.export.conversion, "save_traced", save_with_bug)


@pytest.mark.parametrize("plant, layer", [(reverse_ranking, 2), (mask_not_carried, 1)], ids=["reversed-ranking", "mask-lost"])
def test_a_bug_planted_in_the_graph_fails_convert_and_names_the_layer(checkpoints, tmp_path, monkeypatch, plant, layer):
    _plant(monkeypatch, plant(layer))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(checkpoints[("bert", "text-classification")]), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "failed validation" in result.output
    assert f"layer {layer}:" in result.output
    assert "FAILED" in result.output
    assert not out.exists()


def test_a_bug_shared_by_the_graph_and_the_pytorch_model_is_caught_by_the_independent_reference(
    checkpoints, tmp_path, monkeypatch
):
    """Probabilities handed over with the key axis reversed (each word-vector is
    credited with the attention its mirror image received), in the family hook
    that both the graph and our PyTorch model run: only the independent
    reference can tell."""
    from latexport.export.families.bert import RobertaFamily

    attend = RobertaFamily.attend

    def attend_mirrored(self, layer, hidden, mask, cache=None):
        mixed, probs = attend(self, layer, hidden, mask, cache)
        return mixed, probs.flip(-1)

    monkeypatch.setattr(RobertaFamily, "attend", attend_mirrored)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(checkpoints[("roberta", "text-classification")]), "-o", str(out)])
    assert result.exit_code == 2, result.output
    failed = [line for line in result.output.splitlines() if line.rstrip().endswith("FAILED")]
    assert failed and all(" independent " in line for line in failed), result.output
    assert "the independent reference" in result.output and "layer 0:" in result.output
    assert not out.exists()


def test_validation_inputs_mix_padding_sides_and_leave_surplus_width(checkpoints):
    loaded = load_checkpoint(str(checkpoints[("bert", "text-classification")]))
    mask = validation_inputs(loaded)["mixed padding"]["attention_mask"]
    assert mask[:, 0].min() == 0 and mask[:, -1].min() == 0  # some rows padded on the left, some on the right
    assert mask.sum(axis=1).max() < mask.shape[1]  # wider than every row: layer 0 drops even at 1.0
    packed = right_padded(validation_inputs(loaded)["mixed padding"])["attention_mask"]
    assert np.array_equal(packed, np.sort(mask, axis=1)[:, ::-1])


def test_reference_primitives_follow_the_method():
    probs = np.array([[[0.5, 0.5, 0.0], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]])  # one head, [query, key]
    np.testing.assert_allclose(reference_acc(probs, causal=False), [0.8, 0.8, 1.4])
    np.testing.assert_allclose(reference_acc(probs, causal=True), [0.8 / 3, 0.8 / 2, 1.4])
    assert reference_pick(np.array([0.8, 0.8, 1.4]), 2, np.zeros(3)).tolist() == [0, 2]  # tie: the lower position
    assert reference_pick(np.array([0.8, 0.8, 1.4]), 2, np.array([0, 3, 0])).tolist() == [1, 2]  # pinned survives
    assert reference_keep_count(10, 10, 0.5, 1.0) == 5
    assert reference_keep_count(10, 3, 0.5, 1.0) == 3  # never more than alive
    assert reference_keep_count(10, 10, 0.0, 1.0) == 1  # at least one


@pytest.mark.parametrize("family", ["bert", "distilbert", "electra"])
def test_reference_agrees_with_the_pytorch_model_on_every_layout(checkpoints, family):
    """Same rows, left-, right- and over-padded: one answer, from both implementations."""
    loaded = load_checkpoint(str(checkpoints[(family, "feature-extraction")]))
    lat = build_model(loaded)
    feed = validation_inputs(loaded, seed=3)["mixed padding"]
    for ratio in (1.0, 0.5, 0.1):
        tensors = {name: torch.from_numpy(value) for name, value in feed.items()}
        with torch.no_grad():
            result = lat(tensors["input_ids"], tensors["attention_mask"], tensors.get("token_type_ids"), ratio)
        rows = reference_batch(loaded.model, loaded.task, lat.exponents, feed, ratio)
        for row, expected in enumerate(rows):
            np.testing.assert_allclose(result.output[row].numpy(), expected.output, atol=1e-5, rtol=0)
            for layer, kept in enumerate(result.kept_positions):
                assert kept[row][kept[row] >= 0].tolist() == expected.kept_positions[layer].tolist()


def test_every_family_was_validated_against_the_independent_reference(conversions, t5_converted, decoder_converted):
    """Every conversion of the suite, for every family and task: the ONNX file agreed with
    latexport.export.reference on outputs and kept sets, for every validation batch at every ratio."""
    results = {**conversions, **t5_converted, **dict(decoder_converted.items())}  # items(): build every lazy one
    families = {key[0] for key in results}
    assert {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "t5", "flan-t5", *DECODER_CONFIG_FAMILIES} <= families
    for key, result in results.items():
        independent = [check for check in result.report.checks if check.reference == "independent"]
        prompt = [check for check in independent if not check.inputs.endswith(" step")]
        batches = {check.inputs for check in prompt}
        assert "mixed padding" in batches, key
        assert {check.keep_ratio for check in prompt} == {1.0, 0.75, 0.5, 0.25, 0.1}, key
        assert len(prompt) == len(batches) * 5, key
        steps = [check for check in independent if check.inputs.endswith(" step")]
        if key[1] == "text-generation":  # one decode step over the pruned caches, every batch, every ratio below 1
            assert {check.inputs for check in steps} == {batch + " step" for batch in batches}, key
            assert len(steps) == len(batches) * 4 and all(check.keep_ratio < 1.0 for check in steps), key
        else:
            assert not steps, key
        assert all(check.passed for check in independent), (key, result.report.render())


def test_tolerance_is_atol_for_small_outputs_and_relative_for_large_ones():
    from latexport.export.validate import VALUE_SCALE, _float_check

    large, small = np.array([30.0, -9.0]), np.array([0.5, -0.2])
    allowed = 1e-4 * 30 / VALUE_SCALE
    assert _float_check("x", 0.5, "r", large + [0, 0.99 * allowed], large, 1e-4).passed
    assert not _float_check("x", 0.5, "r", large + [0, 1.01 * allowed], large, 1e-4).passed
    assert not _float_check("x", 0.5, "r", small + [1.1e-4, 0], small, 1e-4).passed  # small outputs: atol itself
    assert not _float_check("x", 0.5, "r", large + [1e-6, 0], large, 1e-30).passed  # a tiny atol stays strict
    assert not _float_check("x", 0.5, "r", large[:1], large, 1e-4).passed  # shapes differ
