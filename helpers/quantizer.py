"""Weight quantization grids (simulated, "fake" quantization: weights stay dequantized floats).

The grid follows GPTQ's reference quantizer: asymmetric min-max with the range widened to include
0 (xmin = min(min x, 0), xmax = max(max x, 0)), scale = (xmax - xmin) / (2^b - 1),
zero = round(-xmin / scale), q = clamp(round(x / scale) + zero, 0, 2^b - 1),
dequantized = scale * (q - zero). Symmetric grids use xmax = max(|xmin|, xmax), zero = 2^(b-1).
Grids are fitted per output channel, or per group of `group_size` consecutive input columns.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class QuantSettings:
    """How weights are quantized; validated when built."""
    bits: int = 4
    symmetric: bool = False
    group_size: int | None = None  # None: one grid per output channel
    mse: bool = False              # search a shrunken range that minimizes the rounding error
    act_order: bool = False        # GPTQ: process columns by descending Hessian diagonal
    static_groups: bool = False    # GPTQ + act_order: fit the group grids before permuting

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ValueError(f"bits={self.bits!r}; expected an integer from 2 to 8 (16 means 'no-op' checks).")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size={self.group_size!r}; expected a positive integer or None (per channel).")

    def check_columns(self, columns: int, layer: str = "") -> None:
        if self.group_size is not None and columns % self.group_size:
            raise ValueError(f"group_size={self.group_size} does not divide the input width {columns}"
                             f"{' of ' + layer if layer else ''}; pick a divisor (e.g. 32, 64, 128) or None.")

    def as_dict(self) -> dict:
        return asdict(self)


def max_level(bits: int) -> int:
    return 2 ** bits - 1


@torch.no_grad()
def fit_grid(weight: torch.Tensor, bits: int, symmetric: bool = False, mse: bool = False,
             grid_points: int = 100, max_shrink: float = 0.8, norm: float = 2.4):
    """Scale and zero point [rows, 1] for each row of `weight` [rows, columns] (float32)."""
    w = weight.float()
    maxq = max_level(bits)
    xmin = w.min(dim=1).values.clamp(max=0)
    xmax = w.max(dim=1).values.clamp(min=0)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, torch.full_like(xmin, -1), xmin)
    xmax = torch.where(empty, torch.full_like(xmax, 1), xmax)

    def grid(lo, hi):
        scale = (hi - lo) / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-lo / scale)
        return scale, zero

    scale, zero = grid(xmin, xmax)
    if mse:
        best = torch.full_like(xmin, float("inf"))
        for step in range(int(max_shrink * grid_points)):
            shrink = 1 - step / grid_points
            s, z = grid(shrink * xmin, shrink * xmax)
            error = (dequantize(w, s[:, None], z[:, None], maxq) - w).abs().pow(norm).sum(dim=1)
            better = error < best
            best = torch.where(better, error, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
    return scale[:, None], zero[:, None]


def dequantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round `weight` to the grid and return the dequantized values."""
    q = torch.clamp(torch.round(weight / scale) + zero, 0, maxq)
    return scale * (q - zero)


@torch.no_grad()
def rtn(weight: torch.Tensor, settings: QuantSettings) -> torch.Tensor:
    """Round-to-nearest on the settings' grid, per channel or per group; returns float32."""
    w = weight.float()
    rows, columns = w.shape
    settings.check_columns(columns)
    maxq = max_level(settings.bits)
    if settings.group_size is None:
        scale, zero = fit_grid(w, settings.bits, settings.symmetric, settings.mse)
        return dequantize(w, scale, zero, maxq)
    groups = w.reshape(rows * columns // settings.group_size, settings.group_size)
    scale, zero = fit_grid(groups, settings.bits, settings.symmetric, settings.mse)
    return dequantize(groups, scale, zero, maxq).reshape(rows, columns)


class GridQuantizer:
    """Column-by-column quantizer used inside the OBS loop (GPTQ, SparseGPT + quantization).

    start(weight): fit the per-channel grid (or, with static groups, every group's grid) on the
    weight before any update. quantize(values, index, upcoming): quantize column `index` (in the
    processing order); with groups, refit at each group start on `upcoming()`, the current
    (already updated) weights of the columns from `index` on.
    """

    def __init__(self, settings: QuantSettings, permutation: torch.Tensor | None = None):
        self.settings = settings
        self.permutation = permutation
        self.maxq = max_level(settings.bits)
        self.scale = self.zero = None
        self.group_grids = None

    def start(self, weight: torch.Tensor) -> None:
        s = self.settings
        if s.group_size is None:
            self.scale, self.zero = fit_grid(weight, s.bits, s.symmetric, s.mse)
        elif s.static_groups:
            original = weight if self.permutation is None else weight[:, torch.argsort(self.permutation)]
            self.group_grids = [fit_grid(original[:, g:g + s.group_size], s.bits, s.symmetric, s.mse)
                                for g in range(0, original.shape[1], s.group_size)]

    def quantize(self, values: torch.Tensor, index: int, upcoming: Callable[[], torch.Tensor]) -> torch.Tensor:
        s = self.settings
        if s.group_size is not None:
            if s.static_groups:
                column = index if self.permutation is None else int(self.permutation[index])
                self.scale, self.zero = self.group_grids[column // s.group_size]
            elif index % s.group_size == 0:
                self.scale, self.zero = fit_grid(upcoming()[:, : s.group_size], s.bits, s.symmetric, s.mse)
        return dequantize(values[:, None], self.scale, self.zero, self.maxq)[:, 0]
