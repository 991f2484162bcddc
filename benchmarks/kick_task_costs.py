"""What each LLM-KICK task costs per example, and where the dense model sits against its floor.

    python benchmarks/kick_task_costs.py                          # SmolLM2-135M-Instruct, ~5 min on 2 cores
    python benchmarks/kick_task_costs.py --model gemma3-270m      # the base model twice the size
    python benchmarks/kick_task_costs.py --scale 0.25             # fewer examples per task (a quick look)
    python benchmarks/kick_task_costs.py --model gemma3-270m --batch-sizes 8 16 32 --only triviaqa_closed_book
                                                                  # short answers per generation batch

Runs every task of notebook 03 on the dense model with a small seeded draw (the same prompts and
generation lengths as the notebook's cpu profile), and prints one row per task: examples, seconds
per example, the minutes one compressed point would take at the sample size the evidence needs
(MMLU 1,000 with three scorings; QA 300 each; KV retrieval 100; summaries 30; Vicuna-bench 80), the
dense score with its 95% Wilson interval on this draw, chance, and whether the draw is at the floor
(within 2 standard errors of chance). The sample sizes of the notebook's cpu profile and which
tasks get the full sweep are chosen from this table.

With --batch-sizes, the short-answer tasks (FreebaseQA, closed- and open-book QA) instead run once per
batch size on the same prompts: seconds per example, the speed-up over the first size, and the share of
answers identical to the first size's (padding and matrix shapes change the float rounding, so a few
greedy answers may flip; dense and compressed points of one run share a batch size).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

# task name -> (kind, examples for this benchmark, examples the evidence needs, chance)
PLAN = {
    "mmlu": ("mmlu", 60, 1000, 0.25),
    "freebaseqa": ("factoid", 40, 300, 0.0),
    "triviaqa_closed_book": ("retrieval_qa", 40, 300, 0.0),
    "nq_closed_book": ("retrieval_qa", 40, 300, 0.0),
    "nq_open_book": ("retrieval_qa", 20, 300, 0.0),
    "kv_retrieval": ("kv_retrieval", 20, 100, 0.0),
    "summarization": ("summarization", 3, 30, None),
    "instruction_following": ("instruction_following", 3, 80, None),
}


SHORT_ANSWER = ("freebaseqa", "triviaqa_closed_book", "nq_closed_book", "nq_open_book")


def tasks(scale: float, kv_pairs: int, batch_size: int = 8):
    from helpers.evaluation.tasks import (FactoidSettings, GenerationSettings, KVRetrievalSettings, MMLUSettings,
                                          RetrievalQASettings, SummarizationSettings)
    from helpers.evaluation.tasks.freeform import InstructionSettings
    from helpers.experiments.kick import KickTask

    quiet = dict(progress=False)
    short = GenerationSettings(max_new_tokens=12, stop_at_newline=True, batch_size=batch_size, **quiet)
    n = {name: max(1, round(plan[1] * scale)) for name, plan in PLAN.items()}
    return [
        KickTask("mmlu", "mmlu", n["mmlu"], MMLUSettings(shots=0, scorings=("generate", "loglik", "cloze"), **quiet),
                 primary="loglik_micro_accuracy", chance=0.25),
        KickTask("freebaseqa", "factoid", n["freebaseqa"], FactoidSettings(
            generation=GenerationSettings(max_new_tokens=12, batch_size=batch_size, **quiet), seed=0)),
        KickTask("triviaqa_closed_book", "retrieval_qa", n["triviaqa_closed_book"],
                 RetrievalQASettings(dataset="triviaqa", open_book=False, seed=0, generation=short)),
        KickTask("nq_closed_book", "retrieval_qa", n["nq_closed_book"],
                 RetrievalQASettings(open_book=False, seed=0, generation=short)),
        KickTask("nq_open_book", "retrieval_qa", n["nq_open_book"],
                 RetrievalQASettings(open_book=True, passage_chars=3072, seed=0, generation=short)),
        KickTask("kv_retrieval", "kv_retrieval", n["kv_retrieval"], KVRetrievalSettings(
            n_pairs=kv_pairs, seed=0, generation=GenerationSettings(max_new_tokens=28, chat_template=False, **quiet))),
        KickTask("summarization", "summarization", n["summarization"], SummarizationSettings(
            max_article_tokens=1536, seed=0, generation=GenerationSettings(max_new_tokens=128, batch_size=2, **quiet))),
        KickTask("instruction_following", "instruction_following", n["instruction_following"], InstructionSettings(
            seed=0, generation=GenerationSettings(max_new_tokens=256, batch_size=2, **quiet))),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every task's benchmark examples")
    parser.add_argument("--kv-pairs", type=int, default=5, help="UUID pairs in a key-value retrieval prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="compare these generation batch sizes on the short-answer tasks")
    parser.add_argument("--only", nargs="+", default=None, choices=sorted(PLAN), help="run only these tasks")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error(f"--scale {args.scale}: expected a factor in (0, 10].")
    if args.batch_sizes and min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes {args.batch_sizes}: expected positive integers.")
    torch.set_num_threads(args.threads)
    if args.batch_sizes:
        return compare_batch_sizes(args)
    from helpers.evaluation.uncertainty import score_summary
    from helpers.experiments.kick import example_scores
    from helpers.models import load_model

    model, tokenizer = load_model(args.model)
    print(f"{args.model}, {args.threads} threads; minutes per point = seconds per example x needed examples / 60")
    print(f"{'task':24s} {'n':>4s} {'s/example':>9s} {'needed':>6s} {'min/point':>9s}  dense score [95% Wilson]"
          "   chance  floor")
    total = 0.0
    for task in tasks(args.scale, args.kv_pairs):
        if args.only and task.name not in args.only:
            continue
        kind, _, needed, chance = PLAN[task.name]
        started = time.perf_counter()
        result = task.run(model, tokenizer)
        seconds = time.perf_counter() - started
        per_example = seconds / len(result.records)
        minutes = per_example * needed / 60
        total += minutes
        if chance is None:  # free-form: no per-example 0/1 score here (judged later)
            score = result.metrics().get("rouge/rougeL", float("nan"))
            print(f"{task.name:24s} {len(result.records):4d} {per_example:9.2f} {needed:6d} {minutes:9.1f}  "
                  f"ROUGE-L {score:.3f} (no judge run here)")
            continue
        rows = [("", task.score_key)] if kind != "mmlu" else [
            (f" {s}", f"{s}_micro_accuracy") for s in ("loglik", "generate", "cloze")]
        for suffix, primary in rows:
            summary = score_summary(example_scores(kind, primary, result.records), chance=chance)
            print(f"{(task.name + suffix):24s} {summary['n']:4d} {per_example:9.2f} {needed:6d} {minutes:9.1f}  "
                  f"{summary['score']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}]      {chance:.2f}  "
                  f"{'yes' if summary['at_floor'] else 'no'}")
    print(f"one point at the needed sizes: {total:.0f} min (plus its WikiText-2 pass)")
    return 0


def compare_batch_sizes(args) -> int:
    """Seconds per answer and identical answers across generation batch sizes (the short-answer tasks)."""
    from helpers.models import load_model

    model, tokenizer = load_model(args.model)
    names = [n for n in (args.only or SHORT_ANSWER) if n in SHORT_ANSWER]
    if not names:
        raise SystemExit(f"--only {args.only}: none is a short-answer task; expected some of {SHORT_ANSWER}.")
    print(f"{args.model}, {args.threads} threads; identical: answers equal to batch size {args.batch_sizes[0]}'s")
    print(f"{'task':24s} {'batch':>5s} {'n':>4s} {'s/answer':>8s} {'speed-up':>8s}  identical")
    for name in names:
        first, first_seconds = None, None
        for size in args.batch_sizes:
            task = next(t for t in tasks(args.scale, args.kv_pairs, batch_size=size) if t.name == name)
            started = time.perf_counter()
            result = task.run(model, tokenizer)
            seconds = (time.perf_counter() - started) / len(result.records)
            # the scored answer (closed / open book: the first line; FreebaseQA: the whole continuation)
            answers = [r.get("answer", r["generation"]) for r in sorted(result.records, key=lambda r: r["index"])]
            if first is None:
                first, first_seconds = answers, seconds
            same = sum(a == b for a, b in zip(answers, first))
            print(f"{name:24s} {size:5d} {len(answers):4d} {seconds:8.3f} {first_seconds / seconds:7.2f}x  "
                  f"{same}/{len(answers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
