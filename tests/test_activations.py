"""Activation and KV-cache fake quantization: the grid, error bounds, hooks that change outputs at low
bits, almost nothing at 8 bits, stay causal, and are always removed."""
import pytest
import torch

from helpers.compression.quantizer import fake_quantize
from helpers.compression.activations import (ActivationSettings, KVSettings, attention_projections,
                                 kv_cache_bits_per_value, quantize_activations, quantize_kv, quantize_kv_cache)
from helpers.models import compressed_linears, load_model

FAMILIES = ["llama", "gemma3", "opt"]


@pytest.fixture(params=FAMILIES)
def model(request):
    return load_model(f"tiny-{request.param}", layers=2, seed=1)[0]


@pytest.fixture
def ids():
    return torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_per_token_stays_on_grid_within_half_a_step(bits, symmetric):
    x = torch.randn(3, 10, 64, generator=torch.Generator().manual_seed(0)) * 3
    q = fake_quantize(x, bits, symmetric=symmetric, dim=-1)
    for token in q.reshape(-1, 64):
        assert len(torch.unique(token)) <= 2 ** bits
    # the weight grid (helpers.compression.quantizer.fit_grid), one per token
    if symmetric:
        scale = 2 * x.abs().amax(-1, keepdim=True) / (2 ** bits - 1)
    else:
        scale = (x.amax(-1, keepdim=True).clamp(min=0) - x.amin(-1, keepdim=True).clamp(max=0)) / (2 ** bits - 1)
    assert ((q - x).abs() <= scale / 2 + 1e-6).all()
    if not symmetric:  # an asymmetric grid refitted on its own values is the same grid
        torch.testing.assert_close(fake_quantize(q, bits, symmetric=symmetric, dim=-1), q, rtol=0, atol=1e-6)


def test_fake_quantize_is_the_weight_grid_over_any_dimensions():
    from helpers.compression.quantizer import QuantSettings, rtn

    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    for symmetric in (True, False):
        expected = rtn(x.reshape(-1, 16), QuantSettings(bits=3, symmetric=symmetric)).reshape(x.shape)
        torch.testing.assert_close(fake_quantize(x, 3, symmetric=symmetric, dim=-1), expected, rtol=0, atol=0)
        over_tokens = rtn(x.transpose(1, 2).reshape(-1, 5), QuantSettings(bits=3, symmetric=symmetric))
        torch.testing.assert_close(fake_quantize(x, 3, symmetric=symmetric, dim=1),
                                   over_tokens.reshape(3, 16, 5).transpose(1, 2), rtol=0, atol=0)


def test_fake_quantize_keeps_zeros_and_dtype():
    x = torch.zeros(2, 8, dtype=torch.bfloat16)
    out = fake_quantize(x, 4, symmetric=False, dim=-1)
    assert out.dtype == torch.bfloat16 and torch.equal(out, x)


def test_kv_granularities_quantize_the_right_slices():
    head_dim, heads = 8, 2
    x = torch.randn(1, 12, heads * head_dim, generator=torch.Generator().manual_seed(1))
    x[0, 5, :head_dim] *= 100  # one loud (token, head)
    per_head = quantize_kv(x, head_dim, KVSettings(bits=3))
    # the loud head only coarsens its own slice: every other (token, head) is as if it were alone
    quiet = x.clone()
    quiet[0, 5, :head_dim] = 0
    others = torch.ones_like(x, dtype=torch.bool)
    others[0, 5, :head_dim] = False
    assert torch.equal(per_head[others], quantize_kv(quiet, head_dim, KVSettings(bits=3))[others])
    # per channel: each channel's block of 4 tokens has at most 2^b values
    per_channel = quantize_kv(x, head_dim, KVSettings(bits=2, granularity="per_channel", token_group_size=4))
    for block in per_channel[0].reshape(3, 4, -1).unbind(0):
        for channel in block.t():
            assert len(torch.unique(channel)) <= 4


# --------------------------------------------------------------------------- hooks on tiny models
def test_activation_hooks_change_outputs_at_low_bits_little_at_8_and_are_removed(model, ids):
    before = logits(model, ids)
    with quantize_activations(model, ActivationSettings(bits=8)) as hooked:
        eight = logits(model, ids)
    assert set(hooked) == set(compressed_linears(model))
    with quantize_activations(model, ActivationSettings(bits=3, symmetric=False)):
        three = logits(model, ids)
    after = logits(model, ids)
    assert torch.equal(after, before)
    assert relative_error(eight, before) < 0.05
    assert relative_error(three, before) > 3 * relative_error(eight, before)
    assert relative_error(three, before) > 0.02


def test_kv_hooks_change_outputs_at_low_bits_little_at_8_and_are_removed(model, ids):
    before = logits(model, ids)
    with quantize_kv_cache(model, KVSettings(bits=8)):
        eight = logits(model, ids)
    with quantize_kv_cache(model, KVSettings(bits=2)):
        two = logits(model, ids)
    with quantize_kv_cache(model, KVSettings(bits=2, granularity="per_channel", token_group_size=8)):
        two_channel = logits(model, ids)
    assert torch.equal(logits(model, ids), before)
    assert relative_error(eight, before) < 0.02
    assert relative_error(two, before) > 5 * relative_error(eight, before)
    assert relative_error(two_channel, before) > 5 * relative_error(eight, before)


def test_keys_only_and_values_only_are_separate_effects(ids):
    model = load_model("tiny-llama", layers=2, seed=1)[0]
    before = logits(model, ids)
    with quantize_kv_cache(model, KVSettings(bits=2, values=False)):
        keys = logits(model, ids)
    with quantize_kv_cache(model, KVSettings(bits=2, keys=False)):
        values = logits(model, ids)
    with quantize_kv_cache(model, KVSettings(bits=2)):
        both = logits(model, ids)
    assert not torch.equal(keys, before) and not torch.equal(values, before)
    assert not torch.equal(keys, both) and not torch.equal(values, both)


def test_hooks_are_removed_when_the_body_raises(ids):
    model = load_model("tiny-opt", layers=2, seed=1)[0]
    before = logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with quantize_kv_cache(model, KVSettings(bits=2)), quantize_activations(model, ActivationSettings(bits=2)):
            raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("settings", [KVSettings(bits=3), KVSettings(bits=3, granularity="per_channel",
                                                                       token_group_size=8),
                                      ActivationSettings(bits=3)])
def test_quantized_model_stays_causal(model, ids, settings):
    """Per-token grids (and per-channel grids over whole token blocks) depend on no later token: the
    first 24 positions come out the same whether or not later tokens are present."""
    context = quantize_kv_cache if isinstance(settings, KVSettings) else quantize_activations
    with context(model, settings):
        full = logits(model, ids)
        prefix = logits(model, ids[:, :24])
    torch.testing.assert_close(prefix, full[:, :24], rtol=1e-4, atol=1e-4)


def test_attention_projections_and_refusal_of_fused_attention():
    llama = load_model("tiny-llama", layers=2, seed=1)[0]
    found = attention_projections(llama)
    assert len(found) == 2 and all(head_dim == 16 for _, _, head_dim in found.values())
    gpt2 = load_model("tiny-gpt2", layers=2, seed=1)[0]
    with pytest.raises(ValueError, match="k_proj and v_proj"):
        with quantize_kv_cache(gpt2, KVSettings(bits=4)):
            pass


def test_kv_storage_cost():
    assert kv_cache_bits_per_value(KVSettings(bits=4), 64) == 4 + (16 + 4) / 64
    assert kv_cache_bits_per_value(KVSettings(bits=2, symmetric=True, granularity="per_channel",
                                              token_group_size=32), 64) == 2 + 16 / 32


@pytest.mark.parametrize("build, match", [
    (lambda: ActivationSettings(bits=1), "bits=1"), (lambda: ActivationSettings(bits=16), "bits=16"),
    (lambda: ActivationSettings(granularity="per_channel"), "granularity='per_channel'"),
    (lambda: KVSettings(bits=9), "bits=9"), (lambda: KVSettings(granularity="per_head"), "granularity='per_head'"),
    (lambda: KVSettings(token_group_size=0), "token_group_size=0"),
    (lambda: KVSettings(keys=False, values=False), "quantizes nothing")])
def test_bad_settings_fail_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()
