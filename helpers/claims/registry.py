"""Every claim under test, with a stable id, and the thin function that decides it from tidy frames.

    CLAIMS["LC2"]                      the claim: the paper's words and setting, the test, its margin
    decide(CLAIMS["LC2"], frame)       -> ClaimVerdict: what was measured, the regime, the verdict, why

Papers: arXiv 2406.06773 (LC: compression error and context length), arXiv 2310.01382 (KI: LLM-KICK,
knowledge-intensive tasks), arXiv 2409.20094 (HS: a Hessian-based layer-wise sparsity schedule).

Each decider reads one tidy frame (one row per measurement unit; its columns are listed in the
decider's docstring), selects rows by recorded settings (never by parsing labels), computes one
interval per tested point and hands it to `rules`, where every threshold lives. Margins and claimed
effects are fixed here, before looking at any result. The frames are built by the experiment modules
or notebooks; `board.board` applies every decider whose frame is present.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from ..evaluation.uncertainty import paired_bootstrap, score_summary
from . import rules
from .rules import Interval, Verdict

PAPERS = {
    "2406.06773": "Evaluating zero-shot long-context LLM compression (arXiv 2406.06773)",
    "2310.01382": "Compressing LLMs: the truth is rarely pure and never simple (LLM-KICK, arXiv 2310.01382)",
    "2409.20094": "Hessian-based layer-wise sparsity schedule with quantization (arXiv 2409.20094)",
}
TEST_KINDS = ("superiority", "equivalence", "direction")
REGIMES = ("nominal", "damage-matched")

GROWTH_EFFECT = 0.1              # "grows": a late/early KL ratio of at least 1.1, the edge of LC2's flat margin
FLAT_MARGIN = (0.9, 1.1)         # "flat": late/early KL ratio within [0.9, 1.1]
LINEAR_MARGIN = (1 / 1.5, 1.5)   # "about linear": exponent of KL ~ position^k within [0.67, 1.5] (symmetric in log)
TASK_EFFECT = 0.02               # a task-score change that matters: 2 points of accuracy (scores in [0, 1])
SCHEDULE_EFFECT = math.log(1.05) # "beats": 5% lower perplexity, as a mean per-window NLL difference in nats
PERPLEXITY_MATCH = 1.1           # two points "at matched perplexity" (KI7): ratios within 1.1x of each other
STORAGE_MATCH = 1.1              # "equal storage" (KI4): bits per weight within 1.1x of each other
WORKING_STAND_IN = "a working model (the paper's ratio is unpublished)"  # LC4's damage-matched regime
EQUAL_PERPLEXITY = "equal perplexity (ratios within 1.1x)"  # KI4's damage-matched regime: no published ratio needed
KI3_NO_DROP = 0.03               # KI3: a relative drop within +-3% is "no drop"

# Published WikiText-2 perplexity ratios to the same paper's dense model (shared/docs/reference-protocols.md),
# keyed (model (window length), "method setting"). For damage-matched comparisons.
PUBLISHED_RATIOS: dict[tuple[str, str], float] = {
    ("LLaMA-2-7B (4096)", "magnitude 50%"): 2.91, ("LLaMA-2-7B (4096)", "sparsegpt 50%"): 1.27,
    ("LLaMA-2-7B (4096)", "wanda 50%"): 1.25,
    ("LLaMA-2-7B (4096)", "magnitude 4:8"): 3.22, ("LLaMA-2-7B (4096)", "sparsegpt 4:8"): 1.59,
    ("LLaMA-2-7B (4096)", "wanda 4:8"): 1.56,
    ("LLaMA-2-7B (4096)", "magnitude 2:4"): 10.7, ("LLaMA-2-7B (4096)", "sparsegpt 2:4"): 1.99,
    ("LLaMA-2-7B (4096)", "wanda 2:4"): 2.15,
    ("LLaMA-7B (2048)", "wanda 70%"): 15.1, ("LLaMA-7B (2048)", "owl+wanda 70%"): 4.3,
    ("LLaMA-7B (2048)", "sparsegpt 70%"): 4.6, ("LLaMA-7B (2048)", "owl+sparsegpt 70%"): 3.4,
    ("LLaMA-2-7B (2048)", "rtn 4-bit per-channel"): 1.12, ("LLaMA-2-7B (2048)", "gptq 4-bit per-channel"): 1.07,
    ("LLaMA-2-7B (2048)", "rtn 3-bit per-channel"): 98.0, ("LLaMA-2-7B (2048)", "gptq 3-bit per-channel"): 1.53,
    ("LLaMA-2-7B (2048)", "rtn 4-bit g128"): 1.05, ("LLaMA-2-7B (2048)", "gptq 4-bit g128"): 1.04,
    ("LLaMA-2-7B (2048)", "rtn 3-bit g128"): 1.22,
    ("LLaMA-2-7B (2048)", "gptq 3-bit g128"): 1.165,  # published as 1.15-1.18 (6.29-6.43): the midpoint
    ("OPT-125M (2048)", "rtn 4-bit per-channel"): 1.35, ("OPT-125M (2048)", "gptq 4-bit per-channel"): 1.13,
    ("OPT-125M (2048)", "gptq 3-bit per-channel"): 1.95, ("OPT-125M (2048)", "sparsegpt 50%"): 1.33,
    ("OPT-125M (2048)", "magnitude 50%"): 7.0,
}


@dataclass(frozen=True)
class Claim:
    """One claim of one paper. `words`: the paper's words, short; `setting`: the paper's setting;
    `test_kind`: superiority (an effect of at least `claimed_effect` on `side` of `null`), direction (the
    sign only) or equivalence (inside `margin`, fixed here); `unit`: the independent unit of the
    interval; `min_n`: fewer units give at most "partly"; `variants_needed`: what must be measured;
    `aggregation`: the rules.aggregate rule over the tested points; `frame`: the tidy frame it reads;
    `damage_reference`: the published model whose ratios (PUBLISHED_RATIOS) the damage-matched regime
    matches, None when the paper's setting has no published ratio."""

    id: str
    paper: str
    words: str
    setting: str
    test_kind: str
    margin: tuple[float, float] | None
    unit: str
    min_n: int
    variants_needed: tuple[str, ...]
    claimed_effect: float | None
    null: float = 0.0
    side: str = "greater"
    aggregation: str = "all"
    frame: str = ""
    damage_reference: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.paper not in PAPERS:
            problems.append(f"paper={self.paper!r} (expected one of {sorted(PAPERS)})")
        if self.test_kind not in TEST_KINDS:
            problems.append(f"test_kind={self.test_kind!r} (expected one of {TEST_KINDS})")
        if self.test_kind == "equivalence" and (self.margin is None or not self.margin[0] < self.margin[1]):
            problems.append(f"margin={self.margin} (an equivalence claim needs (lower, upper), lower < upper)")
        if self.test_kind == "direction" and self.claimed_effect is not None:
            problems.append("claimed_effect set on a direction claim (use test_kind='superiority')")
        if self.side not in rules.SIDES or self.aggregation not in rules.AGGREGATIONS:
            problems.append(f"side={self.side!r} / aggregation={self.aggregation!r}")
        if self.min_n < rules.MIN_UNITS:
            problems.append(f"min_n={self.min_n} (at least rules.MIN_UNITS = {rules.MIN_UNITS})")
        if not self.frame:
            problems.append("no frame named")
        if problems:
            raise ValueError(f"claim {self.id}: " + "; ".join(problems) + ".")


@dataclass(frozen=True)
class Point:
    """One tested point of a claim: what it is, its interval, the worst perplexity ratio to dense among
    the models it compares (nan: not applicable) and its verdict."""

    name: str
    interval: Interval
    ppl_ratio: float
    verdict: Verdict


@dataclass(frozen=True)
class ClaimVerdict:
    """The verdict on one claim in one regime. The measured numbers (estimate, low, high, n, unit,
    interval name, detectable effect) are those of the headline point: the first point whose verdict is
    the claim's (all points are in `points`). `ppl_ratio`: the worst perplexity ratio to dense among the
    testable points; `regime`: "nominal" (the paper's setting) or "damage-matched" (the setting whose perplexity
    ratio matches the paper model's); `rule`: the test and the aggregation rule."""

    id: str
    paper: str
    claim: str
    estimate: float
    low: float
    high: float
    n: int
    unit: str
    interval: str
    detectable_effect: float
    model: str
    ppl_ratio: float
    regime: str
    verdict: str
    why: str
    rule: str
    points: tuple[Point, ...] = field(default=(), repr=False)
    min_n: int = rules.MIN_UNITS

    def has_interval(self) -> bool:
        """Whether the headline point has enough units (the claim's min_n) to show an interval."""
        return self.n >= self.min_n and math.isfinite(self.low) and math.isfinite(self.high)

    def measured(self) -> str:
        """The headline numbers in words, e.g. '1.05 [0.98, 1.12], n=8 windows (geometric mean, 95% ...)'."""
        if not self.points:
            return "no results"
        number = rules._number
        text = (f"{number(self.estimate)} [{number(self.low)}, {number(self.high)}], n={self.n} {self.unit} "
                f"({self.interval})" if self.has_interval() else
                f"{number(self.estimate)}, n={self.n} {self.unit} (fewer than {self.min_n}: no interval)")
        return text + (f"; {len(self.points)} points" if len(self.points) > 1 else "")

    def as_row(self) -> dict:
        """One row of the verdict board."""
        band = self.has_interval()
        return {"id": self.id, "paper": self.paper, "claim": self.claim, "measured": self.measured(),
                "estimate": self.estimate, "low": self.low if band else float("nan"),
                "high": self.high if band else float("nan"), "n": self.n, "unit": self.unit,
                "interval": self.interval, "detectable_effect": self.detectable_effect, "model": self.model,
                "ppl_ratio": self.ppl_ratio, "regime": self.regime, "verdict": self.verdict, "why": self.why,
                "rule": self.rule}


class MissingColumns(ValueError):
    """A frame lacks a column a decider reads."""


def untestable(claim: Claim, reason: str, *, regime: str = "nominal", model: str = "") -> ClaimVerdict:
    """The record of a claim that could not be tested (no results, no rows at its setting)."""
    return ClaimVerdict(claim.id, claim.paper, claim.words, float("nan"), float("nan"), float("nan"), 0, claim.unit,
                        "", float("nan"), model, float("nan"), regime, rules.UNTESTABLE,
                        reason, f"{claim.test_kind}; aggregate: {claim.aggregation}", (), claim.min_n)


# --------------------------------------------------------------------------- shared steps
def _require(frame, columns: Sequence[str], claim: Claim) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingColumns(f"claim {claim.id} reads frame {claim.frame!r} with columns {list(columns)}; missing "
                             f"{missing} (present: {list(frame.columns)}).")


def _models(frame) -> str:
    return ", ".join(sorted(map(str, frame["model"].dropna().unique()))) if "model" in frame.columns else ""


def _ratio(rows) -> float:
    return float(rows["ppl_ratio"].max()) if "ppl_ratio" in rows.columns and len(rows) else float("nan")


def _test(claim: Claim, interval: Interval, *, ppl_ratio=None, dense_at_floor: bool = False,
          margin_name: str = "the margin") -> Verdict:
    """The claim's test (rules.superiority or rules.equivalence, its margin called `margin_name`) on one point's
    interval."""
    common = dict(detectable=interval.detectable_effect, ppl_ratio=ppl_ratio, dense_at_floor=dense_at_floor,
                  min_units=claim.min_n)
    if claim.test_kind == "equivalence":
        return rules.equivalence(interval.estimate, interval.low, interval.high, interval.n, margin=claim.margin,
                                 margin_name=margin_name, **common)
    return rules.superiority(interval.estimate, interval.low, interval.high, interval.n, null=claim.null,
                             side=claim.side, claimed_effect=claim.claimed_effect, **common)


def _point(claim: Claim, name: str, interval: Interval, ratios, **kwargs) -> Point:
    ratio = rules.worst_ratio(ratios)
    return Point(name, interval, float("nan") if ratio is None else ratio,
                 _test(claim, interval, ppl_ratio=ratios, **kwargs))


def _skipped(name: str, reason: str, ratio: float = float("nan")) -> Point:
    """A point that could not be tested (no match, no baseline): counted as untestable."""
    return Point(name, Interval(float("nan"), float("nan"), float("nan"), 0, ""), ratio,
                 Verdict(rules.UNTESTABLE, reason, "selection"))


def _decide(claim: Claim, points: list[Point], frame, regime: str = "nominal", what: str = "") -> ClaimVerdict:
    """Aggregate the points by the claim's rule and build the record."""
    if not points:
        return untestable(claim, f"no rows at the claim's setting{' (' + what + ')' if what else ''}", regime=regime,
                          model=_models(frame))
    p_values = [p.interval.p_value for p in points] if claim.aggregation.startswith("holm") else None
    # a point is reproduced when its 95% interval excludes the null on one side: one-sided level 2.5%
    alpha = rules.ALPHA if claim.side == "two-sided" else rules.ALPHA / 2
    if len(points) == 1 and p_values is None:
        overall = points[0].verdict
    else:
        overall = rules.aggregate([p.verdict for p in points], claim.aggregation, p_values=p_values, alpha=alpha)
        if p_values is not None:  # after Holm's correction a point's own verdict may have changed
            adjusted = rules.holm_adjust([p.verdict for p in points], p_values, alpha)
            points = [Point(p.name, p.interval, p.ppl_ratio, v) for p, v in zip(points, adjusted)]
    why = overall.why
    headline = next((p for p in points if p.verdict.verdict == overall.verdict), points[0])
    if len(points) > 1:
        why = f"{why}; {headline.name}: {headline.verdict.why}"
    # the worst ratio among the points the verdict rests on: an untestable (e.g. collapsed) point is left out
    ratios = [p.ppl_ratio for p in points if math.isfinite(p.ppl_ratio) and p.verdict.verdict != rules.UNTESTABLE]
    i = headline.interval
    return ClaimVerdict(claim.id, claim.paper, claim.words, i.estimate, i.low, i.high, i.n, claim.unit, i.name,
                        i.detectable_effect, _models(frame), max(ratios) if ratios else float("nan"), regime,
                        overall.verdict, why, f"{headline.verdict.rule}; aggregate: {claim.aggregation}", tuple(points),
                        claim.min_n)


def _windows(rows, column: str):
    return rows.sort_values("window").set_index("window")[column]


def _quantized(bits) -> np.ndarray:
    bits = np.asarray(bits, dtype=float)
    return np.isfinite(bits) & (bits < 16)


# --------------------------------------------------------------------------- 2406.06773: context length
GROWTH_COLUMNS = ("label", "window", "early_bin_kl", "late_bin_kl", "ppl_ratio")


def _growth_point(claim: Claim, name: str, rows) -> Point:
    interval = rules.growth_interval(rows["early_bin_kl"].to_numpy(float), rows["late_bin_kl"].to_numpy(float),
                                     side="less" if claim.side == "less" else "greater", unit=claim.unit)
    return _point(claim, name, interval, rows["ppl_ratio"].to_numpy(float))


def decide_lc1(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """LC1, some compression's error grows with context. Frame "context_growth": one row per (label,
    window) with columns label, window, early_bin_kl, late_bin_kl (mean KL, nats/token, over a disjoint early
    and late position bin), ppl_ratio (the variant's perplexity / dense). Each variant: late/early ratio
    above 1 (at least 1 + GROWTH_EFFECT); existence across variants with Holm's correction."""
    _require(frame, GROWTH_COLUMNS, claim)
    points = [_growth_point(claim, str(label), rows) for label, rows in frame.groupby("label", sort=False)]
    return _decide(claim, points, frame, regime)


def _damage_matched(claim: Claim, rows, setting: str, *, by: str = "method") -> tuple[list[str], list[Point]]:
    """The damage-matched labels among `rows` (one per `by` value): per method, the label whose median
    ppl_ratio lies nearest the published ratio of `claim.damage_reference` at "<method> <setting>" (within
    rules.DAMAGE_TOLERANCE); the methods without a match or a published ratio as skipped points."""
    keep, skipped = [], []
    for method, group in rows.groupby(by, sort=False):
        published = PUBLISHED_RATIOS.get((claim.damage_reference, f"{method} {setting}"))
        if published is None:
            skipped.append(_skipped(str(method), f"no published {setting} ratio for {method} on "
                                    f"{claim.damage_reference}"))
            continue
        match = rules.damage_match(group.groupby("label")["ppl_ratio"].median().to_dict(), published)
        if match.within_tolerance:
            keep.append(match.setting)
        else:
            skipped.append(_skipped(match.setting, f"nearest setting {match.measured_ratio:.3g}x vs published "
                                    f"{published:.3g}x ({method} {setting}): outside {rules.DAMAGE_TOLERANCE}x"))
    return keep, skipped


def _at_fifty_percent(claim: Claim, rows, regime: str):
    """The rows of a claim made at 50% sparsity: nominal, sparsity 0.5; damage-matched, per method the label
    `_damage_matched` picks. Returns (rows, skipped points)."""
    if regime == "nominal":
        return rows[np.abs(rows["sparsity"].astype(float) - 0.5) < 1e-9], []
    keep, skipped = _damage_matched(claim, rows, "50%")
    return rows[rows["label"].isin(keep)], skipped


def decide_lc2(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """LC2, pruning stays flat. Frame "context_growth" (as LC1) plus family, method, sparsity: pruned
    variants other than random (LC4's). Nominal: unstructured 50%, the paper's setting; damage-matched: per
    method the sparsity whose perplexity ratio is nearest the published 50% ratio on `claim.damage_reference`.
    Per variant, the late/early KL ratio's interval within FLAT_MARGIN [0.9, 1.1]; every variant."""
    _require(frame, (*GROWTH_COLUMNS, "family", "method", "sparsity"), claim)
    pruned, skipped = _at_fifty_percent(claim, frame[(frame["family"] == "pruning") & (frame["method"] != "random")],
                                        regime)
    points = [_growth_point(claim, str(label), rows) for label, rows in pruned.groupby("label", sort=False)]
    return _decide(claim, points + skipped, frame, regime, f"{regime} pruning (not random) at 50%")


def decide_lc3(frame, claim: Claim, regime: str = "damage-matched") -> ClaimVerdict:
    """LC3, <=4-bit weight quantization grows, and more than pruning at matched damage. Frame
    "context_growth" (as LC1) plus `family` and `bits` (nan for unquantized rows). Per quantized variant
    (bits <= 4): the pruned variant nearest in perplexity ratio (within rules.DAMAGE_TOLERANCE), the
    per-window ratio of their growths (quantized / pruned) above 1 + GROWTH_EFFECT AND the quantized
    variant's own growth; both parts must hold (rules.aggregate "all"). Always damage-matched."""
    _require(frame, (*GROWTH_COLUMNS, "family", "bits"), claim)
    quantized = frame[(frame["family"] == "quantization") & _quantized(frame["bits"]) & (frame["bits"] <= 4)]
    pruned = frame[frame["family"] == "pruning"]
    ratios = pruned.groupby("label")["ppl_ratio"].median().to_dict()
    points = []
    for label, rows in quantized.groupby("label", sort=False):
        ratio = float(rows["ppl_ratio"].median())
        if not ratios:
            points.append(_skipped(str(label), "no pruned variant to match", ratio))
            continue
        other, distance, within = rules.nearest_setting(ratios, ratio, rules.DAMAGE_TOLERANCE)
        name = f"{label} vs {other} (ppl {ratio:.3g}x vs {ratios[other]:.3g}x)"
        if not within:
            points.append(_skipped(name, f"no pruned variant within {rules.DAMAGE_TOLERANCE}x of its perplexity "
                                   f"ratio (nearest {other}, {ratios[other]:.3g}x)", ratio))
            continue
        mine = _windows(rows, "late_bin_kl") / _windows(rows, "early_bin_kl")
        theirs = pruned[pruned["label"] == other]
        theirs = _windows(theirs, "late_bin_kl") / _windows(theirs, "early_bin_kl")
        shared = mine.index.intersection(theirs.index)
        paired = rules.log_ratio_interval(mine[shared].to_numpy(), theirs[shared].to_numpy(), unit=claim.unit)
        both = [ratio, ratios[other]]
        versus = _test(claim, paired, ppl_ratio=both)
        own = _test(claim, rules.growth_interval(rows["early_bin_kl"], rows["late_bin_kl"], unit=claim.unit),
                    ppl_ratio=ratio)
        combined = rules.aggregate([own, versus], "all")
        verdict = own if own.verdict == rules.UNTESTABLE else combined
        points.append(Point(name, paired, max(both), Verdict(
            verdict.verdict, f"own growth {own.verdict}; growth vs the pruned variant: {versus.why}", versus.rule,
            paired.detectable_effect)))
    return _decide(claim, points, frame, "damage-matched", "bits <= 4 quantization")


def decide_lc4(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """LC4, random 10% pruning grows about linearly. Frame "context_growth" (as LC1) plus method,
    sparsity and the bins' positions early_bin_start, early_bin_stop, late_bin_start, late_bin_stop
    ([start, stop), 0-based). Nominal: method == "random" at sparsity 0.10; damage-matched: the paper's
    model still works at 10% (its ratio is not published), so every random fraction below 10% at which this
    model still works (rules.is_working) stands in. Per variant and window the exponent k of
    KL ~ position^k from the two bins; its mean within LINEAR_MARGIN [0.67, 1.5]; every variant."""
    edges = ("early_bin_start", "early_bin_stop", "late_bin_start", "late_bin_stop")
    _require(frame, (*GROWTH_COLUMNS, "method", "sparsity", *edges), claim)
    random = frame[frame["method"] == "random"]
    sparsity = random["sparsity"].astype(float)
    if regime == "nominal":
        chosen = random[np.abs(sparsity - 0.10) < 0.005]
    else:
        working = random.groupby("label")["ppl_ratio"].median().map(rules.is_working)
        chosen = random[(sparsity < 0.095) & random["label"].map(working)]
    points = []
    for label, rows in chosen.groupby("label", sort=False):
        bins = rows[list(edges)].drop_duplicates()
        if len(bins) != 1:
            raise ValueError(f"LC4: variant {label} has {len(bins)} different bin edges across windows; use one pair "
                             "of bins for every window.")
        start, stop, late_start, late_stop = (int(v) for v in bins.iloc[0])
        exponents = rules.linear_exponent(rows["early_bin_kl"], rows["late_bin_kl"], (start, stop),
                                          (late_start, late_stop))
        points.append(_point(claim, str(label), rules.mean_interval(exponents, null=1.0, side="two-sided",
                                                                      unit=claim.unit), rows["ppl_ratio"].to_numpy()))
    what = "method == 'random', sparsity 0.10" if regime == "nominal" else "random pruning below 10% that works"
    return _decide(claim, points, frame, regime, what)


def decide_lc5(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """LC5, error accumulates through attention: its variance grows linearly in position. Frame
    "attention_noise": label, unit (a window or a simulation trial), log_slope (slope of log error
    variance, or of log KL, against log position past the first positions; 1 = linear), ppl_ratio (nan for
    a simulation). Per label: mean slope within LINEAR_MARGIN [0.67, 1.5]."""
    _require(frame, ("label", "unit", "log_slope", "ppl_ratio"), claim)
    points = [_point(claim, str(label), rules.mean_interval(rows["log_slope"], null=1.0, side="two-sided",
                                                             unit=claim.unit), rows["ppl_ratio"].to_numpy(float))
              for label, rows in frame.groupby("label", sort=False)]
    return _decide(claim, points, frame, regime)


PROTECTION_COLUMNS = (*GROWTH_COLUMNS, "bits", "protected_fraction", "protection_rule")


def quantization_grid(frame):
    """Each row's quantization grid, "bits/group size" ("bits/channel" for one grid per output channel; the
    group size is optional in the frame), and "/<blocks>" when only some decoder blocks are quantized (column
    blocks, optional; empty or "all": every block): settings are compared with the baseline of their own grid only."""
    grid = frame["bits"].astype(float).map("{:g}".format)
    if "group_size" in frame:
        grid = grid + "/" + frame["group_size"].astype(float).map(lambda g: f"g{g:g}" if g == g and g > 0 else "channel")
    if "blocks" in frame:
        grid = grid + frame["blocks"].map(lambda b: "" if every_block(b) else f"/{b}")
    return grid


def every_block(blocks) -> bool:
    """Whether a recorded `blocks` value means every decoder block (not recorded, None, NaN or "all")."""
    return blocks is None or (isinstance(blocks, float) and blocks != blocks) or blocks == "all"


def decide_lc6(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """LC6, keeping ~2% of weight groups at 8 bits removes the growth. Frame "protection": columns of
    LC1 plus bits (of the unprotected groups), protected_fraction (0 for the unprotected baseline) and
    protection_rule ("none", "magnitude", "random", ...), optionally group_size. Per magnitude-protected
    variant with a fraction in [1%, 5%]: the unprotected baseline on the same grid (bits, group size) must
    grow (else there is nothing to remove: untestable); then the paired test of `_removal_point`."""
    _require(frame, PROTECTION_COLUMNS, claim)
    fraction = frame["protected_fraction"].astype(float)
    protected = frame[(frame["protection_rule"] == "magnitude") & (fraction >= 0.01) & (fraction <= 0.05)]
    points = []
    grid = quantization_grid(frame)
    for label, rows in protected.groupby("label", sort=False):
        bits, mine = float(rows["bits"].iloc[0]), grid[rows.index[0]]
        base = frame[(fraction == 0) & (grid == mine)]
        if base.empty:
            points.append(_skipped(str(label), f"no unprotected baseline on its grid ({mine})", _ratio(rows)))
            continue
        if base["label"].nunique() > 1:
            points.append(_skipped(str(label), f"{base['label'].nunique()} unprotected baselines on its grid ({mine}): "
                                   "record group_size to tell them apart", _ratio(rows)))
            continue
        grows = rules.superiority(*_unpack(rules.growth_interval(base["early_bin_kl"], base["late_bin_kl"],
                                                                 unit=claim.unit)),
                                  null=1.0, claimed_effect=GROWTH_EFFECT, ppl_ratio=_ratio(base),
                                  min_units=claim.min_n)
        if grows.verdict not in (rules.REPRODUCED, rules.PARTLY):
            points.append(_skipped(str(label), f"the unprotected {bits:g}-bit baseline does not grow here "
                                   f"({grows.verdict}: {grows.why}), so there is no growth to remove", _ratio(rows)))
            continue
        points.append(_removal_point(claim, f"{label} (baseline grows: {grows.verdict})", rows, base))
    return _decide(claim, points, frame, regime, "magnitude protection of 1-5% of groups")


REMOVED_SHARE = 0.5  # LC6: "removes the growth" means at least this share of the baseline's log growth is gone


def _removal_point(claim: Claim, name: str, rows, base) -> Point:
    """LC6 on one protected setting and its unprotected baseline, paired by window. Per window the growth
    g = late-bin / early-bin KL of each, and q = g_protected / g_baseline^(1 - REMOVED_SHARE): q < 1 when
    protection removes more than half of the baseline's (log) growth in that window; geometric mean of q
    with its t-interval over the shared windows (the point's interval).
      reproduced      q's interval below 1 and the protected growth's interval inside FLAT_MARGIN
                      (most of the growth removed, and what is left is flat);
      partly          q's interval below 1, the protected growth not shown flat;
      not reproduced  q's interval above 1 (protection leaves more than half the growth), or q straddles 1
                      while the protected setting still grows wholly past FLAT_MARGIN;
      inconclusive    otherwise.
    Collapsed settings and fewer than min_n windows fall to the flatness test's verdict (untestable,
    partly or inconclusive)."""
    mine, theirs = _windows(rows, "late_bin_kl") / _windows(rows, "early_bin_kl"), \
        _windows(base, "late_bin_kl") / _windows(base, "early_bin_kl")
    shared = mine.index.intersection(theirs.index)
    q = rules.log_ratio_interval(mine[shared].to_numpy(float), theirs[shared].to_numpy(float) ** (1 - REMOVED_SHARE),
                                 side="less", unit=claim.unit)
    q = replace(q, name="protected growth / unprotected growth^0.5 (< 1: over half the log growth removed), "
                + q.name)
    flat = _growth_point(claim, name, rows)
    ratios = [_ratio(rows), _ratio(base)]
    worst, rule, d = rules.worst_ratio(ratios), f"paired removal (share {REMOVED_SHARE:g}) + {flat.verdict.rule}", \
        q.detectable_effect
    gate = rules.regime_gate(ratios, rule=rule)
    if gate is not None or q.n < claim.min_n:  # collapsed: untestable; too few windows: the flatness test's say
        return Point(name, q, float("nan") if worst is None else worst, gate or flat.verdict)
    number, f = rules._number, flat.interval
    shown = f"q {number(q.estimate)} [{number(q.low)}, {number(q.high)}]; protected growth {number(f.estimate)} " \
            f"[{number(f.low)}, {number(f.high)}]"
    if q.high < 1:
        verdict = Verdict(rules.REPRODUCED if flat.verdict.verdict == rules.REPRODUCED else rules.PARTLY,
                          f"{shown}: over half the baseline's growth removed" + (
                              ", and what is left is flat" if flat.verdict.verdict == rules.REPRODUCED
                              else ", but what is left is not shown flat"), rule, d)
    elif q.low > 1:
        verdict = Verdict(rules.NOT_REPRODUCED, f"{shown}: protection leaves more than half the baseline's growth; "
                          f"detectable effect {number(d)}", rule, d)
    elif flat.verdict.verdict == rules.NOT_REPRODUCED:
        verdict = Verdict(rules.NOT_REPRODUCED, f"{shown}: the protected setting still grows past the flat margin "
                          f"{FLAT_MARGIN}", rule, d)
    else:
        verdict = Verdict(rules.INCONCLUSIVE, f"{shown}: q's interval contains 1 (inconclusive at this n); "
                          f"detectable effect {number(d)}", rule, d)
    return Point(name, q, worst, verdict)


def _unpack(interval: Interval) -> tuple[float, float, float, int]:
    return interval.estimate, interval.low, interval.high, interval.n


def decide_lc7(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """LC7, magnitude is the rule that picks the groups to keep. Frame "protection" (as LC6). For each
    other rule (not "none", not "magnitude") on the same grid (bits, group size) and protected fraction: per window, late-bin
    KL of the magnitude-protected variant / that of the other, below 1 (by at least GROWTH_EFFECT). A rule
    run with several calibration seeds (several labels) enters with its late-bin KL averaged over them."""
    _require(frame, PROTECTION_COLUMNS, claim)
    points = []
    frame = frame.assign(grid=quantization_grid(frame))
    magnitude = frame[frame["protection_rule"] == "magnitude"]
    others = frame[~frame["protection_rule"].isin(["none", "magnitude"]) & (frame["protected_fraction"] > 0)]
    for (grid, fraction, rule), rows in others.groupby(["grid", "protected_fraction", "protection_rule"], sort=False):
        mine = magnitude[(magnitude["grid"] == grid) & (magnitude["protected_fraction"] == fraction)]
        seeds = rows["label"].nunique()
        name = f"magnitude vs {rule} ({grid}, {fraction:.3g} kept" + (f", {seeds} seeds)" if seeds > 1 else ")")
        if mine.empty:
            points.append(_skipped(name, "no magnitude-protected variant at these settings", _ratio(rows)))
            continue
        a, b = mine.groupby("window")["late_bin_kl"].mean(), rows.groupby("window")["late_bin_kl"].mean()
        shared = a.index.intersection(b.index)
        interval = rules.log_ratio_interval(a[shared].to_numpy(), b[shared].to_numpy(), side="less", unit=claim.unit)
        points.append(_point(claim, name, interval, [_ratio(mine), _ratio(rows)]))
    return _decide(claim, points, frame, regime, "magnitude and another protection rule")


def decide_lc8(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """LC8, the error accumulates over the tokens attention reads. Frame "block_slopes": one row per (label,
    window) with label (the compression applied to one kind of block), global_slope and sliding_slope (log-log
    slope of per-position KL past the sliding window when only the global-attention blocks, or only the
    sliding-window blocks, are compressed), ppl_ratio (the worse of the two). Per label: global - sliding per
    window, above 0 (direction); every label."""
    _require(frame, ("label", "window", "global_slope", "sliding_slope", "ppl_ratio"), claim)
    points = []
    for label, rows in frame.groupby("label", sort=False):
        difference = rows["global_slope"].to_numpy(float) - rows["sliding_slope"].to_numpy(float)
        points.append(_point(claim, str(label), rules.mean_interval(difference, unit=claim.unit),
                             rows["ppl_ratio"].to_numpy(float)))
    return _decide(claim, points, frame, regime, "global-only and sliding-only compression")


# --------------------------------------------------------------------------- 2310.01382: LLM-KICK
TASK_COLUMNS = ("label", "task", "example", "dense_score", "score", "chance", "ppl_ratio")
KNOWLEDGE_KINDS = ("knowledge", "factual")  # task_kind: multiple-choice knowledge, free-form factual answers


def _floor(rows) -> bool:
    """Whether the dense model sits at this task's floor (rules.at_floor on its score and standard error)."""
    summary = score_summary(rows["dense_score"].to_numpy(float), float(rows["chance"].iloc[0]))
    return rules.at_floor(summary["score"], summary["se"], summary["chance"])


def _drop_points(claim: Claim, rows_by_point) -> list[Point]:
    """Per (label, task): paired drop dense_score - score over the examples (positive = a loss)."""
    points = []
    for (label, task), rows in rows_by_point:
        drop = rows["dense_score"].to_numpy(float) - rows["score"].to_numpy(float)
        interval = rules.mean_interval(drop, side=claim.side, unit=claim.unit)
        points.append(_point(claim, f"{label} / {task}", interval, rows["ppl_ratio"].to_numpy(float),
                             dense_at_floor=_floor(rows)))
    return points


def _paired_task_points(claim: Claim, frame, pairs, *, side: str) -> list[Point]:
    """Per pair (a, b) of labels and per task: per-example score(a) - score(b) on the shared examples."""
    points = []
    for a, b in pairs:
        for task, rows_a in frame[frame["label"] == a].groupby("task", sort=False):
            rows_b = frame[(frame["label"] == b) & (frame["task"] == task)]
            both = rows_a.merge(rows_b, on="example", suffixes=("_a", "_b"))
            name = f"{a} vs {b} / {task}"
            if both.empty:
                points.append(_skipped(name, "no shared examples"))
                continue
            difference = both["score_a"].to_numpy(float) - both["score_b"].to_numpy(float)
            interval = rules.mean_interval(difference, side=side, unit=claim.unit)
            dense = both.rename(columns={"dense_score_a": "dense_score", "chance_a": "chance"})
            points.append(_point(claim, name, interval, [_ratio(rows_a), _ratio(rows_b)], dense_at_floor=_floor(dense)))
    return points


def decide_ki1(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI1, knowledge is lost at trivial sparsity (25-30%). Frame "task_scores": one row per (label, task,
    example) with label, task, example, dense_score and score (the dense and the compressed model's score
    on that example, in [0, 1]), chance, ppl_ratio, plus family, sparsity, task_kind. Rows: pruning at
    sparsity 0.25-0.30 on task_kind "knowledge" or "factual", unstructured where a `pattern` column says (an N:M
    point at 25% is KI2's); per (label, task) the paired drop above TASK_EFFECT."""
    _require(frame, (*TASK_COLUMNS, "family", "sparsity", "task_kind"), claim)
    sparsity = frame["sparsity"].astype(float)
    unstructured = frame["pattern"] == "unstructured" if "pattern" in frame.columns else True
    rows = frame[(frame["family"] == "pruning") & (sparsity >= 0.25 - 1e-9) & (sparsity <= 0.30 + 1e-9)
                 & frame["task_kind"].isin(KNOWLEDGE_KINDS) & unstructured]
    return _decide(claim, _drop_points(claim, rows.groupby(["label", "task"], sort=False)), frame, regime,
                   "pruning at 25-30% on knowledge tasks")


def decide_ki2(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI2, N:M sparsity is worse than unstructured on knowledge tasks. Frame "task_scores" (as KI1) plus
    method and pattern ("unstructured" or "N:M"). For each (method, sparsity): unstructured minus N:M score
    per example, above TASK_EFFECT."""
    _require(frame, (*TASK_COLUMNS, "family", "method", "pattern", "sparsity", "task_kind"), claim)
    rows = frame[(frame["family"] == "pruning") & frame["task_kind"].isin(KNOWLEDGE_KINDS)]
    pairs = []
    for _, group in rows.groupby(["method", "sparsity"], sort=False):
        unstructured = group.loc[group["pattern"] == "unstructured", "label"].unique()
        structured = group.loc[group["pattern"].astype(str).str.contains(":"), "label"].unique()
        pairs += [(u, s) for u in unstructured for s in structured]
    return _decide(claim, _paired_task_points(claim, rows, pairs, side="greater"), frame, regime,
                   "unstructured and N:M of one method and sparsity")


def decide_ki3(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI3, 8-bit quantization loses "~8-10%" of task performance. Frame "task_scores" (as KI1) plus
    family and bits. Per (8-bit label, task): relative drop 1 - mean(score) / mean(dense_score), paired
    bootstrap over examples; equivalence to the paper's 8-10% within +-3 points (margin [0.05, 0.13]).
    reproduced: "we see a drop of that size"; not reproduced: "no drop, equivalence shown" (interval within
    +-KI3_NO_DROP) or a drop of another size; inconclusive otherwise."""
    _require(frame, (*TASK_COLUMNS, "family", "bits"), claim)
    bits = frame["bits"].astype(float)
    rows = frame[(frame["family"] == "quantization") & (bits == 8)]
    points = []
    for (label, task), group in rows.groupby(["label", "task"], sort=False):
        dense, score = group["dense_score"].to_numpy(float), group["score"].to_numpy(float)
        name = f"{label} / {task}"
        if dense.mean() <= 0:
            points.append(_skipped(name, "dense score 0: no relative drop", _ratio(group)))
            continue
        boot = paired_bootstrap(score, dense, ratio=True, unit=claim.unit)
        sd = float(np.std(dense - score, ddof=1)) if dense.size > 1 else float("nan")
        interval = Interval(1 - boot["estimate"], 1 - boot["high"], 1 - boot["low"], boot["n"],
                            "relative drop, " + boot["interval"],
                            rules.detectable_effect(sd, dense.size) / dense.mean())
        verdict = _test(claim, interval, ppl_ratio=_ratio(group), dense_at_floor=_floor(group),
                        margin_name=f"the paper's band [{claim.margin[0]:g}, {claim.margin[1]:g}]")
        if verdict.verdict == rules.REPRODUCED:
            why = "we see a drop of that size: " + verdict.why
        elif verdict.verdict == rules.NOT_REPRODUCED:
            kind = ("no drop, equivalence shown (within +-3%)" if -KI3_NO_DROP <= interval.low
                    and interval.high <= KI3_NO_DROP else "a smaller drop than the paper's"
                    if interval.high < claim.margin[0] else "a larger drop than the paper's")
            why = f"{kind}: {verdict.why}"
        else:
            why = verdict.why
        points.append(Point(name, interval, _ratio(group), Verdict(verdict.verdict, why, verdict.rule,
                                                                   verdict.detectable_effect)))
    return _decide(claim, points, frame, regime, "8-bit quantization")


def decide_ki4(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI4, quantization beats pruning at equal storage. Frame "task_scores" (as KI1) plus family and
    storage_bits (bits per weight, helpers.compression.storage). Nominal (the paper's pairing): each
    quantized label against every pruned label within STORAGE_MATCH of its storage (several pruned variants
    share one storage: unstructured and N:M at 50%, each method; a collapsed one is left out by the working
    rule, not by the pairing). Damage-matched: each quantized label against every pruned label within
    PERPLEXITY_MATCH of its perplexity ratio (equal damage rather than equal size). Per pair and task the
    per-example score difference quantized - pruned above TASK_EFFECT."""
    _require(frame, (*TASK_COLUMNS, "family", "storage_bits"), claim)
    column, factor, what = (("storage_bits", STORAGE_MATCH, "storage") if regime == "nominal"
                            else ("ppl_ratio", PERPLEXITY_MATCH, "perplexity ratio"))
    measure = {f: frame[frame["family"] == f].groupby("label")[column].median().to_dict()
               for f in ("quantization", "pruning")}
    pairs, skipped = [], []
    for label, value in measure["quantization"].items():
        if not measure["pruning"]:
            skipped.append(_skipped(str(label), "no pruned variant"))
            continue
        if not value > 0:  # nan or missing
            skipped.append(_skipped(str(label), f"no {what}"))
            continue
        matched = [p for p, v in measure["pruning"].items() if rules.within_factor(v, value, factor)]
        pairs += [(label, p) for p in matched]
        if not matched:
            other = rules.nearest_setting(measure["pruning"], value, factor)[0]
            skipped.append(_skipped(f"{label} vs {other}", f"{what} differs by more than {factor}x "
                                    f"({value:.3g} vs {measure['pruning'][other]:.3g})"))
    return _decide(claim, _paired_task_points(claim, frame, pairs, side="greater") + skipped, frame, regime,
                   f"quantized and pruned variants at equal {what}")


def decide_ki5(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI5, in-context retrieval and summarization survive 50% sparsity. Frame "task_scores" (as KI1)
    plus family, method, pattern, sparsity, task_kind ("retrieval", "summarization"). Nominal: unstructured
    pruning at 50%; damage-matched: per method the unstructured setting whose perplexity ratio is nearest
    the published 50% ratio of `claim.damage_reference` (within rules.DAMAGE_TOLERANCE). Per (label,
    task): mean(score) / mean(dense_score), paired bootstrap over examples, at least 0.9 (margin [0.9, inf))."""
    _require(frame, (*TASK_COLUMNS, "family", "method", "pattern", "sparsity", "task_kind"), claim)
    rows = frame[(frame["family"] == "pruning") & (frame["pattern"] == "unstructured")
                 & frame["task_kind"].isin(["retrieval", "summarization"])]
    rows, skipped = _at_fifty_percent(claim, rows, regime)
    points = []
    for (label, task), group in rows.groupby(["label", "task"], sort=False):
        dense, score = group["dense_score"].to_numpy(float), group["score"].to_numpy(float)
        if dense.mean() <= 0:
            points.append(_skipped(f"{label} / {task}", "dense score 0", _ratio(group)))
            continue
        boot = paired_bootstrap(score, dense, ratio=True, unit=claim.unit)
        sd = float(np.std(score - dense, ddof=1)) if dense.size > 1 else float("nan")
        interval = Interval(boot["estimate"], boot["low"], boot["high"], boot["n"], "score ratio, " + boot["interval"],
                            rules.detectable_effect(sd, dense.size) / dense.mean())
        points.append(_point(claim, f"{label} / {task}", interval, _ratio(group), dense_at_floor=_floor(group)))
    return _decide(claim, points + skipped, frame, regime, f"{regime} 50% pruning on retrieval / summarization")


def decide_ki6(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI6, SparseGPT needs calibration samples, Wanda much less. Frame "calibration": label, method
    ("sparsegpt", "wanda"), calibration_samples, seed, window, nll (mean token NLL of the window, nats),
    ppl_ratio, optionally kl (mean token KL(dense || point) of the window, nats) and sparsity (one point per
    sparsity); optionally task rows (`kick.calibration_frame`: task, example, task_loss = dense score - score,
    dense_score, chance; window nan). Per measure (NLL, KL where every window row has it, each task's loss), per
    method, per window or question (mean over seeds): the measure with the fewest samples - with the most;
    SparseGPT's loss minus Wanda's, above 0 (direction), for every measure ("all"); KL is a measure at a
    sparsity where every window row there has it; a task whose dense score sits at its floor is untestable. The
    perplexity gate reads the best-calibrated points."""
    _require(frame, ("label", "method", "calibration_samples", "seed", "window", "nll", "ppl_ratio"), claim)
    rows = frame.reindex(columns=[*frame.columns, *{"sparsity", "task"} - set(frame.columns)])  # older frames lack them
    windows, tasks = rows[rows["task"].isna()], rows[rows["task"].notna()]
    at = lambda sparsity: "" if math.isnan(sparsity) else f" at {sparsity:g}"  # noqa: E731
    points = []
    for sparsity, group in windows.groupby("sparsity", sort=False, dropna=False):
        for measure in ["nll"] + (["kl"] if "kl" in group.columns and group["kl"].notna().all() else []):
            name = f"sparsegpt vs wanda, {measure.upper()}{at(sparsity)}"
            points.append(_calibration_point(claim, group, measure, name))
    if len(tasks):
        _require(frame, ("example", "task_loss", "dense_score", "chance"), claim)
    for (sparsity, task), group in tasks.groupby(["sparsity", "task"], sort=False, dropna=False):
        name = f"sparsegpt vs wanda, {task} loss{at(sparsity)}"
        points.append(_skipped(name, "dense score at the task's floor", _ratio(group))
                      if _floor(group.drop_duplicates("example"))
                      else _calibration_point(claim, group, "task_loss", name, unit="questions", by="example"))
    return _decide(claim, points, frame, regime)


def _calibration_point(claim: Claim, group, measure: str, name: str, *, unit: str | None = None,
                       by: str = "window") -> Point:
    """KI6's point for one sparsity and measure: per window (or per `by`: a task's questions; mean over seeds),
    the measure with the fewest calibration samples minus with the most, SparseGPT's minus Wanda's."""
    losses, ratios = {}, []
    for method in ("sparsegpt", "wanda"):
        rows = group[group["method"] == method]
        if rows["calibration_samples"].nunique() < 2:
            return _skipped(name, "needs sparsegpt and wanda at two or more calibration sizes")
        few, many = rows["calibration_samples"].min(), rows["calibration_samples"].max()
        mean = rows.groupby(["calibration_samples", by])[measure].mean()
        losses[method] = mean[few] - mean[many]
        ratios.append(_ratio(rows[rows["calibration_samples"] == many]))
    shared = losses["sparsegpt"].index.intersection(losses["wanda"].index)
    difference = losses["sparsegpt"][shared].to_numpy() - losses["wanda"][shared].to_numpy()
    return _point(claim, name, rules.mean_interval(difference, unit=unit or claim.unit), ratios)


def decide_ki7(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI7, perplexity hides task damage: two points of different methods (the `method` column, when present)
    at matched perplexity (ratios within PERPLEXITY_MATCH) differ in task damage. Frame "task_scores" (as
    KI1). Per such pair and task: per-example score
    difference, two-sided; reproduced when Holm's correction finds at least one pair that differs; not
    reproduced when every pair lies within +-TASK_EFFECT (a design able to see TASK_EFFECT)."""
    _require(frame, TASK_COLUMNS, claim)
    ratios = frame.groupby("label", sort=False)["ppl_ratio"].median()
    method = (frame.groupby("label", sort=False)["method"].first() if "method" in frame.columns
              else {label: label for label in ratios.index})
    labels = list(ratios.index)
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]
             if rules.within_factor(ratios[a], ratios[b], PERPLEXITY_MATCH) and method[a] != method[b]]
    return _decide(claim, _paired_task_points(claim, frame, pairs, side="two-sided"), frame, "damage-matched",
                   "two variants within 1.1x perplexity")


def decide_ki8(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """KI8, compressed models lose factual free-form answers. Frame "task_scores" (as KI1) plus task_kind
    ("factual": free-form factual QA). Per (label, task): the paired drop above TASK_EFFECT; a majority."""
    _require(frame, (*TASK_COLUMNS, "task_kind"), claim)
    rows = frame[frame["task_kind"] == "factual"]
    return _decide(claim, _drop_points(claim, rows.groupby(["label", "task"], sort=False)), frame, regime,
                   "factual free-form tasks")


# --------------------------------------------------------------------------- 2409.20094: Hessian schedule
SCHEDULE_COLUMNS = ("label", "method", "schedule", "sparsity", "bits", "window", "nll", "ppl_ratio")


def _schedule_points(claim: Claim, frame, comparator: str) -> list[Point]:
    """Per (method, sparsity, bits): NLL(comparator) - NLL(hessian) per window, nats (positive: Hessian wins);
    with a `seed` column, paired by seed and window with a crossed bootstrap over seeds x windows."""
    points = []
    frame = frame.assign(seed=frame["seed"] if "seed" in frame.columns else 0)
    for (method, sparsity, bits), group in frame.groupby(["method", "sparsity", "bits"], sort=False, dropna=False):
        name = f"hessian vs {comparator}, {method} {sparsity:g}" + (f" + {bits:g}-bit" if _quantized([bits])[0] else "")
        hessian, other = group[group["schedule"] == "hessian"], group[group["schedule"] == comparator]
        if hessian.empty or other.empty:
            points.append(_skipped(name, f"needs both a hessian and a {comparator} schedule", _ratio(group)))
            continue
        a = other.pivot_table(index="seed", columns="window", values="nll")
        b = hessian.pivot_table(index="seed", columns="window", values="nll")
        seeds, windows = a.index.intersection(b.index), a.columns.intersection(b.columns)
        interval = rules.crossed_interval(a.loc[seeds, windows].to_numpy(), b.loc[seeds, windows].to_numpy(),
                                          unit=claim.unit)
        points.append(_seed_capped(_point(claim, name, interval, [_ratio(hessian), _ratio(other)]), len(seeds)))
    return points


MIN_SEEDS = 3  # a schedule comparison on fewer calibration seeds is at most "partly" (or "inconclusive")


def _seed_capped(point: Point, seeds: int) -> Point:
    """A schedule point's verdict on fewer than MIN_SEEDS calibration seeds: the calibration draw is a random
    factor a comparison must vary, so "reproduced" becomes "partly" and "not reproduced" "inconclusive"."""
    v = point.verdict
    capped = {rules.REPRODUCED: rules.PARTLY, rules.NOT_REPRODUCED: rules.INCONCLUSIVE}.get(v.verdict)
    if seeds >= MIN_SEEDS or capped is None:
        return point
    why = f"only {seeds} calibration seed{'s' if seeds != 1 else ''} (< {MIN_SEEDS}), so at most {capped}: {v.why}"
    return Point(point.name, point.interval, point.ppl_ratio, Verdict(capped, why, v.rule, v.detectable_effect))


def _schedule_rows(frame, regime: str):
    """Nominal: the paper's >= 70%; damage-matched: the sparsities below 70% chosen so that uniform SparseGPT
    costs what 50-70% costs a large model (1.3x-4.6x dense perplexity, LLaMA-7B's 70% at the top), each point
    still gated by the working rule."""
    sparsity = frame["sparsity"].astype(float)
    return frame[sparsity >= 0.7 - 1e-9] if regime == "nominal" else frame[sparsity < 0.7 - 1e-9]


def decide_hs1(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """HS1, the Hessian schedule beats uniform at >= 70% sparsity with < 8-bit quantization. Frame
    "schedule": label, method, schedule ("hessian", "uniform", "owl"), sparsity, bits (nan: none), window,
    nll (mean token NLL of the window, nats), ppl_ratio, optionally seed (calibration seeds, paired). Per
    setting: uniform - hessian NLL per window (crossed bootstrap over seeds x windows): reproduced above 0, not
    reproduced below 0 or wholly short of SCHEDULE_EFFECT (5% perplexity) where the design could detect it; on
    fewer than MIN_SEEDS seeds at most "partly" (`_seed_capped`); every setting. Regimes: `_schedule_rows`."""
    _require(frame, SCHEDULE_COLUMNS, claim)
    rows = _schedule_rows(frame, regime)
    bits = rows["bits"].astype(float)
    rows = rows[_quantized(bits) & (bits < 8)]
    return _decide(claim, _schedule_points(claim, rows, "uniform"), frame, regime, f"{regime} sparsity with < 8-bit")


def decide_hs2(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """HS2, the Hessian schedule beats uniform at >= 70% without quantization. Frame "schedule" (as HS1)."""
    _require(frame, SCHEDULE_COLUMNS, claim)
    rows = _schedule_rows(frame, regime)
    rows = rows[~_quantized(rows["bits"])]
    return _decide(claim, _schedule_points(claim, rows, "uniform"), frame, regime, f"{regime} sparsity, 16-bit")


def decide_hs3(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """HS3, the Hessian schedule beats OWL at >= 70%. Frame "schedule" (as HS1): owl - hessian NLL."""
    _require(frame, SCHEDULE_COLUMNS, claim)
    rows = _schedule_rows(frame, regime)
    return _decide(claim, _schedule_points(claim, rows, "owl"), frame, regime, f"{regime} sparsity, hessian and owl")


def decide_hs4(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """HS4, the inverse-Hessian estimate ranks layers by their real pruning error. Frame "layer_errors":
    label (one compression run), layer, estimated_error (the schedule's estimate), measured_error (the
    layer's real pruning error), optionally ppl_ratio. Per run: Spearman correlation over layers above 0."""
    _require(frame, ("label", "layer", "estimated_error", "measured_error"), claim)
    points = [_point(claim, str(label), rules.spearman_interval(rows["estimated_error"], rows["measured_error"],
                                                                 unit=claim.unit), _ratio(rows))
              for label, rows in frame.groupby("label", sort=False)]
    return _decide(claim, points, frame, regime)


def decide_hs5(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """HS5, the scheduling overhead (observe-only pass included) is small. Frame "overhead": label, run,
    schedule_seconds (estimating and scheduling, the observe-only pass included), pruning_seconds (one
    pruning pass), optionally schedule (then only the "hessian" runs, the claim's subject: another schedule's
    cost, e.g. OWL's, is context, not the claim). Per label: mean over runs of their ratio below 0.5 (margin
    (-inf, 0.5))."""
    _require(frame, ("label", "run", "schedule_seconds", "pruning_seconds"), claim)
    if "schedule" in frame.columns:
        frame = frame[frame["schedule"] == "hessian"]
    points = []
    for label, rows in frame.groupby("label", sort=False):
        ratio = rows["schedule_seconds"].to_numpy(float) / rows["pruning_seconds"].to_numpy(float)
        points.append(_point(claim, str(label), rules.mean_interval(ratio, unit=claim.unit), None))
    return _decide(claim, points, frame, regime)


def decide_hs6(frame, claim: Claim, regime: str = "nominal") -> ClaimVerdict:
    """HS6, pruning from the dense model's Hessians costs little. Frame "dense_statistics": label, method,
    sparsity, statistics ("dense": every Hessian from the dense model; "sequential": from the already
    pruned blocks), window, kl (mean KL to dense of the window, nats/token), ppl_ratio. Per (method,
    sparsity): KL(dense statistics) / KL(sequential) per window, geometric mean at most 1.1 (margin (0, 1.1))."""
    _require(frame, ("label", "method", "sparsity", "statistics", "window", "kl", "ppl_ratio"), claim)
    points = []
    for (method, sparsity), group in frame.groupby(["method", "sparsity"], sort=False):
        dense, sequential = group[group["statistics"] == "dense"], group[group["statistics"] == "sequential"]
        name = f"{method} {sparsity:g}: dense / sequential statistics"
        if dense.empty or sequential.empty:
            points.append(_skipped(name, "needs both statistics", _ratio(group)))
            continue
        a, b = _windows(dense, "kl"), _windows(sequential, "kl")
        shared = a.index.intersection(b.index)
        interval = rules.log_ratio_interval(a[shared].to_numpy(), b[shared].to_numpy(), unit=claim.unit)
        points.append(_point(claim, name, interval, [_ratio(dense), _ratio(sequential)]))
    return _decide(claim, points, frame, regime)


# --------------------------------------------------------------------------- the registry
def _claims() -> dict[str, Claim]:
    lc, ki, hs = "2406.06773", "2310.01382", "2409.20094"
    growth = dict(unit="windows", min_n=rules.MIN_UNITS, null=1.0, frame="context_growth")
    task = dict(unit="questions", min_n=20, frame="task_scores")
    dense, kl = "dense (reference distributions)", "KL on disjoint early / late position bins per window"
    schedule = dict(unit="windows", min_n=rules.MIN_UNITS, claimed_effect=SCHEDULE_EFFECT, frame="schedule",
                    damage_reference="LLaMA-7B (2048)")
    items = [
        Claim("LC1", lc, "compression error grows with context length", "LLaMA-2-7B-32K, KL to dense at 4K-32K",
              "superiority", None, claimed_effect=GROWTH_EFFECT, aggregation="holm-any",
              variants_needed=(dense, "several compressed variants", kl), **growth),
        Claim("LC2", lc, "pruning (magnitude, Wanda) stays flat with length", "50% magnitude / Wanda, 4K-32K",
              "equivalence", FLAT_MARGIN, claimed_effect=None, damage_reference="LLaMA-2-7B (4096)",
              variants_needed=(dense, "pruned at 50% and at the damage-matched sparsity", kl), **growth),
        Claim("LC3", lc, "<=4-bit weight quantization grows with length, more than pruning at matched damage",
              "<=4-bit weight quantization vs pruning, 4K-32K", "superiority", None, claimed_effect=GROWTH_EFFECT,
              variants_needed=(dense, "<=4-bit quantized", "pruned at a matching perplexity ratio", kl), **growth),
        Claim("LC4", lc, "randomly pruning 10% of weights grows almost linearly", "random 10%, 4K-32K",
              "equivalence", LINEAR_MARGIN, claimed_effect=None, damage_reference=WORKING_STAND_IN,
              variants_needed=(dense, "random 10% pruning", kl + " with bin positions"), **growth),
        Claim("LC5", lc, "error accumulates through attention: variance linear in position",
              "theory: noise summed over earlier tokens", "equivalence", LINEAR_MARGIN, unit="units (windows or "
              "trials)", min_n=rules.MIN_UNITS, variants_needed=("log-log slope of error variance per unit",),
              claimed_effect=None, null=1.0, frame="attention_noise"),
        Claim("LC6", lc, "keeping ~2% of weight groups at 8 bits removes the growth",
              "~2% largest-magnitude groups at 8 bits, rest at 3-4 bits", "equivalence", FLAT_MARGIN,
              unit="windows", min_n=rules.MIN_UNITS, claimed_effect=None, null=1.0, frame="protection",
              variants_needed=("unprotected 3-4-bit baseline", "magnitude-protected 1-5%", kl)),
        Claim("LC7", lc, "largest magnitude is the rule that picks the groups to keep", "~2% groups at 8 bits",
              "superiority", None, unit="windows", min_n=rules.MIN_UNITS, claimed_effect=GROWTH_EFFECT, null=1.0,
              side="less", frame="protection",
              variants_needed=("magnitude-protected", "another rule (random) at the same fraction and bits",
                               "late-bin KL per window")),
        Claim("LC8", lc, "the error accumulates over the tokens attention reads: compressing only the global blocks "
              "grows past the sliding window more than compressing only the sliding-window blocks",
              "ours: the paper's mechanism tested on Gemma-3 (global vs 512-token sliding-window blocks)", "direction",
              None, unit="windows", min_n=rules.MIN_UNITS, claimed_effect=None, frame="block_slopes",
              variants_needed=("one compression on the global blocks only and on the sliding-window blocks only",
                               "per-position KL past the window, per window")),
        Claim("KI1", ki, "knowledge is lost at trivial sparsity (25-30%)", "Vicuna-7B, 25-30% sparsity",
              "superiority", None, claimed_effect=TASK_EFFECT, aggregation="majority",
              variants_needed=("dense", "pruned at 25-30%", "knowledge tasks per example"), **task),
        Claim("KI2", ki, "N:M sparsity hurts knowledge tasks more than unstructured", "Vicuna-7B, 2:4 / 4:8 vs "
              "unstructured at 50%", "superiority", None, claimed_effect=TASK_EFFECT,
              variants_needed=("unstructured and N:M of one method and sparsity",), **task),
        Claim("KI3", ki, "~8-10% drop in performance for non-aggressive 8-bit quantization",
              "GPTQ 8-bit g128, Vicuna-7B", "equivalence", (0.05, 0.13), claimed_effect=0.09,
              aggregation="majority", variants_needed=("dense", "8-bit quantized"), **task),
        Claim("KI4", ki, "quantization beats pruning at equal storage", "GPTQ vs pruning at equal model size",
              "superiority", None, claimed_effect=TASK_EFFECT, damage_reference=EQUAL_PERPLEXITY,
              variants_needed=("quantized and pruned variants of matching bits per weight (or perplexity)",),
              **task),
        Claim("KI5", ki, "in-context retrieval and summarization survive 50% sparsity",
              "Vicuna-7B, 50% unstructured", "equivalence", (0.9, float("inf")), claimed_effect=None,
              damage_reference="LLaMA-2-7B (4096)",
              variants_needed=("dense", "50% unstructured pruning (and the damage-matched setting)",
                               "retrieval / summarization tasks"), **task),
        Claim("KI6", ki, "SparseGPT needs calibration samples, Wanda much less", "calibration-size ablation",
              "direction", None, unit="windows", min_n=rules.MIN_UNITS, claimed_effect=None, frame="calibration",
              variants_needed=("sparsegpt and wanda at >= 2 calibration sizes", "per-window NLL",
                               "optionally a task above its floor at those points")),
        Claim("KI7", ki, "perplexity hides task damage", "points of matched perplexity", "superiority", None,
              claimed_effect=TASK_EFFECT, side="two-sided", aggregation="holm-any",
              variants_needed=("two variants within 1.1x perplexity", "task scores per example"), **task),
        Claim("KI8", ki, "compressed models lose factual free-form answers", "FreebaseQA / TriviaQA closed book",
              "superiority", None, claimed_effect=TASK_EFFECT, aggregation="majority",
              variants_needed=("dense", "compressed variants", "factual free-form tasks"), **task),
        Claim("HS1", hs, "the Hessian schedule beats uniform at >= 70% sparsity with < 8-bit quantization",
              "OPT-66B / BLOOM-176B, >= 70% + INT4", "superiority", None,
              variants_needed=("uniform and hessian schedules at >= 70% with < 8 bits",), **schedule),
        Claim("HS2", hs, "the Hessian schedule beats uniform at >= 70% without quantization",
              "OPT-66B / BLOOM-176B, >= 70%", "superiority", None,
              variants_needed=("uniform and hessian schedules at >= 70%",), **schedule),
        Claim("HS3", hs, "the Hessian schedule beats OWL", ">= 70% sparsity", "superiority", None,
              variants_needed=("owl and hessian schedules at >= 70%",), **schedule),
        Claim("HS4", hs, "the inverse-Hessian estimate ranks layers by their real pruning error",
              "per-layer OBS estimate vs measured error", "direction", None, unit="layers", min_n=rules.MIN_UNITS,
              claimed_effect=None, frame="layer_errors",
              variants_needed=("estimated and measured error per layer",)),
        Claim("HS5", hs, "the scheduling overhead is small (observe-only pass included)", "one pruning pass as unit",
              "equivalence", (float("-inf"), 0.5), unit="runs", min_n=rules.MIN_UNITS, claimed_effect=None,
              frame="overhead", variants_needed=("timed scheduling and pruning runs",)),
        Claim("HS6", hs, "pruning from the dense model's Hessians costs little", "precomputed inverse Hessians",
              "equivalence", (0.0, 1.1), unit="windows", min_n=rules.MIN_UNITS, claimed_effect=None, null=1.0,
              frame="dense_statistics", variants_needed=("dense-statistics and sequential pruning", "KL per window")),
    ]
    return {claim.id: claim for claim in items}


CLAIMS: dict[str, Claim] = _claims()

DECIDERS: dict[str, Callable[..., ClaimVerdict]] = {
    "LC1": decide_lc1, "LC2": decide_lc2, "LC3": decide_lc3, "LC4": decide_lc4, "LC5": decide_lc5,
    "LC6": decide_lc6, "LC7": decide_lc7, "LC8": decide_lc8,
    "KI1": decide_ki1, "KI2": decide_ki2, "KI3": decide_ki3, "KI4": decide_ki4, "KI5": decide_ki5,
    "KI6": decide_ki6, "KI7": decide_ki7, "KI8": decide_ki8,
    "HS1": decide_hs1, "HS2": decide_hs2, "HS3": decide_hs3, "HS4": decide_hs4, "HS5": decide_hs5,
    "HS6": decide_hs6,
}


def regimes(claim: Claim) -> tuple[str, ...]:
    """The regimes a claim is reported in: nominal, and damage-matched where a published ratio exists."""
    return REGIMES if claim.damage_reference is not None else ("nominal",)


def decide(claim: Claim | str, frame, regime: str = "nominal") -> ClaimVerdict:
    """The verdict on one claim (or its id) from its tidy frame (see the claim's decider for the columns)."""
    claim = CLAIMS[claim] if isinstance(claim, str) else claim
    if regime not in REGIMES:
        raise ValueError(f"regime={regime!r}; expected one of {REGIMES}.")
    return DECIDERS[claim.id](frame, claim, regime)
