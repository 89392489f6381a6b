"""Llama (and SmolLM2): rotary position embeddings, applied in every layer.

Each layer rotates queries and keys by the original positions of the
word-vectors still alive, so dropping tokens never shifts anyone's position.
Grouped-query attention: the cache holds the key/value heads, not the query heads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from latexport.export.families.base import LayerShape
from latexport.export.families.decoder import DecoderFamily, cache_argument


class LlamaFamily(DecoderFamily):
    name = "llama"
    model_types = ("llama",)
    ort_model_type = "gpt2"  # ONNX Runtime's optimizer has no Llama type; not used for fusions

    def layer_shape(self, config) -> LayerShape:
        """The common shape, with the attention width heads x head_dim and a gated (3-matrix) feed-forward."""
        return replace(
            super().layer_shape(config),
            attention_size=config.num_attention_heads * self.head_dim(config),
            feed_forward_matrices=3,
        )

    @staticmethod
    def head_dim(config) -> int:
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    def max_positions(self, config) -> int:
        return int(config.max_position_embeddings)

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        return core.embed_tokens(input_ids)

    def layers(self, core: nn.Module) -> nn.ModuleList:
        return core.layers

    def rotary(self, core: nn.Module, positions: torch.Tensor):
        """(cos, sin) for these positions; the rotary module reads only dtype and device from its first argument."""
        return core.rotary_emb(core.embed_tokens.weight, positions)

    def attention_inputs(self, core: nn.Module, valid: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        return self.causal_mask(valid, dtype), self.rotary(core, positions)

    def step_inputs(self, core: nn.Module, key_valid: torch.Tensor, query_positions: torch.Tensor, dtype: torch.dtype):
        return self.step_mask(key_valid, query_positions.shape[1], dtype), self.rotary(core, query_positions)

    def attend(self, layer: nn.Module, hidden: torch.Tensor, inputs, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        mask, rotary = inputs
        projected, probs = layer.self_attn(
            layer.input_layernorm(hidden), position_embeddings=rotary, attention_mask=mask,
            **cache_argument(layer.self_attn, cache),
        )
        return projected, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = residual + mixed
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def final_states(self, core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return core.norm(hidden)
