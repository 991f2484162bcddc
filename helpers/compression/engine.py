"""The layer-wise sequential engine shared by every compression method and architecture.

1. Capture, for every decoder block, the inputs the model hands it (hidden states for block 0, and
   every positional and keyword argument: attention mask, position ids, rotary embeddings, ...).
   The blocks are swapped for recorders that return their input, so one cheap pass of the
   embeddings gives each block's own arguments (Gemma-3 hands sliding and global blocks different
   masks and rotary tables).
2. For each block: move it to the compute device, hook its linears, run the calibration samples
   through it (statistics), let the method compress each linear, remove the hooks (always), run the
   samples through the compressed block and feed its outputs to the next block.

A method is any object with
    collector(name, linear) -> object with add_batch(inputs), or None if it needs no statistics
    compress(name, linear, collector) -> dict (a per-layer report)
and optionally `modifies_weights = False` for observe-only passes, and
    transform_block(block, linears, collectors) -> None
called once per block after its statistics are gathered and before its linears are compressed: the
place for a block-level transform (AWQ's per-channel scaling folded into the preceding norm or
linear, SmoothQuant's migration) that the per-linear compression then sees.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import _module_path, decoder_layers, linear_layers


class LayerMethod(Protocol):
    def collector(self, name: str, linear: nn.Module) -> Any | None: ...
    def compress(self, name: str, linear: nn.Module, collector: Any | None) -> dict: ...


def to_device(value, device):
    """Move tensors inside nested tuples / lists / dicts to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


@contextlib.contextmanager
def input_hooks(modules: dict[str, nn.Module], callback: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call `callback(name, input)` on every forward of each module; hooks are always removed."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, _name=name: callback(_name, args[0].detach())))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Recorder(nn.Module):
    """Stands in for a decoder block: records what it is called with, returns the hidden state."""

    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def forward(self, hidden, *args, **kwargs):
        self.calls.append((hidden, args, kwargs))
        return hidden


@dataclass
class BlockInputs:
    """Per batch: the hidden state entering the current block; per block and batch: its arguments."""
    hidden: list[torch.Tensor]
    arguments: list[list[tuple[tuple, dict]]]  # [block][batch] -> (args, kwargs)


def _non_block_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def capture_block_inputs(model: nn.Module, input_ids: torch.Tensor, *, batch_size: int = 8,
                         device: torch.device | str | None = None) -> BlockInputs:
    """Run the model's embeddings on `input_ids` [samples, tokens] and record every block's inputs."""
    layers = decoder_layers(model)
    device = torch.device(device) if device is not None else _non_block_device(model)
    original = list(layers)
    calls: list[list] = [[] for _ in original]
    home = _non_block_device(model)
    try:
        for index in range(len(layers)):
            layers[index] = _Recorder(calls[index])
        model.to(device)  # only the embeddings, norms and rotary tables: the blocks are recorders now
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start:start + batch_size].to(device)
            model.base_model(input_ids=batch, use_cache=False)
    finally:
        for index, block in enumerate(original):
            layers[index] = block
        if device != home:
            model.to(home)
    hidden = [call[0] for call in calls[0]]
    arguments = [[(call[1], {k: v for k, v in call[2].items() if k not in ("use_cache", "past_key_values")})
                  for call in block_calls] for block_calls in calls]
    return BlockInputs(hidden=hidden, arguments=arguments)


@torch.no_grad()
def _run_block(block: nn.Module, hidden: list[torch.Tensor], arguments: list[tuple[tuple, dict]], *,
               keep: bool = True, in_place: bool = False,
               after_batch: Callable[[int], None] | None = None) -> list[torch.Tensor] | None:
    """The block's outputs for every batch. keep=False runs it for its hooks only and holds no outputs (a
    statistics pass whose outputs nobody reads); in_place=True writes each batch's output over its input in
    `hidden` (propagation: the inputs are not read again). Either saves one [samples, tokens, hidden]
    copy of the calibration activations on the device."""
    outputs = hidden if in_place else []
    for index, (h, (args, kwargs)) in enumerate(zip(hidden, arguments)):
        out = block(h, *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        if in_place:
            del h
            hidden[index] = out
        elif keep:
            outputs.append(out)
        del out
        if after_batch is not None:
            after_batch(index)
    return outputs if keep or in_place else None


class SharedInputs:
    """Feeds each linear's input to its collector, once per distinct input tensor: linears fed the same
    tensor (q/k/v, gate/up) whose collectors are `shareable`, of one type and width, share the first one's
    collector (one X^T X accumulation instead of three). Which linears share is read off the first batch
    (the same live tensor: address, shape, strides, dtype and version), before any of them adds twice; from
    then on only each input's first linear adds. `collectors` is updated in place: shared names point to one
    object. Call `first_batch_done()` after the first batch."""

    def __init__(self, collectors: dict[str, Any], enabled: bool = True):
        self.collectors = collectors
        self.owner = {name: name for name in collectors}
        self.enabled = enabled
        self.first_batch = True
        self._seen: dict[tuple, str] = {}
        self._alive: list[torch.Tensor] = []  # no freed address can be reused while the first batch is read

    def add(self, name: str, x: torch.Tensor) -> None:
        if self.owner[name] != name:
            return
        collector = self.collectors[name]
        if self.first_batch and self.enabled and getattr(collector, "shareable", False):
            key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version, type(collector),
                   getattr(collector, "columns", None))
            if key in self._seen:
                self.owner[name] = self._seen[key]
                self.collectors[name] = self.collectors[self._seen[key]]
                return
            self._seen[key] = name
            self._alive.append(x)
        collector.add_batch(x)

    def first_batch_done(self, index: int = 0) -> None:
        if index == 0:
            self.first_batch = False
            self._seen.clear()
            self._alive.clear()

    @property
    def shared(self) -> int:
        """Collectors saved: linears whose statistics come from another linear's collector."""
        return sum(owner != name for name, owner in self.owner.items())


@torch.no_grad()
def sequential_groups(block: nn.Module, hidden: list[torch.Tensor], arguments: list[tuple[tuple, dict]],
                      linears: dict[str, nn.Module]) -> list[list[str]]:
    """The block's linears in the order they run, consecutive ones that read the same input tensor
    grouped: [q, k, v] -> [o] -> [gate, up] -> [down] for Llama and Gemma-3, [q, k, v] -> [out] -> [fc1]
    -> [fc2] for OPT (found by running one sample, not by names). Linears the forward never calls
    form a last group."""
    order, inputs = [], []

    def record(name, x):
        if name not in order:
            order.append(name)
            inputs.append(x)  # kept alive, so no later tensor can reuse its memory during this pass

    with input_hooks(linears, record):
        _run_block(block, hidden[:1], arguments[:1])
    groups, previous = [], None
    for name, x in zip(order, inputs):
        key = (x.data_ptr(), tuple(x.shape))
        if groups and key == previous:
            groups[-1].append(name)
        else:
            groups.append([name])
        previous = key
    missing = [n for n in linears if n not in order]
    return groups + ([missing] if missing else [])


@dataclass
class EngineReport:
    """What the engine did: one entry per compressed linear, plus timings."""
    layers: dict[str, dict] = field(default_factory=dict)
    seconds_statistics: float = 0.0
    seconds_compression: float = 0.0
    seconds_propagation: float = 0.0
    seconds_total: float = 0.0
    shared_statistics: int = 0  # linears whose statistics came from another linear's collector (same input)


@torch.no_grad()
def run_layerwise(model: nn.Module, input_ids: torch.Tensor, method: LayerMethod, *,
                  device: torch.device | str | None = None, batch_size: int = 8,
                  propagate_compressed: bool = True, progress: bool = True,
                  layer_filter: Callable[[str], bool] | None = None, true_sequential: bool = False,
                  share_statistics: bool = True) -> EngineReport:
    """Compress every decoder-block linear of `model` in place, block by block.

    input_ids: calibration tokens [samples, tokens]. device: where each block is processed (the
    rest of the model may live elsewhere, e.g. on the CPU). propagate_compressed: feed the next
    block the outputs of the compressed block (the reference recipe) rather than the dense ones.
    true_sequential: within a block, compress the sub-groups of `sequential_groups` in turn, each
    one's statistics gathered after the earlier ones are compressed (the reference LLaMA drivers'
    --true-sequential: one block forward per sub-group instead of one per block). share_statistics: linears
    fed the same input share one collector when the collectors allow it (`SharedInputs`); the statistics
    are the same numbers either way, gathered once.
    """
    if true_sequential and hasattr(method, "transform_block"):
        raise ValueError("true_sequential compresses a block's sub-groups one after another, but this method "
                         "transforms whole blocks (transform_block); use one or the other.")
    start = time.perf_counter()
    report = EngineReport()
    layers = decoder_layers(model)
    prefix = _module_path(model, layers)
    device = torch.device(device) if device is not None else _non_block_device(model)
    inputs = capture_block_inputs(model, input_ids, batch_size=batch_size, device=device)
    hidden = inputs.hidden
    modifies = getattr(method, "modifies_weights", True)
    bar = tqdm(range(len(layers)), desc="compressing blocks", disable=not progress)
    for index in bar:
        block = layers[index]
        home = next(block.parameters()).device
        block.to(device)
        arguments = to_device(inputs.arguments[index], device)
        linears = linear_layers(block, prefix=f"{prefix}.{index}.")
        if layer_filter is not None:
            linears = {n: m for n, m in linears.items() if layer_filter(n)}
        groups = sequential_groups(block, hidden, arguments, linears) if true_sequential else [list(linears)]
        dense_out = None
        # the first statistics pass sees the dense block: its outputs are the next block's inputs only when
        # nothing is compressed or the dense outputs are propagated; otherwise they are not kept
        reuse_dense = not (modifies and propagate_compressed)
        for group in groups:
            t0 = time.perf_counter()
            collectors = {n: method.collector(n, linears[n]) for n in group}
            collectors = {n: c for n, c in collectors.items() if c is not None}
            if collectors:
                keep = reuse_dense and group is groups[0]
                feed = SharedInputs(collectors, enabled=share_statistics)
                with input_hooks({n: linears[n] for n in collectors}, feed.add):
                    out = _run_block(block, hidden, arguments, keep=keep, after_batch=feed.first_batch_done)
                report.shared_statistics += feed.shared
                if keep:  # nothing compressed yet: the dense block's outputs
                    dense_out = out
                del out
            t1 = time.perf_counter()
            if hasattr(method, "transform_block"):  # e.g. AWQ-style scaling, from this block's statistics
                method.transform_block(block, linears, collectors)
            for name in group:
                report.layers[name] = method.compress(name, linears[name], collectors.get(name))
            del collectors
            report.seconds_statistics += t1 - t0
            report.seconds_compression += time.perf_counter() - t1
        t2 = time.perf_counter()
        hidden = _run_block(block, hidden, arguments, in_place=True) if dense_out is None else dense_out
        dense_out = None
        t3 = time.perf_counter()
        report.seconds_propagation += t3 - t2
        block.to(home)
    report.seconds_total = time.perf_counter() - start
    return report


class NoCompression:
    """The identity method: gathers nothing, changes nothing (used to test the engine)."""
    modifies_weights = False

    def collector(self, name, linear):
        return None

    def compress(self, name, linear, collector):
        return {}


@torch.no_grad()
def block_outputs(model: nn.Module, input_ids: torch.Tensor, *, batch_size: int = 8,
                  device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Each block's output through the engine's path (captured inputs, one block at a time)."""
    layers = decoder_layers(model)
    device = torch.device(device) if device is not None else _non_block_device(model)
    inputs = capture_block_inputs(model, input_ids, batch_size=batch_size, device=device)
    hidden, outputs = inputs.hidden, []
    for index, block in enumerate(layers):
        home = next(block.parameters()).device
        block.to(device)
        hidden = _run_block(block, hidden, to_device(inputs.arguments[index], device))
        block.to(home)
        outputs.append(torch.cat(hidden))
    return outputs
