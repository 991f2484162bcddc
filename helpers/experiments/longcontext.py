"""Compression error as a function of context length (arXiv 2406.06773), reusable pieces.

    snapshot = ModelSnapshot(model)                       # dense weights, kept once
    reference = DenseReference(model, windows)            # dense pass, done once
    variants = [Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5)), ...]
    run_variants(model, variants, reference, table, model_name=..., protocol=..., snapshot=snapshot)
    curves = position_curves(table.frame(), ...)          # figures are drawn from the table only

Why one pass at the longest context is enough: the models are causal, so the KL at position t of a
window of length T equals the KL at the last position of the window cut to length t + 1. The mean
KL "at context c" is therefore the mean over positions < c of the long window (`context_kl`).

The attention-noise simulation (`simulate_attention_noise`) is the paper's theory in a few lines:
one attention head whose keys and/or values carry additive noise. With an unnormalized sum over
earlier tokens the output-error variance grows linearly with position; with softmax weights the
noise is averaged instead (variance ~ sum_s a_ts^2), which does not grow. The notebooks show both
next to the measured curves.
"""
from __future__ import annotations

import contextlib
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..compression.compress import CompressionReport, Recipe, compress_model
from ..evaluation.metrics import DenseReference, evaluate
from ..results import ResultsTable, run_key


# --------------------------------------------------------------------------- positions and contexts
def log_bin_edges(length: int, bins_per_octave: int = 2) -> list[int]:
    """Position edges [0, ..., length] spaced evenly on a log axis of the 1-based position.

    Bin i holds positions edges[i] <= p < edges[i + 1]; the first bins are single positions
    (0, 1, 2, ...), later bins double in width every `bins_per_octave` bins.
    """
    if length < 1:
        raise ValueError(f"length={length}; expected at least one position.")
    if bins_per_octave < 1:
        raise ValueError(f"bins_per_octave={bins_per_octave}; expected a positive integer (2 is a good default).")
    points, k = set(), 0
    while True:
        point = int(round(2 ** (k / bins_per_octave)))
        if point >= length + 1:
            break
        points.add(point)
        k += 1
    edges = [p - 1 for p in sorted(points)] + [length]
    if len(edges) > 3 and edges[-1] - edges[-2] < (edges[-2] - edges[-3]) / 2:
        del edges[-2]  # a last sliver narrower than half its neighbour joins it
    return edges


def bin_centers(edges: Sequence[int]) -> np.ndarray:
    """Geometric centre of each bin in 1-based positions (where to draw it on a log axis)."""
    edges = np.asarray(edges, dtype=float)
    return np.sqrt((edges[:-1] + 1) * edges[1:])


def binned_mean(values: torch.Tensor, edges: Sequence[int]) -> torch.Tensor:
    """Mean of `values` [..., positions] within each bin -> [..., bins] (float64)."""
    if edges[0] != 0 or edges[-1] != values.shape[-1] or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges {list(edges)[:4]}...{list(edges)[-2:]} must rise strictly from 0 to the "
                         f"number of positions ({values.shape[-1]}); build them with log_bin_edges().")
    values = values.double()
    return torch.stack([values[..., a:b].mean(-1) for a, b in zip(edges, edges[1:])], dim=-1)


def context_lengths(max_context: int, smallest: int = 64) -> list[int]:
    """Powers of two from `smallest` up to `max_context`, and `max_context` itself."""
    if max_context < 2:
        raise ValueError(f"max_context={max_context}; expected at least 2 tokens.")
    out, c = [], max(2, min(smallest, max_context))
    while c < max_context:
        out.append(c)
        c *= 2
    return out + [max_context]


def context_kl(kl: torch.Tensor, contexts: Iterable[int]) -> torch.Tensor:
    """Mean KL over positions < c for each context c: [windows, positions] -> [windows, contexts].

    Valid because the model is causal: position t of a long window sees exactly the tokens a window
    of length t + 1 would.
    """
    contexts = list(contexts)
    bad = [c for c in contexts if not 1 <= c <= kl.shape[-1]]
    if bad:
        raise ValueError(f"contexts {bad} are outside 1..{kl.shape[-1]} (the positions measured); "
                         "measure longer windows or drop those contexts.")
    return torch.stack([kl[..., :c].double().mean(-1) for c in contexts], dim=-1)


# --------------------------------------------------------------------------- uncertainty across windows
def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample std / sqrt(n)); nan for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan")
    return float(values.std(ddof=1) / math.sqrt(values.size))


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (windows are the resampled unit)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one value.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; expected a fraction such as 0.95.")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarize_windows(frame, by: Sequence[str], value: str = "value", *, confidence: float = 0.95,
                      seed: int = 0):
    """Per group: mean over windows, standard error, bootstrap interval and number of windows."""
    import pandas as pd

    rows = []
    for keys, group in frame.groupby(list(by), sort=False, dropna=False):
        values = group[value].to_numpy(dtype=float)
        low, high = bootstrap_interval(values, confidence=confidence, seed=seed)
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows.append({**dict(zip(by, keys)), "mean": values.mean(), "standard_error": standard_error(values),
                     "low": low, "high": high, "windows": values.size})
    return pd.DataFrame(rows)


def growth_exponent(positions: Sequence[float], values: Sequence[float]) -> float:
    """Slope of log(value) against log(position): 0 flat, 1 linear growth, -1 decay as 1/t."""
    x, y = np.log(np.asarray(positions, float)), np.asarray(values, float)
    keep = np.isfinite(x) & (y > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[keep], np.log(y[keep]), 1)[0])


# --------------------------------------------------------------------------- the theory, simulated
@torch.no_grad()
def simulate_attention_noise(positions: int, *, dim: int = 64, noise_std: float = 0.1,
                             noisy: str = "keys+values", normalization: str = "softmax",
                             noise: str = "token", query_scale: float = 1.0, trials: int = 32,
                             seed: int = 0) -> torch.Tensor:
    """Variance of one causal attention head's output error at each position [positions].

    Queries, keys and values are standard normal; keys and/or values (`noisy`: "keys", "values" or
    "keys+values") get additive Gaussian noise of std `noise_std`: independent per token
    (`noise="token"`, the paper's assumption) or a fixed linear error e_s = E x_s of the token's
    features (`noise="weight"`, what rounding a projection matrix does). `normalization="softmax"` is
    real attention (weights sum to 1); `"sum"` adds up the exp-weighted values of all earlier tokens
    without dividing, the accumulation in which the paper's linear growth appears.
    `query_scale` sharpens (large) or flattens (0: uniform attention) the attention weights.
    """
    if noisy not in ("keys", "values", "keys+values"):
        raise ValueError(f"noisy={noisy!r}; expected 'keys', 'values' or 'keys+values'.")
    if normalization not in ("softmax", "sum"):
        raise ValueError(f"normalization={normalization!r}; expected 'softmax' or 'sum'.")
    if noise not in ("token", "weight"):
        raise ValueError(f"noise={noise!r}; expected 'token' (independent per token) or 'weight'.")
    gen = torch.Generator().manual_seed(seed)
    shape = (trials, positions, dim)
    q = torch.randn(shape, generator=gen, dtype=torch.float64) * query_scale / math.sqrt(dim)
    k = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)

    def error(x):
        if noise == "token":
            return noise_std * torch.randn(shape, generator=gen, dtype=torch.float64)
        matrix = noise_std * torch.randn((trials, dim, dim), generator=gen, dtype=torch.float64) / math.sqrt(dim)
        return x @ matrix

    k_noisy = k + error(k) if "keys" in noisy else k
    v_noisy = v + error(v) if "values" in noisy else v
    causal = torch.ones(positions, positions, dtype=torch.bool).tril()

    def attend(keys, values):
        scores = (q @ keys.transpose(1, 2)).masked_fill(~causal, -math.inf)
        if normalization == "softmax":
            return torch.softmax(scores, dim=-1) @ values
        return scores.exp() @ values

    diff = attend(k_noisy, v_noisy) - attend(k, v)
    return diff.pow(2).mean(dim=(0, 2)).float()


# --------------------------------------------------------------------------- running variants
class ModelSnapshot:
    """The model's weights saved once (on the CPU), restored before each variant (no reload from disk)."""

    def __init__(self, model: nn.Module):
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)


@dataclass(frozen=True)
class Variant:
    """One compressed variant to compare with the dense reference.

    `recipe` compresses the weights through helpers.compression.compress; `during_evaluation(model)` returns a
    context manager held while the variant is evaluated (activation or KV-cache quantization);
    `settings` is recorded beside the results (put there what the label alone does not say).
    """
    label: str
    recipe: Recipe | None = None
    during_evaluation: Callable[[nn.Module], ContextManager] | None = None
    settings: dict = field(default_factory=dict)
    family: str = ""   # e.g. "pruning", "quantization", "activations": groups variants in figures

    def __post_init__(self):
        if self.recipe is None and self.during_evaluation is None:
            raise ValueError(f"variant {self.label!r} has neither a recipe nor a during_evaluation context; "
                             "give at least one (the dense model is the reference, not a variant).")

    @property
    def method(self) -> str:
        return self.recipe.method if self.recipe is not None else self.settings.get("method", self.label)

    def record_settings(self) -> dict:
        out = dict(self.settings)
        if self.recipe is not None:
            out["recipe"] = self.recipe.as_dict()
        return out


def variant_key(variant: Variant, model_name: str, protocol: dict) -> str:
    return run_key(model=model_name, label=variant.label, settings=variant.record_settings(), protocol=protocol)


def variant_records(kl: torch.Tensor, nll: torch.Tensor, *, edges: Sequence[int],
                    contexts: Sequence[int]) -> list[dict]:
    """Tidy rows of one evaluated variant: perplexity, mean KL, KL per log bin and per context, per window."""
    rows = [{"metric": "perplexity", "value": math.exp(nll.double().mean().item())},
            {"metric": "mean_kl", "value": kl.double().mean().item()}]
    binned = binned_mean(kl, edges)
    by_context = context_kl(kl, contexts)
    for window in range(kl.shape[0]):
        for index, (start, stop) in enumerate(zip(edges, edges[1:])):
            rows.append({"metric": "kl_bin", "value": binned[window, index].item(), "window": window,
                         "position_start": start, "position_stop": stop})
        for index, context in enumerate(contexts):
            rows.append({"metric": "kl_context", "value": by_context[window, index].item(), "window": window,
                         "context": context})
    return rows


def run_variants(model: nn.Module, variants: Sequence[Variant], reference: DenseReference,
                 table: ResultsTable, *, model_name: str, protocol: dict, snapshot: ModelSnapshot,
                 edges: Sequence[int], contexts: Sequence[int], tokenizer=None,
                 calibration_ids: torch.Tensor | None = None, device=None,
                 report_rows: Callable[[Variant, CompressionReport | None], list[dict]] | None = None,
                 run: str | None = None, log=print) -> dict[str, CompressionReport | None]:
    """Compress, evaluate against `reference` and record each variant; skip those already recorded.

    The model is restored from `snapshot` before each variant and left dense at the end. All rows of
    a variant are written together once it is measured, tagged with its key (so a re-run skips it)
    and an `attempt` id. `report_rows(variant, report)` may add rows (e.g. effective bits per weight,
    per-layer maps). Returns the compression reports of the variants run now.
    """
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must be unique (they name the curves); got {labels}.")
    reports = {}
    for variant in variants:
        key = variant_key(variant, model_name, protocol)
        if table.done(key):
            log(f"{variant.label}: already recorded, skipped")
            continue
        snapshot.restore(model)
        started = time.perf_counter()
        report = None
        if variant.recipe is not None:
            report = compress_model(model, variant.recipe, tokenizer=tokenizer, calibration_ids=calibration_ids,
                                    device=device, progress=False)
        compress_seconds = time.perf_counter() - started
        context = variant.during_evaluation(model) if variant.during_evaluation else contextlib.nullcontext()
        with context:
            result = evaluate(model, reference.windows, reference, progress=False)
        evaluate_seconds = time.perf_counter() - started - compress_seconds
        rows = variant_records(result.kl, result.nll, edges=edges, contexts=contexts)
        rows.append({"metric": "seconds_compress", "value": compress_seconds})
        rows.append({"metric": "seconds_evaluate", "value": evaluate_seconds})
        if report is not None:
            rows.append({"metric": "achieved_sparsity", "value": report.achieved_sparsity})
        if report_rows is not None:
            rows.extend(report_rows(variant, report))
        attempt = uuid.uuid4().hex[:12]
        common = {"model": model_name, "method": variant.method, "settings": variant.record_settings(),
                  "dataset": protocol.get("dataset"), "protocol": protocol, "key": key, "label": variant.label,
                  "family": variant.family, "attempt": attempt, "run": run}
        for row in rows:
            table.append(**{**common, **row})
        reports[variant.label] = report
        log(f"{variant.label}: perplexity {rows[0]['value']:.3f}, mean KL {rows[1]['value']:.4g} "
            f"(compress {compress_seconds:.0f} s, evaluate {evaluate_seconds:.0f} s)")
    snapshot.restore(model)
    return reports


def recorded_frame(table: ResultsTable, model_name: str, protocol: dict, labels: Iterable[str] | None = None):
    """The table's rows for this model and protocol: one attempt per variant (the latest), as a DataFrame."""
    import pandas as pd

    records = [r for r in table.records() if r.get("model") == model_name and r.get("protocol") == protocol
               and r.get("attempt")]
    if labels is not None:
        wanted = set(labels)
        records = [r for r in records if r.get("label") in wanted]
    if not records:
        return pd.DataFrame()
    latest = {}
    for record in records:  # file order is time order: the last attempt of a key wins
        latest[record["key"]] = record["attempt"]
    records = [r for r in records if latest[r["key"]] == r["attempt"]]
    return pd.json_normalize(records)


def variant_from_spec(spec: dict, calibration=None) -> Variant:
    """A Variant from a plain notebook parameter such as {"method": "wanda", "sparsity": 0.5} or
    {"method": "gptq", "bits": 3, "group_size": 128} (weight-only methods of helpers.compression.compress).

    Pruning methods take `sparsity` (and optionally `pattern`); quantization methods take `bits`,
    `group_size` (None: per output channel) and `symmetric`. The label names every setting given.
    """
    from ..compression.compress import METHODS
    from ..compression.quantizer import QuantSettings

    spec = dict(spec)
    method = spec.pop("method", None)
    if method not in METHODS:
        raise ValueError(f"method spec {spec!r} has method={method!r}; expected one of {sorted(METHODS)}.")
    extra = {k: spec.pop(k) for k in ("label", "family") if k in spec}
    if METHODS[method].needs_quant:
        unknown = set(spec) - {"bits", "group_size", "symmetric"}
        if unknown or "bits" not in spec:
            raise ValueError(f"{method} spec {spec!r}: expected keys bits (required), group_size, symmetric; "
                             f"got unknown {sorted(unknown)}.")
        quant = QuantSettings(bits=int(spec["bits"]), group_size=spec.get("group_size"),
                              symmetric=bool(spec.get("symmetric", False)))
        recipe = Recipe(method=method, quant=quant, **({"calibration": calibration} if calibration else {}))
        grid = f"g{quant.group_size}" if quant.group_size else "per-channel"
        label = f"{method.upper()} {quant.bits}-bit {grid}"
        family = "quantization"
    else:
        unknown = set(spec) - {"sparsity", "pattern"}
        if unknown or "sparsity" not in spec:
            raise ValueError(f"{method} spec {spec!r}: expected keys sparsity (required) and pattern; "
                             f"got unknown {sorted(unknown)}.")
        recipe = Recipe(method=method, sparsity=float(spec["sparsity"]), pattern=spec.get("pattern", "unstructured"),
                        **({"calibration": calibration} if calibration else {}))
        pattern = "" if recipe.pattern == "unstructured" else f" {recipe.pattern}"
        label = f"{method} {recipe.sparsity:.0%}{pattern}"
        family = "pruning"
    return Variant(extra.get("label", label), recipe, family=extra.get("family", family))


def activation_variant(spec: dict, calibration=None) -> Variant:
    """A Variant that fake-quantizes activations and/or the KV cache while it is evaluated
    (helpers.compression.activations), optionally on top of round-to-nearest weights:

        {"weight_bits": 4, "activation_bits": 8}   # W4A8: per-channel RTN weights, per-token 8-bit inputs
        {"kv_bits": 4}                             # KV4: keys and values per (token, head), weights dense
    Optional keys: weight_group_size (None: per output channel), label, kv_granularity.
    """
    from ..compression.activations import ActivationSettings, KVSettings, quantize_activations, quantize_kv_cache
    from ..compression.quantizer import QuantSettings

    spec = dict(spec)
    known = {"weight_bits", "weight_group_size", "activation_bits", "kv_bits", "kv_granularity", "label"}
    if set(spec) - known or not ({"activation_bits", "kv_bits"} & set(spec)):
        raise ValueError(f"activation spec {spec!r}: expected activation_bits and/or kv_bits, optionally "
                         f"weight_bits, weight_group_size, kv_granularity, label; unknown {sorted(set(spec) - known)}.")
    recipe, parts, settings = None, [], {}
    if spec.get("weight_bits"):
        quant = QuantSettings(bits=int(spec["weight_bits"]), group_size=spec.get("weight_group_size"))
        recipe = Recipe(method="rtn", quant=quant, **({"calibration": calibration} if calibration else {}))
        parts.append(f"W{quant.bits}")
    activation = kv = None
    if spec.get("activation_bits"):
        activation = ActivationSettings(bits=int(spec["activation_bits"]))
        settings["activations"] = activation.as_dict()
        parts.append(f"A{activation.bits}")
    if spec.get("kv_bits"):
        kv = KVSettings(bits=int(spec["kv_bits"]), granularity=spec.get("kv_granularity", "per_token_head"))
        settings["kv_cache"] = kv.as_dict()
        parts.append(f"KV{kv.bits}")
    settings["method"] = "+".join(parts)

    def during_evaluation(model):
        stack = contextlib.ExitStack()
        if activation is not None:
            stack.enter_context(quantize_activations(model, activation))
        if kv is not None:
            stack.enter_context(quantize_kv_cache(model, kv))
        return stack

    return Variant(spec.get("label", "".join(parts)), recipe, during_evaluation, settings, family="activations")


def protection_variant(*, method: str = "rtn", bits: int, group_size: int | None, protect_fraction: float,
                       protect_rule: str = "magnitude", protect_bits: int = 8, protect_group_size: int | None = None,
                       calibration=None) -> Variant:
    """A weight-quantization Variant that keeps `protect_fraction` of the weight groups at `protect_bits`
    (helpers.compression.protect, arXiv 2406.06773's fix). The plain settings are also recorded flat in
    `settings` so tables can group by them."""
    from ..compression.quantizer import QuantSettings

    if method not in ("rtn", "gptq"):
        raise ValueError(f"method={method!r}; protected groups are supported for 'rtn' and 'gptq'.")
    quant = QuantSettings(bits=int(bits), group_size=group_size, protect_fraction=float(protect_fraction),
                          protect_rule=protect_rule, protect_bits=int(protect_bits),
                          protect_group_size=protect_group_size)
    recipe = Recipe(method=method, quant=quant, **({"calibration": calibration} if calibration else {}))
    grid = f"g{group_size}" if group_size else "per-channel"
    label = f"{method.upper()} {bits}-bit {grid}"
    if quant.protects:
        label += f" + {protect_fraction:.1%} {protect_rule}@{protect_bits}"
    settings = {"bits": quant.bits, "group_size": group_size, "protect_fraction": quant.protect_fraction,
                "protect_rule": protect_rule if quant.protects else "none", "protect_bits": quant.protect_bits,
                "protection_group_size": quant.protection_group_size}
    return Variant(label, recipe, settings=settings, family="quantization")


def protection_rows(report: CompressionReport | None, *, layer_maps: bool = False) -> list[dict]:
    """Rows from a quantization report: effective bits per weight of the model and, with `layer_maps`,
    per layer the number of protected groups and how concentrated they are in input columns
    (share of the protected groups that lie in the single most-protected column of groups)."""
    from ..compression.protect import model_effective_bits, protection_maps

    if report is None:
        return []
    rows = [{"metric": "effective_bits", "value": model_effective_bits(report.layers)}]
    if layer_maps:
        for name, protected in protection_maps(report.layers).items():
            per_column = protected.sum(dim=0).double()
            total = float(per_column.sum())
            rows.append({"metric": "protected_groups", "value": total, "layer": name})
            if total:
                rows.append({"metric": "protected_column_share", "value": float(per_column.max()) / total,
                             "layer": name, "column_groups": int(per_column.numel())})
    return rows
