"""Activation and KV-cache fake quantization through forward hooks (always removed).

Simulated ("fake") quantization: tensors are rounded to a low-bit grid and immediately dequantized
back to the model's dtype, so the error is that of a real integer kernel while the arithmetic stays
in floating point. Nothing gets smaller or faster.
The grid is the weights' (helpers.compression.quantizer.fake_quantize): one quantization grid.

    with quantize_activations(model, ActivationSettings(bits=8)):      # W?A8 with a weight recipe
        result = evaluate(model, windows, reference)
    with quantize_kv_cache(model, KVSettings(bits=4)):                 # KV4, weights untouched
        result = evaluate(model, windows, reference)

Activations: the INPUT of every decoder-block linear (helpers.models.compressed_linears; the
embeddings and lm_head are left alone), quantized dynamically per token (one grid per token over
the hidden dimension, the usual W8A8 / W4A8 setting) or per tensor.

KV cache: keys and values are quantized where they are produced, on the outputs of each attention's
k_proj and v_proj, i.e. PRE-RoPE for keys (and, in Gemma-3, before its k_norm). Why pre-RoPE:
(1) one hook on a linear works for every family that has k_proj / v_proj (Llama, Gemma-3, OPT, ...),
while post-RoPE needs a hook inside each family's attention code; (2) it is a real cache design
(KVQuant, Hooper et al. 2024, stores pre-RoPE keys and applies RoPE on the fly) and keys' per-channel
outlier structure is cleaner before the rotation mixes channel pairs. A cache of post-RoPE keys
would see a slightly different error; per-token-head grids are close because RoPE preserves each
head's L2 norm, though not its max.
    'per_token_head': one grid per (token, head) over head_dim. Exactly causal: a token's keys and
                      values depend only on that token.
    'per_channel':    one grid per (channel, block of token_group_size consecutive tokens), like
                      KIVI's key cache. The block's grid uses all of its tokens, as a cache does once
                      the block is full; a streaming cache would hold the newest, incomplete block in
                      full precision, so this slightly overstates the error for the last block.
Teacher-forced evaluation (one forward over the window, use_cache=False) is what these hooks
simulate: attention reads exactly the quantized keys and values a cache would hold.
GPT-2 (fused c_attn) has no separate k_proj / v_proj and is refused with a clear error.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn

from ..models import compressed_linears, decoder_layers, normalize_blocks, selected_blocks
from .quantizer import fake_quantize

ACTIVATION_GRANULARITIES = ("per_token", "per_tensor")
KV_GRANULARITIES = ("per_token_head", "per_channel")


def _check_bits(bits, what: str) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"{what} bits={bits!r}; expected an integer from 2 to 8 (for 16 bits attach no hooks).")


@dataclass(frozen=True)
class ActivationSettings:
    """Dynamic fake quantization of every decoder linear's input."""
    bits: int = 8
    # Asymmetric by default: the symmetric form of the one grid (GPTQ's, helpers.compression.quantizer)
    # puts a slice's most negative value exactly on a rounding tie, so a dynamic per-token grid would
    # flip a level with float noise (the same token in a longer batch rounding differently).
    symmetric: bool = False
    granularity: str = "per_token"

    def __post_init__(self):
        _check_bits(self.bits, "activation")
        if self.granularity not in ACTIVATION_GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r}; expected one of {ACTIVATION_GRANULARITIES}.")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KVSettings:
    """Fake quantization of keys and values (pre-RoPE, on k_proj / v_proj outputs)."""
    bits: int = 4
    granularity: str = "per_token_head"
    symmetric: bool = False
    token_group_size: int = 128   # per_channel only: tokens sharing one grid per channel
    keys: bool = True
    values: bool = True
    # whose cache: 'all' blocks, 'full_attention' / 'sliding_attention' ones (Gemma-3) or block indices
    blocks: str | tuple[int, ...] = "all"

    def __post_init__(self):
        _check_bits(self.bits, "KV-cache")
        object.__setattr__(self, "blocks", normalize_blocks(self.blocks))
        if self.granularity not in KV_GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r}; expected one of {KV_GRANULARITIES}.")
        if not isinstance(self.token_group_size, int) or self.token_group_size < 1:
            raise ValueError(f"token_group_size={self.token_group_size!r}; expected a positive integer "
                             "(e.g. 32, 64, 128).")
        if not (self.keys or self.values):
            raise ValueError("keys=False and values=False quantizes nothing; enable at least one.")

    def as_dict(self) -> dict:
        return asdict(self)


def quantize_activation(x: torch.Tensor, settings: ActivationSettings) -> torch.Tensor:
    dim = -1 if settings.granularity == "per_token" else tuple(range(x.dim()))
    return fake_quantize(x, settings.bits, symmetric=settings.symmetric, dim=dim)


def quantize_kv(x: torch.Tensor, head_dim: int, settings: KVSettings) -> torch.Tensor:
    """x: a k_proj / v_proj output [..., tokens, heads * head_dim]."""
    *lead, tokens, width = x.shape
    if width % head_dim:
        raise ValueError(f"projection width {width} is not a multiple of head_dim={head_dim}.")
    if settings.granularity == "per_token_head":
        heads = x.reshape(*lead, tokens, width // head_dim, head_dim)
        return fake_quantize(heads, settings.bits, symmetric=settings.symmetric, dim=-1).reshape(x.shape)
    block = settings.token_group_size
    pieces = [fake_quantize(x[..., start:start + block, :], settings.bits, symmetric=settings.symmetric, dim=-2)
              for start in range(0, tokens, block)]
    return torch.cat(pieces, dim=-2)


@contextlib.contextmanager
def quantize_activations(model: nn.Module, settings: ActivationSettings) -> Iterator[dict[str, nn.Module]]:
    """Within the block, every decoder linear sees its input fake-quantized; hooks always removed."""
    linears = compressed_linears(model)
    handles = []

    def hook(_module, args):
        return (quantize_activation(args[0], settings), *args[1:])

    try:
        for linear in linears.values():
            handles.append(linear.register_forward_pre_hook(hook))
        yield linears
    finally:
        for handle in handles:
            handle.remove()


def attention_projections(model: nn.Module, blocks: str | tuple[int, ...] = "all"
                          ) -> dict[str, tuple[nn.Module, nn.Module, int]]:
    """{attention module name: (k_proj, v_proj, head_dim)} for every attention with separate k/v in
    the decoder blocks `blocks` selects (helpers.models.selected_blocks)."""
    config = getattr(model, "config", None)
    layers = decoder_layers(model)
    chosen = {id(module) for index in selected_blocks(model, blocks) for module in layers[index].modules()}
    modules = [(name, module) for name, module in model.named_modules() if id(module) in chosen]
    found = {}
    for name, module in modules:
        k_proj, v_proj = getattr(module, "k_proj", None), getattr(module, "v_proj", None)
        if not (isinstance(k_proj, nn.Module) and isinstance(v_proj, nn.Module)):
            continue
        head_dim = getattr(module, "head_dim", None) or getattr(config, "head_dim", None)
        if head_dim is None and config is not None:
            head_dim = config.hidden_size // config.num_attention_heads
        found[name] = (k_proj, v_proj, int(head_dim))
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention module with separate k_proj and v_proj "
                         "(GPT-2 fuses them in c_attn); KV-cache quantization supports Llama, Gemma-3, OPT and "
                         "other families with k_proj / v_proj.")
    return found


@contextlib.contextmanager
def quantize_kv_cache(model: nn.Module, settings: KVSettings) -> Iterator[dict[str, tuple]]:
    """Within the block, keys and values are fake-quantized as a low-bit cache would hold them
    (pre-RoPE, see the module docstring); hooks always removed."""
    attentions = attention_projections(model, settings.blocks)
    handles = []
    try:
        for k_proj, v_proj, head_dim in attentions.values():
            hook = (lambda _m, _args, output, _d=head_dim: quantize_kv(output, _d, settings))
            if settings.keys:
                handles.append(k_proj.register_forward_hook(hook))
            if settings.values:
                handles.append(v_proj.register_forward_hook(hook))
        yield attentions
    finally:
        for handle in handles:
            handle.remove()


def kv_cache_bits_per_value(settings: KVSettings, head_dim: int) -> float:
    """Storage per cached number: the code plus an fp16 scale (and a b-bit zero when asymmetric)
    shared by head_dim numbers (per_token_head) or token_group_size numbers (per_channel)."""
    shared = head_dim if settings.granularity == "per_token_head" else settings.token_group_size
    return settings.bits + (16 + (0 if settings.symmetric else settings.bits)) / shared
