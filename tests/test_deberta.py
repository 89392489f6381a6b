"""DeBERTa-v2 / v3 (``latexport.export.families.deberta_v2``): the variants of its attention,
the distances after a drop, the refused convolution, fusions and the FLOPs model.

The v3-shaped tiny checkpoint also runs through every family-parametrised test (tests/tiny.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tiny import make_checkpoint, tiny_config

from latexport.export.conversion import convert
from latexport.export.families import family_for
from latexport.export.families.deberta_v2 import DebertaV2Family
from latexport.runtime.errors import UnsupportedModelError
from latexport.runtime.estimate import FlopsModel
from latexport.runtime.metadata import ModelMetadata

#: Configurations besides v3's, each validated in full by convert.
VARIANTS = {
    # v2-style: absolute positions at the input, separate position projections, two token types, and
    # distances clamped at 16 without log buckets.
    "v2-style": dict(position_biased_input=True, share_att_key=False, type_vocab_size=2, pos_att_type=["c2p", "p2c"],
                     norm_rel_ebd="none", position_buckets=-1, max_relative_positions=16),
    # Content-to-position only: one position term, so scores are divided by sqrt(2 x head size).
    "c2p-only": dict(share_att_key=False, pos_att_type=["c2p"], position_buckets=8, max_relative_positions=24),
    # No relative attention at all: BERT-like, with absolute positions.
    "absolute-only": dict(relative_attention=False, position_biased_input=True, pos_att_type=[]),
}


@pytest.fixture(scope="module")
def v3_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("deberta") / "v3", "deberta-v2", seed=7)


@pytest.fixture(scope="module")
def v3_converted(v3_checkpoint, tmp_path_factory):
    return convert(str(v3_checkpoint), tmp_path_factory.mktemp("deberta-converted") / "v3")


def file_metadata(model_dir) -> ModelMetadata:
    proto = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    return ModelMetadata.from_props({prop.key: prop.value for prop in proto.metadata_props})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_other_configurations_convert_and_validate(tmp_path, variant):
    checkpoint = make_checkpoint(tmp_path / variant, "deberta-v2", config_overrides=VARIANTS[variant])
    result = convert(str(checkpoint), tmp_path / "out")
    assert result.report.passed, result.report.render()
    expects_types = VARIANTS[variant].get("type_vocab_size", 0) > 1
    assert ("token_type_ids" in result.metadata.input_names) == expects_types


def test_regression_converts_and_validates(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "regression", "deberta-v2", num_labels=1)
    result = convert(str(checkpoint), tmp_path / "out")
    assert result.report.passed, result.report.render()
    assert result.metadata.problem_type == "regression"


def test_relative_positions_follow_the_survivors(v3_checkpoint, v3_converted, tmp_path, monkeypatch):
    """A planted bug: distances from the survivors' new columns instead of their original positions.

    At 1.0 nothing real is dropped, so columns are positions and every check passes; below it
    the graph and our PyTorch model agree with each other (they share the bug), and only the
    independent reference, which runs transformers' own layers on the original distances, fails."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    config = tiny_config("deberta-v2")
    distances = torch.arange(1, 128)
    buckets = make_log_bucket_position(distances, config.position_buckets, config.max_relative_positions)
    assert len(set(buckets.tolist())) < len(distances), "the tiny config's buckets must merge distances"

    assert v3_converted.report.passed

    attention_inputs = DebertaV2Family.attention_inputs

    def from_new_columns(self, core, valid, positions, dtype):
        return attention_inputs(self, core, valid, self.initial_positions(valid), dtype)

    monkeypatch.setattr(DebertaV2Family, "attention_inputs", from_new_columns)
    planted = convert(str(v3_checkpoint), tmp_path / "planted", keep_invalid=True)
    failed = [check for check in planted.report.checks if not check.passed]
    assert failed, "relative positions from the new columns must fail validation"
    assert {(check.reference, check.keep_ratio < 1.0) for check in failed} == {("independent", True)}


def test_a_convolution_layer_is_refused(tmp_path):
    config = tiny_config("deberta-v2")
    config.conv_kernel_size = 3
    with pytest.raises(UnsupportedModelError, match="conv_kernel_size=3"):
        family_for(config)
    checkpoint = make_checkpoint(tmp_path / "conv", "deberta-v2", config_overrides={"conv_kernel_size": 3})
    with pytest.raises(UnsupportedModelError, match="convolution"):
        convert(str(checkpoint), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_fused_file_validates(v3_checkpoint, tmp_path, target):
    """ONNX Runtime's optimizer knows no DeBERTa; as "bert" it fuses the feed-forward's bias + GELU."""
    result = convert(str(v3_checkpoint), tmp_path / target, optimize=target)
    assert result.report.passed, result.report.render()
    ops = {node.op_type for node in onnx.load(str(tmp_path / target / "model.onnx")).graph.node}
    assert "BiasGelu" in ops


def test_flops_model_counts_the_position_terms(v3_converted):
    base_v3 = tiny_config("deberta-v2", hidden=768, heads=12)
    base_v3.position_buckets, base_v3.max_relative_positions = 256, 512
    shape = family_for(base_v3).layer_shape(base_v3)
    assert (shape.attention_size, shape.relative_positions, shape.position_terms) == (768, 512, 2)

    sizes = dict(hidden_size=768, intermediate_size=3072, num_heads=12)
    plain, deberta = FlopsModel(**sizes), FlopsModel(**sizes, relative_positions=512, position_terms=2)
    counts = np.array([512.0, 256.0])  # numbers or arrays, as calibration passes them
    for entering in (256, counts):
        added = deberta.layer_cost_parts(entering, entering, False)[1] - plain.layer_cost_parts(entering, entering, False)[1]
        assert np.allclose(added, 2 * entering * 512 * 768)  # c2p and p2c over the entering word-vectors

    stored = file_metadata(v3_converted.out_dir).flops
    assert stored == v3_converted.metadata.flops
    assert (stored.relative_positions, stored.position_terms) == (16, 2)  # 2 x 8 buckets, c2p and p2c
