"""The scoring rule of a decoder's prompt pass: the last queries' attention, sinks, a
recent window and copy sources, in the graph and in the independent reference."""

from typing import Optional

import numpy as np
import onnx
import pytest
import torch

from latexport.export import model as model_module
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import build_model, convert
from latexport.export.families import family_named
from latexport.export.reference import (
    reference_acc,
    reference_copy_sources,
    reference_pick,
    reference_spread,
    reference_tiers,
)
from latexport.export import selection
from latexport.export.selection import acc_scores, copy_sources, drop_tokens, spread_scores
from latexport.runtime.errors import SettingsError, ValidationError
from latexport.runtime.metadata import ModelMetadata
from latexport.runtime.reprofile import reprofile
from latexport.runtime.profile import DEFAULT_POWER, EliminationProfile, prompt_pass_profile
from latexport.runtime.scoring import DECODER_PROMPT_RULE, ScoringRule

SMALL_RULE = ScoringRule(last_queries=4, sinks=2, recent=3)
SPREAD_RULE = ScoringRule(last_queries=4, sinks=2, recent=3, span_before=3, span_after=1)
COPY_RULE = ScoringRule(last_queries=4, sinks=1, recent=2, span_before=1, span_after=1, copy_ngram=3, copy_span=4)


def repeating_ids(seed: int, lengths: list[int]) -> torch.Tensor:
    """Rows packed real tokens first from a small vocabulary, each ending with a passage it
    had earlier (so the copy tier has something to find), padding -7."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), -7, dtype=torch.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(0, 5, (length,), generator=generator)
        if length >= 8:
            ids[row, length - 4 : length] = ids[row, 1:5].clone()
    return ids


def packed_probs(seed: int, lengths: list[int], heads: int = 3):
    """Causal attention probabilities of rows packed real tokens first, and their validity."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    valid = torch.tensor([[column < length for column in range(width)] for length in lengths])
    logits = torch.randn(len(lengths), heads, width, width, generator=generator) * 3
    allowed = torch.tril(torch.ones(width, width, dtype=torch.bool))[None, None] & valid[:, None, None, :]
    probs = torch.softmax(logits.masked_fill(~allowed, -1e9), dim=-1)
    return probs, valid


def test_last_queries_count_only_each_rows_last_valid_queries():
    probs, valid = packed_probs(0, [9, 6, 3])
    scores = acc_scores(probs, valid, causal=True, last_queries=4)
    for row, length in enumerate([9, 6, 3]):
        queries = range(max(0, length - 4), length)
        expected = sum(probs[row, :, query, :].sum(dim=0) for query in queries)
        torch.testing.assert_close(scores[row, :length], expected[:length])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rule", [SMALL_RULE, SPREAD_RULE, COPY_RULE], ids=["plain", "spread", "copy"])
def test_graph_selection_ranks_like_the_independent_reference(seed, rule):
    """Pinned token, then sinks, then recent tokens, then copy sources, then the rest by
    (spread) score; every keep count from 1 to the whole row, rows of different lengths."""
    lengths = [11, 8, 5]
    probs, valid = packed_probs(seed, lengths)
    ids = repeating_ids(seed, lengths)
    copy_source = copy_sources(ids, valid, rule.copy_ngram, rule.copy_span) if rule.copies else None
    width = max(lengths)
    positions = torch.arange(width).unsqueeze(0).expand(len(lengths), width)
    valid_lengths = valid.sum(dim=1).to(torch.float32)
    family = family_named("llama")
    states = torch.randn(len(lengths), width, 2)
    for keep_each in range(1, width + 1):
        keep = torch.tensor([min(keep_each, length) for length in lengths])
        _, _, kept_valid, kept_positions, _ = drop_tokens(
            probs, valid, family.always_keep(valid), keep, states, states, positions, keep.max(), True,
            rule.last_queries, rule.sinks, rule.recent, valid_lengths, rule.span_before, rule.span_after, copy_source,
        )
        for row, length in enumerate(lengths):
            row_probs = probs[row, :, :length, :length].numpy()
            scores = reference_spread(reference_acc(row_probs, True, rule.last_queries), rule.span_before, rule.span_after)
            copied = reference_copy_sources(ids[row, :length].tolist(), rule.copy_ngram, rule.copy_span)
            tiers = reference_tiers(np.arange(length), length, length - 1, rule.sinks, rule.recent, copied)
            expected = reference_pick(scores, int(keep[row]), tiers)
            got = kept_positions[row][kept_valid[row]].numpy()
            assert got.tolist() == expected.tolist(), (keep_each, row)


def test_a_hot_token_lifts_the_phrase_before_it():
    """Spread 3 before and 1 after: the 5.0 at 6 lifts 3, 4 and 5 (and 7, where the 9.0 at 9
    is larger, as it is at 6 itself); padding lends nothing."""
    scores = torch.tensor([[0.1, 0.0, 0.2, 0.0, 0.0, 0.0, 5.0, 0.0, 0.3, 9.0], [0.4, 0.0, 7.0, 0, 0, 0, 0, 0, 0, 0]])
    valid = torch.tensor([[True] * 10, [True] * 2 + [False] * 8])
    spread = spread_scores(scores, valid, before=3, after=1)
    assert spread[0].tolist() == pytest.approx([0.2, 0.2, 0.2, 5.0, 5.0, 5.0, 9.0, 9.0, 9.0, 9.0])
    assert spread[1, :2].tolist() == pytest.approx([0.4, 0.4])  # the 7.0 is padding's
    assert reference_spread(scores[0].numpy(), 3, 1).tolist() == pytest.approx(spread[0].tolist())
    assert spread_scores(scores, valid, 0, 0) is scores


def test_tiers_protect_sinks_then_recent_tokens_then_copy_sources():
    tiers = reference_tiers(np.arange(10), 10, 9, sinks=2, recent=3, copied={4, 5})
    assert tiers.tolist() == [3, 3, 0, 0, 1, 1, 0, 2, 2, 4]
    scores = np.array([0.0, 0.1, 9, 8, 7, 6, 5, 0.2, 0.3, 0.0])
    assert reference_pick(scores, 3, tiers).tolist() == [0, 1, 9]
    assert reference_pick(scores, 6, tiers).tolist() == [0, 1, 4, 7, 8, 9]
    assert reference_pick(scores, 7, tiers).tolist() == [0, 1, 4, 5, 7, 8, 9]


def test_copy_sources_are_each_earlier_occurrence_of_the_rows_end_and_the_tokens_after_it():
    """Row 0 ends with 7 8 9, which also starts at 1 and at 5: each occurrence and the 2
    tokens after it are sources (1..5 and 5..9).  Row 3 ends with 4 4 4, which starts
    earlier at 0, 1 and 2 (an occurrence may overlap the row's tail, only not be it):
    sources 0..5.  Row 1 ends with a 3-gram seen nowhere else; row 2
    is too short to hold an earlier occurrence; padding (-7) is never a source."""
    ids = torch.tensor([[5, 7, 8, 9, 1, 7, 8, 9, 2, 7, 8, 9], [1, 2, 3, 4, 5, 6, -7, -7, -7, -7, -7, -7],
                        [7, 8, 9, -7, -7, -7, -7, -7, -7, -7, -7, -7], [4, 4, 4, 4, 4, 4, -7, -7, -7, -7, -7, -7]])
    valid = ids >= 0
    sources = copy_sources(ids, valid, ngram=3, span=2)
    assert torch.nonzero(sources[0]).flatten().tolist() == list(range(1, 10))
    assert torch.nonzero(sources[3]).flatten().tolist() == list(range(0, 6))
    assert not sources[1:3].any()
    for row in range(4):
        length = int(valid[row].sum())
        expected = reference_copy_sources(ids[row, :length].tolist(), 3, 2)
        assert set(torch.nonzero(sources[row]).flatten().tolist()) == expected
    # A span past the row's end stops at the end, where the row's own tail is covered by an earlier match's span.
    assert torch.nonzero(copy_sources(ids[:1], valid[:1], ngram=3, span=20)[0]).flatten().tolist() == list(range(1, 12))
    assert torch.nonzero(copy_sources(ids[:1], valid[:1], ngram=3, span=1)[0]).flatten().tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_decoder_prompt_pass_uses_the_decoder_rule_and_classifiers_keep_acc():
    decoder = family_named("llama")
    assert decoder.scoring_rule("text-generation") == DECODER_PROMPT_RULE
    assert decoder.scoring_rule("text-classification") == ScoringRule()
    assert family_named("bert").scoring_rule("text-classification") == ScoringRule()


def test_rule_checks_and_round_trip():
    assert ScoringRule.from_json(DECODER_PROMPT_RULE.to_json()) == DECODER_PROMPT_RULE
    assert ScoringRule.from_json(SPREAD_RULE.to_json()) == SPREAD_RULE
    assert ScoringRule.from_json('{"last_queries": 4, "recent": 3, "sinks": 2}') == SMALL_RULE  # a file from before the spread
    assert "spread over the 3 tokens before and 1 after" in SPREAD_RULE.describe()
    assert ScoringRule.from_json(COPY_RULE.to_json()) == COPY_RULE
    assert ScoringRule.from_json(SPREAD_RULE.to_json()).copies is False  # a file from before copy sources
    assert "an earlier occurrence of the last 3 and the 4 tokens after it" in COPY_RULE.describe()
    with pytest.raises(SettingsError, match="both set or both 0"):
        ScoringRule(copy_ngram=8)
    with pytest.raises(SettingsError, match="not below the protection bonus 5000"):
        ScoringRule(last_queries=256, copy_ngram=8, copy_span=64).check(num_heads=32, causal=True)
    with pytest.raises(SettingsError, match="whole number"):
        ScoringRule(last_queries=-1)
    with pytest.raises(SettingsError, match="not below the protection bonus"):
        ScoringRule(last_queries=512, sinks=4).check(num_heads=32, causal=True)
    with pytest.raises(SettingsError, match="must count the last queries"):
        ScoringRule(sinks=4).check(num_heads=12, causal=False)
    DECODER_PROMPT_RULE.check(num_heads=64, causal=True)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("rule", [SMALL_RULE, SPREAD_RULE, COPY_RULE], ids=["plain", "spread", "copy"])
def test_a_small_rule_converts_validates_and_is_recorded(decoder_checkpoints, family, rule, tmp_path):
    result = convert(str(decoder_checkpoints[(family, "text-generation")]), tmp_path / "out", scoring=rule)
    assert result.report.passed, result.report.render()
    assert any(check.reference == "independent" for check in result.report.checks)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "out" / "model.onnx")).metadata_props}
    assert ModelMetadata.from_props(props).scoring == rule
    # Every layer keeps the sinks and the recent positions, even at a tiny ratio.
    lat = build_model(load_checkpoint(str(decoder_checkpoints[(family, "text-generation")])), scoring=rule)
    ids = torch.randint(3, 200, (1, 30))
    with torch.no_grad():
        kept = lat(ids, torch.ones_like(ids), None, 0.2).kept_positions
    protected = set(range(rule.sinks)) | set(range(30 - rule.recent, 30))
    for layer in kept:
        assert protected <= set(layer[0][layer[0] >= 0].tolist())


def test_default_rule_file_is_recorded(decoder_converted):
    props = {p.key: p.value for p in onnx.load(str(decoder_converted[("llama", "text-generation")].out_dir / "model.onnx")).metadata_props}
    assert ModelMetadata.from_props(props).scoring == DECODER_PROMPT_RULE
    del props["latexport.scoring"]
    assert ModelMetadata.from_props(props).scoring == ScoringRule()  # files from before the rule was recorded


# Planted bugs: the scripted selection the exporter traces (and our PyTorch model with it),
# each compiled without one part of the rule.
def _without_protection(probs, valid, always_keep, keep, residual, mixed, positions, causal: bool = False,
                        last_queries: int = 0, sinks: int = 0, recent: int = 0, valid_lengths: Optional[torch.Tensor] = None,
                        span_before: int = 0, span_after: int = 0, copy_source: Optional[torch.Tensor] = None):
    return selection.select_tokens(probs, valid, always_keep, keep, residual, mixed, positions, causal, last_queries)


def _without_spread(probs, valid, always_keep, keep, residual, mixed, positions, causal: bool = False,
                    last_queries: int = 0, sinks: int = 0, recent: int = 0, valid_lengths: Optional[torch.Tensor] = None,
                    span_before: int = 0, span_after: int = 0, copy_source: Optional[torch.Tensor] = None):
    return selection.select_tokens(probs, valid, always_keep, keep, residual, mixed, positions, causal, last_queries,
                                   sinks, recent, valid_lengths)


def _without_copy_sources(probs, valid, always_keep, keep, residual, mixed, positions, causal: bool = False,
                          last_queries: int = 0, sinks: int = 0, recent: int = 0,
                          valid_lengths: Optional[torch.Tensor] = None, span_before: int = 0, span_after: int = 0,
                          copy_source: Optional[torch.Tensor] = None):
    return selection.select_tokens(probs, valid, always_keep, keep, residual, mixed, positions, causal, last_queries,
                                   sinks, recent, valid_lengths, span_before, span_after)


@pytest.mark.parametrize("broken, rule", [
    (_without_protection, SMALL_RULE),
    (_without_spread, ScoringRule(last_queries=4, sinks=1, recent=2, span_before=6, span_after=2)),
    (_without_copy_sources, COPY_RULE),
], ids=["protection", "spread", "copy sources"])
def test_a_graph_that_ignores_part_of_the_rule_fails_validation(decoder_checkpoints, tmp_path, monkeypatch, broken, rule):
    """Only the independent reference can notice, and conversion must refuse.  The validation
    prompts end by repeating an earlier passage, so the copy sources have something to find."""
    monkeypatch.setattr(model_module, "select_tokens", broken)
    monkeypatch.setattr(model_module, "select_tokens_for_export", torch.jit.script(broken))
    with pytest.raises(ValidationError) as failure:
        convert(str(decoder_checkpoints[("llama", "text-generation")]), tmp_path / "bad", scoring=rule)
    failed = [line for line in failure.value.report.splitlines() if "FAIL" in line]
    assert failed and all("independent" in line for line in failed), failure.value.report
    assert not (tmp_path / "bad").exists()


def test_a_prompt_pass_drops_by_the_prompt_pass_profile_and_a_classifier_by_the_default(decoder_checkpoints):
    for family in ("gpt2", "llama"):
        generation = build_model(load_checkpoint(str(decoder_checkpoints[(family, "text-generation")])))
        assert generation.profile == prompt_pass_profile(generation.profile.num_layers)
        explicit = build_model(load_checkpoint(str(decoder_checkpoints[(family, "text-generation")])), power=1.5)
        assert explicit.profile == EliminationProfile(explicit.profile.num_layers, power=1.5)
        classifier = build_model(load_checkpoint(str(decoder_checkpoints[(family, "text-classification")])))
        assert classifier.profile == EliminationProfile(classifier.profile.num_layers, power=DEFAULT_POWER)


def test_a_delayed_profile_converts_validates_and_keeps_its_delay_when_reprofiled(decoder_checkpoints, tmp_path,
                                                                                   monkeypatch):
    """The first two of four layers keep everything (exponent 0), the rest drop; the
    independent reference agrees, the file records the delay, and a new power keeps it."""
    delayed = EliminationProfile(4, power=0.25, delay=2)
    monkeypatch.setattr(family_named("llama").__class__, "default_profile", lambda self, layers, task: delayed)
    result = convert(str(decoder_checkpoints[("llama", "text-generation")]), tmp_path / "out")
    assert result.report.passed, result.report.render()
    assert result.metadata.profile == delayed
    assert reprofile(tmp_path / "out" / "model.onnx", 2.0) == EliminationProfile(4, power=2.0, delay=2)
    lat = build_model(load_checkpoint(str(decoder_checkpoints[("llama", "text-generation")])))
    ids = torch.randint(3, 200, (1, 30))
    with torch.no_grad():
        kept = lat(ids, torch.ones_like(ids), None, 0.1).kept_positions
    counts = [int((layer >= 0).sum()) for layer in kept]
    assert counts == delayed.kept_counts(30, 0.1) and counts[:2] == [30, 30] and counts[-1] == 3
