"""Llama and the decoders shaped like it: rotary position embeddings, applied in every layer.

Each layer rotates queries and keys by the original positions of the
word-vectors still alive, so dropping tokens never shifts anyone's position.
Grouped-query attention: the cache holds the key/value heads, not the query heads.

The family's relatives differ only inside transformers' own modules, which
latexport calls whole, or in the few hooks they override:

* Qwen2 / Qwen2.5: biases on the query, key and value projections (inside the
  attention module); sliding windows in the layers ``layer_types`` names.
* Qwen3: per-head RMSNorm on queries and keys (inside the attention module).
* Mistral: sliding windows in every layer when the config sets ``sliding_window``.
* Phi-3: fused QKV and gate/up projections (inside the modules), partial rotary
  (the rotary module returns tables for the rotated share of each head), and a
  sliding window in every layer when set.
* Gemma 2 / 3: ``latexport.export.families.gemma``.
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

    def is_sliding(self, layer: nn.Module) -> bool:
        attention = layer.self_attn
        return self.sliding_window(attention.config, attention.layer_idx) is not None

    def rotary(self, core: nn.Module, positions: torch.Tensor):
        """(cos, sin) for these positions; the rotary module reads only dtype and device from its first argument."""
        return core.rotary_emb(core.embed_tokens.weight, positions)

    def layer_rotary(self, layer: nn.Module, inputs):
        """The (cos, sin) this layer rotates by (one table for every layer here)."""
        return inputs.rotary

    def attend(self, layer: nn.Module, hidden: torch.Tensor, inputs, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        projected, probs = layer.self_attn(
            layer.input_layernorm(hidden), position_embeddings=self.layer_rotary(layer, inputs),
            attention_mask=self.layer_mask(layer, inputs), **cache_argument(layer.self_attn, cache),
        )
        return projected, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = residual + mixed
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def final_states(self, core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return core.norm(hidden)


class Qwen2Family(LlamaFamily):
    name = "qwen2"
    model_types = ("qwen2",)


class Qwen3Family(LlamaFamily):
    name = "qwen3"
    model_types = ("qwen3",)


class MistralFamily(LlamaFamily):
    name = "mistral"
    model_types = ("mistral",)


class Phi3Family(LlamaFamily):
    name = "phi3"
    model_types = ("phi3",)
