"""Pruning masks and the calibration-free / activation-aware pruning rules.

Every function works on one layer's weight [rows = out_features, columns = in_features] and returns
a boolean mask of the weights to remove (True = pruned). Comparison groups follow the references:
magnitude and random compare over the whole matrix, Wanda over each output row; N:M patterns
prune the N lowest scores in every group of M consecutive input columns of a row.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pattern:
    """'unstructured' or 'N:M' (N of every M consecutive input weights of a row are pruned)."""
    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        if text in ("unstructured", "", None):
            return cls()
        try:
            n, m = (int(v) for v in str(text).split(":"))
        except ValueError:
            raise ValueError(f"pattern={text!r}; expected 'unstructured' or 'N:M' such as '2:4'.") from None
        if not 0 < n < m:
            raise ValueError(f"pattern={text!r} has N={n}, M={m}; expected 0 < N < M (e.g. '2:4', '4:8').")
        return cls(n, m)

    @property
    def structured(self) -> bool:
        return self.n > 0

    @property
    def sparsity(self) -> float:
        return self.n / self.m if self.m else 0.0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"{name}={sparsity!r}; expected a number in [0, 1) (0.5 prunes half the weights).")
    return float(sparsity)


def _lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest entries of each row of `score` (exactly k per row)."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, True)
    return mask


def mask_from_scores(score: torch.Tensor, sparsity: float, pattern: Pattern = Pattern(),
                     group: str = "matrix") -> torch.Tensor:
    """Prune the lowest scores: a fraction `sparsity` of the matrix or of each row, or N:M."""
    rows, columns = score.shape
    if pattern.structured:
        if columns % pattern.m:
            raise ValueError(f"pattern {pattern} needs the input width {columns} to be divisible by M={pattern.m}.")
        grouped = score.reshape(rows * columns // pattern.m, pattern.m)
        return _lowest(grouped, pattern.n).reshape(rows, columns)
    if group == "matrix":
        return _lowest(score.reshape(1, -1), int(score.numel() * sparsity)).reshape(rows, columns)
    if group == "row":
        return _lowest(score, int(columns * sparsity))
    raise ValueError(f"group={group!r}; expected 'matrix' or 'row'.")


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern = Pattern()) -> torch.Tensor:
    return mask_from_scores(weight.abs().float(), sparsity, pattern, group="matrix")


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed that depends only on the run's seed and the layer's name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 31)


def random_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern = Pattern(), *, seed: int = 0,
                name: str = "") -> torch.Tensor:
    generator = torch.Generator().manual_seed(layer_seed(seed, name))
    # drawn on the CPU in float32 whatever the weight's device: the same mask on every device
    score = torch.rand(weight.shape, generator=generator, device="cpu", dtype=torch.float32).to(weight.device)
    return mask_from_scores(score, sparsity, pattern, group="matrix")


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| * ||X_j||_2."""
    return weight.abs().float() * input_norms.float().to(weight.device)[None, :]


def wanda_mask(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float,
               pattern: Pattern = Pattern()) -> torch.Tensor:
    return mask_from_scores(wanda_scores(weight, input_norms), sparsity, pattern, group="row")
