"""ALBERT: every application of a shared layer is a pruning layer of its own, in
transformers' order, with layer groups and inner groups; the factorised embedding;
the fused export."""

import pytest
import torch
from tiny import make_checkpoint

from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.validate import independent_check, pytorch_output, validation_inputs


@pytest.fixture(scope="module")
def albert_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("albert")
    return {
        "shared": make_checkpoint(root / "shared", "albert", "text-classification", seed=4),
        # 4 applications of 2 layer groups of 2 layers each: 8 pruning layers, 4 distinct layers.
        "grouped": make_checkpoint(root / "grouped", "albert", "text-classification", seed=5,
                                   config_overrides={"num_hidden_groups": 2, "inner_group_num": 2}),
    }


@pytest.fixture(scope="module")
def albert_models(albert_checkpoints):
    return {name: load_checkpoint(str(path)) for name, path in albert_checkpoints.items()}


@pytest.mark.parametrize("shape", ["shared", "grouped"])
def test_the_pruning_layers_are_the_applications_in_the_order_transformers_runs_them(albert_models, shape):
    model, family = albert_models[shape].model, albert_models[shape].family
    core = family.core(model)
    config = model.config
    applied = []
    hooks = [layer.register_forward_hook(lambda module, args, output: applied.append(module))
             for group in core.encoder.albert_layer_groups for layer in group.albert_layers]
    with torch.no_grad():
        model(input_ids=torch.tensor([[2, 10, 11, 12, 3]]))
    for hook in hooks:
        hook.remove()
    layers = family.layers(core)
    assert [id(layer) for layer in layers] == [id(layer) for layer in applied]
    assert len(layers) == family.layer_shape(config).num_layers == config.num_hidden_layers * config.inner_group_num
    assert len({id(layer) for layer in layers}) == config.num_hidden_groups * config.inner_group_num
    assert config.embedding_size < config.hidden_size  # factorised: embed projects up before the first layer
    hidden = family.embed(core, torch.tensor([[2, 10, 3]]), None, torch.arange(3).unsqueeze(0))
    assert hidden.shape == (1, 3, config.hidden_size)


def _drop_shared_across_applications(lat):
    """A planted bug: each shared layer drops by the profile entry of its first application,
    so its later applications keep what it already kept instead of dropping further."""
    first = {}
    layers = lat.family.layers(lat.family.core(lat.hf_model))
    lat.exponents = [first.setdefault(id(layer), exponent) for layer, exponent in zip(layers, lat.exponents)]
    return lat


@pytest.mark.parametrize("shape", ["shared", "grouped"])
def test_validation_catches_a_drop_shared_across_applications(albert_models, shape):
    """The independent reference runs transformers' AlbertLayer whole, once per application,
    each with its own drop: it passes the real model and fails the planted bug."""
    loaded = albert_models[shape]
    lat, buggy = build_model(loaded), _drop_shared_across_applications(build_model(loaded))
    feed = validation_inputs(loaded, seed=8)["padded batch"]

    def check(model, ratio):
        got, got_kept = pytorch_output(model, feed, ratio)
        return independent_check(loaded, lat, feed, "padded batch", ratio, got, got_kept, 1e-4)

    for ratio in (1.0, 0.5, 0.2):
        assert check(lat, ratio).passed, ratio
    assert check(buggy, 1.0).passed, "at 1.0 nothing is dropped, shared or not"
    for ratio in (0.5, 0.2):
        failed = check(buggy, ratio)
        assert not failed.passed and failed.kept_mismatch, ratio


def test_grouped_albert_converts_with_one_drop_per_application(albert_checkpoints, tmp_path):
    result = convert(str(albert_checkpoints["grouped"]), tmp_path / "out")
    assert result.report.passed, result.report.render()
    assert result.metadata.profile.num_layers == len(result.metadata.kept_positions_taps) == 8
    assert result.metadata.input_names == ["input_ids", "attention_mask", "token_type_ids", "keep_ratio"]


def test_a_fused_regressor_validates_and_knows_its_shapes(tmp_path):
    regressor = make_checkpoint(tmp_path / "regressor", "albert", "text-classification", num_labels=1, seed=6)
    result = convert(str(regressor), tmp_path / "fused", optimize=True)
    assert result.report.passed, result.report.render()
    assert result.metadata.problem_type == "regression"
    assert result.metadata.optimizations == ["fusions-cpu"]
    flops = result.metadata.flops
    assert not flops.output_projection_after_drop  # AlbertAttention projects, adds and normalises itself
    assert (flops.hidden_size, flops.intermediate_size, flops.num_heads) == (32, 64, 4)
    assert result.metadata.profile.num_layers == 4
