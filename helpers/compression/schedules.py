"""Layer-wise sparsity schedules: uniform, OWL, and a Hessian-based scheduler (arXiv 2409.20094).

A schedule gives every compressed linear (helpers.models.compressed_linears) its own sparsity, with
the parameter-weighted mean equal to the target and every value inside [minimum, maximum]:

    sum_l n_l * s_l / sum_l n_l = target,     minimum <= s_l <= maximum.

Every scheduler produces raw per-layer preferences p_l and `solve_shift` finds the one shift c with
weighted_mean(clip(p_l + c, minimum, maximum)) = target (bisection: the mean is continuous and
non-decreasing in c).

The Hessian scheduler (a reconstruction: the paper's code is not public):
1. ONE observe-only pass over the dense model collects each linear's Hessian H = 2/N sum x x^T
   (`collect_dense_hessians`; the "sequentially pruning all" assumption: the inputs of every layer
   are taken from the dense model, so all Hessians can be computed before anything is pruned).
2. Per layer, the OBS pruning-error estimate at a probe sparsity (`pruning_error_estimate`):
   E_l = 1/2 * sum over the weights SparseGPT's first-pass mask prunes of w^2 / U_qq^2, with U the
   upper Cholesky factor of the damped H^-1 and the mask the lowest w^2 / U_qq^2 pooled over each
   block of 128 columns (no weight updates: the mask is chosen on the dense weights).
3. log10(E_l) (optionally of E_l / n_l) is clustered into K levels (1-D k-means or equal-width bins,
   or one level per occupied decade: floor(log10 E_l));
   level k (0 = lowest error) gets the raw sparsity target + spread - 2 * spread * k / (K - 1): the
   layers with the largest estimated error are pruned least. Then the shift is solved with bounds
   [target - spread, target + spread].
4. The same stored Hessians prune the model (`compress_with_hessians`): no second statistics pass.

OWL (Yin et al. 2023): per decoder block the outlier ratio of the Wanda scores A = |W| * ||X_j||
over all its linears, LOD = mean[A > M * mean(A)]; mapped linearly to [target - lambda, target +
lambda], more outliers -> less sparsity, then shifted (unclipped, as OWL does) to the mean: the
range stays 2 lambda wide but may sit off-centre, within target +- 2 lambda. ||X_j|| is sqrt(diag H) up to a
constant factor that cancels in the ratio, so OWL reuses the same Hessian pass.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

import torch
from torch import nn

from .compress import METHODS, CompressionReport, OBSMethod, Recipe, compress_model
from .engine import run_layerwise
from ..models import compressed_linears, linear_weight
from .obs import inverse_cholesky, prepare_hessian
from .quantizer import QuantSettings
from .stats import HessianCollector
from .storage import sparsity_report


# --------------------------------------------------------------------------- the mean constraint
def weighted_mean(values: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    total = sum(sizes[name] for name in values)
    return sum(values[name] * sizes[name] for name in values) / total


def _check_target(target: float, minimum: float, maximum: float) -> None:
    if not 0.0 <= minimum <= maximum <= 1.0:
        raise ValueError(f"bounds minimum={minimum!r}, maximum={maximum!r}; expected 0 <= minimum <= maximum <= 1.")
    if not minimum <= target <= maximum:
        raise ValueError(f"target sparsity {target!r} lies outside the bounds [{minimum}, {maximum}]; no schedule "
                         "can have that mean. Widen the bounds or change the target.")


def solve_shift(preferences: Mapping[str, float], sizes: Mapping[str, int], target: float, minimum: float,
                maximum: float, *, tolerance: float = 1e-9, iterations: int = 200) -> dict[str, float]:
    """clip(p_l + c, minimum, maximum) for the shift c that makes the size-weighted mean equal `target`."""
    _check_target(target, minimum, maximum)
    missing = set(preferences) - set(sizes)
    if missing:
        raise ValueError(f"no size given for layers {sorted(missing)[:3]}; pass the parameter count of every layer.")

    def mean_at(shift: float) -> float:
        return weighted_mean({n: min(max(p + shift, minimum), maximum) for n, p in preferences.items()}, sizes)

    low = minimum - max(preferences.values())   # every layer clipped to minimum: mean = minimum <= target
    high = maximum - min(preferences.values())  # every layer clipped to maximum: mean = maximum >= target
    for _ in range(iterations):
        middle = (low + high) / 2
        if mean_at(middle) < target:
            low = middle
        else:
            high = middle
        if high - low < tolerance:
            break
    shift = (low + high) / 2
    schedule = {n: min(max(p + shift, minimum), maximum) for n, p in preferences.items()}
    check_schedule(schedule, sizes, target, minimum, maximum)
    return schedule


def check_schedule(schedule: Mapping[str, float], sizes: Mapping[str, int], target: float, minimum: float = 0.0,
                   maximum: float = 1.0, *, tolerance: float = 1e-6) -> None:
    """Raise if the weighted mean is not `target` or a value leaves [minimum, maximum]."""
    outside = {n: s for n, s in schedule.items() if not minimum - 1e-12 <= s <= maximum + 1e-12}
    if outside:
        name, value = next(iter(outside.items()))
        raise ValueError(f"{len(outside)} layer sparsities lie outside [{minimum}, {maximum}], e.g. {name}={value}.")
    mean = weighted_mean(schedule, sizes)
    if abs(mean - target) > tolerance:
        raise ValueError(f"the schedule's parameter-weighted mean sparsity is {mean:.6f}, expected {target}; "
                         "solve the shift with solve_shift().")


# --------------------------------------------------------------------------- schedules
@dataclass
class Schedule:
    """Per-layer sparsities, what they were computed from, and how long that took."""
    name: str
    target: float
    sparsity: dict[str, float]
    sizes: dict[str, int]
    settings: dict = field(default_factory=dict)
    inputs: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> {error, level, ...}
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return weighted_mean(self.sparsity, self.sizes)

    def recipe(self, method: str = "sparsegpt", quant: QuantSettings | None = None, **fields) -> Recipe:
        return Recipe(method=method, sparsity=dict(self.sparsity), quant=quant, **fields)

    def records(self) -> list[dict]:
        """One tidy row per layer: name, block, kind (q_proj, ...), size, sparsity and the inputs."""
        rows = []
        for name, sparsity in self.sparsity.items():
            rows.append({"schedule": self.name, "target": self.target, "layer": name, "block": block_index(name),
                         "kind": layer_kind(name), "size": self.sizes[name], "sparsity": sparsity,
                         **self.inputs.get(name, {})})
        return rows


def block_index(name: str) -> int:
    """The decoder block of a compressed linear's name, e.g. 'model.layers.3.mlp.up_proj' -> 3."""
    numbers = [int(part) for part in name.split(".") if part.isdigit()]
    if not numbers:
        raise ValueError(f"layer name {name!r} holds no block index; expected a name from compressed_linears().")
    return numbers[0]


def layer_kind(name: str) -> str:
    """The kind of a compressed linear from its name, e.g. 'model.layers.3.mlp.up_proj' -> 'up_proj'."""
    return name.rsplit(".", 1)[-1]


def layer_sizes(model: nn.Module) -> dict[str, int]:
    return {name: linear_weight(m).numel() for name, m in compressed_linears(model).items()}


def uniform_schedule(sizes: Mapping[str, int], target: float) -> Schedule:
    _check_target(target, 0.0, 1.0)
    return Schedule("uniform", target, {n: float(target) for n in sizes}, dict(sizes))


@dataclass(frozen=True)
class KindProbe:
    """One layer kind (the last part of a linear's name: q_proj, ..., down_proj) pruned `extra` more than the rest."""
    kind: str
    extra: float = 0.1

    def __post_init__(self):
        if not self.kind or not 0 < self.extra < 1:
            raise ValueError(f"{self!r}: expected a layer kind such as 'down_proj' and 0 < extra < 1.")


def kind_schedule(sizes: Mapping[str, int], target: float, probe: KindProbe) -> Schedule:
    """Uniform at `target` except the layers of `probe.kind`, at target + probe.extra: what pruning one layer
    kind more costs with the rest unchanged (the mean rises by extra x the kind's share of the weights)."""
    _check_target(target + probe.extra, 0.0, 1.0)
    chosen = [n for n in sizes if layer_kind(n) == probe.kind]
    if not chosen:
        kinds = sorted({layer_kind(n) for n in sizes})
        raise ValueError(f"no compressed linear of kind {probe.kind!r}; this model has {kinds}.")
    sparsity = {n: float(target) + (probe.extra if n in chosen else 0.0) for n in sizes}
    return Schedule("kind", target, sparsity, dict(sizes), asdict(probe),
                    {n: {"probed": n in chosen} for n in sizes})


def _bounds(target: float, spread: float) -> tuple[float, float]:
    return max(0.0, target - spread), min(1.0, target + spread)


@dataclass(frozen=True)
class OWLSettings:
    outlier_multiplier: float = 5.0  # M: a score is an outlier above M * mean of its block's scores
    spread: float = 0.08             # lambda: sparsities lie in [target - lambda, target + lambda]

    def __post_init__(self):
        if self.outlier_multiplier <= 0 or not 0 <= self.spread < 1:
            raise ValueError(f"OWLSettings({self.outlier_multiplier!r}, {self.spread!r}); expected a positive "
                             "outlier_multiplier (5 in the paper) and 0 <= spread < 1 (0.08 for LLaMA).")


def outlier_ratio(scores: torch.Tensor, multiplier: float = 5.0) -> float:
    """Fraction of `scores` larger than `multiplier` times their mean (OWL's layer outlier distribution)."""
    scores = scores.float().reshape(-1)
    return float((scores > multiplier * scores.mean()).float().mean())


def block_outlier_ratios(model: nn.Module, hessians: Mapping[str, torch.Tensor], multiplier: float = 5.0) -> dict[int, float]:
    """Per decoder block: OWL's outlier ratio of the Wanda scores |W| * sqrt(diag H) of all its linears."""
    by_block: dict[int, list[torch.Tensor]] = {}
    for name, linear in compressed_linears(model).items():
        norms = torch.diag(hessians[name]).clamp_min(0).sqrt().to(linear.weight.device)
        by_block.setdefault(block_index(name), []).append(
            (linear_weight(linear).detach().abs().float() * norms[None, :]).reshape(-1).cpu())
    return {block: outlier_ratio(torch.cat(parts), multiplier) for block, parts in sorted(by_block.items())}


def owl_schedule(ratios: Mapping[int, float], sizes: Mapping[str, int], target: float,
                 settings: OWLSettings = OWLSettings()) -> Schedule:
    """Blocks with more outliers get lower sparsity: linear map of the ratios onto [target +- spread]."""
    start = time.perf_counter()
    low, high = min(ratios.values()), max(ratios.values())
    width = high - low
    block_preference = {b: target + settings.spread - (2 * settings.spread * (r - low) / width if width > 0 else settings.spread)
                        for b, r in ratios.items()}
    preferences = {n: block_preference[block_index(n)] for n in sizes}
    # OWL shifts the mapped values without clipping, so they stay within target +- 2 lambda: with
    # those bounds the clipped shift below never clips (except at 0 and 1) and equals OWL's.
    minimum, maximum = _bounds(target, 2 * settings.spread)
    sparsity = solve_shift(preferences, sizes, target, minimum, maximum)
    inputs = {n: {"outlier_ratio": ratios[block_index(n)]} for n in sizes}
    return Schedule("owl", target, sparsity, dict(sizes), asdict(settings), inputs, time.perf_counter() - start)


# --------------------------------------------------------------------------- the Hessian scheduler
@torch.no_grad()
def inverse_cholesky_diagonal(hessian: torch.Tensor, damping: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """diag(U) of SparseGPT's U = chol(damped H^-1, upper), and the dead-input mask (H_jj = 0)."""
    dead = torch.diag(hessian) == 0
    H, _, _ = prepare_hessian(hessian, torch.zeros(1, hessian.shape[0], device=hessian.device))
    U, _, _ = inverse_cholesky(H, damping)
    return torch.diag(U), dead


@torch.no_grad()
def probe_mask(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *, damping: float = 0.01,
               block_size: int = 128, factor: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's unstructured mask on the dense weight (no updates) and the scores w^2 / U_qq^2.

    factor: inverse_cholesky_diagonal(hessian) when already computed (layers sharing a Hessian)."""
    diagonal, dead = factor if factor is not None else inverse_cholesky_diagonal(hessian, damping)
    W = weight.float().clone()
    W[:, dead] = 0
    score = W.square() / diagonal.square()[None, :]
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, W.shape[1], block_size):
        block = score[:, i1:i1 + block_size]
        k = int(block.numel() * sparsity)
        if k:
            flat = torch.zeros(block.numel(), dtype=torch.bool, device=W.device)
            flat[torch.topk(block.reshape(-1), k, largest=False).indices] = True
            mask[:, i1:i1 + block_size] = flat.view_as(block)
    return mask, score


def pruning_error_estimate(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *, damping: float = 0.01,
                           block_size: int = 128, factor: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """E = 1/2 * sum of w^2 / U_qq^2 over the weights SparseGPT's mask prunes at `sparsity` (no updates)."""
    mask, score = probe_mask(weight, hessian, sparsity, damping=damping, block_size=block_size, factor=factor)
    return float(score[mask].double().sum() / 2)


def kmeans_1d(values: Sequence[float], clusters: int, iterations: int = 100) -> list[int]:
    """Lloyd's k-means on a line, started at evenly spaced quantiles; labels ordered by centre (0 = lowest)."""
    x = torch.tensor(list(values), dtype=torch.float64, device="cpu")  # host-side: a few numbers per layer
    clusters = min(clusters, int(x.unique().numel()))
    centres = torch.quantile(x, torch.linspace(0, 1, clusters, dtype=torch.float64, device="cpu"))
    labels = None
    for _ in range(iterations):
        new = (x[:, None] - centres[None, :]).abs().argmin(dim=1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        for k in range(clusters):
            if (labels == k).any():
                centres[k] = x[labels == k].mean()
    rank = torch.argsort(torch.argsort(centres))
    return rank[labels].tolist()


CLUSTERINGS = ("kmeans", "binning", "decades")


def cluster_levels(values: Sequence[float], levels: int, method: str = "kmeans") -> list[int]:
    """Levels of 1-D log10 values (0 = lowest): k-means into `levels` clusters, `levels` equal-width bins
    between min and max, or "decades": one level per occupied power of ten (floor(value) - floor(min),
    renumbered so the occupied decades are 0, 1, ... in order; `levels` is not used)."""
    if levels < 1:
        raise ValueError(f"levels={levels!r}; expected a positive number of clusters.")
    if method == "kmeans":
        return kmeans_1d(values, levels)
    if method == "binning":
        low, high = min(values), max(values)
        width = (high - low) / levels
        return [min(int((v - low) / width), levels - 1) if width > 0 else 0 for v in values]
    if method == "decades":
        decades = [math.floor(v) for v in values]
        rank = {d: k for k, d in enumerate(sorted(set(decades)))}
        return [rank[d] for d in decades]
    raise ValueError(f"clustering method {method!r}; expected one of {CLUSTERINGS}.")


@dataclass(frozen=True)
class HessianSchedulerSettings:
    spread: float = 0.08                # delta: sparsities lie in [target - delta, target + delta]
    levels: int = 4                     # K clusters of log10(error)
    clustering: str = "kmeans"          # kmeans | binning (equal-width bins) | decades (floor of log10 error)
    probe_sparsity: float | None = None  # sparsity of the mask the error is estimated at (None: the target)
    normalize_by_size: bool = False     # cluster log10(E_l / n_l) instead of log10(E_l)
    damping: float = 0.01
    block_size: int = 128

    def __post_init__(self):
        if not 0 <= self.spread < 1 or self.levels < 1 or self.clustering not in CLUSTERINGS:
            raise ValueError(f"{self!r}: expected 0 <= spread < 1, levels >= 1, clustering one of {CLUSTERINGS}.")
        if self.probe_sparsity is not None and not 0 < self.probe_sparsity < 1:
            raise ValueError(f"probe_sparsity={self.probe_sparsity!r}; expected a fraction in (0, 1) or None.")


def scheduler_overrides(label: str) -> dict:
    """HessianSchedulerSettings fields from a short label (notebook and CLI ablations): "levels K",
    "kmeans" | "binning" | "decades", "per weight" (cluster E_l / n_l), "probe p", "spread d" ("=" may
    stand for the space)."""
    text = label.strip()
    if text in CLUSTERINGS:
        return {"clustering": text}
    if text == "per weight":
        return {"normalize_by_size": True}
    name, _, value = text.replace("=", " ").partition(" ")
    value = value.strip()
    fields = {"levels": ("levels", int), "probe": ("probe_sparsity", float), "spread": ("spread", float)}
    if name not in fields or not value:
        raise ValueError(f"scheduler ablation {label!r}; expected 'levels K', one of {CLUSTERINGS}, 'per weight', "
                         "'probe p' or 'spread d'.")
    field_name, kind = fields[name]
    try:
        overrides = {field_name: kind(value)}
    except ValueError:
        raise ValueError(f"scheduler ablation {label!r}: {value!r} is not a valid {name}.") from None
    HessianSchedulerSettings(**overrides)  # raises on values out of range
    return overrides


def layer_errors(model: nn.Module, hessians: Mapping[str, torch.Tensor], probe_sparsity: float, *,
                 damping: float = 0.01, block_size: int = 128) -> dict[str, float]:
    """pruning_error_estimate of every compressed linear at `probe_sparsity`, from stored Hessians.

    One factorization per distinct Hessian tensor (q/k/v and gate/up share theirs)."""
    errors, factors = {}, {}
    for name, linear in compressed_linears(model).items():
        weight = linear_weight(linear).detach()
        key = id(hessians[name])
        if key not in factors:
            factors = {key: inverse_cholesky_diagonal(hessians[name].to(weight.device), damping)}  # keep one
        errors[name] = pruning_error_estimate(weight, hessians[name], probe_sparsity, damping=damping,
                                              block_size=block_size, factor=factors[key])
    return errors


def hessian_schedule(errors: Mapping[str, float], sizes: Mapping[str, int], target: float,
                     settings: HessianSchedulerSettings = HessianSchedulerSettings(), *,
                     estimate_seconds: float = 0.0) -> Schedule:
    """Cluster log10 errors into levels; higher-error levels get lower sparsity; solve the shift."""
    start = time.perf_counter()
    names = list(sizes)
    tiny = min((e for e in errors.values() if e > 0), default=1e-30)
    scaled = {n: max(errors[n], tiny) / (sizes[n] if settings.normalize_by_size else 1) for n in names}
    logs = [math.log10(scaled[n]) for n in names]
    levels = cluster_levels(logs, settings.levels, settings.clustering)
    # k-means / bins: K levels span the spread; decades: as many levels as occupied decades
    top = max((max(levels) if settings.clustering == "decades" else settings.levels - 1), 1)
    preferences = {n: target + settings.spread - 2 * settings.spread * level / top for n, level in zip(names, levels)}
    minimum, maximum = _bounds(target, settings.spread)
    sparsity = solve_shift(preferences, sizes, target, minimum, maximum)
    inputs = {n: {"error": errors[n], "log10_error": log, "level": level}
              for n, log, level in zip(names, logs, levels)}
    recorded = {**asdict(settings), "probe_sparsity": settings.probe_sparsity if settings.probe_sparsity else target}
    return Schedule("hessian", target, sparsity, dict(sizes), recorded, inputs,
                    estimate_seconds + time.perf_counter() - start)


# --------------------------------------------------------------------------- one statistics pass, reused
class HessianStore:
    """Observe-only engine method: keeps every linear's Hessian (on `storage`) and changes nothing.

    Linears fed the same input (q/k/v, gate/up) share one collector in the engine (`SharedInputs`); their
    Hessian is stored once and shared.
    """
    modifies_weights = False

    def __init__(self, storage: str | torch.device = "cpu"):
        self.storage = storage
        self.hessians: dict[str, torch.Tensor] = {}
        self._last: tuple[object, torch.Tensor] | None = None  # (collector, its stored Hessian)

    def collector(self, name, linear):
        return HessianCollector(linear_weight(linear).shape[1], device=linear.weight.device)

    def compress(self, name, linear, collector):
        if self._last is None or self._last[0] is not collector:  # sharers are compressed one after another
            self._last = (collector, collector.hessian().to(self.storage))
        self.hessians[name] = self._last[1]
        return {"calibration_tokens": collector.tokens}


@dataclass
class DenseHessians:
    hessians: dict[str, torch.Tensor]
    tokens: int
    seconds: float

    def nbytes(self) -> int:
        unique = {id(h): h for h in self.hessians.values()}
        return sum(h.numel() * h.element_size() for h in unique.values())


def collect_dense_hessians(model: nn.Module, calibration_ids: torch.Tensor, *, device=None, batch_size: int = 8,
                           storage: str | torch.device = "cpu", progress: bool = False) -> DenseHessians:
    """ONE sequential observe-only pass over the dense model; every block sees dense inputs."""
    start = time.perf_counter()
    store = HessianStore(storage)
    report = run_layerwise(model, calibration_ids, store, device=device, batch_size=batch_size, progress=progress)
    tokens = next(iter(report.layers.values()))["calibration_tokens"] if report.layers else 0
    return DenseHessians(store.hessians, tokens, time.perf_counter() - start)


class _StoredHessian:
    def __init__(self, hessian: torch.Tensor):
        self._hessian = hessian

    def hessian(self) -> torch.Tensor:
        return self._hessian


@torch.no_grad()
def compress_with_hessians(model: nn.Module, recipe: Recipe, hessians: Mapping[str, torch.Tensor]) -> CompressionReport:
    """Prune/quantize every compressed linear with SparseGPT or GPTQ from precomputed Hessians.

    Same per-layer computation as compress_model, but no calibration forward pass: the Hessians are
    those of the dense model (collect_dense_hessians), so this equals run_layerwise with
    propagate_compressed=False.
    """
    start = time.perf_counter()
    method = METHODS[recipe.method](recipe)
    if not isinstance(method, OBSMethod):
        raise ValueError(f"method {recipe.method!r} does not use Hessians; expected 'sparsegpt' or 'gptq'.")
    linears = compressed_linears(model)
    missing = set(linears) - set(hessians)
    if missing:
        raise ValueError(f"no stored Hessian for {len(missing)} layers, e.g. {sorted(missing)[:3]}; collect them "
                         "with collect_dense_hessians() on this model.")
    layers = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, linear in linears.items():
            layers[name] = method.compress(name, linear, _StoredHessian(hessians[name].to(linear.weight.device)))
    return CompressionReport(recipe=recipe.as_dict(), layers=layers, achieved_sparsity=sparsity_report(model)["total"],
                             seconds=time.perf_counter() - start, warnings=[str(w.message) for w in caught])


# --------------------------------------------------------------------------- schedule, then compress
SCHEDULES = ("uniform", "owl", "hessian", "kind")
SCHEDULE_INPUTS = ("compressed", "dense")


@torch.no_grad()
def scheduled_compress(model: nn.Module, recipe: Recipe, schedule: str, calibration_ids: torch.Tensor, *,
                       owl: OWLSettings = OWLSettings(), hessian: HessianSchedulerSettings = HessianSchedulerSettings(),
                       probe: KindProbe | None = None, inputs: str = "compressed", device=None,
                       batch_size: int = 8) -> tuple[CompressionReport, Schedule]:
    """Per-layer sparsities from one observe-only pass over the (dense) model, then compression with them:
    inputs="compressed", the standard sequential pass (inputs propagate through compressed blocks, as
    SparseGPT and OWL do); inputs="dense", every layer pruned from the dense model's stored Hessians
    (compress_with_hessians: the Hessian scheduler paper's assumption; SparseGPT / GPTQ only).
    recipe.sparsity is the target mean (for "kind", the sparsity of every layer but `probe`'s kind); the report's
    timings gain the scheduling seconds (the observe-only pass included; that pass alone: seconds_observe) and its
    `schedule` the per-layer inputs of the plan (a uniform plan from dense Hessians gets the error estimate at the
    target, to be compared with the error SparseGPT then makes)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}.")
    if inputs not in SCHEDULE_INPUTS:
        raise ValueError(f"inputs={inputs!r}; expected one of {SCHEDULE_INPUTS}.")
    if (schedule == "kind") != (probe is not None):
        raise ValueError(f"schedule={schedule!r} with probe={probe!r}: a KindProbe goes with the 'kind' schedule only.")
    if isinstance(recipe.sparsity, Mapping) or recipe.parsed_pattern.structured or not METHODS[recipe.method].prunes:
        raise ValueError(f"a {schedule} schedule spreads one unstructured target sparsity over the layers; "
                         f"got method={recipe.method!r}, sparsity={recipe.sparsity!r}, pattern={recipe.pattern!r}.")
    sizes = layer_sizes(model)
    target = float(recipe.sparsity)
    start = time.perf_counter()
    stats = None
    if schedule == "uniform":
        plan = uniform_schedule(sizes, target)
    elif schedule == "kind":
        plan = kind_schedule(sizes, target, probe)
    observe = 0.0
    if schedule in ("owl", "hessian") or inputs == "dense":
        stats = collect_dense_hessians(model, calibration_ids, device=device, batch_size=batch_size)
        observe = time.perf_counter() - start
        if schedule == "owl":
            plan = owl_schedule(block_outlier_ratios(model, stats.hessians, owl.outlier_multiplier), sizes, target, owl)
        elif schedule == "hessian":
            errors = layer_errors(model, stats.hessians, hessian.probe_sparsity or target, damping=hessian.damping,
                                  block_size=hessian.block_size)
            plan = hessian_schedule(errors, sizes, target, hessian)
    seconds = time.perf_counter() - start
    if schedule == "uniform" and inputs == "dense":  # the estimate at the pruned sparsity, beside the error SparseGPT
        plan.inputs = {n: {"error": e} for n, e in layer_errors(model, stats.hessians, target).items()}  # will make
    scheduled = replace(recipe, sparsity=dict(plan.sparsity))
    if inputs == "dense":
        report = compress_with_hessians(model, scheduled, stats.hessians)
    else:
        report = compress_model(model, scheduled, calibration_ids=calibration_ids, device=device,
                                batch_size=batch_size, progress=False)
    del stats
    report.timings["seconds_schedule"] = seconds
    report.timings["seconds_observe"] = observe  # the observe-only pass alone (inside seconds_schedule)
    report.schedule = {name: {**plan.inputs.get(name, {}), "sparsity": value} for name, value in plan.sparsity.items()}
    return report, plan
