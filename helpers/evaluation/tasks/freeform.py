"""Free-form generation tasks: summarization (CNN/DM, XSum) and instruction following (Vicuna bench).

Generation and judging are separate steps so a judge can re-score saved generations:

    gen = generate_summaries(model, tokenizer, 10, SummarizationSettings(), records_path="gen.jsonl")
    judged = judge_records(gen.records, [RougeJudge(), EmbeddingJudge()], records_path="judged.jsonl")

`evaluate_summarization` / `evaluate_instruction_following` do both and put the judges' means in
the aggregate. CNN/DM: the 90 stories LLM-KICK selected, prompt = instruction + "\\n\\n" + article
(LLM-KICK pasted the whole .story file, reference highlights included, and said "news" instead of
"story" for the mid and large sets; here the highlights are the reference, not the input). XSum:
the HELM 0-shot prompt as stored. Vicuna bench: the question as the user turn, the stored
gpt-3.5-turbo answer as the reference (Assistant 1 for the pairwise judges).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .common import mean, select_examples
from .generation import GenerationSettings, encode, generate
from .judges import Judge, RougeJudge, judge_records, summarize_judgements
from .records import TaskResult, Timer, as_writer

CNNDM_INSTRUCTION = ("Summarize the given story in less than 150 words while preserving high coherence, "
                     "consistency, fluency, and relevance.")
SUMMARY_DATASETS = {"cnndm": "cnndm_stories", "xsum": "xsum"}


@dataclass(frozen=True)
class SummarizationSettings:
    dataset: str = "cnndm"  # "cnndm" (the 90 LLM-KICK stories) or "xsum"
    instruction: str = CNNDM_INSTRUCTION  # CNN/DM only; XSum prompts carry their own
    max_article_tokens: int | None = 1536  # articles longer than this are cut (tokens); None: never
    generation: GenerationSettings = GenerationSettings(max_new_tokens=256, batch_size=2)
    seed: int | None = None

    def __post_init__(self):
        if self.dataset not in SUMMARY_DATASETS:
            raise ValueError(f"dataset={self.dataset!r}; expected one of {sorted(SUMMARY_DATASETS)}.")
        if self.max_article_tokens is not None and self.max_article_tokens < 1:
            raise ValueError(f"max_article_tokens={self.max_article_tokens}; expected a positive count or None.")


def _cut(tokenizer, text: str, limit: int | None) -> tuple[str, bool]:
    if limit is None:
        return text, False
    ids = encode(tokenizer, text, chat_template=True)  # no special tokens
    if len(ids) <= limit:
        return text, False
    return tokenizer.decode(ids[:limit], skip_special_tokens=True), True


def summary_prompts(tokenizer, rows: list[dict], settings: SummarizationSettings) -> list[dict]:
    out = []
    for position, row in enumerate(rows):
        if settings.dataset == "cnndm":
            article, cut = _cut(tokenizer, row["article"], settings.max_article_tokens)
            out.append({"id": row.get("id", position), "category": row.get("size"), "article_cut": cut,
                        "prompt": f"{settings.instruction}\n\n{article}", "reference": row["reference"]})
        else:
            head, sep, tail = row["article"].rpartition("\n\nSummarize the above article")
            article, cut = _cut(tokenizer, head if sep else row["article"], settings.max_article_tokens)
            prompt = article + sep + tail if sep else article
            out.append({"id": position, "category": None, "article_cut": cut, "prompt": prompt,
                        "reference": row["summary_gt"]})
    return out


def _run(model, tokenizer, items: list[dict], generation: GenerationSettings, task: str, judge_kind: str,
         records_path, context) -> tuple[list[dict], float]:
    writer = as_writer(records_path)

    def on_record(record):
        record.update({"task": task, **(context or {}), **{k: v for k, v in items[record["index"]].items()
                                                            if k != "prompt"}, "judge_kind": judge_kind})
        if writer is not None:
            writer.write(record)

    with Timer() as timer:
        records = generate(model, tokenizer, [i["prompt"] for i in items], generation, on_record=on_record,
                           description=task)
    return records, timer.seconds


def generate_summaries(model, tokenizer, examples=None, settings: SummarizationSettings = SummarizationSettings(), *,
                       records_path=None, context: dict | None = None) -> TaskResult:
    """Summaries of CNN/DM stories ({article, reference, size, id}) or XSum rows ({article, summary_gt})."""
    dataset = SUMMARY_DATASETS[settings.dataset]
    required = ["article", "reference"] if settings.dataset == "cnndm" else ["article", "summary_gt"]
    rows = select_examples(dataset, examples, required, seed=settings.seed)
    items = summary_prompts(tokenizer, rows, settings)
    records, seconds = _run(model, tokenizer, items, settings.generation, f"summarization/{settings.dataset}",
                            "summarization", records_path, context)
    return TaskResult(f"summarization/{settings.dataset}", records, _generation_stats(records),
                      _settings(settings, records), seconds)


@dataclass(frozen=True)
class InstructionSettings:
    generation: GenerationSettings = GenerationSettings(max_new_tokens=512, batch_size=2)
    seed: int | None = None


def generate_instruction_answers(model, tokenizer, examples=None, settings: InstructionSettings = InstructionSettings(),
                                 *, records_path=None, context: dict | None = None) -> TaskResult:
    """Answers to Vicuna-bench questions ({question_id, text, category, reference})."""
    rows = select_examples("vicuna_bench", examples, ["question_id", "text", "category"], seed=settings.seed)
    items = [{"id": r["question_id"], "question_id": r["question_id"], "category": r["category"], "prompt": r["text"],
              "reference": r.get("reference")} for r in rows]
    records, seconds = _run(model, tokenizer, items, settings.generation, "instruction_following",
                            "instruction_following", records_path, context)
    return TaskResult("instruction_following", records, _generation_stats(records), _settings(settings, records),
                      seconds)


def _generation_stats(records: list[dict]) -> dict:
    return {"examples": len(records), "mean_generated_tokens": mean(r["generated_tokens"] for r in records),
            "mean_generated_words": mean(len(r["generation"].split()) for r in records),
            "empty_generations": sum(not r["generation"].strip() for r in records)}


def _settings(settings, records) -> dict:
    out = asdict(settings)
    out["chat_template_used"] = bool(records and records[0]["chat_template"])
    return out


def _judge_and_merge(result: TaskResult, judges, judgements_path, on_error) -> TaskResult:
    judges = [judges] if isinstance(judges, Judge) else list(judges)
    judgements = judge_records(result.records, judges, records_path=judgements_path, on_error=on_error)
    result.aggregate.update(summarize_judgements(judgements))
    result.extra["judgements"] = judgements
    result.settings["judges"] = {j.name: j.describe() for j in judges}
    return result


def evaluate_summarization(model, tokenizer, examples=None, settings: SummarizationSettings = SummarizationSettings(),
                           *, judges=None, records_path=None, judgements_path=None, on_error: str = "record",
                           context: dict | None = None) -> TaskResult:
    """generate_summaries, then each judge (default: ROUGE); judgements in result.extra["judgements"]."""
    result = generate_summaries(model, tokenizer, examples, settings, records_path=records_path, context=context)
    return _judge_and_merge(result, judges if judges is not None else [RougeJudge()], judgements_path, on_error)


def evaluate_instruction_following(model, tokenizer, examples=None,
                                   settings: InstructionSettings = InstructionSettings(), *, judges=None,
                                   records_path=None, judgements_path=None, on_error: str = "record",
                                   context: dict | None = None) -> TaskResult:
    """generate_instruction_answers, then each judge (default: ROUGE against the gpt-3.5 answer)."""
    result = generate_instruction_answers(model, tokenizer, examples, settings, records_path=records_path,
                                          context=context)
    return _judge_and_merge(result, judges if judges is not None else [RougeJudge()], judgements_path, on_error)
