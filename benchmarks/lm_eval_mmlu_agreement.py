"""Does the project's MMLU letter log-likelihood pick the same answer as lm-evaluation-harness's MMLU task?

    python benchmarks/lm_eval_mmlu_agreement.py                     # SmolLM2-135M, 200 test questions (~1 min)
    python benchmarks/lm_eval_mmlu_agreement.py --questions 50 --model tiny-llama   # needs an HF tokenizer: not tiny

Both score the same seeded draw of MMLU test questions (helpers.evaluation.tasks.mmlu.subsample, seed
0), zero-shot, on the same model in memory:
- the project: evaluate_mmlu(shots=0, scorings=("loglik",)): the letter among " A".." D" with the
  highest log-likelihood after "The following are multiple choice questions (with answers) about
  <subject>.\\n\\n<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:";
- lm-eval 0.4.13: a local task (no hub) built from the installed package's own MMLU config
  (lm_eval/tasks/mmlu/default/_default_template_yaml: doc_to_text, doc_to_choice, output_type),
  with each subject's description, checked against the installed mmlu_<subject>.yaml, as a template
  over the row, so one task holds every subject. Run through HFLM on the model object.
Prints how many questions get the same choice, how many prompts are the same string, the largest
difference of a choice's log-likelihood, and both accuracies. Needs lm-eval
(pip install -r requirements-lm-eval.txt); without it the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

LETTERS = "ABCD"


def lm_eval_mmlu_template() -> dict:
    """The installed lm-eval's default MMLU task config (the fields every subject task includes)."""
    import lm_eval
    import yaml

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    template = yaml.safe_load((folder / "_default_template_yaml").read_text())
    return {"folder": folder, **template}


def subject_description(folder: Path, subject: str) -> str:
    """lm-eval's description of one MMLU subject, from its installed task file."""
    import yaml

    return yaml.safe_load((folder / f"mmlu_{subject}.yaml").read_text())["description"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("lm_eval") is None:
        print("lm-eval is not installed (optional): pip install -r requirements-lm-eval.txt; skipped.")
        return 0
    torch.set_num_threads(args.threads)

    from helpers.data import load_dataset
    from helpers.evaluation.lm_eval_route import LMEvalSettings, evaluate_lm_eval, write_local_task
    from helpers.evaluation.tasks.mmlu import MMLUSettings, evaluate_mmlu, format_subject, subsample
    from helpers.models import load_model

    model, tokenizer = load_model(args.model)
    rows = subsample(load_dataset("mmlu", split="test"), MMLUSettings(n_total=args.questions, seed=args.seed))

    started = time.perf_counter()
    ours = evaluate_mmlu(model, tokenizer, rows, MMLUSettings(shots=0, scorings=("loglik",), max_context_tokens=None,
                                                              progress=False)).records
    seconds_ours = time.perf_counter() - started

    template = lm_eval_mmlu_template()
    description = "The following are multiple choice questions (with answers) about {{subject_text}}.\n\n"
    for subject in sorted({r["subject"] for r in rows}):  # the template renders lm-eval's own description
        installed = subject_description(template["folder"], subject)
        rendered = description.replace("{{subject_text}}", format_subject(subject))
        if installed != rendered:
            raise RuntimeError(f"lm-eval's description of {subject} is {installed!r}, not {rendered!r}; update the "
                               "template here.")
    documents = [{"question": r["question"], "choices": list(r["choices"]), "answer": LETTERS.index(r["answer"]),
                  "subject": r["subject"], "subject_text": format_subject(r["subject"])} for r in rows]
    with tempfile.TemporaryDirectory() as folder:
        write_local_task(folder, "mmlu_local", documents, doc_to_text=template["doc_to_text"],
                         doc_to_choice=template["doc_to_choice"], doc_to_target=template["doc_to_target"],
                         description=description, output_type=template["output_type"])
        started = time.perf_counter()
        out = evaluate_lm_eval(model, ["mmlu_local"], tokenizer=tokenizer, include_path=folder,
                               settings=LMEvalSettings(num_fewshot=0))
        seconds_lm_eval = time.perf_counter() - started
    samples = sorted(out["samples"]["mmlu_local"], key=lambda s: s["doc_id"])

    same_choice = same_prompt = whitespace_only = correct_ours = correct_lm_eval = 0
    largest_same, largest = 0.0, 0.0
    disagreements = []
    for row, record, sample in zip(rows, ours, samples):
        scores = [response[0][0] for response in sample["resps"]]
        theirs = LETTERS[max(range(4), key=lambda i: scores[i])]
        same_choice += theirs == record["loglik_prediction"]
        difference = max(abs(scores[i] - record["loglik"][letter]) for i, letter in enumerate(LETTERS))
        largest = max(largest, difference)
        if sample["arguments"][0][0] == record["model_input"]:
            same_prompt += 1
            largest_same = max(largest_same, difference)
        elif sample["arguments"][0][0] == record["model_input"].replace(row["question"], row["question"].strip(), 1):
            whitespace_only += 1  # lm-eval's template strips the question; the project's prompt keeps it as read
        correct_ours += record["loglik_correct"]
        correct_lm_eval += theirs == record["gold"]
        if theirs != record["loglik_prediction"]:
            disagreements.append((record["index"], record["subject"], record["loglik_prediction"], theirs))
    n = len(ours)
    print(f"model={args.model}, {n} MMLU test questions (seeded draw, seed {args.seed}), zero-shot, "
          f"{args.threads} thread(s); lm-eval {__import__('lm_eval').__version__}")
    print(f"same choice: {same_choice}/{n}")
    print(f"same prompt string: {same_prompt}/{n} (max |log-likelihood difference| of a choice there: "
          f"{largest_same:.1e}); differing only by whitespace around the question, which lm-eval strips: "
          f"{whitespace_only}/{n}; otherwise different: {n - same_prompt - whitespace_only}/{n} (max difference "
          f"over all questions: {largest:.2f} nats)")
    print(f"accuracy: project {correct_ours / n:.3f}, lm-eval {correct_lm_eval / n:.3f} "
          f"(lm-eval's own acc: {out['results']['mmlu_local']['acc,none']:.3f})")
    print(f"seconds: project {seconds_ours:.0f}, lm-eval {seconds_lm_eval:.0f}")
    for index, subject, mine, theirs in disagreements[:10]:
        print(f"  disagreement: question {index} ({subject}): project {mine}, lm-eval {theirs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
