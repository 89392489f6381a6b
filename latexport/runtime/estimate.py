"""The FLOPs model behind ``latexport inspect``: the paper's "mathematical speedup".

Per layer, with ``n_in`` word-vectors entering and ``n_out`` kept, hidden size
``d``, feed-forward size ``f`` (multiply-accumulates; the constant factor 2
cancels in every ratio):

    attention projections  Q, K, V           3 * n_in * d * a      (linear)
    scores and mixing      QK^T, P V         2 * n_in^2 * a        (quadratic)
    output projection                        n_out * a * d         (n_in when the
                                                                   family drops after it)
    feed-forward                             m * n_out * d * f     (linear)
    ACC scoring (only when the layer drops)  heads * n_in^2
    position terms (DeBERTa's c2p, p2c)      t * n_in * r * a      (per head, as QK^T)

where ``a`` is the attention width (``d`` except in T5-style models) and ``m``
the feed-forward's weight matrices (2, or 3 when gated).  Disentangled
attention scores each of a layer's queries (c2p) and keys (p2c), ``t`` terms,
against its ``r`` relative-position embeddings (2 x the attention span); the
projections of those embeddings depend on the weights only, and ONNX Runtime
folds them into constants when it loads the file, so they cost nothing per
call.  A model whose head runs an unpruned decoder (T5 classification)
adds, per decoder layer, its self-attention and feed-forward over all ``n``
tokens and a cross-attention over the ``k`` encoder word-vectors kept after
the last layer.

The estimated speedup is cost(full model) / cost(at keep_ratio), for one
sequence of ``n`` valid tokens.  Embeddings and the task head are ignored:
they do not depend on keep_ratio beyond a few percent.  Numpy-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from latexport.runtime.profile import EliminationProfile


@dataclass(frozen=True)
class FlopsModel:
    hidden_size: int
    intermediate_size: int
    num_heads: int
    output_projection_after_drop: bool = True
    #: Attention projection width (T5: heads x d_kv); 0 means ``hidden_size``.
    attention_size: int = 0
    feed_forward_matrices: int = 2
    decoder_layers: int = 0
    #: Disentangled attention (DeBERTa): relative-position embeddings ``r`` and position terms ``t``.
    relative_positions: int = 0
    position_terms: int = 0

    def layer_cost(self, n_in: int, n_out: int, drops: bool) -> float:
        return float(sum(self.layer_cost_parts(n_in, n_out, drops)))

    def layer_cost_parts(self, n_in, n_out, drops):
        """(linear, quadratic) parts of ``layer_cost``: the weight products, and the
        per-head products (token by token, token by relative position) plus ACC,
        which run slower per multiply-accumulate.
        Works on numbers and, elementwise, on numpy arrays of counts."""
        d, f, a = self.hidden_size, self.intermediate_size, self.attention_size or self.hidden_size
        projection_tokens = n_out if self.output_projection_after_drop else n_in
        linear = 3 * n_in * d * a + projection_tokens * a * d + self.feed_forward_matrices * n_out * d * f
        quadratic = 2 * n_in * n_in * a + self.num_heads * n_in * n_in * drops
        quadratic = quadratic + self.position_terms * n_in * self.relative_positions * a
        return linear, quadratic

    def decoder_cost_parts(self, n, encoder_kept):
        """(linear, quadratic) of the unpruned decoder layers that read ``encoder_kept`` states."""
        d, f, a = self.hidden_size, self.intermediate_size, self.attention_size or self.hidden_size
        linear = 4 * n * d * a + 2 * n * d * a + 2 * encoder_kept * d * a + self.feed_forward_matrices * n * d * f
        quadratic = 2 * n * n * a + 2 * n * encoder_kept * a
        return self.decoder_layers * linear, self.decoder_layers * quadratic

    def model_cost(self, counts_in_out: list[tuple[int, int]]) -> float:
        encoder = sum(self.layer_cost(n_in, n_out, n_out < n_in) for n_in, n_out in counts_in_out)
        return encoder + float(sum(self.decoder_cost_parts(counts_in_out[0][0], counts_in_out[-1][1])))


def layer_counts(profile: EliminationProfile, seq_len: int, keep_ratio: float) -> list[tuple[int, int]]:
    """(entering, kept) word-vectors of every layer for one sequence."""
    kept = profile.kept_counts(seq_len, keep_ratio)
    entering = [seq_len] + kept[:-1]
    return list(zip(entering, kept))


def estimated_speedup(flops: FlopsModel, profile: EliminationProfile, seq_len: int, keep_ratio: float) -> float:
    full = flops.model_cost([(seq_len, seq_len)] * profile.num_layers)
    return full / flops.model_cost(layer_counts(profile, seq_len, keep_ratio))


def padded_batch_counts(profile: EliminationProfile, seq_lens, keep_ratios) -> list[tuple[int, int]]:
    """(entering, kept) of every layer for a padded batch whose rows have their own lengths and ratios.

    The graph cuts each layer's tensor to its widest row, so a batch costs what its
    widest row needs in every layer, times the batch: rows at lower ratios ride along.
    """
    per_row = [profile.kept_counts(int(length), float(ratio)) for length, ratio in zip(seq_lens, keep_ratios)]
    kept = [max(layer) for layer in zip(*per_row)]
    return list(zip([max(int(length) for length in seq_lens)] + kept[:-1], kept))


def estimated_batch_speedup(flops: FlopsModel, profile: EliminationProfile, seq_lens, keep_ratios) -> float:
    """The padded batch at its rows' ratios against the same batch at 1.0 (``padded_batch_counts``)."""
    longest = max(int(length) for length in seq_lens)
    full = flops.model_cost([(longest, longest)] * profile.num_layers)
    return full / flops.model_cost(padded_batch_counts(profile, seq_lens, keep_ratios))
