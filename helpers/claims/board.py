"""The verdict board: every registered claim, decided from whatever tidy frames are present.

    frames = {"context_growth": growth_frame, "task_scores": task_frame}   # frame name -> DataFrame
    table = board(frames, claims=("LC1", "LC2"))   # one row per claim and regime; "untestable here" without results
    print(to_markdown(table))
    record_verdicts(frames, ("LC1", "LC2"), "01_verdicts", "figures", "results/committed", title=...)

    python -m helpers verdicts            the whole board from the committed frames (results/committed/)
    python -m helpers verdicts --check    exits 1 when a committed verdict file differs from what they give

A notebook's verdict cell is one `record_verdicts` call: it decides its claims, writes the verdict file
(<figures>/<name>.md for people, <name>.csv for the check) and the tidy frames the verdicts were computed
from (<committed>/<name>/<frame>.csv.gz). Frame names and their columns are those of the deciders in
`registry` (e.g. "context_growth" for LC1-LC4).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

from .registry import CLAIMS, MissingColumns, decide, regimes, untestable

BOARD_COLUMNS = ("id", "claim", "measured", "detectable_effect", "regime", "verdict", "why")
CHECKED_COLUMNS = ("id", "regime", "model", "verdict", "estimate", "low", "high", "n", "ppl_ratio", "why")
SIGNIFICANT = 4  # the check compares numbers to this many significant digits (CSV round trips, platforms)
COMMITTED = Path("results") / "committed"
FIGURES = Path("figures")


def _records(frames: Mapping[str, "object"], claims: Sequence[str] | None, missing_reason: str):
    """The ClaimVerdict of every (claim, regime) of `claims` (default: every registered claim)."""
    unknown = sorted(set(claims or ()) - set(CLAIMS))
    if unknown:
        raise ValueError(f"claims {unknown} are not registered; known: {sorted(CLAIMS)}.")
    for claim in (CLAIMS[c] for c in claims) if claims is not None else CLAIMS.values():
        frame = frames.get(claim.frame)
        for regime in regimes(claim):
            if frame is None or len(frame) == 0:
                yield untestable(claim, f"{missing_reason} (frame {claim.frame!r})", regime=regime)
                continue
            try:
                yield decide(claim, frame, regime)
            except MissingColumns as error:
                yield untestable(claim, str(error), regime=regime)


def board(frames: Mapping[str, "object"], *, claims: Sequence[str] | None = None,
          missing_reason: str = "no results"):
    """One row per claim (and regime, for claims with a damage-matched one) from tidy frames keyed by frame
    name; `claims`: the ids to decide (default: every registered claim). A claim whose frame is absent or
    empty, or lacks a column its decider reads, is "untestable here" with the reason; every other claim is
    decided by its registered decider."""
    import pandas as pd

    return pd.DataFrame([record.as_row() for record in _records(frames, claims, missing_reason)])


def board_points(frames: Mapping[str, "object"], *, claims: Sequence[str] | None = None):
    """The points each verdict of `board` rests on: one row per (claim, regime, point) with the point's
    interval, n, worst perplexity ratio, its own verdict and why (a point the aggregate left out, e.g. a
    collapsed one, shows as "untestable here" with its reason)."""
    import pandas as pd

    rows = [{"id": record.id, "regime": record.regime, "point": p.name, "estimate": p.interval.estimate,
             "low": p.interval.low, "high": p.interval.high, "n": p.interval.n, "ppl_ratio": p.ppl_ratio,
             "verdict": p.verdict.verdict, "why": p.verdict.why}
            for record in _records(frames, claims, "no results") for p in record.points]
    return pd.DataFrame(rows, columns=["id", "regime", "point", "estimate", "low", "high", "n", "ppl_ratio",
                                       "verdict", "why"])


def record_verdicts(frames: Mapping[str, "object"], claims: Sequence[str], name: str,
                    output_dir: str | Path = FIGURES, committed_dir: str | Path = COMMITTED, *, title: str,
                    protocol=None):
    """A notebook's verdict cell: decide `claims` from `frames`, write <output_dir>/<name>.md (title, protocol,
    the board as markdown) and <name>.csv (what `check` compares), and the frames behind them as
    <committed_dir>/<name>/<frame>.csv.gz, so the verdicts can be recomputed without re-running anything.
    Returns the board (a DataFrame) for the notebook to show."""
    from ..plotting import describe_protocol

    if "_verdicts" not in name or "/" in name or name.endswith((".md", ".csv")):
        raise ValueError(f"verdict file name={name!r}; expected a bare name with '_verdicts' in it, e.g. "
                         "'01_verdicts' or, for a run on another model, '01_verdicts_gemma3-270m'.")
    table = board(frames, claims=claims)
    used = {CLAIMS[c].frame for c in claims}
    folder, frames_dir = Path(output_dir), Path(committed_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    frames_dir.mkdir(parents=True, exist_ok=True)
    for stale in frames_dir.glob("*.csv.gz"):
        stale.unlink()
    for frame_name in sorted(used):
        frame = frames.get(frame_name)
        if frame is not None and len(frame):
            frame.to_csv(frames_dir / f"{frame_name}.csv.gz", index=False,
                         compression={"method": "gzip", "mtime": 0})  # same frame, same bytes
    head = [f"### {title}", ""] + ([f"*Protocol:* {describe_protocol(protocol)}.", ""] if protocol is not None else [])
    (folder / f"{name}.md").write_text("\n".join(head) + to_markdown(table), encoding="utf-8")
    table.to_csv(folder / f"{name}.csv", index=False)
    return table


FRAME_SUFFIXES = (".csv.gz", ".csv", ".jsonl")


def committed_frame_paths(folder: str | Path) -> dict[str, Path]:
    """The files of one committed run's frames (<folder>/<frame>.csv.gz, or .csv / .jsonl) by frame name,
    without reading them."""
    folder, paths = Path(folder), {}
    for name in sorted({claim.frame for claim in CLAIMS.values()}):
        found = [folder / f"{name}{suffix}" for suffix in FRAME_SUFFIXES if (folder / f"{name}{suffix}").is_file()]
        if found:
            paths[name] = found[0]
    return paths


def read_committed(folder: str | Path) -> dict:
    """The frames of one committed run (`committed_frame_paths`) by frame name."""
    import pandas as pd

    return {name: pd.read_json(path, lines=True) if path.suffix == ".jsonl" else pd.read_csv(path)
            for name, path in committed_frame_paths(folder).items()}


def _comparable(table):
    """The checked columns, numbers rounded to SIGNIFICANT digits, as strings (nan -> "")."""
    def text(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return "" if math.isnan(float(value)) else f"{float(value):.{SIGNIFICANT}g}"
        return " ".join(str(value).split()) if value == value else ""
    return [tuple(text(row.get(c, "")) for c in CHECKED_COLUMNS) for row in table.to_dict("records")]


def check(figures_dir: str | Path = FIGURES, committed_dir: str | Path = COMMITTED) -> list[str]:
    """Every committed verdict file (<figures_dir>/*_verdicts*.csv) against the verdicts its committed frames
    give now: one message per difference (a file without frames, a row that changed, a verdict table .md that
    no board computed); [] when all agree."""
    import pandas as pd

    problems = [f"{md}: a verdict table the claims board did not compute (no {md.with_suffix('.csv').name}); "
                "decide it with record_verdicts" for md in sorted(Path(figures_dir).glob("*_verdicts*.md"))
                if not md.with_suffix(".csv").is_file()]
    files = sorted(Path(figures_dir).glob("*_verdicts*.csv"))
    for path in files:
        committed = pd.read_csv(path)
        folder = Path(committed_dir) / path.stem
        if not folder.is_dir():
            problems.append(f"{path}: no committed frames at {folder}; re-execute its notebook and commit both.")
            continue
        claims = list(dict.fromkeys(committed["id"]))
        now = board(read_committed(folder), claims=claims)
        before, after = _comparable(committed), _comparable(now)
        for old, new in zip(before, after):
            if old != new:
                changed = [f"{c}: {a!r} -> {b!r}" for c, a, b in zip(CHECKED_COLUMNS, old, new) if a != b]
                problems.append(f"{path} {old[0]} ({old[1]}): " + "; ".join(changed))
        if len(before) != len(after):
            problems.append(f"{path}: {len(before)} committed rows, {len(after)} computed now.")
    return problems


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return " ".join(str(value).split()).replace("|", "/")


def to_markdown(table) -> str:
    """The board as a markdown table: claim (paper's words), measured (estimate, interval, n, unit),
    detectable effect, regime (model, worst perplexity ratio to dense, nominal / damage-matched),
    verdict, why."""
    lines = ["| id | claim | measured | detectable effect | regime | verdict | why / limits |",
             "|---|---|---|---|---|---|---|"]
    for row in table.to_dict("records"):
        regime = ", ".join(part for part in (_cell(row.get("run", "")), _cell(row.get("model", "")),
                                             f"worst ppl {_cell(row['ppl_ratio'])}x"
                                             if isinstance(row.get("ppl_ratio"), float)
                                             and math.isfinite(row["ppl_ratio"]) else "", row["regime"]) if part)
        lines.append(f"| {row['id']} | {_cell(row['claim'])} | {_cell(row['measured'])} | "
                     f"{_cell(row['detectable_effect'])} | {regime} | **{row['verdict']}** | {_cell(row['why'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the board of every committed run (default results/committed/), or of one folder of frames;
    --check: exit 1 when a committed verdict file differs from what its frames give."""
    import argparse

    import pandas as pd

    parser = argparse.ArgumentParser(prog="python -m helpers verdicts", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(COMMITTED),
                        help="committed runs (subfolders of frames; default results/committed) or one folder of frames")
    parser.add_argument("--check", action="store_true", help="compare every figures/*_verdicts*.csv with its frames")
    parser.add_argument("--figures", default=str(FIGURES), help="where the verdict files are (default figures/)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.figures, args.folder)
        for problem in problems:
            print(problem)
        count = len(list(Path(args.figures).glob("*_verdicts*.csv")))
        print(f"{count} verdict files checked: " + (f"{len(problems)} differences" if problems else "all agree"))
        return 1 if problems else 0
    folder = Path(args.folder)
    runs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not runs:  # one folder of frames
        print(to_markdown(board(read_committed(folder), missing_reason="no committed results")), end="")
        return 0
    tables = []
    for run in runs:
        table = board(read_committed(run))
        tables.append(table[table.verdict != "untestable here"].assign(run=run.name))
    decided = pd.concat(tables) if tables else pd.DataFrame()
    missing = [c for c in CLAIMS if decided.empty or c not in set(decided["id"])]
    untested = board({}, claims=missing, missing_reason="no committed run decides it")
    print(to_markdown(pd.concat([decided, untested.assign(run="")]).reset_index(drop=True)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
