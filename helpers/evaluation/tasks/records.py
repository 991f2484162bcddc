"""Per-example records (prompt, generation, gold, score) saved as JSON lines while a task runs.

Every task writes one line per example as soon as it is scored, so a crash loses nothing and a
judge can re-score the saved generations later without running the model again
(`read_records`, then `helpers.evaluation.tasks.judges.judge_records`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...results import plain


class RecordWriter:
    """Append-only JSON-lines writer: one record per line, flushed after each write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        line = json.dumps(plain(record), ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def write_all(self, records) -> None:
        for record in records:
            self.write(record)


def read_records(path: str | Path, **where) -> list[dict]:
    """All records of a JSON-lines file; `where` keeps those whose fields equal the given values."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no records file at {path}; run a task with records_path={str(path)!r} first.")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON ({err}); the file may have been cut by a "
                                 "crash: delete that line and re-run.") from err
            if all(record.get(k) == v for k, v in where.items()):
                records.append(record)
    return records


def as_writer(records_path: str | Path | RecordWriter | None) -> RecordWriter | None:
    if records_path is None or isinstance(records_path, RecordWriter):
        return records_path
    return RecordWriter(records_path)


@dataclass
class TaskResult:
    """What a task returns: per-example records, the aggregate scores and the settings used."""
    task: str
    records: list[dict]
    aggregate: dict
    settings: dict
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The flat numeric aggregate values (nested dicts such as per-subject scores left out)."""
        return {k: v for k, v in self.aggregate.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def log(self, table, *, model: str, method: str = "dense", settings: dict | None = None,
            dataset: str | None = None) -> list[dict]:
        """Append one tidy row per aggregate metric to a `helpers.results.ResultsTable`."""
        rows = []
        for metric, value in self.metrics().items():
            rows.append(table.append(model=model, method=method, metric=f"{self.task}/{metric}", value=value,
                                     settings=settings or {}, dataset=dataset or self.task,
                                     protocol={"task": self.task, **self.settings}, seconds=self.seconds))
        return rows


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
