"""Command line: `python -m helpers eval ...` (and compression subcommands registered by methods).

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
from ..evaluation.metrics import DenseReference, evaluate, sparsity_report
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


def compress_recipe(args):
    """The validated Recipe of the command-line settings (raises ValueError naming a bad value)."""
    from ..compression.compress import Recipe
    from ..data import CalibrationSettings
    from ..compression.quantizer import QuantSettings

    if args.bits is None and (args.group_size is not None or args.symmetric or args.act_order):
        raise ValueError("--group-size, --symmetric and --act-order describe a quantization grid; "
                         "give --bits too (e.g. --bits 4).")
    quant = None if args.bits is None else QuantSettings(bits=args.bits, symmetric=args.symmetric,
                                                          group_size=args.group_size, act_order=args.act_order)
    calibration = CalibrationSettings(dataset=args.calibration_dataset, n_samples=args.calibration_samples,
                                      seq_len=args.calibration_seq_len, seed=args.seed,
                                      token_file=args.calibration_token_file)
    return Recipe(method=args.method, sparsity=args.sparsity, pattern=args.pattern, quant=quant,
                  damping=args.damping, block_size=args.block_size, seed=args.seed, calibration=calibration)


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
    from ..compression.compress import compress_model
    from ..data import calibration_samples
    from ..results import run_key

    recipe = compress_recipe(args)
    check_eval_settings(args)
    progress = not args.no_progress
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    windows = evaluation_windows(tokenizer, dataset=args.dataset, seq_len=args.seq_len,
                                 max_windows=args.max_windows, token_file=args.token_file)
    protocol = {**eval_protocol(args), "windows_evaluated": int(windows.shape[0]), "tokens": int(windows.numel()),
                "kl": "KL(dense || compressed) per position, mean over positions and windows",
                "model_source": model.info.source, "dtype": args.dtype, "device": args.device}
    table = ResultsTable(args.results)
    dataset = protocol["dataset"]

    start = time.perf_counter()
    reference = DenseReference(model, windows, progress=progress)
    dense_seconds = time.perf_counter() - start
    table.append(model=args.model, method="dense", metric="perplexity", value=reference.perplexity,
                 dataset=dataset, protocol=protocol, seconds=dense_seconds,
                 key=run_key(model=args.model, method="dense", protocol=protocol))

    dense_sparsity = sparsity_report(model)["total"]
    settings = recipe.as_dict()
    calibration_ids = None
    start = time.perf_counter()
    if recipe.needs_calibration:
        calibration_ids = calibration_samples(tokenizer, recipe.calibration)
    else:
        settings["calibration"] = None
    sampling_seconds = time.perf_counter() - start
    report = compress_model(model, recipe, calibration_ids=calibration_ids, batch_size=args.batch_size,
                            progress=progress)
    start = time.perf_counter()
    result = evaluate(model, windows, reference, progress=progress)
    eval_seconds = time.perf_counter() - start

    extra = dict(compression_seconds=report.seconds, calibration_sampling_seconds=sampling_seconds,
                 evaluation_seconds=eval_seconds, obs_errors=report.obs_error_summary(),
                 warnings=report.warnings, key=run_key(model=args.model, settings=settings, protocol=protocol))
    measured = {"perplexity": result.perplexity, "mean_kl": result.mean_kl(),
                "achieved_sparsity": report.achieved_sparsity, "compression_seconds": report.seconds}
    for metric, value in measured.items():
        table.append(model=args.model, method=recipe.method, metric=metric, value=value, settings=settings,
                     dataset=dataset, protocol=protocol, **extra)

    described = recipe.pattern if recipe.parsed_pattern.structured else (
        f"{recipe.sparsity:g}" if recipe.sparsity else "")
    if recipe.quant is not None:
        described += f"{' + ' if described else ''}{recipe.quant.bits}-bit" + (
            f" g{recipe.quant.group_size}" if recipe.quant.group_size else "")
    calibration_text = (f"{calibration_ids.shape[0]} x {calibration_ids.shape[1]} tokens "
                        f"({recipe.calibration.token_file or recipe.calibration.dataset}, seed {recipe.calibration.seed})"
                        if calibration_ids is not None else "none")
    print(f"model={args.model} eval={dataset} {windows.shape[0]} x {args.seq_len} tokens; calibration: {calibration_text}")
    print(f"{'method':<12}{'setting':<16}{'perplexity':>12}{'mean KL':>10}{'sparsity':>10}{'seconds':>9}")
    print(f"{'dense':<12}{'':<16}{reference.perplexity:>12.4f}{0:>10.4f}{dense_sparsity:>10.3f}{'':>9}")
    print(f"{recipe.method:<12}{described:<16}{result.perplexity:>12.4f}{result.mean_kl():>10.4f}"
          f"{report.achieved_sparsity:>10.3f}{report.seconds:>9.1f}")
    if report.warnings:
        print(f"{len(report.warnings)} warnings, e.g.: {report.warnings[0]}")
    print(f"recorded in {table.path}")
    return 0


SUBCOMMANDS = {}


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
    for name, (register, _) in SUBCOMMANDS.items():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
