"""In-context retrieval QA (open book vs closed book) and a key-value retrieval probe.

Open book (NQ-open with its gold passage): "Based on these texts, answer these questions:\\n\\n
{passage}\\n\\nQ: {question}\\nA:" with the passage truncated to 3,072 characters. Closed book
(NQ-open or TriviaQA): "Answer these questions:\\n\\nQ: {question}\\nA:". Greedy, 32 new tokens;
the answer is the first line of the stripped continuation. Scores: exact match of the normalized
answer against the normalized answers/aliases, and "contains" (a normalized answer appears in it
as whole words).

Key-value retrieval (lost-in-the-middle's synthetic data): `n_pairs` UUID pairs of one example
(the gold pair kept at `gold_position`) shown as a JSON object; the model is asked for the value
of the gold key; a hit when the exact value string appears in the continuation.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

from .common import mean, select_examples
from .generation import GenerationSettings, generate
from .records import TaskResult, Timer, as_writer
from .text import contains_match, exact_match, first_line

OPEN_BOOK_PROMPT = "Based on these texts, answer these questions:\n\n{passage}\n\nQ: {question}\nA:"
CLOSED_BOOK_PROMPT = "Answer these questions:\n\nQ: {question}\nA:"
KV_PROMPT = ("Extract the value corresponding to the specified key in the JSON object below.\n\n"
             "JSON data:\n{records}\n\nKey: \"{key}\"\nCorresponding value:")
QA_DATASETS = ("nq_open_oracle", "triviaqa")


@dataclass(frozen=True)
class RetrievalQASettings:
    dataset: str = "nq_open_oracle"  # or "triviaqa" (closed book only: no evidence here)
    open_book: bool = True
    passage_chars: int = 3072
    generation: GenerationSettings = GenerationSettings(max_new_tokens=32, stop_at_newline=True)
    seed: int | None = None  # with examples=n: None takes the first n, a seed draws n at random

    def __post_init__(self):
        if self.dataset not in QA_DATASETS:
            raise ValueError(f"dataset={self.dataset!r}; expected one of {QA_DATASETS}.")
        if self.open_book and self.dataset == "triviaqa":
            raise ValueError("dataset='triviaqa' has no evidence passages here; use open_book=False, or "
                             "dataset='nq_open_oracle' for the open-book setting.")
        if self.passage_chars < 1:
            raise ValueError(f"passage_chars={self.passage_chars}; expected a positive number of characters.")


def gold_passage(row: dict) -> str:
    """The gold passage text of an NQ-open-oracle example (the context marked isgold, else the first)."""
    contexts = row.get("ctxs") or []
    if not contexts:
        raise ValueError(f"the NQ example {row.get('question')!r} has no ctxs; open-book QA needs its passage.")
    gold = next((c for c in contexts if c.get("isgold")), contexts[0])
    return gold["text"]


def qa_prompt(row: dict, settings: RetrievalQASettings) -> str:
    if settings.open_book:
        return OPEN_BOOK_PROMPT.format(passage=gold_passage(row)[:settings.passage_chars], question=row["question"])
    return CLOSED_BOOK_PROMPT.format(question=row["question"])


def gold_answers(row: dict) -> list[str]:
    if "answers" in row:
        return list(row["answers"])
    return [row["answer"], *row.get("aliases", [])]


def evaluate_retrieval_qa(model, tokenizer, examples=None, settings: RetrievalQASettings = RetrievalQASettings(), *,
                          records_path=None, context: dict | None = None) -> TaskResult:
    """Open- or closed-book QA accuracy (exact match and contains) on NQ-open or TriviaQA.

    examples: a list of rows of `settings.dataset` ({question, answers, ctxs} for NQ;
    {question, answer, aliases} for TriviaQA), an int n, or None (all).
    """
    required = ["question", "answers"] if settings.dataset == "nq_open_oracle" else ["question", "answer"]
    rows = select_examples(settings.dataset, examples, required, seed=settings.seed)
    task = f"{settings.dataset}/{'open' if settings.open_book else 'closed'}_book"
    writer = as_writer(records_path)
    golds = [gold_answers(r) for r in rows]

    def on_record(record):
        index = record["index"]
        answer = first_line(record["generation"])
        record.update({"task": task, **(context or {}), "question": rows[index]["question"], "gold": golds[index],
                       "answer": answer, "exact": exact_match(answer, golds[index]),
                       "contains": contains_match(answer, golds[index])})
        record["score"] = float(record["exact"])
        if writer is not None:
            writer.write(record)

    with Timer() as timer:
        records = generate(model, tokenizer, [qa_prompt(r, settings) for r in rows], settings.generation,
                           on_record=on_record, description=task)
    aggregate = {"exact_match": mean(r["exact"] for r in records), "contains": mean(r["contains"] for r in records),
                 "examples": len(records)}
    out = asdict(settings)
    out["chat_template_used"] = bool(records and records[0]["chat_template"])
    return TaskResult(task, records, aggregate, out, timer.seconds)


# --------------------------------------------------------------------------- key-value retrieval
@dataclass(frozen=True)
class KVRetrievalSettings:
    n_pairs: int = 10  # pairs shown (the data has 75; a small model's context holds ~10-20)
    gold_position: int | None = None  # where the asked-for pair sits (0-based); None: seeded random
    seed: int = 0
    generation: GenerationSettings = GenerationSettings(max_new_tokens=48)

    def __post_init__(self):
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs={self.n_pairs}; expected at least 1 key-value pair.")
        if self.gold_position is not None and not 0 <= self.gold_position < self.n_pairs:
            raise ValueError(f"gold_position={self.gold_position}; expected 0..{self.n_pairs - 1} (or None).")


def format_kv_records(pairs: list[tuple[str, str]]) -> str:
    """A JSON object, one pair per line."""
    return json.dumps(dict(pairs), indent=1)


def kv_prompt(row: dict, settings: KVRetrievalSettings, rng: random.Random) -> tuple[str, int]:
    pairs = [tuple(p) for p in row["ordered_kv_records"]]
    key, value = row["key"], row["value"]
    others = [p for p in pairs if p[0] != key]
    if len(others) < settings.n_pairs - 1:
        raise ValueError(f"n_pairs={settings.n_pairs} but the example has only {len(others) + 1} pairs; "
                         f"ask for at most {len(others) + 1}.")
    shown = others[:settings.n_pairs - 1]
    position = settings.gold_position if settings.gold_position is not None else rng.randrange(settings.n_pairs)
    shown.insert(position, (key, value))
    return KV_PROMPT.format(records=format_kv_records(shown), key=key), position


def evaluate_kv_retrieval(model, tokenizer, examples=None, settings: KVRetrievalSettings = KVRetrievalSettings(), *,
                          records_path=None, context: dict | None = None) -> TaskResult:
    """Key-value retrieval accuracy: the exact value string appears in the continuation."""
    rows = select_examples("kv_retrieval", examples, ["ordered_kv_records", "key", "value"])
    rng = random.Random(settings.seed)
    built = [kv_prompt(r, settings, rng) for r in rows]
    writer = as_writer(records_path)

    def on_record(record):
        index = record["index"]
        value = rows[index]["value"]
        record.update({"task": "kv_retrieval", **(context or {}), "key": rows[index]["key"], "gold": value,
                       "gold_position": built[index][1], "n_pairs": settings.n_pairs,
                       "hit": value in record["generation"]})
        record["score"] = float(record["hit"])
        if writer is not None:
            writer.write(record)

    with Timer() as timer:
        records = generate(model, tokenizer, [p for p, _ in built], settings.generation, on_record=on_record,
                           description="key-value retrieval")
    aggregate = {"accuracy": mean(r["hit"] for r in records), "examples": len(records)}
    out = asdict(settings)
    out["chat_template_used"] = bool(records and records[0]["chat_template"])
    return TaskResult("kv_retrieval", records, aggregate, out, timer.seconds)
