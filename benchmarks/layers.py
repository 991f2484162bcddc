"""Speed and memory of compression and evaluation, each fast path timed beside a straightforward
implementation of the same algorithm in the same run.

    python benchmarks/layers.py --quick              # SmolLM2 / Gemma-3 shapes, KL to 4K, SmolLM2 16 x 512
    python benchmarks/layers.py                      # + 7B Llama shapes, KL to 32K
    python benchmarks/layers.py --only layers --shapes 4096x4096 4096x11008 --methods sparsegpt gptq
    python benchmarks/layers.py --device cuda        # same code on a GPU (peak memory from torch.cuda)

Sections (--only picks some):
  layers   per-layer compression time of SparseGPT (50%, 2:4), GPTQ (4-bit per channel, act-order,
           groups of 128) and Wanda (50%) through the production path (helpers.compression.compress methods'
           compress_weight), vs helpers.compression.obs.obs_solve_reference (column by column, no blocks, no lazy
           batching) and a per-row Wanda loop; random weights, correlated random inputs
           X = Z @ A + noise. For the OBS methods, time / (counted FLOPs at the matmul throughput
           measured just before, on this device, in this run): see `obs_flops`.
  hessian  seconds per calibration token of HessianCollector.add_batch vs a per-token Python loop of
           rank-1 updates.
  kl       time and peak memory of helpers.evaluation.metrics.kl_from_hidden (chunked) vs
           helpers.evaluation.metrics.kl_unchunked (full logits) through a SmolLM2-sized head (vocab 49152,
           hidden 576) against context length; the unchunked one is skipped past --unchunked-max-gib.
  model    whole-model SparseGPT 50% on SmolLM2-135M through helpers.compression.engine.run_layerwise, with its
           statistics / compression / propagation split (EngineReport), vs the same run with the
           reference OBS solver.

Memory: on CUDA, torch.cuda.max_memory_allocated minus the allocation before the measured call. On the
CPU, tracemalloc does not see torch's allocations: each memory measurement runs in its own
subprocess, which reports its peak resident set size (resource.getrusage(RUSAGE_SELF).ru_maxrss)
minus its resident size just before the measured call (inputs already built).

Timings: median of up to --repeats runs (fewer when one run exceeds --budget seconds); --threads
torch threads (1 by default: on a shared, oversubscribed CPU more threads were slower). Results go
to results/benchmarks/layers[-quick].csv (one row per measurement) and .json (rows + protocol),
rewritten after every section.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from helpers.compression.compress import METHODS, Recipe  # noqa: E402
from helpers.compression.obs import obs_compress, obs_solve_reference  # noqa: E402
from helpers.compression.pruning import wanda_scores  # noqa: E402
from helpers.compression.quantizer import GridQuantizer, QuantSettings  # noqa: E402
from helpers.compression.stats import HessianCollector, InputNormCollector  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (label, rows = output features, columns = input features)
SHAPES = [
    ("smollm2 q_proj", 576, 576),
    ("smollm2 up_proj", 1536, 576),
    ("gemma3 up_proj", 2048, 640),
    ("llama-7b q_proj", 4096, 4096),
    ("llama-7b down_proj", 4096, 11008),
]
QUICK_SHAPES = SHAPES[:3]


@dataclass(frozen=True)
class LayerConfig:
    label: str
    recipe: Recipe


def layer_configs() -> list[LayerConfig]:
    gptq = lambda **kw: Recipe(method="gptq", quant=QuantSettings(bits=4, **kw))  # noqa: E731
    return [
        LayerConfig("sparsegpt 50%", Recipe(method="sparsegpt", sparsity=0.5)),
        LayerConfig("sparsegpt 2:4", Recipe(method="sparsegpt", sparsity=0.5, pattern="2:4")),
        LayerConfig("gptq 4-bit", gptq()),
        LayerConfig("gptq 4-bit act-order", gptq(act_order=True)),
        LayerConfig("gptq 4-bit g128", gptq(group_size=128)),
        LayerConfig("wanda 50%", Recipe(method="wanda", sparsity=0.5)),
    ]


# --------------------------------------------------------------------------- inputs
def correlated_inputs(tokens: int, columns: int, *, rank: int = 256, noise: float = 0.1, seed: int = 0,
                      device: str = "cpu") -> torch.Tensor:
    """X = Z @ A + noise [tokens, columns]: `rank` random factors mixed by a random A, per-channel
    scales with a few large channels (as LLM activations have), plus isotropic noise."""
    generator = torch.Generator().manual_seed(seed)
    rank = min(rank, columns)
    Z = torch.randn(tokens, rank, generator=generator)
    A = torch.randn(rank, columns, generator=generator) / rank ** 0.5
    scales = torch.ones(columns)
    scales[torch.randperm(columns, generator=generator)[: max(1, columns // 100)]] = 10.0
    X = (Z @ A + noise * torch.randn(tokens, columns, generator=generator)) * scales
    return X.to(device)


def random_weight(rows: int, columns: int, seed: int = 1, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, columns, generator=generator) * columns ** -0.5).to(device)


# --------------------------------------------------------------------------- straightforward versions
def obs_layer_reference(weight: torch.Tensor, hessian: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """The OBS methods' per-layer function (helpers.compression.obs.obs_compress: same act-order permutation,
    quantizer and mask rules) with obs_solve_reference as the solver (no blocks, no lazy batching)."""
    sparsity = recipe.sparsity_for("layer") if METHODS[recipe.method].prunes else 0.0
    new_weight, _ = obs_compress(weight, hessian, sparsity=sparsity, pattern=recipe.pattern, quant=recipe.quant,
                                 block_size=recipe.block_size, damping=recipe.damping, solver=obs_solve_reference)
    return new_weight


def wanda_reference(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda, one output row at a time: zero the floor(sparsity * columns) lowest |W_ij| ||X_j||."""
    out = weight.clone()
    k = int(weight.shape[1] * sparsity)
    for row in range(weight.shape[0]):
        score = weight[row].abs() * input_norms
        out[row, torch.topk(score, k, largest=False).indices] = 0
    return out


def hessian_reference(inputs: torch.Tensor) -> torch.Tensor:
    """H = (2 / N) sum_t x_t x_t^T, one token (rank-1 update) at a time."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    total = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
    for token in x:
        total.addr_(token, token)
    return total * (2.0 / x.shape[0])


def fast_layer(weight: torch.Tensor, inputs: torch.Tensor, recipe: Recipe, collector=None) -> torch.Tensor:
    """The production path: METHODS[recipe.method](recipe).compress_weight on a filled collector."""
    method = METHODS[recipe.method](recipe)
    if collector is None:
        collector = method.collector("layer", nn.Linear(weight.shape[1], weight.shape[0], bias=False,
                                                        device=weight.device))
        collector.add_batch(inputs)
    new_weight, _ = method.compress_weight("layer", weight, collector)
    return new_weight


# --------------------------------------------------------------------------- counting and timing
def obs_flops(rows: int, columns: int, block_size: int = 128) -> dict:
    """Floating-point operations (2 per multiply-add) the OBS solve must do on one layer.

    inverse: Cholesky of H (c^3/3) + inverse from the factor (cholesky_inverse, 2c^3/3) + upper
    Cholesky of H^-1 (c^3/3) = 4c^3/3.  in_block: per block of b columns, column i updates the
    block's remaining b - i columns of every row: 2 * rows * sum_i (b - i) ~ rows * b^2.  lazy: after
    each block, Err [rows, b] @ U[b, later columns]: 2 * rows * b * (columns after the block).
    """
    inverse = 4 * columns ** 3 / 3
    in_block = lazy = 0
    for start in range(0, columns, block_size):
        width = min(block_size, columns - start)
        in_block += 2 * rows * width * (width + 1) / 2
        lazy += 2 * rows * width * (columns - start - width)
    return {"inverse": inverse, "in_block": in_block, "lazy": lazy, "total": inverse + in_block + lazy}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, budget: float) -> tuple[float, list[float]]:
    """Median wall time of up to `repeats` calls (stops early once `budget` seconds are spent)."""
    times = []
    spent = 0.0
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if spent > budget:
            break
    return statistics.median(times), times


def matmul_throughput(n: int, device: str, repeats: int = 3) -> float:
    """FLOP/s of an [n, n] @ [n, n] float32 torch.matmul on `device` (median of `repeats`)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.matmul(a, b)  # warm-up
    seconds, _ = timed(lambda: torch.matmul(a, b), device, repeats, budget=30)
    return 2 * n ** 3 / seconds


# --------------------------------------------------------------------------- memory (subprocess)
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_since(baseline: int, device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() - baseline
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline


def memory_baseline(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return rss_bytes()


def run_worker(task: dict, timeout: float = 1800) -> dict:
    """Run `task` in a fresh Python process (so its peak memory is its own) and return its result."""
    command = [sys.executable, __file__, "--worker", json.dumps(task)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        return {"error": f"worker exited with {done.returncode}: {done.stderr.strip()[-500:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


class HeadModel(nn.Module):
    """Just enough of a causal LM for helpers.evaluation.metrics: an output head and a config."""

    def __init__(self, vocab_size: int, hidden_size: int, device: str):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, final_logit_softcapping=None)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False, device=device)
        nn.init.normal_(self.head.weight, std=hidden_size ** -0.5)

    def get_output_embeddings(self):
        return self.head


@torch.no_grad()
def kl_worker(task: dict) -> dict:
    from helpers.evaluation.metrics import kl_from_hidden, kl_unchunked
    torch.set_num_threads(task["threads"])
    device, tokens = task["device"], task["context"]
    torch.manual_seed(0)
    model = HeadModel(task["vocab"], task["hidden"], device)
    dense = torch.randn(tokens, task["hidden"], device=device)
    other = dense + 0.1 * torch.randn(tokens, task["hidden"], device=device)
    if task["implementation"] == "chunked":
        run = lambda: kl_from_hidden(model, dense, other)  # noqa: E731
    else:
        run = lambda: kl_unchunked(model.head(dense), model.head(other))  # noqa: E731
    baseline = memory_baseline(device)
    seconds, times = timed(run, device, task["repeats"], task["budget"])
    return {"median_seconds": seconds, "times": times, "peak_bytes": peak_since(baseline, device),
            "kl_mean": float(run().mean()) if task.get("check") else None}


@torch.no_grad()
def model_worker(task: dict) -> dict:
    import helpers.compression.obs as obs
    from helpers.data import CalibrationSettings, calibration_samples
    from helpers.compression.engine import run_layerwise
    from helpers.models import load_model
    torch.set_num_threads(task["threads"])
    if task["implementation"] == "reference":
        obs.obs_solve = obs_solve_reference  # this subprocess only: the OBS methods use the reference
    model, tokenizer = load_model(task["model"])
    calibration = CalibrationSettings(n_samples=task["samples"], seq_len=task["seq_len"], seed=0)
    ids = calibration_samples(tokenizer, calibration)
    recipe = Recipe(method="sparsegpt", sparsity=0.5, calibration=calibration)
    baseline = memory_baseline(task["device"])
    report = run_layerwise(model, ids, METHODS["sparsegpt"](recipe), device=task["device"], progress=False)
    errors = [v["obs_error"] for v in report.layers.values() if "obs_error" in v]
    return {"seconds_total": report.seconds_total, "seconds_statistics": report.seconds_statistics,
            "seconds_compression": report.seconds_compression, "seconds_propagation": report.seconds_propagation,
            "layers": len(report.layers), "total_obs_error": sum(errors),
            "peak_bytes": peak_since(baseline, task["device"])}


WORKERS = {"kl": kl_worker, "model": model_worker}


# --------------------------------------------------------------------------- sections
def bench_layers(args, record) -> None:
    shapes = [s for s in (QUICK_SHAPES if args.quick else SHAPES)
              if not args.shapes or f"{s[1]}x{s[2]}" in args.shapes]
    configs = [c for c in layer_configs() if (not args.methods or c.recipe.method in args.methods)
               and (not args.configs or c.label in args.configs)]
    device = args.device
    for label, rows, columns in shapes:
        throughput = matmul_throughput(min(2048, max(512, columns)), device)
        inputs = correlated_inputs(args.layer_tokens, columns, device=device)
        weight = random_weight(rows, columns, device=device)
        hessians = HessianCollector(columns, device=device)
        hessians.add_batch(inputs)
        norms = InputNormCollector(columns, device=device)
        norms.add_batch(inputs)
        for config in configs:
            recipe = config.recipe
            if recipe.quant is not None and recipe.quant.group_size and columns % recipe.quant.group_size:
                record({"section": "layers", "label": f"{config.label} {rows}x{columns}", "layer": label,
                        "method": config.label, "rows": rows, "columns": columns,
                        "note": f"not run: group size {recipe.quant.group_size} does not divide {columns}"})
                continue
            collector = norms if recipe.method == "wanda" else hessians
            seconds, times = timed(lambda: fast_layer(weight, inputs, recipe, collector), device,
                                   args.repeats, args.budget)
            row = {"section": "layers", "label": f"{config.label} {rows}x{columns}", "layer": label,
                   "method": config.label, "rows": rows, "columns": columns, "median_seconds": seconds,
                   "repeats": len(times), "times": times, "matmul_flops_per_second": throughput}
            if recipe.method == "wanda":
                naive = lambda: wanda_reference(weight, norms.norms(), 0.5)  # noqa: E731
                flops = None
            else:
                naive = lambda: obs_layer_reference(weight, hessians.hessian(), recipe)  # noqa: E731
                flops = obs_flops(rows, columns, recipe.block_size)
                row.update(flops=flops["total"], flops_inverse=flops["inverse"],
                           ideal_seconds=flops["total"] / throughput,
                           time_over_ideal=seconds / (flops["total"] / throughput))
            if recipe.method == "wanda" or rows * columns ** 2 <= args.reference_max_work:
                reference_seconds, reference_times = timed(naive, device, args.reference_repeats, args.budget)
                row.update(reference_seconds=reference_seconds, reference_repeats=len(reference_times),
                           speedup=reference_seconds / seconds)
            else:
                row["reference_note"] = (f"reference not run: rows*columns^2 = {rows * columns ** 2:.3g} > "
                                         f"--reference-max-work {args.reference_max_work:.3g}")
            record(row)


def bench_hessian(args, record) -> None:
    device = args.device
    widths = sorted({columns for _, _, columns in (QUICK_SHAPES if args.quick else SHAPES)
                     if not args.shapes or any(s.endswith(f"x{columns}") for s in args.shapes)})
    for columns in widths:
        throughput = matmul_throughput(min(2048, max(512, columns)), device)
        # Calibration-sized batches ([8, 512] tokens per add_batch, as the engine calls it), capped
        # so one measurement stays under ~2e11 FLOP on slow machines.
        tokens = max(512, min(args.hessian_tokens, int(2e11 / (2 * columns ** 2)) // 512 * 512))
        inputs = correlated_inputs(tokens, columns, device=device).reshape(-1, 512, columns)

        def fast():
            collector = HessianCollector(columns, device=device)
            for start in range(0, inputs.shape[0], 8):
                collector.add_batch(inputs[start:start + 8])
            return collector.hessian()

        seconds, times = timed(fast, device, args.repeats, args.budget)
        naive_tokens = min(args.hessian_reference_tokens, tokens)
        naive_inputs = inputs.reshape(-1, columns)[:naive_tokens]
        naive_seconds, naive_times = timed(lambda: hessian_reference(naive_inputs), device,
                                           args.reference_repeats, args.budget)
        fast_per_token, naive_per_token = seconds / tokens, naive_seconds / naive_tokens
        flops_per_token = 2 * columns ** 2
        record({"section": "hessian", "label": f"add_batch c={columns}", "columns": columns, "tokens": tokens,
                "median_seconds": seconds, "repeats": len(times), "times": times,
                "seconds_per_token": fast_per_token, "reference_tokens": naive_tokens,
                "reference_seconds": naive_seconds, "reference_seconds_per_token": naive_per_token,
                "reference_repeats": len(naive_times), "speedup": naive_per_token / fast_per_token,
                "flops": flops_per_token * tokens, "matmul_flops_per_second": throughput,
                "ideal_seconds": flops_per_token * tokens / throughput,
                "time_over_ideal": seconds / (flops_per_token * tokens / throughput)})


def bench_kl(args, record) -> None:
    vocab, hidden = 49152, 576
    for context in args.contexts:
        row = {"section": "kl", "label": f"kl context={context}", "context": context, "vocab": vocab,
               "hidden": hidden}
        for implementation in ("chunked", "unchunked"):
            # unchunked holds ~7 [context, vocab] float32 tensors (2 logits, 2 log-softmax, exp, diff, product)
            estimate = 7 * context * vocab * 4
            prefix = "" if implementation == "chunked" else "reference_"
            if implementation == "unchunked" and estimate > args.unchunked_max_gib * 2 ** 30:
                row["reference_note"] = (f"unchunked not run: ~{estimate / 2 ** 30:.1f} GiB estimated "
                                         f"> --unchunked-max-gib {args.unchunked_max_gib}")
                continue
            repeats = args.repeats if context <= 4096 else 1
            result = run_worker({"worker": "kl", "implementation": implementation, "context": context,
                                 "vocab": vocab, "hidden": hidden, "device": args.device, "threads": args.threads,
                                 "repeats": repeats, "budget": args.budget})
            if "error" in result:
                row[prefix + "note"] = result["error"]
                continue
            row.update({("reference_seconds" if prefix else "median_seconds"): result["median_seconds"],
                        prefix + "repeats": len(result["times"]), prefix + "peak_mib": result["peak_bytes"] / 2 ** 20})
        if "reference_seconds" in row and "median_seconds" in row:
            row["speedup"] = row["reference_seconds"] / row["median_seconds"]
            row["memory_ratio"] = row["reference_peak_mib"] / max(row["peak_mib"], 1e-9)
        record(row)


def bench_model(args, record) -> None:
    """One row per solver, each recorded as soon as it is done (a timeout loses only the later one)."""
    implementations = ["fast"] + ([] if args.skip_model_reference else ["reference"])
    fast_compression = None
    for implementation in implementations:
        row = {"section": "model", "label": f"{args.model} sparsegpt 50% cal {args.model_samples}x"
               f"{args.model_seq_len}" + (" (reference solver)" if implementation == "reference" else ""),
               "model": args.model, "implementation": implementation, "calibration_samples": args.model_samples,
               "calibration_seq_len": args.model_seq_len, "repeats": 1}
        result = run_worker({"worker": "model", "implementation": implementation, "model": args.model,
                             "samples": args.model_samples, "seq_len": args.model_seq_len, "device": args.device,
                             "threads": args.threads}, timeout=3600)
        if "error" in result:
            row["note"] = result["error"]
        else:
            row.update({key: value for key, value in result.items() if key != "peak_bytes"})
            row.update(median_seconds=result["seconds_total"], peak_mib=result["peak_bytes"] / 2 ** 20)
            if implementation == "fast":
                fast_compression = result["seconds_compression"]
            elif fast_compression:
                row["speedup"] = result["seconds_compression"] / fast_compression
        record(row)


SECTIONS = {"layers": bench_layers, "hessian": bench_hessian, "kl": bench_kl, "model": bench_model}


# --------------------------------------------------------------------------- output
COLUMNS = ["section", "label", "median_seconds", "repeats", "reference_seconds", "speedup", "time_over_ideal",
           "seconds_per_token", "peak_mib", "reference_peak_mib", "seconds_statistics", "seconds_compression",
           "seconds_propagation"]


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    table = [[format_value(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))
    for row in rows:
        for key in ("reference_note", "note"):
            if key in row:
                print(f"  {row['label']}: {row[key]}")


def write(output: Path, protocol: dict, rows: list[dict]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=1))
    keys = list(dict.fromkeys(key for row in rows for key in row if key != "times"))
    with open(output.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v for k, v in row.items() if k != "times"})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only, KL to 4K contexts")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), default=None)
    parser.add_argument("--shapes", nargs="*", default=None, help="e.g. 4096x4096 (rows x columns); default all")
    parser.add_argument("--methods", nargs="*", default=None, help="sparsegpt gptq wanda; default all")
    parser.add_argument("--configs", nargs="*", default=None, help="exact labels, e.g. 'sparsegpt 50%%' 'gptq 4-bit'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=1)
    parser.add_argument("--budget", type=float, default=20.0, help="stop repeating once this many seconds are spent")
    parser.add_argument("--layer-tokens", type=int, default=2048, help="calibration tokens behind each layer's H")
    parser.add_argument("--reference-max-work", type=float, default=4096.0 ** 3,
                        help="run the reference OBS solver only where rows * columns^2 is at most this")
    parser.add_argument("--hessian-tokens", type=int, default=8192)
    parser.add_argument("--hessian-reference-tokens", type=int, default=512)
    parser.add_argument("--contexts", type=int, nargs="*", default=None, help="KL context lengths")
    parser.add_argument("--unchunked-max-gib", type=float, default=6.0)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-samples", type=int, default=16)
    parser.add_argument("--model-seq-len", type=int, default=512)
    parser.add_argument("--skip-model-reference", action="store_true")
    parser.add_argument("--output", default=None, help="path stem; default results/benchmarks/layers[-quick]")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contexts is None:
        args.contexts = [1024, 2048, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch.cuda.is_available() is False here; use --device cpu.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        task = json.loads(args.worker)
        print(json.dumps(WORKERS[task["worker"]](task)))
        return 0
    torch.set_num_threads(args.threads)
    output = Path(args.output) if args.output else ROOT / "results" / "benchmarks" / (
        "layers-quick" if args.quick else "layers")
    protocol = {"device": args.device, "device_name": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                                                       else platform.processor() or platform.machine()),
                "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                "dtype": "float32", "quick": args.quick, "repeats": args.repeats,
                "reference_repeats": args.reference_repeats, "statistic": "median of repeats",
                "budget_seconds": args.budget, "layer_tokens": args.layer_tokens,
                "inputs": "X = (Z @ A + 0.1 noise) * channel scales (1% of channels x10), Z [tokens, 256]",
                "weights": "randn / sqrt(columns)",
                "shapes": [list(s) for s in (QUICK_SHAPES if args.quick else SHAPES)
                           if not args.shapes or f"{s[1]}x{s[2]}" in args.shapes],
                "contexts": args.contexts, "kl_head": {"vocab": 49152, "hidden": 576},
                "memory": ("torch.cuda.max_memory_allocated minus allocation before the call" if
                           args.device.startswith("cuda") else "peak RSS (getrusage ru_maxrss) minus RSS before the "
                           "call, one subprocess per measurement"),
                "obs_flops": obs_flops.__doc__.strip(), "matmul_throughput": "square float32 torch.matmul, "
                "n = clamp(columns, 512, 2048), measured before each shape",
                "model": {"name": args.model, "recipe": "sparsegpt 50% unstructured, damping 0.01, block 128",
                          "calibration": f"{args.model_samples} x {args.model_seq_len} C4 tokens, seed 0"},
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows: list[dict] = []

    def record(row):
        rows.append(row)
        print(f"[{row['section']}] {row['label']}: " + ", ".join(
            f"{k}={format_value(v)}" for k, v in row.items()
            if k in COLUMNS[2:] or k.endswith("note")), flush=True)
        write(output, protocol, rows)

    for name, section in SECTIONS.items():
        if args.only is None or name in args.only:
            section(args, record)
    protocol["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    protocol["load_average_at_end"] = os.getloadavg()
    write(output, protocol, rows)
    print()
    print_table(rows)
    print(f"\nwrote {output.with_suffix('.csv')} and {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
