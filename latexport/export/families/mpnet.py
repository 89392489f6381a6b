"""MPNet (all-mpnet-base-v2, mpnet-base): RoBERTa's embeddings and head, plus a relative position bias.

What differs from BERT:

* On top of absolute position embeddings (counted after the padding index, as
  in RoBERTa), every layer adds a learned bias bucketed by the key-minus-query
  distance, as in T5.  It is rebuilt from the survivors' original positions by
  the same mechanism as T5's (``relative_position_table`` and
  ``selection.select_tokens_and_bias``), so a kept token sees the distances it
  had in the unpruned model.
* The self-attention module applies its output projection ``o`` itself, and
  ``MPNetAttention`` adds the residual and LayerNorm: the drop comes after the
  projection, as for DistilBERT and T5.
* The classifier reads <s> through a dense + tanh head; there is no pooler.

transformers 4 and 5 call the attention with the same keywords and both return
``(output, probabilities)`` when asked, so no signature switch is needed.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn

from latexport.export.families.bert import RobertaFamily


class MPNetFamily(RobertaFamily):
    name = "mpnet"
    model_types = ("mpnet",)
    output_projection_after_drop = False

    def max_positions(self, config) -> int:
        # As RoBERTa's, but MPNetEmbeddings fixes its padding index at 1 whatever pad_token_id says.
        return int(config.max_position_embeddings) - 2

    def relative_position_table(self, core: nn.Module, width: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The learned bias of every key-minus-query distance from -(width - 1) to width - 1,
        bucketed exactly as ``MPNetEncoder.compute_position_bias`` buckets it."""
        encoder = core.encoder
        table = encoder.relative_attention_bias
        distances = torch.arange(1 - width, width, dtype=torch.int64, device=table.weight.device)
        buckets = encoder.relative_position_bucket(distances, num_buckets=_bucket_count(encoder))
        return table(buckets).to(dtype)

    def attend(
        self, layer: nn.Module, hidden: torch.Tensor, bias, cache=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention including its output projection; ``bias`` also masks the invalid keys."""
        projected, probs = layer.attention.attn(hidden, attention_mask=None, position_bias=bias, output_attentions=True)
        return projected, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        attention = layer.attention
        attention_output = attention.LayerNorm(attention.dropout(mixed) + residual)
        return layer.output(layer.intermediate(attention_output), attention_output)


def _bucket_count(encoder: nn.Module) -> int:
    """The bucket count transformers uses: ``compute_position_bias``'s own default (32), not
    ``config.relative_attention_num_buckets`` (another value makes transformers index past its
    table).  The maximum distance is ``relative_position_bucket``'s default (128) in both."""
    return int(inspect.signature(encoder.compute_position_bias).parameters["num_buckets"].default)
