"""Command line: `python -m helpers eval ...` and `python -m helpers compress ...`.

    python -m helpers eval --model smollm2-135m --seq-len 1024 --max-windows 16
    python -m helpers compress --model smollm2-135m --method sparsegpt --sparsity 0.5 --pattern 2:4 \
        --calibration-samples 128 --calibration-seq-len 2048 --seq-len 1024 --max-windows 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..data import evaluation_windows
from ..compression.storage import sparsity_report
from ..evaluation.metrics import DenseReference, evaluate
from ..models import load_model
from ..results import ResultsTable

DEFAULT_RESULTS = Path("results") / "results.jsonl"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="offline alias (smollm2-135m, gemma3-270m), tiny-<family>, hub id or local folder")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="wikitext2", help="evaluation text: wikitext2 | c4")
    parser.add_argument("--token-file", default=None, help="saved token ids to evaluate on instead of a dataset")
    parser.add_argument("--seq-len", type=int, default=1024, help="window length in tokens (non-overlapping)")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="evaluate only the first N windows (default: the whole split)")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="JSON-lines results table to append to")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def eval_protocol(args) -> dict:
    return {"dataset": args.token_file or args.dataset, "seq_len": args.seq_len, "max_windows": args.max_windows,
            "windows": "non-overlapping, tail dropped", "ppl": "exp(mean token NLL)"}


def record_evaluation(table: ResultsTable, args, method: str, settings: dict, result, seconds: float,
                      with_kl: bool) -> None:
    protocol = eval_protocol(args)
    common = dict(model=args.model, method=method, settings=settings, dataset=protocol["dataset"],
                  protocol=protocol, seconds=seconds)
    table.append(metric="perplexity", value=result.perplexity, **common)
    if with_kl:
        table.append(metric="mean_kl", value=result.mean_kl(), **common)


def command_eval(args) -> int:
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    windows = evaluation_windows(tokenizer, dataset=args.dataset, seq_len=args.seq_len,
                                 max_windows=args.max_windows, token_file=args.token_file)
    start = time.perf_counter()
    result = evaluate(model, windows, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    table = ResultsTable(args.results)
    record_evaluation(table, args, "dense", {}, result, seconds, with_kl=False)
    print(f"model={args.model} dataset={args.token_file or args.dataset} seq_len={args.seq_len} "
          f"windows={windows.shape[0]} tokens={windows.numel()}")
    print(f"perplexity={result.perplexity:.4f} ({seconds:.1f} s); recorded in {table.path}")
    return 0


# --------------------------------------------------------------------------- compress
def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    from ..compression.compress import METHODS

    group = parser.add_argument_group("compression (helpers.compression.compress.Recipe)")
    group.add_argument("--method", required=True, choices=sorted(METHODS), help="compression method")
    group.add_argument("--sparsity", type=float, default=0.0, help="fraction of weights to prune, in [0, 1)")
    group.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M such as 2:4 (implies N/M)")
    group.add_argument("--bits", type=int, default=None, help="quantize to this many bits (rtn, gptq, sparsegpt joint)")
    group.add_argument("--group-size", type=int, default=None, help="quantization group size (default: per channel)")
    group.add_argument("--symmetric", action="store_true", help="symmetric quantization grid")
    group.add_argument("--act-order", action="store_true", help="GPTQ: columns by descending Hessian diagonal")
    group.add_argument("--true-sequential", action="store_true",
                       help="compress each block's sub-groups in turn ([q,k,v] -> [o] -> [gate,up] -> [down]), "
                            "statistics re-gathered after each (the reference LLaMA drivers' option)")
    group.add_argument("--damping", type=float, default=0.01, help="OBS damping, a fraction of mean(diag H)")
    group.add_argument("--block-size", type=int, default=128, help="OBS block of columns (mask and lazy updates)")
    group.add_argument("--seed", type=int, default=0, help="seed of the calibration sample and random pruning")
    group.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward pass")
    calibration = parser.add_argument_group("calibration (helpers.data.CalibrationSettings)")
    calibration.add_argument("--calibration-dataset", default="c4", help="c4 | wikitext2")
    calibration.add_argument("--calibration-samples", type=int, default=128, help="number of calibration sequences")
    calibration.add_argument("--calibration-seq-len", type=int, default=2048, help="tokens per calibration sequence")
    calibration.add_argument("--calibration-token-file", default=None,
                             help="saved [samples, tokens] calibration ids instead of sampling a dataset")


def compress_spec(args) -> dict:
    """The variant spec of the command-line settings (the same spec a notebook writes)."""
    spec = {"method": args.method, "sparsity": args.sparsity, "pattern": args.pattern, "damping": args.damping,
            "block_size": args.block_size, "seed": args.seed, "true_sequential": args.true_sequential}
    if args.bits is not None:
        spec.update(bits=args.bits, group_size=args.group_size, symmetric=args.symmetric, act_order=args.act_order)
    elif args.group_size is not None or args.symmetric or args.act_order:
        raise ValueError("--group-size, --symmetric and --act-order describe a quantization grid; "
                         "give --bits too (e.g. --bits 4).")
    return spec


def compress_variant(args):
    """The validated Variant of the command-line settings, through helpers.experiments.core.parse_variant
    (raises ValueError naming a bad value)."""
    from ..data import CalibrationSettings
    from ..experiments.core import parse_variant

    calibration = CalibrationSettings(dataset=args.calibration_dataset, n_samples=args.calibration_samples,
                                      seq_len=args.calibration_seq_len, seed=args.seed,
                                      token_file=args.calibration_token_file)
    return parse_variant(compress_spec(args), calibration)


def check_eval_settings(args) -> None:
    """Window settings and input files, checked before anything heavy is loaded."""
    if args.seq_len < 2:
        raise ValueError(f"seq_len={args.seq_len}; a perplexity window needs at least 2 tokens (e.g. 1024).")
    if args.max_windows is not None and args.max_windows < 1:
        raise ValueError(f"max_windows={args.max_windows}; expected a positive number or leave it out (all).")
    if args.dataset not in ("wikitext2", "c4"):
        raise ValueError(f"evaluation dataset={args.dataset!r}; expected 'wikitext2' or 'c4' (or --token-file).")
    for option, path in (("--token-file", args.token_file),
                         ("--calibration-token-file", getattr(args, "calibration_token_file", None))):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{option} {path} does not exist; give the path of saved token ids.")


def command_compress(args) -> int:
    from ..compression.compress import check_recipe
    from ..experiments.core import Measurement, Runner, Variant, latest_frame

    variant = compress_variant(args)
    recipe = variant.recipe
    check_eval_settings(args)
    progress = not args.no_progress
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    check_recipe(model, recipe)  # the recipe against the model's shapes, before the dense reference pass
    windows = evaluation_windows(tokenizer, dataset=args.dataset, seq_len=args.seq_len,
                                 max_windows=args.max_windows, token_file=args.token_file)
    protocol = {**eval_protocol(args), "windows_evaluated": int(windows.shape[0]), "tokens": int(windows.numel()),
                "kl": "KL(dense || compressed) per position, mean over positions and windows",
                "model_source": model.info.source, "dtype": args.dtype, "device": args.device}
    table = ResultsTable(args.results)
    reference = DenseReference(model, windows, progress=progress)
    dense_sparsity = sparsity_report(model)["total"]

    def measure(point):
        result = evaluate(point.model, windows, reference, progress=progress)
        rows = [{"metric": "perplexity", "value": result.perplexity}, {"metric": "mean_kl", "value": result.mean_kl()}]
        if point.report is not None:
            rows += [{"metric": "achieved_sparsity", "value": point.report.achieved_sparsity},
                     {"metric": "compression_seconds", "value": point.report.seconds}]
            for row in rows:
                row.update(compression_seconds=point.report.seconds, obs_errors=point.report.obs_error_summary(),
                           warnings=point.report.warnings)
        return rows

    runner = Runner(model, table, args.model, protocol, tokenizer=tokenizer, device=args.device,
                    batch_size=args.batch_size, progress=False, log=lambda message: None)
    reports = runner.run([Variant.dense(), variant], [Measurement("evaluation", measure, dataset=protocol["dataset"])])
    frame = latest_frame(table, model=args.model, protocol=protocol, labels=[Variant.dense().label, variant.label])
    value = frame.set_index(["label", "metric"])["value"]
    report = reports.get(variant.label)
    seconds = value[variant.label, "seconds"]
    calibration_text = (f"{recipe.calibration.n_samples} x {recipe.calibration.seq_len} tokens "
                        f"({recipe.calibration.token_file or recipe.calibration.dataset}, seed {recipe.calibration.seed})"
                        if recipe.needs_calibration else "none")
    print(f"model={args.model} eval={protocol['dataset']} {windows.shape[0]} x {args.seq_len} tokens; "
          f"calibration: {calibration_text}")
    print(f"{'variant':<36}{'perplexity':>12}{'mean KL':>10}{'sparsity':>10}{'bits/w':>8}{'seconds':>9}")
    print(f"{'dense':<36}{value['dense', 'perplexity']:>12.4f}{0:>10.4f}{dense_sparsity:>10.3f}{16:>8.2f}{'':>9}")
    bits = frame[frame.label == variant.label].bits_per_weight.iloc[0]
    sparsity = frame[frame.label == variant.label].achieved_sparsity.iloc[0]
    print(f"{variant.label:<36}{value[variant.label, 'perplexity']:>12.4f}{value[variant.label, 'mean_kl']:>10.4f}"
          f"{sparsity:>10.3f}{bits:>8.2f}{seconds:>9.1f}")
    if report is None:
        print("already recorded with these settings and protocol: printed from the results table")
    elif report.warnings:
        print(f"{len(report.warnings)} warnings, e.g.: {report.warnings[0]}")
    print(f"recorded in {table.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers",
                                     description="Compress language models and measure what it costs.")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluation = sub.add_parser("eval", help="perplexity of a model on token windows")
    add_model_arguments(evaluation)
    add_eval_arguments(evaluation)
    evaluation.set_defaults(func=command_eval)
    compression = sub.add_parser("compress", help="compress a model, then perplexity and KL against the dense one")
    add_model_arguments(compression)
    add_eval_arguments(compression)
    add_compress_arguments(compression)
    compression.set_defaults(func=command_compress)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
