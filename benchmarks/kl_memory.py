"""Peak memory of per-position KL(dense || compressed) on one long window of a real model.

    python benchmarks/kl_memory.py --model smollm2-135m --context 8192

Builds the DenseReference (the dense model's final hidden states, stored once), compresses the same
model in place (RTN 4-bit per channel, no calibration), evaluates perplexity and KL per position (the
forward pass and the chunked head timed apart), and prints the seconds and the process's peak resident
memory after each step next to what holding both models' full [context x vocab] float32 logits would take. Peak RSS comes from getrusage (ru_maxrss): it
includes the model weights, the forward pass's activations and everything else the process holds.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.data import evaluation_windows
from helpers.evaluation.metrics import DenseReference, WindowResult, final_hidden, nll_and_kl
from helpers.models import load_model
from helpers.compression.quantizer import QuantSettings


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--context", type=int, default=8192, help="tokens in the one evaluation window")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare-sdpa", action="store_true",
                        help="also time the compressed forward with sdpa over the whole masked square (a model with "
                             "sliding-window blocks runs them block by block: helpers.models.SLIDING_BLOCKS)")
    parser.add_argument("--output", default="results/benchmarks/kl_memory.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    model, tokenizer = load_model(args.model)
    rows.append(("model loaded", None, peak_mib()))
    windows = evaluation_windows(tokenizer, seq_len=args.context, max_windows=1)
    start = time.perf_counter()
    reference = DenseReference(model, windows, progress=False)
    rows.append(("dense reference (hidden states stored)", time.perf_counter() - start, peak_mib()))
    compress_model(model, Recipe(method="rtn", quant=QuantSettings(bits=4)), progress=False)
    # the compressed evaluation split in its two parts (what `evaluate` does per window), to see which dominates
    start = time.perf_counter()
    with torch.no_grad():
        hidden = final_hidden(model, windows)[0]
    rows.append((f"compressed forward (final hidden states; attention {model.config._attn_implementation})",
                 time.perf_counter() - start, peak_mib()))
    if args.compare_sdpa and model.config._attn_implementation != "sdpa":
        model.set_attn_implementation("sdpa")
        start = time.perf_counter()
        with torch.no_grad():
            whole = final_hidden(model, windows)[0]
        rows.append(("compressed forward, sdpa over the whole masked square", time.perf_counter() - start, peak_mib()))
        print(f"sliding blocks vs sdpa: max |difference| of the final hidden states {(whole - hidden).abs().max():.2e} "
              f"(largest value {hidden.abs().max():.1f})")
    start = time.perf_counter()
    nll, kl = nll_and_kl(model, reference.hidden[0], hidden, windows[0])
    rows.append(("chunked head, NLL and KL (dense and compressed log-probabilities)", time.perf_counter() - start,
                 peak_mib()))
    result = WindowResult(nll=nll[None], kl=kl[None])
    logits_mib = 2 * args.context * model.config.vocab_size * 4 / 2 ** 20
    print(f"model={args.model} context={args.context} vocab={model.config.vocab_size} threads={args.threads}")
    print(f"| step | seconds | peak RSS MiB |\n|---|---|---|")
    for step, seconds, peak in rows:
        print(f"| {step} | {'' if seconds is None else f'{seconds:.1f}'} | {peak:.0f} |")
    print(f"stored dense hidden states: {reference.nbytes() / 2 ** 20:.1f} MiB; both models' full logits "
          f"would be {logits_mib:.0f} MiB on their own")
    kl = result.kl[0]
    quarter = args.context // 4
    print(f"RTN 4-bit: perplexity {result.perplexity:.2f}, mean KL {kl.mean():.4f}; mean KL in the first / last "
          f"quarter of positions {kl[:quarter].mean():.4f} / {kl[-quarter:].mean():.4f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({
        "protocol": vars(args) | {"memory": "process peak RSS (getrusage ru_maxrss)",
                                  "dataset": "wikitext2 test, first window"},
        "steps": [{"step": s, "seconds": t, "peak_rss_mib": p} for s, t, p in rows],
        "full_logits_two_models_mib": logits_mib, "dense_hidden_mib": reference.nbytes() / 2 ** 20,
        "perplexity": result.perplexity, "mean_kl": float(kl.mean())}, indent=1))


if __name__ == "__main__":
    main()
