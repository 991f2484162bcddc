"""Weight quantization table: RTN and GPTQ at several bit widths, per channel and in groups, act-order on
and off, and protected outlier groups, on one model: perplexity, mean KL vs dense, effective bits per
weight, wall time and peak memory. Every row is appended to a tidy results table with its settings and
protocol as it is measured.

    python benchmarks/quantization.py                       # SmolLM2-135M, the full grid (24 variants)
    python benchmarks/quantization.py --calibration-samples 4 --eval-windows 2 --bits 3 --group-sizes 64 \
        --act-order off --protect-bits-for 3                 # the subset that fits a loaded shared machine
    python benchmarks/quantization.py --model tiny-llama --calibration-samples 2 --calibration-length 64 \\
        --eval-windows 2 --eval-length 64 --bits 4 3          # smoke test

Cost: each GPTQ variant runs 2 x N calibration forwards (statistics, then propagation through the
quantized block) plus the OBS solves; each variant then evaluates W windows. At the nominal 1.3 s per
512-token forward of SmolLM2 on 2 idle cores, the full default grid is estimated at 15-20 min; on a
machine shared with other jobs forwards ran ~20x slower, so run a subset there.
Group sizes must divide every input width: SmolLM2's 576 and 1536 allow 32, 64, 96, 192, not 128.

Protocol (recorded in every row): calibration N x L tokens of C4 (seed 0, SparseGPT/GPTQ sampling),
all decoder-block linears quantized layer by layer with inputs propagated through the already
quantized blocks; evaluation on the first W non-overlapping WikiText-2 test windows of E tokens;
KL(dense || quantized) per position, averaged over positions and windows. Simulated quantization
(weights dequantized in float32): wall time is the compression time on this machine, not a kernel
speed. Peak memory is the process's peak resident memory sampled during the run (CPU) or the
peak allocated CUDA memory, including the model, the dense reference and the calibration inputs.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from helpers.compression.compress import Recipe, compress_model  # noqa: E402
from helpers.data import CalibrationSettings, calibration_samples, evaluation_windows  # noqa: E402
from helpers.evaluation.metrics import DenseReference, evaluate  # noqa: E402
from helpers.models import compressed_linears, linear_weight, load_model, set_linear_weight  # noqa: E402

from helpers.compression.quantizer import QuantSettings  # noqa: E402
from helpers.results import ResultsTable, run_key  # noqa: E402

DEGENERATE_NOTE = ("Note: SmolLM2-135M's reference weights are the dequantized Q4_1 GGUF checkpoint, i.e. already on "
                   "an asymmetric 4-bit grid in groups of 32: asymmetric 4-bit RTN with group size 32 reproduces them "
                   "exactly, so g32 is degenerate and not benchmarked. Errors here are measured against that "
                   "4-bit reference.")


@dataclass(frozen=True)
class Variant:
    label: str
    recipe: Recipe


def build_variants(args) -> list[Variant]:
    calibration = CalibrationSettings(n_samples=args.calibration_samples, seq_len=args.calibration_length,
                                      dataset=args.calibration_dataset)
    variants = []
    for bits in args.bits:
        for group in args.group_sizes:
            group_size = group or None
            where = f"g{group}" if group else "per-channel"
            for method in args.methods:
                orders = [False, True] if method == "gptq" and args.act_order == "both" else \
                    [args.act_order == "on" and method == "gptq"]
                for act_order in orders:
                    if act_order and bits not in args.act_order_bits:
                        continue
                    quant = QuantSettings(bits=bits, group_size=group_size, act_order=act_order)
                    label = f"{method} {bits}-bit {where}{' act-order' if act_order else ''}"
                    variants.append(Variant(label, Recipe(method=method, quant=quant, calibration=calibration)))
    for bits in args.protect_bits_for:
        for method in args.methods:
            group_size = args.protect_group_size
            quant = QuantSettings(bits=bits, group_size=group_size, protect_fraction=args.protect_fraction,
                                  protect_rule=args.protect_rule, protect_bits=8)
            label = (f"{method} {bits}-bit g{group_size} + {args.protect_fraction:.0%} groups at 8-bit "
                     f"({args.protect_rule})")
            variants.append(Variant(label, Recipe(method=method, quant=quant, calibration=calibration)))
    return variants


class PeakMemory:
    """Peak resident memory of this process (sampled every 20 ms) or peak allocated CUDA memory."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()

    def __enter__(self):
        self.peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil
        process = psutil.Process()
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, process.memory_info().rss)
                time.sleep(0.02)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--calibration-length", type=int, default=512)
    parser.add_argument("--calibration-dataset", default="c4")
    parser.add_argument("--eval-windows", type=int, default=4)
    parser.add_argument("--eval-length", type=int, default=512)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3, 2])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[0, 64],
                        help="0 = per output channel (SmolLM2's widths 576 and 1536 are not multiples of 128)")
    parser.add_argument("--methods", nargs="+", default=["rtn", "gptq"])
    parser.add_argument("--act-order", choices=["off", "on", "both"], default="both")
    parser.add_argument("--act-order-bits", type=int, nargs="+", default=[4, 3],
                        help="bit widths at which GPTQ act-order is also run (with --act-order both)")
    parser.add_argument("--protect-bits-for", type=int, nargs="*", default=[4, 3])
    parser.add_argument("--protect-fraction", type=float, default=0.02)
    parser.add_argument("--protect-rule", default="magnitude")
    parser.add_argument("--protect-group-size", type=int, default=64)
    parser.add_argument("--results", default="results/benchmark_quantization.jsonl")
    args = parser.parse_args(argv)

    variants = build_variants(args)  # bad settings fail here, before any model is loaded
    model, tokenizer = load_model(args.model, device=args.device)
    if args.model.startswith("smollm2"):
        print(DEGENERATE_NOTE)
    windows = evaluation_windows(tokenizer, seq_len=args.eval_length, max_windows=args.eval_windows)
    calibration = variants[0].recipe.calibration
    calibration_ids = calibration_samples(tokenizer, calibration)
    protocol = {"evaluation": f"wikitext2 test, first {windows.shape[0]} non-overlapping windows of {args.eval_length}",
                "calibration": f"{calibration.dataset} {calibration.n_samples} x {calibration.seq_len}, seed "
                               f"{calibration.seed}", "kl": "KL(dense || quantized), mean over positions and windows",
                "quantization": "simulated (dequantized float32 weights); all decoder-block linears",
                "model_source": model.info.source, "device": args.device, "torch": torch.__version__,
                "threads": torch.get_num_threads()}
    table = ResultsTable(args.results)
    start = time.perf_counter()
    reference = DenseReference(model, windows, progress=False)
    print(f"model={args.model}  {protocol['evaluation']}; calibration {protocol['calibration']}; "
          f"dense perplexity {reference.perplexity:.3f} ({time.perf_counter() - start:.1f} s)")
    table.append(model=args.model, method="dense", metric="perplexity", value=reference.perplexity,
                 protocol=protocol, key=run_key(model=args.model, method="dense", protocol=protocol))
    dense = {name: linear_weight(m).detach().clone() for name, m in compressed_linears(model).items()}

    header = f"| {'variant':<52} | {'ppl':>9} | {'mean KL':>8} | {'eff. bits':>9} | {'time s':>7} | {'peak MiB':>8} |"
    rows = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|",
            f"| {'dense (reference)':<52} | {reference.perplexity:>9.3f} | {0:>8.4f} | {32:>9.3f} | {'':>7} | {'':>8} |"]
    print("\n".join(rows), flush=True)
    for variant in variants:
        for name, module in compressed_linears(model).items():
            set_linear_weight(module, dense[name])
        with PeakMemory(args.device) as memory:
            t0 = time.perf_counter()
            report = compress_model(model, variant.recipe, calibration_ids=calibration_ids
                                    if variant.recipe.needs_calibration else None, progress=False)
            seconds = time.perf_counter() - t0
            result = evaluate(model, windows, reference, progress=False)
        bits = report.bits_per_weight
        fallbacks = sum(bool(v.get("fallback")) for v in report.layers.values())
        settings = variant.recipe.as_dict()
        if not variant.recipe.needs_calibration:
            settings["calibration"] = None
        common = dict(model=args.model, method=variant.recipe.method, settings=settings, protocol=protocol,
                      label=variant.label, key=run_key(model=args.model, settings=settings, protocol=protocol))
        for metric, value in {"perplexity": result.perplexity, "mean_kl": result.mean_kl(), "effective_bits": bits,
                              "compression_seconds": seconds, "peak_memory_bytes": memory.peak,
                              "cholesky_fallbacks": fallbacks}.items():
            table.append(metric=metric, value=value, **common)
        line = (f"| {variant.label:<52} | {result.perplexity:>9.3f} | {result.mean_kl():>8.4f} | {bits:>9.3f} | "
                f"{seconds:>7.1f} | {memory.peak / 2**20:>8.0f} |")
        if fallbacks:
            line += f" {fallbacks} layers fell back to RTN"
        rows.append(line)
        print(line, flush=True)
    print(f"\nrecorded in {table.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
