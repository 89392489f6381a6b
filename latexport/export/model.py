"""The Latency Adjustable Transformer in PyTorch: a layer loop around a
transformers model that drops the lowest-ACC word-vectors in every layer.

This module is both the PyTorch reference the ONNX graph is validated against
and the module that is exported; fine-tuning trains through it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import nn

from latexport.export.families import (
    TASK_CLASSIFICATION,
    TASK_FEATURES,
    TASK_GENERATION,
    TASK_TEXT2TEXT,
    EncoderFamily,
)
from latexport.export.pooling import POOLINGS, pool
from latexport.export.selection import (
    copy_sources,
    keep_counts,
    real_tokens_first,
    relative_position_bias,
    sanitize_keep_ratio,
    select_tokens,
    select_tokens_and_bias,
    select_tokens_and_bias_for_export,
    select_tokens_and_bias_unbacked,
    select_tokens_for_export,
    select_tokens_unbacked,
)
from latexport.runtime.profile import EliminationProfile
from latexport.runtime.scoring import ScoringRule


@dataclass
class LatencyAdjustableOutput:
    """``output`` is logits [B, labels], a pooled embedding [B, hidden], or for
    text2text-generation the encoder's kept states [B, K, hidden], whose mask
    ([B, K], 1 for a real word-vector) is ``attention_mask``.

    ``kept_positions[l]`` is [B, K_l]: the positions of the word-vectors alive
    after layer ``l``, in order, with -1 in surplus slots.  A position is the
    token's index among its row's real tokens, whichever side the row was
    padded on (for a right-padded row: its column).
    """

    output: torch.Tensor
    kept_positions: list[torch.Tensor] = field(default_factory=list)
    attention_mask: Optional[torch.Tensor] = None
    #: text-generation with a ``cache``: ``cache_masks[l]`` [B, N_l] marks the real word-vectors among
    #: those that entered layer ``l`` (whose keys and values the cache holds) with 1 + their
    #: original position, and empty slots with 0 (the decode step's windows need the positions).
    cache_masks: list[torch.Tensor] = field(default_factory=list)


class LatencyAdjustableModel(nn.Module):
    """Wraps a transformers encoder; ``forward`` takes the runtime ``keep_ratio``."""

    def __init__(
        self,
        hf_model: nn.Module,
        family: EncoderFamily,
        profile: EliminationProfile,
        task: str = TASK_CLASSIFICATION,
        pooling: str = "mean",
        scoring: Optional[ScoringRule] = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if profile.num_layers != len(family.layers(family.core(hf_model))):
            raise ValueError(
                f"profile has {profile.num_layers} layers but the model has {len(family.layers(family.core(hf_model)))}"
            )
        self.hf_model = hf_model
        self.family = family
        self.profile = profile
        self.task = task
        self.pooling = pooling
        self.exponents = profile.exponents()
        #: Which word-vectors each layer keeps (``latexport.runtime.scoring``); None: the family's rule for the task.
        self.scoring = family.scoring_rule(task) if scoring is None else scoring
        self.scoring.check(family.layer_shape(hf_model.config).num_heads, family.causal)

    def use_profile(self, profile: EliminationProfile) -> None:
        """Drop by another profile of the same depth from the next call on (training
        draws one per pruned pass, so the model serves whichever ``tune`` chooses)."""
        if profile.num_layers != self.profile.num_layers:
            raise ValueError(f"profile has {profile.num_layers} layers but the model has {self.profile.num_layers}")
        self.profile = profile
        self.exponents = profile.exponents()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        keep_ratio: Union[float, torch.Tensor] = 1.0,
        cache=None,
    ) -> LatencyAdjustableOutput:
        """``keep_ratio``: a scalar, or one ratio per row ([batch]).  ``cache`` (text-generation,
        ``latexport.export.decoding.LayerCache``) receives every layer's keys and values of the
        word-vectors that entered it."""
        family = self.family
        core = family.core(self.hf_model)
        if not torch.is_tensor(keep_ratio):
            keep_ratio = torch.tensor(float(keep_ratio))
        # A scalar or one ratio per row, [batch]: flat, it broadcasts against each row's length either way.
        ratio = sanitize_keep_ratio(keep_ratio).reshape(-1)
        batch, width = input_ids.shape

        order = real_tokens_first(attention_mask > 0)
        input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        if token_type_ids is not None:
            token_type_ids = token_type_ids.gather(1, order)
        valid = attention_mask > 0
        valid_lengths = valid.sum(dim=1).to(torch.float32)
        positions = family.initial_positions(valid)
        hidden = family.embed(core, input_ids, token_type_ids, positions)

        select, select_with_bias = selection_for_this_run()
        distance_table = family.relative_position_table(core, width, hidden.dtype)
        bias = None if distance_table is None else relative_position_bias(distance_table, positions, valid)
        kept_positions, cache_masks = [], []
        rule = self.scoring
        copy_source = copy_sources(input_ids, valid, rule.copy_ngram, rule.copy_span) if rule.copies else None
        for layer, exponent in zip(family.layers(core), self.exponents):
            if cache is not None:
                cache_masks.append(torch.where(valid, positions + 1, torch.zeros_like(positions)))
            attention_inputs = family.attention_inputs(core, valid, positions, hidden.dtype) if bias is None else bias
            mixed, probs = family.attend(layer, hidden, attention_inputs, cache)
            keep = keep_counts(valid_lengths, valid.sum(dim=1), ratio, exponent)
            always_keep = family.always_keep(valid)
            if bias is None:
                hidden, mixed, valid, positions = select(
                    probs, valid, always_keep, keep, hidden, mixed, positions, family.causal,
                    rule.last_queries, rule.sinks, rule.recent, valid_lengths, rule.span_before, rule.span_after,
                    copy_source,
                )
            else:
                hidden, mixed, valid, positions, bias = select_with_bias(
                    probs, valid, always_keep, keep, hidden, mixed, positions, bias, distance_table
                )
            hidden = family.finish(layer, mixed, hidden)
            kept_positions.append(torch.where(valid, positions, torch.full_like(positions, -1)))

        hidden = family.final_states(core, hidden)
        if self.task == TASK_TEXT2TEXT:
            return LatencyAdjustableOutput(hidden, kept_positions, attention_mask=valid.to(torch.int64))
        if self.task == TASK_GENERATION:
            logits = family.next_token_logits(self.hf_model, hidden, valid)
            return LatencyAdjustableOutput(logits, kept_positions, cache_masks=cache_masks)
        if self.task == TASK_FEATURES:
            output = pool(hidden, valid, self.pooling)
        else:
            output = family.classify(self.hf_model, hidden, valid, input_ids)
        return LatencyAdjustableOutput(output=output, kept_positions=kept_positions)


def selection_for_this_run() -> tuple[Callable, Callable]:
    """(select_tokens, select_tokens_and_bias) for eager runs, the TorchScript exporter (scripted, so that a
    layer that keeps everything becomes an ONNX If), or torch.export (``convert --exporter torch-export``)."""
    if torch.jit.is_tracing():
        return select_tokens_for_export, select_tokens_and_bias_for_export
    if torch.compiler.is_exporting():
        return select_tokens_unbacked, select_tokens_and_bias_unbacked
    return select_tokens, select_tokens_and_bias


class ExportWrapper(nn.Module):
    """The exported signature: plain tensors in, a flat tuple of tensors out."""

    def __init__(self, model: LatencyAdjustableModel, with_token_type_ids: bool, with_kept_positions: bool = True):
        super().__init__()
        self.model = model
        self.with_token_type_ids = with_token_type_ids
        self.with_kept_positions = with_kept_positions

    def forward(self, input_ids, attention_mask, *rest):
        if self.with_token_type_ids:
            token_type_ids, keep_ratio = rest
        else:
            token_type_ids, (keep_ratio,) = None, rest
        result = self.model(input_ids, attention_mask, token_type_ids, keep_ratio)
        outputs = (result.output,) if result.attention_mask is None else (result.output, result.attention_mask)
        if self.with_kept_positions:
            outputs = (*outputs, *result.kept_positions)
        return outputs if len(outputs) > 1 else outputs[0]
