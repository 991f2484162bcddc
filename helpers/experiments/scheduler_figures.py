"""The figures of notebook 04 (the Hessian layer-wise scheduler), drawn from its tidy tables only.

Each function returns (figure, finding). Collapsed points (uniform SparseGPT beyond the working threshold,
3x dense perplexity) are drawn hollow and named so; n (seeds x windows) is in every title.
"""
from __future__ import annotations

import numpy as np

from ..claims.rules import WORKING_MAX_PPL_RATIO
from ..plotting import ratio_axis, series_styles

SCHEDULE_ORDER = ("uniform", "owl", "hessian")


def ladder_figure(rungs, matched: dict, *, title: str):
    """Uniform SparseGPT's perplexity ratio to dense against mean sparsity on the damage ladder's rungs
    (`scheduler.ladder_rungs`, one calibration seed), the target ratios and the sparsities read off for them,
    the working threshold dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.plot(rungs.index, rungs.values, color="tab:blue", marker="o", label="uniform SparseGPT (one calibration seed)")
    ax.axhline(WORKING_MAX_PPL_RATIO, color="tab:red", ls="--", lw=1, label=f"working threshold ({WORKING_MAX_PPL_RATIO:g}x)")
    for target, sparsity in matched.items():  # the reading at the foot of its line, clear of the curve and threshold
        ax.plot([sparsity, sparsity], [1, target], color="grey", ls=":", lw=1)
        ax.text(sparsity, 0.04, f" {target:g}x -> {sparsity:.2f}", transform=ax.get_xaxis_transform(), rotation=90,
                ha="right", va="bottom", fontsize="small", color="dimgrey",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    low = min(0.9, float(rungs.min()) * 0.9)  # dense (1x) and the working threshold always in view: the axis spans
    ax.set(xlabel="mean sparsity (fraction of decoder-linear weights pruned)", ylabel="perplexity / dense (log axis)",
           ylim=(low, max(4 * low, float(rungs.max()) * 1.15)))  # >= 4x, so ratio_axis makes it a log axis
    ratio_axis(ax, "y")
    ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle(title + "\nuniform SparseGPT, 16-bit, sequential: the damage ladder", x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    finding = ("Uniform SparseGPT costs " + ", ".join(f"{r:.2f}x at {s:.2f}" for s, r in rungs.items())
               + " dense perplexity; the matched sparsities are " + ", ".join(f"{s:.2f} ({t:g}x)" for t, s in matched.items())
               + ".")
    return fig, finding


def paired_figure(paired, *, title: str):
    """Forest plot, one panel per comparison (hessian / uniform, owl / uniform, hessian / owl): the mean-KL
    ratio per point (sparsity, bits) with its crossed-bootstrap interval; collapsed points hollow red."""
    import matplotlib.pyplot as plt

    comparisons = list(dict.fromkeys(paired.comparison))
    labels = list(dict.fromkeys(f"{s:.2f}, {b:g}-bit" for s, b in zip(paired.sparsity, paired.bits)))
    fig, axes = plt.subplots(1, len(comparisons), figsize=(4.4 * len(comparisons) + 1.5, 0.42 * len(labels) + 1.9),
                             sharey=True, squeeze=False)
    for ax, comparison in zip(axes[0], comparisons):
        part = paired[paired.comparison == comparison]
        for row in part.itertuples():
            y = labels.index(f"{row.sparsity:.2f}, {row.bits:g}-bit")
            color = "tab:blue" if row.working else "tab:red"
            ax.errorbar(row.kl_ratio, y, xerr=[[row.kl_ratio - row.kl_low], [row.kl_high - row.kl_ratio]], marker="o",
                        color=color, mfc=color if row.working else "white", capsize=3, ls="none")
        ax.axvline(1.0, color="grey", lw=0.8)
        low, high = ax.get_xlim()
        pad = 0.04 * (high - low)
        ax.set_xlim(min(low, 1 - pad), max(high, 1 + pad))  # the line at 1 inside the frame, never on its edge
        ratio_axis(ax)
        ax.set(title=comparison, xlabel="mean-KL ratio (< 1: the first is better)")
    ratios = paired.drop_duplicates(["sparsity", "bits"]).set_index(["sparsity", "bits"]).uniform_ppl_ratio
    axes[0][0].set_yticks(range(len(labels)), [f"{label} (uniform {ratios.iloc[i]:.2g}x"
                                               + ("" if ratios.iloc[i] <= WORKING_MAX_PPL_RATIO else ", collapsed") + ")"
                                               for i, label in enumerate(labels)], fontsize="small")
    axes[0][0].invert_yaxis()
    seeds, windows = int(paired.seeds.max()), int(paired.windows.max())
    fig.suptitle(title + f"\npaired by seed and window; 95% crossed bootstrap over up to {seeds} seeds x {windows} windows; "
                 "hollow red: uniform collapsed there", x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    hessian = paired[(paired.comparison == "hessian / uniform") & paired.working]
    finding = ("Hessian / uniform mean-KL ratio at working points: " + "; ".join(
        f"{r.sparsity:.2f} {r.bits:g}-bit {r.kl_ratio:.3f} [{r.kl_low:.3f}, {r.kl_high:.3f}]" for r in hessian.itertuples())
        + "." if len(hessian) else "No working point compares Hessian with uniform.")
    return fig, finding


def kinds_figure(kinds, *, title: str, sensitivity=None):
    """Why a schedule wins or loses, per layer type: the mean scheduled sparsity, SparseGPT's summed layer error
    (log axis), one bar per schedule; with `sensitivity` (`scheduler.kind_sensitivity`) a third panel: the KL that
    pruning that type more adds, per percentage point of all weights, with its interval."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    schedules = [s for s in SCHEDULE_ORDER if s in set(kinds.schedule)]
    order = list(dict.fromkeys(kinds.kind))
    styles = series_styles(schedules)
    probed = sensitivity is not None and len(sensitivity) > 0
    fig, axes = plt.subplots(1, 3 if probed else 2, figsize=(16 if probed else 12, 4.4))
    left, right = axes[0], axes[1]
    width = 0.8 / max(len(schedules), 1)
    for i, schedule in enumerate(schedules):
        part = kinds[kinds.schedule == schedule].set_index("kind").reindex(order)
        x = np.arange(len(order)) + (i - (len(schedules) - 1) / 2) * width
        left.bar(x, part.sparsity, width, color=styles[schedule]["color"], label=schedule)
        right.bar(x, part.error, width, color=styles[schedule]["color"], label=schedule)
    low = kinds.sparsity.min()
    left.set(ylabel="mean sparsity of the layer type", ylim=(max(0.0, low - 0.05), min(1.0, kinds.sparsity.max() + 0.05)))
    right.set(yscale="log", ylabel="SparseGPT's error, summed over blocks")
    left.legend(fontsize="x-small")
    table = kinds[kinds.schedule.isin(schedules)].pivot(index="kind", columns="schedule", values="sparsity").reindex(order)
    finding = "Mean sparsity per layer type: " + "; ".join(
        f"{schedule} {table[schedule].idxmin()} least ({table[schedule].min():.2f}), {table[schedule].idxmax()} most "
        f"({table[schedule].max():.2f})" for schedule in schedules if schedule != "uniform") + "."
    if probed:
        cost = sensitivity.set_index("kind").reindex([k for k in order if k in set(sensitivity.kind)])
        x = [order.index(k) for k in cost.index]
        cost_ax = axes[2]
        cost_ax.bar(x, cost.kl_per_point, 0.6, color="0.55")
        cost_ax.errorbar(x, cost.kl_per_point, yerr=[cost.kl_per_point - cost.per_point_low,
                                                     cost.per_point_high - cost.kl_per_point],
                         fmt="none", ecolor="black", capsize=3)
        cost_ax.axhline(0, color="black", linewidth=0.6)
        cost_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.2g}"))  # no offset over the title
        first = cost.iloc[0]
        cost_ax.set(ylabel="KL added per 1% of all weights\npruned more (nats per token)",
                    title=f"one type +{first.extra:.0%}, the rest uniform\n{first.interval}")
        cost_ax.title.set_fontsize("x-small")
        most, least = cost.kl_per_point.idxmax(), cost.kl_per_point.idxmin()
        finding += (f" Pruning one type {first.extra:.0%} more costs most KL per weight for {most} "
                    f"({cost.kl_per_point[most]:.3g} nats per point [{cost.per_point_low[most]:.3g}, "
                    f"{cost.per_point_high[most]:.3g}]) and least for {least} ({cost.kl_per_point[least]:.3g}).")
    for ax in axes:
        ax.set_xticks(range(len(order)), order, rotation=30)
    fig.suptitle(title, x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    return fig, finding


def estimate_figure(layer_errors, *, title: str):
    """The scheduler's estimate against SparseGPT's error per layer (log-log), one panel per run (a sparsity),
    coloured by layer type, the rank correlation in each panel's title and in the finding."""
    import matplotlib.pyplot as plt
    from scipy import stats

    runs = list(dict.fromkeys(layer_errors.label))
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs) + 1.6, 4.2), sharex=True, sharey=True,
                             squeeze=False)
    kinds = list(dict.fromkeys(layer_errors.kind))
    styles = series_styles(kinds)
    low = min(layer_errors.estimated_error.min(), layer_errors.measured_error.min())
    high = max(layer_errors.estimated_error.max(), layer_errors.measured_error.max())
    rho = {}
    for ax, run in zip(axes[0], runs):
        rows = layer_errors[layer_errors.label == run]
        for kind in kinds:
            part = rows[rows.kind == kind]
            ax.scatter(part.estimated_error, part.measured_error, s=12, color=styles[kind]["color"],
                       marker=styles[kind]["marker"], label=kind)
        ax.plot([low, high], [low, high], color="grey", ls=":", lw=1)
        rho[run] = stats.spearmanr(rows.estimated_error, rows.measured_error).statistic
        ax.set(xscale="log", yscale="log", xlabel="estimated pruning error E_l\n(dense Hessians, no updates)")
        ax.set_title(f"{run}\nSpearman {rho[run]:.3f}, {len(rows)} layers", fontsize="small")
    axes[0][0].set_ylabel("SparseGPT's error on the layer")
    axes[0][-1].legend(fontsize="x-small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title + "\none point per layer; dotted: equality", x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    finding = "Spearman(estimate, SparseGPT's error) over layers: " + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()) + "."
    return fig, finding
