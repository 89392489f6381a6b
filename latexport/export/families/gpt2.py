"""GPT-2: learned position embeddings, added once before the first layer."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from latexport.export.families.base import LayerShape
from latexport.export.families.decoder import DecoderFamily, cache_argument


class GPT2Family(DecoderFamily):
    name = "gpt2"
    model_types = ("gpt2",)
    ort_model_type = "gpt2"

    def layer_shape(self, config) -> LayerShape:
        return LayerShape(
            num_layers=config.n_layer,
            hidden_size=config.n_embd,
            intermediate_size=config.n_inner or 4 * config.n_embd,
            num_heads=config.n_head,
        )

    def max_positions(self, config) -> int:
        return int(config.n_positions)

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        return core.drop(core.wte(input_ids) + core.wpe(positions))

    def layers(self, core: nn.Module) -> nn.ModuleList:
        return core.h

    def attend(self, layer: nn.Module, hidden: torch.Tensor, inputs, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        projected, probs = layer.attn(
            layer.ln_1(hidden), attention_mask=inputs.mask, output_attentions=True, **cache_argument(layer.attn, cache)
        )
        return projected, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = residual + mixed
        return hidden + layer.mlp(layer.ln_2(hidden))

    def final_states(self, core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return core.ln_f(hidden)
