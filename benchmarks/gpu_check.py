"""A short GPU check, ready for a lent accelerator: one command, one table per section, every number
with the device, torch and CUDA versions it was taken on.

    python benchmarks/gpu_check.py                      # cuda: every section, under 8 minutes on one modern GPU
    python benchmarks/gpu_check.py --device cpu --quick # the same code on the CPU with small shapes (CI-sized)
    python benchmarks/gpu_check.py --only engine long-kl

Sections (--only picks some; each one that fails is reported and the others still run):
- layers: per layer shape (rows x columns = out x in; Llama-7B: 4096x4096 q/k/v/o, 11008x4096 gate/up,
  4096x11008 down), a Hessian from 2048 correlated random inputs, then `helpers.compression.obs.sparsegpt`
  at 50% and 2:4 and `gptq` at 4 bits per channel and g128 with act-order, timed with the device
  synchronized, with the OBS error and the fraction of exact zeros (pruned, or rounded to 0).
- end-to-end: tiny-llama (random weights from a config) compressed by SparseGPT 50% and GPTQ 4-bit through
  the layer-wise engine on the device, then perplexity and KL against the dense model.
- engine: a random-weight model of Llama-2-7B's shapes (2 blocks, float16, kept on the CPU) compressed by
  SparseGPT 50% and GPTQ 4-bit g128 through the engine on the device from 128 x 2048 calibration tokens:
  seconds per block (statistics / solve / propagation), peak device memory beside one block's and the whole
  model's size, and where the blocks are afterwards (the engine moves one block at a time and puts it back).
- engine-budget: the engine under a device memory budget (1.15x the per-block peak of a 2-block model,
  set with torch.cuda.set_per_process_memory_fraction) compressing a model larger than that budget.
- long-kl: a random-weight model of LLaMA-2-7B-32K's shapes (2 blocks, float16, linear RoPE x8, on the
  device): the dense reference and KL(dense || RTN 4-bit g128) per position on one window at each context
  (4K ... 32K): seconds and peak device memory against context.
- notebooks: every notebook in the `tiny` profile with `device` set to this device, its code cells run in
  this process (`helpers.running.reproduce --no-kernel`: no Jupyter on the device).
- rehearsal: the paper profile on this device (`helpers.running.rehearsal`): every notebook with the paper
  profile's parameters, the hub ids served by tiny stand-in checkpoints, sizes cut to seconds.

Tables go to `--output` (layers and end-to-end rows, CSV) and beside it `<stem>_<section>.csv`, with the
protocol in `<stem>.json`; nothing here needs the model hub.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import correlated_inputs, random_weight  # noqa: E402  (the layer benchmark's random data)

from helpers.compression.compress import Recipe, compress_model  # noqa: E402
from helpers.compression.obs import gptq, sparsegpt  # noqa: E402
from helpers.compression.quantizer import QuantSettings  # noqa: E402
from helpers.evaluation.metrics import DenseReference, evaluate  # noqa: E402
from helpers.models import compressed_linears, decoder_layers, load_model  # noqa: E402

SHAPES = {"full": [(4096, 4096), (11008, 4096), (4096, 11008)], "quick": [(256, 256), (512, 256), (256, 512)]}
LAYER_CONFIGS = {
    "sparsegpt 50%": lambda w, h: sparsegpt(w, h, 0.5),
    "sparsegpt 2:4": lambda w, h: sparsegpt(w, h, pattern="2:4"),
    "gptq 4-bit": lambda w, h: gptq(w, h, QuantSettings(bits=4)),
    "gptq 4-bit g128 act-order": lambda w, h: gptq(w, h, QuantSettings(bits=4, group_size=128, act_order=True)),
}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def layer_rows(device: str, shapes: list[tuple[int, int]], tokens: int) -> list[dict]:
    rows = []
    for out_features, in_features in shapes:
        weight = random_weight(out_features, in_features, device=device)
        x = correlated_inputs(tokens, in_features, device=device)
        hessian = 2 * x.t() @ x / x.shape[0]
        for label, solve in LAYER_CONFIGS.items():
            synchronize(device)
            start = time.perf_counter()
            new_weight, info = solve(weight, hessian)
            synchronize(device)
            rows.append({"check": "layer", "config": label, "shape": f"{out_features}x{in_features}",
                         "seconds": time.perf_counter() - start, "obs_error": info.get("obs_error"),
                         "zeros": float((new_weight == 0).float().mean()),
                         "finite": bool(torch.isfinite(new_weight).all())})
    return rows


def end_to_end_rows(device: str) -> list[dict]:
    model, _ = load_model("tiny-llama", layers=2, device=device)
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, model.config.vocab_size, (8, 128), generator=generator)
    windows = torch.randint(0, model.config.vocab_size, (4, 128), generator=generator)
    reference = DenseReference(model, windows, progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for label, recipe in (("sparsegpt 50%", Recipe(method="sparsegpt", sparsity=0.5)),
                          ("gptq 4-bit", Recipe(method="gptq", quant=QuantSettings(bits=4)))):
        model.load_state_dict(state)
        synchronize(device)
        start = time.perf_counter()
        report = compress_model(model, recipe, calibration_ids=calibration, device=device, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - start
        result = evaluate(model, windows, reference, progress=False)
        rows.append({"check": "end-to-end tiny-llama", "config": label, "shape": "2 blocks",
                     "seconds": seconds, "obs_error": report.summary()["total_obs_error"],
                     "zeros": report.achieved_sparsity, "finite": bool(torch.isfinite(result.nll).all()),
                     "perplexity": result.perplexity, "dense_perplexity": reference.perplexity,
                     "mean_kl": result.mean_kl()})
    return rows


# Llama-2-7B (and LLaMA-2-7B-32K) shapes; quick: the same structure, small enough for a CPU test
LLAMA_SHAPES = {"full": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                             num_key_value_heads=32),
                "quick": dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_attention_heads=4,
                              num_key_value_heads=4)}


def llama_shaped(size: str, *, blocks: int = 2, max_positions: int = 4096, rope_factor: float | None = None,
                 dtype: torch.dtype = torch.float16, device: str = "cpu", seed: int = 0):
    """A random-weight LlamaForCausalLM of Llama-2-7B's shapes with `blocks` decoder blocks (no hub)."""
    import transformers as tf

    config = tf.LlamaConfig(**LLAMA_SHAPES[size], num_hidden_layers=blocks, max_position_embeddings=max_positions,
                            rope_scaling={"rope_type": "linear", "factor": rope_factor} if rope_factor else None,
                            tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = tf.LlamaForCausalLM(config).to(dtype)
    return model.eval()


def gib(nbytes: float) -> float:
    return nbytes / 2 ** 30


def reset_peak(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return gib(torch.cuda.memory_allocated())
    return float("nan")


def peak(device: str) -> float:
    return gib(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else float("nan")


def engine_rows(device: str, quick: bool) -> list[dict]:
    """SparseGPT 50% and GPTQ 4-bit g128 of a 2-block Llama-2-7B-shaped float16 model through the engine."""
    size = "quick" if quick else "full"
    samples, tokens = (8, 128) if quick else (128, 2048)
    model = llama_shaped(size, dtype=torch.float16 if device.startswith("cuda") else torch.float32)
    block_gib = gib(sum(p.numel() * p.element_size() for p in decoder_layers(model)[0].parameters()))
    model_gib = gib(sum(p.numel() * p.element_size() for p in model.parameters()))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, model.config.vocab_size, (samples, tokens), generator=generator)
    rows = []
    for label, recipe in (("sparsegpt 50%", Recipe(method="sparsegpt", sparsity=0.5)),
                          ("gptq 4-bit g128", Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=128)))):
        model.load_state_dict(state)
        before = reset_peak(device)
        start = time.perf_counter()
        report = compress_model(model, recipe, calibration_ids=calibration, device=device, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - start
        weights = [linear.weight for linear in compressed_linears(model).values()]
        blocks = len(decoder_layers(model))
        rows.append({"check": "engine", "config": label, "model": f"Llama-2-7B shapes ({size}), {blocks} blocks, "
                     f"{next(model.parameters()).dtype}", "calibration": f"{samples} x {tokens}",
                     "seconds": seconds, "seconds_per_block": seconds / blocks,
                     **{k: v / blocks for k, v in report.timings.items()},
                     "peak_gib": peak(device), "allocated_before_gib": before, "block_gib": block_gib,
                     "model_gib": model_gib, "achieved_sparsity": report.achieved_sparsity,
                     "bits_per_weight": report.bits_per_weight, "obs_error": report.summary()["total_obs_error"],
                     "blocks_back_home": all(w.device.type == "cpu" for w in weights),
                     "finite": all(bool(torch.isfinite(w).all()) for w in weights)})
    return rows


def long_kl_rows(device: str, quick: bool) -> list[dict]:
    """Dense reference and KL(dense || RTN 4-bit g128) per position at growing contexts, 7B-32K shapes."""
    contexts = [64, 128, 256] if quick else [4096, 8192, 16384, 32768]
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = llama_shaped("quick" if quick else "full", max_positions=max(contexts), rope_factor=8.0, dtype=dtype,
                         device=device)
    generator = torch.Generator().manual_seed(0)
    windows = {c: torch.randint(0, model.config.vocab_size, (1, c), generator=generator) for c in contexts}
    references, rows = {}, []
    for context in contexts:
        before = reset_peak(device)
        start = time.perf_counter()
        references[context] = DenseReference(model, windows[context], progress=False)
        synchronize(device)
        rows.append({"context": context, "step": "dense reference", "seconds": time.perf_counter() - start,
                     "peak_gib": peak(device), "allocated_before_gib": before,
                     "stored_reference_gib": gib(references[context].nbytes())})
    compress_model(model, Recipe(method="rtn", quant=QuantSettings(bits=4, group_size=128)), progress=False)
    for context in contexts:
        before = reset_peak(device)
        start = time.perf_counter()
        result = evaluate(model, windows[context], references[context], progress=False)
        synchronize(device)
        kl = result.kl[0]
        quarter = context // 4
        rows.append({"context": context, "step": "rtn 4-bit g128: forward + chunked NLL and KL",
                     "seconds": time.perf_counter() - start, "peak_gib": peak(device), "allocated_before_gib": before,
                     "mean_kl": float(kl.mean()), "kl_first_quarter": float(kl[:quarter].mean()),
                     "kl_last_quarter": float(kl[-quarter:].mean()), "finite": bool(torch.isfinite(kl).all())})
    return rows


def engine_budget_rows(device: str, quick: bool) -> list[dict]:
    """The engine under a device memory budget smaller than the model: SparseGPT 50% of a 2-block model of
    Llama-2-7B's shapes (float16, on the CPU) gives the per-block peak; the budget is set to 1.15x that peak
    (torch.cuda.set_per_process_memory_fraction) and a model with enough blocks to exceed it is compressed.
    On the CPU only the 2-block run (no budget, no peak)."""
    size = "quick" if quick else "full"
    samples, tokens = (4, 64) if quick else (16, 2048)
    cuda = device.startswith("cuda")
    generator = torch.Generator().manual_seed(0)

    def compress_under(blocks: int, budget: float | None) -> dict:
        model = llama_shaped(size, blocks=blocks, dtype=torch.float16 if cuda else torch.float32,
                             device=device if cuda else "cpu").to("cpu")
        block_gib = gib(sum(p.numel() * p.element_size() for p in decoder_layers(model)[0].parameters()))
        model_gib = gib(sum(p.numel() * p.element_size() for p in model.parameters()))
        calibration = torch.randint(0, model.config.vocab_size, (samples, tokens), generator=generator)
        if cuda:
            torch.cuda.empty_cache()
            if budget is not None:
                torch.cuda.set_per_process_memory_fraction(budget / gib(torch.cuda.get_device_properties(0).total_memory))
        reset_peak(device)
        start = time.perf_counter()
        try:
            report = compress_model(model, Recipe(method="sparsegpt", sparsity=0.5), calibration_ids=calibration,
                                    device=device, progress=False)
            status, sparsity = "ok", report.achieved_sparsity
        except torch.OutOfMemoryError as err:
            status, sparsity = f"out of memory: {str(err).splitlines()[0][:100]}", float("nan")
        finally:
            if cuda:
                torch.cuda.set_per_process_memory_fraction(1.0)
        synchronize(device)
        return {"check": "engine under a memory budget", "blocks": blocks, "model_gib": model_gib,
                "block_gib": block_gib, "budget_gib": float("nan") if budget is None else budget,
                "calibration": f"{samples} x {tokens}", "seconds": time.perf_counter() - start,
                "peak_gib": peak(device), "status": status, "achieved_sparsity": sparsity, "finite": status == "ok"}

    first = compress_under(2, None)
    if not cuda:
        return [first]
    budget = 1.15 * first["peak_gib"]
    outside_blocks = first["model_gib"] - 2 * first["block_gib"]  # embeddings, head, final norm
    return [first, compress_under(int((budget - outside_blocks) / first["block_gib"]) + 2, budget)]


def rehearsal_rows(device: str, quick: bool) -> list[dict]:
    """The paper profile rehearsed on this device (helpers.running.rehearsal: every notebook with the paper
    profile's parameters on stand-in hub checkpoints, sizes cut to seconds), in its own process."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        outcomes = Path(folder) / "outcomes.json"
        completed = subprocess.run([sys.executable, "-m", "helpers.running.rehearsal", "--device", device,
                                    "--output-dir", folder, "--json", str(outcomes), "--set", "judges=['rouge']"],
                                   capture_output=True, text=True)
        print(completed.stdout[-3000:], completed.stderr[-3000:])
        found = json.loads(outcomes.read_text()) if outcomes.exists() else []
    return [{"notebook": o["notebook"], "model": o["parameters"].get("model"), "dtype": o["parameters"].get("dtype"),
             "device": o["parameters"].get("device"), "status": o["status"], "seconds": o["seconds"],
             "error": o["error"]} for o in found] or [{"notebook": "(none)", "status": "failed",
                                                      "error": completed.stderr[-300:]}]


def notebook_rows(device: str, quick: bool, dtypes: tuple[str, ...] = ("float32",)) -> list[dict]:
    """Every notebook in the tiny profile with device=<device> (and each dtype), run in this process."""
    import tempfile

    from helpers.running.reproduce import reproduce

    rows = []
    for dtype in dtypes:
        with tempfile.TemporaryDirectory() as folder:
            outcomes = reproduce("tiny", output_dir=Path(folder), overrides={"device": device, "dtype": dtype},
                                 kernel=False)
        rows += [{"notebook": o.notebook, "dtype": o.parameters.get("dtype", "(not a parameter)"),
                  "device": o.parameters.get("device", "(not a parameter)"), "status": o.status,
                  "seconds": o.seconds, "error": o.error} for o in outcomes]
    return rows


SECTIONS = {"layers": None, "end-to-end": None, "engine": engine_rows, "engine-budget": engine_budget_rows,
            "long-kl": long_kl_rows, "notebooks": notebook_rows, "rehearsal": rehearsal_rows}


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "/")[:120]
    print(f"\n### {title}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")


def versions(device: str) -> dict:
    import transformers

    found = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
             "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
             "python": platform.python_version()}
    if device.startswith("cuda"):
        found["device_memory_gib"] = round(gib(torch.cuda.get_device_properties(0).total_memory), 1)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes (for a CPU check of the script)")
    parser.add_argument("--tokens", type=int, default=2048, help="random calibration inputs per layer")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                        help="sections to run (default: all)")
    parser.add_argument("--notebook-dtypes", nargs="+", default=["float32", "float16"],
                        help="the notebooks section runs every notebook once per dtype")
    parser.add_argument("--output", default="results/benchmarks/gpu_check.csv")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU; run with --device cpu --quick to check the script")
    started = time.perf_counter()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    protocol = {**versions(args.device), "quick": args.quick, "sections": {}}
    print("; ".join(f"{k}: {v}" for k, v in protocol.items() if k != "sections"), flush=True)
    ok, combined = True, []
    for section in args.only:
        section_start = time.perf_counter()
        try:
            if section == "layers":
                rows = layer_rows(args.device, SHAPES["quick" if args.quick else "full"], args.tokens)
            elif section == "end-to-end":
                rows = end_to_end_rows(args.device)
            elif section == "notebooks":
                rows = notebook_rows(args.device, args.quick, tuple(args.notebook_dtypes))
            else:
                rows = SECTIONS[section](args.device, args.quick)
            status = "ok"
        except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
            traceback.print_exc()
            rows, status = [], f"failed: {type(err).__name__}: {err}"
        good = status == "ok" and all(row.get("finite", True) for row in rows) and \
            all(row.get("status", "ok") in ("ok", "ran") for row in rows) and all(row.get("blocks_back_home", True)
                                                                          for row in rows)
        ok &= good
        protocol["sections"][section] = {"status": status if good or status != "ok" else "check failed",
                                         "seconds": round(time.perf_counter() - section_start, 1), "rows": len(rows)}
        if section in ("layers", "end-to-end"):
            combined += rows
            if combined:
                write_csv(output, combined)
        elif rows:
            write_csv(output.with_name(f"{output.stem}_{section.replace('-', '_')}.csv"), rows)
        print_table(f"{section} ({protocol['sections'][section]['status']}, "
                    f"{protocol['sections'][section]['seconds']:.0f} s)", rows)
        output.with_suffix(".json").write_text(json.dumps(protocol, indent=1))
    print(f"\n{time.perf_counter() - started:.0f} s in all; sections: "
          + ", ".join(f"{k} {v['status']}" for k, v in protocol["sections"].items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
