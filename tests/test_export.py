"""Export to the compressed-tensors format: the packed integer codes and grids recovered from the
fake-quantized floats decode back bit for bit, a saved folder loads with transformers into the
same weights and logits as the model in memory (every scheme, partial last groups included), the
files hold what the sizes say, and what the format cannot express is refused before anything is
written."""
import json

import pytest

from conftest import cli_token_flags
import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.compression.export import (check_exportable, measured_sizes, safetensors_sizes, save_compressed,
                                        written_group_size)
from helpers.compression.quantizer import QuantSettings, dequantize, fit_grid, max_level, recover_grid
from helpers.models import compressed_linears, linear_weight, load_model
from helpers.running.cli import main

pytest.importorskip("compressed_tensors", reason="the export needs compressed-tensors (requirements.txt)")
pytestmark = pytest.mark.usefixtures("single_thread")

TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
CALIBRATION = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))


def compressed(recipe, family="llama"):
    model, tokenizer = load_model(f"tiny-{family}", layers=2, seed=1)
    report = compress_model(model, recipe, calibration_ids=CALIBRATION, progress=False)
    return model, report


def load(folder):
    """The export as any transformers user loads it, attending as load_model's models do (sliding-window blocks
    block by block: helpers.models.use_sliding_blocks), so equal weights give bit-equal logits."""
    from transformers import AutoModelForCausalLM

    from helpers.models import use_sliding_blocks

    model = AutoModelForCausalLM.from_pretrained(folder)
    use_sliding_blocks(model)
    return model


# --------------------------------------------------------------------------- the grid behind a fake-quantized weight
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("mse", [False, True])
def test_recover_grid_finds_the_scale_and_zero_that_dequantized_the_values(bits, symmetric, mse):
    weight = torch.randn(300, 64, generator=torch.Generator().manual_seed(bits)) * 0.02
    weight[0] = 0                  # an empty row
    weight[1] = weight[1].abs()    # a row without negative weights (zero point 0)
    scale, zero = fit_grid(weight, bits, symmetric, mse)
    values = dequantize(weight, scale, zero, max_level(bits))
    found_scale, found_zero, exact = recover_grid(values, bits, symmetric)
    assert exact.all()
    assert torch.equal(dequantize(values, found_scale, found_zero, max_level(bits)), values)
    assert torch.equal(found_scale, scale) and torch.equal(found_zero, zero)


def test_recover_grid_reproduces_values_whose_codes_share_a_common_factor():
    # SmolLM2's weights sit on a 4-bit grid, so an 8-bit grid's codes often all share a factor (here 3):
    # the coarser grid 3 * scale holds the same values in exact arithmetic but not in float32.
    scale = torch.tensor(0.006325396243482828)
    codes = 3 * torch.randint(-37, 49, (20, 128), generator=torch.Generator().manual_seed(0)).float()
    values = codes * scale
    found_scale, found_zero, exact = recover_grid(values, 8)
    assert exact.all()
    assert torch.equal(dequantize(values, found_scale, found_zero, max_level(8)), values)


def test_recover_grid_finds_no_grid_in_dense_weights():
    dense = torch.randn(50, 128, generator=torch.Generator().manual_seed(0))
    for bits in (4, 8):
        assert not recover_grid(dense, bits)[2].any()
    with pytest.raises(ValueError, match="float32"):
        recover_grid(dense.bfloat16(), 4)


def test_a_partial_last_group_is_written_in_groups_that_divide_every_width():
    assert written_group_size(QuantSettings(bits=4, group_size=128), {576, 1536}) == 64  # SmolLM2
    assert written_group_size(QuantSettings(bits=4, group_size=128), {1536}) == 128
    assert written_group_size(QuantSettings(bits=4, group_size=48), {64, 160}) == 16
    assert written_group_size(QuantSettings(bits=4, group_size=256), {64, 160}) is None  # one grid per row
    assert written_group_size(QuantSettings(bits=4), {64, 160}) is None


# --------------------------------------------------------------------------- round trips
ROUND_TRIPS = {
    "rtn 4-bit per channel": Recipe(method="rtn", quant=QuantSettings(bits=4)),
    "rtn 3-bit g48 symmetric (partial groups)": Recipe(method="rtn", quant=QuantSettings(bits=3, group_size=48,
                                                                                          symmetric=True)),
    "rtn 8-bit g64 mse (partial group)": Recipe(method="rtn", quant=QuantSettings(bits=8, group_size=64, mse=True)),
    "gptq 4-bit g64": Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=64)),
    "gptq 4-bit act-order static groups": Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=64,
                                                                                     act_order=True,
                                                                                     static_groups=True)),
    "gptq 4-bit act-order per channel": Recipe(method="gptq", quant=QuantSettings(bits=4, act_order=True)),
    "magnitude 50%": Recipe(method="magnitude", sparsity=0.5),
    "magnitude 2:4": Recipe(method="magnitude", pattern="2:4"),
    "sparsegpt 50% + 4-bit g64": Recipe(method="sparsegpt", sparsity=0.5, quant=QuantSettings(bits=4, group_size=64)),
    "sparsegpt 2:4 + 4-bit": Recipe(method="sparsegpt", pattern="2:4", quant=QuantSettings(bits=4)),
}


def packed_bits(model, quant, group_size):
    """Bits per weight of pack-quantized layers: b-bit codes in int32 words per row, a float32 scale per
    grid, b-bit zero points packed along the rows (asymmetric), an int64 [2] shape."""
    total = weights = 0
    for layer in compressed_linears(model).values():
        rows, columns = linear_weight(layer).shape
        grids = 1 if group_size is None else columns // group_size
        total += rows * -(-columns * quant.bits // 32) * 32 + rows * grids * 32 + 2 * 64
        total += 0 if quant.symmetric else -(-rows * quant.bits // 32) * 32 * grids
        weights += rows * columns
    return total / weights


@pytest.mark.parametrize("label", ROUND_TRIPS)
def test_a_saved_model_loads_back_with_the_same_weights_and_logits(label, tmp_path):
    recipe = ROUND_TRIPS[label]
    model, report = compressed(recipe)
    with torch.no_grad():
        expected = model(TOKENS).logits
    saved = save_compressed(model, report, tmp_path / "out")
    back = load(tmp_path / "out")
    for name, layer in compressed_linears(back).items():
        assert torch.equal(linear_weight(layer), linear_weight(compressed_linears(model)[name])), name
    with torch.no_grad():
        assert torch.equal(back(TOKENS).logits, expected)
    assert saved["bits_per_weight"] == report.bits_per_weight
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if recipe.quant is None:  # pruning alone: an ordinary dense checkpoint, the zeros where they were
        assert saved["format"] == "dense" and "quantization_config" not in config
        assert saved["measured_bits_per_weight"] == 32.0  # float32 values, zeros included
    else:
        assert saved["format"] == "pack-quantized"
        weights = config["quantization_config"]["config_groups"]["group_0"]["weights"]
        assert (weights["num_bits"], weights["symmetric"]) == (recipe.quant.bits, recipe.quant.symmetric)
        assert weights.get("group_size") == saved["written_group_size"]
        assert saved["measured_bits_per_weight"] == packed_bits(model, recipe.quant, saved["written_group_size"])
    sidecar = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert abs(sidecar["sparsity"]["achieved"] - report.achieved_sparsity) < 1e-12
    assert sidecar["recipe"]["method"] == recipe.method


@pytest.mark.parametrize("family, recipe", [
    ("gemma3", Recipe(method="rtn", quant=QuantSettings(bits=4, group_size=48))),
    ("opt", Recipe(method="rtn", quant=QuantSettings(bits=4, group_size=48))),
    ("gpt2", Recipe(method="magnitude", sparsity=0.5)),  # Conv1D: pruning writes dense weights
])
def test_other_families_load_back_with_the_same_logits(family, recipe, tmp_path):
    model, report = compressed(recipe, family)
    save_compressed(model, report, tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "out")(TOKENS).logits, model(TOKENS).logits)


def test_the_files_hold_packed_codes_grids_and_shapes_of_the_sizes_reported(tmp_path):
    quant = QuantSettings(bits=4, group_size=48)
    model, report = compressed(Recipe(method="rtn", quant=quant))
    saved = save_compressed(model, report, tmp_path / "out")
    assert saved["written_group_size"] == 16 and saved["requested_group_size"] == 48
    sizes = safetensors_sizes(tmp_path / "out")
    rows, columns = 160, 64  # model.layers.0.mlp.gate_proj: [intermediate, hidden]
    prefix = "model.layers.0.mlp.gate_proj."
    assert prefix + "weight" not in sizes
    assert sizes[prefix + "weight_packed"] == rows * columns * 4 // 8           # 4-bit codes in int32 words
    assert sizes[prefix + "weight_scale"] == rows * (columns // 16) * 4         # a float32 scale per written group
    assert sizes[prefix + "weight_zero_point"] == rows * 4 // 8 * (columns // 16)  # 4-bit zeros packed along rows
    linears = {name: linear_weight(layer).numel() for name, layer in compressed_linears(model).items()}
    again = measured_sizes(tmp_path / "out", linears)
    assert again["linear_bytes"] == saved["linear_bytes"] == sum(
        size for key, size in sizes.items() if key.rsplit(".", 1)[0] in linears and ".weight" in key)
    assert saved["bytes"] == sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["sparsity_config"] == {} and config["dequantize"] is True
    assert "lm_head" in config["ignore"] and not any(name in config["ignore"] for name in linears)


def test_blocks_left_dense_are_ignored_and_stored_as_they_are(tmp_path):
    model, report = compressed(Recipe(method="rtn", quant=QuantSettings(bits=4), blocks=(1,)))
    saved = save_compressed(model, report, tmp_path / "out")
    dense = [name for name in compressed_linears(model) if name.startswith("model.layers.0.")]
    assert saved["dense_layers"] == sorted(dense) and saved["quantized_layers"] == 7
    ignore = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["ignore"]
    assert set(dense) <= set(ignore)
    back = load(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(back(TOKENS).logits, model(TOKENS).logits)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("quant, message", [
    (QuantSettings(bits=3, group_size=64, protect_fraction=0.05), "protect_fraction=0.05"),
    (QuantSettings(bits=4, group_size=64, act_order=True), "act_order=True with dynamic groups"),
    (QuantSettings(bits=16), "bits=16"),
])
def test_unrepresentable_grids_are_refused_and_nothing_is_written(quant, message, tmp_path):
    method = "gptq" if quant.act_order else "rtn"
    model, report = compressed(Recipe(method=method, quant=quant))
    with pytest.raises(ValueError, match=message):
        save_compressed(model, report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_activation_and_kv_quantization_are_refused_by_name():
    recipe = Recipe(method="rtn", quant=QuantSettings(bits=4))
    with pytest.raises(ValueError, match="activation quantization .8-bit"):
        check_exportable(recipe, activations={"bits": 8, "granularity": "per_token"})
    with pytest.raises(ValueError, match="KV-cache quantization .4-bit"):
        check_exportable(recipe, kv_cache={"bits": 4})
    with pytest.raises(ValueError, match="nothing to export"):
        check_exportable(None, kv_cache={"bits": 4})


def test_layers_that_are_not_float32_linears_are_refused(tmp_path):
    quant = Recipe(method="rtn", quant=QuantSettings(bits=4))
    gpt2, _ = load_model("tiny-gpt2", layers=2, seed=1)
    with pytest.raises(ValueError, match="Conv1D"):
        check_exportable(quant, model=gpt2)
    half, _ = load_model("tiny-llama", layers=2, seed=1, dtype="bfloat16")
    report = compress_model(half, quant, progress=False)
    with pytest.raises(ValueError, match="bfloat16 weights"):
        save_compressed(half, report, tmp_path / "out")
    check_exportable(Recipe(method="magnitude", sparsity=0.5), model=gpt2)  # pruning alone writes dense weights


def test_a_model_that_no_longer_holds_its_report_is_refused(tmp_path):
    model, report = compressed(Recipe(method="rtn", quant=QuantSettings(bits=4, group_size=32)))
    dense, _ = load_model("tiny-llama", layers=2, seed=1)
    with pytest.raises(ValueError, match="export right after compressing"):
        save_compressed(dense, report, tmp_path / "a")
    _, pruning = compressed(Recipe(method="magnitude", sparsity=0.5))
    with pytest.raises(ValueError, match="zeros but the report says"):
        save_compressed(dense, pruning, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        save_compressed(model, report, tmp_path / "c")


# --------------------------------------------------------------------------- the command line
@pytest.fixture()
def tokens(tmp_path):
    return cli_token_flags(tmp_path, calibration=4, windows=2) + ["--results", str(tmp_path / "r.jsonl")]


def test_compress_save_writes_a_folder_that_loads_even_when_the_run_was_recorded(tmp_path, tokens, capsys):
    flags = ["compress", "--model", "tiny-llama", *tokens, "--method", "gptq", "--bits", "4", "--group-size", "48"]
    assert main([*flags, "--save", str(tmp_path / "first")]) == 0
    assert "saved (pack-quantized)" in capsys.readouterr().out
    assert main([*flags, "--save", str(tmp_path / "second")]) == 0  # recorded: compressed again to save
    printed = capsys.readouterr().out
    assert "already recorded" in printed and "saved (pack-quantized)" in printed
    first, second = load(tmp_path / "first"), load(tmp_path / "second")
    with torch.no_grad():
        assert torch.equal(first(TOKENS).logits, second(TOKENS).logits)


def test_a_per_layer_schedule_is_written_as_the_zeros_of_each_layer(tmp_path, tokens):
    folder = tmp_path / "owl"
    assert main(["compress", "--model", "tiny-llama", *tokens, "--method", "sparsegpt", "--sparsity", "0.6", "--bits",
                 "4", "--schedule", "owl", "--owl-spread", "0.2", "--save", str(folder)]) == 0
    recorded = json.loads((folder / "compression.json").read_text())["layers"]
    back = compressed_linears(load(folder))
    written = {name: int((linear_weight(layer) == 0).sum()) / linear_weight(layer).numel()
               for name, layer in back.items()}
    assert len({round(value, 3) for value in written.values()}) > 1  # the schedule's sparsities differ by layer
    for name, value in written.items():
        assert abs(value - recorded[name]["achieved_sparsity"]) < 1e-9


@pytest.mark.parametrize("flags, message", [
    (["--method", "rtn", "--bits", "3", "--protect-fraction", "0.02"], "protect_fraction=0.02"),
    (["--method", "rtn", "--bits", "4", "--activation-bits", "8"], "activation quantization"),
    (["--kv-bits", "4"], "nothing to export"),
])
def test_compress_save_refuses_an_unexportable_recipe_before_loading_the_model(flags, message, tmp_path, capsys):
    assert main(["compress", "--model", "no-such-model", *flags, "--save", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
