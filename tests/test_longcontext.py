"""Invariants of helpers.experiments.longcontext: binning, context means, uncertainty, the noise simulation."""
import math

import numpy as np
import pytest
import torch

from helpers.experiments.longcontext import (binned_mean, bin_centers, bootstrap_interval, context_kl,
                                             context_lengths, growth_exponent, log_bin_edges,
                                             interval_summary, paired_differences, simulate_attention_noise,
                                             standard_error, summarize_windows, t_interval, variant_records,
                                             window_growth)


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
    assert (summary.loc["a", "low"], summary.loc["a", "high"]) == pytest.approx(t_interval([1, 2, 3]))
    assert summary.loc["a", "interval"] == "95% t-interval over 3 windows"
    boot = summarize_windows(frame, ["label"], interval="bootstrap").set_index("label")
    assert boot.loc["a", "interval"] == "95% percentile bootstrap over 3 windows"
    with pytest.raises(ValueError, match="interval='minmax'"):
        summarize_windows(frame, ["label"], interval="minmax")


def synthetic_records(label, kl):
    """The runner's rows for a [windows, positions] KL tensor, as a frame with a label."""
    import pandas as pd
    edges, contexts = log_bin_edges(kl.shape[1], 2), context_lengths(kl.shape[1], 4)
    rows = variant_records(kl, torch.zeros_like(kl), edges=edges, contexts=contexts)
    frame = pd.DataFrame(rows).assign(label=label)
    return frame[frame.metric == "kl_context"], frame[frame.metric == "kl_bin"]


def test_window_growth_recovers_linear_and_flat_errors():
    import pandas as pd
    t = torch.arange(1, 1025, dtype=torch.float64)
    linear = torch.stack([0.01 * t * (1 + 0.1 * w) for w in range(4)])   # KL = c t: slope 1 in log-log
    flat = torch.full((4, 1024), 0.3, dtype=torch.float64)
    parts = [synthetic_records("linear", linear), synthetic_records("flat", flat)]
    growth = window_growth(pd.concat([p[0] for p in parts]), pd.concat([p[1] for p in parts]))
    assert len(growth) == 8
    lin, fl = growth[growth.label == "linear"], growth[growth.label == "flat"]
    assert np.allclose(lin.log_slope, 1.0, atol=0.02) and np.allclose(fl.log_slope, 0.0, atol=1e-9)
    # KL = c t with c = 0.01 (1 + 0.1 w): slope per 1,000 tokens is 1000 c
    assert np.allclose(lin.slope_per_1k, [10 * (1 + 0.1 * w) for w in range(4)], rtol=1e-6)
    assert np.allclose(fl.slope_per_1k, 0.0, atol=1e-9) and np.allclose(fl.growth, 1.0)
    # mean of c t over t < 1024 over the mean over t < 4: (1024 + 1) / (4 + 1)
    assert np.allclose(lin.growth, 1025 / 5)
    late = window_growth(pd.concat([p[0] for p in parts]), pd.concat([p[1] for p in parts]), base_context=128)
    assert np.allclose(late[late.label == "linear"].growth, 1025 / 129)
    with pytest.raises(ValueError, match="base_context=100 is not a measured context"):
        window_growth(parts[0][0], parts[0][1], base_context=100)


def test_interval_summary_ratios_on_the_log_scale():
    import pandas as pd
    per_window = pd.DataFrame({"label": ["a"] * 4, "window": range(4), "growth": [1.0, 2.0, 4.0, 8.0],
                               "log_slope": [0.1, 0.2, 0.3, 0.4]})
    summary = interval_summary(per_window, ["growth", "log_slope"]).set_index("quantity")
    assert summary.loc["growth", "estimate"] == pytest.approx(8 ** 0.5)  # geometric mean of 1, 2, 4, 8
    low, high = t_interval(np.log([1.0, 2.0, 4.0, 8.0]))
    assert (summary.loc["growth", "low"], summary.loc["growth", "high"]) == pytest.approx((np.exp(low), np.exp(high)))
    assert summary.loc["log_slope", "estimate"] == pytest.approx(0.25)
    assert summary.loc["growth", "interval"] == "geometric mean, 95% t-interval over 4 windows"


def test_paired_differences_use_the_shared_windows():
    import pandas as pd
    per_window = pd.DataFrame({"label": ["a"] * 4 + ["b"] * 3, "window": [0, 1, 2, 3, 0, 1, 2],
                               "growth": [2.0, 2.2, 1.8, 9.0, 1.0, 1.1, 0.9]})
    pair = paired_differences(per_window, [("a", "b")], "growth", ratio=True).iloc[0]
    assert pair.windows == 3 and pair.a_above_b == 3 and pair.estimate == pytest.approx(2.0)
    assert pair.low == pytest.approx(2.0) and pair.high == pytest.approx(2.0)  # the same ratio on every window
    diff = paired_differences(per_window, [("a", "b")], "growth").iloc[0]
    assert diff.estimate == pytest.approx(1.0) and diff.low < 1.0 < diff.high
    with pytest.raises(ValueError, match="no per-window 'growth' for \\['c'\\]"):
        paired_differences(per_window, [("a", "c")], "growth")


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


# --------------------------------------------------------------------------- from recorded rows to the board's frames
def _records_frame(kls: dict, perplexities: dict, contexts, settings: dict | None = None):
    """Runner-like rows (as latest_frame flattens them) for made-up per-position KL [windows, positions]."""
    import pandas as pd

    rows = []
    edges = log_bin_edges(max(contexts))
    for label, kl in kls.items():
        nll = torch.full((kl.shape[0], kl.shape[1] - 1), math.log(perplexities[label]))
        for row in variant_records(kl, nll, edges=edges, contexts=contexts):
            rows.append({"label": label, "method": label.split(" ")[0], "family": (settings or {}).get(label, "pruning"),
                         "model": "made-up", **{f"settings.{k}": v for k, v in
                                                 ({"recipe": {"sparsity": 0.5}} if label != "dense" else {}).items()},
                         "settings.recipe.sparsity": 0.5 if label != "dense" else None, **row})
    return pd.DataFrame(rows)


def test_disjoint_bin_means_equal_the_mean_over_the_positions():
    from helpers.experiments.longcontext import bin_kl, disjoint_bins

    kl = torch.rand(4, 256, generator=torch.Generator().manual_seed(1)).double()
    contexts = context_lengths(256, 16)
    frame = _records_frame({"dense": torch.zeros(4, 256), "x 50%": kl}, {"dense": 10.0, "x 50%": 12.0}, contexts)
    kl_context = frame[frame.metric == "kl_context"].astype({"context": int, "window": int})
    (a, b), (c, d) = disjoint_bins(contexts)
    assert (a, b, c, d) == (32, 64, 128, 256) and b <= c      # disjoint, an octave apart
    late = bin_kl(kl_context, c, d).xs("x 50%", level="label").to_numpy()
    early = bin_kl(kl_context, a, b).xs("x 50%", level="label").to_numpy()
    assert np.allclose(late, kl[:, c:d].mean(-1).numpy()) and np.allclose(early, kl[:, a:b].mean(-1).numpy())
    assert np.allclose(bin_kl(kl_context, 0, 64).xs("x 50%", level="label"), kl[:, :64].mean(-1).numpy())
    with pytest.raises(ValueError, match="at least 4"):
        disjoint_bins([64, 128, 256])


def test_growth_frame_carries_the_ratio_to_dense_and_the_working_rule():
    from helpers.experiments.longcontext import growth_frame, growth_summary, variant_table

    gen = torch.Generator().manual_seed(2)
    contexts = context_lengths(128, 8)
    kls = {"dense": torch.zeros(6, 128), "a 50%": torch.rand(6, 128, generator=gen), "b 50%": torch.rand(6, 128, generator=gen)}
    frame = _records_frame(kls, {"dense": 10.0, "a 50%": 12.0, "b 50%": 45.0}, contexts)
    table = variant_table(frame)
    assert table.ppl_ratio.round(6).to_dict() == {"dense": 1.0, "a 50%": 1.2, "b 50%": 4.5}
    assert table.working.to_dict() == {"dense": True, "a 50%": True, "b 50%": False}   # 3x dense: collapsed
    growth = growth_frame(frame)
    assert set(growth.label) == {"a 50%", "b 50%"} and len(growth) == 12
    assert {"early_bin_kl", "late_bin_kl", "ppl_ratio", "family", "method", "sparsity", "late_bin_stop"} <= set(growth)
    summary = growth_summary(growth)
    assert summary.windows.tolist() == [6, 6] and (summary.low <= summary["late/early"]).all()
    with pytest.raises(ValueError, match="dense"):
        variant_table(frame[frame.label != "dense"])


def test_windows_needed_is_the_first_n_that_detects_the_effect():
    from helpers.claims.rules import detectable_effect
    from helpers.experiments.longcontext import windows_needed

    n = windows_needed(0.12, math.log(1.1))
    assert detectable_effect(0.12, n) <= math.log(1.1) < detectable_effect(0.12, n - 1)
    assert windows_needed(0.24, math.log(1.1)) > n                  # twice the spread needs more windows
    assert windows_needed(float("nan"), 0.1) is None and windows_needed(5.0, 0.01, most=50) is None


def test_matched_pairs_pair_each_quantized_variant_with_the_nearest_working_pruned_one():
    import pandas as pd

    from helpers.experiments.longcontext import matched_pairs

    table = pd.DataFrame({"family": ["dense", "pruning", "pruning", "quantization", "quantization", "activations"],
                          "ppl_ratio": [1.0, 1.3, 2.2, 1.4, 6.0, 2.0]},
                         index=["dense", "wanda 30%", "wanda 50%", "rtn 4-bit", "rtn 2-bit", "KV3"])
    table["working"] = table.ppl_ratio <= 3
    assert matched_pairs(table) == [("rtn 4-bit", "wanda 30%"), ("KV3", "wanda 50%")]   # rtn 2-bit collapsed
    assert matched_pairs(table, tolerance=1.05) == []


def test_dense_row_comes_from_the_reference_and_a_lazy_reference_is_never_run_when_all_is_recorded(tmp_path):
    from helpers.evaluation.metrics import DenseReference
    from helpers.experiments.core import Runner, Variant, latest_frame, parse_variant
    from helpers.experiments.longcontext import context_kl_measurement
    from helpers.models import load_model
    from helpers.results import ResultsTable

    model, _ = load_model("tiny-llama")
    windows = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    variants = [Variant.dense(), parse_variant({"method": "magnitude", "sparsity": 0.5})]
    table = ResultsTable(tmp_path / "r.jsonl")

    def run():
        reference = DenseReference(model, windows, progress=False, lazy=True)
        measure = context_kl_measurement(reference, edges=log_bin_edges(32), contexts=[8, 16, 32])
        Runner(model, table, "tiny-llama", {"d": 1}, log=lambda *_: None, progress=False).run(variants, [measure])
        return reference

    first = run()
    eager = DenseReference(model, windows, progress=False)
    frame = latest_frame(table)
    dense = frame[(frame.label == "dense") & (frame.metric == "perplexity")].value.item()
    assert dense == pytest.approx(eager.perplexity, rel=1e-6) and "_pass" in first.__dict__
    assert (frame[(frame.label == "dense") & frame.metric.isin(["kl_bin", "kl_context"])].value == 0).all()
    pruned = frame[(frame.label == "magnitude 50%") & (frame.metric == "mean_kl")].value.item()
    assert pruned > 0                                               # the reference ran on the dense model
    again = run()
    assert "_pass" not in again.__dict__                            # everything recorded: no dense pass


def test_protection_pairs_and_figures_keep_grids_over_different_blocks_apart():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from helpers.experiments.longcontext import protection_pairs, protection_summary
    from helpers.experiments.longcontext_figures import protection_bits_figure, protection_paired_figure

    rng = np.random.default_rng(0)
    settings = {"global": ("full_attention", "none", 0.0), "global + 2%": ("full_attention", "magnitude", 0.02),
                "global + 2% random": ("full_attention", "random", 0.02), "all": (np.nan, "none", 0.0),
                "all + 2%": (np.nan, "magnitude", 0.02)}
    growth = pd.DataFrame([{"label": label, "window": w, "early_bin_kl": 0.1, "late_bin_kl": 0.1 * rng.uniform(1, 2),
                            "bits": 4.0, "group_size": 128.0, "blocks": blocks, "protection_rule": rule,
                            "protected_fraction": fraction, "bits_per_weight": 4.25 + 0.1 * fraction, "ppl_ratio": 1.2,
                            "working": True} for label, (blocks, rule, fraction) in settings.items() for w in range(5)])
    summary = protection_summary(growth)
    versus_plain, versus_rule = protection_pairs(summary)
    assert versus_plain == [("global + 2%", "global"), ("global + 2% random", "global"), ("all + 2%", "all")]
    assert versus_rule == [("global + 2%", "global + 2% random")]
    shuffled = protection_summary(pd.concat([growth[growth.label == "all + 2%"], growth.assign(
        label=growth.label + " bis", protected_fraction=growth.protected_fraction * 0.5)[growth.label == "all + 2%"],
        growth[growth.label != "all + 2%"]]))   # listed: all + 2%, all + 1%, then the global grid, then all
    plain, rule = protection_pairs(shuffled)    # read by grid, rule (magnitude first), fraction
    assert plain == [("all + 2% bis", "all"), ("all + 2%", "all"), ("global + 2%", "global"),
                     ("global + 2% random", "global")]
    fig, finding = protection_bits_figure(summary, title="t", early=(1, 2), late=(3, 4))
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "unprotected, 4-bit g128 [global blocks]" in legend and "unprotected, 4-bit g128" in legend
    assert "4-bit g128 [global blocks] late/early" in finding
    wide = summary.assign(bits_per_weight=np.where(summary.blocks.notna(), 14.0, 4.2) + 0.1 * summary.protected_fraction)
    for frame in (summary, wide):   # two rules' points on one grid stay 3% of the bits spanned apart (at least 0.4)
        fig, _ = protection_bits_figure(frame, title="t", early=(1, 2), late=(3, 4))
        right = fig.axes[1]
        protected = {bars.get_label(): bars.lines[0].get_xdata()[-1] for bars in right.containers}
        span = max(np.ptp(frame.bits_per_weight), 0.4)
        gap = protected["random, 4-bit g128 [global blocks]"] - protected["magnitude, 4-bit g128 [global blocks]"]
        assert gap == pytest.approx(0.03 * span), (gap, span)
    paired = protection_paired_figure(
        pd.DataFrame({"a": [p for p, _ in versus_plain], "b": [u for _, u in versus_plain], "estimate": 1.0,
                      "low": 0.9, "high": 1.1}),
        pd.DataFrame({"a": [m for m, _ in versus_rule], "b": [o for _, o in versus_rule], "estimate": 1.0,
                      "low": 0.9, "high": 1.1}), summary, title="t")
    labels = [t.get_text() for t in (paired[0] if isinstance(paired, tuple) else paired).axes[0].get_yticklabels()]
    assert any(label.startswith("4-bit g128 [global blocks]: magnitude 2%") for label in labels)


def test_protection_bits_figure_sets_a_rules_seeds_beside_their_own_fraction():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from helpers.experiments.longcontext import protection_summary
    from helpers.experiments.longcontext_figures import protection_bits_figure

    settings = {"plain": ("none", 0.0, 4.25)} | {f"h{f} seed={s}": ("hessian", f / 100, 4.25 + 0.05 * f)
                                                   for f in (1, 2, 3) for s in range(3)}
    growth = pd.DataFrame([{"label": label, "window": w, "early_bin_kl": 0.1, "late_bin_kl": 0.1 + 0.01 * w,
                            "bits": 4.0, "group_size": 128.0, "blocks": np.nan, "protection_rule": rule,
                            "protected_fraction": fraction, "bits_per_weight": bits, "ppl_ratio": 1.2, "working": True}
                           for label, (rule, fraction, bits) in settings.items() for w in range(5)])
    fig, _ = protection_bits_figure(protection_summary(growth), title="t", early=(1, 2), late=(3, 4))
    unit = 0.03 * 0.4                           # one rule: no rule offset; seeds 2 and 3 of a fraction at unit/3, 2/3
    xs = np.concatenate([bars.lines[0].get_xdata() for bars in fig.axes[1].containers])
    bits = np.array(sorted({b for _, _, b in settings.values()}))
    beyond = xs - bits[np.searchsorted(bits, xs + 1e-9) - 1]   # each point's distance past its own setting's bits
    assert len(xs) == len(settings) + 1 and beyond.min() >= -1e-9 and beyond.max() == pytest.approx(2 * unit / 3)


def test_theory_figure_labels_several_ticks_on_a_ratio_axis_within_a_decade():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from helpers.experiments.longcontext_figures import theory_figure

    positions = np.arange(1, 1025)
    simulation = pd.DataFrame({"position": positions, "curve": "sum", "relative": positions / 16})
    measured = pd.DataFrame({"position": positions, "curve": "kl", "relative": np.geomspace(1.6, 0.15, positions.size)})
    fig = theory_figure(simulation, measured, title="t")
    fig.canvas.draw()
    right = fig.axes[1]
    low, high = right.get_ylim()
    shown = [t.get_text() for t in right.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
    assert right.get_yscale() == "log" and len(shown) >= 3, shown   # e.g. 0.2, 0.5, 1 (one label before)
