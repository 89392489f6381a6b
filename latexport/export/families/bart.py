"""BART, mBART and Marian: encoder-decoders whose encoder is pruned, as T5's is.

What differs from T5:

* Absolute positions, added once, at the embedding: learned and offset by 2
  (BART, mBART) or sinusoidal (Marian).  Nothing is dropped before the
  embedding, so every survivor carries its original position through the
  encoder for free.  The decoder graphs compute their own positions (the
  cached length plus the new tokens' index), never the columns of one call.
* Token embeddings are scaled by sqrt(d_model) where ``config.scale_embedding``
  says so (Marian usually, BART and mBART rarely).  BART and mBART's embedding
  module scales itself; Marian's encoder and decoder hold ``embed_scale``.
* The attention module applies its output projection and returns it with the
  probabilities: the drop comes after the projection, as T5's.
* BART and Marian are post-LayerNorm (the norm follows each residual add);
  mBART is pre-LayerNorm with a final ``layer_norm`` on encoder and decoder.
  BART and mBART normalise the embedding (``layernorm_embedding``), Marian not.
* ``BartForSequenceClassification`` (and mBART's) runs the full decoder over the
  shifted input and classifies its state at each row's last </s>; the decoder
  is not pruned.  Marian has no classification model.
* A ``*Model`` checkpoint (facebook/bart-base) exports as feature extraction:
  the encoder alone, its kept states mean-pooled (no encoder-only class exists,
  so the whole model is loaded and its encoder kept).
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


class BartFamily(EncoderFamily):
    name = "bart"
    model_types = ("bart",)
    output_projection_after_drop = False
    ort_model_type = "bart"
    tasks = (TASK_CLASSIFICATION, TASK_FEATURES, TASK_TEXT2TEXT)
    #: Learned position tables are offset by 2 (fairseq reserved the first rows); sinusoidal ones are not.
    position_offset: int = 2
    #: A LayerNorm on the embedding sum (``layernorm_embedding``).
    embedding_layer_norm: bool = True
    #: Pre-LayerNorm layers, and a final ``layer_norm`` after the last layer (mBART).
    pre_layer_norm: bool = False

    def uses_token_type_ids(self, config) -> bool:
        return False

    def layer_shape(self, config) -> LayerShape:
        return LayerShape(
            num_layers=config.encoder_layers,
            hidden_size=config.d_model,
            intermediate_size=config.encoder_ffn_dim,
            num_heads=config.encoder_attention_heads,
            decoder_layers=config.decoder_layers,
        )

    def max_positions(self, config) -> int:
        return int(config.max_position_embeddings)

    def model_class(self, task: str):
        from transformers import (
            AutoModelForSeq2SeqLM,
            AutoModelForSequenceClassification,
        )

        return {
            TASK_CLASSIFICATION: AutoModelForSequenceClassification,
            TASK_FEATURES: EncoderOfModel,
            TASK_TEXT2TEXT: AutoModelForSeq2SeqLM,
        }[task]

    # --- the encoder --------------------------------------------------------
    def core(self, model: nn.Module) -> nn.Module:
        """The encoder: ``model.model.encoder`` in the task models, the model itself for features."""
        inner = getattr(model, "model", model)
        return getattr(inner, "encoder", inner)

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        return self.embed_with_positions(core, input_ids, positions)

    def embed_with_positions(self, stack: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings plus the position rows of ``positions`` ([B, N] or [1, N]), then the
        embedding LayerNorm where the family has one; the encoder and the decoder graphs share it."""
        tokens = stack.embed_tokens(input_ids)
        if getattr(stack.embed_tokens, "embed_scale", None) is None:  # Marian scales outside the embedding module
            tokens = tokens * getattr(stack, "embed_scale", 1.0)
        table = stack.embed_positions.weight
        hidden = tokens + nn.functional.embedding(positions + self.position_offset, table).to(tokens.dtype)
        if self.embedding_layer_norm:
            hidden = stack.layernorm_embedding(hidden)
        return nn.functional.dropout(hidden, p=stack.dropout, training=stack.training)

    def layers(self, core: nn.Module) -> nn.ModuleList:
        return core.layers

    def attend(self, layer: nn.Module, hidden: torch.Tensor, mask, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention including its output projection; the drop comes after it."""
        normed = layer.self_attn_layer_norm(hidden) if self.pre_layer_norm else hidden
        projected, probs = layer.self_attn(normed, attention_mask=mask, output_attentions=True)[:2]
        return projected, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = self.add_residual(layer, layer.self_attn_layer_norm, residual, mixed)
        return self.feed_forward(layer, hidden)

    def add_residual(self, layer: nn.Module, norm: nn.Module, residual: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """The residual add of a sub-layer; post-LN normalises the sum (pre-LN normalised the input)."""
        hidden = residual + nn.functional.dropout(update, p=layer.dropout, training=layer.training)
        return hidden if self.pre_layer_norm else norm(hidden)

    def feed_forward(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        normed = layer.final_layer_norm(hidden) if self.pre_layer_norm else hidden
        inner = nn.functional.dropout(
            layer.activation_fn(layer.fc1(normed)), p=layer.activation_dropout, training=layer.training
        )
        return self.add_residual(layer, layer.final_layer_norm, hidden, layer.fc2(inner))

    def final_states(self, core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return core.layer_norm(hidden) if self.pre_layer_norm else hidden

    def always_keep(self, valid: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(valid)

    # --- heads --------------------------------------------------------------
    def decoder_input_ids(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """What the classifier's decoder reads: the input shifted right after the start token."""
        from transformers.models.bart.modeling_bart import shift_tokens_right

        return shift_tokens_right(input_ids, model.config.pad_token_id, model.config.decoder_start_token_id)

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """``*ForSequenceClassification``: the unpruned decoder over the shifted input reads the kept
        encoder states; the head takes its output at each row's last </s> (transformers requires
        every row to hold the same number of </s>; here a row without one reads position 0)."""
        decoder_states = model.model.decoder(
            input_ids=self.decoder_input_ids(model, input_ids),
            encoder_hidden_states=hidden,
            encoder_attention_mask=valid.to(torch.int64),
            use_cache=False,
        ).last_hidden_state
        is_eos = input_ids == model.config.eos_token_id
        columns = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        last_eos = torch.where(is_eos, columns, torch.zeros_like(columns)).max(dim=1).values
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return model.classification_head(decoder_states[rows, last_eos])

    def decoder_graph(self, model: nn.Module, with_past: bool) -> nn.Module:
        return BartDecoderGraph(model, self, with_past)


class MBartFamily(BartFamily):
    """Pre-LayerNorm, with a final LayerNorm on encoder and decoder; the classifier's decoder
    starts from each row's last real token (its language code), not a fixed start token."""

    name = "mbart"
    model_types = ("mbart",)
    pre_layer_norm = True

    def decoder_input_ids(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        from transformers.models.mbart.modeling_mbart import shift_tokens_right

        return shift_tokens_right(input_ids, model.config.pad_token_id)


class MarianFamily(BartFamily):
    """Sinusoidal positions (no offset), no embedding LayerNorm; translation only."""

    name = "marian"
    model_types = ("marian",)
    tasks = (TASK_TEXT2TEXT,)
    position_offset = 0
    embedding_layer_norm = False


class EncoderOfModel:
    """Loads a ``*Model`` checkpoint and keeps its encoder, for feature extraction: BART-style
    models have no encoder-only class, and the whole model's output is the decoder's."""

    @staticmethod
    def from_pretrained(checkpoint: str, **kwargs):
        from transformers import AutoModel

        loaded = AutoModel.from_pretrained(checkpoint, **kwargs)
        if kwargs.get("output_loading_info"):
            model, info = loaded
            return model.get_encoder(), info
        return loaded.get_encoder()


class BartDecoderGraph(nn.Module):
    """One call of the decoder for the exported decoder graphs: T new tokens after P cached ones,
    with the inputs and outputs of ``T5DecoderGraph`` (``latexport.export.families.t5``).

    Written from the model's own submodules (embeddings, q/k/v/out projections, layer norms,
    fc1/fc2, the activation, ``lm_head`` and ``final_logits_bias``), not through transformers'
    Cache classes, whose API differs between transformers 4 and 5.  The arithmetic is BartAttention's
    eager one: scores scaled by 1/sqrt(head_dim), the causal mask on self-attention and the
    encoder mask on cross-attention.  Positions are P .. P + T - 1: the cached length, not the call's
    columns.
    """

    def __init__(self, model: nn.Module, family: BartFamily, with_past: bool):
        super().__init__()
        self.model = model
        self.family = family
        self.with_past = with_past

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor, *rest: torch.Tensor):
        family, decoder = self.family, self.model.model.decoder
        past_length = rest[0].shape[2] if self.with_past else 0
        new = input_ids.shape[1]
        positions = (torch.arange(new, dtype=torch.int64, device=input_ids.device) + past_length).unsqueeze(0)
        hidden = family.embed_with_positions(decoder, input_ids, positions)
        dtype = hidden.dtype
        keys = torch.arange(past_length + new, dtype=torch.int64, device=hidden.device)
        future = keys[None, :] > positions[0][:, None]  # [T, P + T]: key after its query
        self_mask = torch.zeros(future.shape, dtype=dtype, device=hidden.device).masked_fill(future, torch.finfo(dtype).min)
        cross_mask = (1.0 - encoder_attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        presents = []
        for index, layer in enumerate(decoder.layers):
            attention = layer.self_attn
            normed = layer.self_attn_layer_norm(hidden) if family.pre_layer_norm else hidden
            key, value = self.split_heads(attention, attention.k_proj(normed)), self.split_heads(attention, attention.v_proj(normed))
            if self.with_past:
                key = torch.cat([rest[4 * index], key], dim=2)
                value = torch.cat([rest[4 * index + 1], value], dim=2)
            mixed = self.attend(attention, self.split_heads(attention, attention.q_proj(normed)), key, value, self_mask[None, None])
            hidden = family.add_residual(layer, layer.self_attn_layer_norm, hidden, attention.out_proj(mixed))

            cross = layer.encoder_attn
            if self.with_past:
                cross_key, cross_value = rest[4 * index + 2], rest[4 * index + 3]
            else:
                states = rest[0]
                cross_key, cross_value = self.split_heads(cross, cross.k_proj(states)), self.split_heads(cross, cross.v_proj(states))
            normed = layer.encoder_attn_layer_norm(hidden) if family.pre_layer_norm else hidden
            mixed = self.attend(cross, self.split_heads(cross, cross.q_proj(normed)), cross_key, cross_value, cross_mask)
            hidden = family.add_residual(layer, layer.encoder_attn_layer_norm, hidden, cross.out_proj(mixed))
            hidden = family.feed_forward(layer, hidden)
            presents += [key, value] if self.with_past else [key, value, cross_key, cross_value]
        if family.pre_layer_norm:
            hidden = decoder.layer_norm(hidden)
        logits = self.model.lm_head(hidden) + self.model.final_logits_bias
        return (logits, *presents)

    @staticmethod
    def split_heads(attention: nn.Module, projected: torch.Tensor) -> torch.Tensor:
        """[B, n, H * d] -> [B, H, n, d]."""
        return projected.view(projected.shape[0], projected.shape[1], -1, attention.head_dim).transpose(1, 2)

    @staticmethod
    def attend(attention: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(query, key.transpose(2, 3)) * attention.scaling + mask
        probs = torch.softmax(scores, dim=-1)
        mixed = torch.matmul(probs, value).transpose(1, 2)
        return mixed.reshape(mixed.shape[0], mixed.shape[1], -1)

