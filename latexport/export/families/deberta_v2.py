"""DeBERTa-v2 and DeBERTa-v3: disentangled attention over log-bucketed relative distances.

What differs from BERT:

* Each layer's attention scores add two position terms to content-to-content:
  content-to-position (c2p: a query against the embedding of its distance to
  the key) and position-to-content (p2c: a key against the embedding of its
  distance to the query), all divided by sqrt(head size x (1 + terms)).
  Distances beyond ``position_buckets / 2`` share log-spaced buckets up to
  ``max_relative_positions``.  A layer that runs after a drop builds the
  distances from the survivors' original positions, so every kept pair keeps
  the distance it had in the unpruned model.
* v2-style checkpoints (``position_biased_input``) also add absolute position
  embeddings at the input, by each token's index among its row's real tokens;
  DeBERTa-v3 does not.
* The ContextPooler reads [CLS], which is always kept.
* Some v2 checkpoints (``conv_kernel_size``) mix the first layer's output with a
  convolution over neighbouring tokens; those are refused.

Why the attention is restated here rather than called: transformers'
``DisentangledSelfAttention`` takes ``relative_pos``, but its gathers expand one
[query, key] matrix over the whole batch (``c2p_pos.squeeze(0).expand(...)`` in
``disentangled_attention_bias``), while here every row has its own survivors and
so its own distances.  ``attend`` runs the same arithmetic, identical in
transformers 4.57 and 5, from the module's own projections, one distance matrix
per row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn

from latexport.export.families.base import EncoderFamily, LayerShape
from latexport.runtime.errors import UnsupportedModelError

POSITION_TERMS = ("c2p", "p2c")


@dataclass
class DisentangledInputs:
    """What a layer's attention needs besides the states."""

    #: [B, 1, 1, N] bool: the keys that are real word-vectors.
    key_valid: torch.Tensor
    #: [B, N, N] int64 bucketed distance, query's original position minus key's; None without relative attention.
    relative_pos: Optional[torch.Tensor]
    #: [2 * span, D] the encoder's relative embeddings after its LayerNorm; None without relative attention.
    rel_embeddings: Optional[torch.Tensor]


class DebertaV2Family(EncoderFamily):
    name = "deberta-v2"
    model_types = ("deberta-v2",)
    # ONNX Runtime's optimizer has no DeBERTa type.  As "bert" it fuses only GELU and bias + GELU on CPU, plus
    # residual + LayerNorm for CUDA (``latexport.export.optimize``); its attention fusion, which would not match
    # the disentangled attention, is off for every family.
    ort_model_type = "bert"

    def check_supported(self, config) -> None:
        if getattr(config, "conv_kernel_size", 0) > 0:
            raise UnsupportedModelError(
                f"latexport cannot convert this DeBERTa-v2 checkpoint: it has a convolution layer "
                f"(conv_kernel_size={config.conv_kernel_size}) that mixes each token with its neighbours "
                "after the first layer, which latexport does not implement for dropped tokens. "
                "DeBERTa-v3 checkpoints have none."
            )

    def layer_shape(self, config) -> LayerShape:
        """BERT's shape with the attention width heads x head size, and the c2p/p2c products against the
        2 x span relative embeddings."""
        heads = config.num_attention_heads
        head_size = getattr(config, "attention_head_size", config.hidden_size // heads)
        terms, rows = 0, 0
        if getattr(config, "relative_attention", False):
            terms = sum(term in (config.pos_att_type or []) for term in POSITION_TERMS)
            rows = 2 * _attention_span(config)
        return replace(
            super().layer_shape(config), attention_size=heads * head_size, relative_positions=rows, position_terms=terms
        )

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        """``positions`` feed the absolute position embeddings of v2-style checkpoints; v3 has none."""
        return core.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=positions)

    def attention_inputs(self, core: nn.Module, valid: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        """The key mask, and the bucketed distances between the alive word-vectors' original
        positions (``build_relative_position``'s query minus key, row by row)."""
        encoder = core.encoder
        key_valid = valid[:, None, None, :]
        if not encoder.relative_attention:
            return DisentangledInputs(key_valid, None, None)
        distances = positions.unsqueeze(2) - positions.unsqueeze(1)
        if encoder.position_buckets > 0 and encoder.max_relative_positions > 0:
            from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

            distances = make_log_bucket_position(distances, encoder.position_buckets, encoder.max_relative_positions)
        return DisentangledInputs(key_valid, distances.to(torch.int64), encoder.get_rel_embedding())

    def attend(
        self, layer: nn.Module, hidden: torch.Tensor, inputs: DisentangledInputs, cache=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``DisentangledSelfAttention.forward`` with a distance matrix per row (module doc)."""
        attention = layer.attention.self
        query = _split_heads(attention, attention.query_proj(hidden))
        key = _split_heads(attention, attention.key_proj(hidden))
        value = _split_heads(attention, attention.value_proj(hidden))
        terms = [term for term in POSITION_TERMS if term in attention.pos_att_type]
        scale = (attention.attention_head_size * (1 + len(terms))) ** 0.5
        scores = torch.matmul(query, key.transpose(-1, -2) / scale)
        if attention.relative_attention:
            rel_embeddings = attention.pos_dropout(inputs.rel_embeddings)
            position_scores = _position_scores(attention, query, key, inputs.relative_pos, rel_embeddings, scale)
            if position_scores is not None:
                scores = scores + position_scores
        scores = scores.masked_fill(torch.logical_not(inputs.key_valid), torch.finfo(scores.dtype).min)
        probs = attention.dropout(torch.softmax(scores, dim=-1))
        mixed = torch.matmul(probs, value).transpose(1, 2)
        return mixed.reshape(mixed.shape[0], mixed.shape[1], -1), probs

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The ContextPooler reads [CLS] at column 0; the pooler sits on the task model, not the encoder."""
        return model.classifier(model.dropout(model.pooler(hidden)))


def _attention_span(config) -> int:
    """Relative distances each side that have their own embedding (``DisentangledSelfAttention.pos_ebd_size``)."""
    buckets = getattr(config, "position_buckets", -1)
    if buckets > 0:
        return int(buckets)
    longest = getattr(config, "max_relative_positions", -1)
    return int(longest if longest >= 1 else config.max_position_embeddings)


def _split_heads(attention: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """[B, n, H * d] -> [B, H, n, d]."""
    batch, width = projected.shape[0], projected.shape[1]
    return projected.view(batch, width, attention.num_attention_heads, -1).transpose(1, 2)


def _position_scores(
    attention: nn.Module, query: torch.Tensor, key: torch.Tensor, relative_pos: torch.Tensor,
    rel_embeddings: torch.Tensor, scale: float,
) -> Optional[torch.Tensor]:
    """[B, H, N, N] c2p + p2c as ``disentangled_attention_bias`` computes them, with one
    distance matrix per row; None when ``pos_att_type`` names neither.

    Each query (c2p) or key (p2c) is scored against all 2 x span relative embeddings,
    then each [query, key] pair picks the score of its own bucketed distance.  The
    embeddings' projections depend on the weights only: ONNX Runtime folds them into
    constants when it loads the file.
    """
    span = attention.pos_ebd_size
    heads = query.shape[1]
    rel_embeddings = rel_embeddings[: 2 * span].unsqueeze(0)
    # share_att_key (DeBERTa-v3): the content projections also project the relative embeddings.
    shared = attention.share_att_key
    score = None
    if "c2p" in attention.pos_att_type:
        position_key = _split_heads(attention, (attention.key_proj if shared else attention.pos_key_proj)(rel_embeddings))
        # c2p[q, k] = query_q . position_key[distance(q, k) + span]
        index = torch.clamp(relative_pos + span, 0, 2 * span - 1).unsqueeze(1).expand(-1, heads, -1, -1)
        score = torch.gather(torch.matmul(query, position_key.transpose(-1, -2)), -1, index) / scale
    if "p2c" in attention.pos_att_type:
        position_query = _split_heads(attention, (attention.query_proj if shared else attention.pos_query_proj)(rel_embeddings))
        # p2c[q, k] = key_k . position_query[span - distance(k, q)]: gathered by key row, then transposed
        index = torch.clamp(span - relative_pos, 0, 2 * span - 1).unsqueeze(1).expand(-1, heads, -1, -1)
        p2c = torch.gather(torch.matmul(key, position_query.transpose(-1, -2)), -1, index).transpose(-1, -2) / scale
        score = p2c if score is None else score + p2c
    return score
