"""LLM-KICK sweeps: every compressed point scored on perplexity AND on the knowledge tasks, side by side.

arXiv 2310.01382 (LLM-KICK) argues that perplexity hides what compression costs: a pruned or
quantized model whose perplexity barely moves can lose much of its factual and in-context ability.
This module runs one compressed point at a time (restore the dense weights, compress, measure
perplexity and mean KL against the dense model, run every task) and writes one tidy row per
measurement, so perplexity and every task score sit in one table.

    tasks = [KickTask("mmlu", "mmlu", 40, MMLUSettings(shots=0)), KickTask("kv", "kv_retrieval", 16)]
    sweep = KickSweep(model, tokenizer, "smollm2-135m", table, DenseReference(model, windows),
                      records_dir="../results/03_records", protocol=protocol)
    sweep.run([parse_variant({"method": "wanda", "sparsity": 0.5})], tasks)
    frame = latest_frame(table, model="smollm2-135m", protocol=protocol)
    evidence = evidence_table(frame, tasks, "../results/03_records")

Beyond raw accuracy (meaningless when a small model sits at the floor), every task also records
how much the compressed model's answers *agree* with the dense model's on the same examples:
exact agreement of normalized answers for short-answer tasks, ROUGE-L F1 (and, as a further scoring,
the MiniLM embedding cosine) against the dense model's generation for free-form tasks, and for MMLU
the total-variation distance between the dense and compressed distributions over the four answer
letters. A model that changes its answers is measurably damaged even when both answer sets are
mostly wrong.

The evidence is recomputed from the saved answers (`evidence_table`, `perplexity_table`): n and a
95% interval for every score, the paired-bootstrap difference from dense on the same examples, the
agreement with the dense answers, and the per-window perplexity ratio; `run_agreement` gives the
noise floor of "changed answers" (two calibration seeds of one method).

Bits per weight ("equal model size") are counted by helpers.compression.storage, the one storage
model, and recorded on every row with the name of its convention.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..compression.pruning import Pattern
from ..evaluation.metrics import DenseReference, evaluate
from ..evaluation.uncertainty import paired_bootstrap, score_summary
from ..evaluation.tasks import TASK_KINDS, TaskKind, normalize_answer, read_records, task_kind
from ..evaluation.tasks.records import TaskResult
from ..results import ResultsTable, append_lines, read_gzip_shards, shard_base, write_gzip_shards
from .core import DENSE_LABEL, Measurement, ModelSnapshot, Point, Runner, Variant, latest_frame


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


def _rouge_scores(records: Sequence[dict], rouge_type: str, against: Sequence[dict] | None = None,
                  field: str = "generation") -> list[float]:
    """ROUGE F1 per example of each record's `field` vs its reference (or vs the same field of `against`)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)
    return [1.0 if a.strip() == b.strip() else scorer.score(a, b)[rouge_type].fmeasure
            for a, b in _text_pairs(records, against, field)]


def _text_pairs(records: Sequence[dict], against: Sequence[dict] | None, field: str) -> list[tuple[str, str]]:
    """(target, text) per record: its reference (or the same field of `against`) and its `field`."""
    out = []
    for position, record in enumerate(records):
        target = record.get("reference") if against is None else against[position].get(field)
        if target is None:
            raise ValueError(f"record {record.get('index')} of task {record.get('task')!r} has no reference text; "
                             "free-form scores per example need the task's reference answers.")
        out.append((str(target), str(record.get(field) or "")))
    return out


_EMBEDDING_JUDGE = None


def _embedding_similarity(texts_a: list[str], texts_b: list[str]) -> list[float]:
    """Cosine of the EmbeddingJudge's sentence embeddings, pair by pair (the model loaded once per process)."""
    global _EMBEDDING_JUDGE
    if _EMBEDDING_JUDGE is None:
        from ..evaluation.tasks import EmbeddingJudge

        _EMBEDDING_JUDGE = EmbeddingJudge()
    return _EMBEDDING_JUDGE.similarity(texts_a, texts_b) if texts_a else []


def _embedding_scores(records: Sequence[dict], against: Sequence[dict] | None = None,
                      field: str = "generation") -> list[float]:
    """Embedding cosine per example of each record's `field` vs its reference (or vs the same field of
    `against`); identical texts score exactly 1."""
    pairs = _text_pairs(records, against, field)
    differ = [i for i, (a, b) in enumerate(pairs) if a.strip() != b.strip()]
    cosines = dict(zip(differ, _embedding_similarity([pairs[i][1] for i in differ], [pairs[i][0] for i in differ])))
    return [min(1.0, float(cosines[i])) if i in cosines else 1.0 for i in range(len(pairs))]


def _free_form_scores(records: Sequence[dict], scoring: str, against: Sequence[dict] | None = None,
                      field: str = "generation") -> list[float]:
    """Per-example scores of free text under `scoring` (FREE_FORM_SCORINGS' values or "rouge/<type>")."""
    if scoring == EMBEDDING_SCORING:
        return _embedding_scores(records, against, field)
    free = FREE_FORM_PRIMARY.match(scoring or "")
    if not free:
        raise ValueError(f"free-form scoring {scoring!r}: per-example scores exist for 'rouge/rouge1|rouge2|rougeL' "
                         f"and {EMBEDDING_SCORING!r} only; the other judges' scores are in the judgements file.")
    return _rouge_scores(records, free.group(1), against=against, field=field)


def answer_matches(dense_records: Sequence[dict], records: Sequence[dict], field: str) -> list[bool]:
    """Per example (matched by index, in index order): are the normalized first-line answers equal?
    Missing answers (None) agree only with missing answers."""
    same = []
    for d, r in _paired(dense_records, records):
        a, b = d.get(field), r.get(field)
        if a is None or b is None:
            same.append(a is None and b is None)
        else:
            same.append(normalize_answer(_first_line(a)) == normalize_answer(_first_line(b)))
    return same


def answer_agreement(dense_records: Sequence[dict], records: Sequence[dict], field: str) -> float:
    """Fraction of examples whose normalized first-line answers are equal (answer_matches).

    Compares the compressed model with the dense one, not with the gold answer: it moves even when
    both models are mostly wrong.
    """
    same = answer_matches(dense_records, records, field)
    return sum(same) / len(same)


def agreement_summary(dense_records: Sequence[dict], records: Sequence[dict], field: str) -> dict:
    """answer_agreement with n and a 95% Wilson interval over the examples (score_summary's fields).

    Also the noise floor: the agreement of a no-damage point (8-bit RTN) with the dense model, or of two
    runs of one method that differ only in the calibration seed, is what "changed answers" must exceed."""
    return score_summary([float(x) for x in answer_matches(dense_records, records, field)])


def generation_similarity(dense_records: Sequence[dict], records: Sequence[dict], field: str = "generation",
                          rouge_type: str = "rougeL") -> float:
    """Mean ROUGE F1 of the compressed model's generation against the dense model's (1.0 = identical)."""
    pairs = _paired(dense_records, records)
    values = _rouge_scores([r for _, r in pairs], rouge_type, against=[d for d, _ in pairs], field=field)
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


# --------------------------------------------------------------------------- per-example scores and intervals
# per task kind: primary aggregate -> the per-example record field it is the mean of
# free-form kinds: primary "rouge/<type>" is the mean over examples of ROUGE F1 of the generation vs the reference;
# EMBEDDING_SCORING the mean cosine of its MiniLM sentence embedding with the reference's (the EmbeddingJudge's
# score, recomputed from the saved answers). FREE_FORM_SCORINGS: the notebooks' offline judge names -> scoring.
FREE_FORM_PRIMARY = re.compile(r"^rouge/(rouge1|rouge2|rougeL)$")
EMBEDDING_SCORING = "embedding_cosine/cosine"
FREE_FORM_SCORINGS = {"rouge": "rouge/rougeL", "embedding": EMBEDDING_SCORING}


def example_field(kind: str, primary: str) -> str:
    """The record field whose mean over examples is the aggregate `primary` of a task kind (the kind says)."""
    return task_kind(kind).example_field(primary)


def example_scores(kind: str, primary: str, records: Sequence[dict]) -> list[float]:
    """Per-example scores in example-index order: 0/1 for the short-answer tasks and MMLU; for free-form
    tasks ROUGE F1 (primary "rouge/rougeL" etc.) or the embedding cosine (EMBEDDING_SCORING) vs the reference."""
    ordered = _by_index(records, "task")
    rows = [ordered[i] for i in sorted(ordered)]
    if task_kind(kind).free_form:
        return _free_form_scores(rows, primary)
    name = example_field(kind, primary)
    return [float(row[name]) for row in rows]


def paired_score_difference(kind: str, primary: str, dense_records: Sequence[dict], records: Sequence[dict], *,
                            confidence: float = 0.95, seed: int = 0) -> dict:
    """Compressed minus dense score on the same examples, with a paired bootstrap interval over examples."""
    pairs = _paired(dense_records, records)
    dense = example_scores(kind, primary, [d for d, _ in pairs])
    other = example_scores(kind, primary, [r for _, r in pairs])
    return paired_bootstrap(other, dense, confidence=confidence, seed=seed, unit="examples")


def similarity_scores(kind: str, reference_records: Sequence[dict], records: Sequence[dict], field: str,
                      scoring: str | None = None) -> list[float]:
    """Per example, how close `records` are to `reference_records` (the dense model's, or another run's):
    1/0 equal normalized answers for short-answer tasks and MMLU; for free-form tasks the generations compared
    under `scoring` (ROUGE-L F1 by default, or the embedding cosine: EMBEDDING_SCORING)."""
    pairs = _paired(reference_records, records)
    if task_kind(kind).free_form:
        return _free_form_scores([r for _, r in pairs], scoring or FREE_FORM_SCORINGS["rouge"],
                                 against=[d for d, _ in pairs])
    return [float(x) for x in answer_matches(reference_records, records, field)]


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class KickTask:
    """One evaluation task of the sweep: which kind, how many examples, with what settings.

    name: the label in tables and figures (e.g. "nq_open_book"); kind: a registered task kind
    (helpers.evaluation.tasks.TASK_KINDS); examples: how many examples (None: all); settings: the
    task's settings dataclass (None: its defaults); primary: the aggregate reported as the task's
    score (default: the kind's); extra_scorings: a free-form task's further scorings of its saved answers
    (FREE_FORM_SCORINGS' values, e.g. the embedding cosine beside ROUGE-L), in every evidence table but not
    part of what is recorded.
    """
    name: str
    kind: str
    examples: int | None
    settings: Any = None
    primary: str | None = None
    chance: float = 0.0  # the score of guessing (MMLU: 0.25), for the above-chance normalization
    extra_scorings: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r} has kind={self.kind!r}, which is not registered; expected one of "
                             f"{sorted(TASK_KINDS)} (or register_task_kind(...) your own).")
        if self.examples is not None and (not isinstance(self.examples, int) or self.examples < 1):
            raise ValueError(f"task {self.name!r}: examples={self.examples!r}; expected a positive count or None.")
        if "/" in self.name or not self.name:
            raise ValueError(f"task name {self.name!r}: expected a non-empty name without '/'.")
        known = set(FREE_FORM_SCORINGS.values())
        if self.extra_scorings and not (self.task_kind.free_form and set(self.extra_scorings) <= known):
            raise ValueError(f"task {self.name!r} (kind {self.kind!r}): extra_scorings={self.extra_scorings!r}; "
                             f"only a free-form task takes further scorings, among {sorted(known)}.")

    @property
    def task_kind(self) -> TaskKind:
        return task_kind(self.kind)

    @property
    def score_key(self) -> str:
        return self.primary or self.task_kind.primary

    @property
    def answer_field(self) -> str:
        return self.task_kind.answer_field

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "examples": self.examples, "settings": self.settings,
                "primary": self.score_key}

    def run(self, model, tokenizer, *, judges=None, records_path=None, judgements_path=None,
            context: dict | None = None) -> TaskResult:
        return self.task_kind.run(model, tokenizer, self.examples, self.settings, records_path=records_path,
                                  context=context, judges=judges, judgements_path=judgements_path)


def comparison_rows(task: KickTask, dense_records: Sequence[dict], records: Sequence[dict]) -> list[dict]:
    """Rows comparing a point's records with the dense model's on the same examples."""
    kind = task.task_kind
    if kind.free_form:
        return [{"metric": "agreement", "value": generation_similarity(dense_records, records),
                 "agreement_measure": "ROUGE-L F1 vs the dense generation"}]
    rows = [{"metric": "agreement", "value": answer_agreement(dense_records, records, task.answer_field),
             "agreement_measure": f"equal normalized {task.answer_field}"}]
    if kind.choices_field and all(kind.choices_field in r for r in records):
        rows.append({"metric": "choice_total_variation",
                     "value": choice_total_variation(dense_records, records, kind.choices_field)})
    return rows


def task_rows(task: KickTask, result: TaskResult) -> list[dict]:
    """One row per flat aggregate metric, plus the headline `score`."""
    metrics = result.metrics()
    if task.score_key not in metrics:
        raise ValueError(f"task {task.name!r}: primary={task.score_key!r} is not among its aggregates "
                         f"{sorted(metrics)}; choose one of those.")
    rows = [{"metric": "score", "value": metrics[task.score_key], "score_metric": task.score_key}]
    rows += [{"metric": name, "value": value} for name, value in metrics.items()]
    return rows


# --------------------------------------------------------------------------- the sweep
@dataclass
class KickSweep:
    """Everything the points of one sweep share. Build once, then `run(variants, tasks)`.

    records_dir: where each task's prompts and answers (and free-form judgements) are appended,
    one JSON-lines file per task, tagged with the point's label and attempt, so judges can re-run.
    The points run through helpers.experiments.core.Runner: restore (checked), compress, then one
    measurement for WikiText-2 perplexity + KL and one per task, each recorded as soon as it is done.
    working_only: a point whose perplexity ratio to dense fails the project's working rule
    (`claims.rules.is_working`) skips its tasks and records a "not_run" row with the ratio instead: no verdict
    reads a collapsed point's task scores, and on a large task set they cost as much as a working point's.
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
    working_only: bool = False
    _dense_records: dict = field(default_factory=dict)

    def __post_init__(self):
        self.records_dir = Path(self.records_dir)
        self.runner = Runner(self.model, self.table, self.model_name, self.protocol, snapshot=self.snapshot,
                             tokenizer=self.tokenizer, device=self.device, run_id=self.run_id, log=self.log,
                             progress=False)
        self.snapshot = self.runner.snapshot

    def records_path(self, task: KickTask) -> Path:
        return self.records_dir / f"{task.name}.jsonl"

    def judgements_path(self, task: KickTask) -> Path:
        return self.records_dir / f"{task.name}.judgements.jsonl"

    def dense_records(self, task: KickTask) -> list[dict]:
        """The dense model's records of `task` (from this session, else from the records file)."""
        if task.name not in self._dense_records:
            key = self.runner.key(Variant.dense(), self.task_measurement(task))
            attempt = None
            for record in self.table.records():
                if record.get("key") == key and record.get("attempt"):
                    attempt = record["attempt"]
            if attempt is None:
                raise ValueError(f"no dense run of task {task.name!r} is recorded in {self.table.path}; run the "
                                 "dense point (run(..., include_dense=True)) before the compressed ones.")
            self._dense_records[task.name] = read_records(self.records_path(task), label=DENSE_LABEL, attempt=attempt)
        return self._dense_records[task.name]

    def perplexity_measurement(self) -> Measurement:
        def measure(point: Point) -> list[dict]:
            window = evaluate(point.model, self.reference.windows, self.reference, progress=False)
            # per-window means too: the windows are the unit of the perplexity and KL intervals
            nll = window.nll.double().mean(1).tolist()
            kl = window.kl.double().mean(1).tolist()
            return [{"metric": "perplexity", "value": window.perplexity, "window_nll": nll},
                    {"metric": "mean_kl", "value": window.mean_kl(), "window_kl": kl,
                     "kl_reference": self.reference.model_digest}]

        # prepare: the lazy reference's pass runs on the dense model before any variant is compressed; current: a
        # KL row that names no reference (recorded before that) is measured again (`kl_rows`)
        return Measurement("wikitext2", measure, dataset="wikitext2", prepare=self.reference.prepare,
                           current=lambda row: row.get("metric") != "mean_kl" or bool(row.get("kl_reference")))

    def perplexity_ratio(self, variant: Variant) -> float:
        """`variant`'s recorded WikiText-2 perplexity over the dense model's (the latest of each)."""
        labels = [DENSE_LABEL, variant.label]
        rows = latest_frame(self.table, model=self.model_name, protocol=self.protocol, labels=labels,
                            tasks=["wikitext2"])
        found = {} if rows.empty else {label: float(value) for label, value, metric
                                       in zip(rows.label, rows.value, rows.metric) if metric == "perplexity"}
        missing = [label for label in labels if label not in found]
        if missing:
            raise ValueError(f"no WikiText-2 perplexity of {missing} is recorded in {self.table.path}; working_only "
                             "reads it before a task: run the perplexity measurement (and the dense point) first.")
        return found[variant.label] / found[DENSE_LABEL]

    def task_measurement(self, task: KickTask) -> Measurement:
        def measure(point: Point) -> list[dict]:
            if self.working_only and not point.variant.is_dense:
                from ..claims.rules import WORKING_MAX_PPL_RATIO, is_working

                ratio = self.perplexity_ratio(point.variant)
                if not is_working(ratio):
                    self.log(f"{point.variant.label}: {task.name} not run: perplexity {ratio:.3g}x dense, beyond the "
                             f"{WORKING_MAX_PPL_RATIO:g}x working threshold")
                    return [{"metric": "not_run", "value": ratio,
                             "reason": f"collapsed: perplexity {ratio:.3g}x dense (working: <= "
                                       f"{WORKING_MAX_PPL_RATIO:g}x)"}]
            context = {"label": point.variant.label, "attempt": point.attempt, "model": self.model_name}
            result = task.run(point.model, self.tokenizer, judges=self.judges, records_path=self.records_path(task),
                              judgements_path=self.judgements_path(task), context=context)
            rows = task_rows(task, result)
            if point.variant.is_dense:
                self._dense_records[task.name] = result.records
            else:
                rows += comparison_rows(task, self.dense_records(task), result.records)
            return rows

        return Measurement(task.name, measure, {"task": task.describe()}, dataset=task.kind)

    def run(self, variants: Sequence[Variant], tasks: Sequence[KickTask], *, include_dense: bool = True,
            sweep: str = "main") -> None:
        """Measure the dense model (once per task) and every variant; skip what is recorded.

        Each (point, task) is one unit of work, so a crash loses at most the task in progress and a
        re-run picks up where it stopped."""
        labels = [v.label for v in variants]
        if len(set(labels)) != len(labels) or DENSE_LABEL in labels:
            raise ValueError(f"variant labels must be unique and not {DENSE_LABEL!r}; got {labels}.")
        points = ([Variant.dense()] if include_dense else []) + list(variants)
        measurements = [self.perplexity_measurement()] + [self.task_measurement(t) for t in tasks]
        self.runner.run(points, measurements, extra={"sweep": sweep})


# --------------------------------------------------------------------------- evidence per point: n, intervals, paired
def point_records(frame, task: KickTask, records_dir: str | Path) -> dict[str, list[dict]]:
    """label -> the records of `task` behind the score rows of `frame` (the attempts they name)."""
    path = Path(records_dir) / f"{task.name}.jsonl"
    scores = frame[(frame.task == task.name) & (frame.metric == "score")]
    if scores.empty or not path.exists():
        return {}
    grouped: dict[tuple, list[dict]] = {}
    for record in read_records(path):
        grouped.setdefault((record.get("label"), record.get("attempt")), []).append(record)
    out = {}
    for label, attempt in zip(scores.label, scores.attempt):
        if (label, attempt) in grouped:
            out[label] = grouped[(label, attempt)]
    return out


def task_scorings(task: KickTask) -> list[str]:
    """The aggregates of a task that have per-example scores (the kind says: MMLU one per scoring), then the
    task's extra scorings (free text: e.g. the embedding cosine)."""
    own = task.task_kind.scorings(task.settings)
    return own + [s for s in task.extra_scorings if s not in own]


def answer_field_for(task: KickTask, scoring: str) -> str:
    """The record field compared with the dense answer under `scoring` (the kind says)."""
    return task.task_kind.answer_field_for(scoring)


def evidence_table(frame, tasks: Sequence[KickTask], records_dir: str | Path, *, confidence: float = 0.95,
                   seed: int = 0):
    """One row per (point, task, scoring) from the saved records: n, score with its interval (Wilson
    for 0/1 scores, t for ROUGE) and floor flag; for compressed points also the paired-bootstrap
    difference from the dense score on the same examples and the agreement with the dense answers
    (exact for short answers, ROUGE-L for free text) with its interval. Generated answers also get
    `empty`, the share of examples answered with nothing (a model that ends its turn at once).

    `frame` is a latest_frame frame; tasks without a dense record are left out."""
    import pandas as pd

    rows = []
    for task in tasks:
        records = point_records(frame, task, records_dir)
        dense = records.get(DENSE_LABEL)
        if dense is None:
            continue
        for scoring in task_scorings(task):
            field = answer_field_for(task, scoring)
            for label, mine in records.items():
                summary = score_summary(example_scores(task.kind, scoring, mine), task.chance, confidence)
                row = {"label": label, "task": task.name, "scoring": scoring, **summary}
                if all("generation" in r for r in mine):  # a model that stops answering fails differently
                    row["empty"] = sum(not str(r["generation"]).strip() for r in mine) / len(mine)
                if label != DENSE_LABEL:
                    diff = paired_score_difference(task.kind, scoring, dense, mine, confidence=confidence, seed=seed)
                    agree = score_summary(similarity_scores(task.kind, dense, mine, field, scoring), 0.0, confidence)
                    row.update({"difference": diff["estimate"], "difference_low": diff["low"],
                                "difference_high": diff["high"], "difference_interval": diff["interval"],
                                "agreement": agree["score"], "agreement_low": agree["low"],
                                "agreement_high": agree["high"], "agreement_interval": agree["interval"]})
                rows.append(row)
    return pd.DataFrame(rows)


def run_agreement(frame, task: KickTask, records_dir: str | Path, label_a: str, label_b: str, *,
                  scoring: str | None = None, confidence: float = 0.95) -> dict | None:
    """Agreement of two points' answers on the same examples (score_summary fields), e.g. one method
    with two calibration seeds: the noise floor of "changed answers". None when either is missing."""
    records = point_records(frame, task, records_dir)
    if label_a not in records or label_b not in records:
        return None
    scoring = scoring or task_scorings(task)[0]
    return score_summary(similarity_scores(task.kind, records[label_a], records[label_b],
                                           answer_field_for(task, scoring), scoring), 0.0, confidence)


def perplexity_table(frame, *, confidence: float = 0.95, seed: int = 0):
    """Per point: perplexity and mean KL with intervals over the evaluation windows, and the
    perplexity ratio to dense as a paired bootstrap over the same windows (exp of the mean NLL difference).

    Needs the per-window lists (`window_nll`, `window_kl`) the sweep records with every wikitext2 row."""
    import numpy as np
    import pandas as pd

    from ..evaluation.uncertainty import t_interval

    ppl = frame[(frame.metric == "perplexity") & frame.get("window_nll", pd.Series(index=frame.index)).notna()]
    kl = kl_rows(frame)
    if ppl.empty:
        raise ValueError("no perplexity row carries per-window NLL ('window_nll'); re-run the points with this "
                         "version of KickSweep, which records them.")
    nll = {label: np.asarray(v, dtype=float) for label, v in zip(ppl.label, ppl.window_nll)}
    kls = {label: np.asarray(v, dtype=float) for label, v in zip(kl.label, kl.window_kl)}
    dense = nll.get(DENSE_LABEL)
    rows = []
    for label, values in nll.items():
        low, high = t_interval(values, confidence=confidence)
        row = {"label": label, "windows": len(values), "perplexity": math.exp(values.mean()),
               "perplexity_low": math.exp(low), "perplexity_high": math.exp(high)}
        if label in kls:
            row["mean_kl"] = float(kls[label].mean())
            row["mean_kl_low"], row["mean_kl_high"] = t_interval(kls[label], confidence=confidence)
        if dense is not None and label != DENSE_LABEL and len(dense) == len(values):
            diff = paired_bootstrap(values, dense, confidence=confidence, seed=seed, unit="windows")
            row.update({"perplexity_ratio": math.exp(diff["estimate"]), "perplexity_ratio_low": math.exp(diff["low"]),
                        "perplexity_ratio_high": math.exp(diff["high"]), "ratio_interval": diff["interval"]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("label")


# --------------------------------------------------------------------------- the notebook's tasks, roles and frames
def standard_tasks(*, seed: int = 0, mmlu_examples=1000, mmlu_shots: int = 0, mmlu_scorings=("loglik",),
                   freebaseqa_examples=300, triviaqa_examples=300, nq_closed_examples=300, nq_open_examples=300,
                   passage_chars: int = 3072, short_answer_tokens: int = 12, short_answer_batch: int = 8,
                   kv_examples=100, kv_pairs: int = 3,
                   kv_long_pairs: int = 5, kv_new_tokens: int = 48, summarization_examples=30,
                   summary_article_tokens: int = 512, summary_new_tokens: int = 64, instruction_examples=80,
                   instruction_new_tokens: int = 64, free_form_scorings: Sequence[str] = ("rouge",)) -> list[KickTask]:
    """LLM-KICK's task families as KickTasks (a count of 0 leaves a task out, None takes every example):
    MMLU, FreebaseQA, TriviaQA and NQ closed book (knowledge), NQ open book and key-value retrieval
    (in-context retrieval, at two lengths), CNN/DM summaries and Vicuna-bench instructions (free text).
    `short_answer_batch`: prompts per generation batch of the short-answer tasks (FreebaseQA, closed- and
    open-book QA); a model with a large vocabulary head (Gemma-3: 262K entries) answers faster in larger batches
    (benchmarks/kick_task_costs.py --batch-sizes). `free_form_scorings`: how the free-text answers are scored
    (FREE_FORM_SCORINGS' names: "rouge" ROUGE-L, the headline; "embedding" the MiniLM cosine beside it)."""
    unknown = [name for name in free_form_scorings if name not in FREE_FORM_SCORINGS]
    if unknown or "rouge" not in free_form_scorings:
        raise ValueError(f"free_form_scorings={list(free_form_scorings)!r}; expected names among "
                         f"{sorted(FREE_FORM_SCORINGS)}, 'rouge' (the headline score) among them.")
    extra = tuple(FREE_FORM_SCORINGS[name] for name in free_form_scorings if name != "rouge")
    from ..evaluation.tasks import (FactoidSettings, GenerationSettings, InstructionSettings, KVRetrievalSettings,
                                    MMLUSettings, RetrievalQASettings, SummarizationSettings)

    quiet = dict(progress=False)
    short = GenerationSettings(max_new_tokens=short_answer_tokens, stop_at_newline=True, batch_size=short_answer_batch,
                               **quiet)
    kv = GenerationSettings(max_new_tokens=kv_new_tokens, chat_template=False, **quiet)
    candidates = [
        (mmlu_examples, lambda: KickTask("mmlu", "mmlu", mmlu_examples, MMLUSettings(
            shots=mmlu_shots, seed=seed, scorings=tuple(mmlu_scorings), progress=False), chance=0.25)),
        (freebaseqa_examples, lambda: KickTask("freebaseqa", "factoid", freebaseqa_examples, FactoidSettings(
            generation=GenerationSettings(max_new_tokens=short_answer_tokens, batch_size=short_answer_batch, **quiet),
            seed=seed))),
        (triviaqa_examples, lambda: KickTask("triviaqa_closed_book", "retrieval_qa", triviaqa_examples,
                                             RetrievalQASettings(dataset="triviaqa", open_book=False, seed=seed,
                                                                 generation=short))),
        (nq_closed_examples, lambda: KickTask("nq_closed_book", "retrieval_qa", nq_closed_examples,
                                              RetrievalQASettings(open_book=False, seed=seed, generation=short))),
        (nq_open_examples, lambda: KickTask("nq_open_book", "retrieval_qa", nq_open_examples, RetrievalQASettings(
            open_book=True, passage_chars=passage_chars, seed=seed, generation=short))),
        (kv_examples, lambda: KickTask("kv_retrieval", "kv_retrieval", kv_examples,
                                       KVRetrievalSettings(n_pairs=kv_pairs, seed=seed, generation=kv))),
        (kv_examples if kv_long_pairs else 0, lambda: KickTask(f"kv_retrieval_{kv_long_pairs}_pairs", "kv_retrieval",
                                                               kv_examples, KVRetrievalSettings(
                                                                   n_pairs=kv_long_pairs, seed=seed, generation=kv))),
        (summarization_examples, lambda: KickTask("summarization", "summarization", summarization_examples,
                                                  SummarizationSettings(max_article_tokens=summary_article_tokens,
                                                                        seed=seed, generation=GenerationSettings(
                                                                            max_new_tokens=summary_new_tokens,
                                                                            batch_size=2, **quiet)),
                                                  extra_scorings=extra)),
        (instruction_examples, lambda: KickTask("instruction_following", "instruction_following", instruction_examples,
                                                InstructionSettings(seed=seed, generation=GenerationSettings(
                                                    max_new_tokens=instruction_new_tokens, batch_size=2, **quiet)),
                                                extra_scorings=extra)),
    ]
    return [make() for count, make in candidates if count is None or count > 0]


def claim_task_kind(task: KickTask) -> str:
    """What a task tests in the claims' words: "knowledge" (multiple-choice knowledge, MMLU), "factual"
    (free-form factual answers from memory: FreebaseQA, closed-book QA), "retrieval" (answers found in the
    prompt: open-book QA, key-value retrieval), "summarization" or "instruction"."""
    if task.kind == "retrieval_qa":
        return "retrieval" if getattr(task.settings, "open_book", False) else "factual"
    return {"mmlu": "knowledge", "factoid": "factual", "kv_retrieval": "retrieval", "summarization": "summarization",
            "instruction_following": "instruction"}.get(task.kind, task.kind)


def task_roles(baseline, tasks: Sequence[KickTask], *, sweep_tasks="auto", sweep_margin: float = 0.1,
               dense_only: Sequence[str] = (), focus: Sequence[str] = ()):
    """From the dense evidence (`evidence_table` of the dense rows): each task's status (above the floor, at the
    floor, free text) and role (swept at every point, at the focus points, dense only, and why); returns
    (baseline with status and role, swept task names, focused task names). "auto" sweeps the short-answer tasks
    whose best scoring lies at least `sweep_margin` above chance."""
    import numpy as np

    baseline = baseline.copy()
    free = {t.name for t in tasks if t.task_kind.free_form}
    baseline["status"] = np.where(baseline.task.isin(free), "free text (no chance level)", np.where(
        baseline.at_floor, "at the floor: untestable on this model", "above the floor"))
    floor = baseline.groupby("task").at_floor.all()  # MMLU: at the floor only if every scoring is
    above = [t.name for t in tasks if t.name not in free and not floor.get(t.name, True)]
    margin = (baseline.score - baseline.chance).groupby(baseline.task).max()
    if sweep_tasks == "auto":
        swept = [n for n in above if n not in dense_only and n not in focus and margin[n] >= sweep_margin]
    else:
        unknown = [n for n in sweep_tasks if n not in {t.name for t in tasks}]
        if unknown:
            raise ValueError(f"sweep_tasks names {unknown}, not among this run's tasks {[t.name for t in tasks]}.")
        swept = list(sweep_tasks)
    focused = [n for n in focus if n in free or n in above]

    def role(name):
        if floor.get(name, False) and name not in free:
            return "at the floor: untestable on this model"
        if name in swept:
            return "swept at every point"
        if name in focused:
            return "dense + focus points"
        if name in dense_only:
            return "above the floor; dense only (cost)"
        if name in free or name in focus:
            return "dense only"
        return f"above the floor by {margin[name]:.3f} < sweep_margin {sweep_margin}: dense only"

    baseline["role"] = baseline.task.map(role)
    return baseline, swept, focused


def kl_rows(frame):
    """The wikitext2 mean_kl rows whose per-window KL (`window_kl`) was measured against the dense reference they
    name (`kl_reference`, the dense model's digest), and, where the dense point's own row names one, that same one.
    Rows without one were recorded before the sweep prepared its lazy reference on the dense model: a resumed run
    then took the reference from its first compressed point, so their KL is not read (perplexity is unaffected: it
    needs no reference)."""
    import pandas as pd

    if "kl_reference" not in frame.columns:
        return frame.iloc[:0]
    empty = pd.Series(index=frame.index, dtype=object)
    named = frame[(frame.metric == "mean_kl") & frame.get("window_kl", empty).notna() & frame.kl_reference.notna()]
    dense = named.loc[named.label == DENSE_LABEL, "kl_reference"]
    return named[named.kl_reference == dense.iloc[-1]] if len(dense) else named


def kick_points(frame):
    """One row per point of a sweep: method, family, pattern, sparsity (the recorded setting), bits (nan: none),
    bits_per_weight, calibration samples and seed, with perplexity and its ratio to dense (`perplexity_table`)."""
    import pandas as pd

    first = frame.drop_duplicates("label").set_index("label")
    get = lambda column: first[column] if column in first.columns else pd.Series(float("nan"), index=first.index)  # noqa: E731
    points = pd.DataFrame({"method": first["method"], "family": first["family"],
                           "pattern": get("settings.recipe.pattern").fillna("unstructured"),
                           "sparsity": pd.to_numeric(get("settings.recipe.sparsity"), errors="coerce").fillna(0.0),
                           "bits": pd.to_numeric(get("settings.bits"), errors="coerce"),
                           "bits_per_weight": first["bits_per_weight"],
                           "calibration_samples": get("settings.recipe.calibration.n_samples"),
                           "calibration_seed": get("settings.recipe.calibration.seed")})
    points["sparsity"] = [Pattern.parse(p).sparsity if ":" in p else s for p, s in zip(points.pattern, points.sparsity)]
    ppl = perplexity_table(frame)
    points = points.join(ppl.reindex(columns=["perplexity", "perplexity_ratio", "mean_kl"]))  # mean_kl: see kl_rows
    points.loc[DENSE_LABEL, "perplexity_ratio"] = 1.0
    return points


def task_frame(frame, tasks: Sequence[KickTask], records_dir: str | Path, points):
    """The claims board's "task_scores" frame: one row per (point, task, example) of the compressed points,
    with the dense and the point's score on that example (the task's primary scoring; MMLU its first), the
    chance level, the point's ppl_ratio, family, method, pattern, sparsity, bits, storage_bits and the claims'
    task_kind (`claim_task_kind`)."""
    import pandas as pd

    rows = []
    for task in tasks:
        records = point_records(frame, task, records_dir)
        if DENSE_LABEL not in records:
            continue
        scoring = task_scorings(task)[0]
        for label, mine in records.items():
            if label == DENSE_LABEL or label not in points.index:
                continue
            pairs = _paired(records[DENSE_LABEL], mine)
            dense = example_scores(task.kind, scoring, [d for d, _ in pairs])
            score = example_scores(task.kind, scoring, [r for _, r in pairs])
            rows.append(pd.DataFrame({"label": label, "task": task.name, "example": [int(d["index"]) for d, _ in pairs],
                                      "dense_score": dense, "score": score, "chance": task.chance,
                                      "task_kind": claim_task_kind(task)}))
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    keep = points[["family", "method", "pattern", "sparsity", "bits", "bits_per_weight", "perplexity_ratio"]]
    return out.join(keep.rename(columns={"bits_per_weight": "storage_bits", "perplexity_ratio": "ppl_ratio"}),
                    on="label")


def calibration_frame(frame, points, *, sparsity: float, task_scores=None):
    """The claims board's "calibration" frame (KI6): per unstructured Wanda / SparseGPT point at `sparsity`
    and per window: label, method, calibration_samples, seed, sparsity, window, nll (mean token NLL), kl (mean
    token KL(dense || point), nats; nan where no row measured it against the dense reference: `kl_rows`), ppl_ratio.
    With `task_scores` (a `task_frame` of these points), also one row per (point, task, example): task, example,
    task_loss (dense score - score), dense_score, chance; their window, nll and kl are nan."""
    import pandas as pd

    rows = frame[(frame.metric == "perplexity") & frame.label.isin(points.index)]
    measured = kl_rows(frame)
    window_kl = dict(zip(measured.label, measured.window_kl))
    chosen = points[points.method.isin(["wanda", "sparsegpt"]) & (points.pattern == "unstructured")
                    & ((points.sparsity - sparsity).abs() < 1e-9)]
    out = []
    for label, nll in zip(rows.label, rows.window_nll):
        if label in chosen.index:
            p = chosen.loc[label]
            kl = window_kl.get(label)
            kl = kl if isinstance(kl, list) and len(kl) == len(nll) else [float("nan")] * len(nll)
            out.append(pd.DataFrame({"label": label, "method": p.method, "calibration_samples": p.calibration_samples,
                                     "seed": p.calibration_seed, "sparsity": sparsity, "window": range(len(nll)),
                                     "nll": nll, "kl": kl, "ppl_ratio": p.perplexity_ratio}))
    if task_scores is not None and len(task_scores):
        scored = task_scores[task_scores.label.isin(chosen.index)]
        for label, group in scored.groupby("label", sort=False):
            p = chosen.loc[label]
            out.append(pd.DataFrame({"label": label, "method": p.method, "calibration_samples": p.calibration_samples,
                                     "seed": p.calibration_seed, "sparsity": sparsity, "task": group.task.to_numpy(),
                                     "example": group.example.to_numpy(),
                                     "task_loss": (group.dense_score - group.score).to_numpy(float),
                                     "dense_score": group.dense_score.to_numpy(float), "chance": group.chance.to_numpy(),
                                     "ppl_ratio": p.perplexity_ratio}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


HEAVY_RECORD_FIELDS = ("prompt", "model_input", "cloze_prompt")  # the prompts: rebuilt from the data, not needed
# The example's own fields, the same at every point: a frozen compressed record leaves out those equal to the dense
# record of its example (3,000 TriviaQA questions x 17 points: 8 MB with them, 1.3 MB without); seeding restores them.
EXAMPLE_FIELDS = ("question", "gold", "key", "reference", "subject", "choices", "passage")


def lean_records(records: Sequence[dict]) -> list[dict]:
    """Records as frozen: no prompts, and a compressed record without the example fields (EXAMPLE_FIELDS) that
    equal those of the dense record of the same example (`restore_records` puts them back)."""
    dense = {r.get("index"): r for r in records if r.get("label") == DENSE_LABEL}
    out = []
    for record in records:
        kept = {k: v for k, v in record.items() if k not in HEAVY_RECORD_FIELDS}
        example = dense.get(record.get("index")) if record.get("label") != DENSE_LABEL else None
        if example is not None:
            kept = {k: v for k, v in kept.items() if not (k in EXAMPLE_FIELDS and example.get(k) == v)}
        out.append(kept)
    return out


def restore_records(records: Sequence[dict], dense_records: Sequence[dict] = ()) -> list[dict]:
    """The inverse of `lean_records`: each record gets the example fields it lacks from the dense record of
    its example (among `records` and `dense_records`)."""
    dense = {r.get("index"): r for r in [*dense_records, *records] if r.get("label") == DENSE_LABEL}
    out = []
    for record in records:
        example = dense.get(record.get("index"), {})
        out.append({**{k: example[k] for k in EXAMPLE_FIELDS if k in example and k not in record}, **record})
    return out


def freeze_records(frame, records_dir: str | Path, dest: str | Path) -> int:
    """Write the task records behind `frame`'s scores (the attempts its score rows name), lean (`lean_records`: no
    prompts, the example's fields once), to <dest>/<task>.jsonl.gz (in parts of at most 1.5 MiB where needed,
    `write_gzip_shards`, under the tracked-file limit), beside a committed run's frozen rows, so `evidence_table`
    and `task_frame` can be recomputed elsewhere (`seed_records`). Returns the number written."""
    wanted = set(zip(frame[frame.metric == "score"].label, frame[frame.metric == "score"].attempt))
    count = 0
    for path in sorted(Path(records_dir).glob("*.jsonl")):
        if path.name.endswith(".judgements.jsonl"):
            continue
        kept = lean_records([r for r in read_records(path) if (r.get("label"), r.get("attempt")) in wanted])
        if kept:
            count += write_gzip_shards(Path(dest) / f"{path.stem}.jsonl.gz", kept)
    return count


def seed_records(source: str | Path, records_dir: str | Path) -> int:
    """Append the frozen records of `source` (`freeze_records`) to <records_dir>/<task>.jsonl, skipping those
    already there (same label, attempt and example); returns how many were added."""
    records_dir = Path(records_dir)
    records_dir.mkdir(parents=True, exist_ok=True)
    identity = lambda record: (record.get("label"), record.get("attempt"), record.get("index"))  # noqa: E731
    added = 0
    for path in sorted({shard_base(part) for part in Path(source).glob("*.jsonl.gz")}):
        target = records_dir / path.name.removesuffix(".gz")
        present = list(read_records(target)) if target.exists() else []
        held = {identity(r) for r in present}
        new = [record for record in restore_records(read_gzip_shards(path), present)
               if identity(record) not in held]
        if new:
            append_lines(target, new)
            added += len(new)
    return added
