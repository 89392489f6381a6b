import pytest

from latexport.runtime.estimate import FlopsModel, estimated_speedup, layer_counts
from latexport.runtime.profile import EliminationProfile

BERT_BASE = FlopsModel(hidden_size=768, intermediate_size=3072, num_heads=12)


def test_full_model_is_speedup_one():
    assert estimated_speedup(BERT_BASE, EliminationProfile(12), 512, 1.0) == pytest.approx(1.0)


def test_layer_cost_formula():
    d, f = 768, 3072
    # 100 tokens in, 50 kept: QKV on 100, attention 100^2, output projection and FFN on 50, scoring 12 * 100^2
    expected = 3 * 100 * d * d + 2 * 100 * 100 * d + 50 * d * d + 2 * 50 * d * f + 12 * 100 * 100
    assert BERT_BASE.layer_cost(100, 50, drops=True) == expected


def test_dropping_after_the_output_projection_costs_more():
    late = FlopsModel(768, 3072, 12, output_projection_after_drop=False)
    assert late.layer_cost(100, 50, True) > BERT_BASE.layer_cost(100, 50, True)


def test_speedup_grows_as_ratio_falls_and_with_length():
    profile = EliminationProfile(12, power=1.0)
    speedups = [estimated_speedup(BERT_BASE, profile, 512, r) for r in (1.0, 0.9, 0.5, 0.1, 0.01)]
    assert speedups == sorted(speedups)
    assert 2.5 < speedups[3] < 3.0  # geometric, 0.1 at 512 tokens: about 2.75x
    assert estimated_speedup(BERT_BASE, profile, 512, 0.5) > estimated_speedup(BERT_BASE, profile, 64, 0.5)


def test_layer_counts_chain():
    counts = layer_counts(EliminationProfile(4), 100, 0.5)
    assert counts[0][0] == 100
    assert all(counts[i][1] == counts[i + 1][0] for i in range(3))
