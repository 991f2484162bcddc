"""The straightforward implementations benchmarks/layers.py times against the fast paths compute the
same thing on small inputs, so its speedups compare like with like."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from helpers.compression.compress import Recipe
from helpers.evaluation.metrics import kl_from_hidden, kl_unchunked
from helpers.compression.obs import _lowest_mask
from helpers.compression.pruning import wanda_mask
from helpers.compression.stats import HessianCollector, InputNormCollector

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "layers.py"
_spec = importlib.util.spec_from_file_location("benchmark_layers", _PATH)
layers = importlib.util.module_from_spec(_spec)
sys.modules["benchmark_layers"] = layers
_spec.loader.exec_module(layers)

ROWS, COLUMNS, TOKENS = 24, 64, 256


@pytest.fixture(scope="module")
def layer():
    inputs = layers.correlated_inputs(TOKENS, COLUMNS, rank=16, seed=3)
    return layers.random_weight(ROWS, COLUMNS, seed=4), inputs


@pytest.mark.parametrize("config", [c for c in layers.layer_configs() if c.recipe.method != "wanda"],
                         ids=lambda c: c.label)
def test_obs_reference_matches_production_path(layer, config):
    weight, inputs = layer
    recipe = config.recipe
    if recipe.quant is not None and recipe.quant.group_size:  # 64 columns: use groups of 32
        recipe = Recipe(method=recipe.method, quant=type(recipe.quant)(**{**recipe.quant.as_dict(), "group_size": 32}))
    fast = layers.fast_layer(weight, inputs, recipe)
    collector = HessianCollector(COLUMNS)
    collector.add_batch(inputs)
    slow = layers.obs_layer_reference(weight, collector.hessian(), recipe)
    if recipe.method == "sparsegpt":
        assert torch.equal(fast == 0, slow == 0), "the two solvers chose different pruning masks"
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    else:
        # A column whose updated value sits on a rounding boundary may round either way: allow a
        # few entries one grid step apart, everything else equal.
        differ = (fast - slow).abs() > 1e-5
        assert differ.float().mean() < 0.01, f"{int(differ.sum())} of {differ.numel()} entries differ"


def test_wanda_reference_matches_wanda_mask(layer):
    weight, inputs = layer
    norms = InputNormCollector(COLUMNS)
    norms.add_batch(inputs)
    fast = weight.masked_fill(wanda_mask(weight, norms.norms(), 0.5), 0)
    slow = layers.wanda_reference(weight, norms.norms(), 0.5)
    assert torch.equal(fast, slow)
    assert ((slow == 0).sum(dim=1) == COLUMNS // 2).all()


def test_hessian_reference_matches_collector(layer):
    _, inputs = layer
    collector = HessianCollector(COLUMNS)
    for batch in inputs.reshape(4, -1, COLUMNS):
        collector.add_batch(batch)
    torch.testing.assert_close(layers.hessian_reference(inputs), collector.hessian(), rtol=1e-4, atol=1e-3)


def test_chunked_kl_matches_unchunked():
    torch.manual_seed(0)
    model = layers.HeadModel(vocab_size=300, hidden_size=16, device="cpu")
    dense = torch.randn(50, 16)
    other = dense + 0.3 * torch.randn(50, 16)
    chunked = kl_from_hidden(model, dense, other, chunk=7)
    with torch.no_grad():
        full = kl_unchunked(model.head(dense), model.head(other))
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    assert (full > 0).all()


def test_lowest_mask_selects_exactly_k_even_with_ties():
    score = torch.tensor([[3.0, 1.0, 1.0, 1.0], [0.5, 2.0, 1.0, 4.0]])
    for k in range(1, score.numel()):
        mask = _lowest_mask(score, k)
        assert int(mask.sum()) == k
        assert score[mask].max() <= score[~mask].min()


def test_obs_flops_count():
    # One block: in-block updates only (rows * b * (b + 1)), no lazy update; inverse 4c^3/3.
    one = layers.obs_flops(rows=10, columns=128, block_size=128)
    assert one["lazy"] == 0 and one["in_block"] == 10 * 128 * 129
    assert one["inverse"] == pytest.approx(4 * 128 ** 3 / 3)
    # Many blocks: the lazy updates tend to rows * columns^2 (a [rows, c] @ [c, c] matmul's half).
    many = layers.obs_flops(rows=64, columns=4096, block_size=128)
    assert many["lazy"] == pytest.approx(64 * 4096 ** 2, rel=0.05)
