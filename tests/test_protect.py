"""Protected outlier groups: exactly the top-p groups by each rule are protected, they keep their
precision with RTN and GPTQ, and the effective-bits count matches a hand count."""
import math

import pytest
import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.models import compressed_linears, linear_weight, load_model
from helpers.compression.obs import gptq, obs_solve
from helpers.compression.protect import group_scores, protection_maps, select_protected_groups
from helpers.compression.storage import bits_per_weight, effective_bits, protected_count, storage_bits
from helpers.compression.quantizer import GridQuantizer, QuantSettings, expand_groups, fit_grid, rtn

ROWS, COLUMNS = 32, 256


@pytest.fixture
def weight():
    w = torch.randn(ROWS, COLUMNS, generator=torch.Generator().manual_seed(0))
    w[3, 64:80] *= 12    # an outlier group (for protect_group_size=16)
    w[17, 160:176] *= 8  # another one
    return w


@pytest.mark.parametrize("fraction", [0.005, 0.01, 0.02, 0.05])
@pytest.mark.parametrize("rule", ["magnitude", "random", "hessian"])
@pytest.mark.parametrize("group", [16, 64])
def test_exactly_round_p_times_groups_are_protected_and_they_are_the_top_scores(weight, fraction, rule, group):
    settings = QuantSettings(bits=3, protect_fraction=fraction, protect_rule=rule, protect_group_size=group)
    diagonal = torch.rand(COLUMNS, generator=torch.Generator().manual_seed(2))
    chosen = select_protected_groups(weight, settings, hessian_diagonal=diagonal, seed=0, name="layer")
    n_groups = ROWS * COLUMNS // group
    assert chosen.shape == (ROWS, COLUMNS // group)
    assert int(chosen.sum()) == round(fraction * n_groups) == protected_count(settings, (ROWS, COLUMNS))
    scores = group_scores(weight, settings, hessian_diagonal=diagonal, seed=0, name="layer")
    if chosen.any():
        assert float(scores[chosen].min()) >= float(scores[~chosen].max())


def test_rule_scores_by_hand(weight):
    diagonal = torch.rand(COLUMNS, generator=torch.Generator().manual_seed(2))
    magnitude = group_scores(weight, QuantSettings(bits=3, protect_group_size=16))
    hessian = group_scores(weight, QuantSettings(bits=3, protect_group_size=16, protect_rule="hessian"),
                           hessian_diagonal=diagonal)
    for row, group in [(0, 0), (3, 4), (31, 15)]:
        columns = slice(16 * group, 16 * group + 16)
        assert float(magnitude[row, group]) == float(weight[row, columns].abs().max())
        expected = float((weight[row, columns] ** 2 * diagonal[columns]).sum())
        assert math.isclose(float(hessian[row, group]), expected, rel_tol=1e-5)
    # the injected outlier groups are the two largest by magnitude
    settings = QuantSettings(bits=3, protect_fraction=2 / (ROWS * COLUMNS // 16), protect_group_size=16)
    assert set(map(tuple, select_protected_groups(weight, settings).nonzero().tolist())) == {(3, 4), (17, 10)}


def test_hessian_rule_needs_the_diagonal(weight):
    with pytest.raises(ValueError, match="needs the Hessian diagonal"):
        select_protected_groups(weight, QuantSettings(bits=3, protect_fraction=0.02, protect_rule="hessian"))


def test_random_rule_is_seeded_per_layer(weight):
    settings = QuantSettings(bits=3, protect_fraction=0.05, protect_rule="random", protect_group_size=16)
    a = select_protected_groups(weight, settings, seed=0, name="a")
    assert torch.equal(a, select_protected_groups(weight, settings, seed=0, name="a"))
    assert not torch.equal(a, select_protected_groups(weight, settings, seed=1, name="a"))
    assert not torch.equal(a, select_protected_groups(weight, settings, seed=0, name="b"))


@pytest.mark.parametrize("group_size", [None, 64])
def test_rtn_keeps_protected_groups_at_their_precision(weight, group_size):
    base = dict(bits=3, group_size=group_size, protect_fraction=0.02, protect_group_size=16)
    settings8 = QuantSettings(**base, protect_bits=8)
    chosen = select_protected_groups(weight, settings8)
    mask = expand_groups(chosen, COLUMNS, 16)
    eight = rtn(weight, settings8, chosen)
    exact = rtn(weight, QuantSettings(**base, protect_bits=16), chosen)
    assert torch.equal(exact[mask], weight[mask])
    groups = weight.reshape(-1, 16)[chosen.reshape(-1)]
    scale, _ = fit_grid(groups, 8)
    assert ((eight.reshape(-1, 16)[chosen.reshape(-1)] - groups).abs() <= scale / 2 + 1e-6).all()
    # outside the protected groups both are the same low-bit RTN, on grids that ignore the outliers
    assert torch.equal(eight[~mask], exact[~mask])
    plain = rtn(weight, QuantSettings(bits=3, group_size=group_size))
    assert (eight[~mask] - weight[~mask]).square().sum() < (plain[~mask] - weight[~mask]).square().sum()
    # and spans without a protected group are untouched by protection
    if group_size:
        clean = ~chosen.reshape(ROWS, -1, group_size // 16).any(dim=2)
        clean = clean.repeat_interleave(group_size, dim=1)
        assert torch.equal(eight[clean], plain[clean])


@pytest.mark.parametrize("settings", [
    QuantSettings(bits=3, protect_fraction=0.05, protect_group_size=16),
    QuantSettings(bits=3, group_size=64, protect_fraction=0.05, protect_group_size=16, protect_bits=16),
    QuantSettings(bits=3, group_size=32, act_order=True, protect_fraction=0.05, protect_group_size=16),
    QuantSettings(bits=3, group_size=32, act_order=True, static_groups=True, protect_fraction=0.05,
                  protect_group_size=32)])
def test_gptq_with_identity_hessian_equals_protected_rtn(weight, settings):
    """Without correlations (a diagonal Hessian) GPTQ + protection reduces to RTN + protection, act-order
    (here a real permutation: distinct diagonal entries) or not; through the pure function gptq()."""
    chosen = select_protected_groups(weight, settings)
    hessian = torch.diag(torch.rand(COLUMNS, generator=torch.Generator().manual_seed(5)) + 0.5)
    result, info = gptq(weight, hessian, settings)
    assert torch.equal(info["protected_groups"], chosen.cpu()) and info["bits_per_weight"] > settings.bits
    if settings.act_order and not settings.static_groups:
        # dynamic groups are groups of the processing order: compare only the protected entries
        mask = expand_groups(chosen, COLUMNS, settings.protection_group_size)
        torch.testing.assert_close(result[mask], rtn(weight, settings, chosen)[mask], rtol=0, atol=0)
    else:
        torch.testing.assert_close(result, rtn(weight, settings, chosen), rtol=0, atol=0)


def test_gptq_protected_groups_lie_on_their_own_8bit_grid_and_updates_flow(weight):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1024, 64, generator=generator) @ torch.randn(64, COLUMNS, generator=generator)
    hessian = 2 * x.t() @ x / x.shape[0]
    settings = QuantSettings(bits=3, protect_fraction=0.05, protect_group_size=16)
    chosen = select_protected_groups(weight, settings)
    result = obs_solve(weight, hessian, quantizer=GridQuantizer(settings, None, chosen)).weight
    protected = result.reshape(-1, 16)[chosen.reshape(-1)]
    original = weight.reshape(-1, 16)[chosen.reshape(-1)]
    assert max(len(torch.unique(g)) for g in protected) <= 256
    assert not torch.equal(protected, rtn(weight, QuantSettings(bits=8)).reshape(-1, 16)[chosen.reshape(-1)])
    assert float((protected - original).abs().max()) > 0  # OBS updates reached protected weights
    error = lambda q: float((x @ (weight - q).t()).square().sum())  # noqa: E731
    unprotected = obs_solve(weight, hessian, quantizer=GridQuantizer(QuantSettings(bits=3))).weight
    assert error(result) < error(unprotected)


# --------------------------------------------------------------------------- effective bits
def test_effective_bits_by_hand():
    # 4 x 64, 3-bit asymmetric groups of 16, 25% of the 16 groups protected at 8 bits:
    # codes (256 - 64) * 3 = 576; grids 16 * (16 + 3) = 304; protected 64 * 8 = 512 + 4 * (16 + 8) = 96;
    # index min(bitmap 16, list 4 * log2(16) = 16) = 16  ->  1504 bits / 256 weights
    settings = QuantSettings(bits=3, group_size=16, protect_fraction=0.25, protect_bits=8)
    bits = storage_bits((4, 64), settings)
    assert (bits.values, bits.grids, bits.protected_values, bits.protected_grids, bits.protected_index) == \
        (576, 304, 512, 96, 16)
    assert effective_bits((4, 64), settings) == 1504 / 256
    # per channel, symmetric 4-bit: 1024 * 4 + 8 fp16 scales
    assert effective_bits((8, 128), QuantSettings(bits=4, symmetric=True)) == (4096 + 128) / 1024
    # protected at 16: fp16 values, no grid; 1% of 2 * 512 / 128 = 8 groups rounds to 0 -> nothing protected
    assert storage_bits((2, 512), QuantSettings(bits=3, protect_fraction=0.01)).protected_values == 0
    # list index beats the bitmap: 2% of 4096 groups = 82 groups * 12 bits < 4096
    big = storage_bits((4096, 128), QuantSettings(bits=3, group_size=128, protect_fraction=0.02, protect_bits=16))
    assert big.protected_index == 82 * 12 and big.protected_values == 82 * 128 * 16
    # GPTQ act-order with dynamic groups stores a group index per column: 256 * log2(256 / 64)
    assert storage_bits((8, 256), QuantSettings(bits=4, group_size=64, act_order=True)).group_index == 256 * 2
    assert storage_bits((8, 256), QuantSettings(bits=4, group_size=64, act_order=True, static_groups=True)
                        ).group_index == 0


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("rule", ["magnitude", "hessian", "random"])
def test_compress_model_records_protection_maps_and_effective_bits(method, rule):
    model, _ = load_model("tiny-llama", layers=2, seed=1)
    settings = QuantSettings(bits=3, group_size=32, protect_fraction=0.05, protect_rule=rule, protect_group_size=16)
    recipe = Recipe(method=method, quant=settings)
    assert recipe.needs_calibration == (method == "gptq" or rule == "hessian")
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    report = compress_model(model, recipe, calibration_ids=ids, progress=False)
    maps = protection_maps(report.layers)
    linears = compressed_linears(model)
    assert set(maps) == set(linears)
    total = weights = 0
    for name, chosen in maps.items():
        shape = tuple(linear_weight(linears[name]).shape)
        assert chosen.shape == (shape[0], shape[1] // 16) and chosen.dtype == torch.bool
        assert int(chosen.sum()) == protected_count(settings, shape) == report.layers[name]["protected_count"]
        total += effective_bits(shape, settings) * shape[0] * shape[1]
        weights += shape[0] * shape[1]
    assert math.isclose(bits_per_weight(report.layers), total / weights)


def test_rtn_with_hessian_rule_needs_calibration_data():
    model, _ = load_model("tiny-llama", layers=2, seed=1)
    recipe = Recipe(method="rtn", quant=QuantSettings(bits=3, protect_fraction=0.02, protect_rule="hessian",
                                                          protect_group_size=32))
    with pytest.raises(ValueError, match="needs calibration data"):
        compress_model(model, recipe, progress=False)
