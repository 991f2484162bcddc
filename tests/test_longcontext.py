"""Invariants of helpers.experiments.longcontext: binning, context means, uncertainty, the noise simulation, skipping."""
import math

import numpy as np
import pytest
import torch

from helpers.compression.compress import Recipe
from helpers.experiments.longcontext import (ModelSnapshot, Variant, binned_mean, bin_centers, bootstrap_interval,
                                 context_kl, context_lengths, growth_exponent, log_bin_edges,
                                 recorded_frame, run_variants, simulate_attention_noise, standard_error,
                                 summarize_windows)
from helpers.evaluation.metrics import DenseReference
from helpers.models import compressed_linears, linear_weight, load_model
from helpers.compression.quantizer import QuantSettings
from helpers.results import ResultsTable


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


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny-llama")
    windows = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    return model, windows, DenseReference(model, windows, progress=False)


def test_run_variants_restores_records_and_skips(tiny, tmp_path):
    model, windows, reference = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = ModelSnapshot(model)
    table = ResultsTable(tmp_path / "r.jsonl")
    protocol = {"dataset": "random", "max_context": 24}
    variants = [Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5), family="pruning"),
                Variant("rtn 3-bit", Recipe(method="rtn", quant=QuantSettings(bits=3)), family="quantization")]
    kwargs = dict(model_name="tiny-llama", protocol=protocol, snapshot=snapshot, edges=log_bin_edges(24),
                  contexts=[8, 24], log=lambda *_: None)
    reports = run_variants(model, variants, reference, table, **kwargs)
    assert set(reports) == {"magnitude 50%", "rtn 3-bit"}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # left dense
    frame = recorded_frame(table, "tiny-llama", protocol)
    kl_ctx = frame[(frame.metric == "kl_context") & (frame.label == "rtn 3-bit")]
    assert len(kl_ctx) == 2 * 2 and (kl_ctx.value > 0).all()
    full = frame[(frame.metric == "mean_kl") & (frame.label == "rtn 3-bit")].value.item()
    assert math.isclose(kl_ctx[kl_ctx.context == 24].value.mean(), full, rel_tol=1e-9)
    sparsity = frame[(frame.metric == "achieved_sparsity") & (frame.label == "magnitude 50%")].value.item()
    assert math.isclose(sparsity, 0.5, abs_tol=0.01)
    rows = len(table.records())
    # Re-run: both skipped, nothing written; a new variant runs alone.
    extra = Variant("random 10%", Recipe(method="random", sparsity=0.1))
    again = run_variants(model, variants + [extra], reference, table, **kwargs)
    assert set(again) == {"random 10%"}
    assert len(recorded_frame(table, "tiny-llama", protocol, labels=["magnitude 50%"])) == \
        len(frame[frame.label == "magnitude 50%"])
    assert len(table.records()) > rows
    # Another protocol is another key: runs again.
    assert set(run_variants(model, variants[:1], reference, table,
                            **{**kwargs, "protocol": {**protocol, "max_context": 23}})) == {"magnitude 50%"}
    # The dense weights really are what the model holds after each run.
    for name, layer in compressed_linears(model).items():
        assert (linear_weight(layer) != 0).float().mean() > 0.9


def test_run_variants_rejects_duplicate_labels(tiny, tmp_path):
    model, _, reference = tiny
    v = Variant("x", Recipe(method="magnitude", sparsity=0.5))
    with pytest.raises(ValueError, match="unique"):
        run_variants(model, [v, v], reference, ResultsTable(tmp_path / "r.jsonl"), model_name="m", protocol={},
                     snapshot=ModelSnapshot(model), edges=[0, 24], contexts=[24])
    with pytest.raises(ValueError, match="neither"):
        Variant("dense")


def test_spec_builders_label_and_validate():
    from helpers.experiments.longcontext import activation_variant, variant_from_spec
    assert variant_from_spec({"method": "wanda", "sparsity": 0.5}).label == "wanda 50%"
    gptq = variant_from_spec({"method": "gptq", "bits": 3, "group_size": 128})
    assert gptq.label == "GPTQ 3-bit g128" and gptq.recipe.quant.group_size == 128 and gptq.family == "quantization"
    with pytest.raises(ValueError, match="bits"):
        variant_from_spec({"method": "rtn", "sparsity": 0.5})
    w4a8 = activation_variant({"weight_bits": 4, "activation_bits": 8})
    assert w4a8.label == "W4A8" and w4a8.recipe.quant.bits == 4 and w4a8.settings["activations"]["bits"] == 8
    kv = activation_variant({"kv_bits": 3})
    assert kv.label == "KV3" and kv.recipe is None
    with pytest.raises(ValueError, match="activation_bits and/or kv_bits"):
        activation_variant({"weight_bits": 4})


def test_kv_variant_changes_outputs_and_hooks_leave(tiny, tmp_path):
    from helpers.experiments.longcontext import activation_variant
    model, windows, reference = tiny
    table = ResultsTable(tmp_path / "r.jsonl")
    run_variants(model, [activation_variant({"kv_bits": 3})], reference, table, model_name="m", protocol={},
                 snapshot=ModelSnapshot(model), edges=log_bin_edges(24), contexts=[24], log=lambda *_: None)
    kl = [r["value"] for r in table.records() if r["metric"] == "mean_kl"][0]
    assert kl > 0
    again = DenseReference(model, windows, progress=False)  # hooks removed: dense outputs again
    assert all(torch.equal(a, b) for a, b in zip(again.hidden, reference.hidden))


def test_protection_variant_records_effective_bits(tiny, tmp_path):
    from helpers.experiments.longcontext import protection_rows, protection_variant
    model, _, reference = tiny
    plain = protection_variant(bits=3, group_size=32, protect_fraction=0.0)
    kept = protection_variant(bits=3, group_size=32, protect_fraction=0.1, protect_rule="magnitude")
    assert plain.settings["protect_rule"] == "none" and "10.0% magnitude@8" in kept.label
    table = ResultsTable(tmp_path / "r.jsonl")
    run_variants(model, [plain, kept], reference, table, model_name="m", protocol={}, snapshot=ModelSnapshot(model),
                 edges=log_bin_edges(24), contexts=[24], log=lambda *_: None,
                 report_rows=lambda v, r: protection_rows(r, layer_maps=True))
    frame = recorded_frame(table, "m", {})
    bits = frame[frame.metric == "effective_bits"].set_index("label").value
    assert bits[plain.label] < bits[kept.label]  # protecting groups at 8 bits costs bits
    kl = frame[frame.metric == "mean_kl"].set_index("label").value
    assert kl[kept.label] < kl[plain.label]      # and keeping the largest groups at 8 bits helps
    share = frame[frame.metric == "protected_column_share"].value
    assert len(share) == 14 and ((share > 0) & (share <= 1)).all()
