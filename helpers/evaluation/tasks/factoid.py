"""Factoid QA on FreebaseQA, as LLM-KICK asks it, with the public code's two bugs fixed.

Prompt: "Please give answer to this question: {question}\\nThe answer is ", greedy decoding. A hit
when the normalized answer or one of its aliases appears, as whole words, in the normalized
*generated continuation* (LLM-KICK also searched the echoed prompt and counted one example too
many). Accuracy = hits / examples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .common import mean, select_examples
from .generation import GenerationSettings, generate
from .records import TaskResult, Timer, as_writer
from .text import contains_match, exact_match

FREEBASEQA_PROMPT = "Please give answer to this question: {question}\nThe answer is "


@dataclass(frozen=True)
class FactoidSettings:
    generation: GenerationSettings = GenerationSettings(max_new_tokens=32)
    prompt: str = FREEBASEQA_PROMPT
    seed: int | None = None  # with examples=n: None takes the first n questions, a seed draws n at random

    def __post_init__(self):
        if "{question}" not in self.prompt:
            raise ValueError(f"prompt={self.prompt!r} has no {{question}} slot; the question must go somewhere.")


def score_factoid(generation: str, golds: list[str]) -> dict:
    """hit: a gold answer/alias appears (whole words, normalized) in the generation; exact: it equals it."""
    return {"hit": contains_match(generation, golds), "exact": exact_match(generation.strip().split("\n")[0], golds)}


def evaluate_factoid_qa(model, tokenizer, examples=None, settings: FactoidSettings = FactoidSettings(), *,
                        records_path=None, context: dict | None = None) -> TaskResult:
    """FreebaseQA accuracy. examples: list of {question, answer, aliases}, an int n, or None (all).

    Returns a TaskResult whose records carry prompt, generation, gold (answer + aliases), hit.
    """
    rows = select_examples("freebaseqa", examples, ["question", "answer"], seed=settings.seed)
    writer = as_writer(records_path)
    golds = [[r["answer"], *r.get("aliases", [])] for r in rows]
    prompts = [settings.prompt.format(question=r["question"]) for r in rows]

    def on_record(record):
        index = record["index"]
        record.update({"task": "freebaseqa", **(context or {}), "question": rows[index]["question"],
                       "gold": golds[index], **score_factoid(record["generation"], golds[index])})
        record["score"] = float(record["hit"])
        if writer is not None:
            writer.write(record)

    with Timer() as timer:
        records = generate(model, tokenizer, prompts, settings.generation, on_record=on_record,
                           description="FreebaseQA")
    aggregate = {"accuracy": mean(r["hit"] for r in records), "exact_first_line": mean(r["exact"] for r in records),
                 "hits": sum(r["hit"] for r in records), "examples": len(records)}
    return TaskResult("freebaseqa", records, aggregate, _settings_dict(settings, records), timer.seconds)


def _settings_dict(settings, records) -> dict:
    out = asdict(settings)
    out["chat_template_used"] = bool(records and records[0]["chat_template"])
    return out
