"""The registry of supported model families: one place maps a config's
``model_type`` to the module that knows that architecture."""

from __future__ import annotations

from latexport.export.families.base import (
    TASK_CLASSIFICATION,
    TASK_FEATURES,
    TASK_GENERATION,
    TASK_TEXT2TEXT,
    TASKS,
    EncoderFamily,
    LayerShape,
)
from latexport.export.families.albert import AlbertFamily
from latexport.export.families.bart import BartFamily, MarianFamily, MBartFamily
from latexport.export.families.bert import BertFamily, ElectraFamily, RobertaFamily
from latexport.export.families.deberta_v2 import DebertaV2Family
from latexport.export.families.distilbert import DistilBertFamily
from latexport.export.families.gemma import Gemma2Family, Gemma3Family, GemmaFamily
from latexport.export.families.gpt2 import GPT2Family
from latexport.export.families.llama import LlamaFamily, MistralFamily, Phi3Family, Qwen2Family, Qwen3Family
from latexport.export.families.modernbert import ModernBertFamily
from latexport.export.families.mpnet import MPNetFamily
from latexport.export.families.t5 import T5Family
from latexport.runtime.errors import UnsupportedModelError

_FAMILIES: tuple[EncoderFamily, ...] = (
    BertFamily(), RobertaFamily(), ElectraFamily(), DistilBertFamily(), DebertaV2Family(), MPNetFamily(), AlbertFamily(),
    ModernBertFamily(), T5Family(), BartFamily(), MBartFamily(), MarianFamily(),
    GPT2Family(), LlamaFamily(), Qwen2Family(), Qwen3Family(), MistralFamily(), Phi3Family(),
    GemmaFamily(), Gemma2Family(), Gemma3Family(),
)
_BY_MODEL_TYPE = {model_type: family for family in _FAMILIES for model_type in family.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(config) -> EncoderFamily:
    """The family of a transformers config, or a clear error listing what is supported."""
    model_type = getattr(config, "model_type", None)
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"latexport cannot convert model_type {model_type!r}. "
            f"Supported model types: {', '.join(supported_model_types())}."
        )
    family.check_supported(config)
    return family


def family_named(name: str) -> EncoderFamily:
    for family in _FAMILIES:
        if family.name == name:
            return family
    raise UnsupportedModelError(f"unknown family {name!r}; known: {', '.join(f.name for f in _FAMILIES)}")


__all__ = [
    "EncoderFamily",
    "LayerShape",
    "TASKS",
    "TASK_CLASSIFICATION",
    "TASK_FEATURES",
    "TASK_TEXT2TEXT",
    "TASK_GENERATION",
    "family_for",
    "family_named",
    "supported_model_types",
]
