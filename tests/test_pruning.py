"""Invariants of the pruning masks: exact sparsity in the reference's comparison group, exact N:M
patterns, the pruned weights are the lowest-scoring ones, seeded randomness, and loud bad input."""
import pytest
import torch

from helpers.compression.pruning import (Pattern, check_sparsity, layer_seed, magnitude_mask, mask_from_scores, random_mask,
                             wanda_mask, wanda_scores)

pytestmark = pytest.mark.usefixtures("single_thread")
ROWS, COLUMNS = 24, 64


@pytest.fixture
def weight():
    return torch.randn(ROWS, COLUMNS, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def norms():
    # very different input scales per channel, so Wanda's choice differs from magnitude's
    return torch.rand(COLUMNS, generator=torch.Generator().manual_seed(1)) * 10


def _assert_lowest_pruned(score, mask, groups):
    """Within each comparison group (rows of the reshaped tensors) every pruned score <= every kept one."""
    score, mask = score.reshape(groups, -1), mask.reshape(groups, -1)
    pruned_max = torch.where(mask, score, torch.full_like(score, -float("inf"))).max(dim=1).values
    kept_min = torch.where(~mask, score, torch.full_like(score, float("inf"))).min(dim=1).values
    assert torch.all(pruned_max <= kept_min)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.93])
def test_magnitude_prunes_exact_fraction_of_the_matrix(weight, sparsity):
    mask = magnitude_mask(weight, sparsity)
    assert int(mask.sum()) == int(weight.numel() * sparsity)
    _assert_lowest_pruned(weight.abs(), mask, groups=1)
    # per matrix, not per row: rows end up with different counts on a random matrix
    assert len(set(mask.sum(dim=1).tolist())) > 1


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7])
def test_wanda_prunes_exact_fraction_of_every_row(weight, norms, sparsity):
    mask = wanda_mask(weight, norms, sparsity)
    assert mask.sum(dim=1).tolist() == [int(COLUMNS * sparsity)] * ROWS
    _assert_lowest_pruned(weight.abs() * norms, mask, groups=ROWS)
    assert not torch.equal(mask, mask_from_scores(weight.abs(), sparsity, group="row")), \
        "input norms must change the choice"


def test_wanda_scores_are_weight_times_input_norm(weight, norms):
    torch.testing.assert_close(wanda_scores(weight, norms), weight.abs() * norms[None, :], rtol=0, atol=0)


@pytest.mark.parametrize("text", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("rule", ["magnitude", "wanda", "random"])
def test_n_m_pattern_is_exact_in_every_group(weight, norms, text, rule):
    pattern = Pattern.parse(text)
    if rule == "magnitude":
        mask, score = magnitude_mask(weight, 0.0, pattern), weight.abs()
    elif rule == "wanda":
        mask, score = wanda_mask(weight, norms, 0.0, pattern), weight.abs() * norms
    else:
        mask, score = random_mask(weight, 0.0, pattern, seed=3, name="layer"), None
    groups = mask.reshape(ROWS, COLUMNS // pattern.m, pattern.m)
    assert torch.all(groups.sum(dim=-1) == pattern.n)
    if score is not None:
        _assert_lowest_pruned(score, mask, groups=ROWS * COLUMNS // pattern.m)


def test_random_pruning_is_seeded_per_run_and_layer(weight):
    a = random_mask(weight, 0.5, seed=0, name="model.layers.0.mlp.up_proj")
    again = random_mask(weight, 0.5, seed=0, name="model.layers.0.mlp.up_proj")
    other_seed = random_mask(weight, 0.5, seed=1, name="model.layers.0.mlp.up_proj")
    other_layer = random_mask(weight, 0.5, seed=0, name="model.layers.1.mlp.up_proj")
    assert torch.equal(a, again)
    assert not torch.equal(a, other_seed) and not torch.equal(a, other_layer)
    for mask in (a, other_seed, other_layer):
        assert int(mask.sum()) == weight.numel() // 2
    # unrelated to the weights' values: the same mask for any weight of this shape
    assert torch.equal(a, random_mask(weight * 0 + 1, 0.5, seed=0, name="model.layers.0.mlp.up_proj"))
    assert layer_seed(0, "a") != layer_seed(0, "b") and layer_seed(0, "a") == layer_seed(0, "a")


def test_sparsity_zero_prunes_nothing(weight, norms):
    assert not magnitude_mask(weight, 0.0).any()
    assert not wanda_mask(weight, norms, 0.0).any()
    assert not random_mask(weight, 0.0, seed=0, name="x").any()


def test_pattern_parsing_and_properties():
    assert Pattern.parse("unstructured") == Pattern() and not Pattern().structured
    pattern = Pattern.parse("2:4")
    assert (pattern.n, pattern.m, pattern.sparsity, str(pattern)) == (2, 4, 0.5, "2:4")


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "2-4", "a:b", "2:4:8"])
def test_bad_patterns_name_the_value(text):
    with pytest.raises(ValueError, match=repr(text).replace("'", ".")):
        Pattern.parse(text)


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), "0.5", None])
def test_bad_sparsity_names_the_value(value):
    with pytest.raises(ValueError, match=r"sparsity=.*expected a number in \[0, 1\)"):
        check_sparsity(value)


def test_n_m_needs_a_divisible_width():
    with pytest.raises(ValueError, match="input width 6 .* M=4"):
        magnitude_mask(torch.randn(3, 6), 0.0, Pattern.parse("2:4"))
