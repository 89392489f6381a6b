"""Decoder-only generation graphs: the pruned prompt pass and the decode step.

The prompt pass (prefill) is ``LatencyAdjustableModel`` with the
text-generation task: it drops word-vectors layer by layer, returns the next
token's logits and hands every layer's keys and values, of the word-vectors
that entered that layer, to a ``LayerCache``.  Layers keep different numbers
of word-vectors, so the caches have different lengths, each with its mask.

The decode step takes one new token per row, its position, and every layer's
cache and mask; it appends the token's keys and values to each layer and
returns the next logits.  It reuses the family's hooks and the transformers
modules of the loaded model, as the prefill does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from latexport.export.families.decoder import DecoderFamily
from latexport.export.model import LatencyAdjustableModel
from latexport.export.tracing import TORCHSCRIPT, save_traced, trace
from latexport.runtime.metadata import cache_names


class LayerCache:
    """Stands in for a transformers ``Cache``: attention modules call ``update`` with a
    layer's new keys and values [B, kv_heads, n, head_dim]; with ``past`` those are
    appended to it.  ``layers[l]`` then holds layer ``l``'s full keys and values."""

    def __init__(self, past: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None):
        self.past = past
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs=None, **ignored):
        """transformers 4 passes ``cache_kwargs``, 5 ``kwargs=``; neither matters to a plain list of layers."""
        if self.past is not None:
            past_key, past_value = self.past[layer_idx]
            key, value = torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)
        self.layers[layer_idx] = (key, value)
        return key, value

    def flat(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every layer's key, value and mask (``masks[l]``), in the graphs' order (``cache_names``)."""
        return [tensor for layer, mask in enumerate(masks) for tensor in (*self.layers[layer], mask)]


class PrefillWrapper(nn.Module):
    """Export signature of the prompt pass: (input_ids, attention_mask, keep_ratio) ->
    (logits [B, V], then key, value and mask of every layer, then the kept-positions taps).
    A layer's cache mask holds 1 + the original position of each word-vector that entered
    the layer, 0 in an empty slot: sliding windows need the positions in the decode step."""

    def __init__(self, model: LatencyAdjustableModel, with_kept_positions: bool = True):
        super().__init__()
        self.model = model
        self.with_kept_positions = with_kept_positions

    def forward(self, input_ids, attention_mask, keep_ratio):
        cache = LayerCache()
        result = self.model(input_ids, attention_mask, None, keep_ratio, cache=cache)
        outputs = [result.output, *cache.flat(result.cache_masks)]
        if self.with_kept_positions:
            outputs.extend(result.kept_positions)
        return tuple(outputs)


class DecodeStep(nn.Module):
    """T new tokens per row (T = 1 when generating; more to score a continuation):
    (input_ids [B, T], position_ids [B, T], then per layer the cache key, value and
    mask) -> (logits [B, T, V], then the appended key, value and mask)."""

    def __init__(self, hf_model: nn.Module, family: DecoderFamily):
        super().__init__()
        self.hf_model = hf_model
        self.family = family

    def forward(self, input_ids, position_ids, *past):
        family = self.family
        core = family.core(self.hf_model)
        layers = family.layers(core)
        triples = [past[3 * layer : 3 * layer + 3] for layer in range(len(layers))]
        cache = LayerCache([(key, value) for key, value, _ in triples])
        hidden = family.embed(core, input_ids, None, position_ids)
        new_slots = position_ids + 1  # the cache mask holds 1 + each word-vector's position
        masks = []
        for layer_index, layer in enumerate(layers):
            key_slots = torch.cat([triples[layer_index][2], new_slots], dim=1)
            masks.append(key_slots)
            inputs = family.step_inputs(core, key_slots, position_ids, hidden.dtype)
            mixed, _ = family.attend(layer, hidden, inputs, cache)
            hidden = family.finish(layer, mixed, hidden)
        hidden = family.final_states(core, hidden)
        logits = family.logits(self.hf_model, hidden)
        outputs = [logits]
        for layer_index in range(len(layers)):
            outputs.extend([*cache.layers[layer_index], masks[layer_index]])
        return tuple(outputs)


def cache_axes(num_layers: int, prefix: str) -> dict[str, dict[int, str]]:
    """Dynamic axes of every layer's cache: batch, and a length of its own."""
    axes = {}
    for layer in range(num_layers):
        length = f"{prefix}_length_{layer}"
        axes[f"{prefix}.{layer}.key"] = {0: "batch", 2: length}
        axes[f"{prefix}.{layer}.value"] = {0: "batch", 2: length}
        axes[f"{prefix}.{layer}.mask"] = {0: "batch", 1: length}
    return axes


def example_cache(lat: LatencyAdjustableModel) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A real prompt pass at keep_ratio 0.5 over a padded batch: caches whose lengths
    differ from layer to layer, to trace the decode step with (and the next positions)."""
    batch, width = 2, 12
    input_ids = torch.full((batch, width), 5, dtype=torch.int64)
    attention_mask = torch.ones((batch, width), dtype=torch.int64)
    attention_mask[1, width // 2 :] = 0
    cache = LayerCache()
    with torch.no_grad():
        result = lat(input_ids, attention_mask, None, 0.5, cache=cache)
    return cache.flat(result.cache_masks), attention_mask.sum(dim=1, keepdim=True)


def export_decode_step(lat: LatencyAdjustableModel, path: Path, opset: int, exporter: str = TORCHSCRIPT) -> None:
    """Trace ``DecodeStep`` into ``path`` (inputs ``input_ids``, ``position_ids`` and
    ``past.{l}.key/value/mask``; outputs ``logits`` and ``present.{l}.key/value/mask``)."""
    step = DecodeStep(lat.hf_model, lat.family).eval()
    past, next_positions = example_cache(lat)
    layers = lat.profile.num_layers
    input_names = ["input_ids", "position_ids", *cache_names(layers, "past")]
    output_names = ["logits", *cache_names(layers, "present")]
    dynamic_axes = {
        "input_ids": {0: "batch", 1: "new_tokens"},
        "position_ids": {0: "batch", 1: "new_tokens"},
        "logits": {0: "batch", 1: "new_tokens"},
    }
    dynamic_axes.update(cache_axes(layers, "past"))
    dynamic_axes.update(cache_axes(layers, "present"))
    # Traced with two new tokens so that nothing is specialised to one; generation feeds one.
    input_ids = torch.full((next_positions.shape[0], 2), 7, dtype=torch.int64)
    next_positions = torch.cat([next_positions, next_positions + 1], dim=1)
    save_traced(trace(step, (input_ids, next_positions, *past), path, input_names, output_names, dynamic_axes, opset,
                      exporter), path)


class PyTorchGenerator:
    """Greedy generation with the very modules that are exported, run eagerly: the
    reference the ONNX prompt pass and decode step are validated against."""

    def __init__(self, lat: LatencyAdjustableModel):
        self.lat = lat
        self.step = DecodeStep(lat.hf_model, lat.family).eval()

    @torch.no_grad()
    def greedy(self, feed: dict, keep_ratio: float, max_new_tokens: int, eos_token_id: Optional[int] = None):
        """(new token ids per row, cut after the end token; the first logits [B, V] as numpy)."""
        input_ids = torch.from_numpy(feed["input_ids"])
        attention_mask = torch.from_numpy(feed["attention_mask"])
        cache = LayerCache()
        result = self.lat(input_ids, attention_mask, None, torch.tensor(keep_ratio), cache=cache)
        past = cache.flat(result.cache_masks)
        positions = attention_mask.sum(dim=1, keepdim=True)
        logits = first_logits = result.output
        tokens = []
        for position in range(max_new_tokens):
            next_ids = logits.argmax(dim=-1)
            tokens.append(next_ids)
            if position == max_new_tokens - 1:
                break
            logits, *past = self.step(next_ids.unsqueeze(1), positions, *past)
            logits = logits[:, -1]
            positions = positions + 1
        rows = torch.stack(tokens, dim=1).tolist()
        if eos_token_id is not None:
            rows = [row[: row.index(eos_token_id) + 1] if eos_token_id in row else row for row in rows]
        return rows, first_logits.numpy()


def seq2seq_cache_names(num_layers: int, prefix: str, with_cross: bool = True) -> list[str]:
    """optimum's names for an encoder-decoder's cache, in its order: per layer the
    self-attention (``decoder``) key and value, then the cross-attention (``encoder``) ones."""
    parts = ("decoder", "encoder") if with_cross else ("decoder",)
    return [f"{prefix}.{layer}.{part}.{kind}" for layer in range(num_layers) for part in parts for kind in ("key", "value")]


def export_seq2seq_decoders(hf_model: nn.Module, family, out_dir: Path, opset: int, exporter: str = TORCHSCRIPT) -> None:
    """Trace the family's decoder graph (``EncoderFamily.decoder_graph``) twice, as the
    first step (``decoder_model.onnx``) and the step with past keys and values
    (``decoder_with_past_model.onnx``), in optimum's layout and names, so that the
    runtime and ORTModelForSeq2SeqLM read them alike."""
    layers = family.layer_shape(hf_model.config).decoder_layers
    batch, source, new, past = 2, 5, 3, 4
    input_ids = torch.full((batch, new), 7, dtype=torch.int64)
    mask = torch.ones((batch, source), dtype=torch.int64)
    mask[1, 3:] = 0
    first = family.decoder_graph(hf_model, with_past=False).eval()
    states = torch.zeros((batch, source, hf_model.config.d_model))
    with torch.no_grad():
        example_past = first(torch.full((batch, past), 7, dtype=torch.int64), mask, states)[1:]
    def axes(names):
        """Self-attention caches have a length of their own (past or grown), cross-attention ones the encoder's."""
        own = "past_length" if names[0].startswith("past") else "present_length"
        return {name: {0: "batch", 2: own if ".decoder." in name else "encoder_length"} for name in names}

    present_all = seq2seq_cache_names(layers, "present")
    dynamic = {"input_ids": {0: "batch", 1: "new_tokens"}, "encoder_attention_mask": {0: "batch", 1: "encoder_length"},
               "encoder_hidden_states": {0: "batch", 1: "encoder_length"}, "logits": {0: "batch", 1: "new_tokens"}}
    path = out_dir / "decoder_model.onnx"
    traced = trace(first, (input_ids, mask, states), path, ["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
                   ["logits", *present_all], {**dynamic, **axes(present_all)}, opset, exporter)
    save_traced(traced, path)

    step = family.decoder_graph(hf_model, with_past=True).eval()
    past_names = seq2seq_cache_names(layers, "past_key_values")
    present_self = seq2seq_cache_names(layers, "present", with_cross=False)
    path = out_dir / "decoder_with_past_model.onnx"
    traced = trace(step, (input_ids[:, :1], mask, *example_past), path, ["input_ids", "encoder_attention_mask", *past_names],
                   ["logits", *present_self], {**dynamic, **axes(past_names), **axes(present_self)}, opset, exporter)
    save_traced(traced, path)
