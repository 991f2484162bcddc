"""Compressed models on disk, in the compressed-tensors format (what llm-compressor writes, and
vLLM and transformers load), with their sizes measured from the files.

    report = compress_model(model, Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=128)), ...)
    saved = save_compressed(model, report, "out/smollm2-gptq4", tokenizer=tokenizer)
    saved["bytes"], saved["measured_bits_per_weight"], saved["bits_per_weight"]
    AutoModelForCausalLM.from_pretrained("out/smollm2-gptq4")   # the same logits, decompressed on load

What is written (compressed-tensors 0.20; transformers 5 needs >= 0.15):
- Quantized decoder linears (rtn, gptq, sparsegpt with bits): format `pack-quantized`, one config
  group over every quantized Linear: b-bit integer codes packed densely into int32 (32 codes in b
  words), a float32 scale per grid and, for asymmetric grids, a b-bit zero point per grid (packed
  along the rows). The compression in memory is simulated, so the codes and grids are recovered
  from the fake-quantized float32 weights (helpers.compression.quantizer.recover_grid), and every
  layer is decoded again with compressed-tensors' own decompressor and compared with the weight in
  memory before anything is written: all of them must come back bit for bit. Scales are float32
  because the grids were fitted in float32 (the storage model counts fp16 scales; the difference
  is in `measured_bits_per_weight`).
- A partial last group (a width the group size does not divide, 576 = 4 x 128 + 64): the format
  needs every width to be a multiple of its group size, so groups are written `gcd(group size,
  every quantized width)` columns wide (64 for SmolLM2 at 128), each grid repeated over the written
  groups it covers: the same weights, more scales. One group size for the whole model, because
  transformers' dequantizing loader reads one scheme for every dense layer.
- Pruned weights: compressed-tensors >= 0.15 has no sparse compressor (the bitmask and 2:4
  formats were removed there, and vLLM no longer loads them), so a pruned weight is stored where it
  is: a zero among the dense values of an unquantized layer, the zero code of a quantized one.
  Pruning alone therefore writes an ordinary dense checkpoint; the sparsity is recorded in
  `compression.json` beside the weights, and `sparsity_config` stays empty, as compressed-tensors
  itself writes it.
- Everything else (embeddings, norms, the output head, blocks the recipe left out) as it is in the
  model; `ignore` names every other Linear. The quantization_config carries `"dequantize": true`, so
  `from_pretrained` decompresses at load time into a plain model (the compressed-in-memory route of
  transformers 5.24 cannot load packed zero points of asymmetric grids); vLLM ignores the key.

Refused with a ValueError naming what is not representable (`check_exportable`), before anything
heavy: protected outlier groups, act-order with dynamic groups, the 16-bit check grid, activation
and KV-cache quantization, quantized layers that are not nn.Linear or not float32, per-layer bit
widths. Per-layer sparsity schedules are representable: they only change which weights are zero.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..models import compressed_linears, linear_weight, normalize_blocks
from ..results import plain
from .pruning import Pattern
from .quantizer import QuantSettings, max_level, padded_groups, recover_grid
from .storage import STORAGE_CONVENTION

FORMAT = "pack-quantized"
INSTALL = "pip install compressed-tensors==0.20.0 --no-deps (it needs torch>=2.10, transformers, pydantic, loguru)"
SIDECAR = "compression.json"


def _compressed_tensors():
    try:
        import compressed_tensors
    except ImportError as err:
        raise ImportError(f"saving in the compressed-tensors format needs the package compressed-tensors: "
                          f"{INSTALL}.") from err
    return compressed_tensors


# --------------------------------------------------------------------------- what can be written
def recipe_quant(recipe) -> QuantSettings | None:
    """The QuantSettings of a Recipe or of a CompressionReport's recipe dict (None: not quantized)."""
    quant = recipe.get("quant") if isinstance(recipe, Mapping) else getattr(recipe, "quant", None)
    return QuantSettings(**quant) if isinstance(quant, Mapping) else quant


def check_exportable(recipe, *, activations: Mapping | None = None, kv_cache: Mapping | None = None,
                     model: nn.Module | None = None) -> None:
    """Raise ValueError if what `recipe` (a Recipe or a report's recipe dict) produces cannot be
    written in the compressed-tensors format, naming what and what to do. `activations` / `kv_cache`:
    the settings a variant fake-quantizes at evaluation (helpers.experiments.core.Variant.settings);
    `model`: also check the layers the recipe quantizes (types and dtype)."""
    problems = []
    if recipe is None:
        problems.append("the variant compresses no weights (no method), so there is nothing to export")
    if activations:
        problems.append(f"activation quantization ({activations.get('bits')}-bit, "
                        f"{activations.get('granularity', 'per_token')}) is simulated by hooks while evaluating, "
                        "not stored in the weights; a compressed-tensors input_activations scheme would be computed "
                        "by the serving engine's kernels on their own grid, so it would not be this model. Export "
                        "the weights without activation_bits and choose the engine's activation scheme there")
    if kv_cache:
        problems.append(f"KV-cache quantization ({kv_cache.get('bits')}-bit, "
                        f"{kv_cache.get('granularity', 'per_token_head')}) is simulated while evaluating with grids "
                        "fitted on the fly before RoPE; compressed-tensors' kv_cache_scheme holds static scales "
                        "calibrated after RoPE, a different quantizer. Export without kv_bits")
    quant = recipe_quant(recipe) if recipe is not None else None
    if quant is not None:
        if quant.protects:
            problems.append(f"protect_fraction={quant.protect_fraction}: protected outlier groups keep "
                            f"{quant.protect_fraction:.1%} of the weight groups at protect_bits={quant.protect_bits} "
                            "on grids of their own, and compressed-tensors has one bit width and one grid per group "
                            "in a layer; export the recipe with protect_fraction=0")
        if quant.act_order and quant.group_size is not None and not quant.static_groups:
            problems.append(f"act_order=True with dynamic groups (group_size={quant.group_size}): each grid covers "
                            "group_size columns of the act-order permutation, which needs a per-column group index "
                            "(g_idx); compressed-tensors 0.20 removed actorder='group' and the report does not "
                            "record the permutation. Use static_groups=True (grids over consecutive columns) or "
                            "act_order=False")
        if quant.bits == 16:
            problems.append("bits=16 is the near no-op grid used in checks; compressed-tensors packs 1- to 8-bit "
                            "integers. Export with bits <= 8, or save the dense model")
    if model is not None and quant is not None and not problems:
        linears = compressed_linears(model, _blocks(recipe))
        for name, layer in linears.items():
            if not isinstance(layer, nn.Linear):
                problems.append(f"{name} is a {type(layer).__name__}, and compressed-tensors quantizes nn.Linear "
                                "(and nn.Embedding) modules only; GPT-2's Conv1D layers cannot be written packed")
                break
            if layer.weight.dtype != torch.float32:
                problems.append(f"{name} holds {layer.weight.dtype} weights: the fake-quantized values were rounded "
                                "to a 16-bit float after dequantization, so their integer codes cannot be recovered "
                                "exactly. Compress in float32 (the default dtype) to export")
                break
    if problems:
        raise ValueError("cannot export in the compressed-tensors format: " + "; ".join(problems) + ".")


def _blocks(recipe):
    """The recipe's block selection (a Recipe or a report's recipe dict, where it is a list)."""
    return normalize_blocks(recipe.get("blocks", "all") if isinstance(recipe, Mapping) else recipe.blocks)


def written_group_size(quant: QuantSettings, widths) -> int | None:
    """The group size the file uses: None for one grid per row (per channel, or a group size that
    covers every row whole), else gcd(group_size, every quantized input width)."""
    if quant.group_size is None or all(quant.group_size >= width for width in widths):
        return None
    size = quant.group_size
    for width in widths:
        size = math.gcd(size, width)
    return size


def quantization_scheme(quant: QuantSettings, group_size: int | None, targets=("Linear",)):
    """The compressed-tensors QuantizationScheme of a grid: int weights, static, minmax grids."""
    _compressed_tensors()
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    strategy = {"strategy": "channel"} if group_size is None else {"strategy": "group", "group_size": group_size}
    args = QuantizationArgs(num_bits=quant.bits, type="int", symmetric=quant.symmetric, dynamic=False, **strategy)
    return QuantizationScheme(targets=list(targets), weights=args, format=FORMAT)


# --------------------------------------------------------------------------- one layer
@torch.no_grad()
def pack_layer(weight: torch.Tensor, quant: QuantSettings, group_size: int | None, scheme, *,
               name: str = "layer") -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one fake-quantized float32 weight [rows, columns]:
    weight_packed, weight_scale, weight_shape (and weight_zero_point for asymmetric grids), checked by
    decompressing them with compressed-tensors and comparing bit for bit with `weight`."""
    _compressed_tensors()
    from compressed_tensors.compressors import BaseCompressor

    w = weight.detach().float().cpu()
    rows, columns = w.shape
    own = quant.group_size if quant.group_size is not None and quant.group_size < columns else columns
    grids = padded_groups(w, own).reshape(-1, own)
    scale, zero, exact = recover_grid(grids, quant.bits, quant.symmetric)
    if not exact.all():
        bad = int((~exact).sum())
        raise ValueError(f"{name}: {bad} of its {exact.numel()} grids hold values that no {quant.bits}-bit "
                         f"{'symmetric ' if quant.symmetric else ''}grid of {own} columns reproduces; the model "
                         "does not hold what the report describes (restored to dense, or changed after "
                         "compress_model?). Export right after compressing.")
    per_row = grids.shape[0] // rows
    scale, zero = scale.reshape(rows, per_row), zero.reshape(rows, per_row)
    if group_size is not None and group_size != own:  # each grid repeated over the written groups it covers
        covering = torch.arange(math.ceil(columns / group_size)) * group_size // own
        scale, zero = scale[:, covering], zero[:, covering]
    state = {"weight": w, "weight_scale": scale}
    if not quant.symmetric:  # compressed-tensors' codes are signed: q - 2^(b-1)
        state["weight_zero_point"] = (zero - (max_level(quant.bits) + 1) // 2).to(torch.int8)
    compressor = BaseCompressor.get_value_from_registry(FORMAT)
    packed = compressor.compress(state, scheme)
    decoded = compressor.decompress(packed, scheme)["weight"]
    if decoded.shape != w.shape or not torch.equal(decoded, w):
        error = (decoded - w).abs().max().item() if decoded.shape == w.shape else float("nan")
        raise ValueError(f"{name}: the packed codes decode to weights that differ from the model's by up to "
                         f"{error:.3g}; nothing was written. This is a bug of the export, please report it.")
    return {key: value.contiguous() for key, value in packed.items()}


# --------------------------------------------------------------------------- sizes
def safetensors_sizes(directory: str | Path) -> dict[str, int]:
    """Bytes of every tensor in the folder's .safetensors files, from their headers."""
    sizes = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for key, entry in header.items():
            if key != "__metadata__":
                start, stop = entry["data_offsets"]
                sizes[key] = stop - start
    return sizes


def measured_sizes(directory: str | Path, linears: Mapping[str, int]) -> dict:
    """File bytes, and the bytes and bits per weight of the decoder linears' weights (`linears`:
    name -> number of weights): every tensor named `<linear>.weight*`, grids and shapes included."""
    files = {path.name: path.stat().st_size for path in sorted(Path(directory).glob("*.safetensors"))}
    tensors = safetensors_sizes(directory)
    linear_bytes = sum(size for key, size in tensors.items()
                       if key.rsplit(".", 1)[0] in linears and key.rsplit(".", 1)[1].startswith("weight"))
    weights = sum(linears.values())
    return {"files": files, "bytes": sum(files.values()), "linear_bytes": linear_bytes, "linear_weights": weights,
            "measured_bits_per_weight": 8 * linear_bytes / weights if weights else float("nan")}


# --------------------------------------------------------------------------- the folder
def save_compressed(model: nn.Module, report, directory: str | Path, tokenizer=None, *,
                    max_shard_size: str = "5GB") -> dict:
    """Write the compressed `model` (as `compress_model` left it, `report` its CompressionReport) to
    `directory` in the compressed-tensors format; see the module docstring. Nothing is written unless
    every quantized layer decodes back bit for bit. `directory` must be new or empty.

    Returns what was written: format, scheme, written_group_size, the layers by how they are stored,
    sparsity, the sizes measured from the files (bytes, linear_bytes, measured_bits_per_weight) beside
    the storage model's bits_per_weight and its convention; the same goes to compression.json."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(f"{directory} exists and is not an empty folder; save into a new folder (an export "
                         "is never mixed with other files).")
    recipe = report.recipe
    check_exportable(recipe, model=model)
    quant = recipe_quant(recipe)
    linears = compressed_linears(model)
    missing = sorted(set(report.layers) ^ set(linears))
    if missing:
        raise ValueError(f"the report and the model disagree on {len(missing)} decoder linears (e.g. {missing[:3]}); "
                         "pass the report compress_model returned for this model.")
    quantized = [name for name, info in report.layers.items() if "bits" in info and info.get("compressed", True)]
    bits = {report.layers[name]["bits"] for name in quantized}
    if quant is not None and bits - {quant.bits}:
        raise ValueError(f"the report's layers are quantized at {sorted(bits)} bits but the recipe at {quant.bits}: "
                         "per-layer bit widths would need one scheme per layer; not exported.")
    for name, info in report.layers.items():  # a pruned layer must still hold its zeros
        weight = linear_weight(linears[name])
        zeros = int((weight == 0).sum()) / weight.numel()
        if "achieved_sparsity" in info and abs(zeros - info["achieved_sparsity"]) > 1e-9:
            raise ValueError(f"{name} has {zeros:.4f} zeros but the report says {info['achieved_sparsity']:.4f}: the "
                             "model was changed after compress_model (restored?); export right after compressing.")

    state = {key: value.detach() for key, value in model.state_dict().items()}
    scheme, group_size, config = None, None, None
    if quant is not None:
        group_size = written_group_size(quant, {linear_weight(linears[name]).shape[1] for name in quantized})
        scheme = quantization_scheme(quant, group_size)
        for name in quantized:
            del state[f"{name}.weight"]
            for key, value in pack_layer(linear_weight(linears[name]), quant, group_size, scheme,
                                         name=name).items():
                state[f"{name}.{key}"] = value
        chosen = set(quantized)
        ignore = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
                  and name not in chosen]
        config = quantization_config(scheme, ignore)
    model.save_pretrained(directory, state_dict=state, max_shard_size=max_shard_size)
    if config is not None:
        path = directory / "config.json"
        saved = json.loads(path.read_text())
        saved["quantization_config"] = config
        path.write_text(json.dumps(saved, indent=2, sort_keys=True))
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)

    pattern = Pattern.parse(recipe.get("pattern", "unstructured"))
    sizes = measured_sizes(directory, {name: linear_weight(layer).numel() for name, layer in linears.items()})
    result = {
        "directory": str(directory), "format": FORMAT if quant is not None else "dense",
        "scheme": None if scheme is None else scheme.weights.model_dump(),
        "requested_group_size": None if quant is None else quant.group_size, "written_group_size": group_size,
        "quantized_layers": len(quantized),
        "dense_layers": sorted(set(linears) - set(quantized)),
        "sparsity": {"structure": str(pattern), "achieved": report.achieved_sparsity,
                     "stored_as": "zeros among dense values" if quant is None else "zero codes among packed codes"},
        "tokenizer_saved": tokenizer is not None and hasattr(tokenizer, "save_pretrained"),
        **sizes,
        "bits_per_weight": report.bits_per_weight, "storage_convention": STORAGE_CONVENTION,
    }
    sidecar = {**result, "recipe": plain(recipe),
               "layers": {name: {key: plain(info[key]) for key in ("bits", "achieved_sparsity", "bits_per_weight",
                                                                    "compressed") if key in info}
                          for name, info in report.layers.items()}}
    (directory / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=str))
    return result


def quantization_config(scheme, ignore: list[str]) -> dict:
    """config.json's quantization_config, as compressed-tensors writes it (version, quant_method,
    empty sparsity and transform configs), plus `dequantize: true` for transformers' loader."""
    compressed_tensors = _compressed_tensors()
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig(config_groups={"group_0": scheme}, format=FORMAT, quantization_status="compressed",
                                ignore=ignore)
    return {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors", "sparsity_config": {},
            "transform_config": {}, **config.model_dump(exclude={"quant_method"}), "dequantize": True}

