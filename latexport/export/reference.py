"""An independent reference for the pruned forward pass: transformers' own
layers, with the scoring and the choice of survivors in plain numpy.

Why it exists: ``latexport.export.model`` (the PyTorch model) and the exported graph
run the same ``latexport.export.selection`` functions, so comparing the two cannot
catch a bug in the selection.  This module shares no code with
``latexport.export.selection``, ``latexport.export.model`` or ``latexport.export.families``:

* each row runs alone, with its padding stripped, so no mask logic is needed
  and nothing can depend on the padding side or the batch's width;
* every transformers layer runs whole on the word-vectors still alive, and a
  forward hook reads the attention probabilities its own attention module
  returns;
* ACC is summed in numpy over heads and queries (in a causal layer divided
  by the number of queries that can see each key; under a rule counting the
  last W queries, over those rows alone; a rule may spread each score over
  its neighbours, a sliding max), the head's token is pinned, the
  scoring rule's sinks, recent tokens and copy sources (found by comparing
  token ids in a Python loop) rank next, in tiers, and the kept set is a
  stable sort, ties to the lower position;
* the layer's output rows of the kept word-vectors go on to the next layer.

Dropping after the whole layer equals latexport's drop after the attention
mixing, because everything after the mixing (output projection, residual,
LayerNorm, feed-forward) works on each word-vector alone.

What it knows of each architecture (how to embed, call a layer, and read the
head) is written here again on purpose, from transformers' modules, so that a
mistake in a family hook shows up as a difference.  Slow and simple by design:
it is for validation and tests, never for serving.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from latexport.runtime.profile import CEIL_SLACK
from latexport.runtime.scoring import ScoringRule


@dataclass
class RowReference:
    """One row's result: ``output`` (logits, embedding, or the kept encoder states
    [K, D] for text2text) and, per layer, the kept positions (indices among the
    row's real tokens, ascending)."""

    output: np.ndarray
    kept_positions: list[np.ndarray]
    #: Per layer, the word-vectors that entered it ([1, n, D]) and their positions: what a
    #: decode step's cache holds (``reference_next_logits``).
    layer_inputs: list[tuple[torch.Tensor, np.ndarray]] = field(default_factory=list)


def reference_keep_count(length: int, alive: int, keep_ratio: float, exponent: float) -> int:
    """The documented schedule (``latexport.runtime.profile``), restated: ceil(L * r^e), at least one, at most what is alive."""
    wanted = math.ceil(length * keep_ratio**exponent - CEIL_SLACK)
    return min(max(wanted, 1), alive)


def reference_acc(probs: np.ndarray, causal: bool, last_queries: int = 0) -> np.ndarray:
    """[n] ACC from one row's [H, n, n] probabilities (query, key); with ``last_queries``
    W > 0, from the last W query rows only, unnormalised."""
    probs = probs.astype(np.float64)
    if last_queries > 0:
        return probs[:, -last_queries:, :].sum(axis=(0, 1))
    scores = probs.sum(axis=(0, 1))
    if causal:
        scores = scores / (len(scores) - np.arange(len(scores)))  # key j is seen by queries j..n-1
    return scores


def reference_spread(scores: np.ndarray, before: int, after: int) -> np.ndarray:
    """Each score spread over the ``before`` tokens before it and the ``after`` after it:
    token i takes the largest score at i - after .. i + before (edges: the row ends)."""
    n = len(scores)
    return np.array([scores[max(0, i - after): min(n, i + before + 1)].max() for i in range(n)])


def reference_copy_sources(ids: Sequence[int], ngram: int, span: int) -> set[int]:
    """Positions of every earlier occurrence (one that starts before the last
    ``ngram`` tokens do) of the row's last ``ngram`` tokens, and of the ``span``
    tokens after each."""
    ids = list(ids)
    length = len(ids)
    if ngram == 0 or length <= ngram:
        return set()
    tail = ids[-ngram:]
    sources = set()
    for start in range(length - ngram):
        if ids[start : start + ngram] == tail:
            sources.update(range(start, min(length, start + ngram + span)))
    return sources


def reference_tiers(
    positions: np.ndarray, length: int, pinned: Optional[int], sinks: int, recent: int, copied: set[int] = frozenset()
) -> np.ndarray:
    """[n] rank tier of each alive word-vector: 4 the head's token, 3 a sink
    (position < sinks), 2 a recent one (position >= length - recent), 1 a copy
    source (position in ``copied``), 0 the rest."""
    is_copied = np.array([position in copied for position in positions], dtype=bool)
    tiers = np.where(positions < sinks, 3, np.where(positions >= length - recent, 2, np.where(is_copied, 1, 0)))
    if pinned is not None:
        tiers[pinned] = 4
    return tiers


def reference_pick(scores: np.ndarray, keep: int, tiers: np.ndarray) -> np.ndarray:
    """Indices of the ``keep`` best by (tier, then score), ascending; ties go to the lower index."""
    order = np.lexsort((np.arange(len(scores)), -scores, -tiers))
    return np.sort(order[:keep])


class Architecture:
    """How to run one architecture from transformers' modules (see the module doc)."""

    #: Which alive word-vector the head reads and so is never dropped: "first", "last" or None.
    pinned: Optional[str] = "first"
    causal: bool = False

    def base(self, model):
        return model.base_model

    def embed(self, model, ids: torch.Tensor, types: Optional[torch.Tensor]) -> torch.Tensor:
        return self.base(model).embeddings(input_ids=ids, token_type_ids=types)

    def layers(self, model):
        return self.base(model).encoder.layer

    def attention(self, layer):
        """The module whose output's last element is the [1, H, n, n] probabilities."""
        return layer.attention.self

    def prepare(self, model, hidden: torch.Tensor) -> None:
        """Anything computed once per row over all its tokens (T5's bias)."""

    def run_layer(self, model, layer, hidden: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        return _states(layer(hidden, attention_mask=None, output_attentions=True))  # one unpadded row: no mask

    def final(self, model, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def classify(self, model, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.dropout(self.base(model).pooler(hidden)))

    def generate_logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_at(self, model, ids: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """Decoders: the embeddings of tokens at these positions (a decode step's new tokens)."""
        raise NotImplementedError


class BertArchitecture(Architecture):
    pass


class RobertaArchitecture(Architecture):
    def classify(self, model, hidden, ids):
        return model.classifier(hidden)


class ElectraArchitecture(RobertaArchitecture):
    def embed(self, model, ids, types):
        hidden = super().embed(model, ids, types)
        project = getattr(self.base(model), "embeddings_project", None)
        return hidden if project is None else project(hidden)


class DistilBertArchitecture(Architecture):
    def embed(self, model, ids, types):
        return self.base(model).embeddings(ids)

    def layers(self, model):
        return self.base(model).transformer.layer

    def attention(self, layer):
        return layer.attention

    def run_layer(self, model, layer, hidden, positions):
        if "attn_mask" in inspect.signature(layer.forward).parameters:  # transformers 4: (weights, states)
            mask = torch.ones(hidden.shape[:2], dtype=torch.int64)
            return layer(hidden, attn_mask=mask, output_attentions=True)[-1]
        return _states(layer(hidden, attention_mask=None))

    def classify(self, model, hidden, ids):
        pooled = torch.relu(model.pre_classifier(hidden[:, 0]))
        return model.classifier(model.dropout(pooled))


class DebertaV2Architecture(Architecture):
    """Disentangled attention: every layer gets the bucketed distances between the kept
    original positions (query minus key), and the encoder's relative embeddings."""

    def run_layer(self, model, layer, hidden, positions):
        encoder = self.base(model).encoder
        width = len(positions)
        relative_pos, rel_embeddings = None, None
        if encoder.relative_attention:
            from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

            distances = torch.from_numpy(positions[:, None] - positions[None, :])
            if encoder.position_buckets > 0 and encoder.max_relative_positions > 0:
                distances = make_log_bucket_position(distances, encoder.position_buckets, encoder.max_relative_positions)
            relative_pos, rel_embeddings = distances.to(torch.long)[None], encoder.get_rel_embedding()
        mask = torch.ones(1, 1, width, width, dtype=torch.bool)  # one unpadded row: every pair attends
        return _states(
            layer(hidden, mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings, output_attentions=True)
        )

    def classify(self, model, hidden, ids):
        return model.classifier(model.dropout(model.pooler(hidden)))


class MPNetArchitecture(RobertaArchitecture):
    """A relative position bias in every layer, from the encoder's own table."""

    def attention(self, layer):
        return layer.attention.attn

    def prepare(self, model, hidden):
        self._bias = self.base(model).encoder.compute_position_bias(hidden)  # [1, H, n, n]

    def run_layer(self, model, layer, hidden, positions):
        bias = _between_kept(self._bias, positions)
        return _states(layer(hidden, attention_mask=None, position_bias=bias, output_attentions=True))


class AlbertArchitecture(Architecture):
    """One shared layer, run once per application; embeddings projected up to the hidden size."""

    def embed(self, model, ids, types):
        base = self.base(model)
        return base.encoder.embedding_hidden_mapping_in(base.embeddings(input_ids=ids, token_type_ids=types))

    def layers(self, model):
        config, groups = model.config, self.base(model).encoder.albert_layer_groups
        applied = []
        for application in range(config.num_hidden_layers):  # as AlbertTransformer.forward picks the group
            group = groups[int(application / (config.num_hidden_layers / config.num_hidden_groups))]
            applied.extend(group.albert_layers)
        return applied

    def attention(self, layer):
        return layer.attention

    def classify(self, model, hidden, ids):
        base = self.base(model)
        return model.classifier(model.dropout(base.pooler_activation(base.pooler(hidden[:, 0]))))


class T5Architecture(Architecture):
    pinned = None

    def base(self, model):
        inner = getattr(model, "transformer", model)
        return inner.get_encoder()

    def embed(self, model, ids, types):
        return self.base(model).embed_tokens(ids)

    def layers(self, model):
        return self.base(model).block

    def attention(self, layer):
        return layer.layer[0].SelfAttention

    def prepare(self, model, hidden):
        width = hidden.shape[1]
        self._bias = self.layers(model)[0].layer[0].SelfAttention.compute_bias(width, width)  # [1, H, n, n]

    def run_layer(self, model, layer, hidden, positions):
        bias = _between_kept(self._bias, positions)
        return _states(layer(hidden, attention_mask=None, position_bias=bias, output_attentions=True))

    def final(self, model, hidden):
        return self.base(model).final_layer_norm(hidden)

    def classify(self, model, hidden, ids):
        return model(input_ids=ids, encoder_outputs=(hidden,)).logits


def _between_kept(bias: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """The full-length [1, H, n, n] bias between the kept positions: every kept pair keeps its original distance."""
    index = torch.from_numpy(positions)
    return bias[:, :, index][:, :, :, index]


def _states(output) -> torch.Tensor:
    """A layer's hidden states: transformers 4 layers return a tuple that starts with them, 5 the tensor alone."""
    return output[0] if isinstance(output, tuple) else output


def _causal_mask(width: int, dtype: torch.dtype, positions: Optional[np.ndarray] = None, window: Optional[int] = None) -> torch.Tensor:
    """[1, 1, n, n] additive: alive word-vectors stay in their original order; with a sliding
    ``window``, a query also sees only keys less than ``window`` original positions before it."""
    allowed = np.tril(np.ones((width, width), dtype=bool))
    if window is not None:
        allowed &= (positions[:, None] - positions[None, :]) < window
    mask = torch.zeros(width, width, dtype=dtype).masked_fill(torch.from_numpy(~allowed), torch.finfo(dtype).min)
    return mask[None, None]


def _layer_window(config, layer_index: int) -> Optional[int]:
    """transformers' rule for which layers slide: all of them when the config sets a window
    without naming layer types (Mistral, Phi-3), else those typed "sliding_attention"."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer_index] != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None)


class GPT2Architecture(Architecture):
    pinned = "last"
    causal = True

    def embed(self, model, ids, types):
        return self.embed_at(model, ids, np.arange(ids.shape[1]))

    def embed_at(self, model, ids, positions):
        base = self.base(model)
        return base.wte(ids) + base.wpe(torch.from_numpy(positions)[None])

    def layers(self, model):
        return self.base(model).h

    def attention(self, layer):
        return layer.attn

    def run_layer(self, model, layer, hidden, positions):
        return _states(layer(hidden, attention_mask=_causal_mask(hidden.shape[1], hidden.dtype), output_attentions=True))

    def final(self, model, hidden):
        return self.base(model).ln_f(hidden)

    def classify(self, model, hidden, ids):
        return model.score(hidden[:, -1])

    def generate_logits(self, model, hidden):
        return model.lm_head(hidden[:, -1])


class LlamaArchitecture(GPT2Architecture):
    def embed_at(self, model, ids, positions):
        return self.base(model).embed_tokens(ids)

    def layers(self, model):
        return self.base(model).layers

    def attention(self, layer):
        return layer.self_attn

    def run_layer(self, model, layer, hidden, positions):
        position_ids = torch.from_numpy(positions)[None]
        rotary = self.base(model).rotary_emb(hidden, position_ids)  # rotated by the original positions
        window = _layer_window(model.config, layer.self_attn.layer_idx)
        output = layer(
            hidden, attention_mask=_causal_mask(hidden.shape[1], hidden.dtype, positions, window), position_ids=position_ids,
            position_embeddings=rotary,
        )
        return _states(output)

    def final(self, model, hidden):
        return self.base(model).norm(hidden)


class GemmaArchitecture(LlamaArchitecture):
    """Gemma, 2 and 3: embeddings times sqrt(hidden_size); the layers (four norms, soft-capped
    attention, query/key norms) run whole; local and global layers rotate by tables of their own
    (Gemma 3); the language-model head's logits are soft-capped."""

    def base(self, model):
        return model.model  # 4.57's Gemma3ForCausalLM has no ``language_model``, its base_model_prefix

    def embed_at(self, model, ids, positions):
        embedding = self.base(model).embed_tokens
        hidden = embedding(ids)
        if type(embedding) is torch.nn.Embedding:  # transformers 4.57 scales in GemmaModel / Gemma2Model.forward
            hidden = hidden * torch.tensor(model.config.hidden_size**0.5, dtype=hidden.dtype)
        return hidden

    def run_layer(self, model, layer, hidden, positions):
        config, base = model.config, self.base(model)
        position_ids = torch.from_numpy(positions)[None]
        index = layer.self_attn.layer_idx
        mask = _causal_mask(hidden.shape[1], hidden.dtype, positions, _layer_window(config, index))
        parameters = inspect.signature(layer.forward).parameters
        if "position_embeddings_local" in parameters:  # transformers 4.57's Gemma 3: the layer picks its table
            return _states(layer(
                hidden, position_embeddings_global=base.rotary_emb(hidden, position_ids),
                position_embeddings_local=base.rotary_emb_local(hidden, position_ids), attention_mask=mask,
                position_ids=position_ids,
            ))
        if "layer_type" in inspect.signature(base.rotary_emb.forward).parameters:  # 5.x's Gemma 3
            rotary = base.rotary_emb(hidden, position_ids, config.layer_types[index])
        else:
            rotary = base.rotary_emb(hidden, position_ids)
        return _states(layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=rotary))

    def generate_logits(self, model, hidden):
        logits = model.lm_head(hidden[:, -1])
        cap = getattr(model.config, "final_logit_softcapping", None)
        return logits if cap is None else cap * torch.tanh(logits / cap)


class ModernBertArchitecture(Architecture):
    """Rotary by original positions; a local layer sees the keys within half its window of original positions."""

    def base(self, model):
        return getattr(model, "model", model)

    def embed(self, model, ids, types):
        embeddings = self.base(model).embeddings
        return embeddings.norm(embeddings.tok_embeddings(ids))

    def layers(self, model):
        return self.base(model).layers

    def attention(self, layer):
        return layer.attn

    def run_layer(self, model, layer, hidden, positions):
        config = self.base(model).config
        position_ids = torch.from_numpy(positions)[None]
        if hasattr(layer, "attention_type"):  # transformers 5 names the layer's type
            local = layer.attention_type == "sliding_attention"
        else:  # 4.x gives a local layer's attention its window
            local = tuple(layer.attn.local_attention) != (-1, -1)
        distance = np.abs(positions[:, None] - positions[None, :])
        allowed = distance <= config.local_attention // 2 if local else np.ones_like(distance, dtype=bool)
        mask = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill(
            torch.from_numpy(~allowed), torch.finfo(hidden.dtype).min)[None, None]
        if "sliding_window_mask" in inspect.signature(layer.forward).parameters:  # transformers 4
            return _states(layer(hidden, attention_mask=mask, sliding_window_mask=mask, position_ids=position_ids,
                                 output_attentions=True))
        layer_type = "sliding_attention" if local else "full_attention"
        rotary = self.base(model).rotary_emb(hidden, position_ids, layer_type)
        return _states(layer(hidden, attention_mask=mask, position_embeddings=rotary))

    def final(self, model, hidden):
        return self.base(model).final_norm(hidden)

    def classify(self, model, hidden, ids):
        pooled = hidden[:, 0] if model.config.classifier_pooling == "cls" else hidden.mean(dim=1)
        return model.classifier(model.head(pooled))


#: ``config.model_type`` -> how the reference runs it.
ARCHITECTURES: dict[str, Architecture] = {
    "bert": BertArchitecture(),
    "roberta": RobertaArchitecture(),
    "xlm-roberta": RobertaArchitecture(),
    "camembert": RobertaArchitecture(),
    "electra": ElectraArchitecture(),
    "distilbert": DistilBertArchitecture(),
    "deberta-v2": DebertaV2Architecture(),
    "mpnet": MPNetArchitecture(),
    "albert": AlbertArchitecture(),
    "modernbert": ModernBertArchitecture(),
    "t5": T5Architecture(),
    "gpt2": GPT2Architecture(),
    "llama": LlamaArchitecture(),
    "qwen2": LlamaArchitecture(),  # biases and query/key norms live inside transformers' attention module
    "qwen3": LlamaArchitecture(),
    "mistral": LlamaArchitecture(),
    "phi3": LlamaArchitecture(),  # fused projections and partial rotary: inside transformers' modules
    "gemma": GemmaArchitecture(),
    "gemma2": GemmaArchitecture(),
    "gemma3_text": GemmaArchitecture(),
}


def reference_row(
    model,
    task: str,
    exponents: Sequence[float],
    input_ids: np.ndarray,
    keep_ratio: float,
    token_type_ids: Optional[np.ndarray] = None,
    pooling: str = "mean",
    scoring: ScoringRule = ScoringRule(),
) -> RowReference:
    """One row of real tokens (no padding) through the pruned pass; ``task`` as in
    ``latexport.export.families`` (text-classification, feature-extraction,
    text2text-generation, text-generation); ``scoring`` the rule that chooses
    the survivors (``latexport.runtime.scoring``: a data class, not code)."""
    architecture = ARCHITECTURES[model.config.model_type]
    keep_ratio = 1.0 if math.isnan(keep_ratio) else min(max(float(keep_ratio), 0.0), 1.0)
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))[None]
    types = None if token_type_ids is None else torch.as_tensor(np.asarray(token_type_ids, dtype=np.int64))[None]
    length = ids.shape[1]
    captured = []
    kept_positions, layer_inputs = [], []
    with torch.no_grad():
        hidden = architecture.embed(model, ids, types)
        architecture.prepare(model, hidden)
        positions = np.arange(length)
        copied = reference_copy_sources(ids[0].tolist(), scoring.copy_ngram, scoring.copy_span)
        for layer, exponent in zip(architecture.layers(model), exponents):
            handle = architecture.attention(layer).register_forward_hook(
                lambda module, args, output: captured.append(output[-1])
            )
            hidden_in = hidden
            try:
                hidden = architecture.run_layer(model, layer, hidden, positions)
            finally:
                handle.remove()
            layer_inputs.append((hidden_in, positions.copy()))
            probs = captured.pop()[0].numpy()
            alive = len(positions)
            pinned = {"first": 0, "last": alive - 1, None: None}[architecture.pinned]
            keep = reference_keep_count(length, alive, keep_ratio, exponent)
            scores = reference_acc(probs, architecture.causal, scoring.last_queries)
            scores = reference_spread(scores, scoring.span_before, scoring.span_after)
            tiers = reference_tiers(positions, length, pinned, scoring.sinks, scoring.recent, copied)
            kept = reference_pick(scores, keep, tiers)
            hidden = hidden[:, torch.from_numpy(kept)]
            positions = positions[kept]
            kept_positions.append(positions.copy())
        hidden = architecture.final(model, hidden)
        if task == "text-classification":
            output = architecture.classify(model, hidden, ids)[0]
        elif task == "text-generation":
            output = architecture.generate_logits(model, hidden)[0]
        elif task == "text2text-generation":
            output = hidden[0]
        else:
            output = hidden[0, 0] if pooling == "cls" else hidden[0].mean(dim=0)
    return RowReference(output.numpy(), kept_positions, layer_inputs)


def reference_next_logits(model, row: RowReference, token_id: int, position: int) -> np.ndarray:
    """A decode step over the pruned cache of ``row`` (a text-generation ``reference_row``): the
    new token at ``position`` joins the word-vectors that entered each layer, which stay in
    their original order, and transformers' whole layer runs on them all; causal, so its last
    row is the new token's.  [vocab] logits of the token after it."""
    architecture = ARCHITECTURES[model.config.model_type]
    with torch.no_grad():
        hidden = architecture.embed_at(model, torch.tensor([[int(token_id)]]), np.array([int(position)]))
        for layer, (states, positions) in zip(architecture.layers(model), row.layer_inputs):
            everyone = np.append(positions, int(position))
            hidden = architecture.run_layer(model, layer, torch.cat([states, hidden], dim=1), everyone)[:, -1:]
        return architecture.generate_logits(model, architecture.final(model, hidden))[0].numpy()


def reference_batch(
    model, task: str, exponents: Sequence[float], feed: dict[str, np.ndarray], keep_ratio: float, pooling: str = "mean",
    scoring: ScoringRule = ScoringRule(),
) -> list[RowReference]:
    """Every row of a padded batch (either side, any width), each run alone on its real tokens."""
    rows = []
    for row, mask in enumerate(np.asarray(feed["attention_mask"]) > 0):
        types = feed.get("token_type_ids")
        rows.append(
            reference_row(
                model, task, exponents, feed["input_ids"][row][mask], keep_ratio,
                None if types is None else types[row][mask], pooling, scoring,
            )
        )
    return rows


class BartArchitecture(Architecture):
    """BART, and through its subclasses mBART and Marian: absolute positions are added once, before
    any layer, so the reference takes the embedding output straight from transformers' encoder (its
    first hidden state) and runs every ``*EncoderLayer`` whole on the survivors."""

    pinned = None

    def base(self, model):
        inner = getattr(model, "model", model)  # the task models wrap a *Model; feature extraction holds the encoder
        return getattr(inner, "encoder", inner)

    def embed(self, model, ids, types):
        return self.base(model)(input_ids=ids, output_hidden_states=True).hidden_states[0]

    def layers(self, model):
        return self.base(model).layers

    def attention(self, layer):
        return layer.self_attn

    def run_layer(self, model, layer, hidden, positions):
        if "layer_head_mask" in inspect.signature(layer.forward).parameters:  # transformers 4
            return _states(layer(hidden, attention_mask=None, layer_head_mask=None, output_attentions=True))
        return _states(layer(hidden, attention_mask=None))

    def classify(self, model, hidden, ids):
        from transformers.modeling_outputs import BaseModelOutput

        return model(input_ids=ids, encoder_outputs=BaseModelOutput(last_hidden_state=hidden)).logits


class MBartArchitecture(BartArchitecture):
    def final(self, model, hidden):
        return self.base(model).layer_norm(hidden)


ARCHITECTURES.update({"bart": BartArchitecture(), "mbart": MBartArchitecture(), "marian": BartArchitecture()})
