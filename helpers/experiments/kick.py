"""LLM-KICK sweeps: every compressed point scored on perplexity AND on the knowledge tasks, side by side.

arXiv 2310.01382 (LLM-KICK) argues that perplexity hides what compression costs: a pruned or
quantized model whose perplexity barely moves can lose much of its factual and in-context ability.
This module runs one compressed point at a time (restore the dense weights, compress, measure
perplexity and mean KL against the dense model, run every task) and writes one tidy row per
measurement, so perplexity and every task score sit in one table.

    tasks = [KickTask("mmlu", "mmlu", 40, MMLUSettings(shots=0)), KickTask("kv", "kv_retrieval", 16)]
    run_kick_points(model, tokenizer, variants, tasks, table, model_name="smollm2-135m", protocol=...,
                    snapshot=ModelSnapshot(model), reference=DenseReference(model, windows),
                    records_dir="../results/03_records")

Beyond raw accuracy (meaningless when a small model sits at the floor), every task also records
how much the compressed model's answers *agree* with the dense model's on the same examples:
exact agreement of normalized answers for short-answer tasks, ROUGE-L F1 against the dense model's
generation for free-form tasks, and for MMLU the total-variation distance between the dense and
compressed distributions over the four answer letters. A model that changes its answers is
measurably damaged even when both answer sets are mostly wrong.

Storage convention for "equal model size" comparisons (bits per decoder-linear weight; embeddings
and head excluded): a pruned fp16 model stores its kept weights at 16 bits plus a 1-bit-per-position
bitmap (50% unstructured or 2:4 -> 0.5 x 16 + 1 = 9 bits; the 2:4 hardware format's 2-bit index per
kept weight is the same 1 bit per position); a quantized model stores b-bit codes plus an fp16 scale
and a b-bit zero point per grid (helpers.compression.protect.storage_bits).
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..compression.compress import CompressionReport, compress_model
from ..data import CalibrationSettings, calibration_samples
from .longcontext import ModelSnapshot, Variant
from ..evaluation.metrics import DenseReference, evaluate
from ..results import ResultsTable, run_key
from ..compression.schedules import storage_bits_per_weight
from ..evaluation.tasks import (evaluate_factoid_qa, evaluate_instruction_following, evaluate_kv_retrieval, evaluate_mmlu,
                    evaluate_retrieval_qa, evaluate_summarization, normalize_answer, read_records)
from ..evaluation.tasks.records import TaskResult

TASK_KINDS: dict[str, Callable] = {
    "mmlu": evaluate_mmlu,
    "factoid": evaluate_factoid_qa,
    "retrieval_qa": evaluate_retrieval_qa,
    "kv_retrieval": evaluate_kv_retrieval,
    "summarization": evaluate_summarization,
    "instruction_following": evaluate_instruction_following,
}
FREE_FORM = ("summarization", "instruction_following")
# The headline score of each kind (an aggregate key of its TaskResult) and the record field whose
# value is compared with the dense model's answer on the same example.
PRIMARY = {"mmlu": "loglik_micro_accuracy", "factoid": "accuracy", "retrieval_qa": "contains",
           "kv_retrieval": "accuracy", "summarization": "rouge/rougeL", "instruction_following": "rouge/rougeL"}
ANSWER_FIELD = {"mmlu": "loglik_prediction", "factoid": "generation", "retrieval_qa": "answer",
                "kv_retrieval": "generation", "summarization": "generation", "instruction_following": "generation"}
DENSE_LABEL = "dense"


# --------------------------------------------------------------------------- comparisons with the dense model
def _by_index(records: Sequence[dict], what: str) -> dict[int, dict]:
    out = {}
    for record in records:
        if "index" not in record:
            raise ValueError(f"a {what} record has no 'index' field (keys {sorted(record)}); compare records "
                             "written by helpers.evaluation.tasks, which number their examples.")
        out[int(record["index"])] = record
    return out


def _paired(dense_records: Sequence[dict], records: Sequence[dict]) -> list[tuple[dict, dict]]:
    dense, other = _by_index(dense_records, "dense"), _by_index(records, "compressed")
    if set(dense) != set(other):
        raise ValueError(f"the dense and compressed records cover different examples ({len(dense)} vs {len(other)}; "
                         f"e.g. only one side has {sorted(set(dense) ^ set(other))[:5]}); run both on the same "
                         "examples.")
    if not dense:
        raise ValueError("no records to compare; run the task on at least one example.")
    return [(dense[i], other[i]) for i in sorted(dense)]


def _first_line(value) -> str:
    text = "" if value is None else str(value)
    return text.strip().split("\n")[0]


def answer_agreement(dense_records: Sequence[dict], records: Sequence[dict], field: str) -> float:
    """Fraction of examples (matched by index) whose normalized first-line answers are equal.

    Compares the compressed model with the dense one, not with the gold answer: it moves even when
    both models are mostly wrong. Missing answers (None) agree only with missing answers.
    """
    pairs = _paired(dense_records, records)
    same = []
    for d, r in pairs:
        a, b = d.get(field), r.get(field)
        if a is None or b is None:
            same.append(a is None and b is None)
        else:
            same.append(normalize_answer(_first_line(a)) == normalize_answer(_first_line(b)))
    return sum(same) / len(same)


def generation_similarity(dense_records: Sequence[dict], records: Sequence[dict], field: str = "generation",
                          rouge_type: str = "rougeL") -> float:
    """Mean ROUGE F1 of the compressed model's generation against the dense model's (1.0 = identical)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)
    values = []
    for d, r in _paired(dense_records, records):
        a, b = str(d.get(field) or ""), str(r.get(field) or "")
        values.append(1.0 if a.strip() == b.strip() else scorer.score(a, b)[rouge_type].fmeasure)
    return sum(values) / len(values)


def choice_distribution(loglik: dict[str, float]) -> dict[str, float]:
    """Softmax of per-choice log-likelihoods: the model's distribution restricted to the choices."""
    if not loglik:
        raise ValueError("no choice log-likelihoods given; expected e.g. {'A': -1.2, 'B': -0.7, ...}.")
    top = max(loglik.values())
    weights = {k: math.exp(v - top) for k, v in loglik.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def choice_total_variation(dense_records: Sequence[dict], records: Sequence[dict], field: str = "loglik") -> float:
    """Mean total-variation distance between the dense and compressed distributions over the choices.

    0 = the same beliefs, 1 = disjoint; defined even when accuracy is at chance.
    """
    values = []
    for d, r in _paired(dense_records, records):
        if field not in d or field not in r:
            raise ValueError(f"a record lacks {field!r}; choice distributions need MMLU's 'loglik' scoring.")
        p, q = choice_distribution(d[field]), choice_distribution(r[field])
        if set(p) != set(q):
            raise ValueError(f"the records score different choices ({sorted(p)} vs {sorted(q)}).")
        values.append(0.5 * sum(abs(p[k] - q[k]) for k in p))
    return sum(values) / len(values)


def retained(score: float, dense_score: float) -> float:
    """score / dense score: the fraction of the dense model's score kept (nan when the dense score is 0)."""
    if dense_score == 0 or not math.isfinite(dense_score):
        return float("nan")
    return score / dense_score


def above_chance(score: float, dense_score: float, chance: float) -> float:
    """Fraction of the dense model's margin over chance kept: (score - chance) / (dense - chance)."""
    if dense_score <= chance:
        return float("nan")
    return (score - chance) / (dense_score - chance)


# --------------------------------------------------------------------------- storage size
def bits_per_weight(model: nn.Module, report: CompressionReport | None, *, dense_bits: int = 16) -> float:
    """Bits per decoder-linear weight under the module docstring's convention.

    No report (the uncompressed model): `dense_bits`. Quantized (rtn / gptq): codes + grids as
    counted by the compression report. Otherwise: kept weights at `dense_bits` plus a
    1-bit-per-position mask when any weight is exactly zero.
    """
    if report is None:
        return float(dense_bits)
    if report.layers and all("storage_bits" in v for v in report.layers.values()):
        from ..compression.protect import model_effective_bits

        return model_effective_bits(report.layers)
    return storage_bits_per_weight(model, value_bits_dense=dense_bits)


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class KickTask:
    """One evaluation task of the sweep: which kind, how many examples, with what settings.

    name: the label in tables and figures (e.g. "nq_open_book"); kind: a key of TASK_KINDS;
    examples: how many examples (None: all); settings: the task's settings dataclass (None: its
    defaults); primary: the aggregate reported as the task's score (default per kind, PRIMARY).
    """
    name: str
    kind: str
    examples: int | None
    settings: Any = None
    primary: str | None = None
    chance: float = 0.0  # the score of guessing (MMLU: 0.25), for the above-chance normalization

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r} has kind={self.kind!r}; expected one of {sorted(TASK_KINDS)}.")
        if self.examples is not None and (not isinstance(self.examples, int) or self.examples < 1):
            raise ValueError(f"task {self.name!r}: examples={self.examples!r}; expected a positive count or None.")
        if "/" in self.name or not self.name:
            raise ValueError(f"task name {self.name!r}: expected a non-empty name without '/'.")

    @property
    def score_key(self) -> str:
        return self.primary or PRIMARY[self.kind]

    @property
    def answer_field(self) -> str:
        return ANSWER_FIELD[self.kind]

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "examples": self.examples, "settings": self.settings,
                "primary": self.score_key}

    def run(self, model, tokenizer, *, judges=None, records_path=None, judgements_path=None,
            context: dict | None = None) -> TaskResult:
        function = TASK_KINDS[self.kind]
        kwargs = {"records_path": records_path, "context": context}
        if self.settings is not None:
            kwargs["settings"] = self.settings
        if self.kind == "mmlu":  # MMLU subsamples through its settings (n_total / n_per_subject)
            if self.settings is None or (self.settings.n_total is None and self.settings.n_per_subject is None):
                from ..evaluation.tasks import MMLUSettings

                base = self.settings or MMLUSettings()
                kwargs["settings"] = replace(base, n_total=self.examples) if self.examples else base
            return function(model, tokenizer, None, **kwargs)
        if self.kind in FREE_FORM:
            kwargs.update(judges=judges, judgements_path=judgements_path)
        return function(model, tokenizer, self.examples, **kwargs)


def comparison_rows(task: KickTask, dense_records: Sequence[dict], records: Sequence[dict]) -> list[dict]:
    """Rows comparing a point's records with the dense model's on the same examples."""
    if task.kind in FREE_FORM:
        return [{"metric": "agreement", "value": generation_similarity(dense_records, records),
                 "agreement_measure": "ROUGE-L F1 vs the dense generation"}]
    rows = [{"metric": "agreement", "value": answer_agreement(dense_records, records, task.answer_field),
             "agreement_measure": f"equal normalized {task.answer_field}"}]
    if task.kind == "mmlu" and all("loglik" in r for r in records):
        rows.append({"metric": "choice_total_variation", "value": choice_total_variation(dense_records, records)})
    return rows


def task_rows(task: KickTask, result: TaskResult) -> list[dict]:
    """One row per flat aggregate metric, plus the headline `score`."""
    metrics = result.metrics()
    if task.score_key not in metrics:
        raise ValueError(f"task {task.name!r}: primary={task.score_key!r} is not among its aggregates "
                         f"{sorted(metrics)}; choose one of those.")
    rows = [{"metric": "score", "value": metrics[task.score_key], "score_metric": task.score_key}]
    rows += [{"metric": name, "value": value} for name, value in metrics.items()]
    rows.append({"metric": "seconds", "value": result.seconds})
    return rows


# --------------------------------------------------------------------------- the sweep
def point_key(label: str, settings: dict, model_name: str, protocol: dict, tasks: Sequence[KickTask]) -> str:
    return run_key(model=model_name, label=label, settings=settings, protocol=protocol,
                   tasks=[t.describe() for t in tasks])


def _dense_attempt(table: ResultsTable, key: str) -> str | None:
    attempt = None
    for record in table.records():
        if record.get("key") == key and record.get("attempt"):
            attempt = record["attempt"]
    return attempt


@dataclass
class KickSweep:
    """Everything the points of one sweep share. Build once, then `run(variants, tasks)`.

    records_dir: where each task's prompts and answers (and free-form judgements) are appended,
    one JSON-lines file per task, tagged with the point's label and attempt, so judges can re-run.
    """
    model: nn.Module
    tokenizer: Any
    model_name: str
    table: ResultsTable
    reference: DenseReference
    records_dir: str | Path
    protocol: dict
    judges: Sequence | None = None
    device: Any = None
    run_id: str | None = None
    log: Callable[[str], None] = print
    snapshot: ModelSnapshot | None = None
    _calibration: dict = field(default_factory=dict)
    _dense_records: dict = field(default_factory=dict)

    def __post_init__(self):
        self.records_dir = Path(self.records_dir)
        if self.snapshot is None:
            self.snapshot = ModelSnapshot(self.model)

    def records_path(self, task: KickTask) -> Path:
        return self.records_dir / f"{task.name}.jsonl"

    def judgements_path(self, task: KickTask) -> Path:
        return self.records_dir / f"{task.name}.judgements.jsonl"

    def calibration_ids(self, settings: CalibrationSettings) -> torch.Tensor:
        if settings not in self._calibration:
            self._calibration[settings] = calibration_samples(self.tokenizer, settings)
        return self._calibration[settings]

    def dense_records(self, task: KickTask, tasks: Sequence[KickTask]) -> list[dict]:
        """The dense model's records of `task` (from this session, else from the records file)."""
        if task.name not in self._dense_records:
            key = point_key(DENSE_LABEL, {}, self.model_name, self.protocol, [task])
            attempt = _dense_attempt(self.table, key)
            if attempt is None:
                raise ValueError(f"no dense run of task {task.name!r} is recorded in {self.table.path}; run the "
                                 "dense point (run(..., include_dense=True)) before the compressed ones.")
            self._dense_records[task.name] = read_records(self.records_path(task), label=DENSE_LABEL, attempt=attempt)
        return self._dense_records[task.name]

    def run(self, variants: Sequence[Variant], tasks: Sequence[KickTask], *, include_dense: bool = True,
            sweep: str = "main") -> None:
        """Measure the dense model (once per task) and every variant; skip points already recorded.

        Each (point, task) is one unit of work, recorded together with the point's perplexity row,
        so a crash loses at most the task in progress and a re-run picks up where it stopped.
        """
        labels = [v.label for v in variants]
        if len(set(labels)) != len(labels) or DENSE_LABEL in labels:
            raise ValueError(f"variant labels must be unique and not {DENSE_LABEL!r}; got {labels}.")
        if include_dense:
            self._run_point(None, tasks, sweep)
        for variant in variants:
            self._run_point(variant, tasks, sweep)
        self.snapshot.restore(self.model)

    def _run_point(self, variant: Variant | None, tasks: Sequence[KickTask], sweep: str) -> None:
        label = DENSE_LABEL if variant is None else variant.label
        settings = {} if variant is None else variant.record_settings()
        keys = {"wikitext2": point_key(label, settings, self.model_name, self.protocol, [])}
        keys.update({t.name: point_key(label, settings, self.model_name, self.protocol, [t]) for t in tasks})
        todo = [name for name, key in keys.items() if not self.table.done(key)]
        if not todo:
            self.log(f"{label}: already recorded, skipped")
            return
        started = time.perf_counter()
        self.snapshot.restore(self.model)
        report = None
        if variant is not None:
            calibration = None
            if variant.recipe.needs_calibration:
                calibration = self.calibration_ids(variant.recipe.calibration)
            report = compress_model(self.model, variant.recipe, tokenizer=self.tokenizer, calibration_ids=calibration,
                                    device=self.device, progress=False)
        compress_seconds = time.perf_counter() - started
        common = {"model": self.model_name, "method": DENSE_LABEL if variant is None else variant.method,
                  "settings": settings, "protocol": self.protocol, "label": label,
                  "family": DENSE_LABEL if variant is None else variant.family, "run": self.run_id, "sweep": sweep,
                  "bits_per_weight": bits_per_weight(self.model, report),
                  "achieved_sparsity": report.achieved_sparsity if report is not None else 0.0}
        messages = [f"compress {compress_seconds:.0f} s"]
        if "wikitext2" in todo:
            started = time.perf_counter()
            window = evaluate(self.model, self.reference.windows, self.reference, progress=False)
            rows = [{"metric": "perplexity", "value": window.perplexity},
                    {"metric": "mean_kl", "value": window.mean_kl()},
                    {"metric": "seconds_compress", "value": compress_seconds},
                    {"metric": "seconds_evaluate", "value": time.perf_counter() - started}]
            self._write(rows, common, "wikitext2", keys["wikitext2"])
            messages.insert(0, f"perplexity {window.perplexity:.2f}")
        for task in tasks:
            if task.name not in todo:
                continue
            attempt = uuid.uuid4().hex[:12]
            context = {"label": label, "attempt": attempt, "model": self.model_name}
            result = task.run(self.model, self.tokenizer, judges=self.judges, records_path=self.records_path(task),
                              judgements_path=self.judgements_path(task), context=context)
            rows = task_rows(task, result)
            if variant is None:
                self._dense_records[task.name] = result.records
            else:
                rows += comparison_rows(task, self.dense_records(task, tasks), result.records)
            self._write(rows, {**common, "dataset": task.kind}, task.name, keys[task.name], attempt=attempt)
            messages.append(f"{task.name} {result.metrics()[task.score_key]:.3f} ({result.seconds:.0f} s)")
        self.log(f"{label}: " + ", ".join(messages))

    def _write(self, rows: list[dict], common: dict, task: str, key: str, attempt: str | None = None) -> None:
        attempt = attempt or uuid.uuid4().hex[:12]
        for row in rows:
            self.table.append(**{"dataset": "wikitext2", **common, "task": task, "key": key, "attempt": attempt,
                                 **row})


def recorded_points(table: ResultsTable, model_name: str, protocol: dict):
    """The table's rows for this model and protocol, the latest attempt of each (point, task), as a DataFrame."""
    import pandas as pd

    records = [r for r in table.records() if r.get("model") == model_name and r.get("protocol") == protocol
               and r.get("attempt") and r.get("task")]
    latest = {}
    for record in records:
        latest[record["key"]] = record["attempt"]
    records = [r for r in records if latest[r["key"]] == r["attempt"]]
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records)


def add_normalized(frame, chance: dict[str, float] | None = None):
    """Score rows gain `retained` (score / dense score) and `above_chance` (margin over chance kept) columns."""
    frame = frame.copy()
    scores = frame[frame.metric == "score"]
    dense = scores[scores.label == DENSE_LABEL].groupby("task")["value"].last()
    chance = chance or {}
    frame["retained"] = [retained(v, dense.get(t, float("nan"))) if m == "score" else float("nan")
                         for t, m, v in zip(frame.task, frame.metric, frame.value)]
    frame["above_chance"] = [above_chance(v, dense.get(t, float("nan")), chance.get(t, 0.0)) if m == "score"
                             else float("nan") for t, m, v in zip(frame.task, frame.metric, frame.value)]
    return frame


def dense_similarity(frame, tasks: Sequence[KickTask], records_dir: str | Path):
    """Graded closeness to the dense model's answers, recomputed from the saved records.

    One row per (point, task) of `frame` (a `recorded_points` frame; the records used are the
    attempts its score rows name), metric "similarity": for MMLU 1 - total variation between the
    dense and compressed distributions over the choices; for the other tasks the ROUGE-L F1 of the
    compressed model's answer against the dense model's answer on the same example (1 = identical).
    Exact agreement is all-or-nothing on free text; this measure moves with partial changes.
    """
    import pandas as pd

    out = []
    for task in tasks:
        path = Path(records_dir) / f"{task.name}.jsonl"
        scores = frame[(frame.task == task.name) & (frame.metric == "score")]
        if scores.empty or DENSE_LABEL not in set(scores.label) or not path.exists():
            continue
        grouped: dict[tuple, list[dict]] = {}
        for record in read_records(path):
            grouped.setdefault((record.get("label"), record.get("attempt")), []).append(record)
        dense_attempt = scores[scores.label == DENSE_LABEL].attempt.iloc[-1]
        dense = grouped.get((DENSE_LABEL, dense_attempt))
        if not dense:
            continue
        for _, row in scores.iterrows():
            mine = grouped.get((row.label, row.attempt))
            if not mine:
                continue
            if task.kind == "mmlu":
                value = 1.0 - choice_total_variation(dense, mine)
            else:
                value = generation_similarity(dense, mine, field=task.answer_field)
            out.append({**row.to_dict(), "metric": "similarity", "value": value,
                        "similarity_measure": "1 - TV over choices" if task.kind == "mmlu" else
                        f"ROUGE-L F1 of {task.answer_field} vs dense"})
    return pd.DataFrame(out)
