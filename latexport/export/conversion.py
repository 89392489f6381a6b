"""``latexport convert``: a transformers checkpoint to one self-validated ONNX file.

Steps, each its own function: load the checkpoint, wrap it in the
Latency Adjustable model, trace it to ONNX, post-process the graph (hide the
validation taps, write metadata), save the tokenizer and config beside it,
validate, and only then move the finished folder into place.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import onnx_ir as ir
import torch

from latexport import __version__
from latexport.export.checkpoint import (
    LoadedCheckpoint,
    finetuned_profile,
    load_checkpoint,
    sentence_transformers_pooling,
)
from latexport.export.decoding import PrefillWrapper, cache_axes, export_decode_step, export_seq2seq_decoders
from latexport.export.families import (
    TASK_CLASSIFICATION,
    TASK_FEATURES,
    TASK_GENERATION,
    TASK_TEXT2TEXT,
)
from latexport.export.model import ExportWrapper, LatencyAdjustableModel
from latexport.export.optimize import (
    OPTIMIZATION_TARGETS,
    QUANTIZATION_MODES,
    VariantReport,
    compare_variant,
    convert_to_float16,
    describe_variant,
    fuse_transformer_ops,
    quantize_dynamic_int8,
)
from latexport.export.passes import (
    finish_saved_model,
    hide_outputs,
    set_metadata,
    with_int64_outputs,
)
from latexport.export.transformers_js import check_task as check_transformers_js_task
from latexport.export.transformers_js import write_layout as write_transformers_js_layout
from latexport.export.tracing import EXPORTERS, TORCHSCRIPT, save_traced, trace
from latexport.export.validate import (
    DEFAULT_RATIOS,
    ValidationReport,
    validate_causal_generation,
    validate_export,
    validate_generation,
    validation_inputs,
)
from latexport.runtime.atomic import atomic_directory, check_target_free
from latexport.runtime.errors import SettingsError, ValidationError
from latexport.runtime.estimate import FlopsModel
from latexport.runtime.metadata import ENCODER_MASK_OUTPUT, ModelMetadata
from latexport.runtime.profile import EliminationProfile
from latexport.runtime.scoring import ScoringRule

log = logging.getLogger(__name__)

# 17 has LayerNormalization as one op; ONNX Runtime 1.20+ and onnxruntime-node run it.
OPSET = 17
MODEL_FILE = "model.onnx"
#: text2text-generation: the decoder graphs, beside model.onnx (the encoder), in optimum's layout.
DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
OUTPUT_NAMES = {
    TASK_CLASSIFICATION: "logits",
    TASK_FEATURES: "sentence_embedding",
    TASK_TEXT2TEXT: "last_hidden_state",
    TASK_GENERATION: "logits",
}


@dataclass
class ConvertResult:
    out_dir: Path
    metadata: ModelMetadata
    report: Optional[ValidationReport]
    #: For ``quantize`` or ``fp16``: the final file against the validated float32 one.
    variant_report: Optional[VariantReport] = None


def build_model(
    loaded: LoadedCheckpoint, power: Optional[float] = None, pooling: str = "mean", scoring: Optional[ScoringRule] = None,
    profile: Optional[EliminationProfile] = None,
) -> LatencyAdjustableModel:
    """``power``: ``keep_ratio ** ((l / L) ** power)`` from the first layer; else ``profile`` (a fine-tuning
    run's, say); else the family's profile for the task (``EncoderFamily.default_profile``)."""
    layers = loaded.family.layer_shape(loaded.config).num_layers
    if power is not None:
        profile = EliminationProfile(num_layers=layers, power=power)
    elif profile is None:
        profile = loaded.family.default_profile(layers, loaded.task)
    return LatencyAdjustableModel(loaded.model, loaded.family, profile, task=loaded.task, pooling=pooling, scoring=scoring).eval()


def describe(
    loaded: LoadedCheckpoint, lat: LatencyAdjustableModel, source: Optional[str] = None, optimizations: tuple[str, ...] = ()
) -> ModelMetadata:
    shape = loaded.family.layer_shape(loaded.config)
    input_names = ["input_ids", "attention_mask"]
    if loaded.family.uses_token_type_ids(loaded.config):
        input_names.append("token_type_ids")
    input_names.append("keep_ratio")
    return ModelMetadata(
        version=__version__,
        family=loaded.family.name,
        task=loaded.task,
        profile=lat.profile,
        flops=FlopsModel(
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_heads=shape.num_heads,
            output_projection_after_drop=loaded.family.output_projection_after_drop,
            attention_size=shape.attention_size,
            feed_forward_matrices=shape.feed_forward_matrices,
            decoder_layers=shape.decoder_layers if loaded.task == TASK_CLASSIFICATION else 0,
            relative_positions=shape.relative_positions,
            position_terms=shape.position_terms,
        ),
        labels=loaded.labels,
        input_names=input_names,
        output_name=OUTPUT_NAMES[loaded.task],
        max_length=loaded.max_length,
        vocab_size=int(loaded.config.vocab_size),
        pad_token=str(loaded.tokenizer.pad_token),
        pad_token_id=int(loaded.tokenizer.pad_token_id),
        pooling=lat.pooling if loaded.task == TASK_FEATURES else None,
        kept_positions_taps=[f"kept_positions.{layer}" for layer in range(shape.num_layers)],
        problem_type=loaded.problem_type,
        source=source,
        optimizations=list(optimizations),
        scoring=lat.scoring,
        generation=generation_settings(loaded) if loaded.task in (TASK_TEXT2TEXT, TASK_GENERATION) else None,
    )


def generation_settings(loaded: LoadedCheckpoint) -> dict:
    """What the runtime's generation loop needs to know beyond the graphs."""
    eos = loaded.config.eos_token_id
    settings = {
        "decoder_with_past": DECODER_WITH_PAST_FILE,
        "eos_token_id": int(eos[0] if isinstance(eos, (list, tuple)) else eos),
        "pad_token_id": int(loaded.tokenizer.pad_token_id),
    }
    if loaded.task == TASK_TEXT2TEXT:
        settings.update(decoder=DECODER_FILE, **seq2seq_token_rules(loaded))
    return settings


def seq2seq_token_rules(loaded: LoadedCheckpoint) -> dict:
    """The decoder start token, and the tokens transformers' ``generate`` forces or bans in every greedy or
    sampled call (its ForcedBOS, ForcedEOS, NoBadWords and SuppressTokens processors: mBART-50's target
    language, BART's </s> at the length limit, Marian's padding), read as ``generate`` reads them: the
    generation config first, then the model config.  Beam search and the other processors are not reproduced."""
    generation = getattr(loaded.model, "generation_config", None)

    def setting(name: str):
        value = getattr(generation, name, None)
        return value if value is not None else getattr(loaded.config, name, None)

    start = setting("decoder_start_token_id")
    start = setting("bos_token_id") if start is None else start
    if start is None:
        raise SettingsError("the checkpoint sets neither decoder_start_token_id nor bos_token_id; generation cannot start")
    rules = {"decoder_start_token_id": int(start)}
    if setting("forced_bos_token_id") is not None:
        rules["forced_bos_token_id"] = int(setting("forced_bos_token_id"))
    forced_eos = setting("forced_eos_token_id")
    if forced_eos is not None:
        rules["forced_eos_token_ids"] = [int(t) for t in (forced_eos if isinstance(forced_eos, (list, tuple)) else [forced_eos])]
    bad_words = [list(words) for words in (setting("bad_words_ids") or [])]
    if any(len(words) != 1 for words in bad_words):
        log.warning("bad_words_ids of several tokens are not applied by latexport's generation loop; single tokens are")
    suppressed = {int(words[0]) for words in bad_words if len(words) == 1} | {int(t) for t in setting("suppress_tokens") or []}
    if suppressed:
        rules["suppressed_token_ids"] = sorted(suppressed)
    return rules


def export_onnx(
    lat: LatencyAdjustableModel,
    metadata: ModelMetadata,
    path: Path,
    fusion_target: Optional[str] = None,
    exporter: str = TORCHSCRIPT,
) -> None:
    """Trace (``latexport.export.tracing``, with ``exporter``) and post-process into ``path``.

    With a ``fusion_target`` ONNX Runtime's transformer fusions run on the traced
    graph while the kept-positions taps are still outputs, so that no fusion
    can prune them away before validation reads them.

    k is never turned into a Python number outside the scripted selection, so
    nothing is baked in at the traced ratio; validation at several ratios proves it.
    """
    with_token_types = "token_type_ids" in metadata.input_names
    if metadata.task == TASK_GENERATION:
        wrapper = PrefillWrapper(lat).eval()
    else:
        wrapper = ExportWrapper(lat, with_token_type_ids=with_token_types, with_kept_positions=True).eval()
    batch, width = 2, min(16, metadata.max_length)
    input_ids = torch.full((batch, width), 5, dtype=torch.int64)
    attention_mask = torch.ones((batch, width), dtype=torch.int64)
    attention_mask[1, width // 2 :] = 0
    args = [input_ids, attention_mask]
    if with_token_types:
        args.append(torch.zeros((batch, width), dtype=torch.int64))
    args.append(torch.tensor(0.5, dtype=torch.float32))

    data_inputs = [name for name in metadata.input_names if name != "keep_ratio"]
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in data_inputs}
    dynamic_axes[metadata.output_name] = {0: "batch"}
    if metadata.task == TASK_TEXT2TEXT:
        dynamic_axes[metadata.output_name] = {0: "batch", 1: "kept"}
        dynamic_axes[ENCODER_MASK_OUTPUT] = {0: "batch", 1: "kept"}
    if metadata.task == TASK_GENERATION:
        dynamic_axes.update(cache_axes(metadata.profile.num_layers, "present"))
    for layer, tap in enumerate(metadata.kept_positions_taps):
        dynamic_axes[tap] = {0: "batch", 1: f"kept_{layer}"}

    traced = trace(
        wrapper, tuple(args), path, metadata.input_names, [*metadata.output_names, *metadata.kept_positions_taps],
        dynamic_axes, OPSET, exporter,
    )
    if fusion_target is not None:
        fuse_transformer_ops(traced.path, metadata.flops, fusion_target, lat.family.ort_model_type)

    def finish(model: ir.Model) -> None:
        hide_outputs(model, metadata.kept_positions_taps)
        set_metadata(model, metadata.to_props())

    save_traced(traced, path, finish)


def convert(
    checkpoint: str,
    out_dir: Path,
    *,
    task: Optional[str] = None,
    atol: float = 1e-4,
    power: Optional[float] = None,
    pooling: Optional[str] = None,
    overwrite: bool = False,
    keep_invalid: bool = False,
    tokenizer: Optional[str] = None,
    validation_ratios: tuple[float, ...] = DEFAULT_RATIOS,
    optimize: Union[bool, str, None] = None,
    quantize: Optional[str] = None,
    fp16: bool = False,
    scoring: Optional[ScoringRule] = None,
    exporter: str = TORCHSCRIPT,
    transformers_js: bool = False,
) -> ConvertResult:
    """Convert ``checkpoint`` into ``out_dir`` (model.onnx + tokenizer + config).

    ``optimize`` ("cpu" or "cuda"; True means "cpu") fuses the ops that pay on
    that target; ``quantize="dynamic"`` makes the weight MatMuls int8 and
    ``fp16`` halves the float tensors (for CUDA), each after the float32 graph
    has been validated (see ``latexport.export.optimize``).  Raises
    ``ValidationError`` (and writes nothing) when the graph does not match its
    references, unless ``keep_invalid``.  ``scoring`` replaces the family's rule
    for which word-vectors survive (``latexport.runtime.scoring``); the file
    records the one it uses.  ``exporter`` picks TorchScript (the default) or
    torch.export (``latexport.export.tracing``) for every graph of the directory.
    ``transformers_js`` adds the layout transformers.js loads (``latexport.export.transformers_js``).
    """
    if quantize is not None and quantize not in QUANTIZATION_MODES:
        raise SettingsError(f"quantize must be one of {QUANTIZATION_MODES}, got {quantize!r}")
    if exporter not in EXPORTERS:
        raise SettingsError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if quantize and fp16:
        raise SettingsError("choose int8 quantization or fp16, not both")
    optimize = "cpu" if optimize is True else (optimize or None)
    if optimize is not None and optimize not in OPTIMIZATION_TARGETS:
        raise SettingsError(f"optimize must be one of {OPTIMIZATION_TARGETS}, got {optimize!r}")
    out_dir = Path(out_dir)
    check_target_free(out_dir.absolute(), overwrite)
    loaded = load_checkpoint(checkpoint, task=task, tokenizer_source=tokenizer)
    if loaded.task in (TASK_TEXT2TEXT, TASK_GENERATION) and (optimize or quantize or fp16):
        raise SettingsError(
            f"--optimize, --quantize and --fp16 apply to single-graph tasks; a {loaded.task} "
            "directory's decoder graph would stay float32 and unfused, so they are not offered for it yet"
        )
    if transformers_js:
        check_transformers_js_task(loaded.task)
    trained = finetuned_profile(checkpoint, loaded.family.layer_shape(loaded.config).num_layers)
    pooling = pooling or sentence_transformers_pooling(checkpoint) or "mean"
    lat = build_model(loaded, power=power, pooling=pooling, scoring=scoring, profile=trained)
    source = str(Path(checkpoint).resolve()) if Path(checkpoint).is_dir() else checkpoint
    metadata = describe(loaded, lat, source, describe_variant(optimize, quantize, fp16))
    variant_report = None
    with atomic_directory(out_dir, overwrite=overwrite) as scratch:
        export_onnx(lat, metadata, scratch / MODEL_FILE, fusion_target=optimize, exporter=exporter)
        loaded.tokenizer.save_pretrained(scratch)
        loaded.config.save_pretrained(scratch)
        report = validate_export(
            scratch / MODEL_FILE, loaded, lat, metadata.output_name, metadata.kept_positions_taps, atol, validation_ratios
        )
        if metadata.task == TASK_TEXT2TEXT:
            export_seq2seq_decoders(loaded.model, lat.family, scratch, OPSET, exporter)
            if getattr(loaded.model, "generation_config", None) is not None:
                loaded.model.generation_config.save_pretrained(scratch)
            report.checks.extend(validate_generation(scratch, loaded, lat, atol, validation_ratios).checks)
        if metadata.task == TASK_GENERATION:
            export_decode_step(lat, scratch / DECODER_WITH_PAST_FILE, OPSET, exporter)
            report.checks.extend(validate_causal_generation(scratch, loaded, lat, atol, validation_ratios).checks)
        if not report.passed:
            if not keep_invalid:
                raise ValidationError(f"{checkpoint}: the exported graph failed validation", report.render())
            log.warning("validation failed; keeping %s anyway as asked:\n%s", out_dir, report.render())
        if quantize or fp16:
            transform, name = (quantize_dynamic_int8, "int8") if quantize else (convert_to_float16, "fp16")
            variant_report = reduce_precision(scratch / MODEL_FILE, loaded, metadata, validation_ratios, transform, name)
        if transformers_js:
            write_transformers_js_layout(scratch, MODEL_FILE)
    return ConvertResult(out_dir=out_dir, metadata=metadata, report=report, variant_report=variant_report)


def reduce_precision(
    model_path: Path, loaded: LoadedCheckpoint, metadata: ModelMetadata, ratios: tuple[float, ...], transform, name: str
) -> VariantReport:
    """Replace the validated float32 file by its int8 or fp16 version, and compare the two.

    The taps are outputs again while the tool rewrites the graph, so that it
    keeps the nodes behind them for the comparison of kept word-vectors.
    """
    float_path = model_path.with_name("model.float32.onnx")
    float_path.write_bytes(with_int64_outputs(model_path, metadata.kept_positions_taps))
    os.unlink(model_path)
    transform(float_path, model_path)
    finish_saved_model(model_path, metadata.kept_positions_taps, metadata.to_props())
    report = compare_variant(
        name,
        float_path,
        model_path,
        validation_inputs(loaded),
        metadata.output_name,
        metadata.kept_positions_taps,
        (1.0, *ratios),
        classification=metadata.task == TASK_CLASSIFICATION and metadata.problem_type != "regression",
    )
    os.unlink(float_path)
    return report
