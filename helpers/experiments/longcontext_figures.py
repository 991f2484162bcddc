"""The figures of notebook 01 (compression error and context length), drawn from its tidy tables only.

Each function returns (figure, finding): the finding is the one-line reading printed under the figure and
saved beside it (`plotting.save_figure`). Series keep one look each (`plotting.series_styles`); collapsed
variants (perplexity above the working threshold) are drawn hollow and named so in the legend; n is in
every title. Intervals are 95% t-intervals over windows; with fewer than 10 windows the windows' own
points are drawn instead of a band.
"""
from __future__ import annotations

import math

import numpy as np

from ..plotting import LINESTYLES, centred_offsets, ratio_axis, series_styles

FAMILY_PANELS = ("pruning", "quantization", "activations")
POINTS_BELOW = 10  # fewer windows than this: draw each window's points, not a band


def _styles(table):
    order = [label for label in table.index if label != "dense"]
    return order, series_styles(order, families=table.family.to_dict())


def _legend_label(table, label: str) -> str:
    return f"{label} ({table.ppl_ratio[label]:.2g}x ppl" + (", collapsed)" if not table.working[label] else ")")


def positions_figure(kl_bins, table, *, title: str):
    """Per-position KL on log axes, one panel per family: the mean over windows of each log-spaced position
    bin, with its 95% t-interval band (or the windows' points below POINTS_BELOW windows)."""
    import matplotlib.pyplot as plt

    from .longcontext import summarize_windows

    order, styles = _styles(table)
    by_bin = summarize_windows(kl_bins[kl_bins.label.isin(order)], ["label", "position_start", "position_stop"])
    by_bin["position"] = np.sqrt((by_bin.position_start + 1) * by_bin.position_stop)
    families = [f for f in FAMILY_PANELS if f in set(table.family[order])]
    fig, axes = plt.subplots(1, len(families), figsize=(5.6 * len(families), 4.6), sharey=True, squeeze=False)
    windows = int(by_bin.windows.max())
    for ax, family in zip(axes[0], families):
        for label in [x for x in order if table.family[x] == family]:
            rows, style = by_bin[by_bin.label == label], styles[label]
            hollow = "white" if not table.working[label] else style["color"]
            ax.plot(rows.position, rows["mean"], marker=style["marker"], ms=3, color=style["color"], mfc=hollow,
                    ls=style["linestyle"], label=_legend_label(table, label))
            if windows >= POINTS_BELOW:
                ax.fill_between(rows.position, rows.low.clip(lower=rows["mean"] / 10), rows.high, alpha=0.12,
                                color=style["color"])
            else:
                points = kl_bins[kl_bins.label == label]
                ax.scatter(np.sqrt((points.position_start + 1) * points.position_stop), points.value, s=4,
                           color=style["color"], alpha=0.3)
        ax.set(xscale="log", yscale="log", xlabel="token position (1-based)", title=family)
        ax.legend(fontsize="x-small", loc="lower left")
    axes[0][0].set_ylabel("KL(dense || compressed), nats per token")
    fig.suptitle(title + f" | mean over {windows} windows per position bin; "
                 + ("band: 95% t-interval" if windows >= POINTS_BELOW else "dots: windows"), x=0.01, ha="left",
                 fontsize="medium")
    fig.tight_layout()
    working = [x for x in order if table.working[x]]
    finding = (f"Per-position KL over {windows} windows: {len(working)} of {len(order)} variants work "
               f"(perplexity within 3x dense); collapsed: {', '.join(x for x in order if x not in working) or 'none'}.")
    return fig, finding, by_bin


def growth_figure(summary, *, title: str, early: tuple[int, int], late: tuple[int, int]):
    """Forest plot of each variant's late/early KL ratio on the disjoint bins (geometric mean, 95% t-interval
    over windows), the flat margin [0.9, 1.1] shaded, the detectable ratio and n in the labels."""
    import matplotlib.pyplot as plt

    order = list(summary.index)
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(order) + 1.8))
    ax.axvspan(0.9, 1.1, color="grey", alpha=0.15)
    ax.axvline(1.0, color="grey", lw=0.8)
    for y, label in enumerate(order):
        row = summary.loc[label]
        color = "tab:blue" if row.working else "tab:red"
        ax.errorbar(row["late/early"], y, xerr=[[row["late/early"] - row.low], [row.high - row["late/early"]]],
                    marker="o", color=color, mfc=color if row.working else "white", capsize=3, ls="none")
    ax.set_yticks(range(len(order)), [f"{label} ({summary.ppl_ratio[label]:.2g}x ppl"
                                      + ("" if summary.working[label] else ", collapsed")
                                      + f"; detects {summary.detectable[label]:.2f}x)" for label in order],
                  fontsize="small")
    ax.invert_yaxis()
    ratio_axis(ax)
    ax.set_xlabel(f"mean KL over positions [{late[0]}, {late[1]}) / over [{early[0]}, {early[1]}) (ratio)")
    windows = int(summary.windows.max())
    fig.suptitle(title + f"\ngeometric mean, 95% t-interval over {windows} windows; grey band: flat margin [0.9, 1.1]; "
                 "hollow red: collapsed", x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    working = summary[summary.working]
    grows = working[working.low > 1]
    finding = (f"Late [{late[0]}, {late[1]}) vs early [{early[0]}, {early[1]}) KL over {windows} windows: of "
               f"{len(working)} working variants, {len(grows)} grow with the interval above 1 ("
               + (", ".join(f"{x} {r['late/early']:.2f} [{r.low:.2f}, {r.high:.2f}]" for x, r in grows.iterrows())
                  or "none") + f"); ratios span {working['late/early'].min():.2f}-{working['late/early'].max():.2f}"
               f"; the design detects a ratio of {working.detectable.min():.2f}-{working.detectable.max():.2f}.")
    return fig, finding


def _forest(ax, rows, labels, colors, *, xlabel: str, band: float | None = None) -> None:
    """One row per paired comparison (estimate and its interval against a ratio axis), top to bottom in order."""
    ax.axvline(1.0, color="grey", lw=0.8)
    if band is not None:
        ax.axvspan(1 / band, band, color="grey", alpha=0.15)
    for y, (row, color) in enumerate(zip(rows.itertuples(), colors)):
        ax.errorbar(row.estimate, y, xerr=[[row.estimate - row.low], [row.high - row.estimate]], marker="o",
                    color=color, capsize=3, ls="none")
    ax.set_yticks(range(len(rows)), labels, fontsize="small")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ratio_axis(ax)
    ax.set_xlabel(xlabel)


def paired_figure(paired, *, title: str):
    """Forest plot of quantized / pruned growth ratios at matched damage (paired over windows)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 0.5 * max(len(paired), 1) + 1.8))
    _forest(ax, paired, [f"{r.a} ({r.ppl_ratio_a:.2g}x) / {r.b} ({r.ppl_ratio_b:.2g}x)" for r in paired.itertuples()],
            ["tab:purple"] * len(paired), band=1.1,
            xlabel="growth ratio, quantized / pruned (late/early KL ratio per window; > 1: quantized grows more)")
    windows = int(paired.windows.max()) if len(paired) else 0
    fig.suptitle(title + f"\npairs at matched perplexity; geometric mean, 95% t-interval over {windows} windows; "
                 "grey band: within 10%", x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    more = paired[paired.low > 1]
    finding = (f"At matched damage ({len(paired)} pairs, {windows} windows), the quantized variant grows more "
               f"with the interval above 1 in {len(more)} pair(s)" + (": " + "; ".join(
                   f"{r.a} / {r.b} {r.estimate:.2f} [{r.low:.2f}, {r.high:.2f}]" for r in more.itertuples())
                   if len(more) else "") + "; estimates span "
               + (f"{paired.estimate.min():.2f}-{paired.estimate.max():.2f}." if len(paired) else "nothing."))
    return fig, finding


def theory_figure(simulation, measured, *, title: str):
    """Two panels: the simulated attention-noise variance (left, relative to position 16) and the measured
    per-position KL of chosen working variants (right, relative to its value at position 16): two quantities
    in two panels, not one axis."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for name, rows in simulation.groupby("curve", sort=False):
        left.plot(rows.position, rows.relative, label=name)
    left.plot([16, simulation.position.max()], [1, simulation.position.max() / 16], color="grey", ls=":",
              label="linear in position")
    left.set(xscale="log", yscale="log", xlabel="token position (1-based)",
             ylabel="output-error variance / its value at 16", title="one attention head, simulated")
    left.legend(fontsize="x-small")
    for name, rows in measured.groupby("curve", sort=False):
        right.plot(rows.position, rows.relative, marker="o", ms=3, label=name)
    right.set(xscale="log", xlabel="token position (1-based)", ylabel="KL / its value at position 16",
              title="measured (working variants)")
    ratio_axis(right, "y")  # log with ticks at 1, 2, 5 x 10^k when the ratios span a factor of 4 or more
    right.legend(fontsize="x-small")
    fig.suptitle(title, x=0.01, ha="left", fontsize="medium")
    fig.tight_layout()
    return fig


def relative_to(rows, column: str = "value", at: float = 16.0):
    """`rows` (position, value) with `relative`: value divided by its log-interpolated value at `at`."""
    rows = rows.sort_values("position")
    anchor = np.interp(math.log(at), np.log(rows.position.to_numpy(float)), rows[column].to_numpy(float))
    return rows.assign(relative=rows[column] / anchor)


def blocks_figure(kl_bins, table, summary, pairs, *, window_size: int, title: str):
    """Per-position KL relative to its value at the sliding window's edge, global-only (solid) vs
    sliding-window-only (dashed) compression, with the slopes past the window in the finding."""
    import matplotlib.pyplot as plt

    from .longcontext import summarize_windows

    labels = list(summary.label)
    order, styles = _styles(table)
    by_bin = summarize_windows(kl_bins[kl_bins.label.isin(labels)], ["label", "position_start", "position_stop"])
    by_bin["position"] = np.sqrt((by_bin.position_start + 1) * by_bin.position_stop)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for label in labels:
        rows = relative_to(by_bin[by_bin.label == label].rename(columns={"mean": "value"}), at=window_size)
        ax.plot(rows.position, rows.relative, marker=styles[label]["marker"], ms=3, color=styles[label]["color"],
                ls="-" if table.blocks[label] == "full_attention" else "--", label=label)
    ax.axvline(window_size, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="token position (1-based)",
           ylabel=f"KL / its value at position {window_size}")
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    windows = int(summary.windows.max())
    ax.set_title(title + f"\nmean over {windows} windows; solid: global blocks only, dashed: sliding-window blocks "
                 f"only; dotted line: the {window_size}-token window", fontsize="small")
    fig.tight_layout()
    finding = (f"Past the {window_size}-token sliding window (log-log slope of per-position KL, 95% t-interval over "
               f"{windows} windows): " + "; ".join(f"{r.label} {r.estimate:+.3f} [{r.low:+.3f}, {r.high:+.3f}]"
                                                   for r in summary.itertuples())
               + ("; paired global - sliding: " + "; ".join(
                   f"{r.b.rsplit(' [', 1)[0]} {r.estimate:+.3f} [{r.low:+.3f}, {r.high:+.3f}]"
                   for r in pairs.itertuples()) if len(pairs) else "") + ".")
    return fig, finding


# --------------------------------------------------------------------------- notebook 02: outlier protection
def _seed_suffix(label: str) -> str:
    """' seed=k' when a variant's label names its calibration seed, else ''."""
    return " " + label.rsplit(" ", 1)[1] if " seed=" in label else ""


def _grid_name(bits, group_size, blocks=None) -> str:
    """"4-bit g128", "4-bit per-channel", "4-bit g128 [global blocks]" (a grid over some decoder blocks)."""
    from ..claims.registry import every_block
    from .core import blocks_label

    where = "" if every_block(blocks) else f" [{blocks_label(blocks)}]"
    return f"{bits:g}-bit " + (f"g{group_size:g}" if group_size == group_size and group_size else "per-channel") + where


def _summary_grid_name(summary, label) -> str:
    return _grid_name(summary.bits[label], summary.group_size[label], summary.get("blocks", {}).get(label))


def protection_bits_figure(summary, *, title: str, early: tuple[int, int], late: tuple[int, int]):
    """Two panels against effective bits per weight (the one storage model): late-bin KL (left) and the
    late/early growth (right), one line per selection rule and grid, the unprotected setting shared,
    95% t-intervals over windows."""
    import matplotlib.pyplot as plt
    import pandas as pd

    rules = [r for r in dict.fromkeys(summary.protection_rule) if r != "none"]
    styles = series_styles(rules)
    # rules side by side, offset by 3% of the bits the panel spans (at least 0.4 bits): grids at 4 and 14 bits need
    # a wider step than grids 1 bit apart for the points to stay apart
    unit = 0.03 * max(float(np.ptp(summary.bits_per_weight)), 0.4)
    dodge = {rule: unit * place for rule, place in centred_offsets(rules).items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 4.8))
    panels = ((left, "late_kl", "late_kl_low", "late_kl_high"), (right, "late/early", "low", "high"))

    def draw(rows, *, x, label, line, **style):
        for ax, column, low, high in panels:
            ax.errorbar(x, rows[column], yerr=[(rows[column] - rows[low]).clip(lower=0), rows[high] - rows[column]],
                        capsize=2, label=label if ax is right else None, ls=line, **style)

    from ..claims.registry import quantization_grid

    for index, (_, grid) in enumerate(summary.groupby(quantization_grid(summary), sort=False)):
        plain = grid[grid.protected_fraction == 0]
        line, name = LINESTYLES[index % len(LINESTYLES)], _summary_grid_name(summary, grid.index[0])
        draw(plain, x=plain.bits_per_weight, label=f"unprotected, {name}", line="none",
             color="black", marker="X", markersize=8)
        for rule in rules:
            protected = grid[grid.protection_rule == rule].sort_values("bits_per_weight")
            if not len(protected):
                continue
            first = protected.groupby("protected_fraction").head(1)  # one seed a line; the others as points
            rows = pd.concat([plain, first])
            style = {"color": styles[rule]["color"], "marker": styles[rule]["marker"]}
            draw(rows, x=rows.bits_per_weight + np.array([0] * len(plain) + [dodge[rule]] * len(first)),
                 label=f"{rule}, {name}" + (", one point a seed" if len(first) < len(protected)
                                                                 else ""), line=line, **style)
            seeds = protected.drop(first.index)
            if len(seeds):
                extra = 1 + seeds.groupby("protected_fraction").cumcount().to_numpy()  # the 2nd, 3rd seed of a fraction
                draw(seeds, x=seeds.bits_per_weight + dodge[rule] + unit / 3 * extra, label=None, line="none", **style)
    left.set(yscale="log", xlabel="effective bits per weight", ylabel=f"mean KL over [{late[0]}, {late[1]}), nats")
    right.axhspan(0.9, 1.1, color="grey", alpha=0.15)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(xlabel="effective bits per weight", ylabel=f"KL [{late[0]}, {late[1]}) / KL [{early[0]}, {early[1]})")
    right.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1))
    windows = int(summary.windows.max())
    fig.suptitle(title + f"\nX: unprotected grid; 95% t-intervals over {windows} windows; rules offset by up to "
                 f"{max(dodge.values(), default=0):.3f} bits to stay apart (a rule's further seeds {unit / 3:.3f} bits "
                 "each beyond); grey band: flat margin [0.9, 1.1]",
                 x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    plain = summary[summary.protected_fraction == 0]
    finding = (f"Over {windows} windows: unprotected " + ", ".join(
        f"{_grid_name(r.bits, r.group_size, r.get('blocks'))} late/early {r['late/early']:.2f} [{r.low:.2f}, {r.high:.2f}] "
        f"({r.ppl_ratio:.2g}x ppl)" for _, r in plain.iterrows()) + "; protected settings span "
        f"{summary[summary.protected_fraction > 0]['late/early'].min():.2f}-"
        f"{summary[summary.protected_fraction > 0]['late/early'].max():.2f}.")
    return fig, finding


def protection_paired_figure(versus_plain, versus_rule, summary, *, title: str):
    """Two forest plots, paired over windows (geometric mean, 95% t-interval): left, the growth ratio of each
    protected setting over its unprotected grid; right, the late-bin KL of magnitude selection over each other
    rule at the same fraction. One row per comparison, coloured by the rule, so no point sits on another."""
    import matplotlib.pyplot as plt

    rules = [r for r in dict.fromkeys(summary.protection_rule) if r != "none"]
    styles = series_styles(rules)
    rows = max(len(versus_plain), len(versus_rule), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 0.42 * rows + 2.2))
    panels = ((left, versus_plain, "a", "growth ratio, protected / unprotected grid (< 1: protection helps)"),
              (right, versus_rule, "b", "late-bin KL ratio, magnitude / other rule (< 1: magnitude better)"))
    for ax, paired, key, xlabel in panels:
        if not len(paired):
            ax.text(0.5, 0.5, "no pairs in this run", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        rule = paired[key].map(summary.protection_rule)
        labels = [f"{_summary_grid_name(summary, r)}: {summary.protection_rule[r]} "
                  f"{summary.protected_fraction[r] * 100:g}%{_seed_suffix(r)} ({summary.ppl_ratio[r]:.2g}x ppl"
                  + (")" if summary.working[r] else ", collapsed)")
                  for r in paired[key]]
        _forest(ax, paired, labels, [styles[r]["color"] for r in rule], xlabel=xlabel)
    windows = int(summary.windows.max())
    fig.suptitle(title + f"\npaired over {windows} windows: geometric mean, 95% t-interval; label: the protected "
                 "setting (left) or the rule magnitude is compared with (right), with its perplexity ratio",
                 x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    helps = versus_plain[versus_plain.high < 1] if len(versus_plain) else versus_plain
    finding = (f"Paired over {windows} windows: {len(helps)} of {len(versus_plain)} protected settings reduce the "
               "growth with the interval below 1" + (f"; magnitude vs other rules: {int((versus_rule.high < 1).sum())} "
                                                     f"of {len(versus_rule)} pairs lower late-bin KL"
                                                     if len(versus_rule) else "") + ".")
    return fig, finding


def protection_heatmap(maps, *, title: str):
    """Per decoder linear (rows: block, columns: projection), the share of its protected groups in its single
    most-protected column of groups, one panel per rule."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    projections = list(dict.fromkeys(maps.projection))
    rules = list(dict.fromkeys(maps.protection_rule))
    fig, axes = plt.subplots(1, len(rules), figsize=(3.8 * len(rules) + 1.2, 0.2 * maps.block.nunique() + 2.2),
                             sharey=True, squeeze=False)
    for ax, rule in zip(axes[0], rules):
        grid = maps[maps.protection_rule == rule].pivot_table(index="block", columns="projection", values="value")
        sns.heatmap(grid[projections], ax=ax, vmin=0, vmax=1, cmap="mako_r", cbar=ax is axes[0][-1],
                    cbar_kws={"label": "share in the top input column group"},
                    yticklabels=max(1, math.ceil(len(grid) / 16)))  # at most ~16 block labels: none overprinted
        ax.set(title=rule, xlabel="", ylabel="block" if ax is axes[0][0] else "")
    fig.suptitle(title, x=0.01, ha="left", fontsize="small")
    fig.tight_layout()
    return fig
