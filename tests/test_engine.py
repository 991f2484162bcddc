import pytest
import torch

from helpers.compression.engine import NoCompression, block_outputs, capture_block_inputs, input_hooks, run_layerwise
from helpers.models import compressed_linears, decoder_layers, linear_layers, linear_weight
from helpers.compression.compress import Recipe
from helpers.compression.quantizer import QuantSettings
from helpers.models import load_model
from helpers.compression.stats import HessianCollector


def _plain_block_outputs(model, tokens):
    outputs, handles = [], []
    for block in decoder_layers(model):
        handles.append(block.register_forward_hook(
            lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out)))
    try:
        model.base_model(input_ids=tokens, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def test_engine_block_outputs_equal_plain_forward(tiny, tokens):
    model, _ = tiny
    engine = block_outputs(model, tokens, batch_size=3)  # batches of 3 and 1: batching must not matter
    plain = _plain_block_outputs(model, tokens)
    assert len(engine) == len(plain) == len(decoder_layers(model))
    for ours, reference in zip(engine, plain):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_capture_records_arguments_per_block(tiny, tokens):
    model, _ = tiny
    captured = capture_block_inputs(model, tokens, batch_size=2)
    assert len(captured.hidden) == 2 and captured.hidden[0].shape[:2] == (2, tokens.shape[1])
    assert len(captured.arguments) == len(decoder_layers(model))
    assert all(len(per_block) == 2 for per_block in captured.arguments)
    # the recorders are gone again and the model still runs
    assert all(type(b).__name__ != "_Recorder" for b in decoder_layers(model))


def test_gemma3_blocks_get_their_own_masks(tokens):
    from helpers.models import load_model
    model, _ = load_model("tiny-gemma3", layers=2)
    long_tokens = torch.randint(0, 256, (1, 40))  # longer than the sliding window of 16
    captured = capture_block_inputs(model, long_tokens)
    sliding = captured.arguments[0][0][1]["attention_mask"]
    full = captured.arguments[1][0][1]["attention_mask"]
    assert isinstance(sliding, torch.Tensor)
    assert full is None or not torch.equal(sliding, full)


class _RecordingMethod:
    """Zeroes the first input column of every linear; records the Hessians it was given."""

    def __init__(self):
        self.tokens = {}

    def collector(self, name, linear):
        return HessianCollector(linear_weight(linear).shape[1])

    def compress(self, name, linear, collector):
        self.tokens[name] = collector.tokens
        with torch.no_grad():
            linear_weight(linear)[:, 0] = 0
        return {"seen_tokens": collector.tokens}


def test_run_layerwise_visits_every_linear_once(tiny_llama, tokens):
    model, _ = tiny_llama
    method = _RecordingMethod()
    report = run_layerwise(model, tokens, method, batch_size=2, progress=False)
    expected = {f"model.layers.{i}.{n}" for i, b in enumerate(decoder_layers(model)) for n in linear_layers(b)}
    assert set(report.layers) == expected
    assert set(method.tokens.values()) == {tokens.numel()}
    for name in expected:
        module = model.get_submodule(name)
        assert torch.all(linear_weight(module)[:, 0] == 0)


def test_no_compression_changes_nothing(tiny_llama, tokens):
    model, _ = tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_layerwise(model, tokens, NoCompression(), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hooks_are_removed_even_on_error(tiny_llama, tokens):
    model, _ = tiny_llama
    linears = linear_layers(decoder_layers(model)[0])

    def fail(name, inputs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with input_hooks(linears, fail):
            model(tokens)
    assert all(not m._forward_pre_hooks for m in linears.values())
    model(tokens)  # runs without the failing hook


def test_a_block_transform_runs_after_the_statistics_and_before_the_linears(tiny_llama, tokens):
    """transform_block sees the block's gathered statistics; every linear's compress sees its result."""
    model, _ = tiny_llama
    events = []

    class Doubling:
        def collector(self, name, linear):
            return HessianCollector(linear_weight(linear).shape[1])

        def transform_block(self, block, linears, collectors):
            assert all(c.tokens == tokens.numel() for c in collectors.values())
            events.append(("transform", len(linears)))
            for linear in linears.values():
                linear.weight.mul_(2)

        def compress(self, name, linear, collector):
            events.append(("compress", name))
            return {"weight": linear_weight(linear).clone()}

    before = {n: linear_weight(m).clone() for n, m in linear_layers(decoder_layers(model)[0], prefix="model.layers.0.").items()}
    report = run_layerwise(model, tokens, Doubling(), progress=False)
    blocks = len(decoder_layers(model))
    assert [e[0] for e in events].count("transform") == blocks
    assert events[0] == ("transform", len(before)) and events[1][0] == "compress"
    for name, weight in before.items():
        torch.testing.assert_close(report.layers[name]["weight"], 2 * weight)


@pytest.mark.parametrize("family, expected", [
    ("llama", [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]),
    ("opt", [["q_proj", "k_proj", "v_proj"], ["out_proj"], ["fc1"], ["fc2"]])])
def test_sequential_groups_follow_the_forward_pass(family, expected, tokens):
    from helpers.compression.engine import sequential_groups
    from helpers.models import load_model

    model, _ = load_model(f"tiny-{family}", layers=1, seed=0)
    inputs = capture_block_inputs(model, tokens, batch_size=2)
    block = decoder_layers(model)[0]
    groups = sequential_groups(block, inputs.hidden, inputs.arguments[0], linear_layers(block))
    assert [[name.rsplit(".", 1)[-1] for name in group] for group in groups] == expected


def test_true_sequential_differs_from_one_pass_exactly_where_later_sub_groups_see_compressed_inputs(tokens):
    """Block 0's q/k/v see the same (dense) inputs either way; its o, gate, up and down see the outputs of
    already compressed sub-groups under true-sequential, so they (and everything after) differ."""
    from helpers.compression.compress import GPTQ, Recipe
    from helpers.compression.quantizer import QuantSettings
    from helpers.models import load_model

    recipe = Recipe(method="gptq", quant=QuantSettings(bits=3))
    weights = {}
    for mode in (False, True):
        model, _ = load_model("tiny-llama", layers=2, seed=4)
        run_layerwise(model, tokens, GPTQ(recipe), progress=False, true_sequential=mode)
        weights[mode] = {n: linear_weight(m).clone() for n, m in compressed_linears(model).items()}
    for name in weights[False]:
        same = torch.equal(weights[False][name], weights[True][name])
        first = name.startswith("model.layers.0.self_attn.") and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj")
        assert same == first, name


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("recipe", [Recipe(method="sparsegpt", sparsity=0.5), Recipe(method="wanda", sparsity=0.5),
                                    Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=16))],
                         ids=["sparsegpt", "wanda", "gptq"])
def test_statistics_gathered_once_per_input_give_the_same_model(family, recipe):
    """q/k/v (and gate/up) read one tensor: one collector for them changes no number of the result."""
    from helpers.compression.compress import METHODS

    results, shared = [], []
    for share in (False, True):
        model, _ = load_model(f"tiny-{family}")
        ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
        report = run_layerwise(model, ids, METHODS[recipe.method](recipe), batch_size=2, progress=False,
                               share_statistics=share)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
        shared.append(report.shared_statistics)
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    blocks = len(decoder_layers(model))
    per_block = 3 if family == "llama" else 2  # llama: k, v share q's and up gate's; opt: k, v share q's
    assert shared == [0, per_block * blocks]
