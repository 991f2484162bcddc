"""Weight quantization grids (simulated, "fake" quantization: weights stay dequantized floats).

Every function here returns dequantized values in float32 that the caller writes back into the
model in its own dtype: no integer codes are stored and nothing gets smaller or faster. The error
is exactly the error a real low-bit kernel would see; the storage cost is computed, not measured
(helpers.compression.protect.effective_bits). `recover_grid` inverts `dequantize`: the integer codes
and grids behind fake-quantized weights, which helpers.compression.export writes to disk.

The grid follows GPTQ's reference quantizer: asymmetric min-max with the range widened to include
0 (xmin = min(min x, 0), xmax = max(max x, 0)), scale = (xmax - xmin) / (2^b - 1),
zero = round(-xmin / scale), q = clamp(round(x / scale) + zero, 0, 2^b - 1),
dequantized = scale * (q - zero). Symmetric grids use xmax = max(|xmin|, xmax), zero = 2^(b-1).
Grids are fitted per output channel, or per group of `group_size` consecutive input columns.
Deviation from the reference, on purpose: a symmetric grid always spans [-xmax, xmax] (the reference
keeps xmin = 0 for a row with no negative weight, which wastes half of its levels).

Protected outlier groups (arXiv 2406.06773): `protect_fraction` of the weight groups (a group is
`protect_group_size` consecutive input weights of one output row) are kept at `protect_bits`
(16 = left unquantized); the low-bit grids are then fitted on the other weights only, so an
outlier group no longer stretches its channel's (or group's) range. Selection rules live in
helpers.compression.protect.
"""
from __future__ import annotations

import math
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
    group_fit: str = "block_start"  # GPTQ dynamic groups: grid from the weights at the start of the current
    #                                 128-column block (the reference's rule) or "updated" (in-block updates applied)
    protect_fraction: float = 0.0  # fraction of weight groups kept at protect_bits (2406.06773 uses 0.02)
    protect_rule: str = "magnitude"  # 'magnitude' (group max |w|), 'random' (seeded), 'hessian' (sum w^2 H_jj)
    protect_bits: int = 8          # precision of protected groups; 16 = left unquantized
    protect_group_size: int | None = None  # None: group_size, or 128 when quantizing per channel

    def __post_init__(self):
        if not _valid_bits(self.bits):
            raise ValueError(f"bits={self.bits!r}; expected an integer from 2 to 8 (or 16, which is used as "
                             "a near no-op in checks).")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size={self.group_size!r}; expected a positive integer or None (per channel).")
        if not isinstance(self.protect_fraction, (int, float)) or not 0 <= self.protect_fraction < 1:
            raise ValueError(f"protect_fraction={self.protect_fraction!r}; expected a fraction of weight groups "
                             "in [0, 1), e.g. 0.02 for 2%.")
        if self.group_fit not in GROUP_FITS:
            raise ValueError(f"group_fit={self.group_fit!r}; expected one of {GROUP_FITS} ('block_start' is the "
                             "reference GPTQ's rule).")
        if self.protect_rule not in PROTECT_RULES:
            raise ValueError(f"protect_rule={self.protect_rule!r} is not known; expected one of {PROTECT_RULES}.")
        if not _valid_bits(self.protect_bits):
            raise ValueError(f"protect_bits={self.protect_bits!r}; expected an integer from 2 to 8, or 16 to "
                             "keep protected groups unquantized.")
        if self.protect_fraction > 0 and self.protect_bits <= self.bits:
            raise ValueError(f"protect_bits={self.protect_bits} is not above bits={self.bits}; protected groups "
                             "must be kept at a higher precision (e.g. protect_bits=8 or 16).")
        if self.protect_group_size is not None and (not isinstance(self.protect_group_size, int)
                                                    or self.protect_group_size < 1):
            raise ValueError(f"protect_group_size={self.protect_group_size!r}; expected a positive integer or "
                             "None (use group_size, or 128 when quantizing per channel).")

    @property
    def protects(self) -> bool:
        return self.protect_fraction > 0

    @property
    def protection_group_size(self) -> int:
        """Width of one protectable weight group (protect_group_size, else group_size, else 128)."""
        return self.protect_group_size or self.group_size or 128

    @property
    def needs_calibration(self) -> bool:
        """The 'hessian' protection rule needs calibration inputs (diag H), even for RTN."""
        return self.protects and self.protect_rule == "hessian"

    def as_dict(self) -> dict:
        return asdict(self)


PROTECT_RULES = ("magnitude", "random", "hessian")
GROUP_FITS = ("block_start", "updated")


def _valid_bits(bits) -> bool:
    return isinstance(bits, int) and not isinstance(bits, bool) and (2 <= bits <= 8 or bits == 16)


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
        xmin = -xmax
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


@torch.no_grad()
def fake_quantize(x: torch.Tensor, bits: int, *, symmetric: bool = False, dim: int | tuple[int, ...] = -1) -> torch.Tensor:
    """`x` rounded on this module's grid, one grid per slice reduced over `dim`; same dtype as x.

    The grid of fit_grid (the weight grid), applied to any tensor: activations per token, KV-cache
    entries per (token, head) or per channel. Slices that are all zero stay zero."""
    dims = sorted({d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)})
    keep = [d for d in range(x.dim()) if d not in dims]
    order = keep + dims
    moved = x.permute(order)
    rows = moved.reshape(-1, math.prod(moved.shape[len(keep):])).float()
    scale, zero = fit_grid(rows, bits, symmetric)
    out = dequantize(rows, scale, zero, max_level(bits)).reshape(moved.shape)
    return out.permute([order.index(d) for d in range(x.dim())]).to(x.dtype)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round `weight` to the grid and return the dequantized values."""
    q = torch.clamp(torch.round(weight / scale) + zero, 0, maxq)
    return scale * (q - zero)


@torch.no_grad()
def recover_grid(values: torch.Tensor, bits: int, symmetric: bool = False, *, tolerance: float = 1e-3):
    """The grid each row of dequantized float32 `values` [rows, columns] lies on: the inverse of
    `dequantize`, which turns fake-quantized weights back into integer codes (helpers.compression.export).

    A dequantized value is scale * (q - zero) with integers q, zero in [0, 2^b - 1] (symmetric:
    zero = 2^(b-1)), so every value of a row is an integer multiple n of the row's scale. With m the
    smallest nonzero |value|, m = k * scale for an integer k >= 1. For k = 1, 2, ... the trial scale
    m / k is kept where every value / (m / k) lies within `tolerance` of an integer that fits the
    grid's range (a wrong k leaves a fraction of at least 1 / 2^b, far above float32 rounding) and,
    refined to a float32 number (least squares over the codes, then its neighbouring floats), it
    reproduces every value bit for bit: a coarser grid (codes sharing a common factor) is taken when
    it is exact, else the search goes on to the grid that made the values. zero puts the lowest code
    at 0; a row of zeros gets fit_grid's grid of an empty row. MSE-shrunk grids are recovered too
    (clipped weights sit on the end codes).

    Returns (scale [rows, 1], zero [rows, 1], exact [rows] bool): exact is False where no grid of
    `bits` bits reproduces the row (the values are not fake-quantized on such a grid)."""
    if values.dtype != torch.float32:
        raise ValueError(f"recover_grid needs float32 values, got {values.dtype}: values rounded to a "
                         "16-bit float after dequantization no longer hold their codes exactly.")
    v = values
    rows = v.shape[0]
    maxq = max_level(bits)
    low_code, high_code = (-(maxq + 1) // 2, (maxq - 1) // 2) if symmetric else (-maxq, maxq)
    smallest = torch.where(v != 0, v.abs(), torch.full_like(v, float("inf"))).amin(dim=1)
    empty = torch.isinf(smallest)
    span = v.amax(dim=1).clamp(min=0) - v.amin(dim=1).clamp(max=0)
    scale = torch.ones(rows, dtype=torch.float32, device=v.device)
    lowest = torch.zeros(rows, dtype=torch.float32, device=v.device)  # the lowest code of each row
    exact = empty.clone()
    for k in range(1, maxq + 2):
        todo = (~exact & (smallest / k >= span / maxq * (1 - 1e-6))).nonzero().squeeze(1)
        if not todo.numel():
            break  # every row is exact, or its trial scale is too small for its range
        rows_v = v[todo]
        trial = smallest[todo] / k
        ratio = rows_v / trial[:, None]
        codes = torch.round(ratio)
        top, bottom = codes.amax(dim=1).clamp(min=0), codes.amin(dim=1).clamp(max=0)
        fits = (ratio - codes).abs().amax(dim=1) < tolerance
        fits &= (bottom >= low_code) & (top <= high_code) & (symmetric | (top - bottom <= maxq))
        if not fits.any():
            continue
        todo, rows_v, codes, bottom = todo[fits], rows_v[fits], codes[fits], bottom[fits]
        candidate = ((rows_v.double() * codes.double()).sum(dim=1) / codes.double().square().sum(dim=1)).float()
        hit = torch.zeros_like(candidate, dtype=torch.bool)
        found = candidate.clone()
        for step in (0, 1, -1, 2, -2, 3, -3):  # the least-squares scale and its float32 neighbours
            trial = candidate
            for _ in range(abs(step)):
                trial = torch.nextafter(trial, torch.full_like(trial, float("inf") if step > 0 else 0.0))
            new = ~hit & (codes * trial[:, None] == rows_v).all(dim=1)
            found = torch.where(new, trial, found)
            hit |= new
        scale[todo[hit]] = found[hit]
        lowest[todo[hit]] = bottom[hit]
        exact[todo[hit]] = True
    empty_scale, empty_zero = fit_grid(torch.zeros(1, 1, device=v.device), bits, symmetric)
    scale = torch.where(empty, empty_scale[0, 0], scale)
    if symmetric:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.where(empty, empty_zero[0, 0], -lowest)
    return scale[:, None], zero[:, None], exact


def padded_groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """[rows, columns] -> [rows, groups, group_size], the last group of each row zero-padded when
    group_size does not divide columns (a partial last group, as the reference GPTQ has). Zeros never
    widen a grid's range, which always holds 0."""
    rows, columns = weight.shape
    groups = -(-columns // group_size)
    if groups * group_size != columns:
        weight = torch.nn.functional.pad(weight, (0, groups * group_size - columns))
    return weight.reshape(rows, groups, group_size)


@torch.no_grad()
def rtn(weight: torch.Tensor, settings: QuantSettings, protected: torch.Tensor | None = None) -> torch.Tensor:
    """Round-to-nearest on the settings' grid, per channel or per group; returns float32.

    Groups are `group_size` consecutive input columns of a row; a width the group size does not
    divide ends each row in a partial last group with its own grid (576 = 4 x 128 + 64).
    protected: optional boolean map [rows, ceil(columns / protection_group_size)] of protected groups
    (helpers.compression.protect.select_protected_groups); those groups are quantized at protect_bits
    on their own grid (or kept exact at 16) and left out of the low-bit grids' range.
    """
    w = weight.float()
    rows, columns = w.shape
    maxq = max_level(settings.bits)
    mask = None if protected is None else expand_groups(protected, columns, settings.protection_group_size)
    fit_on = w if mask is None else w.masked_fill(mask, 0)  # 0 never widens a range that holds 0
    if settings.group_size is None:
        scale, zero = fit_grid(fit_on, settings.bits, settings.symmetric, settings.mse)
        low = dequantize(w, scale, zero, maxq)
    else:
        g = settings.group_size
        grouped = padded_groups(fit_on, g)
        scale, zero = fit_grid(grouped.reshape(-1, g), settings.bits, settings.symmetric, settings.mse)
        values = padded_groups(w, g).reshape(-1, g)
        low = dequantize(values, scale, zero, maxq).reshape(rows, -1)[:, :columns]
    if mask is None:
        return low
    return torch.where(mask, quantize_protected(w, protected, settings), low)


def expand_groups(groups: torch.Tensor, columns: int, group_size: int) -> torch.Tensor:
    """A [rows, n_groups] group map -> [rows, columns] element map (group j = columns
    j * group_size ... (j + 1) * group_size - 1; the last one may be partial)."""
    index = torch.arange(columns, device=groups.device) // group_size
    return groups.to(torch.bool)[:, index]


@torch.no_grad()
def quantize_protected(weight: torch.Tensor, protected: torch.Tensor, settings: QuantSettings) -> torch.Tensor:
    """Every protection group of `weight` rounded at protect_bits on its own grid (exact at 16).

    Only the entries of protected groups are meant to be used; returns float32 [rows, columns]."""
    w = weight.float()
    if settings.protect_bits == 16:
        return w.clone()
    rows, columns = w.shape
    size = settings.protection_group_size
    groups = padded_groups(w, size).reshape(-1, size)
    chosen = protected.reshape(-1).to(torch.bool)
    out = groups.clone()
    if chosen.any():
        scale, zero = fit_grid(groups[chosen], settings.protect_bits, settings.symmetric, settings.mse)
        out[chosen] = dequantize(groups[chosen], scale, zero, max_level(settings.protect_bits))
    return out.reshape(rows, -1)[:, :columns]


class GridQuantizer:
    """Column-by-column quantizer used inside the OBS loop (GPTQ, SparseGPT + quantization).

    start(weight): fit the per-channel grid (or, with static groups, every group's grid) on the
    weight before any update. quantize(values, index, upcoming): quantize column `index` (in the
    processing order); with dynamic groups, refit at each group start on the weights of the columns
    from `index` on: `upcoming(updated=False)`, as they stood when the current block of the OBS loop
    started (earlier blocks' updates applied, this block's not: the reference GPTQ's rule,
    settings.group_fit="block_start"), or `upcoming(updated=True)`, with every earlier column's
    update applied (group_fit="updated"; lower error on small layers).

    permutation: the processing order (act-order), as original column indices; None = identity.
    protected: optional boolean map [rows, columns / protection_group_size] of protected groups in
    the ORIGINAL column order. Their entries are rounded at protect_bits on a grid per protected
    group, fitted on the group's current (updated) weights when its first column is reached, so
    OBS updates still flow into and out of protected weights; the low-bit grids ignore them.
    """

    def __init__(self, settings: QuantSettings, permutation: torch.Tensor | None = None,
                 protected: torch.Tensor | None = None):
        self.settings = settings
        self.permutation = permutation
        self.maxq = max_level(settings.bits)
        self.scale = self.zero = None
        self.group_grids = None
        self.protected_groups = protected
        self.mask = None           # [rows, columns] protected entries, processing order
        self.high_grids = {}       # original protection-group index -> (scale, zero) [rows, 1]

    def start(self, weight: torch.Tensor) -> None:
        s = self.settings
        inverse = None if self.permutation is None else torch.argsort(self.permutation)
        original = weight if inverse is None else weight[:, inverse]
        if self.protected_groups is not None:
            mask = expand_groups(self.protected_groups.to(weight.device), weight.shape[1],
                                 s.protection_group_size)
            self.mask = mask if self.permutation is None else mask[:, self.permutation]
            self.inverse = (torch.arange(weight.shape[1], device=weight.device) if inverse is None
                            else inverse.to(weight.device))
        fit_on = weight if self.mask is None else weight.masked_fill(self.mask, 0)
        if s.group_size is None:
            self.scale, self.zero = fit_grid(fit_on, s.bits, s.symmetric, s.mse)
        elif s.static_groups:
            if self.mask is not None:
                original = original.masked_fill(expand_groups(self.protected_groups.to(weight.device),
                                                              weight.shape[1], s.protection_group_size), 0)
            self.group_grids = [fit_grid(original[:, g:g + s.group_size], s.bits, s.symmetric, s.mse)
                                for g in range(0, original.shape[1], s.group_size)]

    def quantize(self, values: torch.Tensor, index: int, upcoming: Callable[[], torch.Tensor]) -> torch.Tensor:
        s = self.settings
        if s.group_size is not None:
            if s.static_groups:
                column = index if self.permutation is None else int(self.permutation[index])
                self.scale, self.zero = self.group_grids[column // s.group_size]
            elif index % s.group_size == 0:
                window = upcoming(updated=s.group_fit == "updated")[:, : s.group_size]
                if self.mask is not None:
                    window = window.masked_fill(self.mask[:, index:index + s.group_size], 0)
                self.scale, self.zero = fit_grid(window, s.bits, s.symmetric, s.mse)
        low = dequantize(values[:, None], self.scale, self.zero, self.maxq)[:, 0]
        if self.mask is None or not self.mask[:, index].any():
            return low
        if s.protect_bits == 16:
            return torch.where(self.mask[:, index], values, low)
        column = index if self.permutation is None else int(self.permutation[index])
        group = column // s.protection_group_size
        if group not in self.high_grids:
            # First column of this protection group in processing order: all of its columns are
            # still ahead, so their current weights are in upcoming().
            size = s.protection_group_size
            positions = self.inverse[group * size:(group + 1) * size] - index
            self.high_grids[group] = fit_grid(upcoming()[:, positions], s.protect_bits, s.symmetric, s.mse)
        scale, zero = self.high_grids[group]
        high = dequantize(values[:, None], scale, zero, max_level(s.protect_bits))[:, 0]
        return torch.where(self.mask[:, index], high, low)
