"""Loading a Hugging Face checkpoint (local directory or hub id) with clear errors.

Everything that can be wrong with a checkpoint (missing weights, a truncated
safetensors file, a bad config.json, an architecture we do not support, a
partial state dict) becomes a ``CheckpointError`` or ``UnsupportedModelError``
that says which file and what to do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from latexport.export.families import (
    TASK_CLASSIFICATION,
    TASK_FEATURES,
    TASK_GENERATION,
    TASK_TEXT2TEXT,
    TASKS,
    EncoderFamily,
    family_for,
)
from latexport.runtime.errors import CheckpointError, SettingsError, UnsupportedModelError
from latexport.runtime.profile import EliminationProfile

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    config: object
    model: object
    tokenizer: object
    family: EncoderFamily
    task: str

    @property
    def labels(self) -> list[str]:
        if self.task != TASK_CLASSIFICATION:
            return []
        id2label = getattr(self.config, "id2label", None) or {}
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(self.config.num_labels)]

    @property
    def problem_type(self) -> Optional[str]:
        if self.task != TASK_CLASSIFICATION:
            return None
        if getattr(self.config, "problem_type", None):
            return self.config.problem_type
        return "regression" if self.config.num_labels == 1 else "single_label_classification"

    @property
    def max_length(self) -> int:
        limit = self.family.max_positions(self.config)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None) or limit
        return int(min(limit, tokenizer_limit))


def infer_task(config, family: EncoderFamily) -> str:
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return TASK_CLASSIFICATION
    if TASK_TEXT2TEXT in family.tasks and any(name.endswith("ForConditionalGeneration") for name in architectures):
        return TASK_TEXT2TEXT
    if len(family.tasks) == 1:  # a family with one task (Marian: MarianMTModel translates)
        return family.tasks[0]
    if TASK_GENERATION in family.tasks:  # a decoder-only checkpoint is for generation unless it says otherwise
        return TASK_GENERATION
    return TASK_FEATURES


def load_config(checkpoint: str):
    from transformers import AutoConfig

    _check_local_directory(checkpoint)
    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{checkpoint}: config.json is not valid JSON ({error})") from error
    except (OSError, ValueError, KeyError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "model_type" in message or "Unrecognized model" in message:
            raise CheckpointError(f"{checkpoint}: config.json does not name a known model_type ({message})") from error
        raise CheckpointError(f"{checkpoint}: cannot read its config ({message})") from error
    return config


def load_checkpoint(checkpoint: str, task: Optional[str] = None, tokenizer_source: Optional[str] = None) -> LoadedCheckpoint:
    """Load config, eager-attention model and fast tokenizer for export or fine-tuning."""
    config = load_config(checkpoint)
    family = family_for(config)
    task = task or infer_task(config, family)
    if task not in TASKS:
        raise UnsupportedModelError(f"latexport cannot export task {task!r}. Supported tasks: {', '.join(TASKS)}.")
    if task not in family.tasks:
        raise UnsupportedModelError(
            f"latexport cannot export task {task!r} for model_type {config.model_type!r}; "
            f"this family supports: {', '.join(family.tasks)}."
        )
    model = _load_model(checkpoint, family.model_class(task))
    tokenizer = load_tokenizer(tokenizer_source or checkpoint)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2 and Llama tokenizers have no padding token; padding is masked, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedCheckpoint(config=model.config, model=model, tokenizer=tokenizer, family=family, task=task)


def _load_model(checkpoint: str, auto_class):
    try:
        model, info = auto_class.from_pretrained(checkpoint, attn_implementation="eager", output_loading_info=True)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as error:
        raise CheckpointError(f"{checkpoint}: cannot load its weights ({_first_line(error)})") from error
    except Exception as error:  # safetensors raises its own SafetensorError for truncated files
        if type(error).__name__ == "SafetensorError":
            raise CheckpointError(f"{checkpoint}: the safetensors weights file is corrupt or truncated ({error})") from error
        raise
    head_prefixes = ("classifier", "pre_classifier", "pooler", "score", "classification_head")
    missing_body = [key for key in info.get("missing_keys", []) if not _is_head_key(key, head_prefixes)]
    if missing_body:
        shown = ", ".join(missing_body[:5]) + (" ..." if len(missing_body) > 5 else "")
        raise CheckpointError(
            f"{checkpoint}: the weights file is partial, {len(missing_body)} encoder weights are missing ({shown})"
        )
    if info.get("missing_keys"):
        log.warning(
            "%s: the task head was not in the checkpoint and is newly initialised (%s); fine-tune before use",
            checkpoint,
            ", ".join(info["missing_keys"][:4]),
        )
    return model.eval()


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(
            f"{source}: no usable tokenizer ({_first_line(error)}); pass --tokenizer with a directory or hub id that has one"
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{source}: only a slow tokenizer is available; the runtime needs tokenizer.json")
    return tokenizer


def sentence_transformers_pooling(checkpoint: str) -> Optional[str]:
    """'mean' or 'cls' when a sentence-transformers checkpoint says how it pools."""
    config_path = Path(checkpoint) / "1_Pooling" / "config.json"
    if not config_path.is_file():
        return None
    try:
        modes = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


def finetuned_profile(checkpoint: str, num_layers: int) -> Optional[EliminationProfile]:
    """The elimination profile a `latexport finetune` or `finetune-lm` run trained for, so convert exports
    the same one: its recorded ``profile`` (delay included), else its ``power`` (records from before the delay)."""
    settings_path = Path(checkpoint) / "latexport_finetune.json"
    if not settings_path.is_file():
        return None
    try:
        record = json.loads(settings_path.read_text())
        if "profile" in record:
            profile = EliminationProfile.from_json(json.dumps(record["profile"]))
            return profile if profile.num_layers == num_layers else None
        return EliminationProfile(num_layers, power=float(record["power"]))
    except (OSError, ValueError, KeyError, TypeError, SettingsError):
        return None


def _check_local_directory(checkpoint: str) -> None:
    path = Path(checkpoint)
    looks_local = checkpoint.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint directory")
    if path.is_dir() and not (path / "config.json").is_file():
        raise CheckpointError(f"{checkpoint}: config.json is missing; is this a Hugging Face checkpoint directory?")


def _is_head_key(key: str, prefixes: tuple[str, ...]) -> bool:
    parts = key.split(".")
    return any(part in prefixes for part in parts[:2])


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
