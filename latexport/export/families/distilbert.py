"""DistilBERT: its attention module applies the output projection itself.

So word-vectors are dropped after the projection and before the residual
LayerNorm; everything after that runs on the kept ones.

The attention module's call changed in transformers 5: 4.x takes
``query``/``key``/``value`` and a 0/1 ``mask`` (1 = attend), 5.x takes the hidden
states and an additive ``attention_mask``, as BERT's does.  Both are handled
here, chosen by the module's own signature.
"""

from __future__ import annotations

import inspect
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

    def attention_inputs(self, core: nn.Module, valid: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        if _takes_query_key_value(self.layers(core)[0].attention):
            return valid  # transformers 4: DistilBERT masks with (mask == 0) itself
        return self.attention_mask(valid, dtype)

    def attend(
        self, layer: nn.Module, hidden: torch.Tensor, mask, cache=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if _takes_query_key_value(layer.attention):
            return layer.attention(query=hidden, key=hidden, value=hidden, mask=mask, output_attentions=True)
        return layer.attention(hidden, attention_mask=mask)

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        attention_output = layer.sa_layer_norm(mixed + residual)
        return layer.output_layer_norm(layer.ffn(attention_output) + attention_output)

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.relu(model.pre_classifier(hidden[:, 0]))
        return model.classifier(model.dropout(pooled))


def _takes_query_key_value(attention: nn.Module) -> bool:
    """transformers 4's DistilBERT attention (``forward(query, key, value, mask, ...)``)."""
    return "query" in inspect.signature(attention.forward).parameters
