"""Datasets (local first, hub as fallback), perplexity windows and calibration samples.

The data folder is, in order: the `COMPRESSION_DATA_DIR` environment variable, a `shared/data`
folder inside the repository, or `../shared/data` beside the repository. Each dataset of
`DATASETS` names its files under that folder and, where one exists, its Hugging Face hub source;
a dataset missing locally is loaded from the hub, and if that fails too the error says where to
put the files.
"""
from __future__ import annotations

import csv
import gzip
import json
import numbers
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The local data folder (see the module docstring); may not exist."""
    env = os.environ.get("COMPRESSION_DATA_DIR")
    if env:
        return Path(env).expanduser()
    for candidate in (REPO_ROOT / "shared" / "data", REPO_ROOT.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data"


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------- local readers
def _wikitext2(folder: Path) -> str:
    return (folder / "wikitext2" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")


def _c4(folder: Path) -> list[str]:
    import pyarrow.parquet as pq
    return pq.read_table(folder / "c4" / "c4-validation-2k.parquet", columns=["text"]).column("text").to_pylist()


def _mmlu(folder: Path, split: str = "test") -> list[dict]:
    rows = []
    for path in sorted((folder / "mmlu" / split).glob("*.csv")):
        subject = path.stem.removesuffix(f"_{split}")
        with open(path, newline="", encoding="utf-8") as handle:
            for question, a, b, c, d, answer in csv.reader(handle):
                rows.append({"subject": subject, "question": question, "choices": [a, b, c, d],
                             "answer": answer.strip()})
    return rows


def _freebaseqa(folder: Path) -> list[dict]:
    return [{"question": r["context"], "answer": r["answer"], "aliases": r.get("aliases", [])}
            for r in _read_jsonl(folder / "freebaseqa" / "freebaseqa-train-subset.jsonl")]


def _triviaqa(folder: Path) -> list[dict]:
    rows = []
    for r in _read_jsonl(folder / "triviaqa" / "triviaqa-closed-book-3k.jsonl"):
        question = r["context"].removeprefix("Question:").removesuffix("Answer:").strip()
        rows.append({"question": question, "answer": r["answer"], "aliases": r.get("aliases", [])})
    return rows


def _nq_oracle(folder: Path) -> list[dict]:
    return _read_jsonl(folder / "nq_open_oracle" / "nq-open-oracle.jsonl.gz")


def _kv_retrieval(folder: Path) -> list[dict]:
    return _read_jsonl(folder / "kv_retrieval" / "kv-retrieval-75_keys.jsonl.gz")


def _cnndm_stories(folder: Path) -> list[dict]:
    rows = []
    for size in ("small", "mid", "large"):
        for path in sorted((folder / "cnndm_stories" / size).glob("*.story")):
            text = path.read_text(encoding="utf-8")
            article, _, rest = text.partition("@highlight")
            highlights = [h.strip() for h in ("@highlight" + rest).split("@highlight") if h.strip()]
            rows.append({"id": path.stem, "size": size, "article": article.strip(),
                         "reference": " ".join(h if h.endswith(".") else h + "." for h in highlights)})
    return rows


def _xsum(folder: Path) -> list[dict]:
    return _read_jsonl(folder / "xsum" / "xsum-0shot.jsonl")


def _vicuna_bench(folder: Path) -> list[dict]:
    questions = _read_jsonl(folder / "vicuna_bench" / "questions.jsonl")
    answers = {r["question_id"]: r["text"] for r in _read_jsonl(folder / "vicuna_bench" / "gpt-3.5-turbo-answers.jsonl")}
    return [{**q, "reference": answers.get(q["question_id"])} for q in questions]


def _judge_prompts(folder: Path) -> dict[str, list[dict]]:
    return {path.stem: _read_jsonl(path) for path in sorted((folder / "judge_prompts").glob("*.jsonl"))}


# --------------------------------------------------------------------------- hub fallbacks
def _hub_wikitext2() -> str:
    import datasets
    rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
    return "\n\n".join(rows)


def _hub_c4() -> list[str]:
    import datasets
    return datasets.load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                                 split="validation")["text"]


def _hub_mmlu(split: str = "test") -> list[dict]:
    import datasets
    letters = "ABCD"
    return [{"subject": r["subject"], "question": r["question"], "choices": r["choices"],
             "answer": letters[r["answer"]]} for r in datasets.load_dataset("cais/mmlu", "all", split=split)]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    local: Callable
    hub: Callable | None = None
    hub_id: str | None = None


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("wikitext2", "WikiText-2 raw test, rows joined with blank lines (one string)", _wikitext2,
                _hub_wikitext2, "wikitext/wikitext-2-raw-v1"),
    DatasetSpec("c4", "C4 English validation documents (local: a 2,000-document subset)", _c4, _hub_c4, "allenai/c4"),
    DatasetSpec("mmlu", "MMLU (Hendrycks) multiple choice; split=dev/val/test", _mmlu, _hub_mmlu, "cais/mmlu"),
    DatasetSpec("freebaseqa", "FreebaseQA train subset (LLM-KICK's factoid QA)", _freebaseqa),
    DatasetSpec("triviaqa", "TriviaQA closed-book subsample with aliases", _triviaqa),
    DatasetSpec("nq_open_oracle", "Natural Questions open with gold passages (open-book QA)", _nq_oracle),
    DatasetSpec("kv_retrieval", "Synthetic key-value retrieval, 75 pairs per example", _kv_retrieval),
    DatasetSpec("cnndm_stories", "The 90 CNN/DailyMail stories LLM-KICK summarizes", _cnndm_stories),
    DatasetSpec("xsum", "XSum 0-shot summarization prompts with references", _xsum),
    DatasetSpec("vicuna_bench", "80 Vicuna-bench questions with reference answers", _vicuna_bench),
    DatasetSpec("judge_prompts", "LLM-KICK judge prompt templates and reviewer settings", _judge_prompts),
]}


def load_dataset(name: str, **kwargs):
    """Load a dataset of the registry by name: local folder first, then the hub where one exists."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is not known; expected one of {sorted(DATASETS)}.")
    spec = DATASETS[name]
    folder = data_dir()
    local_error: Exception | None = None
    try:
        return spec.local(folder, **kwargs)
    except (FileNotFoundError, OSError) as err:
        local_error = err
    if spec.hub is not None and os.environ.get("HF_DATASETS_OFFLINE") != "1":
        try:
            return spec.hub(**kwargs)
        except Exception as err:  # noqa: BLE001 - any hub failure ends in the same advice
            local_error = err
    raise FileNotFoundError(
        f"dataset {name!r} was not found under the data folder {folder} ({local_error}). Put the files "
        f"there as described in DATA.md (or point COMPRESSION_DATA_DIR at a folder that has them)"
        + (f"; with a network it also loads from the hub ({spec.hub_id})." if spec.hub_id else "."))


# --------------------------------------------------------------------------- token streams
def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """One long text -> 1-D token ids (no special tokens added except a BOS the tokenizer insists on)."""
    ids = tokenizer(text, return_tensors=None)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def check_max_windows(max_windows: int | None) -> None:
    """max_windows (windows, not tokens) must be None (every window) or a whole number >= 1."""
    if max_windows is not None and (not isinstance(max_windows, numbers.Integral) or max_windows < 1):
        raise ValueError(f"max_windows={max_windows!r}; expected a whole number of windows >= 1, or None (leave "
                         "--max-windows out) to evaluate every window.")


def token_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [n, seq_len] of a 1-D token stream (seq_len and max_windows in tokens and
    windows); the incomplete tail is dropped."""
    check_max_windows(max_windows)
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short; a perplexity window needs at least 2 tokens.")
    count = tokens.numel() // seq_len
    if count == 0:
        raise ValueError(f"the token stream has {tokens.numel()} tokens, fewer than one window of "
                         f"seq_len={seq_len}; use a shorter window or a longer text.")
    if max_windows is not None:
        count = min(count, max_windows)
    return tokens[: count * seq_len].view(count, seq_len)


def evaluation_windows(tokenizer, *, dataset: str = "wikitext2", seq_len: int = 1024,
                       max_windows: int | None = None, token_file: str | None = None) -> torch.Tensor:
    """Perplexity / KL windows: WikiText-2 test (joined with blank lines) or a saved token tensor.
    seq_len: tokens per window; max_windows: the first N windows (None: all), checked before any text is read."""
    check_max_windows(max_windows)
    if token_file is not None:
        tokens = load_token_ids(token_file).reshape(-1)
    elif dataset == "wikitext2":
        tokens = tokenize_text(tokenizer, load_dataset("wikitext2"))
    elif dataset == "c4":
        tokens = tokenize_text(tokenizer, "\n\n".join(load_dataset("c4")))
    else:
        raise ValueError(f"evaluation dataset {dataset!r} is not supported; expected 'wikitext2' or 'c4', "
                         "or pass token_file=.")
    return token_windows(tokens, seq_len, max_windows)


def load_token_ids(path: str | Path) -> torch.Tensor:
    """Token ids saved by torch.save (a tensor) or as a .npy / .json list."""
    path = Path(path)
    if path.suffix == ".npy":
        import numpy as np
        return torch.from_numpy(np.load(path)).long()
    if path.suffix == ".json":
        return torch.tensor(json.loads(path.read_text()), dtype=torch.long)
    value = torch.load(path, map_location="cpu")
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path} holds a {type(value).__name__}, expected a tensor of token ids.")
    return value.long()


@dataclass(frozen=True)
class CalibrationSettings:
    """Calibration recipe (SparseGPT/Wanda default: 128 x 2048 tokens of C4, seed 0)."""
    dataset: str = "c4"
    n_samples: int = 128
    seq_len: int = 2048
    seed: int = 0
    token_file: str | None = None

    def __post_init__(self):
        if self.dataset not in ("c4", "wikitext2"):
            raise ValueError(f"calibration dataset={self.dataset!r}; expected 'c4' or 'wikitext2' "
                             "(or give token_file= with saved token ids).")
        if self.n_samples < 1 or self.seq_len < 2:
            raise ValueError(f"calibration needs n_samples >= 1 and seq_len >= 2, got "
                             f"n_samples={self.n_samples}, seq_len={self.seq_len}.")

    def as_dict(self) -> dict:
        return asdict(self)


# Tokens a tokenizer may add to one text beyond one per byte (BOS / EOS, a SentencePiece dummy prefix).
SPECIAL_TOKENS_ALLOWANCE = 8


def _check_drawable(settings: CalibrationSettings, texts: list[str]) -> None:
    """Refuse a seq_len no text of the calibration dataset can hold. Every tokenizer here (byte-level BPE,
    SentencePiece with byte fallback, bytes) spends at least one UTF-8 byte per token, so a text of B bytes
    has at most B + SPECIAL_TOKENS_ALLOWANCE tokens: a bound that needs no tokenizer."""
    longest = max((len(text.encode("utf-8")) for text in texts), default=0)
    if longest + SPECIAL_TOKENS_ALLOWANCE <= settings.seq_len:
        what = "text" if settings.dataset == "wikitext2" else "document"
        raise ValueError(f"calibration seq_len={settings.seq_len} tokens cannot be drawn from {settings.dataset}: "
                         f"its longest {what} has {longest:,} bytes (a token spends at least one), so none holds "
                         f"{settings.seq_len} tokens; use a much shorter seq_len (--calibration-seq-len; the reference "
                         "is 2048) or another calibration dataset.")


def _saved_calibration(settings: CalibrationSettings) -> torch.Tensor:
    """The saved token ids of settings.token_file, checked to hold [n_samples, seq_len]."""
    ids = load_token_ids(settings.token_file)
    if ids.dim() != 2 or ids.shape[0] < settings.n_samples or ids.shape[1] < settings.seq_len:
        raise ValueError(f"{settings.token_file} holds a tensor of shape {tuple(ids.shape)}; expected at "
                         f"least [{settings.n_samples}, {settings.seq_len}].")
    return ids


def check_calibration(settings: CalibrationSettings, *, context_length: int | None = None) -> None:
    """Refuse, before any forward pass, a calibration that cannot be drawn: seq_len (tokens) longer than the
    model's context (`context_length`, tokens; None: not checked), than a saved token file's rows, or than
    any text of the dataset can hold (a cheap bound, see _check_drawable). Reads the data, no model."""
    if context_length is not None and settings.seq_len > context_length:
        raise ValueError(f"calibration seq_len={settings.seq_len} tokens is longer than the model's context of "
                         f"{context_length} tokens; use a seq_len of at most {context_length} "
                         "(--calibration-seq-len; 2048 is the reference recipe where the context allows).")
    if settings.token_file is not None:
        _saved_calibration(settings)
    elif settings.dataset == "wikitext2":
        _check_drawable(settings, [load_dataset("wikitext2")])
    else:
        _check_drawable(settings, load_dataset("c4"))


def calibration_samples(tokenizer, settings: CalibrationSettings = CalibrationSettings()) -> torch.Tensor:
    """[n_samples, seq_len] calibration tokens.

    C4: draw random documents until one is longer than the window, then take a random window of it
    (the SparseGPT / Wanda recipe). WikiText-2: random windows of the test stream (only for
    ablations: it is also the evaluation text). token_file: the first n_samples rows of a saved tensor.
    """
    if settings.token_file is not None:
        return _saved_calibration(settings)[: settings.n_samples, : settings.seq_len].clone()
    rng = random.Random(settings.seed)
    if settings.dataset == "wikitext2":
        stream = tokenize_text(tokenizer, load_dataset("wikitext2"))
        if stream.numel() <= settings.seq_len:
            raise ValueError(f"calibration seq_len={settings.seq_len} tokens cannot be drawn from wikitext2: it has "
                             f"{stream.numel():,} tokens; use a seq_len below that (2048 is the reference).")
        starts = [rng.randint(0, stream.numel() - settings.seq_len - 1) for _ in range(settings.n_samples)]
        return torch.stack([stream[s:s + settings.seq_len] for s in starts])
    documents = load_dataset("c4")
    _check_drawable(settings, documents)
    samples = []
    tries = 0
    while len(samples) < settings.n_samples:
        tries += 1
        if tries > 200 * settings.n_samples:
            raise ValueError(f"found too few C4 documents longer than seq_len={settings.seq_len} tokens; "
                             "use a shorter seq_len or dataset='wikitext2'.")
        ids = tokenizer(documents[rng.randint(0, len(documents) - 1)])["input_ids"]
        if len(ids) <= settings.seq_len:
            continue
        start = rng.randint(0, len(ids) - settings.seq_len - 1)
        samples.append(torch.tensor(ids[start:start + settings.seq_len], dtype=torch.long))
    return torch.stack(samples)
