"""The reference repositories' protocol on SmolLM2-135M: one table a user of SparseGPT / GPTQ / Wanda can
hold against their own numbers.

    python benchmarks/reference_protocol.py                       # the protocol below (~1.5 h on 2 cores)
    python benchmarks/reference_protocol.py --windows 8 --only "gptq 3-bit"   # a subset, fewer windows
    python benchmarks/reference_protocol.py --model tiny-llama --windows 2 --samples 4 --seq-len 64   # seconds

Protocol (shared/docs/reference-protocols.md): 64 x 512 calibration tokens from the local C4 subset,
drawn as SparseGPT's get_c4 does (random.seed(0); random documents until one is longer than 512
tokens, then a random 512-token window: helpers.data.calibration_samples); WikiText-2 test joined
with blank lines, the first 64 non-overlapping windows of 1,024 tokens; float32, 2 threads, damping
0.01, blocks of 128 columns, per-channel asymmetric min-max grids unless the row says otherwise.

Per configuration: perplexity, mean KL(dense || compressed), achieved sparsity, bits per weight
(helpers.compression.storage), compression seconds split into the calibration forward (capturing
block 0's inputs), statistics, solve and propagation, peak resident memory while compressing, and
`time / floor`: compression time over a floor measured in the same run, two forward passes of the
calibration set through the whole model (the work every layer-wise method must do at least: one
pass for statistics, one to propagate). Rows go through helpers.experiments.core.Runner into
`results/benchmarks/reference_protocol.jsonl` (a killed run resumes where it stopped); the table is
printed and written to `results/benchmarks/reference_protocol.csv`.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pruning import PeakRSS  # noqa: E402  (the same RSS sampler as the pruning benchmark)

from helpers.compression.compress import compress_model  # noqa: E402
from helpers.data import CalibrationSettings, calibration_samples, evaluation_windows  # noqa: E402
from helpers.evaluation.metrics import DenseReference, evaluate, final_hidden  # noqa: E402
from helpers.experiments.core import Measurement, Runner, Variant, latest_frame, parse_variant  # noqa: E402
from helpers.models import load_model  # noqa: E402
from helpers.results import ResultsTable  # noqa: E402

CONFIGS = [  # (label, spec): the reference repositories' configurations
    ("magnitude 50%", {"method": "magnitude", "sparsity": 0.5}),
    ("wanda 50%", {"method": "wanda", "sparsity": 0.5}),
    ("sparsegpt 50%", {"method": "sparsegpt", "sparsity": 0.5}),
    ("wanda 2:4", {"method": "wanda", "pattern": "2:4"}),
    ("sparsegpt 2:4", {"method": "sparsegpt", "pattern": "2:4"}),
    ("sparsegpt 70%", {"method": "sparsegpt", "sparsity": 0.7}),
    ("sparsegpt 50% + 4-bit", {"method": "sparsegpt", "sparsity": 0.5, "bits": 4}),
    ("rtn 4-bit", {"method": "rtn", "bits": 4}),
    ("rtn 3-bit", {"method": "rtn", "bits": 3}),
    ("gptq 4-bit", {"method": "gptq", "bits": 4}),
    ("gptq 3-bit", {"method": "gptq", "bits": 3}),
    ("gptq 4-bit g128 act-order", {"method": "gptq", "bits": 4, "group_size": 128, "act_order": True}),
    ("gptq 4-bit g128 act-order fit=updated", {"method": "gptq", "bits": 4, "group_size": 128, "act_order": True,
                                               "group_fit": "updated"}),
    ("gptq 4-bit g64 fit=block_start", {"method": "gptq", "bits": 4, "group_size": 64}),
    ("gptq 4-bit g64 fit=updated", {"method": "gptq", "bits": 4, "group_size": 64, "group_fit": "updated"}),
    ("gptq 4-bit true-sequential", {"method": "gptq", "bits": 4, "true_sequential": True}),
]
SEED_CONFIG = "gptq 3-bit"  # also run with calibration seeds 1 and 2: the spread is the noise of this regime


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=64, help="calibration sequences")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence")
    parser.add_argument("--eval-len", type=int, default=1024, help="tokens per evaluation window")
    parser.add_argument("--windows", type=int, default=64, help="evaluation windows (the first N)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2],
                        help=f"extra calibration seeds for {SEED_CONFIG!r} (empty: none)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these labels (default: all)")
    parser.add_argument("--output", default="results/benchmarks/reference_protocol")
    args = parser.parse_args(argv)
    known = [label for label, _ in CONFIGS]
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        parser.error(f"--only {unknown}: unknown labels; choose from {known}")
    if min(args.samples, args.seq_len, args.eval_len, args.windows, args.threads) < 1:
        parser.error("--samples, --seq-len, --eval-len, --windows and --threads must be positive")
    return args


def build_variants(args, calibration_ids: torch.Tensor, peaks: dict, seeds: dict) -> list[Variant]:
    """Every configuration as a Variant whose compression is timed and memory-sampled."""
    specs = [(label, spec, 0) for label, spec in CONFIGS if args.only is None or label in args.only]
    if SEED_CONFIG in {label for label, _, _ in specs}:
        spec = dict(CONFIGS)[SEED_CONFIG]
        specs += [(f"{SEED_CONFIG} (calibration seed {seed})", spec, seed) for seed in args.seeds]
    variants = []
    for label, spec, seed in specs:
        calibration = CalibrationSettings(dataset="c4", n_samples=args.samples, seq_len=args.seq_len, seed=seed)
        parsed = parse_variant({**spec, "label": label}, calibration)
        recipe = parsed.recipe

        def compress(model, runner, recipe=recipe, label=label, seed=seed):
            ids = calibration_ids if seed == 0 else seeds[seed]
            with PeakRSS() as peak:
                report = compress_model(model, recipe, calibration_ids=ids if recipe.needs_calibration else None,
                                        device=args.device, progress=False)
            peaks[label] = peak.peak
            return report

        variants.append(Variant(label, recipe, settings=parsed.settings, family=parsed.family, compress=compress))
    return variants


def forward_floor(model, ids: torch.Tensor, batch_size: int = 8) -> float:
    """Seconds of two forward passes of the calibration set through the whole model (no head)."""
    start = time.perf_counter()
    for _ in range(2):
        for batch in ids.split(batch_size):
            final_hidden(model, batch)
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=args.device)
    windows = evaluation_windows(tokenizer, seq_len=args.eval_len, max_windows=args.windows)
    base = CalibrationSettings(dataset="c4", n_samples=args.samples, seq_len=args.seq_len, seed=0)
    calibration_ids = calibration_samples(tokenizer, base)
    seeds = {seed: calibration_samples(tokenizer, CalibrationSettings(dataset="c4", n_samples=args.samples,
                                                                      seq_len=args.seq_len, seed=seed))
             for seed in args.seeds}
    floor = forward_floor(model, calibration_ids)
    load = os.getloadavg()
    protocol = {"model_source": model.info.source, "calibration": f"c4 {args.samples} x {args.seq_len}, get_c4 loop",
                "evaluation": f"wikitext2 test joined by blank lines, first {windows.shape[0]} x {args.eval_len}",
                "dtype": "float32", "threads": args.threads, "device": args.device, "damping": 0.01,
                "block_size": 128, "grid": "per-channel asymmetric min-max unless the label says otherwise"}
    table = ResultsTable(f"{args.output}.jsonl")
    started = time.perf_counter()
    reference = DenseReference(model, windows, progress=False)
    print(f"{args.model}: dense pass {time.perf_counter() - started:.0f} s over {windows.numel()} tokens; "
          f"floor (2 calibration forwards) {floor:.1f} s; load average {load[0]:.1f}")
    peaks: dict[str, float] = {}

    def measure(point):
        result = evaluate(point.model, windows, reference, progress=False)
        rows = [{"metric": "perplexity", "value": result.perplexity}]
        if point.report is not None:
            rows += [{"metric": "mean_kl", "value": result.mean_kl()},
                     {"metric": "seconds_compression", "value": point.report.seconds},
                     {"metric": "time_over_floor", "value": point.report.seconds / floor},
                     {"metric": "peak_rss_mib", "value": peaks.get(point.variant.label, float("nan"))}]
            rows += [{"metric": key, "value": value} for key, value in point.report.timings.items()]
        return rows

    runner = Runner(model, table, args.model, protocol, device=args.device, progress=False)
    variants = [Variant.dense()] + build_variants(args, calibration_ids, peaks, seeds)
    runner.run(variants, [Measurement("reference_protocol", measure, dataset="wikitext2")],
               extra={"floor_seconds": floor, "load_average_start": load[0]})
    frame = latest_frame(table, model=args.model, protocol=protocol, labels=[v.label for v in variants])
    values = frame.pivot_table(index="label", columns="metric", values="value", sort=False)
    columns = frame.groupby("label", sort=False)[["achieved_sparsity", "bits_per_weight"]].first()
    order = [v.label for v in variants if v.label in values.index]
    wanted = ["perplexity", "mean_kl", "achieved_sparsity", "bits_per_weight", "seconds_compression",
              "seconds_capture", "seconds_statistics", "seconds_solve", "seconds_propagation", "peak_rss_mib",
              "time_over_floor"]
    summary = values.join(columns).reindex(order)[[c for c in wanted if c in values.join(columns)]]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{args.output}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", *summary.columns])
        for label, row in summary.iterrows():
            writer.writerow([label, *[f"{v:.6g}" for v in row]])
    print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"load average at the end {os.getloadavg()[0]:.1f}; rows in {table.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
