"""Command line: `python -m helpers eval | compress | context-kl ...`.

    python -m helpers eval --model smollm2-135m --seq-len 1024 --max-windows 16
    python -m helpers compress --model smollm2-135m --method sparsegpt --sparsity 0.5 --pattern 2:4 \
        --calibration-samples 128 --calibration-seq-len 2048 --seq-len 1024 --max-windows 16
    python -m helpers context-kl --model smollm2-135m --method rtn --bits 3 --seq-len 8192 --max-windows 8
    python -m helpers compress --model smollm2-135m --method gptq --bits 4 --group-size 128 --save out/gptq4

`--save DIR` writes the compressed model in the compressed-tensors format (helpers.compression.export),
which transformers, vLLM and lm-evaluation-harness load; a recipe the format cannot express is refused
before the model is loaded.

Every compression flag is a key of the variant spec that notebooks write
(helpers.experiments.core.parse_variant), and every run goes through the same Runner.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import check_calibration, check_max_windows, evaluation_windows
from ..compression.export import check_exportable, save_compressed
from ..compression.storage import sparsity_report
from ..evaluation.metrics import DenseReference, evaluate
from ..evaluation.tasks.generation import context_length
from ..claims import board as claims_board
from ..experiments.core import DENSE_LABEL as DENSE
from ..models import load_model
from ..results import ResultsTable

DEFAULT_RESULTS = Path("results") / "results.jsonl"
PROTOCOL = ("Default protocol: WikiText-2 test joined by blank lines, non-overlapping --seq-len windows (tail "
            "dropped), perplexity = exp(mean token NLL), KL against the same model uncompressed; calibration "
            "128 x 2048 C4 tokens drawn as SparseGPT's get_c4 (seed 0); float32 on the CPU. Every result is "
            "appended to --results with its settings and protocol; a repeated command reads it back.")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="smollm2-135m",
                       help="offline alias (smollm2-135m, gemma3-270m), tiny-<family>, hub id or local folder")
    group.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    group.add_argument("--device", default="cpu", help="cpu | cuda | auto")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation and results")
    group.add_argument("--dataset", default="wikitext2", help="evaluation text: wikitext2 | c4")
    group.add_argument("--token-file", default=None, help="saved token ids to evaluate on instead of a dataset")
    group.add_argument("--seq-len", type=int, default=1024, help="window length in tokens (non-overlapping)")
    group.add_argument("--max-windows", type=window_count, default=None,
                       help="evaluate only the first N >= 1 windows (default: the whole split)")
    group.add_argument("--results", default=str(DEFAULT_RESULTS), help="JSON-lines results table to append to")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def window_count(text: str) -> int:
    """--max-windows: a whole number of windows >= 1 (refused by the parser, before anything loads)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of windows >= 1, e.g. 16; leave the "
                                         "flag out to evaluate every window.")
    return value


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
    check_eval_settings(args)
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
# Spec keys of helpers.experiments.core.parse_variant that come from one flag each: (flag, spec key, type, help).
SPEC_OPTIONS = {
    "pruning (helpers.compression.pruning)": [
        ("--method", "method", str, "magnitude | random | wanda | sparsegpt | rtn | gptq (omit for --kv-bits / "
                                    "--activation-bits alone)"),
        ("--sparsity", "sparsity", float, "fraction of weights to prune, in [0, 1)"),
        ("--pattern", "pattern", str, "'unstructured' (default) or N:M such as 2:4 (implies N/M)"),
    ],
    "quantization grid (helpers.compression.quantizer)": [
        ("--bits", "bits", int, "quantize the weights to this many bits (rtn, gptq, sparsegpt joint)"),
        ("--group-size", "group_size", int, "columns per grid (default: one grid per output channel); a width it "
                                            "does not divide ends in a partial group"),
        ("--symmetric", "symmetric", bool, "symmetric grid"),
        ("--act-order", "act_order", bool, "GPTQ: columns by descending Hessian diagonal"),
        ("--static-groups", "static_groups", bool, "GPTQ + act-order: fit the group grids before permuting"),
        ("--mse", "mse", bool, "search a shrunken range that minimizes the rounding error"),
        ("--group-fit", "group_fit", str, "GPTQ groups: 'block_start' (the reference's rule, default) or 'updated'"),
    ],
    "protected outlier groups (helpers.compression.protect, arXiv 2406.06773)": [
        ("--protect-fraction", "protect_fraction", float, "fraction of weight groups kept at --protect-bits"),
        ("--protect-rule", "protect_rule", str, "magnitude (default) | random | hessian"),
        ("--protect-bits", "protect_bits", int, "precision of protected groups (default 8; 16 = unquantized)"),
        ("--protect-group-size", "protect_group_size", int, "width of a protected group (default: --group-size, "
                                                            "else 128)"),
    ],
    "activations and KV cache while evaluating (helpers.compression.activations)": [
        ("--activation-bits", "activation_bits", int, "fake-quantize every decoder linear's input (W4A8: --method "
                                                      "rtn --bits 4 --activation-bits 8)"),
        ("--activation-granularity", "activation_granularity", str, "per_token (default) | per_tensor"),
        ("--activation-symmetric", "activation_symmetric", bool, "symmetric activation grid (default: asymmetric)"),
        ("--kv-bits", "kv_bits", int, "fake-quantize keys and values (pre-RoPE, on k_proj / v_proj outputs)"),
        ("--kv-granularity", "kv_granularity", str, "per_token_head (default) | per_channel"),
        ("--kv-token-group-size", "kv_token_group_size", int, "per_channel: tokens sharing one grid (default 128)"),
        ("--kv-symmetric", "kv_symmetric", bool, "symmetric key / value grid (default: asymmetric)"),
    ],
    "layer-wise sparsity schedule (helpers.compression.schedules)": [
        ("--schedule", "schedule", str, "uniform | owl | hessian: spread --sparsity over the layers from one "
                                        "observe-only pass, then compress sequentially; kind: one layer kind "
                                        "pruned more (--schedule-kind)"),
        ("--schedule-inputs", "schedule_inputs", str, "compressed (default: sequential pruning) | dense (every "
                                                      "layer from the dense model's Hessians, the scheduler paper's "
                                                      "assumption)"),
        ("--owl-multiplier", "owl_multiplier", float, "OWL's M: outlier if score > M x mean (default 5)"),
        ("--owl-spread", "owl_spread", float, "OWL's lambda (default 0.08)"),
        ("--schedule-levels", "schedule_levels", int, "Hessian scheduler: clusters of log10 error (default 4)"),
        ("--schedule-clustering", "schedule_clustering", str, "Hessian scheduler: kmeans (default) | binning | decades"),
        ("--schedule-spread", "schedule_spread", float, "Hessian scheduler: sparsities within target +- spread"),
        ("--schedule-probe-sparsity", "schedule_probe_sparsity", float, "sparsity the layer errors are estimated at "
                                                                        "(default: the target)"),
        ("--schedule-normalize-by-size", "schedule_normalize_by_size", bool, "cluster the error per weight"),
        ("--schedule-kind", "schedule_kind", str, "kind schedule: the layer kind pruned more, e.g. down_proj"),
        ("--schedule-kind-extra", "schedule_kind_extra", float, "kind schedule: how much more (default 0.1)"),
    ],
    "which decoder blocks (helpers.models.selected_blocks)": [
        ("--blocks", "blocks", "blocks", "compress (and quantize the KV cache of) only these blocks: all (default) | "
                                         "full_attention | sliding_attention (Gemma-3's global / sliding-window "
                                         "blocks) | comma-separated indices such as 5,11,17"),
    ],
    "OBS solver (SparseGPT / GPTQ)": [
        ("--damping", "damping", float, "fraction of mean(diag H) added to the diagonal (default 0.01)"),
        ("--block-size", "block_size", int, "columns per block: mask and lazy updates (default 128)"),
        ("--true-sequential", "true_sequential", bool, "compress each block's sub-groups in turn ([q,k,v] -> [o] -> "
                                                       "[gate,up] -> [down]), statistics re-gathered after each"),
    ],
}


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    """Every field of a variant spec, grouped by what it controls (defaults: the spec parser's)."""
    for title, options in SPEC_OPTIONS.items():
        group = parser.add_argument_group(title)
        for flag, key, kind, text in options:
            if kind is bool:
                group.add_argument(flag, dest=key, action="store_true", default=None, help=text)
            elif kind == "blocks":
                group.add_argument(flag, dest=key, type=block_selection, default=None, help=text)
            else:
                group.add_argument(flag, dest=key, type=kind, default=None, help=text)
    run = parser.add_argument_group("calibration (helpers.data.CalibrationSettings; default: SparseGPT's C4 recipe)")
    run.add_argument("--seed", type=int, default=0, help="seed of the calibration sample and random pruning")
    run.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward pass")
    run.add_argument("--calibration-dataset", default="c4", help="c4 | wikitext2")
    run.add_argument("--calibration-samples", type=int, default=128, help="number of calibration sequences")
    run.add_argument("--calibration-seq-len", type=int, default=2048, help="tokens per calibration sequence")
    run.add_argument("--calibration-token-file", default=None,
                     help="saved [samples, tokens] calibration ids instead of sampling a dataset")


def block_selection(text: str):
    """--blocks: a name of helpers.models.BLOCK_SELECTIONS, or comma-separated block indices."""
    from ..models import BLOCK_SELECTIONS

    if text in BLOCK_SELECTIONS:
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks {text!r}: expected one of {BLOCK_SELECTIONS} or comma-separated "
                                         "block indices such as 5,11,17") from None


def compress_spec(args) -> dict:
    """The variant spec of the command-line settings: exactly the flags given (the same spec a notebook
    writes), plus the seed."""
    spec = {key: getattr(args, key) for options in SPEC_OPTIONS.values() for _, key, _, _ in options
            if getattr(args, key, None) is not None}
    if spec.get("method") is not None:
        spec["seed"] = args.seed
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
    check_max_windows(args.max_windows)
    if args.dataset not in ("wikitext2", "c4"):
        raise ValueError(f"evaluation dataset={args.dataset!r}; expected 'wikitext2' or 'c4' (or --token-file).")
    for option, path in (("--token-file", args.token_file),
                         ("--calibration-token-file", getattr(args, "calibration_token_file", None))):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{option} {path} does not exist; give the path of saved token ids.")


@dataclass
class Prepared:
    """What compress and context-kl share: the checked variant, the model, its windows and dense pass."""
    variant: Any
    model: Any
    tokenizer: Any
    windows: Any
    protocol: dict
    table: ResultsTable
    reference: DenseReference

    def runner(self, args):
        from ..experiments.core import Runner

        return Runner(self.model, self.table, args.model, self.protocol, tokenizer=self.tokenizer, device=args.device,
                      batch_size=args.batch_size, progress=False, log=lambda message: None)

    def calibration_text(self) -> str:
        recipe = self.variant.recipe
        if recipe is None or not (recipe.needs_calibration or self.variant.compress is not None):
            return "none"
        c = recipe.calibration
        return f"{c.n_samples} x {c.seq_len} tokens ({c.token_file or c.dataset}, seed {c.seed})"


def check_save(args, variant, model=None) -> None:
    """--save: the folder is new or empty and the variant can be written in the compressed-tensors
    format (with `model`: its layers too); raises ValueError naming what cannot."""
    folder = Path(args.save)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"--save {folder}: it exists and is not an empty folder; give a new folder.")
    check_exportable(variant.recipe, activations=variant.settings.get("activations"),
                     kv_cache=variant.settings.get("kv_cache"), model=model)


def prepare(args, kl: str) -> Prepared:
    """Every check first (settings, files, the recipe against the model's shapes, the calibration against its
    context and the data), then the dense pass."""
    from ..compression.compress import check_recipe

    variant = compress_variant(args)
    check_eval_settings(args)
    saving = getattr(args, "save", None) is not None
    if saving:
        check_save(args, variant)  # before the model is loaded
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    if variant.recipe is not None:
        check_recipe(model, variant.recipe)  # before the dense reference pass
    if variant.needs_calibration:  # the calibration can be drawn (model context, data size), before the dense pass
        check_calibration(variant.recipe.calibration, context_length=context_length(model))
    if saving:
        check_save(args, variant, model)
    windows = evaluation_windows(tokenizer, dataset=args.dataset, seq_len=args.seq_len,
                                 max_windows=args.max_windows, token_file=args.token_file)
    protocol = {**eval_protocol(args), "windows_evaluated": int(windows.shape[0]), "tokens": int(windows.numel()),
                "kl": kl, "model_source": model.info.source, "dtype": args.dtype, "device": args.device}
    reference = DenseReference(model, windows, progress=not args.no_progress)
    return Prepared(variant, model, tokenizer, windows, protocol, ResultsTable(args.results), reference)


def command_compress(args) -> int:
    from ..experiments.core import Measurement, Variant, latest_frame

    run = prepare(args, "KL(dense || compressed) per position, mean over positions and windows")
    variant, progress = run.variant, not args.no_progress
    dense_sparsity = sparsity_report(run.model)["total"]
    saved = {}

    def measure(point):
        if args.save is not None and point.report is not None and not saved:  # the model is compressed now
            saved.update(save_compressed(point.model, point.report, args.save, tokenizer=run.tokenizer))
        result = evaluate(point.model, run.windows, run.reference, progress=progress)
        rows = [{"metric": "perplexity", "value": result.perplexity}, {"metric": "mean_kl", "value": result.mean_kl()}]
        if point.report is not None:
            rows += [{"metric": "achieved_sparsity", "value": point.report.achieved_sparsity},
                     {"metric": "compression_seconds", "value": point.report.seconds}]
            for row in rows:
                row.update(compression_seconds=point.report.seconds, obs_errors=point.report.obs_error_summary(),
                           warnings=point.report.warnings, timings=point.report.timings)
        return rows

    reports = run.runner(args).run([Variant.dense(), variant],
                                   [Measurement("evaluation", measure, dataset=run.protocol["dataset"])])
    if args.save is not None and not saved:  # recorded before, so not compressed by the run: compress to save
        runner = run.runner(args)
        try:
            saved.update(save_compressed(run.model, runner.compress(variant), args.save, tokenizer=run.tokenizer))
        finally:
            runner.snapshot.restore(run.model)
    frame = latest_frame(run.table, model=args.model, protocol=run.protocol, labels=[DENSE, variant.label])
    value = frame.set_index(["label", "metric"])["value"]
    report = reports.get(variant.label)
    mine = frame[frame.label == variant.label].iloc[0]
    print(f"model={args.model} eval={run.protocol['dataset']} {run.windows.shape[0]} x {args.seq_len} tokens; "
          f"calibration: {run.calibration_text()}")
    print(f"{'variant':<40}{'perplexity':>12}{'mean KL':>10}{'sparsity':>10}{'bits/w':>8}{'seconds':>9}")
    print(f"{DENSE:<40}{value[DENSE, 'perplexity']:>12.4f}{0:>10.4f}{dense_sparsity:>10.3f}{16:>8.2f}{'':>9}")
    print(f"{variant.label:<40}{value[variant.label, 'perplexity']:>12.4f}{value[variant.label, 'mean_kl']:>10.4f}"
          f"{mine.achieved_sparsity:>10.3f}{mine.bits_per_weight:>8.2f}{mine.seconds_compress:>9.1f}")
    if variant.label not in reports:
        print("already recorded with these settings and protocol: printed from the results table")
    elif report is not None and report.warnings:
        print(f"{len(report.warnings)} warnings, e.g.: {report.warnings[0]}")
    if saved:
        print(f"saved ({saved['format']}) in {saved['directory']}: {saved['bytes']:,} bytes of safetensors; decoder "
              f"linears {saved['measured_bits_per_weight']:.2f} bits/weight on disk vs {saved['bits_per_weight']:.2f} "
              "counted by the storage model")
    print(f"recorded in {run.table.path}")
    return 0


def command_context_kl(args) -> int:
    """KL(dense || compressed) per context length (notebook 01's measurement) for one variant."""
    import numpy as np

    from ..experiments.core import latest_frame
    from ..experiments.longcontext import (context_kl_measurement, context_lengths, growth_exponent, log_bin_edges,
                                           t_interval)

    if args.smallest_context < 1 or args.smallest_context > args.seq_len:
        raise ValueError(f"--smallest-context {args.smallest_context}; expected 1..--seq-len ({args.seq_len}).")
    run = prepare(args, "KL(dense || compressed) per position; mean over positions < c per window; "
                        "t-interval over windows")
    contexts = context_lengths(args.seq_len, args.smallest_context)
    edges = log_bin_edges(args.seq_len, args.bins_per_octave)
    measurement = context_kl_measurement(run.reference, edges=edges, contexts=contexts, dataset=run.protocol["dataset"])
    run.runner(args).run([run.variant], [measurement])
    frame = latest_frame(run.table, model=args.model, protocol=run.protocol, labels=[run.variant.label])
    per_window = frame[frame.metric == "kl_context"].astype({"context": int, "window": int})
    table = per_window.pivot_table(index="window", columns="context", values="value")
    windows = table.shape[0]
    print(f"model={args.model} variant={run.variant.label} eval={run.protocol['dataset']} {windows} windows x "
          f"{args.seq_len} tokens; calibration: {run.calibration_text()}")
    print(f"interval: {args.confidence:.0%} t-interval over the {windows} windows (the independent unit)")
    print(f"{'context':>8}{'mean KL':>12}{'low':>12}{'high':>12}")
    for context in contexts:
        low, high = t_interval(table[context], confidence=args.confidence)
        print(f"{context:>8}{table[context].mean():>12.5f}{low:>12.5f}{high:>12.5f}")
    ratios = table[contexts[-1]] / table[contexts[0]]
    low, high = t_interval(ratios, confidence=args.confidence)
    bins = frame[frame.metric == "kl_bin"].groupby(["position_start", "position_stop"]).value.mean().reset_index()
    centre = np.sqrt((bins.position_start + 1) * bins.position_stop)
    keep = bins.position_start + 1 >= 16
    print(f"growth KL@{contexts[-1]} / KL@{contexts[0]}: {ratios.mean():.3f} (per-window ratios, {low:.3f} .. "
          f"{high:.3f}); slope of log KL vs log position from position 16: "
          f"{growth_exponent(centre[keep], bins.value[keep]):.3f}")
    print(f"recorded in {run.table.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers",
                                     description="Compress language models and measure what it costs.")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluation = sub.add_parser("eval", help="perplexity of a model on token windows")
    add_model_arguments(evaluation)
    add_eval_arguments(evaluation)
    evaluation.set_defaults(func=command_eval)
    compression = sub.add_parser("compress", help="compress a model, then perplexity and KL against the dense one",
                                 description=PROTOCOL)
    add_model_arguments(compression)
    add_eval_arguments(compression)
    add_compress_arguments(compression)
    export = compression.add_argument_group("export (helpers.compression.export)")
    export.add_argument("--save", default=None, metavar="DIR",
                        help="write the compressed model to this new folder in the compressed-tensors format "
                             "(packed integer weights; loads with transformers and vLLM); unrepresentable recipes "
                             "(protected groups, act-order with dynamic groups, activation / KV quantization) are "
                             "refused before any work")
    compression.set_defaults(func=command_compress)
    context = sub.add_parser("context-kl", help="KL(dense || compressed) per context length (notebook 01)",
                             description=PROTOCOL + " --seq-len is the longest context measured; the mean KL at "
                                         "context c is the mean over positions < c of each window (causal models).")
    add_model_arguments(context)
    add_eval_arguments(context)
    add_compress_arguments(context)
    shape = context.add_argument_group("contexts and intervals")
    shape.add_argument("--smallest-context", type=int, default=64, help="contexts: this, 2x, 4x, ..., --seq-len")
    shape.add_argument("--bins-per-octave", type=int, default=2, help="log-spaced position bins for the slope")
    shape.add_argument("--confidence", type=float, default=0.95, help="level of the t-interval over windows")
    context.set_defaults(func=command_context_kl)
    verdicts = sub.add_parser("verdicts", help="the claims board: every claim's verdict from tidy results (helpers.claims)")
    verdicts.add_argument("folder", nargs="?", default=str(claims_board.COMMITTED),
                          help="committed runs (default results/committed) or one folder of frames")
    verdicts.add_argument("--check", action="store_true",
                          help="exit 1 when a committed verdict file (figures/*_verdicts*.csv) differs from its frames")
    verdicts.add_argument("--figures", default=str(claims_board.FIGURES), help="where the verdict files are")
    verdicts.set_defaults(func=lambda args: claims_board.main(
        [args.folder, "--figures", args.figures] + (["--check"] if args.check else [])))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
