"""Faster variants of an exported graph: ONNX Runtime fusions, int8 weights, float16.

``convert --optimize [cpu|cuda]`` runs ONNX Runtime's transformer optimizer
over the traced graph, with the fusions that pay on the target:

* ``cpu``: GELU and bias + GELU.  SkipLayerNormalization (residual + bias +
  LayerNorm in one op) is left out: on a 2-core x86 CPU with ONNX Runtime 1.32
  it made BERT-base 5% slower at 512 tokens (351 ms against 330 ms, GELU fusion
  alone 327 ms); optimum's O2 export, which has it, is slower than optimum's
  plain export there too.
* ``cuda``: GELU, bias + GELU and SkipLayerNormalization (unmeasured here).

Attention fusion stays off: a fused Attention op does not hand out its
probabilities, and ACC scores are computed from them.  The fused file is
validated exactly like the plain one.

``convert --quantize dynamic`` quantizes the weight MatMuls to int8 with
per-call activation scales (ONNX Runtime dynamic quantization).  Only MatMuls
whose second input is a weight are touched; the attention products, the ACC
scorer and every node of the token selection stay float32, so the keep_ratio
logic is the same graph.  int8 cannot match float32 to 1e-4, so it is
compared with the float32 file it came from (``VariantReport``) and its
accuracy is measured on real data (``latexport evaluate``).

``convert --fp16`` (for CUDA) halves every float tensor except the
keep-count arithmetic: the nodes that turn ``keep_ratio`` into each layer's
integer k stay float32, because ceil(n * fraction) in float16 would keep a
different number of word-vectors than the documented profile.  ACC scores
are then summed in float16, so near-ties may rank differently from float32;
the report shows how often.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from latexport.runtime.estimate import FlopsModel
from latexport.runtime.metadata import KEEP_RATIO_INPUT

log = logging.getLogger(__name__)

QUANTIZATION_MODES = ("dynamic",)
OPTIMIZATION_TARGETS = ("cpu", "cuda")


def fuse_transformer_ops(path: Path, sizes: FlopsModel, target: str = "cpu", model_type: str = "bert") -> list[str]:
    """Apply the fusions for ``target`` in place; return the fused op types and counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.enable_attention = False  # the scorer needs the probabilities
    options.enable_gelu_approximation = False  # keep exact GELU: validation is to 1e-4
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = target == "cuda"
    # Symbolic shape inference took 17 GB and minutes on BERT-base (the selection's If
    # branches); the fusions used here match without it (2.6 s, under 1 GB).
    options.enable_shape_inference = False
    with warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        # opt_level 0: only the portable Python fusions, no ONNX Runtime rewrites
        # tied to this machine's execution provider.
        optimized = optimize_model(
            str(path),
            model_type=model_type,
            num_heads=sizes.num_heads,
            hidden_size=sizes.hidden_size,
            optimization_options=options,
            opt_level=0,
        )
    counts = optimized.get_fused_operator_statistics()
    fused = [f"{op} x{count}" for op, count in sorted(counts.items()) if count]
    optimized.save_model_to_file(str(path))
    log.info("fused: %s", ", ".join(fused) or "nothing")
    return fused


def quantize_dynamic_int8(source: Path, target: Path) -> None:
    """int8 weight MatMuls (dynamic activation scales); everything else untouched."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            # Activation x activation products (QK^T, P V, the ACC scorer) stay float32.
            # Shape inference cannot type values behind the selection's If branches;
            # every tensor the quantizer asks about there is float32.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
        )


def convert_to_float16(source: Path, target: Path) -> None:
    """float16 everywhere except the keep-count arithmetic; inputs and outputs stay as they are."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    with warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        # Called directly with ONNX's shape inference: through OnnxModel the conversion
        # of BERT-base took 157 s and 8.5 GB, here 4 s and 2.3 GB.
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            node_block_list=keep_count_nodes(model.graph),
            op_block_list=[],
        )
    skip_half_round_trips(converted.graph)
    onnx.save(converted, str(target))


def skip_half_round_trips(graph) -> int:
    """Let every cast to float32 read past a cast to float16 just before it; return how many.

    The converter leaves a node it must not touch in float32, but still casts
    that node's output to float16 and back before the next protected node reads
    it, so the keep-count chain lost precision at every step: a keep_ratio
    whose ``n * fraction`` sat 0.003 above an integer kept one word-vector
    fewer than the profile says.  Reading past the pair is exact (a cast to
    float32 of the original value), and the float16 copy stays for the nodes
    that want it.
    """
    import onnx

    def casts_to(node, dtype: int) -> bool:
        return node.op_type == "Cast" and any(a.name == "to" and a.i == dtype for a in node.attribute)

    to_half = {node.output[0]: node for node in graph.node if casts_to(node, onnx.TensorProto.FLOAT16)}
    skipped = 0
    for node in graph.node:
        producer = to_half.get(node.input[0]) if casts_to(node, onnx.TensorProto.FLOAT) else None
        if producer is not None:
            node.input[0] = producer.input[0]
            skipped += 1
    return skipped


def keep_count_nodes(graph) -> list[str]:
    """Names of the nodes between the keep_ratio input and the integer counts it becomes."""
    import onnx

    reached, names = {KEEP_RATIO_INPUT}, []
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.name in names or not reached.intersection(node.input):
                continue
            names.append(node.name)
            changed = True
            integer_cast = node.op_type == "Cast" and any(
                a.name == "to" and a.i == onnx.TensorProto.INT64 for a in node.attribute
            )
            if not integer_cast:  # past the cast the values are integers: nothing left to protect
                reached.update(node.output)
    return names


@dataclass
class VariantCheck:
    """One input batch at one ratio, the variant file against the float32 one.

    Reduced precision moves ACC scores a little, so near-ties can swap which
    word-vector survives: ``kept_in_common`` (the share of float32's kept
    word-vectors the variant keeps too, over rows and layers) says how much.
    The counts themselves come from the mask and the profile alone, so
    ``same_counts`` must hold exactly; a variant where it does not has let
    reduced precision into the keep-count arithmetic.
    """

    inputs: str
    keep_ratio: float
    max_abs_diff: float
    top1_agreement: Optional[float]  # classification only
    layers_same_kept: float
    kept_in_common: float
    same_counts: bool


@dataclass
class VariantReport:
    """How far a reduced-precision file lands from the float32 file it was made from."""

    variant: str
    checks: list[VariantCheck] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"{self.variant} against the validated float32 graph (informative: measure accuracy with `latexport evaluate`)",
            f"{'inputs':<14} {'keep_ratio':>10} {'max |diff|':>11} {'same top-1':>11} {'layers keeping the same':>24} "
            f"{'kept in common':>15} {'same counts':>12}",
        ]
        for check in self.checks:
            lines.append(
                f"{check.inputs:<14} {check.keep_ratio:>10.2f} {check.max_abs_diff:>11.2e} "
                f"{'-' if check.top1_agreement is None else format(check.top1_agreement, '.0%'):>11} "
                f"{check.layers_same_kept:>24.0%} {check.kept_in_common:>15.1%} {'yes' if check.same_counts else 'NO':>12}"
            )
        return "\n".join(lines)


def compare_variant(
    variant: str,
    float_path: Path,
    variant_path: Path,
    feeds: dict[str, dict[str, np.ndarray]],
    output_name: str,
    taps: list[str],
    ratios: tuple[float, ...],
    classification: bool,
) -> VariantReport:
    """Outputs and kept word-vectors of the variant file against the float32 one."""
    import onnxruntime as ort

    from latexport.export.passes import with_int64_outputs

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [
        ort.InferenceSession(with_int64_outputs(path, taps), options, providers=["CPUExecutionProvider"])
        for path in (float_path, variant_path)
    ]
    report = VariantReport(variant)
    for label, feed in feeds.items():
        for ratio in ratios:
            full_feed = {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)}
            (reference, *reference_kept), (got, *got_kept) = (s.run([output_name, *taps], full_feed) for s in sessions)
            kept_same = [np.array_equal(a, b) for a, b in zip(reference_kept, got_kept)]
            in_common, same_counts = _kept_agreement(reference_kept, got_kept)
            classifies = classification and reference.ndim == 2 and reference.shape[1] > 1
            report.checks.append(
                VariantCheck(
                    inputs=label,
                    keep_ratio=ratio,
                    max_abs_diff=float(np.max(np.abs(got - reference))),
                    top1_agreement=float(np.mean(got.argmax(axis=1) == reference.argmax(axis=1))) if classifies else None,
                    layers_same_kept=float(np.mean(kept_same)) if kept_same else 1.0,
                    kept_in_common=in_common,
                    same_counts=same_counts,
                )
            )
    return report


def _kept_agreement(reference_kept: list[np.ndarray], got_kept: list[np.ndarray]) -> tuple[float, bool]:
    """(share of the reference's kept word-vectors also kept, whether every row keeps as many) over all layers."""
    shared = total = 0
    same_counts = True
    for reference, got in zip(reference_kept, got_kept):
        for reference_row, got_row in zip(reference, got):
            expected, kept = reference_row[reference_row >= 0], got_row[got_row >= 0]
            same_counts &= len(expected) == len(kept)
            shared += len(np.intersect1d(expected, kept))
            total += len(expected)
    return (shared / total if total else 1.0), bool(same_counts)


def describe_variant(optimize: Optional[str], quantize: Optional[str], fp16: bool = False) -> list[str]:
    """The ``optimizations`` recorded in the metadata, in the order applied."""
    fusions = [f"fusions-{optimize}"] if optimize else []
    return fusions + ([f"int8-{quantize}"] if quantize else []) + (["fp16"] if fp16 else [])


@contextlib.contextmanager
def _quiet_logging():
    """ONNX Runtime's Python tools log shape-inference chatter to the root logger."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(previous)
