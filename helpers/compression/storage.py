"""The one storage model: what a compressed decoder linear would cost in a packed format.

Simulated compression stores nothing (weights stay dequantized floats, pruned weights are dense
zeros); every "bits per weight" in this project is counted here, under one convention named by
`STORAGE_CONVENTION` and recorded beside every number that uses it:

    - kept weights that are not quantized: `VALUE_BITS` (16, fp16) each;
    - quantized weights: one `bits`-bit code per kept, unprotected weight;
    - each low-bit grid (one per output row, or per group of `group_size` consecutive input columns
      of a row; a width the group size does not divide ends each row in a partial last group, which
      has its own grid): an fp16 scale plus a `bits`-bit zero point when asymmetric;
    - protected outlier groups (helpers.compression.protect): their `protection_group_size` weights
      at `protect_bits`, each group with its own fp16 scale and zero point (none at 16 bits: fp16
      values), plus the index of which groups are protected: the cheaper of a bitmap (1 bit per
      group) and a list (ceil(log2(groups)) bits per protected group);
    - GPTQ act-order with dynamic groups: a per-column group index (ceil(log2(groups per row)) bits
      per input column); static groups and RTN do not need one;
    - any pruned position (an exact zero left by a pruning method): a 1-bit-per-position bitmap over
      the whole matrix (N:M's 2-bit index per kept weight of 2:4 is the same 1 bit per position);
    - embeddings, norms and the output head are not counted (the same in every variant).

The uncompressed model is counted at `VALUE_BITS`. A method that quantizes must describe its storage
(helpers.compression.compress checks it); nothing is silently counted at 16 bits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

from torch import nn

from ..models import compressed_linears, linear_weight
from .quantizer import QuantSettings

STORAGE_CONVENTION = ("packed-v1: codes + fp16 scale (+ b-bit zero) per grid, partial last groups counted, "
                      "protected groups + index, 1-bit/position sparsity bitmap, fp16 unquantized values; "
                      "decoder linears only")
VALUE_BITS = 16   # unquantized values are stored as fp16
SCALE_BITS = 16   # fp16 scales


@dataclass(frozen=True)
class StorageBits:
    """Bits of one [rows, columns] matrix under the module's convention, by component."""
    weights: int             # positions in the matrix
    values: int              # kept unprotected weights: codes (quantized) or fp16 values
    grids: int               # low-bit grids: scales and zero points
    protected_values: int
    protected_grids: int
    protected_index: int
    group_index: int         # act-order with dynamic groups
    sparse_index: int        # 1 bit per position when anything is pruned

    @property
    def total(self) -> int:
        return (self.values + self.grids + self.protected_values + self.protected_grids + self.protected_index
                + self.group_index + self.sparse_index)

    @property
    def per_weight(self) -> float:
        return self.total / self.weights

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "per_weight": self.per_weight, "convention": STORAGE_CONVENTION}


def groups_per_row(columns: int, group_size: int) -> int:
    """Groups of `group_size` consecutive columns in one row, a partial last group included."""
    return math.ceil(columns / group_size)


def protected_count(settings: QuantSettings, shape: tuple[int, int]) -> int:
    """round(p * n_groups): the number of groups protected in one [rows, columns] matrix."""
    if not settings.protects:
        return 0
    rows, columns = shape
    return int(round(settings.protect_fraction * rows * groups_per_row(columns, settings.protection_group_size)))


def storage_bits(shape: tuple[int, int], quant: QuantSettings | None = None, *, kept: int | None = None,
                 permuted_groups: bool | None = None) -> StorageBits:
    """Count the bits of one matrix: `quant` None for unquantized values, `kept` the number of weights
    not pruned (None: all of them).

    permuted_groups: whether a per-column group index is stored (GPTQ act-order with dynamic
    groups); None = infer from the settings (act_order and group_size and not static_groups)."""
    rows, columns = shape
    n = rows * columns
    kept = n if kept is None else int(kept)
    if not 0 <= kept <= n:
        raise ValueError(f"kept={kept} weights of a {rows} x {columns} matrix; expected 0..{n}.")
    sparse_index = n if kept < n else 0
    if quant is None:
        return StorageBits(weights=n, values=kept * VALUE_BITS, grids=0, protected_values=0, protected_grids=0,
                           protected_index=0, group_index=0, sparse_index=sparse_index)
    b = quant.bits
    zero_bits = 0 if quant.symmetric else b
    grids = rows if quant.group_size is None else rows * groups_per_row(columns, quant.group_size)
    k = protected_count(quant, shape)
    g = quant.protection_group_size
    protected_weights = min(k * g, kept)
    if quant.protect_bits == 16:
        protected_values, protected_grids = protected_weights * 16, 0
    else:
        protected_values = protected_weights * quant.protect_bits
        protected_grids = k * (SCALE_BITS + (0 if quant.symmetric else quant.protect_bits))
    index = 0
    if k:
        n_groups = rows * groups_per_row(columns, g)
        index = min(n_groups, k * max(1, math.ceil(math.log2(n_groups))))
    if permuted_groups is None:
        permuted_groups = quant.act_order and quant.group_size is not None and not quant.static_groups
    group_index = 0
    if permuted_groups and quant.group_size is not None and groups_per_row(columns, quant.group_size) > 1:
        group_index = columns * math.ceil(math.log2(groups_per_row(columns, quant.group_size)))
    return StorageBits(weights=n, values=(kept - protected_weights) * b, grids=grids * (SCALE_BITS + zero_bits),
                       protected_values=protected_values, protected_grids=protected_grids, protected_index=index,
                       group_index=group_index, sparse_index=sparse_index)


def effective_bits(shape: tuple[int, int], quant: QuantSettings | None = None, **kwargs) -> float:
    """Bits per weight of one matrix, everything counted (see storage_bits)."""
    return storage_bits(shape, quant, **kwargs).per_weight


def bits_per_weight(layers: Mapping[str, dict] | None) -> float:
    """Bits per decoder-linear weight of a CompressionReport's `layers` (each with its 'storage');
    None (the uncompressed model): VALUE_BITS."""
    if layers is None:
        return float(VALUE_BITS)
    if not layers:
        raise ValueError("no compressed layers to count; pass a CompressionReport's layers, or None for the "
                         "uncompressed model.")
    total = weights = 0
    for name, info in layers.items():
        if "storage" not in info:
            raise ValueError(f"layer {name!r} has no 'storage' entry: its method did not describe what it stores "
                             "(helpers.compression.storage.storage_bits); fix the method, do not assume 16 bits.")
        total += info["storage"]["total"]
        weights += info["storage"]["weights"]
    return total / weights


def sparsity_report(model: nn.Module) -> dict:
    """Fraction of exact zeros per compressed linear (decoder blocks only) and in total."""
    layers, zeros, total = {}, 0, 0
    for name, layer in compressed_linears(model).items():
        weight = linear_weight(layer)
        z = int((weight == 0).sum())
        layers[name] = z / weight.numel()
        zeros += z
        total += weight.numel()
    return {"total": zeros / max(total, 1), "parameters": total, "layers": layers}
