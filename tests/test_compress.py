"""Recipes, the method registry and compress_model on tiny random models: validation before any
work, sparsity 0 is a no-op, per-layer sparsity maps, Cholesky fallback, every method end to end,
and the `compress` command line."""
import json
import warnings

import pytest
import torch

from helpers.compression import compress as compress_module
from helpers.compression.compress import METHODS, Recipe, SparseGPT, compress_model
from helpers.models import compressed_linears, linear_weight, load_model
from helpers.compression.obs import CholeskyFailure
from helpers.compression.pruning import magnitude_mask
from helpers.compression.quantizer import QuantSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def calibration(samples=4, tokens=32, seed=0):
    return torch.randint(0, 256, (samples, tokens), generator=torch.Generator().manual_seed(seed))


def weights(model):
    return {name: linear_weight(m).detach().clone() for name, m in compressed_linears(model).items()}


class FixedHessian:
    """A stand-in collector that returns a given Hessian."""

    def __init__(self, hessian):
        self._hessian = hessian

    def hessian(self):
        return self._hessian


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("settings, message", [
    (dict(method="obs-magic"), "method='obs-magic' is not known"),
    (dict(method="magnitude", sparsity=1.0), "sparsity=1.0"),
    (dict(method="wanda", sparsity=-0.1), "sparsity=-0.1"),
    (dict(method="magnitude", sparsity={"a": 1.2}), r"sparsity\['a'\]=1.2"),
    (dict(method="sparsegpt", pattern="4:4"), "'4:4'"),
    (dict(method="sparsegpt", pattern="2:3"), "block_size=128 is not divisible by M=3"),
    (dict(method="sparsegpt", pattern="2:4", block_size=126), "block_size=126"),
    (dict(method="sparsegpt", block_size=0), "block_size=0"),
    (dict(method="sparsegpt", sparsity=0.7, pattern="2:4"), "sparsity=0.7 contradicts pattern '2:4'"),
    (dict(method="magnitude", sparsity=0.5, quant=QuantSettings(bits=4)), "method 'magnitude' does not quantize"),
    (dict(method="gptq", sparsity=0.5, quant=QuantSettings(bits=4)), "method 'gptq' does not prune"),
    (dict(method="gptq"), "needs quant"),
    (dict(method="sparsegpt", pattern="2:4", quant=QuantSettings(bits=4, act_order=True)), "act_order"),
    (dict(method="sparsegpt", damping=0), "damping=0"),
])
def test_bad_recipes_raise_naming_the_value(settings, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**settings)


def test_pattern_sparsity_is_implied():
    assert Recipe(method="wanda", pattern="2:4").sparsity_for("any") == 0.5
    assert Recipe(method="wanda", sparsity=0.5, pattern="4:8").sparsity_for("any") == 0.5


def test_model_level_checks_happen_before_any_work(tiny_llama):
    model, _ = tiny_llama
    before = weights(model)
    names = list(before)
    with pytest.raises(ValueError, match="misses 1 layers"):
        compress_model(model, Recipe(method="magnitude", sparsity={n: 0.5 for n in names[1:]}))
    with pytest.raises(ValueError, match="names 1 layers the model does not compress.*model.layers.9.mlp"):
        compress_model(model, Recipe(method="magnitude", sparsity={**{n: 0.5 for n in names},
                                                                     "model.layers.9.mlp": 0.5}))
    with pytest.raises(ValueError, match="M=3.*has 64"):  # widths 64 and 160: not divisible by 3
        compress_model(model, Recipe(method="magnitude", pattern="1:3", block_size=129))
    with pytest.raises(ValueError, match="needs calibration data"):
        compress_model(model, Recipe(method="sparsegpt", sparsity=0.5))
    after = weights(model)
    assert all(torch.equal(before[n], after[n]) for n in names)


# --------------------------------------------------------------------------- whole-model behaviour
@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt"])
def test_sparsity_zero_changes_nothing(tiny_llama, method):
    model, _ = tiny_llama
    before = weights(model)
    report = compress_model(model, Recipe(method=method, sparsity=0.0), calibration_ids=calibration(),
                            progress=False)
    after = weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert report.achieved_sparsity == 0


def _expected_zeros(method, shape, sparsity, block_size=128):
    rows, columns = shape
    if method == "wanda":
        return rows * int(columns * sparsity)
    if method == "sparsegpt":
        return sum(int(rows * min(block_size, columns - start) * sparsity) for start in range(0, columns, block_size))
    return int(rows * columns * sparsity)


@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt"])
def test_per_layer_sparsity_map_is_honoured(tiny_llama, method):
    model, _ = tiny_llama
    names = list(compressed_linears(model))
    plan = {name: [0.2, 0.5, 0.8][index % 3] for index, name in enumerate(names)}
    report = compress_model(model, Recipe(method=method, sparsity=plan), calibration_ids=calibration(),
                            progress=False)
    for name, module in compressed_linears(model).items():
        weight = linear_weight(module)
        assert int((weight == 0).sum()) == _expected_zeros(method, tuple(weight.shape), plan[name]), name
        assert report.layers[name]["target_sparsity"] == plan[name]
    assert report.recipe["sparsity"] == {"per_layer": True, "mean": pytest.approx(sum(plan.values()) / len(plan))}


RECIPES = {
    "magnitude": Recipe(method="magnitude", sparsity=0.5),
    "random": Recipe(method="random", sparsity=0.5, seed=3),
    "wanda": Recipe(method="wanda", sparsity=0.5),
    "wanda-2:4": Recipe(method="wanda", pattern="2:4"),
    "sparsegpt": Recipe(method="sparsegpt", sparsity=0.5),
    "sparsegpt-4:8": Recipe(method="sparsegpt", pattern="4:8"),
    "sparsegpt+4bit": Recipe(method="sparsegpt", sparsity=0.5, quant=QuantSettings(bits=4)),
    "rtn": Recipe(method="rtn", quant=QuantSettings(bits=4)),
    "gptq": Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=32)),
}


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("name", RECIPES)
def test_compress_model_end_to_end(family, name):
    model, _ = load_model(f"tiny-{family}", layers=2, seed=1)
    recipe = RECIPES[name]
    probe = calibration(2, 24, seed=5)
    dense_logits = model(probe).logits
    report = compress_model(model, recipe, calibration_ids=calibration(), progress=False)
    linears = compressed_linears(model)
    assert set(report.layers) == set(linears)
    logits = model(probe).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits, dense_logits)
    if METHODS[recipe.method].prunes:
        assert report.achieved_sparsity == pytest.approx(0.5, abs=0.01)
        pattern = recipe.parsed_pattern
        if pattern.structured:
            for module in linears.values():
                groups = (linear_weight(module) == 0).reshape(-1, pattern.m)
                assert torch.all(groups.sum(dim=1) == pattern.n)
    if recipe.method in ("sparsegpt", "gptq"):
        summary = report.obs_error_summary()
        assert summary["layers"] == len(linears) and summary["total"] > 0 and summary["fallbacks"] == 0
    else:
        assert report.obs_error_summary() is None
    if recipe.quant is not None:
        for module in linears.values():  # at most 2^bits distinct values per row (and group)
            assert len(set(linear_weight(module)[0, :32].tolist())) <= 2 ** recipe.quant.bits
    assert report.warnings == []


def test_random_pruning_differs_across_seeds_and_layers(tiny_llama):
    model, _ = tiny_llama
    masks = {}
    for seed in (0, 0, 1):
        copy, _ = load_model("tiny-llama", layers=2, seed=1)
        compress_model(copy, Recipe(method="random", sparsity=0.5, seed=seed), progress=False)
        masks.setdefault(seed, []).append({n: linear_weight(m) == 0 for n, m in compressed_linears(copy).items()})
    first, again = masks[0]
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], masks[1][0][n]) for n in first)
    q0, q1 = first["model.layers.0.self_attn.q_proj"], first["model.layers.1.self_attn.q_proj"]
    assert not torch.equal(q0, q1)


# --------------------------------------------------------------------------- Cholesky fallback
@pytest.mark.parametrize("recipe", [Recipe(method="sparsegpt", sparsity=0.5),
                                    Recipe(method="sparsegpt", pattern="2:4"),
                                    Recipe(method="sparsegpt", sparsity=0.5, quant=QuantSettings(bits=4))])
def test_nan_hessian_falls_back_to_magnitude_with_a_warning(recipe):
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    hessian = torch.full((64, 64), float("nan"))
    with pytest.warns(UserWarning, match="fell back to magnitude pruning"):
        new, info = SparseGPT(recipe).compress_weight("layer", weight, FixedHessian(hessian))
    assert info["fallback"] and info["warnings"]
    assert torch.isfinite(new).all()
    mask = magnitude_mask(weight, 0.5, recipe.parsed_pattern)
    assert torch.all(new[mask] == 0)
    if recipe.quant is None:
        assert torch.equal(new[~mask], weight[~mask])


def test_cholesky_failure_in_a_model_is_recorded_not_raised(tiny_llama, monkeypatch):
    model, _ = tiny_llama
    from helpers.compression import obs as obs_module

    real = obs_module.obs_solve

    def failing_on_q_proj(weight, hessian, **settings):
        if weight.shape[1] == 64 and torch.equal(weight, linear_weight(model.model.layers[0].self_attn.q_proj)):
            raise CholeskyFailure("Cholesky failed with damping 0.01; giving up")
        return real(weight, hessian, **settings)

    monkeypatch.setattr(obs_module, "obs_solve", failing_on_q_proj)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compress_model must catch and record, not let it escape
        report = compress_model(model, Recipe(method="sparsegpt", sparsity=0.5), calibration_ids=calibration(),
                                progress=False)
    assert len(report.warnings) == 1 and "model.layers.0.self_attn.q_proj" in report.warnings[0]
    assert report.layers["model.layers.0.self_attn.q_proj"]["fallback"]
    assert report.obs_error_summary()["fallbacks"] == 1
    assert report.achieved_sparsity == pytest.approx(0.5, abs=0.01)
    assert all(torch.isfinite(linear_weight(m)).all() for m in compressed_linears(model).values())


# --------------------------------------------------------------------------- command line
def test_compress_command_on_tiny_llama(tmp_path, capsys):
    from helpers.running.cli import main

    torch.save(calibration(4, 64, seed=7), tmp_path / "calibration.pt")
    torch.save(torch.randint(0, 256, (4 * 48,), generator=torch.Generator().manual_seed(8)), tmp_path / "eval.pt")
    results = tmp_path / "results.jsonl"
    argv = ["compress", "--model", "tiny-llama", "--method", "sparsegpt", "--pattern", "2:4",
            "--calibration-token-file", str(tmp_path / "calibration.pt"), "--calibration-samples", "4",
            "--calibration-seq-len", "64", "--token-file", str(tmp_path / "eval.pt"), "--seq-len", "48",
            "--max-windows", "3", "--results", str(results), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "sparsegpt" in printed and "dense" in printed
    records = [json.loads(line) for line in results.read_text().splitlines()]
    by = {(r["method"], r["metric"]): r for r in records}
    assert by[("dense", "perplexity")]["value"] > 1
    assert by[("sparsegpt", "mean_kl")]["value"] > 0
    assert by[("sparsegpt", "achieved_sparsity")]["value"] == pytest.approx(0.5)
    compressed = by[("sparsegpt", "perplexity")]
    assert compressed["settings"]["recipe"]["pattern"] == "2:4"
    assert compressed["settings"]["recipe"]["calibration"]["n_samples"] == 4
    assert compressed["protocol"]["seq_len"] == 48 and compressed["protocol"]["windows_evaluated"] == 3
    assert compressed["obs_errors"]["layers"] == 14 and compressed["compression_seconds"] > 0

    # bad settings are refused before any model is loaded, naming the value
    for bad, message in [(["--sparsity", "1.5"], "sparsity=1.5"), (["--pattern", "4:2"], "'4:2'"),
                         (["--method", "gptq"], "needs quant"), (["--seq-len", "1"], "seq_len=1"),
                         (["--bits", "1"], "bits=1")]:
        args = ["compress", "--model", "no-such-model", "--method", "sparsegpt", "--results", str(results), *bad]
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_compress_command_checks_the_recipe_against_the_model_before_the_dense_pass(tmp_path, capsys, monkeypatch):
    from helpers.running import cli

    def no_dense_pass(*args, **kwargs):
        raise AssertionError("the dense reference pass ran before the recipe was checked")

    monkeypatch.setattr(cli, "DenseReference", no_dense_pass)
    results = tmp_path / "results.jsonl"
    argv = ["compress", "--model", "tiny-llama", "--method", "magnitude", "--pattern", "1:128",
            "--results", str(results), "--no-progress"]
    assert cli.main(argv) == 2
    assert "divisible by M=128" in capsys.readouterr().err and not results.exists()
