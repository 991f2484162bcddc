"""Protected outlier groups (arXiv 2406.06773) and what quantized weights would cost to store.

A weight group is `g = settings.protection_group_size` consecutive input weights of one output row,
so a [rows, columns] matrix has rows * columns / g groups. A fraction p of them (exactly
round(p * n_groups) per matrix, chosen over the whole matrix) is kept at `protect_bits` while the
rest is quantized at `bits` (RTN or GPTQ: helpers.compression.quantizer.rtn / GridQuantizer take the map).

Selection rules (`settings.protect_rule`), highest score protected:
    'magnitude': max |w_ij| over the group. The max, not the L2 norm, because the largest |w| is what
                 sets a quantization grid's range, and the rounding error of every weight sharing the
                 grid grows with that range.
    'random':    a uniform random score, seeded per layer (seed, layer name) like random pruning.
    'hessian':   sum over the group of w_ij^2 * H_jj, with H_jj = mean over calibration tokens of
                 x_j^2 (up to a constant factor, which does not change the ranking): the OBS saliency
                 of zeroing the group ignoring off-diagonal terms. Needs calibration inputs.

Storage model behind `effective_bits` (simulated quantization stores nothing; this is the count a
packed format would need):
    - every unprotected weight: one `bits`-bit code; protected weights are stored only once, in the
      high-precision side table (their low-bit slot is skipped);
    - each low-bit grid (one per output channel, or per group of group_size): an fp16 scale (16 bits)
      plus a `bits`-bit zero point when asymmetric (symmetric grids have an implied zero);
    - each protected group: g codes of protect_bits, plus its own fp16 scale and protect_bits zero
      point (asymmetric); at protect_bits = 16 the values are stored as fp16 with no grid;
    - the index saying which groups are protected: the cheaper of a bitmap (1 bit per group of the
      matrix) and a list of ceil(log2(n_groups)) bits per protected group;
    - GPTQ act-order with dynamic groups also needs a per-column group index (ceil(log2(columns /
      group_size)) bits per input column); static groups and RTN do not.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import torch

from .pruning import layer_seed
from .quantizer import QuantSettings


def group_count(settings: QuantSettings, shape: tuple[int, int]) -> int:
    rows, columns = shape
    settings.check_columns(columns)
    return rows * columns // settings.protection_group_size


def protected_count(settings: QuantSettings, shape: tuple[int, int]) -> int:
    """round(p * n_groups): the number of groups protected in one [rows, columns] matrix."""
    return int(round(settings.protect_fraction * group_count(settings, shape))) if settings.protects else 0


@torch.no_grad()
def group_scores(weight: torch.Tensor, settings: QuantSettings, *, hessian_diagonal: torch.Tensor | None = None,
                 seed: int = 0, name: str = "") -> torch.Tensor:
    """The selection score of every group, [rows, columns / g] (see the module docstring)."""
    w = weight.float()
    rows, columns = w.shape
    settings.check_columns(columns, name)
    g = settings.protection_group_size
    groups = w.reshape(rows, columns // g, g)
    rule = settings.protect_rule
    if rule == "magnitude":
        return groups.abs().amax(dim=2)
    if rule == "random":
        generator = torch.Generator().manual_seed(layer_seed(seed, name))
        return torch.rand(rows, columns // g, generator=generator).to(w.device)
    if rule == "hessian":
        if hessian_diagonal is None:
            raise ValueError(f"protect_rule='hessian' needs the Hessian diagonal of layer {name or '?'!r} "
                             "(calibration inputs); run it through compress_model with calibration data.")
        diagonal = hessian_diagonal.float().to(w.device)
        if diagonal.shape != (columns,):
            raise ValueError(f"hessian_diagonal has shape {tuple(diagonal.shape)}; expected ({columns},).")
        return (w.square() * diagonal[None, :]).reshape(rows, columns // g, g).sum(dim=2)
    raise ValueError(f"protect_rule={rule!r} is not known.")


@torch.no_grad()
def select_protected_groups(weight: torch.Tensor, settings: QuantSettings, *,
                            hessian_diagonal: torch.Tensor | None = None, seed: int = 0,
                            name: str = "") -> torch.Tensor:
    """Boolean map [rows, columns / g] with exactly round(p * n_groups) True: the top-scoring groups."""
    scores = group_scores(weight, settings, hessian_diagonal=hessian_diagonal, seed=seed, name=name)
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    k = protected_count(settings, tuple(weight.shape))
    if k:
        chosen[torch.topk(scores.reshape(-1), k).indices] = True
    return chosen.view_as(scores)


# --------------------------------------------------------------------------- storage cost
@dataclass(frozen=True)
class StorageBits:
    """Bits a packed format would need for one [rows, columns] matrix, by component."""
    weights: int
    low_codes: int
    low_grids: int
    protected_values: int
    protected_grids: int
    protected_index: int
    group_index: int

    @property
    def total(self) -> int:
        return (self.low_codes + self.low_grids + self.protected_values + self.protected_grids
                + self.protected_index + self.group_index)

    @property
    def per_weight(self) -> float:
        return self.total / self.weights

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "per_weight": self.per_weight}


SCALE_BITS = 16  # fp16 scales


def storage_bits(settings: QuantSettings, shape: tuple[int, int], *, permuted_groups: bool | None = None) -> StorageBits:
    """Count the bits of one quantized matrix under the storage model of the module docstring.

    permuted_groups: whether a per-column group index is stored (GPTQ act-order with dynamic groups);
    None = infer from the settings (act_order and group_size and not static_groups)."""
    rows, columns = shape
    settings.check_columns(columns)
    n = rows * columns
    b = settings.bits
    zero_bits = 0 if settings.symmetric else b
    grids = rows if settings.group_size is None else n // settings.group_size
    k = protected_count(settings, shape)
    g = settings.protection_group_size
    protected_weights = k * g
    if settings.protect_bits == 16:
        protected_values, protected_grids = protected_weights * 16, 0
    else:
        protected_values = protected_weights * settings.protect_bits
        protected_grids = k * (SCALE_BITS + (0 if settings.symmetric else settings.protect_bits))
    index = 0
    if k:
        n_groups = n // g
        index = min(n_groups, k * max(1, math.ceil(math.log2(n_groups))))
    if permuted_groups is None:
        permuted_groups = settings.act_order and settings.group_size is not None and not settings.static_groups
    group_index = 0
    if permuted_groups and settings.group_size is not None and columns // settings.group_size > 1:
        group_index = columns * math.ceil(math.log2(columns // settings.group_size))
    return StorageBits(weights=n, low_codes=(n - protected_weights) * b, low_grids=grids * (SCALE_BITS + zero_bits),
                       protected_values=protected_values, protected_grids=protected_grids,
                       protected_index=index, group_index=group_index)


def effective_bits(settings: QuantSettings, shape: tuple[int, int], *, permuted_groups: bool | None = None) -> float:
    """Bits per weight of one [rows, columns] matrix, everything counted (see storage_bits)."""
    return storage_bits(settings, shape, permuted_groups=permuted_groups).per_weight


def model_effective_bits(layers: Mapping[str, dict]) -> float:
    """Weighted mean bits per weight over a CompressionReport's `layers` (each with 'storage_bits')."""
    total = weights = 0
    for name, info in layers.items():
        if "storage_bits" not in info:
            raise ValueError(f"layer {name!r} has no 'storage_bits' entry; was it quantized (rtn / gptq)?")
        total += info["storage_bits"]["total"]
        weights += info["storage_bits"]["weights"]
    return total / weights


def protection_maps(layers: Mapping[str, dict]) -> dict[str, torch.Tensor]:
    """{layer: boolean [rows, columns / g] map of protected groups} from a CompressionReport's layers."""
    return {name: info["protected_groups"] for name, info in layers.items() if "protected_groups" in info}


# --------------------------------------------------------------------------- used by helpers.compression.compress
def layer_protection(weight: torch.Tensor, settings: QuantSettings, *, hessian_diagonal: torch.Tensor | None = None,
                     seed: int = 0, name: str = "") -> torch.Tensor | None:
    """The protected-group map of one layer, or None when the settings protect nothing."""
    if not settings.protects:
        return None
    return select_protected_groups(weight, settings, hessian_diagonal=hessian_diagonal, seed=seed, name=name)


def quantization_info(settings: QuantSettings, shape: tuple[int, int], protected: torch.Tensor | None, *,
                      permuted_groups: bool) -> dict:
    """Per-layer report entries: bits, storage breakdown, effective bits, protected-group map."""
    storage = storage_bits(settings, shape, permuted_groups=permuted_groups)
    info = {"bits": settings.bits, "storage_bits": storage.as_dict(), "effective_bits": storage.per_weight}
    if protected is not None:
        info["protected_groups"] = protected.detach().cpu()
        info["protected_count"] = int(protected.sum())
    return info
