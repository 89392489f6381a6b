"""BERT and the encoders built from the same layers: RoBERTa, XLM-RoBERTa, ELECTRA.

MiniLM checkpoints such as all-MiniLM-L6-v2 are plain ``BertModel``s.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from latexport.export.families.base import EncoderFamily


class BertFamily(EncoderFamily):
    name = "bert"
    model_types = ("bert",)


class RobertaFamily(EncoderFamily):
    """RoBERTa's head is a two-layer classifier on <s>; it has no pooler."""

    name = "roberta"
    model_types = ("roberta", "xlm-roberta", "camembert")

    def max_positions(self, config) -> int:
        # Positions start after the padding index, so two slots are not usable.
        return int(config.max_position_embeddings) - int(config.pad_token_id) - 1

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return model.classifier(hidden)


class ElectraFamily(EncoderFamily):
    """ELECTRA may project small embeddings up to the hidden size."""

    name = "electra"
    model_types = ("electra",)

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        hidden = core.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if hasattr(core, "embeddings_project"):
            hidden = core.embeddings_project(hidden)
        return hidden

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return model.classifier(hidden)
