"""A Hessian-based layer-wise sparsity schedule (arXiv 2409.20094), as experiments: the variants, the one
measurement, the damage ladder, and the claims board's frames.

    variants = [schedule_variant("hessian", 0.45, seed, calibration) for seed in (0, 1, 2)]
    runner.run(variants, [window_measurement(reference)])
    frame = latest_frame(table, model=..., protocol=...)
    frames = board_frames(frame)          # schedule, layer_errors, overhead, dense_statistics (HS1-HS6)

Every variant is SparseGPT with per-layer sparsities from `compression.schedules.scheduled_compress` (the one
dispatch of uniform / OWL / Hessian schedules), through the standard sequential pass or, with
inputs="dense", from the dense model's stored Hessians; the schedule's observe-only pass is part of what
it costs. The damage ladder (`matched_sparsities`) finds the mean sparsities at which uniform SparseGPT
costs a given perplexity ratio on this model: a 135M model breaks far sooner than the paper's 66B ones.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..compression.schedules import SCHEDULES, KindProbe, layer_kind, scheduler_overrides
from ..data import CalibrationSettings
from ..evaluation.metrics import DenseReference, evaluate
from .core import Measurement, Point, Variant, parse_variant, variant_table

COMPARED = ("uniform", "owl", "hessian")  # the schedules the claims compare ("kind" probes one layer kind)
SPEC_NAMES = {"levels": "schedule_levels", "clustering": "schedule_clustering", "spread": "schedule_spread",
              "probe_sparsity": "schedule_probe_sparsity", "normalize_by_size": "schedule_normalize_by_size"}


def schedule_variant(schedule: str, sparsity: float, seed: int, calibration: CalibrationSettings, *,
                     bits: int | None = None, inputs: str = "compressed", ablation: str | None = None,
                     kind: str | None = None, extra: float = KindProbe.extra, spec: Mapping | None = None) -> Variant:
    """SparseGPT at mean `sparsity` spread over the layers by `schedule`, calibrated on `calibration` drawn
    with `seed`; `bits`: joint quantization (per channel); `inputs="dense"`: every layer from the dense
    Hessians; `ablation`: a label of `compression.schedules.scheduler_overrides` ("decades", "per weight",
    "levels 2", ...) varying the Hessian scheduler's free choices; `kind` (schedule "kind" only): the layer kind
    pruned `extra` more than `sparsity`, the rest at `sparsity`; `spec`: further spec keys (e.g. OWL's).
    The label names every one of these, so seeds and ablations never collide."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}.")
    overrides = {SPEC_NAMES[k]: v for k, v in scheduler_overrides(ablation).items()} if ablation else {}
    if overrides and schedule != "hessian":
        raise ValueError(f"ablation={ablation!r} varies the Hessian scheduler; schedule={schedule!r} has none.")
    if (schedule == "kind") != (kind is not None):
        raise ValueError(f"schedule={schedule!r} with kind={kind!r}: a layer kind goes with the 'kind' schedule only.")
    probe = {"schedule_kind": kind, "schedule_kind_extra": extra} if kind else {}
    label = (f"{schedule} s={sparsity:.2f}" + (f" +{extra:.2f} {kind}" if kind else "") + (f" {bits}-bit" if bits else "")
             + (" dense-H" if inputs == "dense" else "") + (f" [{ablation}]" if ablation else "") + f" seed={seed}")
    full = {"method": "sparsegpt", "sparsity": sparsity, "schedule": schedule, "label": label, "family": schedule,
            **({"bits": bits} if bits else {}), **({"schedule_inputs": inputs} if inputs != "compressed" else {}),
            **overrides, **probe, **(spec or {})}
    variant = parse_variant(full, replace(calibration, seed=seed))
    variant.settings.update(seed=seed, ablation=ablation or "none")
    return variant


def window_measurement(reference: DenseReference) -> Measurement:
    """Per window the mean token NLL and KL to dense (the units of every interval), perplexity and mean KL,
    the schedule's and the pruning pass's seconds, and per layer SparseGPT's error with its scheduled
    sparsity and what the schedule read (its error estimate, level)."""
    def measure(point: Point) -> list[dict]:
        result = evaluate(point.model, reference.windows, reference, progress=False)
        nll, kl = result.nll.double().mean(1), result.kl.double().mean(1)
        rows = [{"metric": "perplexity", "value": result.perplexity}, {"metric": "mean_kl", "value": result.mean_kl()}]
        rows += [{"metric": metric, "value": float(values[w]), "window": w}
                 for w in range(len(nll)) for metric, values in (("window_nll", nll), ("window_kl", kl))]
        report = point.report
        if report is not None:
            rows.append({"metric": "seconds_schedule", "value": report.timings.get("seconds_schedule", 0.0)})
            if "seconds_observe" in report.timings:
                rows.append({"metric": "seconds_observe", "value": report.timings["seconds_observe"]})
            rows.append({"metric": "seconds_pruning", "value": report.seconds})
            for name, info in report.layers.items():
                if "obs_error" in info:
                    read = report.schedule.get(name, {})
                    rows.append({"metric": "layer_error", "value": info["obs_error"], "layer": name,
                                 "layer_sparsity": read.get("sparsity", info.get("target_sparsity")),
                                 "estimate": read.get("error"), "level": read.get("level")})
        return rows

    return Measurement("wikitext2", measure, dataset="wikitext2", prepare=reference.prepare)


POINT_SETTINGS = {"schedule": ("settings.schedule.name",), "sparsity": ("settings.recipe.sparsity",),
                  "bits": ("settings.bits",), "seed": ("settings.seed",), "inputs": ("settings.schedule.inputs",),
                  "ablation": ("settings.ablation",), "kind": ("settings.schedule.probe.kind",),
                  "extra": ("settings.schedule.probe.extra",)}


def points_table(frame):
    """One row per variant (`core.variant_table`): schedule ("dense" for the dense row), sparsity (target mean),
    bits (nan: 16-bit), seed, inputs, ablation, with perplexity, ppl_ratio, working and bits_per_weight."""
    out = variant_table(frame, POINT_SETTINGS)
    out["schedule"] = out.schedule.fillna("none")
    out["inputs"], out["ablation"] = out.inputs.fillna("compressed"), out.ablation.fillna("none")
    out["sparsity"] = out.sparsity.fillna(0.0)
    out.loc["dense", ["schedule", "inputs", "ablation"]] = ["dense", "compressed", "none"]
    return out.astype({"sparsity": float, "bits": float})


def ladder_rungs(points, sparsities: Sequence[float], seed: int):
    """The damage ladder's rungs: uniform SparseGPT's perplexity ratio (16-bit, sequential, no ablation) at each
    of the ladder's `sparsities`, from the ladder's calibration `seed` only (index: sparsity, sorted). The main
    run's uniform points (other sparsities, other seeds) never enter, so the matched sparsities read off the
    rungs do not move when the run adds points. A missing rung raises: measure the ladder first."""
    uniform = points[(points.schedule == "uniform") & points.bits.isna() & (points.inputs == "compressed")
                     & (points.ablation == "none") & (points.seed == seed)]
    rungs = uniform[uniform.sparsity.isin([float(s) for s in sparsities])].set_index("sparsity").ppl_ratio
    missing = sorted(set(float(s) for s in sparsities) - set(rungs.index))
    if missing:
        raise ValueError(f"the damage ladder has no uniform 16-bit point at sparsity {missing} for seed {seed}; "
                         "run the ladder's cell first.")
    return rungs.sort_index()


def matched_sparsities(ladder, targets: Sequence[float]) -> dict[float, float]:
    """For each target perplexity ratio, the mean sparsity at which uniform SparseGPT reaches it on the damage
    ladder (`ladder_rungs`), by linear interpolation of log ratio in sparsity between the rungs, rounded to
    0.01. A target outside the ladder raises: measure a wider ladder."""
    if len(ladder) < 2:
        raise ValueError(f"the damage ladder has {len(ladder)} uniform 16-bit point(s); measure at least two sparsities.")
    logs = np.log(ladder.to_numpy())
    if np.any(np.diff(logs) <= 0):
        raise ValueError(f"uniform perplexity ratios {ladder.round(3).to_dict()} do not rise with sparsity; the ladder "
                         "cannot be read (more calibration, or a different range).")
    out = {}
    for target in targets:
        if not logs[0] <= math.log(target) <= logs[-1]:
            raise ValueError(f"target ratio {target} lies outside the ladder {ladder.round(3).to_dict()} (sparsity: ratio); "
                             "add rungs that bracket it.")
        out[float(target)] = round(float(np.interp(math.log(target), logs, ladder.index.to_numpy(float))), 2)
    return out


# --------------------------------------------------------------------------- the claims board's frames
def _per_window(frame, points, metric: str):
    rows = frame[frame.metric == metric][["label", "window", "value"]].astype({"window": int})
    return rows.join(points, on="label")


def schedule_frame(frame, points):
    """The "schedule" frame (HS1-HS3): one row per (variant, window) of the sequential, non-ablated variants:
    label, method, schedule, sparsity, bits, seed, window, nll, kl, ppl_ratio."""
    nll = _per_window(frame, points, "window_nll").rename(columns={"value": "nll"})
    kl = _per_window(frame, points, "window_kl")[["label", "window", "value"]].rename(columns={"value": "kl"})
    out = nll.merge(kl, on=["label", "window"])
    keep = (out.schedule.isin(COMPARED)) & (out.inputs == "compressed") & (out.ablation == "none")
    return out[keep][["label", "method", "schedule", "sparsity", "bits", "seed", "window", "nll", "kl",
                      "ppl_ratio"]].reset_index(drop=True)


def layer_error_frame(frame, points, *, schedule: str = "uniform"):
    """The "layer_errors" frame (HS4): per variant of `schedule` whose plan carries an error estimate at the
    pruned sparsity (uniform from dense Hessians) and per layer: estimated_error, measured_error (SparseGPT's),
    kind (q_proj, ...), ppl_ratio."""
    rows = frame[frame.metric == "layer_error"]
    if "estimate" not in rows.columns:
        return rows.iloc[:0]
    rows = rows[rows.estimate.notna()].join(points[["schedule", "ppl_ratio"]], on="label")
    rows = rows[rows.schedule == schedule]
    return rows.assign(estimated_error=rows.estimate.astype(float), measured_error=rows.value.astype(float),
                       kind=rows.layer.map(layer_kind))[
        ["label", "layer", "kind", "estimated_error", "measured_error", "ppl_ratio"]].reset_index(drop=True)


def overhead_frame(frame, points):
    """The "overhead" frame (HS5): per scheduled (OWL, Hessian) sequential variant: label and schedule (the
    schedule), run (the variant), schedule_seconds (the observe-only pass and the schedule), pruning_seconds (its
    pruning pass), observe_seconds (the observe-only pass alone; nan for runs recorded before it was kept)."""
    seconds = frame[frame.metric.isin(["seconds_schedule", "seconds_pruning", "seconds_observe"])].pivot_table(
        index="label", columns="metric", values="value")
    if "seconds_observe" not in seconds.columns:
        seconds["seconds_observe"] = float("nan")
    chosen = points[points.schedule.isin(["owl", "hessian"]) & (points.inputs == "compressed")]
    seconds = seconds.join(chosen[["schedule"]], how="inner")
    return seconds.reset_index().rename(columns={"label": "run", "schedule": "label", "seconds_schedule":
                                                 "schedule_seconds", "seconds_pruning": "pruning_seconds",
                                                 "seconds_observe": "observe_seconds"})[
        ["label", "run", "schedule_seconds", "pruning_seconds", "observe_seconds"]].assign(schedule=lambda f: f.label)


def overhead_summary(overhead):
    """What scheduling costs a user, per schedule (median over its runs): the seconds of the observe-only pass
    and schedule, of the pruning pass, their ratio (`share`, what HS5 judges), and the ratio without the
    observe-only pass (`share_without_observe`, nan where that pass was not timed on its own)."""
    shares = overhead.assign(share=overhead.schedule_seconds / overhead.pruning_seconds,
                             share_without_observe=(overhead.schedule_seconds - overhead.observe_seconds)
                             / overhead.pruning_seconds)
    return shares.groupby("label")[["schedule_seconds", "observe_seconds", "pruning_seconds", "share",
                                    "share_without_observe"]].median()


def dense_statistics_frame(frame, points):
    """The "dense_statistics" frame (HS6): uniform 16-bit variants pruned from the dense model's Hessians and
    their sequential counterparts (same sparsity and seed): label, method, sparsity, seed, statistics, window,
    kl, ppl_ratio."""
    kl = _per_window(frame, points, "window_kl").rename(columns={"value": "kl"})
    kl = kl[(kl.schedule == "uniform") & kl.bits.isna() & (kl.ablation == "none")]
    dense = kl[kl.inputs == "dense"]
    sequential = kl[(kl.inputs == "compressed") & kl.set_index(["sparsity", "seed"]).index.isin(
        dense.set_index(["sparsity", "seed"]).index)]
    out = kl.loc[dense.index.union(sequential.index)]
    return out.assign(statistics=np.where(out.inputs == "dense", "dense", "sequential"))[
        ["label", "method", "sparsity", "seed", "statistics", "window", "kl", "ppl_ratio"]].reset_index(drop=True)


def board_frames(frame):
    """Every frame the HS claims read, from the runner's rows."""
    points = points_table(frame)
    return {"schedule": schedule_frame(frame, points), "layer_errors": layer_error_frame(frame, points),
            "overhead": overhead_frame(frame, points), "dense_statistics": dense_statistics_frame(frame, points)}


def paired_schedules(schedule, pairs: Iterable[tuple[str, str]] = (("hessian", "uniform"), ("owl", "uniform"),
                                                                  ("hessian", "owl"))):
    """Per (sparsity, bits) point and pair (a, b) of schedules of a `schedule_frame`: the mean-KL ratio a / b
    with a crossed bootstrap over seeds x windows (same seed, same window), the perplexity ratio from the NLL
    difference, how many seeds have a worse than b, and whether uniform works there."""
    import pandas as pd

    from ..evaluation.uncertainty import crossed_bootstrap

    rows = []
    for (sparsity, bits), group in schedule.groupby(["sparsity", schedule.bits.fillna(16)], sort=True):
        uniform_ratio = group[group.schedule == "uniform"].ppl_ratio
        for a, b in pairs:
            grids = []
            for name in (a, b):
                part = group[group.schedule == name]
                grids.append((part.pivot_table(index="seed", columns="window", values="kl"),
                              part.pivot_table(index="seed", columns="window", values="nll")))
            (kl_a, nll_a), (kl_b, nll_b) = grids
            seeds = kl_a.index.intersection(kl_b.index)
            if kl_a.empty or kl_b.empty or not len(seeds):
                continue
            kl = crossed_bootstrap(kl_a.loc[seeds].to_numpy(), kl_b.loc[seeds].to_numpy(), ratio=True)
            nll = crossed_bootstrap(nll_a.loc[seeds].to_numpy(), nll_b.loc[seeds].to_numpy())
            rows.append({"sparsity": sparsity, "bits": bits, "comparison": f"{a} / {b}", "kl_ratio": kl["estimate"],
                         "kl_low": kl["low"], "kl_high": kl["high"], "ppl_ratio": math.exp(nll["estimate"]),
                         "ppl_low": math.exp(nll["low"]), "ppl_high": math.exp(nll["high"]),
                         "seeds_worse": kl["seeds_above"], "seeds": kl["seeds"], "windows": kl["windows"],
                         "uniform_ppl_ratio": float(uniform_ratio.mean()) if len(uniform_ratio) else float("nan")})
    out = pd.DataFrame(rows)
    if len(out):
        from ..claims.rules import is_working
        out["working"] = [is_working(r) for r in out.uniform_ppl_ratio]
    return out


def layer_kinds(frame, points, sparsity: float, seed: int):
    """Why a schedule wins or loses, per layer type (q_proj, ..., down_proj) at one mean sparsity and seed: the
    mean scheduled sparsity of each schedule and SparseGPT's summed layer error, from the 16-bit sequential
    variants; one row per (schedule, kind)."""
    rows = frame[frame.metric == "layer_error"][["label", "layer", "layer_sparsity", "value"]].join(points, on="label")
    rows = rows[(rows.sparsity == sparsity) & (rows.seed == seed) & rows.bits.isna() & (rows.inputs == "compressed")
                & (rows.ablation == "none") & rows.schedule.isin(COMPARED)]
    rows = rows.assign(kind=rows.layer.map(layer_kind), layer_sparsity=rows.layer_sparsity.astype(float))
    return rows.groupby(["schedule", "kind"], sort=False).agg(
        sparsity=("layer_sparsity", "mean"), error=("value", "sum"), layers=("layer", "count")).reset_index()


def paired_ablations(schedule_rows, sparsity: float):
    """The scheduler's free choices, pruned: per ablation at `sparsity`, the mean-KL ratio ablated / default
    Hessian schedule (16-bit, sequential), crossed bootstrap over the shared seeds x windows."""
    import pandas as pd

    from ..evaluation.uncertainty import crossed_bootstrap

    rows = schedule_rows[(schedule_rows.schedule == "hessian") & (schedule_rows.sparsity == sparsity)
                         & schedule_rows.bits.isna()]
    default = rows[rows.ablation == "none"].pivot_table(index="seed", columns="window", values="kl")
    out = []
    for ablation, group in rows[rows.ablation != "none"].groupby("ablation", sort=False):
        grid = group.pivot_table(index="seed", columns="window", values="kl")
        seeds = grid.index.intersection(default.index)
        if not len(seeds):
            continue
        r = crossed_bootstrap(grid.loc[seeds].to_numpy(), default.loc[seeds].to_numpy(), ratio=True)
        out.append({"ablation": ablation, "kl_ratio": r["estimate"], "low": r["low"], "high": r["high"],
                    "seeds": r["seeds"], "windows": r["windows"], "interval": r["interval"]})
    return pd.DataFrame(out)


def window_rows(frame, points):
    """Per (variant, window) NLL and KL of every variant (ablations and dense-Hessian ones included) with the
    variant's settings: what the paired comparisons beyond the board's frames read."""
    nll = _per_window(frame, points, "window_nll").rename(columns={"value": "nll"})
    kl = _per_window(frame, points, "window_kl")[["label", "window", "value"]].rename(columns={"value": "kl"})
    return nll.merge(kl, on=["label", "window"])


def kind_sensitivity(rows, points, sparsity: float, kinds=None):
    """What pruning one layer kind more costs, beside what the schedules give it: per kind probed at mean
    `sparsity` (schedule "kind": that kind `extra` more, the rest uniform), the KL it adds over uniform at the same
    sparsity, per percentage point of all decoder weights pruned more (paired by seed and window, crossed
    bootstrap); with `kinds` (`layer_kinds` at that sparsity) also the mean sparsity each schedule gives that kind
    there (columns "<schedule>_sparsity"). rows: `window_rows`; points: `points_table`. A kind whose added KL per
    weight is high but that a schedule prunes more than the target is one the schedule misjudges."""
    import pandas as pd

    from ..evaluation.uncertainty import crossed_bootstrap

    at = rows[(rows.sparsity == sparsity) & rows.bits.isna() & (rows.inputs == "compressed")
              & (rows.ablation == "none")]
    uniform = at[at.schedule == "uniform"].pivot_table(index="seed", columns="window", values="kl")
    base = points[(points.schedule == "uniform") & (points.sparsity == sparsity) & points.bits.isna()
                  & (points.inputs == "compressed") & (points.ablation == "none")]
    out = []
    for kind, group in at[at.schedule == "kind"].groupby("kind", sort=False):
        grid = group.pivot_table(index="seed", columns="window", values="kl")
        seeds = grid.index.intersection(uniform.index)
        if not len(seeds):
            continue
        labels = group.label.unique()
        added = float(points.loc[labels, "achieved_sparsity"].mean() - base.achieved_sparsity.mean()) * 100
        r = crossed_bootstrap(grid.loc[seeds].to_numpy(), uniform.loc[seeds].to_numpy())
        out.append({"kind": kind, "extra": float(group.extra.iloc[0]), "added_points": added,
                    "kl_added": r["estimate"], "low": r["low"], "high": r["high"],
                    "kl_per_point": r["estimate"] / added, "per_point_low": r["low"] / added,
                    "per_point_high": r["high"] / added, "seeds": r["seeds"], "windows": r["windows"],
                    "interval": r["interval"]})
    out = pd.DataFrame(out)
    if kinds is not None and len(kinds) and len(out):
        given = kinds[kinds.schedule.isin(COMPARED)].pivot_table(index="kind", columns="schedule", values="sparsity")
        given = given.add_suffix("_sparsity")
        out = out.join(given, on="kind")
    return out
