"""Command line: `python -m helpers eval ...` (and compression subcommands registered by methods).

    python -m helpers eval --model smollm2-135m --seq-len 1024 --max-windows 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .data import evaluation_windows
from .metrics import DenseReference, evaluate
from .models import load_model
from .results import ResultsTable

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


SUBCOMMANDS = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers",
                                     description="Compress language models and measure what it costs.")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluation = sub.add_parser("eval", help="perplexity of a model on token windows")
    add_model_arguments(evaluation)
    add_eval_arguments(evaluation)
    evaluation.set_defaults(func=command_eval)
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
