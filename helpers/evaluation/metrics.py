"""Perplexity and per-position KL(dense || compressed), memory-bounded, from float32 logits.

Nothing here holds a [tokens, vocab] logits tensor for a whole window: the models return their
final hidden states, and the output head, log-softmax, NLL and KL run over chunks of positions.
The dense model's final hidden states are stored once (`DenseReference`) and reused for every
compressed variant, so the dense forward pass is never repeated.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


# Elements of one [chunk, vocab] logits block: bounds the head's working memory (~128 MiB fp32).
HEAD_CHUNK_ELEMENTS = 1 << 25


def head_chunk(vocab_size: int, requested: int | None = None) -> int:
    return requested or max(16, HEAD_CHUNK_ELEMENTS // vocab_size)


@torch.no_grad()
def final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states (after the final norm) [batch, tokens, hidden]; no logits computed."""
    device = model.get_input_embeddings().weight.device
    out = model.base_model(input_ids=input_ids.to(device), use_cache=False)
    return out.last_hidden_state


def _float32_head(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output head's weight (and bias) in float32, converted once per weight version and kept on
    the module, so bf16 / fp16 models get float32 logits without a conversion per chunk."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        return weight, bias
    key = (weight.data_ptr(), weight._version)
    cached = getattr(head, "_float32_copy", None)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().float(), None if bias is None else bias.detach().float())
        head._float32_copy = cached
    return cached[1], cached[2]


def log_probs(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """log-softmax of the model's output head on `hidden` [..., hidden], computed in float32 whatever
    the model's dtype (bf16 logits would put a rounding floor under small KLs)."""
    head = model.get_output_embeddings()
    weight, bias = _float32_head(head)
    logits = F.linear(hidden.to(weight.device, torch.float32), weight, bias)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits, dim=-1)


@torch.no_grad()
def token_nll(model: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """NLL of each next token [tokens - 1] for one window's hidden states [tokens, hidden]."""
    chunk = head_chunk(model.config.vocab_size, chunk)
    targets = input_ids.to(hidden.device)[1:]
    out = []
    for start in range(0, hidden.shape[0] - 1, chunk):
        stop = min(start + chunk, hidden.shape[0] - 1)
        lp = log_probs(model, hidden[start:stop])
        out.append(-lp.gather(-1, targets[start:stop, None].to(lp.device)).squeeze(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def kl_from_hidden(model: nn.Module, dense_hidden: torch.Tensor, other_hidden: torch.Tensor,
                   chunk: int | None = None, dense_model: nn.Module | None = None) -> torch.Tensor:
    """KL(p_dense || p_other) per position [tokens], computed over chunks of positions.

    Both hidden states go through the output head of `model` (compression never touches the head),
    or through `dense_model`'s head for the dense side when it is given.
    """
    chunk = head_chunk(model.config.vocab_size, chunk)
    dense_model = dense_model or model
    out = []
    for start in range(0, dense_hidden.shape[0], chunk):
        log_p = log_probs(dense_model, dense_hidden[start:start + chunk])
        log_q = log_probs(model, other_hidden[start:start + chunk])
        out.append((log_p.exp() * (log_p - log_q)).sum(-1).clamp_min_(0).cpu())
    return torch.cat(out)


@torch.no_grad()
def nll_and_kl(model: nn.Module, dense_hidden: torch.Tensor, hidden: torch.Tensor, input_ids: torch.Tensor,
               chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """token_nll and kl_from_hidden of one window in one pass over the head: each chunk's compressed
    log-probabilities are computed once and serve both (the head is ~1/3 of a small model's evaluation)."""
    chunk = head_chunk(model.config.vocab_size, chunk)
    targets = input_ids.to(hidden.device)[1:]
    nll, kl = [], []
    for start in range(0, hidden.shape[0], chunk):
        stop = min(start + chunk, hidden.shape[0])
        log_q = log_probs(model, hidden[start:stop])
        log_p = log_probs(model, dense_hidden[start:stop])
        kl.append((log_p.exp() * (log_p - log_q)).sum(-1).clamp_min_(0).cpu())
        last = min(stop, hidden.shape[0] - 1)  # the final position has no next token
        if last > start:
            picked = log_q[: last - start].gather(-1, targets[start:last, None].to(log_q.device))
            nll.append(-picked.squeeze(-1).cpu())
    return torch.cat(nll), torch.cat(kl)


def kl_unchunked(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Reference KL(p || q) per position from full logits; used by tests and benchmarks only."""
    log_p, log_q = F.log_softmax(logits_p.float(), -1), F.log_softmax(logits_q.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)


@dataclass
class WindowResult:
    nll: torch.Tensor   # [n_windows, tokens - 1]
    kl: torch.Tensor | None  # [n_windows, tokens]

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll.double().mean().item())

    def mean_kl(self, context: int | None = None) -> float:
        """Mean KL over positions < context (all positions if None) and windows."""
        if self.kl is None:
            raise ValueError("no KL was computed: pass a DenseReference to evaluate().")
        return self.kl[:, : context or self.kl.shape[1]].double().mean().item()


class DenseReference:
    """The dense model's final hidden states on a set of windows, stored once (on the CPU).

    lazy=True: the pass runs when they are first read (`hidden`, `nll`, `perplexity`, or `prepare()`), so a
    notebook re-executed over recorded results, where every variant is skipped, never pays for it; the model
    must still be dense then (a measurement built on it calls `prepare()` before the Runner compresses).
    cache_dir: each window's hidden states and token losses are also kept on disk there, one file per window
    named by `reference_digest` of the model (every weight, the config, torch and transformers versions) and of
    the window's tokens, so a run resumed in a new process, or another notebook on the same windows, reads them
    back instead of repeating the pass (the same tensors); `from_cache` counts the windows read back."""

    def __init__(self, model: nn.Module, windows: torch.Tensor, *, progress: bool = True, lazy: bool = False,
                 cache_dir: str | Path | None = None):
        self.windows = windows
        self._model, self._progress = model, progress
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.from_cache = 0
        if not lazy:
            self.prepare()

    def prepare(self) -> None:
        """Run the dense pass now if it has not run (the model must be dense)."""
        _ = self._pass
        self._model = None  # the reference no longer needs the model

    def cache_paths(self) -> list[Path]:
        """The cache file of each window (needs the model: call before `prepare`)."""
        if self.cache_dir is None:
            return []
        if self._model is None:
            raise RuntimeError("the dense pass has run and released the model: its cache paths are no longer known.")
        return [self.cache_dir / f"dense_{self.model_digest}_{reference_digest(None, w)[:16]}.pt" for w in self.windows]

    @functools.cached_property
    def model_digest(self) -> str:
        """The first 16 hex digits of `reference_digest` of the model the pass runs (or ran) on: rows that compare
        with this reference record it, so a comparison with another reference shows."""
        if self._model is None:
            raise RuntimeError("the dense pass has run and released the model before its digest was taken.")
        return reference_digest(self._model)[:16]

    @functools.cached_property
    def _pass(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        _ = self.model_digest  # taken while the model is the one the pass runs on
        paths = self.cache_paths()
        hidden, nll = [], []
        for index, window in enumerate(tqdm(self.windows, desc="dense reference", disable=not self._progress)):
            path = paths[index] if paths else None
            if path is not None and path.exists():
                stored = torch.load(path, weights_only=True)
                hidden.append(stored["hidden"])
                nll.append(stored["nll"])
                self.from_cache += 1
                continue
            hidden.append(final_hidden(self._model, window[None])[0].cpu())
            nll.append(token_nll(self._model, hidden[-1], window))
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")
                torch.save({"hidden": hidden[-1], "nll": nll[-1]}, partial)
                partial.replace(path)  # a run killed while saving leaves no half-written file
        return hidden, torch.stack(nll)

    @property
    def hidden(self) -> list[torch.Tensor]:
        return self._pass[0]

    @property
    def nll(self) -> torch.Tensor:
        return self._pass[1]

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll.double().mean().item())

    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hidden)


def reference_digest(model: nn.Module | None, *tensors: torch.Tensor, extra: str = "") -> str:
    """sha256 of what a pass depends on: with a model, every tensor of its state (name, dtype, shape, bytes), its
    config and the torch and transformers versions (a different forward gives another digest); then `tensors`
    (e.g. the windows) and `extra`."""
    import transformers

    digest = hashlib.sha256(extra.encode())
    named = [(f"tensor {i}", t) for i, t in enumerate(tensors)]
    if model is not None:
        config = getattr(model, "config", None)
        digest.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
        digest.update((config.to_json_string(use_diff=False) if config is not None else type(model).__name__).encode())
        named += sorted(model.state_dict().items())
    for name, tensor in named:
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name} {data.dtype} {tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, reference: DenseReference | None = None, *,
             chunk: int | None = None, progress: bool = True) -> WindowResult:
    """One pass of `model` over `windows` [n, tokens]: per-token NLL and, with a reference, KL."""
    if reference is not None and not torch.equal(reference.windows, windows):
        raise ValueError("the DenseReference was built on other windows than the ones given to evaluate().")
    nll, kl = [], []
    for index, window in enumerate(tqdm(windows, desc="evaluate", disable=not progress)):
        hidden = final_hidden(model, window[None])[0]
        if reference is None:
            nll.append(token_nll(model, hidden, window, chunk))
            continue
        window_nll, window_kl = nll_and_kl(model, reference.hidden[index].to(hidden.device), hidden, window, chunk)
        nll.append(window_nll)
        kl.append(window_kl)
    return WindowResult(nll=torch.stack(nll), kl=torch.stack(kl) if kl else None)


def perplexity(model: nn.Module, windows: torch.Tensor, *, progress: bool = True) -> float:
    """exp(mean NLL) over non-overlapping windows (the SparseGPT / GPTQ / Wanda protocol)."""
    return evaluate(model, windows, progress=progress).perplexity


def precision_floor(model: nn.Module, model_name: str, windows: torch.Tensor, *, progress: bool = False) -> WindowResult:
    """The noise a lower precision adds on its own: `model` (loaded as `model_name` in a reduced dtype) evaluated
    against the same model loaded in float32 on `windows` -> per-token NLL and KL(float32 dense || `model`). A run
    in that dtype cannot measure an effect of this size; print it beside the results and gate verdicts on it
    (helpers.claims.rules.noise_gate). Loads the float32 model once, on `model`'s device."""
    from ..models import load_model

    reference_model, _ = load_model(model_name, dtype="float32", device=next(model.parameters()).device)
    reference = DenseReference(reference_model, windows, progress=progress)
    del reference_model
    return evaluate(model, windows, reference, progress=progress)


def floor_summary(model: nn.Module, model_name: str, windows: torch.Tensor, *, max_windows: int = 4,
                  cache_dir: str | Path | None = None) -> dict | None:
    """What a notebook prints beside its results: None when `model` is float32; otherwise the noise floor of its
    dtype (`precision_floor` on the first `max_windows` windows): mean KL per token over all positions and over the
    last quarter of each window (where long-context growth is judged), in nats, with the number of windows.
    cache_dir: the summary is kept there as JSON, named by `reference_digest` of `model` and those windows (and
    `model_name`), so a resumed run reads it back instead of loading the float32 model again."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        return None
    path = None
    if cache_dir is not None:
        digest = reference_digest(model, windows[:max_windows], extra=f"floor of {model_name}")
        path = Path(cache_dir) / f"floor_{digest[:24]}.json"
        if path.exists():
            return json.loads(path.read_text())
    result = precision_floor(model, model_name, windows[:max_windows])
    quarter = max(1, result.kl.shape[1] // 4)
    summary = {"dtype": str(dtype).removeprefix("torch."), "windows": int(result.kl.shape[0]),
               "mean_kl": result.mean_kl(), "last_quarter_kl": result.kl[:, -quarter:].double().mean().item()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary))
    return summary


def floor_line(floor: dict | None) -> str:
    """The sentence a notebook prints for `floor_summary`'s result."""
    if floor is None:
        return "precision noise floor: none (float32)"
    return (f"precision noise floor: KL(float32 || {floor['dtype']}) {floor['mean_kl']:.2g} nats per token, "
            f"{floor['last_quarter_kl']:.2g} in the last quarter ({floor['windows']} windows); effects below 3x it "
            "are unmeasurable")
