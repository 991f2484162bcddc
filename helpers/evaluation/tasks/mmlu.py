"""MMLU k-shot (Hendrycks format), scored three ways.

Prompt: "The following are multiple choice questions (with answers) about {subject}.\\n\\n" then k
solved dev examples of the same subject ("question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: X\\n\\n")
and the test question ending in "Answer:". Shots are dropped, last first, while the prompt is
longer than `max_context_tokens` (less the answer's tokens); with no shot left the prompt keeps its
last tokens (recorded as `truncated`).

Scorings (all legitimate; the records and aggregates say which is which):
- "generate" (LLM-KICK): greedy-generate `letter_tokens` tokens; the answer is the first letter
  A-D of the stripped continuation standing as a word; anything else counts as wrong.
- "loglik" (lm-evaluation-harness's `mmlu`): the choice among " A", " B", " C", " D" with the highest
  log-likelihood as a continuation of the prompt (the question stripped, as lm-eval's template does).
- "cloze" (lm-evaluation-harness's `mmlu_continuation`): prompt "The following are questions (with
  answers) about {subject}.\n\n" + shots "Question: q\nAnswer: <answer text>\n\n" + "Question:
  q\nAnswer:"; each choice's text is scored as the continuation " <text>" and the prediction is the
  highest log-likelihood per character of the text (lm-eval's acc_norm). Small models sit above chance
  here when they cannot yet map an answer to its letter.
Aggregates: micro average (over questions), macro average (over subjects) and per subject.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...data import load_dataset
from .common import mean, select_examples
from .generation import context_length, encode, format_prompt, uses_chat_template
from .records import TaskResult, Timer, as_writer

LETTERS = ("A", "B", "C", "D")
SCORINGS = ("generate", "loglik", "cloze")
_LETTER = re.compile(r"^\s*([ABCD])(?![A-Za-z0-9])")


@dataclass(frozen=True)
class MMLUSettings:
    split: str = "test"
    shots: int = 5
    max_context_tokens: int | None = 2048  # None: the model's context length
    scorings: tuple[str, ...] = ("generate", "loglik")  # any of SCORINGS
    n_per_subject: int | None = None  # subsample: this many questions of each subject ...
    n_total: int | None = None        # ... or this many in all (seeded draw)
    seed: int = 0
    subjects: tuple[str, ...] | None = None
    letter_tokens: int = 1  # tokens generated for the "generate" scoring (LLM-KICK: 1)
    chat_template: bool = False  # the k-shot format is a completion; LLM-KICK fed it raw
    batch_size: int = 4
    progress: bool = True

    def __post_init__(self):
        if self.split not in ("test", "val"):
            raise ValueError(f"split={self.split!r}; expected 'test' or 'val' (the shots come from 'dev').")
        if not 0 <= self.shots <= 5:
            raise ValueError(f"shots={self.shots}; MMLU's dev split has 5 examples per subject, so 0..5.")
        unknown = [s for s in self.scorings if s not in SCORINGS]
        if unknown or not self.scorings:
            raise ValueError(f"scorings={self.scorings!r}; expected a non-empty subset of {SCORINGS}.")
        if self.n_per_subject is not None and self.n_total is not None:
            raise ValueError("give n_per_subject or n_total, not both.")
        for name in ("n_per_subject", "n_total"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}; expected a positive count or None (all questions).")
        if self.max_context_tokens is not None and self.max_context_tokens < 16:
            raise ValueError(f"max_context_tokens={self.max_context_tokens}; expected at least 16 or None.")


def format_subject(subject: str) -> str:
    return subject.replace("_", " ")


PROMPT_HEADERS = {"letters": "The following are multiple choice questions (with answers) about {}.\n\n",
                  "cloze": "The following are questions (with answers) about {}.\n\n"}


def format_example(row: dict, include_answer: bool, form: str = "letters") -> str:
    """One question: with its lettered choices ("letters", lm-eval's mmlu) or as "Question: ..\nAnswer:"
    ("cloze", lm-eval's mmlu_continuation); a shot ends in its answer (the letter, or the answer's text)."""
    question = row["question"].strip()
    if form == "letters":
        text = question + "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
        answer = row["answer"]
    else:
        text, answer = f"Question: {question}", row["choices"][LETTERS.index(row["answer"])]
    return text + "\nAnswer:" + (f" {answer}\n\n" if include_answer else "")


def build_prompt(subject: str, shots: list[dict], row: dict, form: str = "letters") -> str:
    if form not in PROMPT_HEADERS:
        raise ValueError(f"MMLU prompt form {form!r}; expected one of {sorted(PROMPT_HEADERS)}.")
    return (PROMPT_HEADERS[form].format(format_subject(subject)) + "".join(format_example(s, True, form) for s in shots)
            + format_example(row, False, form))


def parse_letter(text: str) -> str | None:
    """The answer letter of a generated continuation ("B", " B.", "B) ..."), or None."""
    match = _LETTER.match(text)
    return match.group(1) if match else None


def subsample(rows: list[dict], settings: MMLUSettings) -> list[dict]:
    if settings.subjects is not None:
        known = {r["subject"] for r in rows}
        unknown = sorted(set(settings.subjects) - known)
        if unknown:
            raise ValueError(f"subjects {unknown} are not in MMLU; known subjects are e.g. {sorted(known)[:5]}.")
        rows = [r for r in rows if r["subject"] in settings.subjects]
    rng = random.Random(settings.seed)
    if settings.n_total is not None:
        if settings.n_total > len(rows):
            raise ValueError(f"n_total={settings.n_total} but only {len(rows)} questions are selected.")
        keep = sorted(rng.sample(range(len(rows)), settings.n_total))
        return [rows[i] for i in keep]
    if settings.n_per_subject is not None:
        by_subject = defaultdict(list)
        for index, r in enumerate(rows):
            by_subject[r["subject"]].append(index)
        keep = []
        for subject in sorted(by_subject):
            indices = by_subject[subject]
            keep += indices if len(indices) <= settings.n_per_subject else rng.sample(indices, settings.n_per_subject)
        return [rows[i] for i in sorted(keep)]
    return rows


class _Encoder:
    """Prompt text -> model input text and ids, with the chat template if asked for."""

    def __init__(self, tokenizer, chat_template: bool):
        self.tokenizer = tokenizer
        self.chat = uses_chat_template(tokenizer, chat_template)

    def __call__(self, prompt: str) -> tuple[str, list[int]]:
        text = format_prompt(self.tokenizer, prompt, chat_template=self.chat)
        return text, encode(self.tokenizer, text, chat_template=self.chat)


def fit_prompt(encoder: _Encoder, subject: str, shots: list[dict], row: dict, limit: int | None,
               answer_tokens: int, form: str = "letters") -> dict:
    """Drop shots (last first) until prompt + answer fits in `limit`; truncate from the left if 0 shots don't."""
    k = len(shots)
    while True:
        prompt = build_prompt(subject, shots[:k], row, form)
        text, ids = encoder(prompt)
        if limit is None or len(ids) + answer_tokens <= limit or k == 0:
            break
        k -= 1
    truncated = limit is not None and len(ids) + answer_tokens > limit
    if truncated:
        ids = ids[len(ids) + answer_tokens - limit:]
    return {"prompt": prompt, "model_input": text, "ids": ids, "shots": k, "truncated": truncated}


def continuation_ids(tokenizer, encoder: _Encoder, prompt_ids: list[int], model_input: str,
                     continuations: dict[str, str] | None = None) -> dict[str, list[int]]:
    """Token ids of each continuation (default " A".." D") after the prompt: context+continuation
    encoded whole, minus the context's ids (as lm-eval splits a pair)."""
    out = {}
    for key, text in (continuations or {letter: f" {letter}" for letter in LETTERS}).items():
        whole = encode(tokenizer, model_input + text, chat_template=encoder.chat)
        if whole[:len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
            out[key] = whole[len(prompt_ids):]
        else:  # the tokenizer merged across the boundary: encode the continuation alone
            out[key] = encode(tokenizer, text, chat_template=True)
    return out


@torch.no_grad()
def next_token_logprobs(model, prompt_ids: list[int]) -> torch.Tensor:
    """log p(next token | prompt) over the vocabulary (one forward pass, last position only)."""
    device = next(model.parameters()).device
    output = model(input_ids=torch.tensor([prompt_ids], device=device), logits_to_keep=1)
    return F.log_softmax(output.logits[0, -1].float(), dim=-1)


@torch.no_grad()
def loglik_choices(model, prompt_ids: list[int], choices: dict[str, list[int]],
                   next_logprobs: torch.Tensor | None = None) -> dict[str, float]:
    """Sum of log-probabilities of each choice's tokens after the prompt."""
    device = next(model.parameters()).device
    if all(len(c) == 1 for c in choices.values()):  # one forward pass serves every choice
        logprobs = next_logprobs if next_logprobs is not None else next_token_logprobs(model, prompt_ids)
        return {letter: logprobs[c[0]].item() for letter, c in choices.items()}
    out = {}
    groups: dict[int, list[str]] = {}  # choices of equal token length share one batched forward pass
    for letter, cont in choices.items():
        groups.setdefault(len(cont), []).append(letter)
    for length, letters in groups.items():
        ids = torch.tensor([prompt_ids + choices[letter] for letter in letters], device=device)
        logits = model(input_ids=ids, logits_to_keep=length + 1).logits[:, :length].float()
        logprobs = F.log_softmax(logits, dim=-1)
        for row, letter in enumerate(letters):
            cont = torch.tensor(choices[letter], device=device)
            out[letter] = logprobs[row, torch.arange(length, device=device), cont].sum().item()
    return out


def evaluate_mmlu(model, tokenizer, examples=None, settings: MMLUSettings = MMLUSettings(), *,
                  dev_examples: list[dict] | None = None, records_path=None,
                  context: dict | None = None) -> TaskResult:
    """MMLU accuracy by the chosen scorings.

    examples: list of {subject, question, choices[4], answer}, an int n (a seeded draw of n questions,
    as settings.n_total) or None (the `settings.split` split, then subsampled by n_per_subject /
    n_total / subjects). dev_examples: the shots (default: the
    dev split); the first `shots` dev rows of each subject are used, in file order.
    """
    if isinstance(examples, int) and not isinstance(examples, bool):  # n questions: a seeded draw, as every task
        if settings.n_total is not None or settings.n_per_subject is not None:
            raise ValueError(f"examples={examples} and settings.n_total={settings.n_total} / n_per_subject="
                             f"{settings.n_per_subject}: give the number of questions one way, not both.")
        settings, examples = replace(settings, n_total=examples), None
    rows = select_examples("mmlu", examples, ["subject", "question", "choices", "answer"], split=settings.split)
    rows = subsample(rows, settings) if examples is None else rows
    for position, r in enumerate(rows):
        if len(r["choices"]) != 4 or r["answer"] not in LETTERS:
            raise ValueError(f"MMLU example {position} has {len(r['choices'])} choices and answer {r['answer']!r}; "
                             "expected 4 choices and an answer letter A-D.")
    dev = dev_examples if dev_examples is not None else load_dataset("mmlu", split="dev")
    shots_by_subject = defaultdict(list)
    for r in dev:
        shots_by_subject[r["subject"]].append(r)
    encoder = _Encoder(tokenizer, settings.chat_template)
    limit = settings.max_context_tokens or context_length(model)
    if limit is not None and context_length(model) is not None:
        limit = min(limit, context_length(model))
    answer_tokens = max(settings.letter_tokens, 1)
    writer = as_writer(records_path)

    with Timer() as timer:
        fitted = [fit_prompt(encoder, r["subject"], shots_by_subject[r["subject"]][:settings.shots], r, limit,
                             answer_tokens) for r in rows]
        records = [{"task": "mmlu", **(context or {}), "index": i, "subject": r["subject"], "gold": r["answer"],
                    "prompt": f["prompt"], "model_input": f["model_input"], "chat_template": encoder.chat,
                    "shots": f["shots"], "prompt_tokens": len(f["ids"]), "truncated": f["truncated"]}
                   for i, (r, f) in enumerate(zip(rows, fitted))]
        def finish(record):  # a record is complete: score it and save it at once
            record["score"] = {s: float(record[f"{s}_correct"]) for s in settings.scorings}
            if writer is not None:
                writer.write(record)

        shared = "loglik" in settings.scorings and "generate" in settings.scorings and settings.letter_tokens == 1
        last = next(s for s in ("cloze", "loglik", "generate") if s in settings.scorings)  # finishes the records
        if "generate" in settings.scorings and not shared:
            _score_generate(model, tokenizer, fitted, records, settings, finish if last == "generate" else None)
        if "loglik" in settings.scorings:
            for f, record in tqdm(list(zip(fitted, records)), desc="MMLU", disable=not settings.progress):
                choices = continuation_ids(tokenizer, encoder, f["ids"], f["model_input"])
                logprobs = next_token_logprobs(model, f["ids"])
                scores = loglik_choices(model, f["ids"], choices, logprobs)
                best = max(LETTERS, key=lambda letter: scores[letter])
                record.update({"loglik": scores, "loglik_prediction": best,
                               "loglik_correct": best == record["gold"]})
                if shared:  # one greedy token is the argmax of the same next-token distribution
                    text = tokenizer.decode([int(logprobs.argmax())], skip_special_tokens=True)
                    prediction = parse_letter(text)
                    record.update({"generation": text, "generate_prediction": prediction,
                                   "generate_correct": prediction == record["gold"]})
                if last == "loglik":
                    finish(record)
        if "cloze" in settings.scorings:
            _score_cloze(model, tokenizer, encoder, rows, shots_by_subject, records, settings, limit, finish)
    aggregate = summarize(records, settings.scorings)
    out = asdict(settings)
    out.update(chat_template_used=encoder.chat, context_limit=limit)
    return TaskResult("mmlu", records, aggregate, out, timer.seconds)


def _score_cloze(model, tokenizer, encoder, rows, shots_by_subject, records, settings: MMLUSettings, limit,
                 finish) -> None:
    """lm-eval's mmlu_continuation: each answer text as the continuation; argmax of log-likelihood per character."""
    for row, record in tqdm(list(zip(rows, records)), desc="MMLU cloze", disable=not settings.progress):
        texts = dict(zip(LETTERS, row["choices"]))
        longest = max(len(encode(tokenizer, f" {t}", chat_template=True)) for t in texts.values())
        f = fit_prompt(encoder, row["subject"], shots_by_subject[row["subject"]][:settings.shots], row, limit,
                       longest, form="cloze")
        choices = continuation_ids(tokenizer, encoder, f["ids"], f["model_input"],
                                   {letter: f" {t}" for letter, t in texts.items()})
        scores = loglik_choices(model, f["ids"], choices)
        per_char = {letter: scores[letter] / max(len(texts[letter]), 1) for letter in LETTERS}
        best = max(LETTERS, key=lambda letter: per_char[letter])
        record.update({"cloze_prompt": f["prompt"], "cloze_shots": f["shots"], "cloze_truncated": f["truncated"],
                       "cloze_loglik": scores, "cloze_prediction": best, "cloze_correct": best == record["gold"]})
        finish(record)


def _score_generate(model, tokenizer, fitted, records, settings: MMLUSettings, finish=None) -> None:
    """Greedy letter generation on the fitted (possibly truncated) token ids."""
    from .generation import eos_token_ids, left_pad, pad_token_id

    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    device = next(model.parameters()).device
    order = sorted(range(len(fitted)), key=lambda i: -len(fitted[i]["ids"]))
    bar = tqdm(total=len(order), desc="MMLU letter generation", disable=not settings.progress)
    for start in range(0, len(order), settings.batch_size):
        batch = order[start:start + settings.batch_size]
        ids, mask = left_pad([fitted[i]["ids"] for i in batch], pad_id, device)
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                    max_new_tokens=settings.letter_tokens, pad_token_id=pad_id,
                                    eos_token_id=eos_ids or None, temperature=None, top_p=None, top_k=None)
        for row, index in enumerate(batch):
            text = tokenizer.decode(output[row, ids.shape[1]:].tolist(), skip_special_tokens=True)
            prediction = parse_letter(text)
            records[index].update({"generation": text, "generate_prediction": prediction,
                                   "generate_correct": prediction == records[index]["gold"]})
            if finish is not None:
                finish(records[index])
        bar.update(len(batch))
    bar.close()


def summarize(records: list[dict], scorings) -> dict:
    aggregate = {"examples": len(records), "subjects": len({r["subject"] for r in records}),
                 "mean_shots": mean(r["shots"] for r in records), "truncated": sum(r["truncated"] for r in records)}
    for scoring in scorings:
        by_subject = defaultdict(list)
        for r in records:
            by_subject[r["subject"]].append(r[f"{scoring}_correct"])
        per_subject = {s: mean(v) for s, v in sorted(by_subject.items())}
        aggregate[f"{scoring}_micro_accuracy"] = mean(r[f"{scoring}_correct"] for r in records)
        aggregate[f"{scoring}_macro_accuracy"] = mean(per_subject.values())
        aggregate[f"{scoring}_per_subject"] = per_subject
    if "generate" in scorings:
        aggregate["generate_unparsed"] = sum(r["generate_prediction"] is None for r in records)
    return aggregate
