"""What latexport needs to know about an encoder family, and nothing more.

A family tells the generic layer loop in ``latexport.export.model`` how to embed,
how to run one layer's attention so that the probabilities come out, how to
finish the layer on the kept word-vectors, and how the task head reads the
result.  It reuses the transformers modules of the loaded model; no model code
is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from latexport.runtime.profile import DEFAULT_POWER, EliminationProfile
from latexport.runtime.scoring import ScoringRule

TASK_CLASSIFICATION = "text-classification"
TASK_FEATURES = "feature-extraction"
#: Encoder-decoder generation: the exported encoder returns its kept states and their mask.
TASK_TEXT2TEXT = "text2text-generation"
#: Decoder-only generation: a pruned prompt pass (prefill) and a decode step.
TASK_GENERATION = "text-generation"
TASKS = (TASK_CLASSIFICATION, TASK_FEATURES, TASK_TEXT2TEXT, TASK_GENERATION)


@dataclass(frozen=True)
class LayerShape:
    """The sizes the FLOPs model needs (see ``latexport.runtime.estimate``)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    #: Width of the attention projections (T5: heads x d_kv); 0 means ``hidden_size``.
    attention_size: int = 0
    #: Feed-forward weight matrices: 2, or 3 for a gated feed-forward (T5 v1.1, Llama).
    feed_forward_matrices: int = 2
    #: Layers of an unpruned decoder that reads the encoder (T5 classification).
    decoder_layers: int = 0
    #: Disentangled attention (DeBERTa): the relative-position embeddings every query or key is scored
    #: against (2 x the attention span), and how many such position terms a layer adds (c2p, p2c).
    relative_positions: int = 0
    position_terms: int = 0


class EncoderFamily:
    """BERT-style behaviour; subclasses override only what differs.

    The drop point is right after the attention mixing (probabilities times
    values), before the attention output projection, so that the output
    projection, the feed-forward and their LayerNorms of the same layer
    already run on fewer word-vectors.
    """

    name: str = "bert"
    model_types: tuple[str, ...] = ()
    #: Whether the attention output projection runs after the drop (FLOPs model).
    output_projection_after_drop: bool = True
    #: The ``model_type`` ONNX Runtime's transformer optimizer knows this family by.
    ort_model_type: str = "bert"
    #: The tasks latexport can export for this family.
    tasks: tuple[str, ...] = (TASK_CLASSIFICATION, TASK_FEATURES)
    #: Causal attention: ACC is normalised by how many queries can see each key.
    causal: bool = False

    # --- configuration ---------------------------------------------------
    def check_supported(self, config) -> None:
        """Raise ``UnsupportedModelError`` for a configuration of this family that latexport
        cannot convert faithfully (``family_for`` calls it)."""

    def uses_token_type_ids(self, config) -> bool:
        return getattr(config, "type_vocab_size", 0) > 1

    def layer_shape(self, config) -> LayerShape:
        return LayerShape(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=config.num_attention_heads,
        )

    def max_positions(self, config) -> int:
        return int(config.max_position_embeddings)

    def model_class(self, task: str):
        """The transformers auto class that loads a checkpoint for ``task``."""
        from transformers import AutoModel, AutoModelForSequenceClassification

        return AutoModelForSequenceClassification if task == TASK_CLASSIFICATION else AutoModel

    def scoring_rule(self, task: str) -> ScoringRule:
        """Which word-vectors a layer keeps for ``task`` (``latexport.runtime.scoring``): the paper's ACC."""
        return ScoringRule()

    def default_profile(self, num_layers: int, task: str) -> EliminationProfile:
        """How many each layer keeps for ``task`` when no power is asked for (``latexport.runtime.profile``)."""
        return EliminationProfile(num_layers, power=DEFAULT_POWER)

    # --- the forward pass, in the order the layer loop calls it ---------
    def core(self, model: nn.Module) -> nn.Module:
        """The bare encoder inside a task model (``model.bert``, ...)."""
        return model.base_model

    def embed(
        self, core: nn.Module, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor], positions: torch.Tensor
    ) -> torch.Tensor:
        return core.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def layers(self, core: nn.Module) -> nn.ModuleList:
        return core.encoder.layer

    def initial_positions(self, valid: torch.Tensor) -> torch.Tensor:
        """[B, N] int64 position of every input token: its column (rows arrive packed,
        real tokens first, so for a real token that is its index among the real ones)."""
        batch, width = valid.shape
        return torch.arange(width, dtype=torch.int64, device=valid.device).unsqueeze(0).expand(batch, width)

    def attention_inputs(self, core: nn.Module, valid: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        """What ``attend`` needs besides the states; BERT-style: the padding mask."""
        return self.attention_mask(valid, dtype)

    def attention_mask(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The additive [B, 1, 1, N] mask that BERT's eager attention adds to its scores."""
        return (1.0 - valid.to(dtype))[:, None, None, :] * torch.finfo(dtype).min

    def relative_position_table(self, core: nn.Module, width: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """For attention with a relative position bias (T5, MPNet): [2 * width - 1, heads], the bias of
        every key-minus-query distance.  The layer loop builds each layer's bias from it
        (``selection.relative_position_bias``) and hands that to ``attend`` instead of
        ``attention_mask``.  None: the family has no such bias."""
        return None

    def attend(
        self, layer: nn.Module, hidden: torch.Tensor, mask, cache=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the attention mixing; return (per-token mixed states, probabilities)."""
        mixed, probs = layer.attention.self(hidden, attention_mask=mask, output_attentions=True)
        return mixed, probs

    def finish(self, layer: nn.Module, mixed: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The rest of the layer, on the kept word-vectors only."""
        attention_output = layer.attention.output(mixed, residual)
        return layer.output(layer.intermediate(attention_output), attention_output)

    def decoder_graph(self, model: nn.Module, with_past: bool) -> nn.Module:
        """Encoder-decoder families: the module traced into the decoder graphs
        (``latexport.export.decoding.export_seq2seq_decoders``)."""
        raise NotImplementedError(f"the {self.name} family has no decoder graphs")

    def always_keep(self, valid: torch.Tensor) -> torch.Tensor:
        """The token the head reads: [CLS] (or <s>), each row's first real token.

        Found from the mask, not assumed at column 0, so that padding can never be
        pinned; the layer loop packs real tokens first, so it is column 0 there."""
        columns = torch.arange(valid.shape[1], device=valid.device).unsqueeze(0)
        first = valid.to(torch.int64).argmax(dim=1, keepdim=True)
        return torch.logical_and(columns == first, valid)

    def final_states(self, core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Whatever the encoder applies after its last layer (post-LN encoders: nothing)."""
        return hidden

    def classify(self, model: nn.Module, hidden: torch.Tensor, valid: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The task head on the final kept states ([B, K, D], ``valid`` [B, K]); [CLS] is at
        column 0 (packed rows, order-preserving selection, and [CLS] always kept)."""
        pooled = self.core(model).pooler(hidden)
        return model.classifier(model.dropout(pooled))
