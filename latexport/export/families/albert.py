"""ALBERT: one layer shared across depth, and a factorised embedding.

What differs from BERT:

* ``num_hidden_layers`` applications of ``num_hidden_groups`` layer groups of
  ``inner_group_num`` layers each (ALBERT's own releases: one group of one
  layer).  Each *application* is a pruning layer with its own drop and its own
  place in the profile, so ``layers`` returns the applied ``AlbertLayer``
  modules in transformers' order, the same module repeated.
* Embeddings are ``embedding_size`` wide and projected to the hidden size
  (``embedding_hidden_mapping_in``) before the first layer.
* ``AlbertAttention`` applies its output projection, the residual and the
  LayerNorm itself: the drop comes after all three, and the feed-forward with
  its LayerNorm runs on the kept word-vectors.
* The head reads [CLS] through a dense + tanh pooler.

transformers 4's attention returns the probabilities only when asked
(``output_attentions``); 5's always returns them and takes no such argument.
Both are handled here, chosen by the module's own signature.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn

from latexport.export.families.base import EncoderFamily, LayerShape


class AlbertFamily(EncoderFamily):
    name = "albert"
    model_types = ("albert",)
    output_projection_after_drop = False

    def layer_shape(self, config) -> LayerShape:
        return LayerShape(
            num_layers=config.num_hidden_layers * config.inner_group_num,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=config.num_attention_heads,
        )

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        embedded = core.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return core.encoder.embedding_hidden_mapping_in(embedded)

    def layers(self, core: nn.Module) -> list[nn.Module]:
        """Every application of a shared layer, in the order ``AlbertTransformer`` applies them."""
        config, groups = core.config, core.encoder.albert_layer_groups
        applications_per_group = config.num_hidden_layers / config.num_hidden_groups
        return [
            layer
            for application in range(config.num_hidden_layers)
            for layer in groups[int(application / applications_per_group)].albert_layers
        ]

    def attend(
        self, layer: nn.Module, hidden: torch.Tensor, mask, cache=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole attention module: projection, residual and LayerNorm are per word-vector."""
        if "output_attentions" in inspect.signature(layer.attention.forward).parameters:  # transformers 4
            return layer.attention(hidden, attention_mask=mask, output_attentions=True)
        return layer.attention(hidden, attention_mask=mask)

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``mixed`` already holds the residual (``AlbertAttention`` adds it)."""
        return layer.full_layer_layer_norm(layer.ff_chunk(mixed) + mixed)

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        core = self.core(model)
        pooled = core.pooler_activation(core.pooler(hidden[:, 0]))
        return model.classifier(model.dropout(pooled))
