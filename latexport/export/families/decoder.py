"""What decoder-only (causal) families share: GPT-2 and Llama.

* Positions: a token's position is its index among the row's real tokens
  (``cumsum(attention_mask) - 1``), so left and right padding give the same
  positions, as transformers' ``generate`` computes them.  Kept tokens keep
  their original positions: GPT-2 adds its position embeddings before the
  first layer; Llama rotates queries and keys by them in every layer.
* Causal mask: among the alive word-vectors, which stay in their original
  order, a query sees the keys at or before it; padding and surplus keys
  are masked.
* The last real token is always kept: it carries the next-token prediction
  and the classifier's input.  A classifier scores by ACC normalised by the
  number of valid queries that can see each key (``selection.acc_scores``);
  a prompt pass by the attention of its last positions, with its first and
  last tokens protected (``latexport.runtime.scoring``).
* The drop follows the attention output projection (pre-LN blocks).
* Sliding windows (Mistral, Phi-3, Qwen2, Gemma): a query sees the keys less
  than ``sliding_window`` original positions before it, as transformers'
  ``sliding_window_overlay`` decides on an unpadded row.  Positions, not columns,
  decide, so a window stays a window after drops.  The decode step needs the
  positions of every cached word-vector for this, so each layer's cache mask
  holds ``1 + position`` for a real word-vector and 0 for an empty slot
  (``mask > 0`` is still the plain mask).
* The cache argument of transformers' attention modules is ``past_key_values``
  in 4.x and ``cache`` in 5.x (``cache_argument``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from latexport.export.families.base import (
    TASK_CLASSIFICATION,
    TASK_GENERATION,
    EncoderFamily,
)
from latexport.runtime.profile import EliminationProfile, prompt_pass_profile
from latexport.runtime.scoring import DECODER_PROMPT_RULE, ScoringRule


class DecoderFamily(EncoderFamily):
    causal = True
    output_projection_after_drop = False
    tasks = (TASK_CLASSIFICATION, TASK_GENERATION)

    def uses_token_type_ids(self, config) -> bool:
        return False

    def scoring_rule(self, task: str) -> ScoringRule:
        """A prompt pass keeps what the next tokens need (``DECODER_PROMPT_RULE``); a classifier, ACC."""
        return DECODER_PROMPT_RULE if task == TASK_GENERATION else ScoringRule()

    def default_profile(self, num_layers: int, task: str) -> EliminationProfile:
        """A prompt pass drops by ``prompt_pass_profile`` (``latexport.runtime.profile``); a classifier, as encoders do."""
        if task == TASK_GENERATION:
            return prompt_pass_profile(num_layers)
        return super().default_profile(num_layers, task)

    def model_class(self, task: str):
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
        )

        return AutoModelForSequenceClassification if task == TASK_CLASSIFICATION else AutoModelForCausalLM

    def initial_positions(self, valid: torch.Tensor) -> torch.Tensor:
        return (torch.cumsum(valid.to(torch.int64), dim=1) - 1).clamp(min=0)

    # --- masks: causal, padded, and windowed by original positions ---------------
    def sliding_window(self, config, layer_index: int) -> Optional[int]:
        """Layer ``layer_index``'s window, or None for full attention.  Configs that name
        each layer's type (``layer_types``: Qwen2, Gemma) slide only in their
        "sliding_attention" layers; others (Mistral, Phi-3) slide in every layer when they
        set ``sliding_window``."""
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if window is None or layer_types is None:
            return window
        return window if layer_types[layer_index] == "sliding_attention" else None

    def model_window(self, config) -> Optional[int]:
        """The sliding window if any layer slides (a model has one window size), else None."""
        layers = self.layer_shape(config).num_layers
        return next((w for w in (self.sliding_window(config, i) for i in range(layers)) if w is not None), None)

    def is_sliding(self, layer: nn.Module) -> bool:
        """Whether this decoder layer attends within a sliding window (families without windows: never)."""
        return False

    def attention_inputs(self, core: nn.Module, valid: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        """The prompt pass: among the alive word-vectors, which stay in their original order,
        query i sees the valid keys j <= i (and, in a windowed layer, within its window)."""
        width = valid.shape[1]
        columns = torch.arange(width, device=valid.device)
        allowed = torch.logical_and((columns.unsqueeze(0) <= columns.unsqueeze(1)).unsqueeze(0), valid.unsqueeze(1))
        return self._inputs(core, allowed, positions, positions, dtype)

    def step_inputs(self, core: nn.Module, key_slots: torch.Tensor, query_positions: torch.Tensor, dtype: torch.dtype):
        """A decode step of T new tokens (``query_positions`` [B, T]) over the cache and themselves:
        ``key_slots`` [B, P + T] is the cache mask, 1 + position, 0 for an empty slot."""
        key_positions = key_slots - 1
        allowed = torch.logical_and(
            (key_slots > 0).unsqueeze(1), key_positions.unsqueeze(1) <= query_positions.unsqueeze(2)
        )
        return self._inputs(core, allowed, query_positions, key_positions, dtype)

    def _inputs(self, core, allowed, query_positions, key_positions, dtype) -> "CausalAttentionInputs":
        window = self.model_window(core.config)
        window_mask = None
        if window is not None:
            window_mask = additive_mask(torch.logical_and(allowed, within_window(query_positions, key_positions, window)), dtype)
        return CausalAttentionInputs(additive_mask(allowed, dtype), window_mask, self.rotary(core, query_positions))

    def rotary(self, core: nn.Module, positions: torch.Tensor):
        """(cos, sin) for these positions in families with rotary embeddings; None otherwise."""
        return None

    def layer_mask(self, layer: nn.Module, inputs: "CausalAttentionInputs") -> torch.Tensor:
        """The additive mask of this layer: windowed in a sliding layer."""
        return inputs.window_mask if self.is_sliding(layer) else inputs.mask

    def always_keep(self, valid: torch.Tensor) -> torch.Tensor:
        """The last real token of each row."""
        columns = torch.arange(valid.shape[1], device=valid.device).unsqueeze(0)
        last = torch.where(valid, columns, torch.zeros_like(columns)).max(dim=1, keepdim=True).values
        return torch.logical_and(columns == last, valid)

    def last_token_states(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B, D]: each row's last real (always kept) word-vector."""
        columns = torch.arange(valid.shape[1], device=valid.device).unsqueeze(0)
        last = torch.where(valid, columns, torch.zeros_like(columns)).max(dim=1).values
        rows = torch.arange(valid.shape[0], device=valid.device)
        return hidden[rows, last]

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """``*ForSequenceClassification`` scores the last real token."""
        return model.score(self.last_token_states(hidden, valid))

    def next_token_logits(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.logits(model, self.last_token_states(hidden, valid))

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The language-model head on final states (Gemma: then soft-capped)."""
        return model.lm_head(hidden)


@dataclass
class CausalAttentionInputs:
    """What a causal layer's ``attend`` needs: the additive masks [B, 1, T, N] and the rotary tables."""

    mask: torch.Tensor
    #: The same, within the sliding window too; None when no layer of the model slides.
    window_mask: Optional[torch.Tensor]
    #: (cos, sin) for the queries' positions, or None (GPT-2); Gemma 3: one pair per layer type.
    rotary: Any = None


def within_window(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int) -> torch.Tensor:
    """[B, T, N]: whether each key is less than ``window`` original positions before each query
    (transformers' ``sliding_window_overlay`` on an unpadded row; causality is masked apart)."""
    return (query_positions.unsqueeze(2) - key_positions.unsqueeze(1)) < window


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, N] bool -> [B, 1, T, N] additive, as transformers' eager attention adds it."""
    return (1.0 - allowed.unsqueeze(1).to(dtype)) * torch.finfo(dtype).min


def cache_argument(attention: nn.Module, cache) -> dict:
    """The keyword that hands ``cache`` to this attention module: ``cache`` (transformers 5)
    or ``past_key_values`` (4.x; 5.x still maps it, with a deprecation, until 5.40)."""
    keyword = "cache" if "cache" in inspect.signature(attention.forward).parameters else "past_key_values"
    return {keyword: cache}
