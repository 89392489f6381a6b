"""The ACC math and token selection, against naive references."""

import torch

from latexport.export.selection import (
    acc_scores,
    keep_counts,
    rank_and_pick,
    sanitize_keep_ratio,
    select_tokens,
)


def naive_acc(probs, valid):
    batch, heads, n, _ = probs.shape
    scores = torch.zeros(batch, n)
    for b in range(batch):
        for h in range(heads):
            for q in range(n):
                if valid[b, q]:
                    scores[b] += probs[b, h, q]
    return scores


def random_probs(batch=2, heads=3, n=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, heads, n, n, generator=generator), dim=-1)


def test_acc_sums_heads_and_valid_queries_only():
    probs = random_probs()
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    torch.testing.assert_close(acc_scores(probs, valid), naive_acc(probs, valid))


def test_ties_go_to_the_lower_index_and_order_is_kept():
    scores = torch.tensor([[1.0, 3.0, 2.0, 2.0, 2.0, 3.0, 0.0]])
    kept, valid = rank_and_pick(scores, torch.tensor([4]), 4)
    assert kept.tolist() == [[1, 2, 3, 5]]  # both 3.0s, then the first two 2.0s, in order
    assert valid.all()


def test_all_equal_scores_keep_the_first_k():
    kept, _ = rank_and_pick(torch.zeros(1, 50), torch.tensor([17]), 17)
    assert kept.tolist() == [list(range(17))]


def test_per_sample_counts_mark_surplus_slots():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    kept, valid = rank_and_pick(scores, torch.tensor([3, 1]), 3)
    assert kept[0].tolist() == [0, 1, 2]
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    assert kept[1, 0].item() == 3


def test_keep_counts_follow_each_samples_length_and_clamp():
    lengths = torch.tensor([100.0, 10.0, 1.0])
    alive = torch.tensor([100, 10, 1])
    counts = keep_counts(lengths, alive, torch.tensor(0.5), 1.0)
    assert counts.tolist() == [50, 5, 1]
    assert keep_counts(lengths, torch.tensor([40, 10, 1]), torch.tensor(0.5), 1.0).tolist() == [40, 5, 1]


def test_sanitize_keep_ratio():
    values = torch.tensor([float("nan"), -1.0, 0.0, 0.3, 1.0, 5.0])
    assert sanitize_keep_ratio(values).tolist() == [1.0, 0.0, 0.0, 0.30000001192092896, 1.0, 1.0]


def _select(probs, valid, keep, width_hidden=5):
    batch, _, n, _ = probs.shape
    hidden = torch.arange(batch * n * width_hidden, dtype=torch.float32).reshape(batch, n, width_hidden)
    mixed = -hidden
    positions = torch.arange(n).expand(batch, n)
    always = torch.zeros_like(valid)
    always[:, 0] = True
    return hidden, select_tokens(probs, valid, always, keep, hidden, mixed, positions)


def test_select_keeps_cls_padding_never_wins_and_rows_follow_positions():
    probs = random_probs(batch=2, n=8, seed=3)
    valid = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    hidden, (kept_hidden, kept_mixed, kept_valid, positions) = _select(probs, valid, torch.tensor([4, 2]))
    assert positions[:, 0].tolist() == [0, 0]
    assert kept_valid.tolist() == [[True] * 4, [True, True, False, False]]
    assert (positions[1, :2] < 5).all()  # padding never selected
    for b in range(2):
        assert positions[b][kept_valid[b]].tolist() == sorted(positions[b][kept_valid[b]].tolist())
        torch.testing.assert_close(kept_hidden[b], hidden[b, positions[b]])
        torch.testing.assert_close(kept_mixed[b], -hidden[b, positions[b]])
    # the best-scoring non-CLS tokens of row 0 were kept
    scores = naive_acc(probs, valid)[0]
    scores[0] = float("inf")
    assert sorted(positions[0].tolist()) == sorted(torch.topk(scores, 4).indices.tolist())


def test_select_is_identity_when_every_sample_keeps_all():
    probs = random_probs(batch=2, n=6)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    hidden, (kept_hidden, _, kept_valid, positions) = _select(probs, valid, torch.tensor([6, 4]))
    assert kept_hidden is hidden or torch.equal(kept_hidden, hidden)
    assert torch.equal(kept_valid, valid)
    assert positions.tolist() == [list(range(6))] * 2


def test_select_drops_spare_padding_width_at_ratio_one():
    probs = random_probs(batch=2, n=6)
    valid = torch.tensor([[True] * 4 + [False] * 2, [True] * 3 + [False] * 3])
    _, (kept_hidden, _, kept_valid, positions) = _select(probs, valid, torch.tensor([4, 3]))
    assert kept_hidden.shape[1] == 4
    assert kept_valid.tolist() == [[True] * 4, [True] * 3 + [False]]
