"""Typed compression recipes, the method registry, and `compress_model`.

A method is a small class over ONE layer (the engine drives it block by block):
    collector(name, linear) -> statistics collector or None
    compress(name, linear, collector) -> per-layer report (dict)
Adding a method = one class + one entry in METHODS.

    recipe = Recipe(method="sparsegpt", sparsity=0.5, pattern="2:4")
    report = compress_model(model, recipe, tokenizer=tokenizer)
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..data import CalibrationSettings, calibration_samples
from .engine import run_layerwise
from ..models import compressed_linears, linear_weight, normalize_blocks, set_linear_weight
from .obs import obs_compress
from .protect import layer_protection, quantization_info
from .pruning import Pattern, check_sparsity, magnitude_mask, random_mask, wanda_mask
from .quantizer import QuantSettings, rtn
from .stats import HessianCollector, InputNormCollector
from .storage import bits_per_weight, sparsity_report, storage_bits


@dataclass(frozen=True)
class Recipe:
    """One compression step. `sparsity` is one value for every layer or a {layer name: sparsity} map."""
    method: str
    sparsity: float | Mapping[str, float] = 0.0
    pattern: str = "unstructured"
    quant: QuantSettings | None = None
    damping: float = 0.01
    block_size: int = 128
    seed: int = 0
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    true_sequential: bool = False  # compress each block's sub-groups in turn ([q, k, v] -> [o] -> [gate, up] -> [down])
    # which decoder blocks to compress: 'all', 'full_attention' / 'sliding_attention' (Gemma-3's global vs
    # sliding-window blocks, helpers.models.selected_blocks) or block indices; the others stay dense
    blocks: str | tuple[int, ...] = "all"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not known; expected one of {sorted(METHODS)}.")
        pattern = Pattern.parse(self.pattern)
        if isinstance(self.sparsity, Mapping):
            for name, value in self.sparsity.items():
                check_sparsity(value, f"sparsity[{name!r}]")
        else:
            check_sparsity(self.sparsity)
        object.__setattr__(self, "blocks", normalize_blocks(self.blocks))
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size={self.block_size!r}; expected a positive integer (128 is the reference).")
        if pattern.structured:
            if isinstance(self.sparsity, Mapping) or not (self.sparsity == 0
                                                          or abs(self.sparsity - pattern.sparsity) < 1e-6):
                raise ValueError(f"sparsity={self.sparsity!r} contradicts pattern {self.pattern!r}, which prunes "
                                 f"exactly {pattern.sparsity:g}; give sparsity={pattern.sparsity:g} (or 0) with it.")
            if self.quant is not None and self.quant.act_order:
                raise ValueError(f"pattern {self.pattern!r} with act_order=True: N:M groups are consecutive columns "
                                 "of the original order, which act-order permutes; use act_order=False.")
        method = METHODS[self.method]
        if self.quant is not None and not method.uses_quant:
            raise ValueError(f"method {self.method!r} does not quantize but quant={self.quant!r} was given; "
                             "use 'sparsegpt' (joint), 'gptq' or 'rtn', or drop quant.")
        if not method.prunes and (isinstance(self.sparsity, Mapping) or self.sparsity or pattern.structured):
            raise ValueError(f"method {self.method!r} does not prune but sparsity={self.sparsity!r}, "
                             f"pattern={self.pattern!r} were given; use sparsity=0 and pattern='unstructured'.")
        if pattern.structured and self.block_size % pattern.m:
            raise ValueError(f"block_size={self.block_size} is not divisible by M={pattern.m} of pattern "
                             f"{self.pattern!r}; use a multiple of {pattern.m} (128 is the default).")
        if self.damping <= 0:
            raise ValueError(f"damping={self.damping!r}; expected a positive fraction of mean(diag H), e.g. 0.01.")
        if METHODS[self.method].needs_quant and self.quant is None:
            raise ValueError(f"method {self.method!r} needs quant=QuantSettings(bits=...).")

    @property
    def parsed_pattern(self) -> Pattern:
        return Pattern.parse(self.pattern)

    def sparsity_for(self, name: str) -> float:
        if self.parsed_pattern.structured:
            return self.parsed_pattern.sparsity
        if isinstance(self.sparsity, Mapping):
            if name not in self.sparsity:
                raise ValueError(f"the per-layer sparsity map has no entry for layer {name!r}; "
                                 "give every compressed linear a value (see helpers.models.compressed_linears).")
            return float(self.sparsity[name])
        return float(self.sparsity)

    def as_dict(self) -> dict:
        out = asdict(self)
        if isinstance(self.sparsity, Mapping):
            values = list(self.sparsity.values())
            out["sparsity"] = {"per_layer": True, "mean": sum(values) / len(values)}
        return out

    @property
    def needs_calibration(self) -> bool:
        return METHODS[self.method].needs_calibration or (self.quant is not None and self.quant.needs_calibration)


# --------------------------------------------------------------------------- methods over one layer
class LayerMethod:
    needs_calibration = False
    needs_quant = False
    uses_quant = False     # takes recipe.quant into account
    prunes = True          # takes recipe.sparsity / pattern into account
    modifies_weights = True

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def collector(self, name: str, linear: nn.Module):
        return None

    def compress(self, name: str, linear: nn.Module, collector) -> dict:
        start = time.perf_counter()
        weight = linear_weight(linear).detach()
        new_weight, info = self.compress_weight(name, weight, collector)
        set_linear_weight(linear, new_weight)
        zeros = int((linear_weight(linear) == 0).sum())
        info.setdefault("achieved_sparsity", zeros / weight.numel())
        if "storage" not in info:
            if self.uses_quant and self.recipe.quant is not None:
                raise RuntimeError(f"method {self.recipe.method!r} quantized {name} without describing its storage; "
                                   "set info['storage'] (helpers.compression.protect.quantization_info).")
            kept = weight.numel() - zeros  # unquantized: every exact zero is a pruned position
            storage = storage_bits(tuple(weight.shape), kept=kept)
            info.update(storage=storage.as_dict(), bits_per_weight=storage.per_weight)
        info["seconds"] = time.perf_counter() - start
        return info

    def compress_weight(self, name: str, weight: torch.Tensor, collector) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


class Magnitude(LayerMethod):
    def compress_weight(self, name, weight, collector):
        sparsity = self.recipe.sparsity_for(name)
        mask = magnitude_mask(weight, sparsity, self.recipe.parsed_pattern)
        return weight.masked_fill(mask, 0), {"target_sparsity": sparsity}


class RandomPruning(LayerMethod):
    def compress_weight(self, name, weight, collector):
        sparsity = self.recipe.sparsity_for(name)
        mask = random_mask(weight, sparsity, self.recipe.parsed_pattern, seed=self.recipe.seed, name=name)
        return weight.masked_fill(mask, 0), {"target_sparsity": sparsity}


class Wanda(LayerMethod):
    needs_calibration = True

    def collector(self, name, linear):
        return InputNormCollector(linear_weight(linear).shape[1], device=linear.weight.device)

    def compress_weight(self, name, weight, collector):
        sparsity = self.recipe.sparsity_for(name)
        mask = wanda_mask(weight, collector.norms(), sparsity, self.recipe.parsed_pattern)
        return weight.masked_fill(mask, 0), {"target_sparsity": sparsity}


class RoundToNearest(LayerMethod):
    """Round-to-nearest on the recipe's grid (simulated: weights stay dequantized in the model dtype),
    with optional protected outlier groups (helpers.compression.protect)."""
    needs_quant = True
    uses_quant = True
    prunes = False

    def collector(self, name, linear):
        # Only the 'hessian' protection rule needs calibration inputs (diag H ~ mean x_j^2).
        if self.recipe.quant.needs_calibration:
            return InputNormCollector(linear_weight(linear).shape[1], device=linear.weight.device)
        return None

    def compress_weight(self, name, weight, collector):
        quant = self.recipe.quant
        diagonal = collector.norms().square() if collector is not None else None
        protected = layer_protection(weight, quant, hessian_diagonal=diagonal, seed=self.recipe.seed, name=name)
        return rtn(weight, quant, protected), quantization_info(quant, tuple(weight.shape), protected,
                                                                 permuted_groups=False)


class OBSMethod(LayerMethod):
    """SparseGPT and GPTQ: the same OBS column loop with a mask rule and/or a quantizer."""
    needs_calibration = True
    uses_quant = True

    def collector(self, name, linear):
        return HessianCollector(linear_weight(linear).shape[1], device=linear.weight.device)

    def sparsity(self, name) -> float:
        return 0.0

    def compress_weight(self, name, weight, collector):
        recipe = self.recipe
        return obs_compress(weight, collector.hessian(), sparsity=self.sparsity(name), pattern=recipe.pattern,
                            quant=recipe.quant, block_size=recipe.block_size, damping=recipe.damping,
                            seed=recipe.seed, name=name)


class SparseGPT(OBSMethod):
    def sparsity(self, name):
        return self.recipe.sparsity_for(name)


class GPTQ(OBSMethod):
    """GPTQ: the OBS column loop with q = quantize(w) (simulated: weights stay dequantized in the model
    dtype); groups refit on the updated weights, act-order, static groups, protected outlier groups."""
    needs_quant = True
    prunes = False


METHODS: dict[str, type[LayerMethod]] = {
    "magnitude": Magnitude,
    "random": RandomPruning,
    "wanda": Wanda,
    "sparsegpt": SparseGPT,
    "rtn": RoundToNearest,
    "gptq": GPTQ,
}


# --------------------------------------------------------------------------- whole model
@dataclass
class CompressionReport:
    recipe: dict
    layers: dict[str, dict]
    achieved_sparsity: float
    seconds: float
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # the engine's split: capture, statistics, solve, propagation
    schedule: dict[str, dict] = field(default_factory=dict)  # per layer, what a layer-wise schedule read (error estimate, level)

    @property
    def bits_per_weight(self) -> float:
        """Bits per decoder-linear weight under helpers.compression.storage's convention."""
        return bits_per_weight(self.layers)

    def summary(self) -> dict:
        errors = [v["obs_error"] for v in self.layers.values() if "obs_error" in v]
        return {"achieved_sparsity": self.achieved_sparsity, "seconds": self.seconds,
                "total_obs_error": sum(errors) if errors else None, "warnings": len(self.warnings)}

    def obs_error_summary(self) -> dict | None:
        """Per-layer OBS error estimates in a few numbers (None for methods without them)."""
        errors = {name: v["obs_error"] for name, v in self.layers.items() if "obs_error" in v}
        if not errors:
            return None
        worst = max(errors, key=errors.get)
        values = sorted(errors.values())
        return {"layers": len(errors), "total": sum(values), "mean": sum(values) / len(values),
                "median": values[len(values) // 2], "max": errors[worst], "max_layer": worst,
                "fallbacks": sum(bool(v.get("fallback")) for v in self.layers.values())}


def check_recipe(model: nn.Module, recipe: Recipe) -> dict[str, nn.Module]:
    """Check `recipe` against the model's layers and shapes, before any forward pass; returns the
    linears it compresses. (Group sizes need no check: a width they do not divide ends in a partial
    group.)"""
    linears = compressed_linears(model, recipe.blocks)
    if isinstance(recipe.sparsity, Mapping):
        missing = set(linears) - set(recipe.sparsity)
        if missing:
            raise ValueError(f"the per-layer sparsity map misses {len(missing)} layers, e.g. {sorted(missing)[:3]}.")
        unknown = set(recipe.sparsity) - set(linears)
        if unknown:
            raise ValueError(f"the per-layer sparsity map names {len(unknown)} layers the model does not compress, "
                             f"e.g. {sorted(unknown)[:3]}; use the names of helpers.models.compressed_linears.")
    pattern = recipe.parsed_pattern
    if pattern.structured:
        for name, linear in linears.items():
            if linear_weight(linear).shape[1] % pattern.m:
                raise ValueError(f"pattern {pattern} needs every input width divisible by M={pattern.m}, but "
                                 f"{name} has {linear_weight(linear).shape[1]}; choose another M.")
    return linears


def compress_model(model: nn.Module, recipe: Recipe, *, tokenizer=None, calibration_ids: torch.Tensor | None = None,
                   device: str | torch.device | None = None, batch_size: int = 8,
                   progress: bool = True, share_statistics: bool = True) -> CompressionReport:
    """Compress every decoder-block linear of `model` in place according to `recipe`. share_statistics: one
    collector per distinct input tensor (the engine's `SharedInputs`; False only to time the old way)."""
    start = time.perf_counter()
    method = METHODS[recipe.method](recipe)
    linears = check_recipe(model, recipe)
    if recipe.needs_calibration:
        if calibration_ids is None:
            if tokenizer is None:
                raise ValueError(f"method {recipe.method!r} needs calibration data: pass tokenizer= (to sample "
                                 "recipe.calibration) or calibration_ids=.")
            calibration_ids = calibration_samples(tokenizer, recipe.calibration)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine = run_layerwise(model, calibration_ids, method, device=device, batch_size=batch_size,
                                   progress=progress, true_sequential=recipe.true_sequential,
                                   share_statistics=share_statistics,
                                   layer_filter=None if recipe.blocks == "all" else linears.__contains__)
        layers = engine.layers
        messages = [str(w.message) for w in caught]
        inner = engine.seconds_statistics + engine.seconds_compression + engine.seconds_propagation
        timings = {"seconds_capture": engine.seconds_total - inner, "seconds_statistics": engine.seconds_statistics,
                   "seconds_solve": engine.seconds_compression, "seconds_propagation": engine.seconds_propagation}
    else:
        layers = {}
        for name, linear in linears.items():
            layers[name] = method.compress(name, linear, None)
        messages = []
        timings = {"seconds_solve": time.perf_counter() - start}
    for name, linear in compressed_linears(model).items():  # blocks left out stay dense: counted as stored
        if name not in layers:
            storage = storage_bits(tuple(linear_weight(linear).shape))
            layers[name] = {"compressed": False, "storage": storage.as_dict(), "bits_per_weight": storage.per_weight}
    return CompressionReport(recipe=recipe.as_dict(), layers=layers, achieved_sparsity=sparsity_report(model)["total"],
                             seconds=time.perf_counter() - start, warnings=messages, timings=timings)
