"""Invariants of the weight quantizers: the grid, RTN's error bound, GPTQ (no-op at 16 bits, RTN with an
identity Hessian, better layer output than RTN on correlated inputs), and bad settings failing early."""
import pytest
import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.models import compressed_linears, linear_weight
from helpers.compression.obs import obs_solve
from helpers.compression.quantizer import GridQuantizer, QuantSettings, dequantize, fit_grid, max_level, rtn

ROWS, COLUMNS = 24, 256


@pytest.fixture
def weight():
    return torch.randn(ROWS, COLUMNS, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def correlated_inputs():
    """Tokens with strongly correlated input channels (and a few loud ones), like real activations."""
    generator = torch.Generator().manual_seed(1)
    mixing = torch.randn(COLUMNS // 4, COLUMNS, generator=generator)
    x = torch.randn(2048, COLUMNS // 4, generator=generator) @ mixing
    x += 0.1 * torch.randn(2048, COLUMNS, generator=generator)
    x[:, :8] *= 5
    return x


def hessian_of(x):
    return 2 * x.t() @ x / x.shape[0]


def output_error(x, weight, quantized):
    return float((x @ (weight - quantized).t()).square().sum())


def gptq(weight, hessian, settings):
    """GPTQ as helpers.compression.compress runs it (act-order permutation and un-permutation included)."""
    permutation = torch.argsort(torch.diag(hessian), descending=True) if settings.act_order else None
    w, h = (weight, hessian) if permutation is None else (weight[:, permutation], hessian[permutation][:, permutation])
    result = obs_solve(w, h, quantizer=GridQuantizer(settings, permutation))
    return result.weight if permutation is None else result.weight[:, torch.argsort(permutation)]


# --------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("settings", [QuantSettings(bits=3), QuantSettings(bits=4, symmetric=True),
                                      QuantSettings(bits=2, group_size=32), QuantSettings(bits=4, group_size=64, mse=True)])
def test_rtn_stays_on_the_grid(weight, settings):
    quantized = rtn(weight, settings)
    width = settings.group_size or COLUMNS
    spans = quantized.reshape(-1, width)
    for span in spans:
        assert len(torch.unique(span)) <= 2 ** settings.bits
    # rounding on the same grid again changes nothing (idempotent)
    scale, zero = fit_grid(weight.reshape(-1, width), settings.bits, settings.symmetric, settings.mse)
    once = dequantize(weight.reshape(-1, width), scale, zero, max_level(settings.bits))
    torch.testing.assert_close(once.reshape(ROWS, COLUMNS), quantized, rtol=0, atol=0)
    twice = dequantize(once, scale, zero, max_level(settings.bits))
    torch.testing.assert_close(twice, once, rtol=0, atol=0)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 32])
def test_8bit_rtn_error_is_at_most_half_a_step(weight, symmetric, group_size):
    settings = QuantSettings(bits=8, symmetric=symmetric, group_size=group_size)
    width = group_size or COLUMNS
    scale, _ = fit_grid(weight.reshape(-1, width), 8, symmetric)
    error = (rtn(weight, settings) - weight).abs().reshape(-1, width)
    assert (error <= scale / 2 + 1e-6).all()
    assert float(error.max()) > 0


def test_symmetric_grid_covers_rows_without_negative_weights():
    """A row of positive weights keeps the full error bound (the reference grid would clip it)."""
    w = torch.rand(4, 64, generator=torch.Generator().manual_seed(3)) + 0.5
    scale, zero = fit_grid(w, 4, symmetric=True)
    torch.testing.assert_close(zero, torch.full_like(zero, 8.0))
    error = (rtn(w, QuantSettings(bits=4, symmetric=True)) - w).abs()
    assert (error <= scale / 2 + 1e-6).all()


def test_all_zero_rows_stay_zero():
    w = torch.zeros(3, 32)
    assert torch.equal(rtn(w, QuantSettings(bits=3)), w)
    assert torch.equal(rtn(w, QuantSettings(bits=3, symmetric=True, group_size=16)), w)


# --------------------------------------------------------------------------- GPTQ
def test_gptq_at_16_bits_changes_almost_nothing(weight, correlated_inputs):
    for settings in [QuantSettings(bits=16), QuantSettings(bits=16, group_size=64, act_order=True)]:
        quantized = gptq(weight, hessian_of(correlated_inputs), settings)
        assert float((quantized - weight).abs().max()) < 1e-3 * float(weight.abs().max())


@pytest.mark.parametrize("settings", [QuantSettings(bits=4), QuantSettings(bits=3, symmetric=True),
                                      QuantSettings(bits=3, group_size=32),
                                      QuantSettings(bits=3, group_size=32, act_order=True, static_groups=True)])
def test_gptq_with_identity_hessian_equals_rtn(weight, settings):
    """No correlations: OBS has nothing to compensate, so every column is simply rounded (static groups
    also make act-order's arbitrary order of equal diagonals irrelevant)."""
    torch.testing.assert_close(gptq(weight, torch.eye(COLUMNS), settings), rtn(weight, settings), rtol=0, atol=0)


@pytest.mark.parametrize("settings", [QuantSettings(bits=3), QuantSettings(bits=4), QuantSettings(bits=3, group_size=32),
                                      QuantSettings(bits=3, act_order=True),
                                      QuantSettings(bits=3, group_size=32, act_order=True),
                                      QuantSettings(bits=3, group_size=32, act_order=True, static_groups=True),
                                      QuantSettings(bits=2, group_size=64, symmetric=True)])
def test_gptq_layer_output_error_is_below_rtn(weight, correlated_inputs, settings):
    x = correlated_inputs
    gptq_error = output_error(x, weight, gptq(weight, hessian_of(x), settings))
    rtn_error = output_error(x, weight, rtn(weight, settings))
    assert gptq_error < 0.7 * rtn_error


def test_act_order_helps_when_a_few_inputs_dominate(weight, correlated_inputs):
    x = correlated_inputs
    plain = output_error(x, weight, gptq(weight, hessian_of(x), QuantSettings(bits=3, group_size=32)))
    ordered = output_error(x, weight, gptq(weight, hessian_of(x), QuantSettings(bits=3, group_size=32, act_order=True)))
    assert ordered < plain


def test_static_groups_use_the_original_column_groups(weight, correlated_inputs):
    """With static groups each column is rounded on the grid of its ORIGINAL group, fitted on the weight
    before the loop: every original group of the result holds at most 2^b distinct values."""
    settings = QuantSettings(bits=2, group_size=32, act_order=True, static_groups=True)
    quantized = gptq(weight, hessian_of(correlated_inputs), settings)
    for span in quantized.reshape(-1, 32):
        assert len(torch.unique(span)) <= 4


def test_gptq_through_compress_model_records_per_layer_information():
    from helpers.models import load_model
    model, _ = load_model("tiny-llama", layers=2, seed=1)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    report = compress_model(model, Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=32, act_order=True)),
                            calibration_ids=ids, progress=False)
    assert set(report.layers) == set(compressed_linears(model))
    for name, info in report.layers.items():
        assert info["bits"] == 4 and info["obs_error"] >= 0
        assert info["bits_per_weight"] > 4  # scales, zeros and the act-order group index on top
        assert info["storage"]["group_index"] > 0 and "protected_groups" not in info


# --------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=1), "bits=1"), (dict(bits=9), "bits=9"), (dict(bits=12), "bits=12"), (dict(bits=4.0), "bits=4.0"),
    (dict(bits=4, group_size=0), "group_size=0"),
    (dict(bits=4, protect_fraction=1.0), "protect_fraction=1.0"),
    (dict(bits=4, protect_fraction=-0.01), "protect_fraction=-0.01"),
    (dict(bits=4, protect_fraction=0.02, protect_rule="largest"), "protect_rule='largest'"),
    (dict(bits=4, protect_fraction=0.02, protect_bits=4), "protect_bits=4"),
    (dict(bits=4, protect_fraction=0.02, protect_bits=12), "protect_bits=12"),
    (dict(bits=4, protect_fraction=0.02, protect_group_size=-8), "protect_group_size=-8"),
])
def test_bad_settings_fail_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(".", r"\.")):
        QuantSettings(**kwargs)


def test_rtn_partial_last_group_equals_a_grid_per_slice():
    """576 = 4 x 128 + 64 in miniature: width 72, groups of 32 -> 32 + 32 + 8, each with its own grid."""
    w = torch.randn(8, 72, generator=torch.Generator().manual_seed(11))
    for symmetric in (False, True):
        grouped = rtn(w, QuantSettings(bits=3, group_size=32, symmetric=symmetric))
        per_channel = QuantSettings(bits=3, symmetric=symmetric)
        expected = torch.cat([rtn(w[:, a:b], per_channel) for a, b in ((0, 32), (32, 64), (64, 72))], dim=1)
        torch.testing.assert_close(grouped, expected, rtol=0, atol=0)
    # protected groups with a partial last group (16 + 16 + 16 + 16 + 8): the 8-wide one can be protected
    from helpers.compression.protect import select_protected_groups
    settings = QuantSettings(bits=3, group_size=32, protect_fraction=0.2, protect_group_size=16, protect_bits=16)
    w[:, 64:] *= 50  # the partial groups are the largest: the magnitude rule must pick them
    chosen = select_protected_groups(w, settings)
    assert chosen.shape == (8, 5) and chosen[:, 4].all()
    out = rtn(w, settings, chosen)
    torch.testing.assert_close(out[:, 64:], w[:, 64:], rtol=0, atol=0)  # kept at 16 bits


@pytest.mark.parametrize("act_order, static_groups", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("group_fit", ["block_start", "updated"])
def test_gptq_partial_groups_equal_the_column_by_column_reference(correlated_inputs, act_order, static_groups,
                                                                  group_fit):
    """Width 200 with groups of 48 (4 x 48 + 8) and 64-column blocks: groups straddle blocks and the last
    is partial; the blocked loop equals the straightforward column loop under either group-fit rule."""
    from helpers.compression.obs import obs_solve_reference
    x = correlated_inputs[:, :200]
    w = torch.randn(ROWS, 200, generator=torch.Generator().manual_seed(4))
    settings = QuantSettings(bits=3, group_size=48, act_order=act_order, static_groups=static_groups,
                             group_fit=group_fit)
    hessian = hessian_of(x)
    permutation = torch.argsort(torch.diag(hessian), descending=True) if act_order else None
    wp, hp = (w, hessian) if permutation is None else (w[:, permutation], hessian[permutation][:, permutation])
    fast = obs_solve(wp, hp, quantizer=GridQuantizer(settings, permutation), block_size=64).weight
    slow = obs_solve_reference(wp, hp, quantizer=GridQuantizer(settings, permutation), block_size=64).weight
    assert float((fast - slow).abs().max()) < 1e-4 * float(w.abs().max())
    per_row_levels = [len(torch.unique(fast[r, -8:])) for r in range(ROWS)] if permutation is None else [1]
    assert max(per_row_levels) <= 8  # the partial group is on one 3-bit grid


def test_the_two_group_fit_rules_differ_only_where_in_block_updates_reach_a_group_start(correlated_inputs):
    """With groups as wide as the block, every group starts at a block start, where the two rules see
    the same weights; with narrower groups the later groups of a block see different weights."""
    x = correlated_inputs[:, :128]
    w = torch.randn(ROWS, 128, generator=torch.Generator().manual_seed(6))
    hessian = hessian_of(x)

    def solve(group_size, fit):
        return obs_solve(w, hessian, quantizer=GridQuantizer(QuantSettings(bits=3, group_size=group_size,
                                                                           group_fit=fit)), block_size=64).weight

    torch.testing.assert_close(solve(64, "block_start"), solve(64, "updated"), rtol=0, atol=0)
    narrow = (solve(32, "block_start") - solve(32, "updated")).abs()
    assert float(narrow[:, :32].max()) == 0 and float(narrow[:, 32:64].max()) > 0


@pytest.mark.parametrize("group_fit", ["block_start", "updated"])
def test_groups_straddling_a_block_boundary_match_the_reference(correlated_inputs, group_fit):
    """Group size 48 with 128-column blocks: the group at columns 96..143 starts inside one block and ends
    in the next. Under either rule its grid is fitted on the same weights the column-by-column reference
    uses (updated: after every earlier column's update; block_start: as the block started)."""
    from helpers.compression.obs import obs_solve_reference
    x = correlated_inputs[:, :192]
    w = torch.randn(ROWS, 192, generator=torch.Generator().manual_seed(4))
    settings = QuantSettings(bits=3, group_size=48, group_fit=group_fit)
    fast = obs_solve(w, hessian_of(x), quantizer=GridQuantizer(settings)).weight
    slow = obs_solve_reference(w, hessian_of(x), quantizer=GridQuantizer(settings)).weight
    assert float((fast - slow).abs().max()) < 1e-4 * float(w.abs().max())
