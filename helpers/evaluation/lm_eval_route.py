"""lm-evaluation-harness on any model here: compressed in memory, or a folder saved by
helpers.compression.export (compressed-tensors, decompressed on load), or any checkpoint.

    folder = write_local_task("tasks/", "my_mc", rows, doc_to_text="{{question}}\\nAnswer:",
                              doc_to_choice="{{choices}}", doc_to_target="answer")
    out = evaluate_lm_eval(model, ["my_mc"], tokenizer=tokenizer, include_path=folder)
    out["results"]["my_mc"]["acc,none"]

lm-eval is an optional dependency (`pip install -r requirements-lm-eval.txt`: lm-eval 0.4.13 without
its `hf` extra, so the pinned torch stays) and is imported only when a function here runs. A model
in memory goes through lm-eval's HFLM wrapper as it is: a fake-quantized model is measured exactly
as the project's own metrics see it. Offline, a task is an lm-eval YAML config whose data is a local
JSON-lines file (`write_local_task`); the built-in tasks download their data from the hub.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

INSTALL = "pip install -r requirements-lm-eval.txt (lm-eval==0.4.13; it leaves the pinned torch as it is)"


def require_lm_eval():
    """The lm_eval package, or an ImportError that names the install command."""
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError(f"this needs lm-evaluation-harness, an optional dependency: {INSTALL}.") from err
    return lm_eval


@dataclass(frozen=True)
class LMEvalSettings:
    """How lm-eval runs: shots (None: the task's own), examples per task (None: all), batch size."""
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 1
    device: str = "cpu"          # used when `model` is a folder; a model in memory stays where it is
    log_samples: bool = True     # per-document records in the output's "samples"
    seed: int = 0

    def __post_init__(self):
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"num_fewshot={self.num_fewshot}; expected 0 or more, or None (the task's default).")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit}; expected a positive number of documents per task or None (all).")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}; expected a positive integer.")


def write_local_task(folder: str | Path, task: str, rows: Sequence[Mapping], *, doc_to_text: str,
                     doc_to_choice: str | Sequence[str], doc_to_target: str | int,
                     description: str | None = None, output_type: str = "multiple_choice",
                     metrics: Iterable[str] = ("acc",)) -> Path:
    """Write `rows` as <folder>/<task>.jsonl and an lm-eval task config <folder>/<task>.yaml that reads
    it (no hub); returns the folder, for evaluate_lm_eval(include_path=...). The doc_to_* fields and
    `description` are lm-eval's (Jinja templates over a row, or a row's field name)."""
    if not rows:
        raise ValueError(f"task {task!r} has no rows; give at least one document.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = (folder / f"{task}.jsonl").resolve()
    data.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows))
    config = {"task": task, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "output_type": output_type, "doc_to_text": doc_to_text,
              "doc_to_choice": doc_to_choice if isinstance(doc_to_choice, str) else list(doc_to_choice),
              "doc_to_target": doc_to_target,
              "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
              "metadata": {"version": 1.0}}
    if description is not None:
        config["description"] = description
    (folder / f"{task}.yaml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return folder


def evaluate_lm_eval(model, tasks: Sequence[str], *, tokenizer=None, include_path: str | Path | None = None,
                     settings: LMEvalSettings = LMEvalSettings()) -> dict:
    """Run lm-eval `tasks` on `model` and return lm-eval's output dict ("results" per task, "samples"
    per document when settings.log_samples, "configs", "versions").

    model: a transformers model in memory (with `tokenizer`, a Hugging Face tokenizer), or a folder
    (a checkpoint, e.g. one written by helpers.compression.export.save_compressed, whose config makes
    transformers decompress it on load); tokenizer None then loads the folder's own.
    include_path: folder(s) of task configs (write_local_task); with it lm-eval's built-in tasks are
    not indexed (they need the hub), without it only they are available."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks={tasks!r}; expected a non-empty list of task names, e.g. ['my_mc'].")
    if isinstance(model, (str, Path)):
        if not (Path(model) / "config.json").exists():
            raise FileNotFoundError(f"{model} has no config.json; give a saved model folder or a model in memory.")
        lm = HFLM(pretrained=str(model), tokenizer=tokenizer, device=settings.device, batch_size=settings.batch_size,
                  dtype="auto")
    else:
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError("a model in memory needs its Hugging Face tokenizer (tokenizer=...); lm-eval's HFLM "
                             f"cannot use {type(tokenizer).__name__}.")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
    manager = TaskManager(include_path=None if include_path is None else str(include_path),
                          include_defaults=include_path is None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval knows no task {unknown} under include_path={include_path!s}; write one with "
                         "write_local_task or check the name.")
    out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=settings.num_fewshot, limit=settings.limit,
                          task_manager=manager, log_samples=settings.log_samples, random_seed=settings.seed,
                          numpy_random_seed=settings.seed, torch_random_seed=settings.seed,
                          fewshot_random_seed=settings.seed, bootstrap_iters=0)
    return dict(out)
