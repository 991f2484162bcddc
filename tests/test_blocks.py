"""Compressing a subset of decoder blocks (Gemma-3's global vs sliding-window blocks): only the chosen
blocks change, the rest are counted as stored dense, and the KV cache is quantized only where chosen."""
import pytest
import torch

from helpers.compression.activations import KVSettings, attention_projections, quantize_kv_cache
from helpers.compression.compress import Recipe, compress_model
from helpers.compression.quantizer import QuantSettings
from helpers.compression.storage import storage_bits
from helpers.experiments.core import parse_variant
from helpers.models import block_attention_types, compressed_linears, linear_weight, load_model, selected_blocks


@pytest.fixture
def gemma():
    return load_model("tiny-gemma3", layers=4, seed=1)[0]


def weights(model):
    return {name: linear_weight(linear).clone() for name, linear in compressed_linears(model).items()}


def block_of(name):
    return int(name.split(".layers.")[1].split(".")[0])


def test_block_types_and_selection(gemma):
    types = block_attention_types(gemma)
    assert types == ["sliding_attention", "full_attention"] * 2
    assert selected_blocks(gemma, "full_attention") == [1, 3]
    assert selected_blocks(gemma, "sliding_attention") == [0, 2]
    assert selected_blocks(gemma, (3, 1, 1)) == [1, 3]
    assert {block_of(n) for n in compressed_linears(gemma, "full_attention")} == {1, 3}
    llama = load_model("tiny-llama", layers=2, seed=1)[0]
    assert block_attention_types(llama) == ["full_attention"] * 2
    with pytest.raises(ValueError, match="selects no decoder block"):
        selected_blocks(llama, "sliding_attention")
    with pytest.raises(ValueError, match="expected indices from 0 to 1"):
        selected_blocks(llama, [2])
    with pytest.raises(ValueError, match="blocks='global'"):
        Recipe(method="magnitude", sparsity=0.5, blocks="global")


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_only_the_chosen_blocks_change_and_storage_counts_the_rest_dense(gemma, method):
    before = weights(gemma)
    recipe = Recipe(method=method, quant=QuantSettings(bits=3), blocks="full_attention")
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    report = compress_model(gemma, recipe, calibration_ids=ids if method == "gptq" else None, progress=False)
    after = weights(gemma)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (block_of(name) in (1, 3)), name
        assert report.layers[name].get("compressed", True) == (block_of(name) in (1, 3))
    expected_total = sum(report.layers[n]["storage"]["total"] for n in before if block_of(n) in (1, 3)) + sum(
        storage_bits(tuple(before[n].shape)).total for n in before if block_of(n) not in (1, 3))
    weights_total = sum(w.numel() for w in before.values())
    assert report.bits_per_weight == pytest.approx(expected_total / weights_total)
    assert 3 < report.bits_per_weight < 16


def test_kv_cache_quantized_only_in_the_chosen_blocks(gemma):
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    assert len(attention_projections(gemma)) == 4
    with torch.no_grad(), quantize_kv_cache(gemma, KVSettings(bits=2, blocks="sliding_attention")) as chosen:
        assert sorted(block_of(n) for n in chosen) == [0, 2]
        sliding_only = gemma(ids).logits
    with torch.no_grad(), quantize_kv_cache(gemma, KVSettings(bits=2, blocks="full_attention")):
        global_only = gemma(ids).logits
    with torch.no_grad():
        plain = gemma(ids).logits
    assert not torch.allclose(sliding_only, plain) and not torch.allclose(global_only, plain)
    assert not torch.allclose(sliding_only, global_only)


def test_block_zero_kv_leaves_the_first_block_output_alone_elsewhere(gemma):
    """KV noise in block 2 cannot change block 0's or block 1's outputs (blocks run in order)."""
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(2))
    layers = gemma.model.layers
    outputs = {}
    handles = [layers[i].register_forward_hook(lambda _m, _a, out, _i=i: outputs.__setitem__(
        _i, (out[0] if isinstance(out, tuple) else out).detach().clone())) for i in range(4)]
    with torch.no_grad():
        gemma(ids)
        dense = dict(outputs)
        with quantize_kv_cache(gemma, KVSettings(bits=2, blocks=(2,))):
            gemma(ids)
    for handle in handles:
        handle.remove()
    assert torch.equal(outputs[0], dense[0]) and torch.equal(outputs[1], dense[1])
    assert not torch.allclose(outputs[2], dense[2])


def test_spec_blocks_label_and_refusals():
    weight = parse_variant({"method": "rtn", "bits": 3, "blocks": "full_attention"})
    assert weight.recipe.blocks == "full_attention" and weight.label.endswith("[global blocks]")
    kv = parse_variant({"kv_bits": 3, "blocks": "sliding_attention"})
    assert kv.settings["kv_cache"]["blocks"] == "sliding_attention" and kv.label == "KV3 [sliding-window blocks]"
    assert parse_variant({"method": "rtn", "bits": 3, "blocks": [5, 11]}).label.endswith("[blocks 5,11]")
    with pytest.raises(ValueError, match="drop 'blocks'"):
        parse_variant({"method": "sparsegpt", "sparsity": 0.5, "schedule": "owl", "blocks": "full_attention"})
    with pytest.raises(ValueError, match="activation quantization covers every block"):
        parse_variant({"method": "rtn", "bits": 4, "activation_bits": 8, "blocks": "full_attention"})


def test_sliding_blocks_attention_agrees_with_sdpa_over_the_whole_masked_square(gemma):
    from helpers.models import SLIDING_BLOCKS

    assert gemma.config._attn_implementation == SLIDING_BLOCKS          # load_model switched it (window 16)
    assert load_model("tiny-llama", layers=2)[0].config._attn_implementation == "sdpa"  # no sliding blocks
    generator = torch.Generator().manual_seed(0)
    long, short = (torch.randint(0, 256, (2, n), generator=generator) for n in (83, 16))
    with torch.no_grad():
        blocks = {n: gemma(ids).logits for n, ids in (("long", long), ("short", short))}
        gemma.set_attn_implementation("sdpa")
        whole = {n: gemma(ids).logits for n, ids in (("long", long), ("short", short))}
        eager_window = gemma(long[:, :16]).logits                       # the first window: no earlier keys
        gemma.set_attn_implementation("eager")
        eager = gemma(long).logits
    torch.testing.assert_close(blocks["long"], whole["long"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocks["long"], eager, rtol=1e-4, atol=1e-4)
    assert torch.equal(blocks["short"], whole["short"])                 # within one window: sdpa itself
    torch.testing.assert_close(blocks["long"][:, :16], eager_window, rtol=1e-5, atol=1e-5)
    # decoding with a cache goes to sdpa and gives the same next token logits as the whole sequence
    gemma.set_attn_implementation(SLIDING_BLOCKS)
    with torch.no_grad():
        prefix = gemma(long[:, :-1], use_cache=True)
        step = gemma(long[:, -1:], cache=prefix.past_key_values, use_cache=True).logits
    torch.testing.assert_close(step[:, -1], blocks["long"][:, -1], rtol=1e-4, atol=1e-4)
