"""The Optimal Brain Surgeon column loop shared by SparseGPT (prune, optionally quantize) and GPTQ.

One function over one layer's weight [rows, columns] and Hessian [columns, columns]:
    dead inputs (H_jj = 0) -> H_jj = 1, weight column zeroed
    H += damping * mean(diag H) * I;  U = upper Cholesky factor of H^-1
    for blocks of `block_size` columns:
        choose the block's pruning mask (unstructured: lowest w^2 / U_jj^2 pooled over the block;
        N:M: at every M-th column, the N lowest per row on the current weights)
        for each column i: q = w with pruned entries zeroed (then quantized; pruned stay 0)
                           err = (w - q) / U_ii; update the block's later columns by err x U_i,i:
                           loss += (w - q)^2 / U_ii^2
        lazily update all later columns with the block's errors
Returns the new weight and sum(loss) / 2, the OBS estimate of the layer's reconstruction error.

`obs_compress` (and its two names, `sparsegpt` and `gptq`) is the whole per-layer method as a pure
function of (weight, Hessian, settings) -> (new weight, info): protected groups chosen on the
original weight, the act-order permutation and its inverse, the column loop, and the fallback to
magnitude pruning / round-to-nearest when the Hessian cannot be factorized.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from .protect import layer_protection, quantization_info
from .pruning import Pattern, magnitude_mask
from .quantizer import GridQuantizer, QuantSettings, rtn


class CholeskyFailure(RuntimeError):
    """The damped Hessian (or its inverse) stayed non positive-definite after every retry."""


@dataclass
class OBSResult:
    weight: torch.Tensor
    error: float                      # sum of (w - q)^2 / U_ii^2, halved
    damping: float                    # damping that succeeded
    dead_columns: int = 0
    warnings: list[str] = field(default_factory=list)


def prepare_hessian(hessian: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Float32 copies with dead input channels handled (H_jj = 1, weight column zeroed)."""
    H = hessian.float().clone()
    W = weight.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return H, W, int(dead.sum())


def inverse_cholesky(H: torch.Tensor, damping: float = 0.01, retries: int = 3) -> tuple[torch.Tensor, float, list[str]]:
    """Upper Cholesky factor of (H + damping * mean(diag H) * I)^-1; retries with 10x damping."""
    if not torch.isfinite(H).all():
        # Cholesky reads one triangle only, so a NaN elsewhere would pass silently; no damping helps.
        raise CholeskyFailure(f"the Hessian has {int((~torch.isfinite(H)).sum())} non-finite entries "
                              "(NaN/inf calibration activations?)")
    warnings = []
    mean_diag = torch.diag(H).mean()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    current = damping
    for attempt in range(retries + 1):
        L, info = torch.linalg.cholesky_ex(H + current * mean_diag * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0 and torch.isfinite(U).all():
                return U, current, warnings
        then = f"retrying with {current * 10:g}" if attempt < retries else "giving up"
        warnings.append(f"Cholesky failed with damping {current:g}; {then}")
        current *= 10
    raise CholeskyFailure("; ".join(warnings))


def check_obs_settings(columns: int, sparsity: float, prune_n: int, prune_m: int, block_size: int) -> None:
    """Raise before any work if the OBS settings cannot produce the asked-for pattern."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity={sparsity!r}; expected a number in [0, 1).")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}; expected a positive integer (128 is the reference).")
    if prune_n or prune_m:
        if not 0 < prune_n < prune_m:
            raise ValueError(f"N:M = {prune_n}:{prune_m}; expected 0 < N < M (e.g. 2:4).")
        if block_size % prune_m or columns % prune_m:
            raise ValueError(f"N:M = {prune_n}:{prune_m} needs M={prune_m} to divide block_size={block_size} "
                             f"and the input width {columns}; pick a block size that is a multiple of M.")


def _lowest_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest entries of `score` (any shape). A k-th value threshold is several
    times faster than topk on large blocks; when ties at the threshold would select more than k
    entries, topk decides (the same set topk alone would give, ties aside)."""
    flat = score.reshape(-1)
    threshold = torch.kthvalue(flat, k).values
    mask = score <= threshold
    if int(mask.sum()) != k:
        mask = torch.zeros(flat.numel(), dtype=torch.bool, device=score.device)
        mask[torch.topk(flat, k, largest=False).indices] = True
        mask = mask.view_as(score)
    return mask


@torch.no_grad()
def obs_solve(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float = 0.0, prune_n: int = 0,
              prune_m: int = 0, quantizer=None, block_size: int = 128, damping: float = 0.01) -> OBSResult:
    """Prune (and/or quantize) `weight` with OBS updates; see the module docstring.

    For speed (benchmarks/layers.py) the loop works on the transposed weight, so that each weight
    column is one contiguous row, writes each column's error straight into the block's error matrix,
    updates the block's later columns with one in-place rank-1 update (addr_) and the later blocks
    with one addmm_, and sums the loss once per block. obs_solve_reference is the straightforward
    version the tests compare it with."""
    check_obs_settings(weight.shape[1], sparsity, prune_n, prune_m, block_size)
    H, W, dead = prepare_hessian(hessian, weight)
    U, used_damping, warnings = inverse_cholesky(H, damping)
    del H
    rows, columns = W.shape
    if quantizer is not None:
        quantizer.start(W)
    WT = W.t().contiguous()  # [columns, rows]: weight column i is the contiguous row WT[i]
    del W
    loss = torch.zeros((), dtype=torch.float32, device=WT.device)
    structured = prune_n > 0
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        count = i2 - i1
        W1 = WT[i1:i2]                       # a view: updated in place
        start = W1.clone() if quantizer is not None else None  # the block as it starts (reference group fits)
        Err1 = torch.empty_like(W1)          # row i: (w - q) / U_ii of column i1 + i
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        diagonal = d.tolist()
        mask = None                          # [count, rows], True = pruned
        if structured:
            mask = torch.zeros_like(W1, dtype=torch.bool)
        elif sparsity > 0:
            k = int(W1.numel() * sparsity)
            if k:
                mask = _lowest_mask(W1.square() / d[:, None].square(), k)
        for i in range(count):
            w = W1[i]
            if structured and i % prune_m == 0:
                score = W1[i:i + prune_m].square() / d[i:i + prune_m, None].square()
                mask[i:i + prune_m].scatter_(0, torch.topk(score, prune_n, dim=0, largest=False).indices, True)
            q = w if mask is None else w.masked_fill(mask[i], 0)
            if quantizer is not None:
                def upcoming(updated=True, i=i):
                    # The weights of columns i1 + i onwards [rows, columns - i1 - i]. updated: with every
                    # earlier column's update; columns after this block have not had this block's lazy
                    # update yet, so the pending part is applied (it matters only for a group that
                    # starts here and ends in a later block). Otherwise: as they stood when the block
                    # started, later blocks without this block's updates (the reference GPTQ's W).
                    if not updated:
                        return torch.cat([start[i:], WT[i2:]], dim=0).t()
                    later = WT[i2:] - U[i1:i1 + i, i2:].t() @ Err1[:i]
                    return torch.cat([W1[i:], later], dim=0).t()
                q = quantizer.quantize(q, i1 + i, upcoming)
                if mask is not None:
                    q = q.masked_fill(mask[i], 0)
            err = Err1[i]
            torch.sub(w, q, out=err)
            err.div_(diagonal[i])
            W1[i + 1:].addr_(U1[i, i + 1:], err, alpha=-1)
            w.copy_(q)
        loss += Err1.square().sum()
        WT[i2:].addmm_(U[i1:i2, i2:].t(), Err1, alpha=-1)
    return OBSResult(weight=WT.t().contiguous(), error=float(loss / 2), damping=used_damping, dead_columns=dead,
                     warnings=warnings)


@torch.no_grad()
def obs_solve_reference(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float = 0.0, prune_n: int = 0,
                        prune_m: int = 0, quantizer=None, block_size: int = 128, damping: float = 0.01) -> OBSResult:
    """Straightforward version for tests and benchmarks: one column at a time, no blocks, no lazy
    batching (every column's update is applied to all later columns immediately). The unstructured
    mask is chosen per `block_size`-column block on the weights as they are when the block starts,
    the N:M mask at every M-th column on the current weights, so the two versions agree up to
    floating-point rounding."""
    check_obs_settings(weight.shape[1], sparsity, prune_n, prune_m, block_size)
    H, W, dead = prepare_hessian(hessian, weight)
    U, used_damping, warnings = inverse_cholesky(H, damping)
    rows, columns = W.shape
    if quantizer is not None:
        quantizer.start(W)
    mask = torch.zeros_like(W, dtype=torch.bool)
    loss = 0.0
    at_block_start = W.clone()
    for i in range(columns):
        if i % block_size == 0:
            # What the blocked loop's weights hold at a block start: earlier blocks fully updated, and
            # for this block's and later columns only the updates of earlier blocks' columns.
            at_block_start = W.clone()
        if prune_n and i % prune_m == 0:
            group = slice(i, i + prune_m)
            score = W[:, group].square() / torch.diag(U)[group].square()
            lowest = torch.topk(score, prune_n, dim=1, largest=False).indices
            mask[:, group] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, lowest, True)
        elif not prune_n and sparsity > 0 and i % block_size == 0:
            block = slice(i, min(i + block_size, columns))
            score = W[:, block].square() / torch.diag(U)[block].square()
            k = int(score.numel() * sparsity)
            if k:
                flat = torch.zeros(score.numel(), dtype=torch.bool, device=W.device)
                flat[torch.topk(score.reshape(-1), k, largest=False).indices] = True
                mask[:, block] = flat.view_as(score)
        w = W[:, i].clone()
        q = w.clone()
        q[mask[:, i]] = 0
        if quantizer is not None:
            q = quantizer.quantize(q, i, lambda updated=True, i=i: W[:, i:] if updated else at_block_start[:, i:])
            q[mask[:, i]] = 0
        err = (w - q) / U[i, i]
        loss += float(err.square().sum())
        W[:, i:] -= err[:, None] * U[i, i:][None, :]
        W[:, i] = q
    return OBSResult(weight=W, error=loss / 2, damping=used_damping, dead_columns=dead, warnings=warnings)


# --------------------------------------------------------------------------- the per-layer methods
@torch.no_grad()
def obs_compress(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float = 0.0,
                 pattern: str | Pattern = "unstructured", quant: QuantSettings | None = None, block_size: int = 128,
                 damping: float = 0.01, seed: int = 0, name: str = "", solver=None) -> tuple[torch.Tensor, dict]:
    """SparseGPT (sparsity > 0 or an N:M pattern, optionally with joint quantization) or GPTQ (quant only)
    of one layer: (weight [rows, columns], Hessian [columns, columns], settings) -> (new weight, info).

    Protected groups (quant.protect_fraction) are chosen on the original weight and column order;
    with quant.act_order the columns are processed by descending Hessian diagonal and put back after;
    if the Hessian cannot be factorized the layer falls back to magnitude pruning and/or
    round-to-nearest, recorded in info["fallback"] and a warning. `solver` replaces obs_solve (the
    benchmarks pass obs_solve_reference). info: target_sparsity, obs_error, damping, dead_columns,
    warnings, and for quantized layers bits, storage and bits_per_weight (helpers.compression.storage).
    """
    solver = solver or obs_solve
    pattern = Pattern.parse(pattern) if isinstance(pattern, str) else pattern
    if pattern.structured:
        sparsity = pattern.sparsity
    protected = None
    if quant is not None:  # protected groups are chosen on the original weight and column order
        protected = layer_protection(weight, quant, hessian_diagonal=torch.diag(hessian), seed=seed, name=name)
    permutation = None
    if quant is not None and quant.act_order:
        permutation = torch.argsort(torch.diag(hessian), descending=True)
        weight, hessian = weight[:, permutation], hessian[permutation][:, permutation]
    quantizer = GridQuantizer(quant, permutation, protected) if quant is not None else None
    info = {"target_sparsity": sparsity}
    try:
        result = solver(weight, hessian, sparsity=0.0 if pattern.structured else sparsity,
                        prune_n=pattern.n if pattern.structured else 0, prune_m=pattern.m if pattern.structured else 0,
                        quantizer=quantizer, block_size=block_size, damping=damping)
        new_weight = result.weight
        info.update(obs_error=result.error, damping=result.damping, dead_columns=result.dead_columns,
                    warnings=result.warnings)
    except CholeskyFailure as err:
        message = (f"{name or 'layer'}: {err}; fell back to "
                   f"{'magnitude pruning' if sparsity else ''}{' + ' if sparsity and quant else ''}"
                   f"{'round-to-nearest' if quant else ''} for this layer")
        warnings.warn(message)
        if permutation is not None:  # fall back on the original column order, where groups live
            weight, permutation = weight[:, torch.argsort(permutation)], None
        new_weight = weight.float()
        if sparsity:
            new_weight = new_weight.masked_fill(magnitude_mask(new_weight, sparsity, pattern), 0)
        if quant is not None:
            kept = new_weight != 0
            quantized = rtn(new_weight, quant, protected)
            new_weight = quantized * kept if sparsity else quantized
        info.update(fallback=True, warnings=[message])
    if permutation is not None:
        new_weight = new_weight[:, torch.argsort(permutation)]
    if quant is not None:  # pruned positions are the exact zeros; a quantizer alone prunes nothing
        kept = int((new_weight != 0).sum()) if sparsity else None
        info.update(quantization_info(quant, tuple(weight.shape), protected, kept=kept, permuted_groups=(
            quant.act_order and quant.group_size is not None and not quant.static_groups)))
    return new_weight, info


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.0, *,
              pattern: str | Pattern = "unstructured", quant: QuantSettings | None = None,
              **settings) -> tuple[torch.Tensor, dict]:
    """SparseGPT on one layer (joint quantization with `quant`); see obs_compress."""
    return obs_compress(weight, hessian, sparsity=sparsity, pattern=pattern, quant=quant, **settings)


def gptq(weight: torch.Tensor, hessian: torch.Tensor, quant: QuantSettings, **settings) -> tuple[torch.Tensor, dict]:
    """GPTQ on one layer (act-order, static groups, protected groups by `quant`); see obs_compress."""
    return obs_compress(weight, hessian, quant=quant, **settings)
