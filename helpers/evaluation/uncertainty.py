"""Intervals over the independent units of an experiment: windows, examples, calibration seeds.

Every function names what it resamples; `interval_name` writes that into tables and legends, e.g.
"95% t-interval over 64 windows" or "95% crossed bootstrap over 3 seeds x 64 windows".

Paired comparisons (two variants measured on the same units) resample the units once for both
variants, so what the two share (a hard window, a hard question) cancels:

    paired_bootstrap(a, b)        a[i], b[i]: one unit each (examples, windows)
    crossed_bootstrap(a, b)       a[s, w], b[s, w]: calibration seed s x evaluation window w; seeds and
                                  windows are resampled independently (two crossed random factors)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample std / sqrt(n)); nan for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan")
    return float(values.std(ddof=1) / math.sqrt(values.size))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; expected a fraction such as 0.95.")


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (each value is one resampled unit)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one value.")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def t_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (each value one independent unit); (nan, nan)
    for fewer than two values."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    _check_confidence(confidence)
    half = stats.t.ppf((1 + confidence) / 2, values.size - 1) * standard_error(values)
    return float(values.mean() - half), float(values.mean() + half)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sane at 0 and 1, unlike the normal approximation)."""
    from scipy import stats

    if n < 1:
        return float("nan"), float("nan")
    z = stats.norm.ppf((1 + confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def score_summary(scores: Sequence[float], chance: float = 0.0, confidence: float = 0.95) -> dict:
    """n, mean, standard error, a 95% interval (Wilson for 0/1 scores, else Student t) and whether the
    score is at the floor: within 2 standard errors of chance (or below it) -> untestable."""
    values = [float(v) for v in scores]
    n = len(values)
    if n == 0:
        raise ValueError("score_summary needs at least one example's score.")
    mean_value = sum(values) / n
    binary = all(v in (0.0, 1.0) for v in values)
    se = math.sqrt(mean_value * (1 - mean_value) / n) if binary else standard_error(values)
    low, high = wilson_interval(sum(values), n, confidence) if binary else t_interval(values, confidence=confidence)
    at_floor = not (mean_value - chance > 2 * (se if math.isfinite(se) else float("inf")))
    return {"n": n, "score": mean_value, "se": se, "low": low, "high": high, "chance": chance, "at_floor": at_floor,
            "interval": f"{confidence:.0%} {'Wilson' if binary else 't'} interval over {n} examples"}


INTERVALS = ("t", "bootstrap")


def interval_name(kind: str, n: int | str, confidence: float = 0.95, unit: str = "windows") -> str:
    """What an interval is, for legends and tables: e.g. '95% t-interval over 8 windows'."""
    what = {"t": "t-interval", "bootstrap": "percentile bootstrap", "paired": "paired bootstrap",
            "crossed": "crossed bootstrap"}[kind]
    return f"{confidence:.0%} {what} over {n} {unit}"


def _statistic(a: np.ndarray, b: np.ndarray, ratio: bool) -> np.ndarray:
    """mean(a) / mean(b) or mean(a) - mean(b) over the last axes (one value per resample)."""
    axes = tuple(range(1, a.ndim))
    mean_a, mean_b = a.mean(axis=axes), b.mean(axis=axes)
    return mean_a / mean_b if ratio else mean_a - mean_b


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, ratio: bool = False, confidence: float = 0.95,
                     resamples: int = 4000, seed: int = 0, unit: str = "units") -> dict:
    """Paired percentile bootstrap of mean(a) - mean(b) (or, with `ratio`, mean(a) / mean(b)) over units
    both variants were measured on: every resample draws the same units for a and b.

    Returns estimate, low, high, n and `interval` (its name)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty 1-D arrays; got shapes {a.shape} "
                         f"and {b.shape}.")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, a.size, size=(resamples, a.size))
    values = _statistic(a[index], b[index], ratio)
    tail = (1 - confidence) / 2
    return {"estimate": float(_statistic(a[None], b[None], ratio)[0]), "low": float(np.quantile(values, tail)),
            "high": float(np.quantile(values, 1 - tail)), "n": int(a.size),
            "interval": interval_name("paired", a.size, confidence, unit)}


def crossed_bootstrap(a, b=None, *, ratio: bool = False, confidence: float = 0.95, resamples: int = 4000,
                      seed: int = 0, units: tuple[str, str] = ("seeds", "windows")) -> dict:
    """Paired bootstrap over two crossed factors: a[s, w] and b[s, w] are one measurement per (seed,
    window); each resample draws seeds and windows independently with replacement (the same draw for a
    and b) and takes mean(a) - mean(b) (or mean(a) / mean(b)) over the drawn cells. The interval so
    carries both the calibration-seed and the evaluation-window variation; with one seed it is a
    paired bootstrap over windows. Without `b`: the interval of mean(a) itself.

    Returns estimate, low, high, seeds, windows, the share of seeds whose own estimate is above zero
    (ratio: above 1) and `interval` (its name)."""
    if b is None and ratio:
        raise ValueError("crossed_bootstrap: ratio=True needs b, the variant a is compared with.")
    a = np.asarray(a, dtype=float)
    b = np.zeros_like(a) if b is None else np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"crossed_bootstrap needs two [seeds, windows] arrays of one shape; got {a.shape} and "
                         f"{b.shape}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("crossed_bootstrap: a value is missing (nan) or infinite; give complete seed x window grids.")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    seeds, windows = a.shape
    rows = rng.integers(0, seeds, size=(resamples, seeds))
    columns = rng.integers(0, windows, size=(resamples, windows))
    pick = (rows[:, :, None], columns[:, None, :])
    values = _statistic(a[pick], b[pick], ratio)
    per_seed = _statistic(a[:, None, :], b[:, None, :], ratio)
    tail = (1 - confidence) / 2
    return {"estimate": float(_statistic(a[None], b[None], ratio)[0]), "low": float(np.quantile(values, tail)),
            "high": float(np.quantile(values, 1 - tail)), "seeds": seeds, "windows": windows,
            "seeds_above": int((per_seed > (1.0 if ratio else 0.0)).sum()),
            "interval": interval_name("crossed", f"{seeds} {units[0]} x {windows}", confidence, units[1]) if seeds > 1
            else interval_name("paired", windows, confidence, units[1])}  # one seed: what it resamples is windows
