"""Precision plumbing: with the model in bfloat16 (dtype="bfloat16"), statistics, solves, grids and
logits/NLL/KL stay float32; what holds exactly and what holds to a measured tolerance.

Exact: a statistic of bf16 inputs is the float32 statistic of the same (bf16) values; every method's new weight
for a bf16 layer is the float32 computation on the float32 copy of that layer, rounded to bf16 once at the end.
To a tolerance: a whole model compressed from bf16 activations vs from float32 ones (the numbers differ
because every block sees its inputs in bf16); measured here on a tiny model, and on SmolLM2-135M by
benchmarks/precision.py.
"""
from __future__ import annotations

import copy

import pytest
import torch

from helpers.compression.compress import METHODS, Recipe, compress_model
from helpers.compression.quantizer import QuantSettings
from helpers.compression.stats import HessianCollector, InputNormCollector
from helpers.evaluation.metrics import DenseReference, evaluate
from helpers.models import _resolve_dtype, compressed_linears, load_model

RECIPES = {
    "magnitude 50%": Recipe(method="magnitude", sparsity=0.5),
    "wanda 2:4": Recipe(method="wanda", sparsity=0.5, pattern="2:4"),
    "sparsegpt 50%": Recipe(method="sparsegpt", sparsity=0.5),
    "sparsegpt 50% + 4-bit": Recipe(method="sparsegpt", sparsity=0.5, quant=QuantSettings(bits=4)),
    "gptq 4-bit g16 act-order": Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=16, act_order=True)),
    "rtn 3-bit g16 + hessian protection": Recipe(method="rtn", quant=QuantSettings(
        bits=3, group_size=16, protect_fraction=0.05, protect_rule="hessian")),
}


def bf16_inputs(rows: int = 64, columns: int = 48, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, columns, generator=generator) * torch.linspace(0.1, 3, columns)).to(torch.bfloat16)


def test_collectors_accumulate_bf16_inputs_in_float32_exactly():
    x = bf16_inputs()
    for kind in (HessianCollector, InputNormCollector):
        from_bf16, from_fp32 = kind(48), kind(48)
        from_bf16.add_batch(x)
        from_fp32.add_batch(x.float())
        a = from_bf16.hessian() if kind is HessianCollector else from_bf16.norms()
        b = from_fp32.hessian() if kind is HessianCollector else from_fp32.norms()
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("label", list(RECIPES))
def test_a_bf16_layer_is_the_float32_computation_rounded_once(label):
    recipe = RECIPES[label]
    method = METHODS[recipe.method](recipe)
    generator = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(48, 32, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(32, 48, generator=generator))
    twin = copy.deepcopy(layer).float()  # the float32 copy of the same bf16 values
    collectors = [method.collector("layer", layer), method.collector("layer", twin)]
    for collector in collectors:
        if collector is not None:
            collector.add_batch(bf16_inputs())
    method.compress("layer", layer, collectors[0])
    method.compress("layer", twin, collectors[1])
    assert layer.weight.dtype == torch.bfloat16
    assert torch.equal(layer.weight, twin.weight.to(torch.bfloat16))


def test_logits_nll_and_kl_are_float32_for_a_bf16_model():
    model, _ = load_model("tiny-llama", dtype="bfloat16")
    windows = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    reference = DenseReference(model, windows, progress=False)
    result = evaluate(model, windows, reference, progress=False)
    assert reference.nll.dtype == torch.float32 and result.kl[0].dtype == torch.float32
    assert float(result.kl[0].abs().max()) < 1e-5  # the same model: KL 0 up to the float32 head's rounding


def test_a_model_compressed_from_bf16_activations_is_close_to_the_float32_one():
    """tiny-llama (hidden 64, 2 blocks, SparseGPT 50%, 8 x 64 calibration tokens), measured when written: the
    masks agree on 99.92% of the weights, the KL between the two compressed models is 0.31% of the float32 one's
    KL against the dense model. Tolerances: 99.5% and 0.5%."""
    dense, _ = load_model("tiny-llama", hidden=64)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, dense.config.vocab_size, (8, 64), generator=generator)
    windows = torch.randint(0, dense.config.vocab_size, (4, 64), generator=generator)
    fp32 = copy.deepcopy(dense)
    bf16 = copy.deepcopy(dense).to(torch.bfloat16)
    for model in (fp32, bf16):
        compress_model(model, Recipe(method="sparsegpt", sparsity=0.5), calibration_ids=ids, progress=False)
    bf16 = bf16.float()
    masks = [(l.weight == 0) for l in compressed_linears(fp32).values()], \
            [(l.weight == 0) for l in compressed_linears(bf16).values()]
    agreement = sum(int((a == b).sum()) for a, b in zip(*masks)) / sum(a.numel() for a in masks[0])
    damage = evaluate(fp32, windows, DenseReference(dense, windows, progress=False), progress=False).mean_kl()
    between = evaluate(bf16, windows, DenseReference(fp32, windows, progress=False), progress=False).mean_kl()
    assert agreement > 0.995, agreement
    assert between < 0.005 * damage, (between, damage)


def test_auto_precision_follows_the_hardware(monkeypatch):
    import helpers.models as models

    monkeypatch.setattr(models, "cpu_bf16_flags", lambda: {"avx512_bf16"})
    assert _resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(models, "cpu_bf16_flags", lambda: set())  # a CPU without bf16 units: the float32 path
    assert _resolve_dtype("auto", torch.device("cpu")) == torch.float32
    model, _ = load_model("tiny-llama", dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.info.dtype == "float32"
    with pytest.raises(ValueError, match="auto"):
        _resolve_dtype("float8", torch.device("cpu"))


def test_precision_floor_is_the_kl_between_the_two_precisions_of_one_model():
    from helpers.evaluation.metrics import precision_floor

    windows = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    same = precision_floor(load_model("tiny-llama")[0], "tiny-llama", windows)
    lower = precision_floor(load_model("tiny-llama", dtype="bfloat16")[0], "tiny-llama", windows)
    assert float(same.kl.abs().max()) < 1e-6           # float32 against itself: nothing
    assert float(lower.kl.mean()) > 1e-8 and lower.kl.shape == (2, 32)  # bf16 rounding: a small positive KL


def test_floor_summary_is_none_in_float32_and_reports_a_reduced_precision():
    from helpers.evaluation.metrics import floor_summary

    windows = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(0))
    assert floor_summary(load_model("tiny-llama")[0], "tiny-llama", windows) is None
    summary = floor_summary(load_model("tiny-llama", dtype="bfloat16")[0], "tiny-llama", windows)
    assert summary["dtype"] == "bfloat16" and summary["windows"] == 4 and summary["mean_kl"] > 0


def test_a_cached_floor_summary_is_read_back_without_measuring(tmp_path, monkeypatch):
    from helpers.evaluation import metrics

    model = load_model("tiny-llama", dtype="bfloat16")[0]
    windows = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    first = metrics.floor_summary(model, "tiny-llama", windows, cache_dir=tmp_path)
    def measured_again(*args, **kwargs):
        raise RuntimeError("measured again")

    monkeypatch.setattr(metrics, "precision_floor", measured_again)
    assert metrics.floor_summary(model, "tiny-llama", windows, cache_dir=tmp_path) == first
    with pytest.raises(RuntimeError, match="measured again"):  # other windows: not the cached summary
        metrics.floor_summary(model, "tiny-llama", windows[:, :16], cache_dir=tmp_path)
