"""Pruning benchmark: dense vs magnitude / Wanda / SparseGPT at 50% unstructured, 2:4 and 4:8, and
SparseGPT at 70%, on one model under a stated CPU protocol.

    python benchmarks/pruning.py                                  # SmolLM2-135M, 16 x 512 calibration, 8 x 512 eval
    python benchmarks/pruning.py --calibration-samples 128 --calibration-seq-len 2048 --seq-len 2048 --eval-windows 40

Per configuration: WikiText-2 perplexity, mean KL(dense || compressed) over all positions and
windows, achieved sparsity of the decoder-block linears, compression wall time (compress_model,
including the layer-wise calibration passes; calibration sampling is done once and shared), and
memory. Memory is the process's resident set size (RSS) sampled every 10 ms from /proc/self/statm
while compress_model runs: 'peak_rss_mib' is the peak, 'extra_rss_mib' the peak minus the RSS just
before (what compression itself needed); tracemalloc is not used because it does not see torch's
tensor allocations. Results go to <output>.csv (one row per configuration) and <output>.json (rows
plus the protocol), rewritten after every configuration so an interrupted run keeps what it did.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.data import CalibrationSettings, calibration_samples, evaluation_windows
from helpers.compression.storage import sparsity_report
from helpers.evaluation.metrics import DenseReference, evaluate
from helpers.models import load_model
from helpers.results import environment

CONFIGS = [  # (label, method, sparsity, pattern)
    ("magnitude 50%", "magnitude", 0.5, "unstructured"),
    ("magnitude 2:4", "magnitude", 0.0, "2:4"),
    ("magnitude 4:8", "magnitude", 0.0, "4:8"),
    ("wanda 50%", "wanda", 0.5, "unstructured"),
    ("wanda 2:4", "wanda", 0.0, "2:4"),
    ("wanda 4:8", "wanda", 0.0, "4:8"),
    ("sparsegpt 50%", "sparsegpt", 0.5, "unstructured"),
    ("sparsegpt 2:4", "sparsegpt", 0.0, "2:4"),
    ("sparsegpt 4:8", "sparsegpt", 0.0, "4:8"),
    ("sparsegpt 70%", "sparsegpt", 0.7, "unstructured"),
]


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class PeakRSS:
    """Samples the resident set size in a background thread; .peak after the with-block."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)

    def __enter__(self):
        self.before = self.peak = rss_mib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calibration-dataset", default="c4")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--calibration-seq-len", type=int, default=512)
    parser.add_argument("--dataset", default="wikitext2", help="evaluation text")
    parser.add_argument("--seq-len", type=int, default=512, help="evaluation window length")
    parser.add_argument("--eval-windows", type=int, default=8, help="first N non-overlapping windows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a shared, oversubscribed CPU two threads made a "
                             "512-token forward 3x and the OBS loop 70x slower)")
    parser.add_argument("--only", nargs="*", default=None, help="run only configurations whose label contains one of these")
    parser.add_argument("--output", default="results/benchmarks/pruning", help="path stem for .csv and .json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    calibration = CalibrationSettings(dataset=args.calibration_dataset, n_samples=args.calibration_samples,
                                      seq_len=args.calibration_seq_len, seed=args.seed)
    configs = [c for c in CONFIGS if args.only is None or any(o in c[0] for o in args.only)]
    recipes = {label: Recipe(method=method, sparsity=sparsity, pattern=pattern, seed=args.seed,
                             calibration=calibration) for label, method, sparsity, pattern in configs}
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)

    model, tokenizer = load_model(args.model)
    windows = evaluation_windows(tokenizer, dataset=args.dataset, seq_len=args.seq_len, max_windows=args.eval_windows)
    protocol = {"model": args.model, "model_source": model.info.source, "dtype": "float32", "device": "cpu",
                "threads": args.threads, "cpu_count": os.cpu_count(),
                "calibration": calibration.as_dict(), "calibration_shared_across_methods": True,
                "evaluation": {"dataset": args.dataset, "seq_len": args.seq_len, "windows": int(windows.shape[0]),
                               "tokens": int(windows.numel()), "windows_rule": "non-overlapping, tail dropped"},
                "perplexity": "exp(mean token NLL)", "kl": "KL(dense || compressed) per position, mean",
                "memory": "RSS sampled every 10 ms from /proc/self/statm during compress_model",
                "compression_seconds": "wall time of compress_model (calibration passes + solves)",
                "versions": environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.perf_counter()
    reference = DenseReference(model, windows, progress=False)
    rows = [{"label": "dense", "method": "dense", "sparsity_target": 0.0, "pattern": "-",
             "perplexity": reference.perplexity, "mean_kl": 0.0,
             "achieved_sparsity": sparsity_report(model)["total"], "compression_seconds": 0.0,
             "evaluation_seconds": time.perf_counter() - start, "peak_rss_mib": rss_mib(), "extra_rss_mib": 0.0,
             "obs_error_total": None, "fallbacks": 0, "warnings": 0}]
    print_row(rows[-1], header=True)
    needs_calibration = any(r.needs_calibration for r in recipes.values())
    start = time.perf_counter()
    calibration_ids = calibration_samples(tokenizer, calibration) if needs_calibration else None
    protocol["calibration_sampling_seconds"] = time.perf_counter() - start
    write(output, protocol, rows)

    for label, method, sparsity, pattern in configs:
        recipe = recipes[label]
        model, _ = load_model(args.model)  # a fresh dense copy (0.3 s from the float cache)
        with PeakRSS() as memory:
            report = compress_model(model, recipe, calibration_ids=calibration_ids if recipe.needs_calibration
                                    else None, progress=False)
        start = time.perf_counter()
        result = evaluate(model, windows, reference, progress=False)
        summary = report.obs_error_summary()
        rows.append({"label": label, "method": method, "sparsity_target": recipe.sparsity_for(""), "pattern": pattern,
                     "perplexity": result.perplexity, "mean_kl": result.mean_kl(),
                     "achieved_sparsity": report.achieved_sparsity, "compression_seconds": report.seconds,
                     "evaluation_seconds": time.perf_counter() - start, "peak_rss_mib": memory.peak,
                     "extra_rss_mib": memory.peak - memory.before,
                     "obs_error_total": summary["total"] if summary else None,
                     "fallbacks": summary["fallbacks"] if summary else 0, "warnings": len(report.warnings)})
        print_row(rows[-1])
        write(output, protocol, rows)
        del model
    protocol["max_rss_mib_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write(output, protocol, rows)
    print(f"protocol: {args.model}, calibration {args.calibration_samples} x {args.calibration_seq_len} tokens of "
          f"{args.calibration_dataset} (seed {args.seed}), evaluation {windows.shape[0]} x {args.seq_len} tokens of "
          f"{args.dataset}, {args.threads} thread(s); written to {output}.csv/.json")
    return 0


COLUMNS = [("label", "{:<15}"), ("perplexity", "{:>11.3f}"), ("mean_kl", "{:>9.4f}"), ("achieved_sparsity", "{:>9.4f}"),
           ("compression_seconds", "{:>9.1f}"), ("peak_rss_mib", "{:>10.0f}"), ("extra_rss_mib", "{:>10.0f}")]
HEADERS = ["config", "perplexity", "mean KL", "sparsity", "comp. s", "peak MiB", "extra MiB"]


def print_row(row: dict, header: bool = False) -> None:
    if header:
        print("".join(f"{h:<15}" if i == 0 else f"{h:>{11 if i == 1 else 10 if i >= 5 else 9}}" for i, h in enumerate(HEADERS)))
    print("".join(fmt.format(row[key]) for key, fmt in COLUMNS), flush=True)


def write(output: Path, protocol: dict, rows: list[dict]) -> None:
    output.with_suffix(".json").write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=1))
    with open(output.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
