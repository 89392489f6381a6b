"""ModernBERT: rotary positions, and global layers alternating with local
(sliding-window) ones, over contexts of up to 8,192 tokens.

What differs from BERT:

* No position embeddings: every layer rotates queries and keys by the
  word-vectors' original positions, as Llama's does, so a drop never shifts
  anyone.  Global and local layers rotate with their own base (theta).
* A local layer lets a word-vector attend to those within ``local_attention // 2``
  original positions of it: the window is rebuilt from the survivors' original
  positions in every layer, so a kept pair sees each other exactly when it did
  in the unpruned model, however many were dropped between them.
* ACC is the paper's plain sum in local layers too, not divided by how many
  queries see each key as in causal layers.  Under uniform attention every
  key away from the ends receives an expected sum of 1 whatever the local
  density of survivors (each query in its window spreads 1 over as many keys
  as there are queries), so the plain sum is already neutral to where earlier
  layers dropped; dividing by the number of queries would favour thinned
  regions in proportion to how thin they are.  Measured in graphs/README.md
  ("ModernBERT").
* Pre-LayerNorm (the first layer has none), and the attention module applies
  its output projection itself: the drop comes after the projection; the
  residual add and the gated feed-forward run on the kept word-vectors.
* The classifier pools by ``classifier_pooling``: [CLS] (always kept) or the
  mean of the kept word-vectors, then a dense + activation + LayerNorm head.

transformers 4.57 and 5 call the attention module differently: 4.x takes the
position ids and both masks and rotates inside the module, 5.x takes the
rotary tables and the one mask of the layer's type.  ``attend`` chooses by the
module's own signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import nn

from latexport.export.families.base import EncoderFamily, LayerShape
from latexport.export.pooling import pool

LOCAL = "sliding_attention"


@dataclass
class ModernBertAttentionInputs:
    """What a layer's attention needs; the window mask is built only by the local layers that use it."""

    valid: torch.Tensor
    positions: torch.Tensor
    half_window: int
    rotary: Callable  # (positions, layer type) -> (cos, sin): the model's rotary module (transformers 5)

    def key_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, 1, N] additive: padding and surplus keys masked."""
        return (1.0 - self.valid.to(dtype))[:, None, None, :] * torch.finfo(dtype).min

    def window_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, N, N] additive: valid keys within the half window of the query's original position."""
        distance = (self.positions.unsqueeze(2) - self.positions.unsqueeze(1)).abs()
        allowed = torch.logical_and(distance <= self.half_window, self.valid.unsqueeze(1)).unsqueeze(1)
        return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


class ModernBertFamily(EncoderFamily):
    name = "modernbert"
    model_types = ("modernbert",)
    output_projection_after_drop = False

    def uses_token_type_ids(self, config) -> bool:
        return False

    def layer_shape(self, config) -> LayerShape:
        """A gated (GLU) feed-forward: ``Wi`` makes input and gate, ``Wo`` projects back."""
        return replace(super().layer_shape(config), feed_forward_matrices=3)

    def core(self, model: nn.Module) -> nn.Module:
        return getattr(model, "model", model)

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        embeddings = core.embeddings  # its submodules, not its forward, which may torch.compile on a GPU
        return embeddings.drop(embeddings.norm(embeddings.tok_embeddings(input_ids)))

    def layers(self, core: nn.Module) -> nn.ModuleList:
        return core.layers

    def attention_inputs(self, core: nn.Module, valid: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        rotary_module = core.rotary_emb if hasattr(core, "rotary_emb") else None
        return ModernBertAttentionInputs(
            valid, positions, int(core.config.local_attention) // 2,
            lambda at, layer_type: rotary_module(core.embeddings.tok_embeddings.weight, at, layer_type),
        )

    def attend(self, layer: nn.Module, hidden: torch.Tensor, inputs, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention including its output projection; the drop comes after it."""
        attention, normed = layer.attn, layer.attn_norm(hidden)
        local = is_local(layer)
        mask = inputs.window_mask(hidden.dtype) if local else inputs.key_mask(hidden.dtype)
        if "position_embeddings" in inspect.signature(attention.forward).parameters:  # transformers 5
            layer_type = LOCAL if local else "full_attention"
            projected, probs = attention(normed, position_embeddings=inputs.rotary(inputs.positions, layer_type), attention_mask=mask)
        else:  # transformers 4: the module rotates by position ids and picks its mask by its window
            projected, probs = attention(
                normed, attention_mask=mask, sliding_window_mask=mask, position_ids=inputs.positions, output_attentions=True
            )
        return projected, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = residual + mixed
        return hidden + layer.mlp(layer.mlp_norm(hidden))

    def final_states(self, core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return core.final_norm(hidden)

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = pool(hidden, valid, model.config.classifier_pooling)
        return model.classifier(model.drop(model.head(pooled)))


def is_local(layer: nn.Module) -> bool:
    """A sliding-window layer: transformers 5 names its type, 4.x gives its attention a window."""
    attention_type = getattr(layer, "attention_type", None)
    if attention_type is not None:
        return attention_type == LOCAL
    return tuple(layer.attn.local_attention) != (-1, -1)
