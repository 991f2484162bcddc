"""Intervals over independent units: known answers, pairing, and the crossed seed x window bootstrap."""
import numpy as np
import pytest

from helpers.evaluation.uncertainty import crossed_bootstrap, interval_name, paired_bootstrap


def test_paired_bootstrap_cancels_what_the_units_share():
    rng = np.random.default_rng(0)
    hardness = rng.normal(0, 5, 200)              # large per-unit variation shared by both variants
    b = hardness + rng.normal(0, 0.1, 200)
    a = b + 0.3                                   # a constant shift: every resample sees exactly 0.3
    result = paired_bootstrap(a, b)
    assert result["estimate"] == pytest.approx(0.3)
    assert result["low"] == pytest.approx(0.3) and result["high"] == pytest.approx(0.3)
    assert result["n"] == 200 and "paired bootstrap over 200" in result["interval"]
    assert paired_bootstrap(2 * b + 100, b + 50, ratio=True)["estimate"] == pytest.approx(2.0)


def test_paired_bootstrap_covers_the_true_difference():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        b = rng.normal(0, 1, 40)
        a = b + 0.5 + rng.normal(0, 1, 40)
        result = paired_bootstrap(a, b, resamples=1000, seed=trial)
        covered += result["low"] <= 0.5 <= result["high"]
    assert 0.88 <= covered / 200 <= 0.99  # nominal 95%; the percentile bootstrap runs a little narrow at n = 40


def test_crossed_bootstrap_carries_the_seed_variation():
    rng = np.random.default_rng(2)
    b = rng.normal(1.0, 0.2, (3, 64))
    seed_effect = np.array([-0.4, 0.0, 0.4])[:, None]       # the calibration seed moves a by a lot
    a = b + 0.1 + seed_effect + rng.normal(0, 0.01, (3, 64))
    crossed = crossed_bootstrap(a, b)
    windows_only = paired_bootstrap(a.mean(axis=0), b.mean(axis=0))  # seeds averaged away first
    assert crossed["estimate"] == pytest.approx(windows_only["estimate"])
    assert crossed["high"] - crossed["low"] > 10 * (windows_only["high"] - windows_only["low"])
    assert crossed["seeds"] == 3 and crossed["windows"] == 64 and crossed["seeds_above"] == 2
    assert crossed["interval"] == "95% crossed bootstrap over 3 seeds x 64 windows"


def test_crossed_bootstrap_ratio_and_bad_input():
    b = np.random.default_rng(3).uniform(1, 2, (2, 10))
    result = crossed_bootstrap(1.5 * b, b, ratio=True)
    assert result["estimate"] == pytest.approx(1.5) and result["low"] == pytest.approx(1.5)
    assert result["seeds_above"] == 2
    alone = crossed_bootstrap(b)  # without b: the mean of a itself
    assert alone["estimate"] == pytest.approx(b.mean()) and alone["low"] < b.mean() < alone["high"]
    with pytest.raises(ValueError, match="seeds, windows"):
        crossed_bootstrap(b, b[:, :5])
    with pytest.raises(ValueError, match="missing"):
        crossed_bootstrap(np.full((2, 3), np.nan), np.ones((2, 3)))


def test_interval_names_say_what_was_resampled():
    assert interval_name("t", 8) == "95% t-interval over 8 windows"
    assert interval_name("paired", 300, 0.9, "questions") == "90% paired bootstrap over 300 questions"
