"""T5 and Flan-T5 (T5 v1.1, gated GELU): word-vectors are eliminated in the encoder.

What differs from BERT:

* Attention has no position embeddings but a learned *relative position bias*,
  bucketed by the distance between key and query.  The bias of every distance
  is looked up once; a layer that drops word-vectors rebuilds its bias from
  the survivors' original positions (``selection.select_tokens_and_bias``),
  so a kept token sees exactly the distances it had in the unpruned model,
  and a layer that keeps everything reuses the previous bias for free.
* Pre-LayerNorm, and the attention module applies its output projection
  itself: the drop comes after the projection, the residual add and the
  feed-forward run on the kept word-vectors.
* No [CLS]: nothing is forced to stay.  The encoder's output is the kept
  states with their mask, and the decoder's cross-attention reads only those,
  so every decoding step gets cheaper too.
* ``T5ForSequenceClassification`` runs the full decoder over the (shifted)
  input and classifies its state at the last </s>; the decoder is not pruned.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from latexport.export.families.base import (
    TASK_CLASSIFICATION,
    TASK_FEATURES,
    TASK_TEXT2TEXT,
    EncoderFamily,
    LayerShape,
)

# T5 was trained on 512 tokens; the relative bias has no hard limit, the tokenizer's does.
T5_TRAINED_LENGTH = 512


class T5Family(EncoderFamily):
    name = "t5"
    model_types = ("t5",)
    output_projection_after_drop = False
    ort_model_type = "t5"
    tasks = (TASK_CLASSIFICATION, TASK_FEATURES, TASK_TEXT2TEXT)

    def uses_token_type_ids(self, config) -> bool:
        return False

    def layer_shape(self, config) -> LayerShape:
        return LayerShape(
            num_layers=config.num_layers,
            hidden_size=config.d_model,
            intermediate_size=config.d_ff,
            num_heads=config.num_heads,
            attention_size=config.num_heads * config.d_kv,
            feed_forward_matrices=3 if config.is_gated_act else 2,
            decoder_layers=config.num_decoder_layers,
        )

    def max_positions(self, config) -> int:
        return int(getattr(config, "n_positions", None) or T5_TRAINED_LENGTH)

    def model_class(self, task: str):
        from transformers import (
            AutoModelForSeq2SeqLM,
            AutoModelForSequenceClassification,
            T5EncoderModel,
        )

        return {
            TASK_CLASSIFICATION: AutoModelForSequenceClassification,
            TASK_FEATURES: T5EncoderModel,
            TASK_TEXT2TEXT: AutoModelForSeq2SeqLM,
        }[task]

    def core(self, model: nn.Module) -> nn.Module:
        """The encoder ``T5Stack``, in every T5 task model."""
        inner = getattr(model, "transformer", model)  # T5ForSequenceClassification wraps a T5Model
        return inner.get_encoder()

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        return core.dropout(core.embed_tokens(input_ids))

    def layers(self, core: nn.Module) -> nn.ModuleList:
        return core.block

    def relative_position_table(self, core: nn.Module, width: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The learned bias of every key-minus-query distance from -(width - 1) to width - 1."""
        attention = core.block[0].layer[0].SelfAttention  # the only layer that owns the bias table
        distances = torch.arange(1 - width, width, dtype=torch.int64, device=attention.relative_attention_bias.weight.device)
        buckets = attention._relative_position_bucket(
            distances,
            bidirectional=True,
            num_buckets=attention.relative_attention_num_buckets,
            max_distance=attention.relative_attention_max_distance,
        )
        return attention.relative_attention_bias(buckets).to(dtype)

    def attend(
        self, layer: nn.Module, hidden: torch.Tensor, bias, cache=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention including its output projection; the drop comes after it."""
        self_attention = layer.layer[0]
        projected, _, probs = self_attention.SelfAttention(
            self_attention.layer_norm(hidden), position_bias=bias, output_attentions=True
        )
        return projected, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = residual + layer.layer[0].dropout(mixed)
        return layer.layer[1](hidden)  # T5LayerFF: pre-LN feed-forward with its own residual

    def always_keep(self, valid: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(valid)

    def final_states(self, core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return core.dropout(core.final_layer_norm(hidden))

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """T5ForSequenceClassification: the decoder reads the kept encoder states; the
        head takes its output at each row's last </s> (transformers requires every row
        to have the same number of </s>; here a row without one reads position 0)."""
        decoder_states = model.transformer.decoder(
            input_ids=model._shift_right(input_ids),
            encoder_hidden_states=hidden,
            encoder_attention_mask=valid.to(torch.int64),
            use_cache=False,
        ).last_hidden_state
        is_eos = input_ids == model.config.eos_token_id
        columns = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        last_eos = torch.where(is_eos, columns, torch.zeros_like(columns)).max(dim=1).values
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return model.classification_head(decoder_states[rows, last_eos])
