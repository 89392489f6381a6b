"""DistilBERT: its attention module applies the output projection itself.

So word-vectors are dropped after the projection and before the residual
LayerNorm; everything after that runs on the kept ones.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from latexport.export.families.base import EncoderFamily, LayerShape


class DistilBertFamily(EncoderFamily):
    name = "distilbert"
    model_types = ("distilbert",)
    output_projection_after_drop = False

    def uses_token_type_ids(self, config) -> bool:
        return False

    def layer_shape(self, config) -> LayerShape:
        return LayerShape(
            num_layers=config.n_layers, hidden_size=config.dim, intermediate_size=config.hidden_dim, num_heads=config.n_heads
        )

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        return core.embeddings(input_ids)

    def layers(self, core: nn.Module) -> nn.ModuleList:
        return core.transformer.layer

    def attention_mask(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return valid  # DistilBERT masks with (mask == 0) itself

    def attend(
        self, layer: nn.Module, hidden: torch.Tensor, mask, cache=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, probs = layer.attention(query=hidden, key=hidden, value=hidden, mask=mask, output_attentions=True)
        return mixed, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        attention_output = layer.sa_layer_norm(mixed + residual)
        return layer.output_layer_norm(layer.ffn(attention_output) + attention_output)

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.relu(model.pre_classifier(hidden[:, 0]))
        return model.classifier(model.dropout(pooled))
