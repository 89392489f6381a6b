"""`convert --optimize` and `--quantize dynamic`: faster graphs, same token selection."""

from collections import Counter

import numpy as np
import onnx
import pytest
from test_export import session_with_taps

from latexport.export.conversion import convert
from latexport.runtime.errors import SettingsError
from latexport.runtime.session import LatencyAdjustableSession

SELECTION_OPS = ("TopK", "If", "CumSum", "GatherElements", "Softmax")
TEXTS = ["a very good film with a great story and a happy ending", "the plot was dull", "fun"]


def op_counts(model_dir) -> Counter:
    proto = onnx.load(str(model_dir / "model.onnx"))
    counts = Counter(node.op_type for node in proto.graph.node)
    for node in proto.graph.node:  # the selection lives inside the If branches
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                counts.update(f"{inner.op_type}" for inner in attribute.g.node)
    return counts


def test_fused_graph_has_the_fusions_and_passes_validation(variants):
    fused = variants["fused"]
    assert fused.report.passed
    assert fused.metadata.optimizations == ["fusions-cpu"]
    counts = op_counts(fused.out_dir)
    assert counts["BiasGelu"] == 4 and counts["Gelu"] + counts["Erf"] == 0
    assert counts["SkipLayerNormalization"] == 0  # measured slower on CPU
    assert op_counts(variants["fp16"].out_dir)["SkipLayerNormalization"] >= 4  # the CUDA set has it
    assert counts["Attention"] == 0  # the scorer reads the probabilities
    plain_counts = op_counts(variants["plain"].out_dir)
    assert sum(counts.values()) < sum(plain_counts.values())


@pytest.mark.parametrize("ratio", [1.0, 0.6, 0.3, 0.1])
def test_fused_graph_equals_plain_graph_with_the_same_kept_tokens(variants, ratio):
    plain, taps = session_with_taps(variants["plain"].out_dir)
    fused, _ = session_with_taps(variants["fused"].out_dir)
    rng = np.random.default_rng(7)
    ids = rng.integers(5, 100, size=(3, 30))
    mask = np.ones((3, 30), dtype=np.int64)
    mask[1, 20:] = 0
    mask[2, 9:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "keep_ratio": np.array(ratio, dtype=np.float32)}
    expected = plain.run(["logits", *taps], feed)
    got = fused.run(["logits", *taps], feed)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-4)
    for layer, (a, b) in enumerate(zip(got[1:], expected[1:])):
        assert np.array_equal(a, b), f"layer {layer}"


def test_int8_quantizes_weights_only_and_keeps_the_selection(variants):
    int8 = variants["int8"]
    assert int8.metadata.optimizations == ["fusions-cpu", "int8-dynamic"]
    counts, fused_counts = op_counts(int8.out_dir), op_counts(variants["fused"].out_dir)
    assert counts["MatMulInteger"] > 0
    for op in SELECTION_OPS:
        assert counts[op] == fused_counts[op], op
    proto = onnx.load(str(int8.out_dir / "model.onnx"))
    weights = {init.name for init in proto.graph.initializer}
    float_weight_matmuls = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert float_weight_matmuls == []
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["latexport.optimizations"] == '["fusions-cpu", "int8-dynamic"]'


def test_int8_stays_close_to_float32_and_runs_at_every_ratio(variants):
    report = variants["int8"].variant_report
    assert report is not None and len(report.checks) == 3 * 5  # three input batches at 1.0 and four lower ratios
    assert max(check.max_abs_diff for check in report.checks) < 0.2
    assert min(check.top1_agreement for check in report.checks) >= 0.5
    assert_keeps_what_float32_keeps(report, INT8_KEPT_IN_COMMON)
    assert "same top-1" in report.render() and "kept in common" in report.render()
    session = LatencyAdjustableSession(variants["int8"].out_dir)
    reference = LatencyAdjustableSession(variants["fused"].out_dir)
    for ratio in (1.0, 0.5, 0.1):
        got = session.predict(TEXTS, keep_ratio=ratio).logits
        assert got.shape == (3, 3) and np.isfinite(got).all()
        assert np.max(np.abs(got - reference.predict(TEXTS, keep_ratio=ratio).logits)) < 0.2


#: The least share of float32's kept word-vectors a variant must keep too, in any
#: one check (batch and ratio, over rows and layers).  Measured on the tiny
#: model, whose random weights make ACC nearly flat (the hardest case for
#: near-ties): int8 96.4% at worst, fp16 100%.  One layer ranking backwards in
#: the variant measured far below (see the planted regression test).
INT8_KEPT_IN_COMMON = 0.93
FP16_KEPT_IN_COMMON = 0.99
#: The least mean share of layers that keep exactly float32's word-vectors
#: (measured: int8 88%, fp16 100%; one swapped near-tie fails a whole layer).
LEAST_LAYERS_SAME_KEPT = {"int8": 0.75, "fp16": 0.95}


def assert_keeps_what_float32_keeps(report, least_in_common: float) -> None:
    same_layers = float(np.mean([check.layers_same_kept for check in report.checks]))
    assert same_layers >= LEAST_LAYERS_SAME_KEPT[report.variant], f"{same_layers:.0%} of layers keep float32's set"
    for check in report.checks:
        assert check.same_counts, f"{check.inputs} at {check.keep_ratio}: keep counts differ from float32"
        assert check.kept_in_common >= least_in_common, (
            f"{check.inputs} at {check.keep_ratio}: {check.kept_in_common:.1%} of float32's kept word-vectors")


def test_a_variant_ranking_one_layer_backwards_falls_below_the_bound(variants, checkpoints, tmp_path):
    import onnx_ir as ir
    from test_validate import reverse_ranking

    from latexport.export.checkpoint import load_checkpoint
    from latexport.export.optimize import compare_variant
    from latexport.export.validate import validation_inputs

    planted = ir.load(str(variants["int8"].out_dir / "model.onnx"))
    reverse_ranking(1)(planted)
    ir.save(planted, str(tmp_path / "planted.onnx"))
    metadata = variants["int8"].metadata
    report = compare_variant(
        "int8", variants["fused"].out_dir / "model.onnx", tmp_path / "planted.onnx",
        validation_inputs(load_checkpoint(str(checkpoints[("bert", "text-classification")]))),
        metadata.output_name, metadata.kept_positions_taps, (1.0, 0.5, 0.25), classification=True)
    assert min(check.kept_in_common for check in report.checks) < INT8_KEPT_IN_COMMON
    with pytest.raises(AssertionError, match="float32"):
        assert_keeps_what_float32_keeps(report, INT8_KEPT_IN_COMMON)


def test_fp16_halves_the_weights_but_not_the_keep_counts(variants):
    fp16 = variants["fp16"]
    assert fp16.metadata.optimizations == ["fusions-cuda", "fp16"]
    proto = onnx.load(str(fp16.out_dir / "model.onnx"))
    weights = [init for init in proto.graph.initializer if len(init.dims) == 2]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    inputs = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert inputs["keep_ratio"] == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16_keep_widths(variants["fused"].out_dir) == fp16_keep_widths(fp16.out_dir)
    report = fp16.variant_report
    assert report.variant == "fp16" and max(check.max_abs_diff for check in report.checks) < 0.05
    assert_keeps_what_float32_keeps(report, FP16_KEPT_IN_COMMON)


def fp16_keep_widths(model_dir) -> list[list[int]]:
    """Each layer's kept width at ratios where the last layer's n * keep_ratio sits 0.003 above an
    integer, so that any float16 step in the count arithmetic rounds it down a word-vector."""
    session, taps = session_with_taps(model_dir)
    ids = np.random.default_rng(3).integers(5, 100, size=(1, 97))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return [[tap.shape[1] for tap in session.run(taps, {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})]
            for ratio in ((whole + 0.003) / 97 for whole in (10, 20, 33, 40, 55, 70, 85))]


def test_fp16_with_the_keep_counts_halved_too_is_caught(variants, checkpoints, tmp_path, monkeypatch):
    """The planted regression: drop the protection of the keep-count arithmetic."""
    import latexport.export.optimize

    monkeypatch.setattr(latexport.export.optimize, "keep_count_nodes", lambda graph: [])
    halved = convert(str(checkpoints[("bert", "text-classification")]), tmp_path / "halved", optimize="cuda", fp16=True)
    assert fp16_keep_widths(halved.out_dir) != fp16_keep_widths(variants["fused"].out_dir)


def test_unknown_or_conflicting_precision_options_are_refused(checkpoints, tmp_path):
    checkpoint = str(checkpoints[("bert", "text-classification")])
    with pytest.raises(SettingsError, match="quantize must be one of"):
        convert(checkpoint, tmp_path / "out", quantize="static")
    with pytest.raises(SettingsError, match="not both"):
        convert(checkpoint, tmp_path / "out", quantize="dynamic", fp16=True)
    with pytest.raises(SettingsError, match="optimize must be one of"):
        convert(checkpoint, tmp_path / "out", optimize="tpu")
    assert not (tmp_path / "out").exists()
