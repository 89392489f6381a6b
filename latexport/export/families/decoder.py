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
* The cache argument of transformers' attention modules is ``past_key_values``
  in 4.x and ``cache`` in 5.x (``cache_argument``).
"""

from __future__ import annotations

import inspect

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

    def causal_mask(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, N, N] additive: query i sees the valid keys j <= i (alive order is original order)."""
        width = valid.shape[1]
        columns = torch.arange(width, device=valid.device)
        before = columns.unsqueeze(0) <= columns.unsqueeze(1)  # [query, key]
        allowed = torch.logical_and(before.unsqueeze(0), valid.unsqueeze(1)).unsqueeze(1)
        return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min

    def step_mask(self, key_valid: torch.Tensor, new_tokens: int, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, T, P + T] additive, for T new tokens over the cache (its real entries)
        and, causally, over each other."""
        keys = key_valid.shape[1]
        past = keys - new_tokens
        key_index = torch.arange(keys, device=key_valid.device).unsqueeze(0)
        query_index = torch.arange(new_tokens, device=key_valid.device).unsqueeze(1) + past
        allowed = torch.logical_and((key_index <= query_index).unsqueeze(0), key_valid.unsqueeze(1)).unsqueeze(1)
        return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min

    def step_inputs(self, core: nn.Module, key_valid: torch.Tensor, query_positions: torch.Tensor, dtype: torch.dtype):
        """What ``attend`` needs for a decode step of ``query_positions.shape[1]`` new tokens."""
        return self.step_mask(key_valid, query_positions.shape[1], dtype)

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
        return model.lm_head(self.last_token_states(hidden, valid))

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.lm_head


def cache_argument(attention: nn.Module, cache) -> dict:
    """The keyword that hands ``cache`` to this attention module: ``cache`` (transformers 5)
    or ``past_key_values`` (4.x; 5.x still maps it, with a deprecation, until 5.40)."""
    keyword = "cache" if "cache" in inspect.signature(attention.forward).parameters else "past_key_values"
    return {keyword: cache}
