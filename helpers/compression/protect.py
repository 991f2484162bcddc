"""Protected outlier groups (arXiv 2406.06773): which weight groups are kept at higher precision.

A weight group is `g = settings.protection_group_size` consecutive input weights of one output row,
so a [rows, columns] matrix has rows * ceil(columns / g) groups (the last of a row partial when g
does not divide the width). A fraction p of them (exactly
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

What protected groups cost to store is counted by helpers.compression.storage (the one storage model).
"""
from __future__ import annotations

from typing import Mapping

import torch

from .pruning import layer_seed
from .quantizer import QuantSettings, padded_groups
from .storage import protected_count, storage_bits


@torch.no_grad()
def group_scores(weight: torch.Tensor, settings: QuantSettings, *, hessian_diagonal: torch.Tensor | None = None,
                 seed: int = 0, name: str = "") -> torch.Tensor:
    """The selection score of every group, [rows, columns / g] (see the module docstring)."""
    w = weight.float()
    rows, columns = w.shape
    g = settings.protection_group_size
    groups = padded_groups(w, g)  # a partial last group is zero-padded: no effect on max |w| or sum w^2 H
    rule = settings.protect_rule
    if rule == "magnitude":
        return groups.abs().amax(dim=2)
    if rule == "random":
        generator = torch.Generator().manual_seed(layer_seed(seed, name))
        return torch.rand(rows, groups.shape[1], generator=generator, device="cpu",  # same choice on every device
                          dtype=torch.float32).to(w.device)
    if rule == "hessian":
        if hessian_diagonal is None:
            raise ValueError(f"protect_rule='hessian' needs the Hessian diagonal of layer {name or '?'!r} "
                             "(calibration inputs); run it through compress_model with calibration data.")
        diagonal = hessian_diagonal.float().to(w.device)
        if diagonal.shape != (columns,):
            raise ValueError(f"hessian_diagonal has shape {tuple(diagonal.shape)}; expected ({columns},).")
        return padded_groups(w.square() * diagonal[None, :], g).sum(dim=2)
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
                      permuted_groups: bool, kept: int | None = None) -> dict:
    """Per-layer report entries of a quantized layer: bits, its storage (helpers.compression.storage),
    bits per weight, and the protected-group map."""
    storage = storage_bits(shape, settings, kept=kept, permuted_groups=permuted_groups)
    info = {"bits": settings.bits, "storage": storage.as_dict(), "bits_per_weight": storage.per_weight}
    if protected is not None:
        info["protected_groups"] = protected.detach().cpu()
        info["protected_count"] = int(protected.sum())
    return info
