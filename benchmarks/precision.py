"""float32 vs bfloat16 on this CPU: the noise floor bf16 adds, and what it buys in time.

    python benchmarks/precision.py                                   # every section (about an hour on 2 cores)
    python benchmarks/precision.py --only floor --model smollm2-135m --context 8192 --windows 8
    python benchmarks/precision.py --report                          # the tables from what is recorded
    python benchmarks/precision.py --report --output benchmarks/results/precision.csv   # from the committed rows

Sections (each unit is recorded as it finishes in --output (.jsonl) and skipped when run again):
- floor: KL(float32 dense || bfloat16 dense) per token on WikiText-2 test windows, averaged over disjoint
  position bins [0, 64), [64, 256), [256, 1024), [1024, 4096), [4096, 8192), [8192, 16384), [16384, 32768);
  the unit is the window; also each precision's seconds per window (dense forward + chunked head) and the
  perplexity ratio. The bf16 model is the float32 model's weights rounded to bfloat16 (what `dtype="bfloat16"`
  loads); logits, NLL and KL are computed in float32 from each model's final hidden states.
- answers: the same short-answer questions answered greedily by the float32 and the bfloat16 dense model:
  the share of identical answers (Wilson interval over questions), each one's score, seconds per answer.
- timing: one window in each precision: the forward pass alone, and a compressed variant's whole window (forward +
  the float32 head twice, for NLL and KL), which is what a notebook pays per variant.
- compress: SparseGPT 50% through the engine with 64 x 512 C4 calibration tokens (the reference protocol's
  set), the model in each precision: seconds with the engine's split, the two-forward floor (reference_protocol.py's:
  two passes of the calibration set without the head) in the same
  precision, and KL of the result against the float32 dense model on 16 windows of 512 tokens (what compressing
  from bf16 activations costs in quality); each precision with the statistics gathered per linear (as before) and
  once per distinct input (the engine's default now).

CPU flags (lscpu: amx_bf16, avx512_bf16) and torch threads are printed and recorded with every row.
"""
from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_protocol import forward_floor  # noqa: E402  (the reference protocol's two-forward floor)

from helpers.compression.compress import Recipe, compress_model
from helpers.data import CalibrationSettings, calibration_samples, evaluation_windows
from helpers.evaluation.metrics import DenseReference, evaluate
from helpers.evaluation.uncertainty import t_interval, wilson_interval
from helpers.models import cpu_bf16_flags, load_model
from helpers.results import ResultsTable

EDGES = [0, 64, 256, 1024, 4096, 8192, 16384, 32768]
# (section, model, context or task, windows or examples). Gemma-3's windows cost ~8 min at 16K and more at 32K on
# 2 cores (its 262K-entry head runs in float32 twice per compressed window): 2 and 1 of them here.
DEFAULT_UNITS = [
    ("compress", "smollm2-135m", 512, 16),
    ("timing", "smollm2-135m", 8192, 1),
    ("floor", "smollm2-135m", 8192, 8),
    ("answers", "smollm2-135m", "nq_open_book", 300),
    ("answers", "gemma3-270m", "triviaqa_closed_book", 300),
    ("floor", "gemma3-270m", 16384, 2),
    ("floor", "gemma3-270m", 32768, 1),
]
QUICK_UNITS = [("compress", "tiny-llama", 32, 2), ("floor", "tiny-llama", 128, 2), ("timing", "tiny-llama", 128, 1),
               ("answers", "tiny-llama", "triviaqa_closed_book", 4)]  # a check of the script, seconds


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def bf16_copy(model):
    twin = copy.deepcopy(model).to(torch.bfloat16)
    twin.info = model.info
    return twin


def edges_for(context: int) -> list[int]:
    return [e for e in EDGES if e < context] + [context]


def floor_unit(table, model_name: str, context: int, windows: int, protocol: dict) -> None:
    model, tokenizer = load_model(model_name)
    twin = bf16_copy(model)
    data = evaluation_windows(tokenizer, seq_len=context, max_windows=windows)
    edges = edges_for(context)
    for index in range(data.shape[0]):
        key = f"floor/{model_name}/{context}/{index}"
        if table.done(key):
            print(f"{key}: already recorded, skipped")
            continue
        window = data[index:index + 1]
        start = time.perf_counter()
        reference = DenseReference(model, window, progress=False)
        seconds_fp32 = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluate(twin, window, reference, progress=False)
        seconds_bf16 = time.perf_counter() - start
        kl = result.kl[0].double()
        bins = {f"[{a}, {b})": float(kl[a:b].mean()) for a, b in zip(edges, edges[1:])}
        settings = {"context": context, "window": index}
        common = dict(model=model_name, method="bfloat16 vs float32", dataset="wikitext2", settings=settings,
                      protocol=protocol)
        for label, value in bins.items():
            table.append(**common, metric="kl_bin", value=value, bin=label)
        table.append(**common, metric="seconds_fp32", value=seconds_fp32)
        table.append(**common, metric="seconds_bf16", value=seconds_bf16)
        table.append(**common, metric="ppl_ratio", value=result.perplexity / reference.perplexity)
        table.append(**common, metric="peak_rss_gib", value=peak_rss_gib(), key=key)
        print(f"{key}: float32 {seconds_fp32:.1f} s, bf16 {seconds_bf16:.1f} s ({seconds_fp32 / seconds_bf16:.2f}x); "
              f"KL by bin " + ", ".join(f"{k} {v:.3g}" for k, v in bins.items()), flush=True)


def timing_unit(table, model_name: str, context: int, protocol: dict) -> None:
    """Seconds of one window's work in each precision, split: the forward pass alone (final hidden states), and
    what a compressed variant costs in a notebook (forward + the float32 head twice for NLL and KL)."""
    from helpers.evaluation.metrics import final_hidden

    key = f"timing/{model_name}/{context}"
    if table.done(key):
        print(f"{key}: already recorded, skipped")
        return
    model, tokenizer = load_model(model_name)
    window = evaluation_windows(tokenizer, seq_len=context, max_windows=1)
    reference = DenseReference(model, window, progress=False)
    seconds = {}
    for label, candidate in (("fp32", model), ("bf16", bf16_copy(model))):
        with torch.no_grad():
            start = time.perf_counter()
            final_hidden(candidate, window)
            seconds[f"forward_{label}"] = time.perf_counter() - start
        start = time.perf_counter()
        evaluate(candidate, window, reference, progress=False)
        seconds[f"variant_{label}"] = time.perf_counter() - start
    common = dict(model=model_name, method="bfloat16 vs float32", dataset="wikitext2", settings={"context": context},
                  protocol=protocol)
    for name, value in seconds.items():
        table.append(**common, metric=f"seconds_{name}", value=value)
    table.append(**common, metric="peak_rss_gib", value=peak_rss_gib(), key=key)
    print(f"{key}: forward float32 {seconds['forward_fp32']:.1f} s, bf16 {seconds['forward_bf16']:.1f} s "
          f"({seconds['forward_fp32'] / seconds['forward_bf16']:.2f}x); a variant's window (forward + float32 head for "
          f"NLL and KL) {seconds['variant_fp32']:.1f} s vs {seconds['variant_bf16']:.1f} s "
          f"({seconds['variant_fp32'] / seconds['variant_bf16']:.2f}x)", flush=True)


def answers_unit(table, model_name: str, task: str, examples: int, protocol: dict) -> None:
    from helpers.evaluation.tasks import RetrievalQASettings
    from helpers.evaluation.tasks.generation import GenerationSettings
    from helpers.evaluation.tasks.retrieval import evaluate_retrieval_qa

    key = f"answers/{model_name}/{task}/{examples}"
    if table.done(key):
        print(f"{key}: already recorded, skipped")
        return
    model, tokenizer = load_model(model_name)
    short = GenerationSettings(max_new_tokens=12, stop_at_newline=True, progress=False)
    settings = RetrievalQASettings(dataset="nq_open_oracle" if task == "nq_open_book" else "triviaqa",
                                   open_book=task == "nq_open_book", generation=short, seed=0)
    results = {}
    for label, candidate in (("fp32", model), ("bf16", bf16_copy(model))):
        start = time.perf_counter()
        result = evaluate_retrieval_qa(candidate, tokenizer, examples, settings)
        results[label] = (result, (time.perf_counter() - start) / examples)
    pairs = list(zip(results["fp32"][0].records, results["bf16"][0].records))
    same = sum(a["generation"].strip() == b["generation"].strip() for a, b in pairs)
    low, high = wilson_interval(same, len(pairs))
    common = dict(model=model_name, method="bfloat16 vs float32", dataset=task,
                  settings={"examples": len(pairs), "max_new_tokens": 12}, protocol=protocol)
    for label, (result, seconds) in results.items():
        table.append(**common, metric=f"score_{label}", value=result.aggregate["contains"])
        table.append(**common, metric=f"seconds_per_answer_{label}", value=seconds)
    table.append(**common, metric="same_answer", value=same / len(pairs), low=low, high=high, key=key)
    print(f"{key}: identical answers {same}/{len(pairs)} = {same / len(pairs):.3f} [{low:.3f}, {high:.3f}]; score "
          f"float32 {results['fp32'][0].aggregate['contains']:.3f} bf16 {results['bf16'][0].aggregate['contains']:.3f}; "
          f"seconds per answer {results['fp32'][1]:.2f} vs {results['bf16'][1]:.2f}", flush=True)


def compress_unit(table, model_name: str, eval_len: int, windows: int, protocol: dict,
                  calibration: tuple[int, int] = (64, 512)) -> None:
    model, tokenizer = load_model(model_name)
    ids = calibration_samples(tokenizer, CalibrationSettings(n_samples=calibration[0], seq_len=calibration[1], seed=0))
    data = evaluation_windows(tokenizer, seq_len=eval_len, max_windows=windows)
    reference = DenseReference(model, data, progress=False)
    for label, share in (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)):
        key = f"compress/{model_name}/sparsegpt 50%/{label}" + ("/shared statistics" if share else "")
        if table.done(key):
            print(f"{key}: already recorded, skipped")
            continue
        candidate = copy.deepcopy(model) if label == "fp32" else bf16_copy(model)
        floor = forward_floor(candidate, ids)
        report = compress_model(candidate, Recipe(method="sparsegpt", sparsity=0.5), calibration_ids=ids,
                                progress=False, share_statistics=share)
        result = evaluate(candidate, data, reference, progress=False)
        common = dict(model=model_name, method=f"sparsegpt 50% from {label}" + (", statistics once per input" if share
                                                                               else ", statistics per linear"),
                      dataset=f"c4 {calibration[0]} x {calibration[1]}",
                      settings={"precision": label, "shared_statistics": share,
                                "eval": f"wikitext2 {windows} x {eval_len}"}, protocol=protocol)
        for name, value in {"seconds": report.seconds, **report.timings, "floor_seconds": floor,
                            "mean_kl_vs_fp32_dense": result.mean_kl(), "perplexity": result.perplexity}.items():
            table.append(**common, metric=name, value=value)
        table.append(**common, metric="time_over_floor", value=report.seconds / floor, key=key)
        print(f"{key}: {report.seconds:.1f} s ({report.seconds / floor:.2f}x the two-forward floor {floor:.1f} s; "
              + ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items())
              + f"); KL vs the float32 dense model {result.mean_kl():.4f}, perplexity {result.perplexity:.2f} "
              f"(dense {reference.perplexity:.2f})", flush=True)
        del candidate


def read_rows(path: str | Path):
    """The recorded rows as one frame: the JSON-lines table (as written) or its CSV export (as committed)."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path) if path.exists() else pd.DataFrame()
    return ResultsTable(path).frame()


def report(frame) -> None:
    """Print the recorded units as tables (means with 95% t-intervals over windows)."""
    import pandas as pd

    if frame.empty:
        print("nothing recorded yet")
        return
    floor = frame[frame.metric == "kl_bin"]
    if not floor.empty:
        print("\nKL(float32 dense || bfloat16 dense), nats per token, mean over windows [95% t-interval]:\n")
        print("| model | context | windows | bin | KL | interval |\n|---|---|---|---|---|---|")
        for (model, context, label), group in floor.groupby(["model", "settings.context", "bin"], sort=False):
            values = group.value.to_numpy()
            low, high = t_interval(values) if len(values) >= 5 else (values.min(), values.max())
            name = "t" if len(values) >= 5 else "min-max"
            print(f"| {model} | {context} | {len(values)} | {label} | {values.mean():.3g} | {name} [{low:.3g}, {high:.3g}] |")
        timing = frame[frame.metric.isin(["seconds_fp32", "seconds_bf16"])]
        print("\n| model | context | windows | s per window float32 | s per window bf16 | speed-up |\n|---|---|---|---|---|---|")
        for (model, context), group in timing.groupby(["model", "settings.context"], sort=False):
            fp32 = group[group.metric == "seconds_fp32"].value.mean()
            bf16 = group[group.metric == "seconds_bf16"].value.mean()
            print(f"| {model} | {context} | {len(group) // 2} | {fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.2f}x |")
    timing = frame[frame.metric.str.startswith(("seconds_forward", "seconds_variant"))]
    if not timing.empty:
        print("\n| model | context | forward s float32 | forward s bf16 | speed-up | variant window s float32 | "
              "variant window s bf16 | speed-up |\n|---|---|---|---|---|---|---|---|")
        for (model, context), group in timing.groupby(["model", "settings.context"], sort=False):
            v = group.set_index("metric").value
            print(f"| {model} | {int(context)} | {v['seconds_forward_fp32']:.1f} | {v['seconds_forward_bf16']:.1f} | "
                  f"{v['seconds_forward_fp32'] / v['seconds_forward_bf16']:.2f}x | {v['seconds_variant_fp32']:.1f} | "
                  f"{v['seconds_variant_bf16']:.1f} | {v['seconds_variant_fp32'] / v['seconds_variant_bf16']:.2f}x |")
    answers = frame[frame.metric.str.startswith(("same_answer", "score_", "seconds_per_answer"))]
    if not answers.empty:
        print("\n| model | task | n | identical answers [95% Wilson] | score fp32 | score bf16 | s/answer fp32 | s/answer bf16 |")
        print("|---|---|---|---|---|---|---|---|")
        for (model, task), group in answers.groupby(["model", "dataset"], sort=False):
            value = group.set_index("metric").value
            same = group[group.metric == "same_answer"].iloc[0]
            print(f"| {model} | {task} | {same['settings.examples']} | {same.value:.3f} [{same.low:.3f}, {same.high:.3f}] | "
                  f"{value['score_fp32']:.3f} | {value['score_bf16']:.3f} | {value['seconds_per_answer_fp32']:.2f} | "
                  f"{value['seconds_per_answer_bf16']:.2f} |")
    compression = frame[frame.method.str.startswith("sparsegpt")]
    if not compression.empty:
        wide = compression.pivot_table(index="method", columns="metric", values="value", sort=False)
        print("\n" + pd.DataFrame(wide).to_string(float_format=lambda v: f"{v:.4g}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["floor", "answers", "compress", "timing"], action="append")
    parser.add_argument("--model", default=None, help="with --only: this model (default: every default unit's)")
    parser.add_argument("--context", type=int, default=None, help="floor: tokens per window")
    parser.add_argument("--windows", type=int, default=None, help="floor: windows; answers: questions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="results/benchmarks/precision.jsonl")
    parser.add_argument("--quick", action="store_true", help="tiny-llama, small sizes: a check of the script")
    parser.add_argument("--report", action="store_true",
                        help="print the tables of what is recorded (--output: the .jsonl or its .csv export), run nothing")
    parser.add_argument("--export", default=None, help="also write every recorded row to this CSV (what is committed)")
    args = parser.parse_args(argv)
    if args.report:
        report(read_rows(args.output))
        return 0
    table = ResultsTable(args.output)
    torch.set_num_threads(args.threads)
    flags = cpu_bf16_flags()
    protocol = {"threads": args.threads, "cpu_bf16_flags": sorted(flags), "torch": torch.__version__,
                "load_average": os.getloadavg()[0]}
    print(f"CPU bf16 flags: {', '.join(sorted(flags)) or 'none'}; torch {torch.__version__}; {args.threads} threads")
    for section, model_name, size, count in QUICK_UNITS if args.quick else DEFAULT_UNITS:
        if args.only and section not in args.only or args.model and model_name != args.model:
            continue
        if section == "floor":
            floor_unit(table, model_name, args.context or size, args.windows or count, protocol)
        elif section == "timing":
            timing_unit(table, model_name, args.context or size, protocol)
        elif section == "answers":
            answers_unit(table, model_name, size, args.windows or count, protocol)
        else:
            compress_unit(table, model_name, size, count, protocol, calibration=(4, 32) if args.quick else (64, 512))
    frame = table.frame()
    report(frame)
    if args.export:
        frame.to_csv(args.export, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
