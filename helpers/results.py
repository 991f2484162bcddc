"""Tidy results: one JSON line per measurement, appended as the run goes.

Every record carries the model, method, settings, dataset, protocol, metric and value, plus the
package versions, the numbers version of this code (`NUMBERS_VERSION`), the git commit and the time,
so a figure can always be traced to what produced it. A crash keeps what was written;
`ResultsTable.done(key)` lets a re-run skip work already recorded.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any


# The version of the numbers this code produces. Bump it in any change that moves a compression or a
# metric number (tests/test_provenance.py holds golden values that fail until it is bumped): it is
# recorded on every row and is part of the Runner's skip key, so rows of older numbers are measured again.
NUMBERS_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The short git commit of the checkout this package runs from; "unknown" when it is not one (or git
    is missing). Uncommitted edits are not seen: NUMBERS_VERSION is what tells numbers apart."""
    if not (REPO_ROOT / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


@lru_cache(maxsize=1)
def environment() -> dict:
    import importlib.metadata as md
    versions = {}
    for package in ("torch", "transformers", "datasets"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    return versions


def plain(value: Any):
    """JSON-friendly copy of settings (dataclasses, tuples, paths, tensors of one value)."""
    from dataclasses import asdict, is_dataclass
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        return value.item()
    return value


def run_key(**fields) -> str:
    """A stable key for one unit of work (used to skip work already recorded)."""
    return json.dumps(plain(fields), sort_keys=True)


def append_lines(path: str | Path, records: list[dict]) -> None:
    """Append `records` to a JSON-lines file, one per line; a line cut mid-write before them (a kill, a full disk)
    is closed first so it cannot swallow the first of them."""
    text = "".join(json.dumps(record) + "\n" for record in records)
    with open(path, "a+b") as handle:
        handle.seek(0, 2)
        if handle.tell():
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                text = "\n" + text
        handle.write(text.encode("utf-8"))
        handle.flush()


def _gzip_bytes(name: str, records: list[dict]) -> bytes:
    """`records` as the gzip-compressed JSON-lines file `name` holds them (keys sorted, level 9, the name in the
    header and its time 0: the same records give the same bytes, so re-executing a committed run leaves its files
    unchanged in git)."""
    import gzip
    import io

    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as raw, \
            io.TextIOWrapper(raw, encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, sort_keys=True) + "\n" for record in records)
    return buffer.getvalue()  # GzipFile leaves a file object it was given open


def write_gzip_lines(path: str | Path, records: list[dict]) -> int:
    """`records` as a gzip-compressed JSON-lines file (the form committed beside a run, `_gzip_bytes`); returns
    how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_gzip_bytes(path.name, records))
    return len(records)


def read_gzip_lines(path: str | Path) -> list[dict]:
    """The records of a `write_gzip_lines` file."""
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


MAX_SHARD_BYTES = 3 * 2**19  # 1.5 MiB: under the 2 MiB a tracked file may weigh (tests/test_hygiene.py)


def _shard_number(path: Path) -> int | None:
    """1 for <stem>.jsonl.gz, n for <stem>.part<n>.jsonl.gz, None for a name of neither form."""
    name = path.name.removesuffix(".jsonl.gz")
    if name == path.name:
        return None
    head, _, number = name.rpartition(".part")
    return int(number) if head and number.isdigit() else 1


def shard_base(path: str | Path) -> Path:
    """The first file of the shard set a file belongs to (itself for <stem>.jsonl.gz)."""
    path = Path(path)
    return path if _shard_number(path) in (1, None) else path.with_name(
        path.name.removesuffix(".jsonl.gz").rpartition(".part")[0] + ".jsonl.gz")


def _shard_path(path: Path, number: int) -> Path:
    return path if number == 1 else path.with_name(f"{path.name.removesuffix('.jsonl.gz')}.part{number}.jsonl.gz")


def shard_paths(path: str | Path) -> list[Path]:
    """The files of a `write_gzip_shards` set, in order: <stem>.jsonl.gz, then <stem>.part2.jsonl.gz, ..."""
    path = Path(path)
    parts = [p for p in path.parent.glob(path.name.removesuffix(".jsonl.gz") + ".part*.jsonl.gz")
             if shard_base(p) == path]
    return [p for p in [path] if p.is_file()] + sorted(parts, key=_shard_number)


def write_gzip_shards(path: str | Path, records: list[dict], max_bytes: int | None = None) -> int:
    """`records` as `write_gzip_lines` files of at most `max_bytes` each (default MAX_SHARD_BYTES; a single
    record larger than that stays whole): <stem>.jsonl.gz, and where more are needed <stem>.part2.jsonl.gz, ...
    in record order, each compressed once; the parts a previous, larger set left behind are removed. Returns how
    many records were written."""
    path, max_bytes, count = Path(path), max_bytes or MAX_SHARD_BYTES, 1
    while True:
        size = max(1, -(-len(records) // count))
        packed = [_gzip_bytes(_shard_path(path, number).name, records[start:start + size])
                  for number, start in enumerate(range(0, max(len(records), 1), size), start=1)]
        if size == 1 or all(len(data) <= max_bytes for data in packed):
            break
        count = max(count + 1, -(-count * max(map(len, packed)) // max_bytes))
    for stale in shard_paths(path):
        stale.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    for number, data in enumerate(packed, start=1):
        _shard_path(path, number).write_bytes(data)
    return len(records)


def read_gzip_shards(path: str | Path) -> list[dict]:
    """The records of a `write_gzip_shards` set, in the order written."""
    return [record for part in shard_paths(path) for record in read_gzip_lines(part)]


DEFAULT_MODEL = "smollm2-135m"  # the offline workhorse: its runs carry no name


def run_suffix(run_name: str, model: str) -> str:
    """What a notebook appends to its outputs' names (figures, verdicts, committed rows): "_<run_name>"; without
    a run name, none for the default model and "_<the model's last path part, lower case>" for any other."""
    name = run_name or ("" if model == DEFAULT_MODEL else str(model).rstrip("/").split("/")[-1].lower())
    return f"_{name}" if name else ""


def cache_dir(results_path: str | Path) -> Path:
    """Where a run keeps what it can recompute but would rather not (the dense reference's pass, the precision
    floor): `cache/` beside its results table, ignored by git like the table."""
    return Path(results_path).parent / "cache"


class ResultsTable:
    """Append-only JSON-lines table of tidy records; each carries `numbers_version` (NUMBERS_VERSION) and
    `commit` (git_commit()) beside the package versions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, *, model: str, method: str, metric: str, value: float, settings: dict | None = None,
               dataset: str | None = None, protocol: dict | None = None, key: str | None = None,
               **extra) -> dict:
        record = {"model": model, "method": method, "metric": metric, "value": plain(value),
                  "settings": plain(settings or {}), "dataset": dataset, "protocol": plain(protocol or {}),
                  "key": key, **plain(extra), "versions": environment(),
                  "numbers_version": NUMBERS_VERSION, "commit": git_commit(),
                  "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self._write([record])
        return record

    def _write(self, records: list[dict]) -> None:
        append_lines(self.path, records)

    def records(self) -> list[dict]:
        """Every complete record; a line that does not parse (cut mid-write) is skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as err:
                    warnings.warn(f"{self.path}, line {number}: not a complete JSON record ({err.msg}); skipped "
                                  "(a run killed mid-write leaves one; what it held is measured again).")
        return out

    def freeze(self, path: str | Path, *, model: str | None = None, protocol: dict | None = None) -> int:
        """Write the runner's rows of one run (this model and protocol; every row without them given) to a
        gzip-compressed JSON-lines file `path`, the form committed beside a run's verdicts so its notebook can
        be re-executed elsewhere without measuring anything (`seed`). Returns the number of rows written."""
        wanted = None if protocol is None else plain(protocol)
        return write_gzip_lines(path, [r for r in self.records() if r.get("attempt")
                                       and (model is None or r.get("model") == model)
                                       and (wanted is None or r.get("protocol") == wanted)])

    def seed(self, path: str | Path) -> int:
        """Append the rows of a frozen file (`freeze`) that this table does not hold yet (same key and attempt);
        returns how many were added. Rows keep their recorded versions, commits and times."""
        held = {(r.get("key"), r.get("attempt")) for r in self.records()}
        added = [row for row in read_gzip_lines(path) if (row.get("key"), row.get("attempt")) not in held]
        if added:
            self._write(added)
        return len(added)

    def done(self, key: str) -> bool:
        return any(r.get("key") == key for r in self.records())

    def frame(self):
        """The table as a pandas DataFrame (settings and protocol flattened with dots)."""
        import pandas as pd
        return pd.json_normalize(self.records())
