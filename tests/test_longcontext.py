"""Invariants of helpers.experiments.longcontext: binning, context means, uncertainty, the noise simulation."""
import math

import numpy as np
import pytest
import torch

from helpers.experiments.longcontext import (binned_mean, bin_centers, bootstrap_interval, context_kl,
                                             context_lengths, growth_exponent, log_bin_edges,
                                             simulate_attention_noise, standard_error, summarize_windows)


@pytest.mark.parametrize("length,per_octave", [(1, 2), (7, 1), (128, 2), (1000, 3), (4096, 4)])
def test_log_bins_cover_every_position_once(length, per_octave):
    edges = log_bin_edges(length, per_octave)
    assert edges[0] == 0 and edges[-1] == length
    assert all(b > a for a, b in zip(edges, edges[1:]))
    assert edges[1] == 1  # the first position is its own bin
    starts, stops = np.array(edges[:-1]) + 1, np.array(edges[1:])  # 1-based first and last position
    assert np.all(stops / starts <= 2.0)  # no bin spans more than an octave on the log axis
    centers = bin_centers(edges)
    assert np.all((centers >= np.array(edges[:-1]) + 1) & (centers <= np.array(edges[1:])))


def test_log_bins_double_per_octave():
    edges = log_bin_edges(1 << 12, 1)
    assert edges == [(1 << k) - 1 for k in range(12)] + [1 << 12]


def test_binned_mean_is_weighted_back_to_the_overall_mean():
    values = torch.rand(3, 300, generator=torch.Generator().manual_seed(0))
    edges = log_bin_edges(300, 2)
    binned = binned_mean(values, edges)
    widths = torch.tensor(np.diff(edges), dtype=torch.float64)
    assert torch.allclose((binned * widths).sum(-1) / 300, values.double().mean(-1))
    with pytest.raises(ValueError, match="rise strictly"):
        binned_mean(values, [0, 10, 10, 300])


def test_context_kl_equals_mean_of_prefix():
    kl = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    out = context_kl(kl, [1, 3, 6])
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 2.5], [6.0, 7.0, 8.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="outside"):
        context_kl(kl, [7])
    assert context_lengths(1000, 64) == [64, 128, 256, 512, 1000]
    assert context_lengths(32, 64) == [32]


def test_standard_error_and_bootstrap():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert math.isclose(standard_error(values), values.std(ddof=1) / 2)
    assert math.isnan(standard_error([1.0]))
    low, high = bootstrap_interval(values, resamples=4000)
    assert 1.0 <= low < values.mean() < high <= 4.0
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # no spread, no interval
    narrow = bootstrap_interval(np.random.default_rng(0).normal(size=400))
    wide = bootstrap_interval(np.random.default_rng(0).normal(size=25))
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more windows, tighter interval


def test_summarize_windows_groups():
    import pandas as pd
    frame = pd.DataFrame({"label": ["a"] * 3 + ["b"] * 3, "context": [8] * 6, "value": [1, 2, 3, 5, 5, 5]})
    summary = summarize_windows(frame, ["label", "context"]).set_index("label")
    assert summary.loc["a", "mean"] == 2 and summary.loc["b", "standard_error"] == 0
    assert summary.loc["a", "windows"] == 3


def test_growth_exponent_recovers_power_laws():
    t = np.arange(1, 200)
    assert math.isclose(growth_exponent(t, 3 * t), 1.0, abs_tol=1e-9)
    assert math.isclose(growth_exponent(t, np.full(t.shape, 0.2)), 0.0, abs_tol=1e-9)
    assert math.isclose(growth_exponent(t, 1 / t), -1.0, abs_tol=1e-9)


def test_simulation_unnormalized_sum_grows_linearly():
    # Zero queries: every exp-score is 1, so the error at position t is a sum of t independent noises.
    variance = simulate_attention_noise(256, noisy="values", normalization="sum", query_scale=0.0,
                                        noise_std=0.5, trials=64)
    positions = np.arange(1, 257)
    assert math.isclose(growth_exponent(positions, variance.numpy()), 1.0, abs_tol=0.05)
    assert float(variance[-32:].mean()) > 100 * float(variance[:2].mean())
    assert torch.allclose(variance[-16:].mean() / 247.5, torch.tensor(0.25), rtol=0.1)  # sigma^2 * t


def test_simulation_softmax_averages_token_noise_away():
    # Uniform softmax attention: the error is the mean of t noises, variance sigma^2 / t.
    variance = simulate_attention_noise(256, noisy="values", normalization="softmax", query_scale=0.0,
                                        noise_std=0.5, trials=64)
    assert math.isclose(growth_exponent(np.arange(1, 257), variance.numpy()), -1.0, abs_tol=0.05)
    # Noise on both keys and values, real queries: still no growth after the first positions.
    both = simulate_attention_noise(128, noise_std=0.1, trials=16)
    assert float(both[64:].mean()) < float(both[:4].mean())
    assert (simulate_attention_noise(16, noise_std=0.0) == 0).all()
    with pytest.raises(ValueError, match="normalization"):
        simulate_attention_noise(4, normalization="mean")


def test_t_interval_matches_the_textbook_formula_and_covers_the_mean():
    from helpers.experiments.longcontext import t_interval

    values = [1.0, 2.0, 4.0, 3.0]
    low, high = t_interval(values)
    mean, se = 2.5, standard_error(values)
    assert math.isclose(high - mean, 3.182446305284263 * se, rel_tol=1e-9)  # t(0.975, 3)
    assert math.isclose(mean - low, high - mean, rel_tol=1e-12)
    assert all(math.isnan(v) for v in t_interval([1.0]))
    wider = t_interval(values, confidence=0.99)
    assert wider[0] < low and wider[1] > high
