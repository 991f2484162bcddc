"""The verdict board: every registered claim, decided from whatever tidy frames are present.

    frames = {"context_growth": growth_frame, "task_scores": task_frame}   # frame name -> DataFrame
    table = board(frames)              # one row per claim and regime; "untestable here" without results
    print(to_markdown(table))

    python -m helpers.claims.board [results/]    reads <folder>/<frame name>.csv or .jsonl, prints the board

Frame names and their columns are those of the deciders in `registry` (e.g. "context_growth" for LC1-LC4).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

from .registry import CLAIMS, MissingColumns, decide, regimes, untestable

BOARD_COLUMNS = ("id", "claim", "measured", "detectable_effect", "regime", "verdict", "why")


def board(frames: Mapping[str, "object"], *, missing_reason: str = "no results"):
    """One row per claim (and regime, for claims with a damage-matched one) from tidy frames keyed by frame
    name. A claim whose frame is absent or empty, or lacks a column its decider reads, is "untestable here"
    with the reason; every other claim is decided by its registered decider."""
    import pandas as pd

    rows = []
    for claim in CLAIMS.values():
        frame = frames.get(claim.frame)
        for regime in regimes(claim):
            if frame is None or len(frame) == 0:
                record = untestable(claim, f"{missing_reason} (frame {claim.frame!r})", regime=regime)
            else:
                try:
                    record = decide(claim, frame, regime)
                except MissingColumns as error:
                    record = untestable(claim, str(error), regime=regime)
            rows.append(record.as_row())
    return pd.DataFrame(rows)


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
        regime = ", ".join(part for part in (_cell(row.get("model", "")), f"ppl {_cell(row['ppl_ratio'])}x"
                                             if isinstance(row.get("ppl_ratio"), float)
                                             and math.isfinite(row["ppl_ratio"]) else "", row["regime"]) if part)
        lines.append(f"| {row['id']} | {_cell(row['claim'])} | {_cell(row['measured'])} | "
                     f"{_cell(row['detectable_effect'])} | {regime} | **{row['verdict']}** | {_cell(row['why'])} |")
    return "\n".join(lines) + "\n"


def read_frames(folder: str | Path) -> dict:
    """Tidy frames saved as <folder>/<frame name>.csv or .jsonl, for every frame name a claim reads."""
    import pandas as pd

    folder, frames = Path(folder), {}
    for name in sorted({claim.frame for claim in CLAIMS.values()}):
        for suffix, read in ((".csv", pd.read_csv), (".jsonl", lambda p: pd.read_json(p, lines=True))):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                frames[name] = read(path)
                break
    return frames


def main(argv: Sequence[str] | None = None) -> int:
    """Print the verdict board from the tidy frames in a folder (default results/); 0 even without results."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.claims.board", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="results", help="folder of <frame name>.csv / .jsonl files")
    args = parser.parse_args(argv)
    frames = read_frames(args.folder)
    print(to_markdown(board(frames, missing_reason="no committed results")), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
