"""Measured on-disk sizes of one model saved in the compressed-tensors format (helpers.compression.export),
beside the bits per weight the storage model counts (helpers.compression.storage).

    python benchmarks/export_sizes.py                               # SmolLM2-135M, every variant (~4 min here)
    python benchmarks/export_sizes.py --only dense "RTN 4-bit g128"  # some of them
    python benchmarks/export_sizes.py --model tiny-llama --output /tmp/sizes.jsonl   # smoke test

Each variant: load the model (float32), compress it (RTN and magnitude need no calibration),
save_compressed into a temporary folder, load the folder back with transformers and compare the
logits on one 64-token text with the model in memory (`round trip`: exact = bit for bit), record the
bytes of the .safetensors files, then delete the folder. "dense" is the uncompressed model saved by
save_pretrained. "magnitude 50% + RTN 4-bit" prunes, then rounds the pruned weights (a zero stays a
zero on a grid that holds 0); its counted bits are the storage model's joint count (codes for kept
weights + the 1-bit mask). Rows are appended to --output as they finish (recorded labels are
skipped); the markdown table of every recorded row is printed at the end.

Columns: `file MB` = all .safetensors bytes (embeddings, tied head and norms included: SmolLM2's
49,152 x 576 float32 embedding alone is 113 MB); `linears MB` = the decoder-block linears' tensors
(codes, scales, zero points, shapes; dense values where unquantized); `bits/w on disk` = 8 x linears
bytes / their weights; `bits/w counted` = report.bits_per_weight (fp16 scales and values, b-bit
zeros, a 1-bit-per-position mask for pruned weights, packed-v1).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from helpers.compression.compress import Recipe, compress_model  # noqa: E402
from helpers.compression.export import measured_sizes, save_compressed  # noqa: E402
from helpers.compression.quantizer import QuantSettings  # noqa: E402
from helpers.compression.storage import VALUE_BITS, storage_bits  # noqa: E402
from helpers.models import compressed_linears, linear_weight, load_model  # noqa: E402

TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure "
        "in Paris. Its base is square, measuring 125 metres on each side.")


def g128(bits: int) -> QuantSettings:
    return QuantSettings(bits=bits, group_size=128)


VARIANTS = {  # label -> list of recipes applied in turn (empty: dense)
    "dense": [],
    "RTN 8-bit g128": [Recipe(method="rtn", quant=g128(8))],
    "RTN 4-bit g128": [Recipe(method="rtn", quant=g128(4))],
    "RTN 3-bit g128": [Recipe(method="rtn", quant=g128(3))],
    "magnitude 50%": [Recipe(method="magnitude", sparsity=0.5)],
    "magnitude 2:4": [Recipe(method="magnitude", pattern="2:4")],
    "magnitude 50% + RTN 4-bit g128": [Recipe(method="magnitude", sparsity=0.5), Recipe(method="rtn", quant=g128(4))],
}


def joint_bits(model, quant: QuantSettings) -> float:
    """The storage model's bits per weight of quantized layers whose exact zeros are pruned positions."""
    total = weights = 0
    for layer in compressed_linears(model).values():
        weight = linear_weight(layer)
        total += storage_bits(tuple(weight.shape), quant, kept=int((weight != 0).sum())).total
        weights += weight.numel()
    return total / weights


def measure(model_name: str, label: str, recipes: list[Recipe]) -> dict:
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model(model_name)
    ids = torch.tensor([tokenizer(TEXT)["input_ids"][:64]])
    started = time.perf_counter()
    report = None
    for recipe in recipes:
        report = compress_model(model, recipe, tokenizer=tokenizer, progress=False)
    seconds_compress = time.perf_counter() - started
    folder = Path(tempfile.mkdtemp(prefix="export-sizes-")) / "model"
    try:
        started = time.perf_counter()
        if report is None:
            model.save_pretrained(folder)
            linears = {name: linear_weight(layer).numel() for name, layer in compressed_linears(model).items()}
            saved = {"format": "dense (save_pretrained)", "written_group_size": None, "bits_per_weight": VALUE_BITS,
                     **measured_sizes(folder, linears)}
        else:
            saved = save_compressed(model, report, folder, tokenizer=tokenizer)
        seconds_save = time.perf_counter() - started
        counted = saved["bits_per_weight"]
        if len(recipes) > 1:  # pruned, then quantized: count the zeros as pruned positions
            counted = joint_bits(model, recipes[-1].quant)
        back = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            expected, loaded = model(ids).logits, back(ids).logits
        difference = (expected - loaded).abs().max().item()
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return {"model": model_name, "label": label, "format": saved["format"], "bytes": saved["bytes"],
            "linear_bytes": saved["linear_bytes"], "linear_weights": saved["linear_weights"],
            "measured_bits_per_weight": saved["measured_bits_per_weight"], "counted_bits_per_weight": counted,
            "written_group_size": saved["written_group_size"], "max_logit_difference": difference,
            "exact": difference == 0.0, "sparsity": 0.0 if report is None else report.achieved_sparsity,
            "seconds_compress": seconds_compress, "seconds_save": seconds_save,
            "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(rows: list[dict]) -> str:
    lines = ["| variant | format | written group | file MB | linears MB | bits/w on disk | bits/w counted | "
             "sparsity | round trip |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        trip = "exact" if r["exact"] else f"max |dlogit| {r['max_logit_difference']:.1e}"
        group = r["written_group_size"] or ("per row" if r["format"] == "pack-quantized" else "–")
        lines.append(f"| {r['label']} | {r['format']} | {group} | {r['bytes'] / 1e6:.1f} | "
                     f"{r['linear_bytes'] / 1e6:.1f} | {r['measured_bits_per_weight']:.2f} | "
                     f"{r['counted_bits_per_weight']:.2f} | {r['sparsity']:.3f} | {trip} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", nargs="+", default=None, choices=list(VARIANTS), help="variants to measure")
    parser.add_argument("--output", default="results/export_sizes.jsonl", help="JSON-lines rows (appended)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else []
    done = {r["label"] for r in rows if r["model"] == args.model}
    for label in args.only or list(VARIANTS):
        if label in done:
            print(f"{label}: already recorded, skipped")
            continue
        row = measure(args.model, label, VARIANTS[label])
        with output.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"{label}: {row['bytes'] / 1e6:.1f} MB, {row['measured_bits_per_weight']:.2f} bits/w on disk "
              f"({row['seconds_compress']:.0f} s compress, {row['seconds_save']:.0f} s save)", flush=True)
    order = list(VARIANTS)
    mine = sorted((r for r in rows if r["model"] == args.model), key=lambda r: order.index(r["label"]))
    print(f"\n{args.model}, torch {torch.__version__}, {args.threads} thread(s)\n")
    print(table(mine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
