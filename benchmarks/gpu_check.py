"""A short GPU check, ready for a lent accelerator: per-layer SparseGPT / GPTQ on Llama-7B shapes with random
weights, and an end-to-end compress + evaluate of a tiny model on the device. Prints one table.

    python benchmarks/gpu_check.py                      # cuda: 7B shapes, under 8 minutes on one modern GPU
    python benchmarks/gpu_check.py --device cpu --quick # the same code on the CPU with small shapes (CI-sized)

Per layer shape (rows x columns = out x in; Llama-7B: 4096x4096 q/k/v/o, 11008x4096 gate/up, 4096x11008
down): a Hessian from 2048 correlated random inputs, then `helpers.compression.obs.sparsegpt` at 50% and
2:4 and `gptq` at 4 bits per channel and g128 with act-order, timed with the device synchronized,
with the OBS error and the fraction of exact zeros (pruned, or rounded to 0) as a sanity check. End to end: tiny-llama (random weights
from a config: no network) compressed by SparseGPT 50% and GPTQ 4-bit through the layer-wise engine on
the device, then perplexity and KL against the dense model. The table also goes to
`results/benchmarks/gpu_check.csv`; nothing here needs the model hub.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import correlated_inputs, random_weight  # noqa: E402  (the layer benchmark's random data)

from helpers.compression.compress import Recipe, compress_model  # noqa: E402
from helpers.compression.obs import gptq, sparsegpt  # noqa: E402
from helpers.compression.quantizer import QuantSettings  # noqa: E402
from helpers.evaluation.metrics import DenseReference, evaluate  # noqa: E402
from helpers.models import load_model  # noqa: E402

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes (for a CPU check of the script)")
    parser.add_argument("--tokens", type=int, default=2048, help="random calibration inputs per layer")
    parser.add_argument("--output", default="results/benchmarks/gpu_check.csv")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU; run with --device cpu --quick to check the script")
    started = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    rows = layer_rows(args.device, SHAPES["quick" if args.quick else "full"], args.tokens)
    rows += end_to_end_rows(args.device)
    columns = ["check", "config", "shape", "seconds", "obs_error", "zeros", "finite", "perplexity",
               "dense_perplexity", "mean_kl"]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"device: {name}; torch {torch.__version__}; {time.perf_counter() - started:.0f} s in all")
    print(f"{'check':<24}{'config':<28}{'shape':<12}{'seconds':>9}{'zeros':>10}{'obs error':>12}{'ppl':>9}")
    for row in rows:
        ppl = f"{row['perplexity']:.2f}" if "perplexity" in row else ""
        error = f"{row['obs_error']:.4g}" if row["obs_error"] is not None else ""
        print(f"{row['check']:<24}{row['config']:<28}{row['shape']:<12}{row['seconds']:>9.2f}"
              f"{row['zeros']:>10.3f}{error:>12}{ppl:>9}")
    return 0 if all(row["finite"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
