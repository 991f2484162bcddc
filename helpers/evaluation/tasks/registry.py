"""Task kinds by registration: what a task is (how to run it, its headline score, which answer field
is compared with the dense model's), declared once, apart from whatever runs it.

lm-evaluation-harness keeps tasks apart from the evaluator; so does this registry: an experiment
(helpers.experiments.kick) runs any registered kind the same way. To add a kind:

    def evaluate_my_task(model, tokenizer, examples=None, settings=MySettings(), *, records_path=None,
                         context=None) -> TaskResult: ...        # examples: rows, an int n, or None (all)
    register_task_kind(TaskKind("my_task", evaluate_my_task, primary="accuracy", answer_field="generation"))

A free-form kind (free_form=True) also takes `judges=` and `judgements_path=`; its answers are
compared with the dense model's by ROUGE-L instead of exact agreement. A kind also says which record field
holds each aggregate's per-example score (`example_fields`), or, scored several ways (`per_scoring`, MMLU),
that its aggregates are "<scoring>_micro_accuracy" for the settings' `scorings`, with per-example fields
"<scoring>_correct" and answers "<scoring>_prediction": whoever compares points asks the kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from .factoid import evaluate_factoid_qa
from .freeform import evaluate_instruction_following, evaluate_summarization
from .mmlu import evaluate_mmlu
from .retrieval import evaluate_kv_retrieval, evaluate_retrieval_qa


@dataclass(frozen=True)
class TaskKind:
    """One kind of task: its evaluate function and how its records are read."""
    name: str
    evaluate: Callable            # (model, tokenizer, examples, settings=..., records_path=, context=) -> TaskResult
    primary: str                  # the aggregate reported as the task's score
    answer_field: str             # the record field compared with the dense model's answer on the same example
    free_form: bool = False       # free text: judged (judges=, judgements_path=) and compared by ROUGE-L
    choices_field: str | None = None  # per-choice log-likelihoods in each record (distribution distance)
    example_fields: Mapping[str, str] = field(default_factory=dict)  # aggregate -> its per-example record field
    per_scoring: bool = False     # scored several ways: aggregates "<scoring>_micro_accuracy" (settings.scorings)

    def scorings(self, settings=None) -> list[str]:
        """The aggregates with per-example scores: one per scoring of `settings`, else the primary."""
        if self.per_scoring:
            names = getattr(settings, "scorings", None) or (self.scoring_of(self.primary),)
            return [f"{name}_micro_accuracy" for name in names]
        return [self.primary]

    @staticmethod
    def scoring_of(aggregate: str) -> str:
        if not aggregate.endswith("_micro_accuracy"):
            raise ValueError(f"aggregate {aggregate!r}: per-example scores exist for '<scoring>_micro_accuracy' only.")
        return aggregate.removesuffix("_micro_accuracy")

    def example_field(self, aggregate: str) -> str:
        """The record field whose mean over examples is `aggregate`."""
        if self.per_scoring:
            return f"{self.scoring_of(aggregate)}_correct"
        if aggregate not in self.example_fields:
            raise ValueError(f"task kind {self.name!r} with primary {aggregate!r} has no per-example score (known: "
                             f"{sorted(self.example_fields)}); free-form tasks are scored per example by their judges.")
        return self.example_fields[aggregate]

    def answer_field_for(self, aggregate: str) -> str:
        """The record field compared with the dense answer under `aggregate` (per scoring: its prediction)."""
        return f"{self.scoring_of(aggregate)}_prediction" if self.per_scoring else self.answer_field

    def run(self, model, tokenizer, examples, settings=None, *, records_path=None, context=None, judges=None,
            judgements_path=None):
        kwargs = {"records_path": records_path, "context": context}
        if settings is not None:
            kwargs["settings"] = settings
        if self.free_form:
            kwargs.update(judges=judges, judgements_path=judgements_path)
        return self.evaluate(model, tokenizer, examples, **kwargs)


TASK_KINDS: dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    if kind.name in TASK_KINDS:
        raise ValueError(f"task kind {kind.name!r} is already registered; choose another name.")
    TASK_KINDS[kind.name] = kind
    return kind


def task_kind(name: str) -> TaskKind:
    if name not in TASK_KINDS:
        raise ValueError(f"task kind {name!r} is not registered; expected one of {sorted(TASK_KINDS)} "
                         "(or register_task_kind(...) your own).")
    return TASK_KINDS[name]


register_task_kind(TaskKind("mmlu", evaluate_mmlu, primary="loglik_micro_accuracy", answer_field="loglik_prediction",
                            choices_field="loglik", per_scoring=True))
register_task_kind(TaskKind("factoid", evaluate_factoid_qa, primary="accuracy", answer_field="generation",
                            example_fields={"accuracy": "hit"}))
register_task_kind(TaskKind("retrieval_qa", evaluate_retrieval_qa, primary="contains", answer_field="answer",
                            example_fields={"contains": "contains", "exact_match": "exact"}))
register_task_kind(TaskKind("kv_retrieval", evaluate_kv_retrieval, primary="accuracy", answer_field="generation",
                            example_fields={"accuracy": "hit"}))
register_task_kind(TaskKind("summarization", evaluate_summarization, primary="rouge/rougeL", answer_field="generation",
                            free_form=True))
register_task_kind(TaskKind("instruction_following", evaluate_instruction_following, primary="rouge/rougeL",
                            answer_field="generation", free_form=True))
