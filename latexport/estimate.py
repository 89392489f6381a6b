"""The FLOPs model behind ``latexport inspect``: the paper's "mathematical speedup".

Per layer, with ``n_in`` word-vectors entering and ``n_out`` kept, hidden size
``d``, feed-forward size ``f`` (multiply-accumulates; the constant factor 2
cancels in every ratio):

    attention projections  Q, K, V           3 * n_in * d^2        (linear)
    scores and mixing      QK^T, P V         2 * n_in^2 * d        (quadratic)
    output projection                        n_out * d^2           (n_in when the
                                                                   family drops after it)
    feed-forward                             2 * n_out * d * f     (linear)
    ACC scoring (only when the layer drops)  heads * n_in^2

The estimated speedup is cost(full model) / cost(at keep_ratio), for one
sequence of ``n`` valid tokens.  Embeddings and the task head are ignored:
they do not depend on keep_ratio beyond a few percent.  Numpy-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from latexport.profile import EliminationProfile


@dataclass(frozen=True)
class FlopsModel:
    hidden_size: int
    intermediate_size: int
    num_heads: int
    output_projection_after_drop: bool = True

    def layer_cost(self, n_in: int, n_out: int, drops: bool) -> float:
        return float(sum(self.layer_cost_parts(n_in, n_out, drops)))

    def layer_cost_parts(self, n_in, n_out, drops):
        """(linear, quadratic) parts of ``layer_cost``: the weight products, and the
        token-by-token products (plus ACC), which run slower per multiply-accumulate.
        Works on numbers and, elementwise, on numpy arrays of counts."""
        d, f = self.hidden_size, self.intermediate_size
        projection_tokens = n_out if self.output_projection_after_drop else n_in
        linear = 3 * n_in * d * d + projection_tokens * d * d + 2 * n_out * d * f
        quadratic = 2 * n_in * n_in * d + self.num_heads * n_in * n_in * drops
        return linear, quadratic

    def model_cost(self, counts_in_out: list[tuple[int, int]]) -> float:
        return sum(self.layer_cost(n_in, n_out, n_out < n_in) for n_in, n_out in counts_in_out)


def layer_counts(profile: EliminationProfile, seq_len: int, keep_ratio: float) -> list[tuple[int, int]]:
    """(entering, kept) word-vectors of every layer for one sequence."""
    kept = profile.kept_counts(seq_len, keep_ratio)
    entering = [seq_len] + kept[:-1]
    return list(zip(entering, kept))


def estimated_speedup(flops: FlopsModel, profile: EliminationProfile, seq_len: int, keep_ratio: float) -> float:
    full = flops.model_cost([(seq_len, seq_len)] * profile.num_layers)
    return full / flops.model_cost(layer_counts(profile, seq_len, keep_ratio))
