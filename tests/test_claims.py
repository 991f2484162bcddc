"""The claims registry and the one rule set: every rule can give each of its verdicts on made-up numbers,
collapsed models and floors are untestable, fewer than five units never decide, and each claim is decided
from a made-up tidy frame by its registered decider."""
import inspect
import math

import numpy as np
import pandas as pd
import pytest

from helpers.claims import board as board_module
from helpers.claims import registry, rules
from helpers.claims.registry import CLAIMS, Claim, decide
from helpers.claims.rules import (INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED, UNTESTABLE, VERDICTS, Verdict,
                                  aggregate, equivalence, superiority)

R, NR, I, P, U = REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, PARTLY, UNTESTABLE


# --------------------------------------------------------------------------- regime
def test_working_threshold_is_three_times_dense_perplexity():
    assert rules.WORKING_MAX_PPL_RATIO == 3.0
    assert rules.is_working(1.0) and rules.is_working(3.0)
    assert not rules.is_working(3.01) and not rules.is_working(float("nan")) and not rules.is_working(0.0)


def test_floor_is_two_standard_errors_of_chance():
    assert rules.at_floor(0.29, 0.02, chance=0.25)          # 2 standard errors above chance: at the floor
    assert not rules.at_floor(0.31, 0.02, chance=0.25)
    assert rules.at_floor(0.20, 0.01, chance=0.25)          # below chance
    assert rules.at_floor(0.9, float("nan"), chance=0.25)   # no standard error: cannot tell


# --------------------------------------------------------------------------- superiority / direction
@pytest.mark.parametrize("interval, kwargs, expected", [
    ((0.3, 0.1, 0.5, 10), {}, R),                                                       # excludes 0 above
    ((-0.3, -0.5, -0.1, 10), {}, NR),                                                   # excludes 0 below
    ((0.05, -0.1, 0.2, 10), {}, I),                                                     # straddles
    ((0.02, -0.02, 0.05, 50), {"claimed_effect": 0.1, "detectable": 0.06}, NR),         # short of a detectable effect
    ((0.02, -0.02, 0.05, 50), {"claimed_effect": 0.1, "detectable": 0.2}, I),           # undetectable at this n
    ((0.3, 0.1, 0.5, 4), {}, P),                                                        # n < 5: at most partly
    ((-0.3, -0.5, -0.1, 4), {}, I),                                                     # n < 5: never "not reproduced"
    ((0.3, 0.1, 0.5, 10), {"ppl_ratio": [1.2, 3.5]}, U),                                # a collapsed model
    ((-0.3, -0.5, -0.1, 10), {"ppl_ratio": 4.0}, U),                                    # never "not reproduced"
    ((0.3, 0.1, 0.5, 10), {"dense_at_floor": True}, U),                                 # dense at the task's floor
    ((0.8, 0.6, 0.95, 10), {"null": 1.0, "side": "less"}, R),                           # a ratio below 1, claimed less
    ((1.2, 1.1, 1.3, 10), {"null": 1.0, "side": "less"}, NR),
    ((-0.3, -0.5, -0.1, 10), {"side": "two-sided"}, R),                                 # differs, either direction
    ((0.0, -0.01, 0.01, 100), {"side": "two-sided", "claimed_effect": 0.02, "detectable": 0.015}, NR),
    ((0.0, -0.01, 0.03, 100), {"side": "two-sided", "claimed_effect": 0.02, "detectable": 0.015}, I),
])
def test_superiority_gives_each_verdict(interval, kwargs, expected):
    result = superiority(*interval, **kwargs)
    assert result.verdict == expected, result.why
    assert result.why


def test_negative_verdicts_print_the_detectable_effect():
    for result in (superiority(-0.3, -0.5, -0.1, 10, detectable=0.12),
                   superiority(0.05, -0.1, 0.2, 10, detectable=0.12),
                   equivalence(1.5, 1.3, 1.7, 10, margin=(0.9, 1.1), detectable=0.12)):
        assert result.verdict in (NR, I) and "detectable effect 0.12" in result.why


def test_a_claim_may_ask_for_more_units_but_never_fewer():
    assert superiority(0.3, 0.1, 0.5, 10, min_units=20).verdict == P
    with pytest.raises(ValueError, match="min_units=3"):
        superiority(0.3, 0.1, 0.5, 10, min_units=3)


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("interval, kwargs, expected", [
    ((1.0, 0.95, 1.05, 8), {}, R),
    ((1.5, 1.3, 1.7, 8), {}, NR),          # wholly above the margin
    ((0.5, 0.4, 0.6, 8), {}, NR),          # wholly below
    ((1.05, 0.95, 1.2, 8), {}, I),         # straddles the upper bound
    ((1.0, 0.99, 1.01, 3), {}, P),         # n < 5: inside, but at most partly
    ((1.5, 1.4, 1.6, 3), {}, I),           # n < 5: outside, never "not reproduced"
    ((1.0, 0.95, 1.05, 8), {"ppl_ratio": 3.2}, U),
    ((1.5, 1.3, 1.7, 8), {"ppl_ratio": 3.2}, U),
    ((1.0, 0.95, 1.05, 8), {"dense_at_floor": True}, U),
])
def test_equivalence_gives_each_verdict(interval, kwargs, expected):
    assert equivalence(*interval, margin=(0.9, 1.1), **kwargs).verdict == expected


def test_one_sided_margins_are_non_inferiority():
    assert equivalence(0.2, 0.1, 0.3, 6, margin=(float("-inf"), 0.5)).verdict == R
    assert equivalence(0.8, 0.6, 1.0, 6, margin=(float("-inf"), 0.5)).verdict == NR
    with pytest.raises(ValueError, match="margin"):
        equivalence(1.0, 0.9, 1.1, 6, margin=(1.1, 0.9))


# --------------------------------------------------------------------------- aggregation
def v(verdict: str) -> Verdict:
    return Verdict(verdict, "made up", "test")


@pytest.mark.parametrize("rule, verdicts, p_values, expected", [
    ("all", [R, R, R], None, R),
    ("all", [NR, I, NR], None, NR),
    ("all", [R, NR, R], None, P),
    ("all", [I, I], None, I),
    ("all", [U, U], None, U),
    ("all", [R, U], None, R),                      # a collapsed point is left out, not counted against
    ("majority", [R, R, NR], None, R),
    ("majority", [NR, NR, R], None, NR),
    ("majority", [R, NR, I, I], None, P),
    ("majority", [I, NR, I], None, I),
    ("holm", [R, R], [0.001, 0.02], R),
    ("holm", [R, R], [0.001, 0.04], R),            # 0.001 <= 0.05 / 2, then 0.04 <= 0.05 / 1
    ("holm", [R, R], [0.001, 0.06], P),            # the second does not survive the correction
    ("holm", [R, R], [0.03, 0.04], I),             # neither survives: 0.03 > 0.05 / 2
    ("holm", [NR, NR], [0.9, 0.8], NR),
    ("holm-any", [R, I, I], [0.001, 0.5, 0.6], R),
    ("holm-any", [R, I], [0.04, 0.5], I),          # 0.04 > 0.05 / 2: not after correction
    ("holm-any", [NR, NR], [0.9, 0.9], NR),
    ("holm-any", [P, I], [0.2, 0.5], P),
])
def test_aggregation_gives_each_verdict(rule, verdicts, p_values, expected):
    result = aggregate([v(x) for x in verdicts], rule, p_values=p_values)
    assert result.verdict == expected, result.why
    assert result.rule == f"aggregate: {rule}"


def test_holm_steps_down():
    assert rules.holm([0.01, 0.04, 0.03]).tolist() == [True, False, False]   # 0.03 > 0.05 / 2 stops it
    assert rules.holm([0.01, 0.04, 0.02]).tolist() == [True, True, True]     # 0.02 <= 0.025, 0.04 <= 0.05
    assert rules.holm([float("nan"), 0.001]).tolist() == [False, True]


# --------------------------------------------------------------------------- every rule can say "not reproduced"
NOT_REPRODUCED_EXAMPLES = {
    "superiority": lambda: superiority(-0.3, -0.5, -0.1, 10),
    "equivalence": lambda: equivalence(1.5, 1.3, 1.7, 8, margin=(0.9, 1.1)),
    "aggregate": lambda: aggregate([v(NR), v(NR)], "all"),
}


def test_every_rule_can_say_not_reproduced():
    verdict_rules = {name for name, function in inspect.getmembers(rules, inspect.isfunction)
                     if function.__module__ == rules.__name__ and not name.startswith("_")
                     and inspect.signature(function).return_annotation in ("Verdict", Verdict)}
    assert verdict_rules == set(NOT_REPRODUCED_EXAMPLES), \
        f"a rule returning a Verdict needs an example that gives 'not reproduced': {verdict_rules}"
    for name, example in NOT_REPRODUCED_EXAMPLES.items():
        assert example().verdict == NR, name
    for rule in rules.AGGREGATIONS:
        p_values = [0.9, 0.9] if rule.startswith("holm") else None
        assert aggregate([v(NR), v(NR)], rule, p_values=p_values).verdict == NR, rule


def test_regime_gate_only_ever_says_untestable():
    assert rules.regime_gate(5.0).verdict == U and rules.regime_gate(1.5) is None
    assert rules.regime_gate(None) is None and rules.regime_gate([1.2, float("nan")]) is None


# --------------------------------------------------------------------------- power, bins, damage matching
def test_detectable_effect_matches_a_hand_calculation():
    # t_{0.975, 9} = 2.262, t_{0.80, 9} = 0.883 (tables); sd 2, n 10: (2.262 + 0.883) * 2 / sqrt(10) = 1.989
    assert rules.detectable_effect(2.0, 10) == pytest.approx((2.262 + 0.883) * 2 / math.sqrt(10), rel=1e-3)
    assert rules.detectable_effect(1.0, 1) == math.inf
    differences = np.array([0.1, 0.3, -0.1, 0.2, 0.4, 0.0])
    assert rules.mean_interval(differences).detectable_effect == pytest.approx(
        rules.detectable_effect(differences.std(ddof=1), 6))


def test_bin_means_follow_from_cumulative_means():
    rng = np.random.default_rng(0)
    kl = rng.gamma(2.0, 1.0, size=(3, 64))              # per-position values of 3 windows
    contexts = [4, 16, 32, 64]
    cumulative = np.stack([kl[:, :c].mean(axis=1) for c in contexts], axis=1)
    direct = np.stack([kl[:, a:b].mean(axis=1) for a, b in zip([0, *contexts[:-1]], contexts)], axis=1)
    assert np.allclose(rules.bin_means_from_cumulative(contexts, cumulative), direct)
    with pytest.raises(ValueError, match="strictly rising"):
        rules.bin_means_from_cumulative([16, 4], cumulative[:, :2])


def test_damage_matching_picks_the_nearest_setting_in_log_ratio():
    match = rules.damage_match({"30%": 1.1, "40%": 1.2, "50%": 1.6}, 1.25)
    assert match.setting == "40%" and match.within_tolerance
    assert match.log_distance == pytest.approx(abs(math.log(1.2 / 1.25)))
    # nearest on a log scale, not a linear one: |2 - 1| < |3.1 - 2| but log(2 / 1) > log(3.1 / 2)
    assert rules.damage_match({"a": 1.0, "b": 3.1}, 2.0).setting == "b"
    far = rules.damage_match({"50%": 23.0, "30%": 2.0}, 1.25)
    assert far.setting == "30%" and not far.within_tolerance  # 2.0 is more than 1.25x from 1.25


def test_published_ratios_hold_the_reference_table():
    assert registry.PUBLISHED_RATIOS[("LLaMA-2-7B (4096)", "wanda 50%")] == 1.25
    assert registry.PUBLISHED_RATIOS[("LLaMA-2-7B (4096)", "magnitude 50%")] == 2.91
    assert registry.PUBLISHED_RATIOS[("LLaMA-7B (2048)", "owl+sparsegpt 70%")] == 3.4
    assert all(r > 0 for r in registry.PUBLISHED_RATIOS.values())


# --------------------------------------------------------------------------- the registry
IDS = {f"LC{i}" for i in range(1, 9)} | {f"KI{i}" for i in range(1, 9)} | {f"HS{i}" for i in range(1, 7)}


def test_registry_holds_every_claim_with_a_decider():
    assert set(CLAIMS) == IDS and set(registry.DECIDERS) == IDS
    for claim in CLAIMS.values():
        assert claim.words and claim.setting and claim.unit and claim.variants_needed and claim.frame
        if claim.test_kind == "equivalence":
            assert claim.margin is not None and claim.margin[0] < claim.margin[1], claim.id
    assert CLAIMS["LC2"].margin == (0.9, 1.1) and CLAIMS["KI3"].margin == (0.05, 0.13)
    assert CLAIMS["HS5"].margin[1] == 0.5
    assert {c.paper for c in CLAIMS.values()} == {"2406.06773", "2310.01382", "2409.20094"}


def test_a_claim_is_checked_when_built():
    with pytest.raises(ValueError, match="margin"):
        Claim("X1", "2406.06773", "w", "s", "equivalence", None, "windows", 5, ("v",), None, frame="f")
    with pytest.raises(ValueError, match="min_n"):
        Claim("X2", "2406.06773", "w", "s", "superiority", None, "windows", 3, ("v",), 0.1, frame="f")


# --------------------------------------------------------------------------- deciders on made-up frames
def growth_rows(label: str, factor: float, *, ppl_ratio: float = 1.5, windows: int = 8, spread: float = 0.02,
                seed: int = 0, **settings) -> list[dict]:
    """Per window: early-bin KL around 0.1 and late-bin KL = factor x early, with a little per-window noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for window in range(windows):
        early = 0.1 * math.exp(rng.normal(0, 0.3))
        late = early * factor * math.exp(rng.normal(0, spread))
        rows.append({"model": "made-up", "label": label, "window": window, "early_bin_kl": early,
                     "late_bin_kl": late, "ppl_ratio": ppl_ratio, **settings})
    return rows


def growth_frame(*specs) -> pd.DataFrame:
    return pd.DataFrame([row for i, spec in enumerate(specs) for row in growth_rows(**{"seed": i, **spec})])


@pytest.mark.parametrize("factor, kwargs, expected", [
    (1.0, {}, R),                               # flat: inside [0.9, 1.1]
    (1.6, {}, NR),                              # grows: wholly outside
    (1.08, {"spread": 0.3}, I),                 # straddles the bound
    (1.0, {"windows": 3}, P),                   # three windows: at most partly
    (1.6, {"ppl_ratio": 5.0}, U),               # collapsed: never "not reproduced"
])
def test_lc2_pruning_flatness(factor, kwargs, expected):
    frame = growth_frame({"label": "wanda 50%", "factor": factor, "family": "pruning", "method": "wanda",
                          "sparsity": 0.5, **kwargs},
                         {"label": "rtn 3-bit", "factor": 2.0, "family": "quantization", "method": "rtn", "sparsity": 0.0})
    result = decide("LC2", frame)
    assert result.verdict == expected, result.why
    assert result.n == kwargs.get("windows", 8) and result.unit == "windows" and result.model == "made-up"
    assert "geometric mean" in result.interval and result.points[0].name == "wanda 50%"


def test_lc2_damage_matched_regime_picks_the_sparsity_nearest_the_published_ratio():
    # Wanda 50% on LLaMA-2-7B costs 1.25x: here 30% (1.3x) is matched, 50% (2.3x) is the nominal point
    pruned = dict(family="pruning", method="wanda")
    frame = growth_frame({"label": "wanda 30%", "factor": 1.0, "sparsity": 0.3, "ppl_ratio": 1.3, **pruned},
                         {"label": "wanda 50%", "factor": 1.6, "sparsity": 0.5, "ppl_ratio": 2.3, **pruned},
                         {"label": "random 1%", "factor": 1.6, "sparsity": 0.01, "ppl_ratio": 1.3,
                          "family": "pruning", "method": "random"})
    matched = decide("LC2", frame, "damage-matched")
    assert matched.verdict == R and [p.name for p in matched.points] == ["wanda 30%"]   # random is LC4's
    assert decide("LC2", frame, "nominal").verdict == NR                               # 50% grows by 1.6x
    far = decide("LC2", frame[frame.label != "wanda 30%"], "damage-matched")
    assert far.verdict == U and "outside" in far.why


def test_lc1_is_an_existence_claim_under_holm():
    flat = {"label": "wanda", "factor": 1.0, "family": "pruning"}
    assert decide("LC1", growth_frame(flat, {"label": "rtn", "factor": 1.8, "family": "quantization"})).verdict == R
    shrinks = {"label": "rtn", "factor": 0.5, "family": "quantization"}
    assert decide("LC1", growth_frame({**flat, "factor": 0.6}, shrinks)).verdict == NR


def test_lc3_pairs_quantization_with_pruning_at_matched_damage():
    quant = {"label": "rtn 4-bit", "family": "quantization", "bits": 4, "ppl_ratio": 1.3}
    prune = {"label": "wanda 30%", "family": "pruning", "bits": np.nan, "ppl_ratio": 1.25}
    far = {"label": "magnitude 50%", "factor": 1.0, "family": "pruning", "bits": np.nan, "ppl_ratio": 2.9}
    grows_more = decide("LC3", growth_frame({**quant, "factor": 1.8}, {**prune, "factor": 1.0}, far))
    assert grows_more.verdict == R and grows_more.regime == "damage-matched"
    assert "wanda 30%" in grows_more.points[0].name               # the nearest perplexity ratio, not magnitude
    assert decide("LC3", growth_frame({**quant, "factor": 1.0}, {**prune, "factor": 1.8}, far)).verdict == NR
    unmatched = decide("LC3", growth_frame({**quant, "factor": 1.8}, {**far, "ppl_ratio": 2.5}))
    assert unmatched.verdict == U and "no pruned variant within" in unmatched.why


def test_lc4_linear_growth_from_disjoint_bins():
    bins = {"method": "random", "sparsity": 0.1, "early_bin_start": 512, "early_bin_stop": 1024,
            "late_bin_start": 4096, "late_bin_stop": 8192}
    linear = (6144 / 768)  # ratio of the bins' mid positions: KL ~ position gives this late/early ratio
    assert decide("LC4", growth_frame({"label": "random 10%", "factor": linear, **bins})).verdict == R
    assert decide("LC4", growth_frame({"label": "random 10%", "factor": 1.0, **bins})).verdict == NR
    # damage-matched: the fractions below 10% at which the model still works stand in for the paper's 10%
    frame = growth_frame({"label": "random 10%", "factor": linear, "ppl_ratio": 90.0, **bins},
                         {"label": "random 1%", "factor": 1.0, "ppl_ratio": 1.3, **bins, "sparsity": 0.01},
                         {"label": "random 2%", "factor": 1.0, "ppl_ratio": 3.5, **bins, "sparsity": 0.02})
    assert decide("LC4", frame, "nominal").verdict == U                      # collapsed at the paper's 10%
    stand_in = decide("LC4", frame, "damage-matched")
    assert stand_in.verdict == NR and [p.name for p in stand_in.points] == ["random 1%"]


def test_lc6_needs_a_baseline_that_grows():
    protection = {"bits": 3, "protection_rule": "magnitude", "protected_fraction": 0.02}
    baseline = {"label": "rtn 3-bit", "bits": 3, "protection_rule": "none", "protected_fraction": 0.0}
    removed = decide("LC6", growth_frame({"label": "protect 2%", "factor": 1.0, **protection},
                                         {**baseline, "factor": 1.8}))
    assert removed.verdict == R
    kept = decide("LC6", growth_frame({"label": "protect 2%", "factor": 1.7, **protection},
                                      {**baseline, "factor": 1.8}))
    assert kept.verdict == NR
    nothing = decide("LC6", growth_frame({"label": "protect 2%", "factor": 1.0, **protection},
                                         {**baseline, "factor": 1.0}))
    assert nothing.verdict == U and "no growth to remove" in nothing.why


@pytest.mark.parametrize("protected, baseline, kwargs, expected", [
    (1.0, 1.8, {}, R),                        # all the growth removed, the rest flat
    (1.2, 2.0, {}, P),                        # q = 1.2 / 2**0.5 < 1: most removed, 1.2 is past the flat margin
    (1.7, 1.8, {}, NR),                       # q = 1.7 / 1.8**0.5 > 1: protection leaves most of it
    (1.3, 1.69, {}, NR),                      # q = 1.3 / 1.69**0.5 = 1 straddles 1, and 1.3 still grows past 1.1
    (1.12, 1.25, {"spread": 0.15}, I),        # noisy windows: q contains 1 and the protected growth straddles 1.1
    (1.0, 1.8, {"windows": 3}, P),            # three windows: at most partly
    (1.0, 1.8, {"ppl_ratio": 4.0}, U),        # collapsed
])
def test_lc6_pairs_protected_and_unprotected_growth_by_window(protected, baseline, kwargs, expected):
    # per window the protected growth against the baseline's square root: below 1 when over half the log growth
    # is gone; both settings share the windows' early KL noise (same seed), as a real paired run does
    frame = growth_frame({"label": "protect 2%", "factor": protected, "bits": 4, "protection_rule": "magnitude",
                          "protected_fraction": 0.02, "seed": 7, **kwargs},
                         {"label": "rtn 4-bit", "factor": baseline, "bits": 4, "protection_rule": "none",
                          "protected_fraction": 0.0, "seed": 7, **{k: v for k, v in kwargs.items() if k != "ppl_ratio"}})
    result = decide("LC6", frame)
    assert result.verdict == expected, result.why
    if expected != U:
        assert "unprotected growth^0.5" in result.interval and result.n == kwargs.get("windows", 8)


def test_lc6_and_lc7_compare_a_setting_with_its_own_grid_only():
    # two 3-bit grids: g128 grows, g32 does not; g32's protected setting has nothing to remove (not judged
    # against g128's baseline), and magnitude on g128 is compared with random on g128, not on g32
    g128, g32 = {"bits": 3, "group_size": 128}, {"bits": 3, "group_size": 32}
    frame = growth_frame({"label": "g128", "factor": 1.8, "protection_rule": "none", "protected_fraction": 0.0, **g128},
                         {"label": "g32", "factor": 1.0, "protection_rule": "none", "protected_fraction": 0.0, **g32},
                         {"label": "g32 + 2% magnitude", "factor": 1.0, "protection_rule": "magnitude",
                          "protected_fraction": 0.02, **g32},
                         {"label": "g128 + 2% magnitude", "factor": 1.0, "protection_rule": "magnitude",
                          "protected_fraction": 0.02, **g128},
                         {"label": "g32 + 2% random", "factor": 1.0, "protection_rule": "random",
                          "protected_fraction": 0.02, **g32})
    lc6 = decide("LC6", frame)
    assert [p.name.split(" (")[0] for p in lc6.points] == ["g32 + 2% magnitude", "g128 + 2% magnitude"]
    assert "does not grow" in lc6.points[0].verdict.why and lc6.verdict == R
    lc7 = decide("LC7", frame)
    assert [p.name for p in lc7.points] == ["magnitude vs random (3/g32, 0.02 kept)"]
    assert decide("LC6", frame.drop(columns="group_size")).points[0].verdict.why != lc6.points[0].verdict.why  # bits alone mix them


def test_lc6_and_lc7_tell_grids_over_different_blocks_apart():
    # 4-bit g128 on the global blocks only grows, on every block it does not: the global-only protected setting
    # is judged against the global-only baseline, the all-blocks one has nothing to remove
    g128 = {"bits": 4, "group_size": 128, "protection_rule": "none", "protected_fraction": 0.0}
    kept = {"protection_rule": "magnitude", "protected_fraction": 0.02}
    frame = growth_frame({"label": "global", "factor": 1.8, "blocks": "full_attention", **g128},
                         {"label": "all", "factor": 1.0, "blocks": np.nan, **g128},
                         {"label": "global + 2%", "factor": 1.0, "blocks": "full_attention", **{**g128, **kept}},
                         {"label": "all + 2%", "factor": 1.0, "blocks": np.nan, **{**g128, **kept}},
                         {"label": "global + 2% random", "factor": 1.0, "blocks": "full_attention",
                          **{**g128, "protection_rule": "random", "protected_fraction": 0.02}})
    lc6 = decide("LC6", frame)
    assert [p.name.split(" (")[0] for p in lc6.points] == ["global + 2%", "all + 2%"]
    assert lc6.points[0].verdict.verdict == R and "does not grow" in lc6.points[1].verdict.why
    assert [p.name for p in decide("LC7", frame).points] == ["magnitude vs random (4/g128/full_attention, 0.02 kept)"]
    mixed = decide("LC6", frame.drop(columns="blocks"))  # without the column both baselines share one grid
    assert all("2 unprotected baselines" in p.verdict.why for p in mixed.points)


def task_frame(points: dict, *, n: int = 200, dense_accuracy: float = 0.6, chance: float = 0.25, seed: int = 0,
               task: str = "trivia", task_kind: str = "knowledge") -> pd.DataFrame:
    """points: {label: (share of dense-correct answers kept, settings)}; one row per example, scores 0/1."""
    rng = np.random.default_rng(seed)
    dense = (rng.random(n) < dense_accuracy).astype(float)
    rows = []
    for label, (kept, settings) in points.items():
        score = dense * (rng.random(n) < kept)
        rows += [{"model": "made-up", "label": label, "task": task, "task_kind": task_kind, "example": i,
                  "dense_score": dense[i], "score": score[i], "chance": chance, "ppl_ratio": 1.4, **settings}
                 for i in range(n)]
    return pd.DataFrame(rows)


PRUNED_30 = {"family": "pruning", "sparsity": 0.3, "method": "wanda", "pattern": "unstructured", "bits": np.nan}


def test_ki1_knowledge_loss_at_low_sparsity_and_the_floor():
    assert decide("KI1", task_frame({"wanda 30%": (0.6, PRUNED_30)})).verdict == R
    assert decide("KI1", task_frame({"wanda 30%": (1.0, PRUNED_30)}, n=400)).verdict == NR
    at_floor = decide("KI1", task_frame({"wanda 30%": (0.6, PRUNED_30)}, dense_accuracy=0.26))
    assert at_floor.verdict == U and "floor" in at_floor.why
    # an N:M point at 25% is KI2's evidence, not KI1's: with only it, KI1 has no rows
    quarter_nm = {**PRUNED_30, "sparsity": 0.25, "pattern": "1:4"}
    assert decide("KI1", task_frame({"wanda 25% 1:4": (0.6, quarter_nm)})).verdict == U


def test_ki3_says_which_drop_it_sees():
    eight_bit = {"family": "quantization", "bits": 8}
    frame = task_frame({"rtn 8-bit": (1.0, eight_bit)}, n=400, dense_accuracy=0.8)
    no_drop = decide("KI3", frame)
    assert no_drop.verdict == NR and "no drop, equivalence shown" in no_drop.why
    assert "outside the paper's band [0.05, 0.13]" in no_drop.why  # the margin named for what it is
    # a 9% relative drop on every example pattern: drop exactly the same answers in each of 400 examples
    rows = frame.copy()
    correct = rows.index[rows["dense_score"] == 1]
    rows.loc[correct[: round(0.09 * len(correct))], "score"] = 0.0
    drop = decide("KI3", rows)
    assert drop.verdict == R and "we see a drop of that size" in drop.why
    assert drop.estimate == pytest.approx(0.09, abs=0.005)
    assert decide("KI3", task_frame({"rtn 8-bit": (0.9, eight_bit)}, n=30)).verdict == I


def test_ki5_reports_nominal_and_damage_matched_settings():
    settings = {"family": "pruning", "method": "wanda", "pattern": "unstructured", "bits": np.nan}
    frame = task_frame({"wanda 50%": (1.0, {**settings, "sparsity": 0.5}),
                        "wanda 30%": (1.0, {**settings, "sparsity": 0.3})}, task_kind="retrieval", n=300)
    frame.loc[frame["label"] == "wanda 50%", "ppl_ratio"] = 2.3   # our 50% damages more than LLaMA-2-7B's 1.25x
    frame.loc[frame["label"] == "wanda 30%", "ppl_ratio"] = 1.2
    nominal, matched = decide("KI5", frame, "nominal"), decide("KI5", frame, "damage-matched")
    assert nominal.verdict == R and nominal.points[0].name.startswith("wanda 50%")
    assert matched.verdict == R and matched.points[0].name.startswith("wanda 30%")
    assert matched.regime == "damage-matched"


def test_ki7_finds_task_damage_hidden_at_matched_perplexity():
    other = {**PRUNED_30, "method": "sparsegpt"}
    same = task_frame({"a": (0.5, PRUNED_30), "b": (1.0, other)}, n=300)
    assert decide("KI7", same).verdict == R                      # equal perplexity, different task damage
    equal = task_frame({"a": (1.0, PRUNED_30), "b": (1.0, other)}, n=300)
    assert decide("KI7", equal).verdict == NR                    # identical answers: no difference shown
    one_method = task_frame({"a": (0.5, PRUNED_30), "b": (1.0, PRUNED_30)}, n=300)
    assert decide("KI7", one_method).verdict == U                # one method twice (e.g. two seeds): not the claim


def schedule_frame(uniform_gap: float, *, sparsity: float = 0.7, bits: float = 4, ppl_ratio: float = 2.0,
                   seeds: int = 3):
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.3, 8)
    rows = []
    for seed in range(seeds):
        for schedule, shift in (("hessian", 0.0), ("uniform", uniform_gap), ("owl", uniform_gap)):
            rows += [{"label": f"{schedule} seed={seed}", "method": "sparsegpt", "schedule": schedule, "seed": seed,
                      "sparsity": sparsity, "bits": bits, "window": w, "ppl_ratio": ppl_ratio,
                      "nll": base[w] + 0.1 * seed + shift + rng.normal(0, 0.005)} for w in range(8)]
    return pd.DataFrame(rows)


def test_hessian_schedule_claims():
    assert decide("HS1", schedule_frame(0.2)).verdict == R
    assert decide("HS1", schedule_frame(-0.2)).verdict == NR
    assert decide("HS1", schedule_frame(0.2, ppl_ratio=40.0)).verdict == U   # 70% collapses a small model
    assert decide("HS2", schedule_frame(0.2, bits=np.nan)).verdict == R
    assert decide("HS2", schedule_frame(0.2, bits=4)).verdict == U           # no unquantized rows: no results
    assert decide("HS3", schedule_frame(0.2)).verdict == R


@pytest.mark.parametrize("gap, expected", [(0.2, P), (-0.2, I)])
def test_a_schedule_comparison_on_fewer_than_three_seeds_is_at_most_partly(gap, expected):
    # the calibration draw is a random factor: one or two seeds cannot carry a verdict, whatever the windows say
    for seeds in (1, 2):
        result = decide("HS1", schedule_frame(gap, seeds=seeds))
        assert result.verdict == expected, result.why
        assert f"only {seeds} calibration seed" in result.why


def test_schedule_claims_pair_by_seed_and_window_and_read_the_damage_matched_sparsities():
    seeded = pd.concat([schedule_frame(0.2, sparsity=s).assign(seed=seed, nll=lambda f, k=seed: f.nll + 0.5 * k)
                        for seed in range(3) for s in (0.45, 0.7)])
    nominal = decide("HS1", seeded, "nominal")
    assert nominal.verdict == R and nominal.n == 8 and "crossed bootstrap over 3 seeds x 8" in nominal.interval
    assert abs(nominal.estimate - 0.2) < 0.01           # a seed's offset cancels in the same-seed pairing
    matched = decide("HS1", seeded, "damage-matched")
    assert matched.verdict == R and "0.45" in matched.points[0].name and "0.7" not in matched.points[0].name
    collapsed = decide("HS2", seeded.assign(bits=np.nan, ppl_ratio=3.5), "damage-matched")
    assert collapsed.verdict == U                        # 3.5x dense: beyond the working threshold


def test_hs4_hs5_hs6():
    rng = np.random.default_rng(0)
    estimate = rng.gamma(2, 1, 24)
    layers = pd.DataFrame({"label": "run", "layer": range(24), "estimated_error": estimate,
                           "measured_error": estimate * rng.lognormal(0, 0.2, 24)})
    assert decide("HS4", layers).verdict == R
    assert decide("HS4", layers.assign(measured_error=-layers.measured_error)).verdict == NR
    overhead = pd.DataFrame({"label": "hessian", "run": range(6), "schedule_seconds": [10, 11, 9, 10, 12, 10],
                             "pruning_seconds": [100] * 6})
    assert decide("HS5", overhead).verdict == R
    few = decide("HS5", overhead.head(3))
    assert few.verdict == P and "no interval" in few.measured() and "[" not in few.measured()
    assert decide("HS5", overhead.assign(schedule_seconds=lambda f: f.schedule_seconds * 10)).verdict == NR
    owl = overhead.assign(label="owl", run=lambda f: f.run + 6, schedule_seconds=lambda f: f.schedule_seconds * 10)
    both = pd.concat([overhead, owl]).assign(schedule=lambda f: f.label)
    assert decide("HS5", both).verdict == R                       # only the Hessian schedule's cost is the claim
    assert decide("HS5", both.drop(columns="schedule")).verdict == P
    base = np.random.default_rng(1).gamma(2.0, 0.05, 8)          # per-window KL shared by both variants
    kl = pd.DataFrame([{"label": statistics, "method": "sparsegpt", "sparsity": 0.5, "statistics": statistics,
                        "window": w, "kl": base[w] * (1.02 if statistics == "dense" else 1.0) * (1 + 0.01 * (w % 3)),
                        "ppl_ratio": 1.3} for statistics in ("dense", "sequential") for w in range(8)])
    assert decide("HS6", kl).verdict == R
    kl.loc[kl.statistics == "dense", "kl"] *= 1.5
    assert decide("HS6", kl).verdict == NR


# --------------------------------------------------------------------------- the board
def test_board_without_results_lists_every_claim_untestable(tmp_path, capsys):
    table = board_module.board({})
    assert set(table.id) == IDS and (table.verdict == U).all() and set(table.verdict) <= set(VERDICTS)
    assert (table.id == "KI5").sum() == 2                            # nominal and damage-matched
    assert board_module.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("no committed results") == len(table) and "| LC1 |" in printed


def test_board_decides_the_claims_whose_frames_are_present(tmp_path):
    frame = growth_frame({"label": "wanda 50%", "factor": 1.0, "family": "pruning", "method": "wanda", "sparsity": 0.5},
                         {"label": "rtn 3-bit", "factor": 2.0, "family": "quantization", "method": "rtn", "sparsity": 0})
    frame.to_csv(tmp_path / "context_growth.csv", index=False)
    table = board_module.board(board_module.read_committed(tmp_path))
    table = table[table.regime == "nominal"].set_index("id")
    assert table.loc["LC2", "verdict"] == R and table.loc["LC1", "verdict"] == R
    assert table.loc["LC3", "verdict"] == U and "missing ['bits']" in table.loc["LC3", "why"]
    assert table.loc["KI1", "verdict"] == U
    markdown = board_module.to_markdown(table.reset_index())
    assert "| LC2 | pruning (magnitude, Wanda) stays flat with length |" in markdown and "**reproduced**" in markdown


def test_holm_never_lifts_a_point_with_too_few_windows():
    grows = growth_frame({"label": "rtn", "factor": 1.8, "family": "quantization", "windows": 3})
    result = decide("LC1", grows)
    assert result.verdict == P and "no interval" in result.measured()


def test_lc5_attention_variance_slope():
    def frame(slope):
        rng = np.random.default_rng(0)
        return pd.DataFrame({"label": "noisy keys", "unit": range(8), "log_slope": slope + rng.normal(0, 0.05, 8),
                             "ppl_ratio": np.nan})
    assert decide("LC5", frame(1.0)).verdict == R
    assert decide("LC5", frame(0.05)).verdict == NR


def test_lc7_magnitude_picks_the_groups():
    def frame(random_factor):
        common = {"bits": 3, "protected_fraction": 0.02}
        out = growth_frame({"label": "magnitude 2%", "factor": 1.0, "protection_rule": "magnitude", **common})
        other = out.assign(label="random 2%", protection_rule="random")
        other["late_bin_kl"] *= random_factor * np.exp(np.random.default_rng(3).normal(0, 0.02, len(other)))
        return pd.concat([out, other], ignore_index=True)
    assert decide("LC7", frame(1.5)).verdict == R       # magnitude's late KL a third lower
    assert decide("LC7", frame(0.7)).verdict == NR      # random protection does better


def test_ki2_ki4_ki8_compare_task_scores():
    nm = {**PRUNED_30, "sparsity": 0.5, "pattern": "2:4"}
    un = {**PRUNED_30, "sparsity": 0.5}
    assert decide("KI2", task_frame({"wanda 50%": (1.0, un), "wanda 2:4": (0.6, nm)})).verdict == R
    assert decide("KI2", task_frame({"wanda 50%": (0.6, un), "wanda 2:4": (1.0, nm)})).verdict == NR
    quant = {"family": "quantization", "bits": 4, "storage_bits": 4.2}
    pruned = {**PRUNED_30, "storage_bits": 4.0}
    assert decide("KI4", task_frame({"gptq 4-bit": (1.0, quant), "wanda 75%": (0.6, pruned)})).verdict == R
    # every pruned variant at the quantized one's storage is compared, so a collapsed one does not hide a working one
    several = decide("KI4", task_frame({"gptq 4-bit": (1.0, quant), "wanda 75% 2:4": (0.0, {**pruned, "ppl_ratio": 9.0}),
                                        "wanda 75%": (0.6, pruned)}))
    assert several.verdict == R and "1 of 1 testable" in several.why
    unmatched = decide("KI4", task_frame({"gptq 4-bit": (1.0, quant), "wanda": (0.6, {**pruned, "storage_bits": 8})}))
    assert unmatched.verdict == U and "storage differs" in unmatched.why
    # damage-matched: paired at equal perplexity instead of equal storage, whatever the storage
    equal_damage = {"gptq 4-bit": (1.0, {**quant, "ppl_ratio": 1.3}),
                    "wanda 30%": (0.6, {**pruned, "storage_bits": 16, "ppl_ratio": 1.25})}
    assert decide("KI4", task_frame(equal_damage), "damage-matched").verdict == R
    assert decide("KI4", task_frame(equal_damage), "nominal").verdict == U  # 4.2 vs 16 bits: no pair
    swapped = {"gptq 4-bit": (0.6, equal_damage["gptq 4-bit"][1]), "wanda 30%": (1.0, equal_damage["wanda 30%"][1])}
    assert decide("KI4", task_frame(swapped), "damage-matched").verdict == NR
    apart = {**equal_damage, "wanda 30%": (0.6, {**pruned, "ppl_ratio": 2.0})}
    far = decide("KI4", task_frame(apart), "damage-matched")
    assert far.verdict == U and "perplexity ratio differs" in far.why
    assert decide("KI8", task_frame({"wanda 30%": (0.5, PRUNED_30)}, task_kind="factual")).verdict == R
    assert decide("KI8", task_frame({"wanda 30%": (0.6, PRUNED_30)}, task_kind="knowledge")).verdict == U  # no rows


def test_ki6_calibration_sensitivity_difference():
    def frame(sparsegpt_loss, wanda_loss, kl_losses=None):
        rng = np.random.default_rng(0)
        base = rng.normal(3.0, 0.2, 8)
        rows = []
        for method, loss in (("sparsegpt", sparsegpt_loss), ("wanda", wanda_loss)):
            kl_loss = loss if kl_losses is None else kl_losses[method]
            for samples, extra, kl_extra in ((4, loss, kl_loss), (128, 0.0, 0.0)):
                for seed in (0, 1):
                    rows += [{"label": f"{method} {samples}", "method": method, "calibration_samples": samples,
                              "seed": seed, "window": w, "nll": base[w] + extra + rng.normal(0, 0.01),
                              "kl": 0.5 + kl_extra + rng.normal(0, 0.01), "ppl_ratio": 1.3} for w in range(8)]
        return pd.DataFrame(rows)
    both = decide("KI6", frame(0.3, 0.01))
    assert both.verdict == R and [p.name for p in both.points] == ["sparsegpt vs wanda, NLL", "sparsegpt vs wanda, KL"]
    assert decide("KI6", frame(0.01, 0.3)).verdict == NR
    # KL is a second measure under "all": NLL alone says reproduced, KL the opposite -> not both
    split = decide("KI6", frame(0.3, 0.01, kl_losses={"sparsegpt": 0.0, "wanda": 0.3}))
    assert split.verdict not in (R, NR) and len(split.points) == 2
    # rows without KL (older runs) are judged on NLL alone
    assert [p.name for p in decide("KI6", frame(0.3, 0.01).drop(columns="kl")).points] == ["sparsegpt vs wanda, NLL"]
    # two sparsities, KL read against the dense reference at one only: KL is a point where it was measured
    mixed = pd.concat([frame(0.3, 0.01).assign(sparsity=0.5), frame(0.2, 0.01).assign(sparsity=0.3, kl=np.nan)])
    assert [p.name for p in decide("KI6", mixed).points] == [
        "sparsegpt vs wanda, NLL at 0.5", "sparsegpt vs wanda, KL at 0.5", "sparsegpt vs wanda, NLL at 0.3"]

    # a task's answers at the same points: one more measure, per question (the loss dense - score, mean over seeds)
    def with_task(windows, sparsegpt_drop, wanda_drop, dense=0.5, n=60):
        rng = np.random.default_rng(1)
        dense_scores = (rng.random(n) < dense).astype(float)
        rows = []
        for method, drop in (("sparsegpt", sparsegpt_drop), ("wanda", wanda_drop)):
            for samples, lost in ((4, drop), (128, 0.0)):
                for seed in (0, 1):
                    kept = np.where(rng.random(n) < lost, 0.0, dense_scores)  # a right answer lost with prob `lost`
                    rows += [{"label": f"{method} {samples}", "method": method, "calibration_samples": samples,
                              "seed": seed, "task": "qa", "example": i, "task_loss": dense_scores[i] - kept[i],
                              "dense_score": dense_scores[i], "chance": 0.0, "ppl_ratio": 1.3} for i in range(n)]
        return pd.concat([windows, pd.DataFrame(rows)], ignore_index=True)
    tasked = decide("KI6", with_task(frame(0.3, 0.01), 0.6, 0.0))
    assert tasked.verdict == R and [p.name for p in tasked.points][-1] == "sparsegpt vs wanda, qa loss"
    assert tasked.points[-1].interval.n == 60 and "questions" in tasked.points[-1].interval.name
    assert [p.name for p in tasked.points][:2] == ["sparsegpt vs wanda, NLL", "sparsegpt vs wanda, KL"]  # window rows
    reversed_task = decide("KI6", with_task(frame(0.3, 0.01), 0.0, 0.6))                 # the task says the opposite
    assert reversed_task.verdict not in (R, U) and reversed_task.points[-1].verdict.verdict == NR
    assert decide("KI6", with_task(frame(0.01, 0.3), 0.0, 0.6)).verdict == NR
    floored = decide("KI6", with_task(frame(0.3, 0.01), 0.6, 0.0, dense=0.0))
    assert floored.points[-1].verdict.verdict == U and "floor" in floored.points[-1].verdict.why
    assert floored.verdict == R                                 # judged on the window measures alone


def test_noise_gate_and_precision_choice():
    from helpers.claims import rules

    assert rules.noise_gate(0.01, None) is None and rules.noise_gate(0.01, 0.0) is None  # float32: no floor
    assert rules.noise_gate(0.01, 0.001) is None                       # 10x the floor: measurable
    gated = rules.noise_gate(0.002, 0.001)                             # 2x the floor: below the 3x multiple
    assert gated is not None and gated.verdict == "untestable here" and "noise floor" in gated.why
    assert rules.noise_gate(-0.002, 0.001).verdict == "untestable here"  # the size counts, not the sign
    assert rules.precision_allows(0.1, 0.004) and not rules.precision_allows(0.1, 0.006)


def test_recorded_verdicts_pass_the_check_and_a_changed_one_fails(tmp_path, capsys):
    frame = growth_frame({"label": "wanda 50%", "factor": 1.0, "family": "pruning", "method": "wanda", "sparsity": 0.5},
                         {"label": "rtn 4-bit", "factor": 1.8, "family": "quantization", "method": "rtn", "sparsity": 0})
    figures, committed = tmp_path / "figures", tmp_path / "committed"
    shown = board_module.record_verdicts({"context_growth": frame}, ("LC1", "LC2"), "01_verdicts", figures, committed,
                                         title="01 made-up")
    assert list(shown.id) == ["LC1", "LC2", "LC2"] and (committed / "01_verdicts" / "context_growth.csv.gz").is_file()
    assert "**reproduced**" in (figures / "01_verdicts.md").read_text()
    assert board_module.check(figures, committed) == []
    assert board_module.main([str(committed), "--figures", str(figures), "--check"]) == 0
    edited = pd.read_csv(figures / "01_verdicts.csv")
    edited.loc[0, "verdict"] = "not reproduced"                       # a typed verdict that the frames do not give
    edited.to_csv(figures / "01_verdicts.csv", index=False)
    problems = board_module.check(figures, committed)
    assert len(problems) == 1 and "LC1" in problems[0] and "'not reproduced' -> 'reproduced'" in problems[0]
    assert board_module.main([str(committed), "--figures", str(figures), "--check"]) == 1
    (figures / "04_verdicts.csv").write_text("id\nHS1\n")              # a verdict file without its frames
    assert any("no committed frames" in p for p in board_module.check(figures, committed))
    (figures / "03_verdicts.md").write_text("| claim | verdict |\n")   # a table typed, not computed
    assert any("did not compute" in p for p in board_module.check(figures, committed))
    capsys.readouterr()
    assert board_module.main([str(committed)]) == 0                     # the whole board: decided + untested claims
    printed = capsys.readouterr().out
    assert "| LC1 |" in printed and "01_verdicts" in printed and "no committed run decides it" in printed


def test_record_verdicts_refuses_a_name_the_summary_would_not_find(tmp_path):
    with pytest.raises(ValueError, match="_verdicts"):
        board_module.record_verdicts({}, ("LC1",), "01_board", tmp_path, tmp_path, title="t")
    with pytest.raises(ValueError, match="not registered"):
        board_module.board({}, claims=("LC99",))


@pytest.mark.parametrize("gap, kwargs, expected", [
    (0.2, {}, R),                      # global-only grows past the window more than sliding-only, every window
    (-0.2, {}, NR),                    # the other way round
    (0.2, {"windows": 3}, P),          # too few windows: no interval
    (0.2, {"ppl_ratio": 4.0}, U),      # a collapsed model
])
def test_lc8_global_blocks_accumulate_more_than_sliding_ones(gap, kwargs, expected):
    windows = kwargs.get("windows", 8)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"label": "RTN 4-bit g128", "window": range(windows), "sliding_slope": rng.normal(0, 0.02, windows),
                          "ppl_ratio": kwargs.get("ppl_ratio", 1.2)})
    frame["global_slope"] = frame.sliding_slope + gap + rng.normal(0, 0.02, windows)
    assert decide("LC8", frame).verdict == expected


def test_lc7_averages_a_rule_run_with_several_seeds_over_them():
    base = {"bits": 3, "protected_fraction": 0.02, "family": "quantization"}
    frame = growth_frame({"label": "magnitude 2%", "factor": 1.0, "protection_rule": "magnitude", **base},
                         *[{"label": f"hessian 2% seed={k}", "factor": 1.0, "protection_rule": "hessian", "seed": 10 + k,
                            **base} for k in range(3)])
    frame.loc[frame.protection_rule == "hessian", "late_bin_kl"] *= 2.0   # magnitude's groups leave half the error
    result = decide("LC7", frame)
    assert result.verdict == R and result.n == 8 and "3 seeds" in result.points[0].name


def test_a_claims_worst_perplexity_ratio_leaves_out_its_untestable_points():
    # a collapsed point (5x dense) is untestable: the ratio the verdict rests on is the working point's
    frame = growth_frame({"label": "rtn 4-bit", "factor": 1.6, "family": "quantization", "method": "rtn", "sparsity": 0,
                          "ppl_ratio": 1.5},
                         {"label": "rtn 2-bit", "factor": 1.6, "family": "quantization", "method": "rtn", "sparsity": 0,
                          "ppl_ratio": 5.0})
    result = decide("LC1", frame)
    assert [p.verdict.verdict for p in result.points].count(U) == 1, result.why
    assert result.ppl_ratio == pytest.approx(1.5)


def test_board_points_lists_what_each_verdict_rests_on():
    protection = {"bits": 4, "protection_rule": "magnitude", "seed": 3}
    frame = growth_frame({"label": "rtn 4-bit", "factor": 1.8, "bits": 4, "protection_rule": "none",
                          "protected_fraction": 0.0, "seed": 3},
                         {"label": "protect 1%", "factor": 1.0, "protected_fraction": 0.01, **protection},
                         {"label": "protect 2%", "factor": 1.7, "protected_fraction": 0.02, **protection},
                         {"label": "protect 5%", "factor": 1.0, "protected_fraction": 0.05, "ppl_ratio": 4.0,
                          **protection})
    points = board_module.board_points({"protection": frame}, claims=["LC6"])
    verdict = board_module.board({"protection": frame}, claims=["LC6"]).verdict.iloc[0]
    assert list(points.point.str.split(" \\(").str[0]) == ["protect 1%", "protect 2%", "protect 5%"]
    assert list(points.verdict) == [R, NR, U] and verdict == P          # one removes, one does not: partly
    assert (points.n[:2] == 8).all() and points.estimate[0] < 1 < points.low[1]
    assert board_module.board_points({}, claims=["LC6"]).empty           # no frame: no points, same columns
