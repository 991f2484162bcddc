"""The one rule set that turns measured numbers into verdicts, defined once for every notebook.

Pure functions of numbers and arrays. A rule returns a `Verdict`; its `verdict` is one of VERDICTS:

    reproduced       the interval over the independent units shows what the paper says
    partly           fewer than MIN_UNITS units (the points agree with the claim, no interval), or the
                     claim holds at some of the points it was tested at and not at others
    not reproduced   the interval shows the opposite, or an effect smaller than the claimed one from a
                     design that could have seen the claimed one, or (equivalence) lies wholly outside
                     the margin
    inconclusive     the interval straddles what would decide; the detectable effect says what n would
    untestable here  the model has collapsed (perplexity over WORKING_MAX_PPL_RATIO x dense), the dense
                     model sits at a task's floor, or there are no results

The rules follow shared/docs/evidence.md: intervals over independent units (windows, questions, runs),
paired where two variants share the units; growth on disjoint position bins; equivalence by two
one-sided tests against a margin fixed before looking; the smallest detectable effect printed beside
every negative verdict; one "working" threshold.

Effects are signed distances from the null in the claimed direction: for a ratio whose null is 1, a
claimed effect of 0.1 means a ratio of 1.1 (side "greater") or 0.9 (side "less").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..evaluation.uncertainty import crossed_bootstrap, interval_name, t_interval
from ..plotting import VERDICTS

REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE, UNTESTABLE = VERDICTS

WORKING_MAX_PPL_RATIO = 3.0   # a model "works" while its perplexity is within 3x the dense model's
MIN_UNITS = 5                 # below this many independent units: no interval, a verdict is at most "partly"
FLOOR_STANDARD_ERRORS = 2.0   # a dense score within this many standard errors of chance is at the floor
ALPHA = 0.05                  # two-sided level of every interval (95%)
POWER = 0.8                   # power at which the detectable effect is computed
DAMAGE_TOLERANCE = 1.25       # a measured perplexity ratio within this factor of the published one matches
NOISE_FLOOR_MULTIPLE = 3.0    # an effect below this multiple of the run precision's noise floor is unmeasurable
PRECISION_SHARE = 0.05        # a claim may run in bf16 when the floor is below this share of its smallest effect
AGGREGATIONS = ("all", "majority", "holm", "holm-any")
SIDES = ("greater", "less", "two-sided")


@dataclass(frozen=True)
class Verdict:
    """What a rule decided: `verdict` (one of VERDICTS), `why` (one sentence), `rule` (the rule's name,
    e.g. "superiority", "equivalence [0.9, 1.1]", "aggregate: all") and the smallest effect the design
    could detect (same units as the tested quantity, a distance from the null; nan where none applies)."""

    verdict: str
    why: str
    rule: str
    detectable_effect: float = float("nan")

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r}; expected one of {VERDICTS}.")


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval over n independent units; `name` says what the interval is (e.g.
    "geometric mean, 95% t-interval over 8 windows"); `detectable_effect` as in `detectable_effect`;
    `p_value`: the one-sided (or two-sided) p-value of the null, for Holm aggregation."""

    estimate: float
    low: float
    high: float
    n: int
    name: str
    detectable_effect: float = float("nan")
    p_value: float = float("nan")


def _number(value: float | None) -> str:
    """A number for a sentence: 3 significant digits, more (up to 5) where 3 would show a value that is not
    0 or 1 as exactly "0" or "1" (an interval's end beside the null: 1.003 reads "1.003", not "1"); "n/a" for None."""
    if value is None:
        return "n/a"
    for digits in (3, 4, 5):
        text = f"{value:.{digits}g}"
        if text.lstrip("-") not in ("0", "1") or float(text) == value:
            break
    return text


# --------------------------------------------------------------------------- regime: working, floor, n
def is_working(ppl_ratio: float) -> bool:
    """True when a compressed model's perplexity is within WORKING_MAX_PPL_RATIO (3x) of the dense
    model's on the same windows; a nan or non-positive ratio is not a working model."""
    return bool(math.isfinite(ppl_ratio) and 0 < ppl_ratio <= WORKING_MAX_PPL_RATIO)


def at_floor(score: float, standard_error: float, chance: float = 0.0) -> bool:
    """True when the dense score is within FLOOR_STANDARD_ERRORS (2) standard errors of chance (or
    below it): such a task cannot show a compression loss. An unknown standard error (nan, fewer than
    two examples) counts as at the floor. Score, standard error and chance in the task's own units."""
    if not math.isfinite(standard_error):
        return True
    return not score - chance > FLOOR_STANDARD_ERRORS * standard_error


def worst_ratio(ppl_ratio: float | Sequence[float] | None) -> float | None:
    """The largest known perplexity ratio among the compared models; None when none is known."""
    if ppl_ratio is None:
        return None
    values = np.atleast_1d(np.asarray(ppl_ratio, dtype=float))
    values = values[~np.isnan(values)]
    return float(values.max()) if values.size else None


def regime_gate(ppl_ratio: float | Sequence[float] | None = None, *, dense_at_floor: bool = False,
                rule: str = "regime") -> Verdict | None:
    """"untestable here" when any compared model has collapsed (perplexity ratio to dense above
    WORKING_MAX_PPL_RATIO) or the dense model is at the task's floor; None when the comparison may go on.
    `ppl_ratio`: one ratio or those of every model compared; None or nan: not applicable / unknown."""
    worst = worst_ratio(ppl_ratio)
    if worst is not None and not is_working(worst):
        return Verdict(UNTESTABLE, f"a compared model has collapsed (perplexity {_number(worst)}x dense, above the "
                       f"{WORKING_MAX_PPL_RATIO:g}x working threshold): a comparison of broken models says little "
                       "about the methods", rule)
    if dense_at_floor:
        return Verdict(UNTESTABLE, f"at the floor: the dense score is within {FLOOR_STANDARD_ERRORS:g} standard "
                       "errors of chance, so no loss can show on this model", rule)
    return None


def noise_gate(effect: float, floor: float | None, *, multiple: float = NOISE_FLOOR_MULTIPLE,
               rule: str = "noise floor") -> Verdict | None:
    """"untestable here" when the effect a claim turns on (same units as the floor, e.g. nats of KL) is below
    `multiple` x the noise floor of the run's precision (KL(float32 dense || bf16 dense) for a bf16 run): such
    an effect cannot be told from rounding. None when the effect clears it, or no floor applies (float32)."""
    if floor is None or not np.isfinite(floor) or floor <= 0:
        return None
    if abs(effect) < multiple * floor:
        return Verdict(UNTESTABLE, f"the effect ({_number(effect)}) is below {multiple:g}x the precision's noise floor "
                       f"({_number(floor)}): it cannot be told from rounding; run this claim in float32", rule)
    return None


def precision_allows(smallest_effect: float, floor: float, *, share: float = PRECISION_SHARE) -> bool:
    """Whether a claim may be measured at a precision whose noise floor is `floor`: the floor must be below
    `share` (5%) of the smallest effect the claim needs (the rule the profiles choose their precision by)."""
    return floor < share * abs(smallest_effect)


# --------------------------------------------------------------------------- power
def detectable_effect(standard_deviation: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest mean effect a paired design of n units detects with `power` (80%) at two-sided level
    `alpha` (0.05): (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n), in the units of the per-unit
    differences whose standard deviation is `standard_deviation`; inf for fewer than two units."""
    from scipy import stats

    if n < 2 or not math.isfinite(standard_deviation):
        return float("inf")
    quantiles = stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(quantiles * standard_deviation / math.sqrt(n))


def mean_interval(differences: Sequence[float], *, null: float = 0.0, side: str = "greater",
                  unit: str = "units", confidence: float = 1 - ALPHA) -> Interval:
    """Mean of per-unit values (e.g. paired differences) with its Student-t interval over the units,
    the detectable effect of the design and the t-test p-value of `null` on `side`."""
    values = np.asarray(differences, dtype=float)
    values = values[np.isfinite(values)]
    low, high = t_interval(values, confidence=confidence)
    sd = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return Interval(float(values.mean()) if values.size else float("nan"), low, high, int(values.size),
                    "mean, " + interval_name("t", int(values.size), confidence, unit),
                    detectable_effect(sd, int(values.size)), _p_value(values, null, side))


def crossed_interval(a, b, *, null: float = 0.0, side: str = "greater", unit: str = "windows",
                     confidence: float = 1 - ALPHA) -> Interval:
    """mean(a) - mean(b) of two [seeds, windows] grids measured on the same seeds and windows, with a crossed
    bootstrap interval (seeds and windows drawn independently: it carries both variations); n is the number
    of windows (the unit every claim counts), the detectable effect and the t-test p-value those of the
    seed-averaged per-window differences. One seed: a paired bootstrap over windows."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    result = crossed_bootstrap(a, b, confidence=confidence, units=("seeds", unit))
    per_window = (a - b).mean(axis=0)
    windows = a.shape[1]
    sd = float(per_window.std(ddof=1)) if windows > 1 else float("nan")
    return Interval(result["estimate"], result["low"], result["high"], windows, "mean, " + result["interval"],
                    detectable_effect(sd, windows), _p_value(per_window, null, side))


def log_ratio_interval(numerator: Sequence[float], denominator: Sequence[float], *, side: str = "greater",
                       unit: str = "windows", confidence: float = 1 - ALPHA) -> Interval:
    """Geometric mean of per-unit ratios numerator / denominator with the exponentiated Student-t
    interval of the mean log ratio; the detectable effect is a distance from 1 on the claimed side
    (exp(d) - 1 for "greater", 1 - exp(-d) for "less"), the p-value that of ratio 1."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"log_ratio_interval: {a.shape} numerators against {b.shape} denominators; pass one "
                         "value of each per unit (window).")
    keep = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    logs = np.log(a[keep] / b[keep])
    on_log = mean_interval(logs, null=0.0, side=side, unit=unit, confidence=confidence)
    d = on_log.detectable_effect  # on the log scale
    if not math.isfinite(d):
        detectable = float("inf")
    else:
        detectable = 1 - math.exp(-d) if side == "less" else math.expm1(d)
    name = "geometric mean, " + interval_name("t", on_log.n, confidence, unit)
    return Interval(math.exp(on_log.estimate) if logs.size else float("nan"), math.exp(on_log.low),
                    math.exp(on_log.high), on_log.n, name, detectable, on_log.p_value)


def spearman_interval(x: Sequence[float], y: Sequence[float], *, side: str = "greater", unit: str = "layers",
                      confidence: float = 1 - ALPHA) -> Interval:
    """Spearman rank correlation of x and y over n units with a Fisher-z interval (variance 1.06 / (n - 3),
    Fieller, Hartley and Pearson 1957); the detectable effect is the smallest correlation detected with
    POWER at level ALPHA, tanh((z_{1-alpha/2} + z_power) * se); p-value of rho = 0 on `side`."""
    from scipy import stats

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b, n = a[keep], b[keep], int(keep.sum())
    name = f"{confidence:.0%} Fisher-z interval over {n} {unit}"
    if n < 4:
        rho = float(stats.spearmanr(a, b)[0]) if n >= 2 else float("nan")
        return Interval(rho, float("nan"), float("nan"), n, name, float("inf"), float("nan"))
    rho = float(np.clip(stats.spearmanr(a, b)[0], -0.999999, 0.999999))
    se = math.sqrt(1.06 / (n - 3))
    z = math.atanh(rho)
    half = stats.norm.ppf((1 + confidence) / 2) * se
    tail = {"greater": stats.norm.sf(z / se), "less": stats.norm.cdf(z / se),
            "two-sided": 2 * stats.norm.sf(abs(z) / se)}[side]
    detectable = math.tanh((stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)) * se)
    return Interval(rho, math.tanh(z - half), math.tanh(z + half), n, name, detectable, float(tail))


def _p_value(values: np.ndarray, null: float, side: str) -> float:
    from scipy import stats

    if side not in SIDES:
        raise ValueError(f"side={side!r}; expected one of {SIDES}.")
    if values.size < 2 or values.std() <= 1e-12 * max(1.0, abs(float(values.mean()))):
        if values.size >= 2:  # every unit identical: a sure effect when it lies on the tested side
            mean = float(values.mean())
            hit = {"greater": mean > null, "less": mean < null, "two-sided": mean != null}[side]
            return 0.0 if hit else 1.0
        return float("nan")
    return float(stats.ttest_1samp(values, null, alternative=side).pvalue)


# --------------------------------------------------------------------------- the tests
def _check_min_units(min_units: int) -> int:
    if min_units < MIN_UNITS:
        raise ValueError(f"min_units={min_units}; a claim may ask for more units than MIN_UNITS ({MIN_UNITS}), "
                         "never fewer.")
    return int(min_units)


def _oriented(estimate: float, low: float, high: float, null: float, side: str) -> tuple[float, float, float]:
    """The estimate and interval as distances from the null, positive in the claimed direction."""
    sign = -1.0 if side == "less" else 1.0
    ends = sorted((sign * (low - null), sign * (high - null)))
    return sign * (estimate - null), ends[0], ends[1]


def superiority(estimate: float, low: float, high: float, n: int, *, null: float = 0.0, side: str = "greater",
                claimed_effect: float | None = None, detectable: float | None = None,
                ppl_ratio: float | Sequence[float] | None = None, dense_at_floor: bool = False,
                min_units: int = MIN_UNITS) -> Verdict:
    """Direction / superiority test from a paired interval (estimate, low, high over n units).

    side "greater" / "less": the claim is that the quantity lies above / below `null`.
      reproduced      the interval excludes the null on the claimed side;
      not reproduced  the interval excludes it on the other side, or (with `claimed_effect`, a distance
                      from the null) the whole interval lies below the claimed effect AND the design
                      could detect it (detectable effect <= claimed effect); from a design that could
                      not, that outcome is "inconclusive (untestable at this n)";
      inconclusive    otherwise.
    side "two-sided": the claim is that the quantity differs from `null` in either direction;
      reproduced when the interval excludes the null, not reproduced when it lies within
      +-claimed_effect of it (and the design could detect that), inconclusive otherwise.
    n < min_units (at least MIN_UNITS): "partly" when the estimate is on the claimed side, else
    "inconclusive". Collapsed models or a dense score at the floor: "untestable here" (see `regime_gate`)."""
    rule = f"superiority ({side} than {_number(null)})"
    min_units = _check_min_units(min_units)
    gate = regime_gate(ppl_ratio, dense_at_floor=dense_at_floor, rule=rule)
    if gate is not None:
        return gate
    d = float("nan") if detectable is None else float(detectable)
    power_note = f"; detectable effect {_number(d)}" + (f" vs claimed {_number(claimed_effect)}"
                                                        if claimed_effect is not None else "")
    if side == "two-sided":
        e, lo, hi = estimate - null, low - null, high - null
        claimed_side = e != 0
    else:
        e, lo, hi = _oriented(estimate, low, high, null, side)
        claimed_side = e > 0
    if n < min_units:
        return Verdict(PARTLY if claimed_side else INCONCLUSIVE,
                       f"only {n} units (< {min_units}): no interval; the points' mean is "
                       f"{'on' if claimed_side else 'not on'} the claimed side", rule, d)
    could_detect = claimed_effect is not None and math.isfinite(d) and d <= claimed_effect
    if side == "two-sided":
        if lo > 0 or hi < 0:
            return Verdict(REPRODUCED, f"the interval [{_number(low)}, {_number(high)}] excludes {_number(null)}",
                           rule, d)
        if claimed_effect is not None and -claimed_effect < lo and hi < claimed_effect:
            if could_detect:
                return Verdict(NOT_REPRODUCED, f"the interval [{_number(low)}, {_number(high)}] lies within "
                               f"+-{_number(claimed_effect)} of {_number(null)}" + power_note, rule, d)
            return Verdict(INCONCLUSIVE, "untestable at this n: the interval lies within the claimed effect but "
                           "the design could not detect it" + power_note, rule, d)
        return Verdict(INCONCLUSIVE, f"the interval [{_number(low)}, {_number(high)}] contains {_number(null)}"
                       + power_note, rule, d)
    if lo > 0:
        return Verdict(REPRODUCED, f"the interval [{_number(low)}, {_number(high)}] excludes {_number(null)} on the "
                       "claimed side", rule, d)
    if hi < 0:
        return Verdict(NOT_REPRODUCED, f"the interval [{_number(low)}, {_number(high)}] excludes {_number(null)} on "
                       "the other side: the opposite of the claim" + power_note, rule, d)
    if claimed_effect is not None and hi < claimed_effect:
        if could_detect:
            return Verdict(NOT_REPRODUCED, f"the whole interval [{_number(low)}, {_number(high)}] lies short of the "
                           f"claimed effect ({_number(claimed_effect)} from {_number(null)}), which this design "
                           "could detect" + power_note, rule, d)
        return Verdict(INCONCLUSIVE, "untestable at this n: the interval lies short of the claimed effect, but the "
                       "design could not detect an effect that small" + power_note, rule, d)
    return Verdict(INCONCLUSIVE, f"the interval [{_number(low)}, {_number(high)}] contains {_number(null)}"
                   + power_note, rule, d)


def equivalence(estimate: float, low: float, high: float, n: int, *, margin: tuple[float, float],
                detectable: float | None = None, ppl_ratio: float | Sequence[float] | None = None,
                dense_at_floor: bool = False, min_units: int = MIN_UNITS, margin_name: str = "the margin") -> Verdict:
    """Equivalence by two one-sided tests against a margin (lower, upper) fixed in code before looking
    (one bound may be infinite: a non-inferiority margin). With a 95% interval this is TOST at 2.5%
    per side (conservative). `margin_name`: what the margin is, in the messages (e.g. a claimed band).
      reproduced      the whole interval lies inside the margin;
      not reproduced  the whole interval lies outside it (wholly below or wholly above);
      inconclusive    the interval straddles a bound;
    n < min_units (at least MIN_UNITS): "partly" when the estimate lies inside the margin, else
    "inconclusive". Collapsed models or a dense score at the floor: "untestable here"."""
    lower, upper = margin
    min_units = _check_min_units(min_units)
    if not lower < upper:
        raise ValueError(f"margin={margin}; expected (lower, upper) with lower < upper, fixed in the claim registry.")
    rule = f"equivalence [{_number(lower)}, {_number(upper)}]"
    gate = regime_gate(ppl_ratio, dense_at_floor=dense_at_floor, rule=rule)
    if gate is not None:
        return gate
    d = float("nan") if detectable is None else float(detectable)
    power_note = f"; detectable effect {_number(d)}"
    if n < min_units:
        inside = lower <= estimate <= upper
        return Verdict(PARTLY if inside else INCONCLUSIVE, f"only {n} units (< {min_units}): no interval; the "
                       f"estimate {_number(estimate)} lies {'inside' if inside else 'outside'} {margin_name}", rule, d)
    if lower <= low and high <= upper:
        return Verdict(REPRODUCED, f"the whole interval [{_number(low)}, {_number(high)}] lies inside {margin_name}",
                       rule, d)
    if high < lower or low > upper:
        return Verdict(NOT_REPRODUCED, f"the whole interval [{_number(low)}, {_number(high)}] lies outside "
                       f"{margin_name}" + power_note, rule, d)
    return Verdict(INCONCLUSIVE, f"the interval [{_number(low)}, {_number(high)}] straddles a bound of "
                   f"{margin_name} (inconclusive at this n)" + power_note, rule, d)


# --------------------------------------------------------------------------- growth on disjoint bins
def bin_means_from_cumulative(contexts: Sequence[int], cumulative_means: Sequence[float]) -> np.ndarray:
    """Mean over the disjoint position bins [c_{i-1}, c_i) (c_0 = 0) from cumulative means M(c) (mean over
    positions < c): mean[a, b) = (b*M(b) - a*M(a)) / (b - a). `cumulative_means` may carry leading axes
    (e.g. [windows, contexts]); contexts must rise strictly. Units: those of M (nats per token for KL)."""
    c = np.asarray(contexts, dtype=float)
    m = np.asarray(cumulative_means, dtype=float)
    if c.ndim != 1 or c.size == 0 or m.shape[-1] != c.size or np.any(np.diff(c) <= 0) or c[0] <= 0:
        raise ValueError(f"contexts {list(c)} for means of shape {m.shape}: expected strictly rising positive context "
                         "lengths, one per entry of the last axis of cumulative_means.")
    totals = c * m
    starts = np.concatenate([[0.0], c[:-1]])
    previous = np.concatenate([np.zeros_like(totals[..., :1]), totals[..., :-1]], axis=-1)
    return (totals - previous) / (c - starts)


def growth_interval(early_bin_kl: Sequence[float], late_bin_kl: Sequence[float], *, side: str = "greater",
                    unit: str = "windows") -> Interval:
    """Growth with context on disjoint bins: per window, mean KL in a late bin / mean KL in an early bin,
    summarized as a geometric mean with a t-interval over windows (the unit). 1 = flat."""
    return log_ratio_interval(late_bin_kl, early_bin_kl, side=side, unit=unit)


def linear_exponent(early_bin_kl: Sequence[float], late_bin_kl: Sequence[float], early_bin: tuple[int, int],
                    late_bin: tuple[int, int]) -> np.ndarray:
    """Per window, the exponent k of KL ~ position^k implied by two disjoint bins: log(late / early) divided
    by log of the ratio of the bins' mid positions (1 = linear growth, 0 = flat). Bins are [start, stop)."""
    early_mid, late_mid = (early_bin[0] + early_bin[1]) / 2, (late_bin[0] + late_bin[1]) / 2
    if not (early_bin[1] <= late_bin[0] and early_mid > 0):
        raise ValueError(f"bins {early_bin} and {late_bin}: expected disjoint [start, stop) bins, the early one first.")
    a, b = np.asarray(early_bin_kl, dtype=float), np.asarray(late_bin_kl, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(b / a) / math.log(late_mid / early_mid)


# --------------------------------------------------------------------------- damage matching
@dataclass(frozen=True)
class DamageMatch:
    """The measured setting whose perplexity ratio lies nearest (in log ratio) to a published one."""

    setting: str
    measured_ratio: float
    published_ratio: float
    log_distance: float          # |log(measured / published)|
    within_tolerance: bool       # measured within `tolerance` x of published


def within_factor(a: float, b: float, tolerance: float) -> bool:
    """Whether two positive values lie within a factor `tolerance` of each other (1.1: a / b in [1/1.1, 1.1])."""
    return abs(math.log(a / b)) <= math.log(tolerance) + 1e-12


def nearest_setting(values: Mapping[str, float], target: float, tolerance: float) -> tuple[str, float, bool]:
    """(setting, |log(value / target)|, within tolerance) of the setting whose positive value lies nearest
    to `target` on a log scale; `tolerance` is a factor (1.25: within [target / 1.25, target * 1.25])."""
    if tolerance < 1:
        raise ValueError(f"tolerance={tolerance}; expected a factor >= 1 such as 1.25.")
    if not target > 0:
        raise ValueError(f"target={target}; expected a positive value (a perplexity ratio, bits per weight).")
    usable = {k: float(v) for k, v in values.items() if math.isfinite(float(v)) and float(v) > 0}
    if not usable:
        raise ValueError(f"nearest_setting: no positive, finite value among {dict(values)}.")
    setting = min(usable, key=lambda k: (abs(math.log(usable[k] / target)), str(k)))
    distance = abs(math.log(usable[setting] / target))
    return setting, distance, within_factor(usable[setting], target, tolerance)


def damage_match(measured: Mapping[str, float], published_ratio: float, *,
                 tolerance: float = DAMAGE_TOLERANCE) -> DamageMatch:
    """Pick the damage-matched setting: of `measured` ({setting: perplexity ratio to dense} of one method
    on our model), the one nearest in log ratio to `published_ratio` (the paper model's ratio at the
    claimed setting), and say whether it lies within `tolerance` (a factor, DAMAGE_TOLERANCE = 1.25)."""
    setting, distance, within = nearest_setting(measured, published_ratio, tolerance)
    return DamageMatch(setting, float(measured[setting]), float(published_ratio), distance, within)


# --------------------------------------------------------------------------- several points
def holm(p_values: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down rejections (family-wise error `alpha`) for each p-value; nan never rejects."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), kind="stable")
    rejected = np.zeros(p.size, dtype=bool)
    for rank, index in enumerate(order):
        if not (p[index] <= alpha / (p.size - rank)):
            break
        rejected[index] = True
    return rejected


def holm_adjust(verdicts: Sequence[Verdict], p_values: Sequence[float], alpha: float = ALPHA) -> list[Verdict]:
    """The points' verdicts after Holm's correction: a "reproduced" whose null Holm does not reject
    becomes "inconclusive"; nothing is ever upgraded (a point with fewer than MIN_UNITS units stays at most
    "partly"). Give one-sided p-values with alpha = ALPHA / 2 to match the 95% intervals' one side."""
    out = []
    for verdict, rejected in zip(verdicts, holm(p_values, alpha)):
        if verdict.verdict == REPRODUCED and not rejected:
            verdict = Verdict(INCONCLUSIVE, verdict.why + "; not after Holm's correction", verdict.rule,
                              verdict.detectable_effect)
        out.append(verdict)
    return out


def aggregate(verdicts: Sequence[Verdict], rule: str, *, p_values: Sequence[float] | None = None,
              alpha: float = ALPHA) -> Verdict:
    """One verdict from the verdicts of several points, by a rule fixed before looking:

      "all"       every working point: reproduced when all are; not reproduced when some are and
                  none reproduces (fully or partly); partly when some reproduce and others do not;
      "majority"  reproduced / not reproduced when more than half the points are; else partly when
                  some reproduce (fully or partly), else inconclusive;
      "holm"      as "all", after `holm_adjust`: a point's "reproduced" stands only when Holm's
                  correction of the points' p-values rejects its null, else it becomes inconclusive;
      "holm-any"  an existence claim ("some variant grows"): reproduced when Holm rejects at least one
                  point, not reproduced when every point is, otherwise partly / inconclusive.
    Untestable points are left out; when nothing is left the verdict is "untestable here"."""
    if rule not in AGGREGATIONS:
        raise ValueError(f"rule={rule!r}; expected one of {AGGREGATIONS}.")
    name = f"aggregate: {rule}"
    verdicts = list(verdicts)
    if rule.startswith("holm"):
        if p_values is None or len(p_values) != len(verdicts):
            raise ValueError(f"aggregate({rule!r}) needs one p-value per point ({len(verdicts)} points).")
        verdicts = holm_adjust(verdicts, p_values, alpha)
    testable = [v for v in verdicts if v.verdict != UNTESTABLE]
    if not testable:
        why = verdicts[0].why if verdicts else "no points"
        return Verdict(UNTESTABLE, f"no testable point ({why})", name)
    counts = {v: sum(t.verdict == v for t in testable) for v in VERDICTS}
    total = len(testable)
    some = counts[REPRODUCED] + counts[PARTLY]
    finite = [t.detectable_effect for t in testable if math.isfinite(t.detectable_effect)]
    detectable = max(finite, default=float("nan"))  # the least sensitive point's
    tally = (f"{counts[REPRODUCED]} of {total} testable points reproduced, {counts[NOT_REPRODUCED]} not, "
             f"{counts[PARTLY]} partly, {counts[INCONCLUSIVE]} inconclusive")
    if rule == "holm-any":
        if counts[REPRODUCED]:
            verdict = REPRODUCED
        elif counts[NOT_REPRODUCED] == total:
            verdict = NOT_REPRODUCED
        else:
            verdict = PARTLY if counts[PARTLY] else INCONCLUSIVE
    elif rule == "majority":
        if counts[REPRODUCED] > total / 2:
            verdict = REPRODUCED
        elif counts[NOT_REPRODUCED] > total / 2:
            verdict = NOT_REPRODUCED
        else:
            verdict = PARTLY if some else INCONCLUSIVE
    else:  # all, holm
        if counts[REPRODUCED] == total:
            verdict = REPRODUCED
        elif counts[NOT_REPRODUCED] and not some:
            verdict = NOT_REPRODUCED
        else:
            verdict = PARTLY if some else INCONCLUSIVE
    return Verdict(verdict, tally, name, detectable)
