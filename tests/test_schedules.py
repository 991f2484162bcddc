import copy

import pytest
import torch

from helpers.compression.compress import Recipe, SparseGPT
from helpers.compression.engine import run_layerwise
from helpers.models import compressed_linears, linear_weight
from helpers.compression.obs import obs_solve
from helpers.compression.schedules import (HessianSchedulerSettings, OWLSettings, block_outlier_ratios, check_schedule,
                               cluster_levels, collect_dense_hessians, compress_with_hessians, hessian_schedule,
                               layer_errors, layer_sizes, outlier_ratio, owl_schedule, probe_mask,
                               pruning_error_estimate, solve_shift, uniform_schedule,
                               weighted_mean)


def _random_layers(count=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = {f"model.layers.{i}.mlp.up_proj": int(s) for i, s in enumerate(torch.randint(100, 5000, (count,), generator=g))}
    preferences = {n: float(v) for n, v in zip(sizes, torch.randn(count, generator=g))}
    return sizes, preferences


@pytest.mark.parametrize("target", [0.5, 0.7, 0.8])
def test_shift_meets_mean_and_bounds(target):
    sizes, preferences = _random_layers()
    schedule = solve_shift(preferences, sizes, target, target - 0.1, target + 0.1)
    assert abs(weighted_mean(schedule, sizes) - target) < 1e-7
    assert all(target - 0.1 - 1e-12 <= s <= target + 0.1 + 1e-12 for s in schedule.values())
    # one common shift: the unclipped layers keep their preference differences
    inside = [n for n, s in schedule.items() if target - 0.1 < s < target + 0.1]
    shifts = {round(schedule[n] - preferences[n], 6) for n in inside}
    assert len(shifts) <= 1


def test_shift_of_constant_preferences_is_uniform_and_bad_target_is_refused():
    sizes, _ = _random_layers()
    schedule = solve_shift({n: 3.0 for n in sizes}, sizes, 0.6, 0.5, 0.7)
    assert all(abs(s - 0.6) < 1e-7 for s in schedule.values())
    with pytest.raises(ValueError, match="outside the bounds"):
        solve_shift({n: 0.0 for n in sizes}, sizes, 0.9, 0.5, 0.7)
    with pytest.raises(ValueError, match="weighted mean"):
        check_schedule({n: 0.5 for n in sizes}, sizes, 0.6)


def test_owl_more_outliers_less_sparsity():
    blocks = 6
    sizes = {f"model.layers.{b}.{kind}": size for b in range(blocks) for kind, size in (("q", 100), ("down", 300))}
    ratios = {b: r for b, r in enumerate([0.01, 0.05, 0.02, 0.08, 0.03, 0.04])}
    schedule = owl_schedule(ratios, sizes, 0.7, OWLSettings(spread=0.08))
    block_sparsity = {b: schedule.sparsity[f"model.layers.{b}.q"] for b in range(blocks)}
    order = sorted(range(blocks), key=lambda b: ratios[b])
    assert all(block_sparsity[a] >= block_sparsity[b] - 1e-12 for a, b in zip(order, order[1:]))
    assert abs(schedule.mean - 0.7) < 1e-7
    assert all(0.54 - 1e-12 <= s <= 0.86 + 1e-12 for s in schedule.sparsity.values())
    # OWL's unclipped shift: the linear map keeps its full range, max - min = 2 * lambda
    assert max(block_sparsity.values()) - min(block_sparsity.values()) == pytest.approx(0.16, abs=1e-6)


def test_outlier_ratio_counts_scores_above_m_times_mean():
    scores = torch.ones(1000)
    scores[:10] = 100.0  # mean = 1.99: ten outliers above 5 x mean
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.01)
    assert outlier_ratio(torch.ones(50), 5.0) == 0.0


@pytest.mark.parametrize("method", ["kmeans", "binning"])
def test_levels_recover_separable_groups(method):
    g = torch.Generator().manual_seed(0)
    centres = [-6.0, -3.0, 0.0]
    values, truth = [], []
    for level, centre in enumerate(centres):
        for v in (centre + 0.1 * torch.randn(7, generator=g)).tolist():
            values.append(v)
            truth.append(level)
    order = torch.randperm(len(values), generator=g).tolist()
    values, truth = [values[i] for i in order], [truth[i] for i in order]
    assert cluster_levels(values, 3, method) == truth


def test_decades_put_each_power_of_ten_on_its_own_level():
    values = [-5.9, -5.1, -3.5, -3.0, -2.99, 0.2]  # decades -6, -6, -4, -3, -3, 0: four occupied
    assert cluster_levels(values, 1, "decades") == [0, 0, 1, 2, 2, 3]
    sizes = {f"model.layers.{i}.mlp.up_proj": 1000 for i in range(6)}
    errors = dict(zip(sizes, (10.0 ** v for v in values)))
    schedule = hessian_schedule(errors, sizes, 0.6, HessianSchedulerSettings(clustering="decades", spread=0.1))
    assert abs(schedule.mean - 0.6) < 1e-7
    names = list(sizes)  # lowest decade pruned most, highest least, equal decades equal
    assert schedule.sparsity[names[0]] == schedule.sparsity[names[1]] > schedule.sparsity[names[2]]
    assert schedule.sparsity[names[3]] == schedule.sparsity[names[4]] > schedule.sparsity[names[5]]
    with pytest.raises(ValueError, match="clustering"):
        HessianSchedulerSettings(clustering="quantiles")


def test_scheduler_overrides_from_labels():
    from helpers.compression.schedules import scheduler_overrides

    assert scheduler_overrides("levels 8") == scheduler_overrides("levels=8") == {"levels": 8}
    assert scheduler_overrides("decades") == {"clustering": "decades"}
    assert scheduler_overrides("per weight") == {"normalize_by_size": True}
    assert scheduler_overrides("probe 0.5") == {"probe_sparsity": 0.5}
    assert scheduler_overrides("spread=0.04") == {"spread": 0.04}
    for bad in ("levels=two", "probe=1.5", "depth=3", "levels="):
        with pytest.raises(ValueError, match="scheduler ablation|probe_sparsity"):
            scheduler_overrides(bad)


def test_hessian_schedule_gives_higher_error_lower_sparsity():
    sizes = {f"model.layers.{i}.mlp.up_proj": 1000 for i in range(8)}
    errors = {n: 10.0 ** (i % 4) for i, n in enumerate(sizes)}  # four clean levels
    schedule = hessian_schedule(errors, sizes, 0.7, HessianSchedulerSettings(levels=4, spread=0.1))
    assert abs(schedule.mean - 0.7) < 1e-7
    by_error = sorted(sizes, key=lambda n: errors[n])
    assert all(schedule.sparsity[a] >= schedule.sparsity[b] for a, b in zip(by_error, by_error[1:]))
    assert schedule.sparsity[by_error[0]] == pytest.approx(0.8) and schedule.sparsity[by_error[-1]] == pytest.approx(0.6)
    assert {r["level"] for r in schedule.records()} == {0, 1, 2, 3}


def _layer(rows=24, columns=96, seed=0, diagonal=False):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=g)
    if diagonal:
        hessian = torch.diag(torch.rand(columns, generator=g) + 0.1)
    else:
        x = torch.randn(4 * columns, columns, generator=g) * torch.rand(columns, generator=g)
        hessian = 2 * x.T @ x / x.shape[0]
    return weight, hessian


@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_estimate_equals_obs_error_without_correlations(sparsity):
    # diagonal H -> U diagonal -> no OBS update reaches another column: the estimate is exact
    weight, hessian = _layer(columns=300, diagonal=True)  # three blocks, incl. a partial one
    result = obs_solve(weight, hessian, sparsity=sparsity)
    assert pruning_error_estimate(weight, hessian, sparsity) == pytest.approx(result.error, rel=1e-5)
    mask, _ = probe_mask(weight, hessian, sparsity)
    assert torch.equal(mask, result.weight == 0)


def test_estimate_with_correlations_first_block_and_single_weight():
    weight, hessian = _layer(columns=96)  # one block: the mask is chosen on the dense weights in both
    result = obs_solve(weight, hessian, sparsity=0.5)
    mask, _ = probe_mask(weight, hessian, 0.5)
    assert torch.equal(mask, result.weight == 0)
    # the estimate drops the updates of earlier pruned columns; it is not the OBS loss ...
    assert pruning_error_estimate(weight, hessian, 0.5) != pytest.approx(result.error, rel=1e-3)
    # ... except for the first pruned weight, which no update has touched: prune exactly one weight
    one = 1.5 / weight.numel()
    assert pruning_error_estimate(weight, hessian, one) == pytest.approx(obs_solve(weight, hessian, sparsity=one).error,
                                                                         rel=1e-5)


def test_end_to_end_on_tiny_llama(tiny_llama, tokens):
    model, _ = tiny_llama
    sequential_model = copy.deepcopy(model)
    stats = collect_dense_hessians(model, tokens, batch_size=2)
    linears = compressed_linears(model)
    assert set(stats.hessians) == set(linears) and stats.tokens == tokens.numel()
    q, k = (n for n in linears if n.endswith(("0.self_attn.q_proj", "0.self_attn.k_proj")))
    assert stats.hessians[q] is stats.hessians[k]  # one input, one stored Hessian
    sizes = layer_sizes(model)
    errors = layer_errors(model, stats.hessians, 0.7)
    assert errors[k] == pytest.approx(pruning_error_estimate(linear_weight(linears[k]), stats.hessians[k], 0.7))
    schedule = hessian_schedule(errors, sizes, 0.7, HessianSchedulerSettings(levels=3, spread=0.1))
    check_schedule(schedule.sparsity, sizes, 0.7, 0.6, 0.8)
    owl = owl_schedule(block_outlier_ratios(model, stats.hessians), sizes, 0.7)
    check_schedule(owl.sparsity, sizes, 0.7, 0.54, 0.86)
    # the stored dense Hessians prune exactly as the engine does with dense propagation
    recipe = schedule.recipe()
    report = compress_with_hessians(model, recipe, stats.hessians)
    run_layerwise(sequential_model, tokens, SparseGPT(recipe), propagate_compressed=False, progress=False)
    for name, linear in compressed_linears(model).items():
        torch.testing.assert_close(linear_weight(linear), linear_weight(compressed_linears(sequential_model)[name]))
        achieved = float((linear_weight(linear) == 0).float().mean())
        assert abs(achieved - schedule.sparsity[name]) < 2 / linear_weight(linear).shape[1] + 1 / 128
    assert abs(report.achieved_sparsity - 0.7) < 0.02
    # storage of the pruned model: kept fp16 values + a 1-bit-per-position bitmap
    assert report.bits_per_weight == pytest.approx((1 - report.achieved_sparsity) * 16 + 1)
    assert uniform_schedule(sizes, 0.7).mean == pytest.approx(0.7)


def test_kind_schedule_prunes_one_kind_more_and_refuses_an_absent_kind():
    from helpers.compression.schedules import KindProbe, kind_schedule, weighted_mean

    sizes = {"model.layers.0.self_attn.q_proj": 100, "model.layers.0.mlp.down_proj": 300,
             "model.layers.1.self_attn.q_proj": 100, "model.layers.1.mlp.down_proj": 300}
    plan = kind_schedule(sizes, 0.4, KindProbe("q_proj", 0.2))
    assert [plan.sparsity[n] for n in sizes] == pytest.approx([0.6, 0.4, 0.6, 0.4])
    assert weighted_mean(plan.sparsity, sizes) == pytest.approx(0.4 + 0.2 * 200 / 800)
    with pytest.raises(ValueError, match="no compressed linear of kind 'k_proj'"):
        kind_schedule(sizes, 0.4, KindProbe("k_proj"))
    with pytest.raises(ValueError, match="0 < extra < 1"):
        KindProbe("q_proj", 0.0)
