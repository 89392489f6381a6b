import math

import pytest

from latexport.runtime.errors import SettingsError
from latexport.runtime.profile import PROMPT_PASS_POWER, EliminationProfile, clamp_keep_ratio, prompt_pass_profile


def test_formula_matches_documentation():
    geometric = EliminationProfile(num_layers=4, power=1.0)
    # fraction(l) = 0.5 ** (l / 4); k = ceil(100 * fraction - 1e-3)
    expected = [math.ceil(100 * 0.5 ** (layer / 4) - 1e-3) for layer in range(1, 5)]
    assert geometric.kept_counts(100, 0.5) == expected == [85, 71, 60, 50]
    convex = EliminationProfile(num_layers=4, power=2.0)
    assert convex.kept_counts(100, 0.5) == [math.ceil(100 * 0.5 ** ((layer / 4) ** 2) - 1e-3) for layer in range(1, 5)]


def test_keep_ratio_is_what_survives_the_last_layer():
    for power in (1.0, 1.5, 2.0):
        assert EliminationProfile(num_layers=12, power=power).kept_counts(1000, 0.2)[-1] == 200


def test_larger_power_keeps_more_in_lower_layers():
    counts = {power: EliminationProfile(num_layers=6, power=power).kept_counts(100, 0.1) for power in (1.0, 2.0)}
    assert all(a <= b for a, b in zip(counts[1.0][:-1], counts[2.0][:-1]))
    assert counts[1.0][0] < counts[2.0][0]


def test_one_keeps_everything_and_zero_keeps_one():
    profile = EliminationProfile(num_layers=6)
    assert profile.kept_counts(37, 1.0) == [37] * 6
    assert profile.kept_counts(37, 0.0) == [1] * 6


@pytest.mark.parametrize("length", [1, 2, 7, 64, 513])
def test_counts_never_grow_with_depth_or_smaller_ratio(length):
    profile = EliminationProfile(num_layers=12)
    ratios = [1.0, 0.95, 0.8, 0.5, 0.3, 0.1, 0.01, 0.0]
    previous = None
    for ratio in ratios:
        counts = profile.kept_counts(length, ratio)
        assert all(1 <= k <= length for k in counts)
        assert all(a >= b for a, b in zip(counts, counts[1:])), counts
        if previous is not None:
            assert all(a >= b for a, b in zip(previous, counts))
        previous = counts


def test_clamping_mirrors_the_graph():
    assert clamp_keep_ratio(float("nan")) == 1.0
    assert clamp_keep_ratio(5) == 1.0
    assert clamp_keep_ratio(-1) == 0.0
    assert clamp_keep_ratio(0.25) == 0.25


def test_json_round_trip_and_bad_profiles():
    profile = EliminationProfile(num_layers=3, power=0.75)
    assert EliminationProfile.from_json(profile.to_json()) == profile
    with pytest.raises(ValueError):
        EliminationProfile(num_layers=0)
    with pytest.raises(ValueError):
        EliminationProfile(num_layers=3, power=0.0)
    with pytest.raises(ValueError):
        EliminationProfile(num_layers=3, power=float("nan"))
    with pytest.raises(ValueError):
        EliminationProfile(num_layers=3, name="linear")


def test_a_delay_keeps_everything_first_then_decays_over_the_rest():
    profile = EliminationProfile(num_layers=10, power=0.5, delay=4)
    counts = profile.kept_counts(100, 0.2)
    assert counts[:4] == [100, 100, 100, 100]
    for layer in range(5, 11):  # 1-based, as documented
        assert counts[layer - 1] == math.ceil(100 * 0.2 ** (((layer - 4) / 6) ** 0.5) - 1e-3)
    assert counts[-1] == 20
    assert "layers 1-4 keep everything" in profile.describe()
    assert EliminationProfile.from_json(profile.to_json()) == profile
    old_file = '{"name": "power", "num_layers": 10, "power": 0.5}'  # recorded before delays existed
    assert EliminationProfile.from_json(old_file).delay == 0
    for bad in (-1, 10, 2.5, True):
        with pytest.raises(SettingsError, match="delay"):
            EliminationProfile(num_layers=10, delay=bad)


def test_prompt_pass_profile_scales_its_delay_with_depth():
    assert prompt_pass_profile(30) == EliminationProfile(30, power=PROMPT_PASS_POWER, delay=4)
    assert prompt_pass_profile(12).delay == 2
    assert prompt_pass_profile(2).delay == 0
