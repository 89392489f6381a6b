"""Gemma, Gemma 2 and Gemma 3 (text): Llama-shaped decoders with a few additions.

Each generation extends the one before it, and overrides only what differs
from Llama (rotary by original positions, grouped-query attention, sliding
windows by original positions: ``latexport.export.families.llama``):

* Gemma: the embeddings are scaled by sqrt(hidden_size) in the hidden dtype.
  transformers 4.57 scales in ``GemmaModel.forward`` (Gemma 3: in its
  ``Gemma3TextScaledWordEmbedding``); 5.x in every version's embedding
  module.  ``embed`` tells them apart by the module's ``embed_scale``.
  RMSNorm adds 1 to its weight: inside transformers' norm modules.
* Gemma 2: four norms a layer.  The attention output is normed before the
  residual add, and the feed-forward is normed before and after, so the
  drop (after the attention output projection) is followed by
  ``post_attention_layernorm``.  Attention logits are soft-capped
  (``attn_logit_softcapping``) and scaled by ``query_pre_attn_scalar``
  inside transformers' attention module: the probabilities it returns, which
  ACC sums, are the capped ones.  The language-model head's logits are
  soft-capped (``final_logit_softcapping``); ``*ForSequenceClassification``
  does not cap its scores, and neither does ``classify``.  Local (sliding)
  and global layers alternate by ``config.layer_types``.
* Gemma 3: per-head query/key norms (inside the attention module); local and
  global layers rotate with tables of their own.  transformers 4.57 has two
  rotary modules (``rotary_emb``, ``rotary_emb_local``), 5.x one that takes
  the layer type; ``rotary`` tells them apart by the ``rotary_emb_local``
  attribute and returns one table per layer type.  Configs with
  ``use_bidirectional_attention`` (EmbeddingGemma) are refused.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from latexport.export.families.llama import LlamaFamily
from latexport.runtime.errors import UnsupportedModelError

LOCAL = "sliding_attention"
GLOBAL = "full_attention"


class GemmaFamily(LlamaFamily):
    name = "gemma"
    model_types = ("gemma",)

    def check_supported(self, config) -> None:
        if getattr(config, "use_bidirectional_attention", False):
            raise UnsupportedModelError(
                f"{config.model_type} with use_bidirectional_attention (an encoder such as EmbeddingGemma) is not "
                "supported: latexport converts Gemma as a causal decoder."
            )

    def core(self, model: nn.Module) -> nn.Module:
        """Every Gemma task model holds its decoder at ``model``; ``base_model`` would not do, since
        4.57's Gemma3ForCausalLM names a ``language_model`` prefix that it does not have."""
        return model.model

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        embeddings = core.embed_tokens(input_ids)
        if hasattr(core.embed_tokens, "embed_scale"):  # a scaled embedding module scales itself
            return embeddings
        return embeddings * torch.tensor(core.config.hidden_size**0.5, dtype=embeddings.dtype)


class Gemma2Family(GemmaFamily):
    name = "gemma2"
    model_types = ("gemma2",)

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = residual + layer.post_attention_layernorm(mixed)
        return hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        logits = model.lm_head(hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap


class Gemma3Family(Gemma2Family):
    name = "gemma3"
    model_types = ("gemma3_text",)

    def rotary(self, core: nn.Module, positions: torch.Tensor) -> dict:
        """{layer type: (cos, sin)} for these positions."""
        like = core.embed_tokens.weight
        if hasattr(core, "rotary_emb_local"):  # transformers 4: one module per layer type
            return {GLOBAL: core.rotary_emb(like, positions), LOCAL: core.rotary_emb_local(like, positions)}
        return {layer_type: core.rotary_emb(like, positions, layer_type) for layer_type in set(core.config.layer_types)}

    def layer_rotary(self, layer: nn.Module, inputs):
        attention = layer.self_attn
        return inputs.rotary[attention.config.layer_types[attention.layer_idx]]
