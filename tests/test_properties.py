"""Property-based tests over random shapes, padding and keep ratios (hypothesis)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_export import session_with_taps

from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model
from latexport.export.validate import pytorch_output
from latexport.runtime.profile import EliminationProfile

FAMILIES = ("bert", "roberta", "distilbert")


@pytest.fixture(scope="module")
def prepared(converted, checkpoints):
    out = {}
    for family in FAMILIES:
        key = (family, "text-classification")
        loaded = load_checkpoint(str(checkpoints[key]))
        session, taps = session_with_taps(converted[key])
        out[family] = (loaded, build_model(loaded), session, taps)
    return out


@st.composite
def batches(draw):
    family = draw(st.sampled_from(FAMILIES))
    lengths = draw(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=4))
    width = max(lengths) + draw(st.integers(min_value=0, max_value=5))
    ratio = draw(st.one_of(st.floats(min_value=0.001, max_value=1.0), st.sampled_from([1.0, 0.5, 0.01])))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    return family, lengths, width, ratio, seed


def make_feed(loaded, lengths, width, seed):
    rng = np.random.default_rng(seed)
    vocab_low = 5
    pad = loaded.tokenizer.pad_token_id
    ids = np.full((len(lengths), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(vocab_low, loaded.config.vocab_size, size=length)
        ids[row, 0] = loaded.tokenizer.cls_token_id
        mask[row, :length] = 1
    feed = {"input_ids": ids, "attention_mask": mask}
    if loaded.family.uses_token_type_ids(loaded.config):
        feed["token_type_ids"] = np.zeros_like(ids)
    return feed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=batches())
def test_onnx_equals_pytorch_and_selection_invariants(prepared, case):
    family, lengths, width, ratio, seed = case
    loaded, lat, session, taps = prepared[family]
    feed = make_feed(loaded, lengths, width, seed)
    got, *got_kept = session.run(["logits", *taps], {**feed, "keep_ratio": np.array(ratio, np.float32)})
    expected, expected_kept = pytorch_output(lat, feed, ratio)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    profile: EliminationProfile = lat.profile
    for row, length in enumerate(lengths):
        counts = profile.kept_counts(length, ratio)
        previous = list(range(length))
        for layer, (kept, want) in enumerate(zip(got_kept, expected_kept)):
            np.testing.assert_array_equal(kept, want)
            alive = [int(p) for p in kept[row] if p >= 0]
            assert len(alive) == counts[layer] and 1 <= len(alive) <= length
            assert alive[0] == 0, "[CLS] is always kept"
            assert alive == sorted(alive), "original order is preserved"
            assert set(alive) <= set(previous), "a dropped word-vector never comes back"
            previous = alive


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=5000),
    ratio=st.floats(allow_nan=True, allow_infinity=True),
    layers=st.integers(min_value=1, max_value=48),
    power=st.floats(min_value=0.25, max_value=4.0),
)
def test_profile_counts_stay_within_bounds(length, ratio, layers, power):
    counts = EliminationProfile(layers, power=power).kept_counts(length, ratio)
    assert len(counts) == layers
    assert all(1 <= k <= max(length, 1) for k in counts)
    assert all(a >= b for a, b in zip(counts, counts[1:]))


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=30),
    data=st.data(),
)
def test_ties_always_go_to_the_lower_position(scores, data):
    from latexport.export.selection import rank_and_pick

    keep = data.draw(st.integers(min_value=1, max_value=len(scores)))
    kept, _ = rank_and_pick(torch.tensor([scores], dtype=torch.float32), torch.tensor([keep]), keep)
    reference = sorted(np.argsort(-np.array(scores), kind="stable")[:keep].tolist())
    assert kept[0].tolist() == reference
