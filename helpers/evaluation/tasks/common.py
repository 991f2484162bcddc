"""Small pieces shared by the tasks: picking examples and checking their fields."""
from __future__ import annotations

import random
from typing import Sequence

from ...data import load_dataset


def select_examples(dataset: str, examples, required: Sequence[str], *, seed: int | None = None,
                    **load_kwargs) -> list[dict]:
    """The examples a task runs on.

    examples: a list of dicts (used as given), an int n (the first n rows of `dataset`, or n rows
    drawn with `seed` when a seed is given), or None (the whole dataset).
    """
    if examples is None or isinstance(examples, int) and not isinstance(examples, bool):
        rows = load_dataset(dataset, **load_kwargs)
        if examples is not None:
            if examples < 1:
                raise ValueError(f"examples={examples}; expected a positive count, a list of examples or None (all).")
            if examples > len(rows):
                raise ValueError(f"examples={examples} but {dataset!r} has only {len(rows)} rows; ask for at most "
                                 f"{len(rows)} or pass None for all of them.")
            if seed is None:
                rows = rows[:examples]
            else:
                picked = sorted(random.Random(seed).sample(range(len(rows)), examples))
                rows = [rows[i] for i in picked]
    elif isinstance(examples, (list, tuple)):
        rows = list(examples)
        if not rows:
            raise ValueError(f"the example list for {dataset!r} is empty; pass at least one example.")
    else:
        raise TypeError(f"examples={examples!r}; expected a list of dicts, an int (how many) or None (all).")
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"example {position} is a {type(row).__name__}; expected a dict with keys "
                            f"{list(required)}.")
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"example {position} lacks the field(s) {missing}; a {dataset} example needs "
                             f"{list(required)} (it has {sorted(row)}).")
    return rows


def mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")
