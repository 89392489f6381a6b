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

    def decoder_graph(self, model: nn.Module, with_past: bool) -> nn.Module:
        return T5DecoderGraph(model, with_past)

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


class T5DecoderGraph(nn.Module):
    """One call of the decoder for the exported decoder graphs: T new tokens after P cached ones.

    ``decoder_model.onnx`` (``with_past=False``): (input_ids [B, T], encoder_attention_mask
    [B, S], encoder_hidden_states [B, S, D]) -> logits [B, T, V], then per layer the self-
    attention keys and values [B, H, T, d_kv] and the cross-attention ones [B, H, S, d_kv].
    ``decoder_with_past_model.onnx``: (input_ids [B, T], encoder_attention_mask, then per
    layer the past self keys and values and the cross keys and values) -> logits and the
    grown self-attention keys and values.  The encoder states are the kept word-vectors
    of any keep_ratio: cross-attention simply has fewer keys.

    Written from T5's own submodules (projections, layer norms, the feed-forward, the
    relative bias table), not through transformers' Cache classes, whose API differs
    between transformers 4 and 5.  The arithmetic is T5Attention's: no 1/sqrt(d) scaling,
    a one-directional bucketed relative bias on self-attention (with the causal mask), and
    the encoder mask on cross-attention.
    """

    def __init__(self, model: nn.Module, with_past: bool):
        super().__init__()
        self.model = model
        self.with_past = with_past
        config = model.config
        # transformers 5 names the output scaling of tied T5 heads; 4.x reads tie_word_embeddings.
        scaled = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        self.output_scale = config.d_model**-0.5 if scaled else 1.0

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor, *rest: torch.Tensor):
        decoder = self.model.decoder
        hidden = decoder.embed_tokens(input_ids)
        past_length = rest[0].shape[2] if self.with_past else 0
        self_bias = self.self_attention_bias(past_length, input_ids.shape[1], hidden.dtype)
        cross_mask = (1.0 - encoder_attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        presents = []
        for index, block in enumerate(decoder.block):
            self_layer, cross_layer, feed_forward = block.layer
            attention = self_layer.SelfAttention
            normed = self_layer.layer_norm(hidden)
            key, value = self.split_heads(attention.k(normed)), self.split_heads(attention.v(normed))
            if self.with_past:
                key = torch.cat([rest[4 * index], key], dim=2)
                value = torch.cat([rest[4 * index + 1], value], dim=2)
            hidden = hidden + attention.o(self.attend(self.split_heads(attention.q(normed)), key, value, self_bias))

            cross = cross_layer.EncDecAttention
            if self.with_past:
                cross_key, cross_value = rest[4 * index + 2], rest[4 * index + 3]
            else:
                states = rest[0]
                cross_key, cross_value = self.split_heads(cross.k(states)), self.split_heads(cross.v(states))
            normed = cross_layer.layer_norm(hidden)
            hidden = hidden + cross.o(self.attend(self.split_heads(cross.q(normed)), cross_key, cross_value, cross_mask))
            hidden = feed_forward(hidden)  # T5LayerFF: pre-LN feed-forward with its own residual
            presents += [key, value] if self.with_past else [key, value, cross_key, cross_value]
        logits = self.model.lm_head(decoder.final_layer_norm(hidden) * self.output_scale)
        return (logits, *presents)

    def split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        """[B, n, H * d_kv] -> [B, H, n, d_kv]."""
        config = self.model.config
        return projected.view(projected.shape[0], projected.shape[1], config.num_heads, config.d_kv).transpose(1, 2)

    @staticmethod
    def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(query, key.transpose(2, 3)) + bias
        probs = torch.softmax(scores.float(), dim=-1).type_as(scores)
        mixed = torch.matmul(probs, value).transpose(1, 2)
        return mixed.reshape(mixed.shape[0], mixed.shape[1], -1)

    def self_attention_bias(self, past_length: int, new: int, dtype: torch.dtype) -> torch.Tensor:
        """[1, H, T, P + T]: the learned bias of each key-minus-query distance (queries at
        P .. P + T - 1), and the causal mask."""
        attention = self.model.decoder.block[0].layer[0].SelfAttention  # the only layer that owns the table
        device = attention.relative_attention_bias.weight.device
        queries = torch.arange(new, dtype=torch.int64, device=device) + past_length
        keys = torch.arange(past_length + new, dtype=torch.int64, device=device)
        distances = keys[None, :] - queries[:, None]
        buckets = attention._relative_position_bucket(
            distances,
            bidirectional=False,
            num_buckets=attention.relative_attention_num_buckets,
            max_distance=attention.relative_attention_max_distance,
        )
        bias = attention.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0).to(dtype)
        future = (distances > 0)[None, None]
        return bias.masked_fill(future, torch.finfo(dtype).min)
