"""Device and dtype hygiene on the CPU: every tensor the engine, the methods, the metrics, the tasks and the
export create follows the model's device and dtype, and the engine holds one block on its device at a time.

The trick: the model lives on the CPU while torch's *default* device is "meta" (and its default float type
float64). A tensor created without naming a device lands on meta and the first operation that mixes it with
the model's CPU tensors raises; one created without naming a dtype is float64 and a matrix product with the
model's float32 weights raises. On a GPU those are the tensors that would sit on the wrong device or in the
wrong precision. (That the engine holds one block on the device at a time is measured on a GPU:
benchmarks/gpu_check.py's engine-budget section compresses a model larger than the device's memory budget.)"""
from __future__ import annotations

import contextlib

import pytest
import torch

from helpers.compression.compress import METHODS, Recipe, compress_model
from helpers.compression.quantizer import QuantSettings
from helpers.compression.schedules import scheduled_compress
from helpers.evaluation.metrics import DenseReference, evaluate
from helpers.models import load_model


@contextlib.contextmanager
def defaults_elsewhere(device: bool = True):
    """Default device meta (unless device=False) and default dtype float64 for the duration (restored after)."""
    dtype = torch.get_default_dtype()
    if device:
        torch.set_default_device("meta")
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_device(None)
        torch.set_default_dtype(dtype)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny-llama", hidden=64)
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, model.config.vocab_size, (4, 32), generator=generator)
    windows = torch.randint(0, model.config.vocab_size, (2, 32), generator=generator)
    return model, tokenizer, calibration, windows, {k: v.clone() for k, v in model.state_dict().items()}


RECIPES = {
    "magnitude 50%": Recipe(method="magnitude", sparsity=0.5),
    "random 10%": Recipe(method="random", sparsity=0.1),
    "wanda 2:4": Recipe(method="wanda", sparsity=0.5, pattern="2:4"),
    "sparsegpt 50% + 4-bit": Recipe(method="sparsegpt", sparsity=0.5, quant=QuantSettings(bits=4)),
    "rtn 3-bit g16 + 5% protected by hessian": Recipe(method="rtn", quant=QuantSettings(
        bits=3, group_size=16, protect_fraction=0.05, protect_rule="hessian")),
    "gptq 4-bit g16 act-order": Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=16, act_order=True)),
}


def test_every_method_is_covered():
    assert {recipe.method for recipe in RECIPES.values()} == set(METHODS)


@pytest.mark.parametrize("label", list(RECIPES))
def test_compression_and_evaluation_create_no_tensor_off_the_model(tiny, label):
    model, _, calibration, windows, state = tiny
    model.load_state_dict(state)
    reference = DenseReference(model, windows, progress=False)
    with defaults_elsewhere():
        compress_model(model, RECIPES[label], calibration_ids=calibration, progress=False)
        result = evaluate(model, windows, reference, progress=False)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(result.nll).all() and result.kl.min() >= -1e-6


@pytest.mark.parametrize("schedule", ["owl", "hessian"])
def test_schedules_create_no_tensor_off_the_model(tiny, schedule):
    model, _, calibration, _, state = tiny
    model.load_state_dict(state)
    with defaults_elsewhere():
        report, plan = scheduled_compress(model, Recipe(method="sparsegpt", sparsity=0.6), schedule, calibration)
    assert abs(report.achieved_sparsity - 0.6) < 0.02


def test_dense_reference_in_float64_defaults_matches_the_plain_one(tiny):
    model, _, _, windows, state = tiny
    model.load_state_dict(state)
    plain = DenseReference(model, windows, progress=False)
    with defaults_elsewhere():
        other = DenseReference(model, windows, progress=False)
    assert torch.equal(plain.nll, other.nll)


def test_tasks_create_no_tensor_off_the_model(tiny):
    from helpers.evaluation.tasks import FactoidSettings, KVRetrievalSettings, MMLUSettings, RetrievalQASettings
    from helpers.evaluation.tasks.factoid import evaluate_factoid_qa
    from helpers.evaluation.tasks.generation import GenerationSettings
    from helpers.evaluation.tasks.mmlu import evaluate_mmlu
    from helpers.evaluation.tasks.retrieval import evaluate_kv_retrieval, evaluate_retrieval_qa

    model, tokenizer, _, _, state = tiny
    model.load_state_dict(state)
    short = GenerationSettings(max_new_tokens=3, progress=False)
    with defaults_elsewhere():
        results = [
            evaluate_factoid_qa(model, tokenizer, 2, FactoidSettings(generation=short)),
            evaluate_mmlu(model, tokenizer, 2, MMLUSettings(shots=1, scorings=("generate", "loglik", "cloze"),
                                                            progress=False)),
            evaluate_kv_retrieval(model, tokenizer, 2, KVRetrievalSettings(n_pairs=2, generation=short)),
            evaluate_retrieval_qa(model, tokenizer, 2, RetrievalQASettings(open_book=True, passage_chars=100,
                                                                           generation=short))]
    assert all(len(result.records) == 2 for result in results)


def test_activation_and_kv_quantization_create_no_tensor_off_the_model(tiny):
    from helpers.compression.activations import (ActivationSettings, KVSettings, quantize_activations,
                                                 quantize_kv_cache)

    model, _, _, windows, state = tiny
    model.load_state_dict(state)
    reference = DenseReference(model, windows, progress=False)
    with defaults_elsewhere():
        with quantize_activations(model, ActivationSettings(bits=4)):
            activations = evaluate(model, windows, reference, progress=False)
        with quantize_kv_cache(model, KVSettings(bits=3)):
            kv = evaluate(model, windows, reference, progress=False)
    assert activations.mean_kl() > 0 and kv.mean_kl() > 0


def test_export_creates_no_tensor_in_the_wrong_dtype(tiny, tmp_path):
    """The export copies each weight to the CPU first (so the model's device cannot leak); compressed-tensors'
    own packing creates tensors on the default device, so only the dtype half of the trick applies here."""
    pytest.importorskip("compressed_tensors")
    from helpers.compression.export import save_compressed

    model, tokenizer, calibration, _, state = tiny
    model.load_state_dict(state)
    report = compress_model(model, Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=16)),
                            calibration_ids=calibration, progress=False)
    with defaults_elsewhere(device=False):
        written = save_compressed(model, report, tmp_path / "export")
    assert written["measured_bits_per_weight"] > 0
