"""The figures of notebook 03 (LLM-KICK), drawn from its tidy tables only.

`headline` is `evidence_table` restricted to each task's primary scoring and indexed by (label, task); `points`
is `kick_points`. Each function returns (figure, finding: one line of what it shows); n is in every panel title,
intervals are 95% (paired bootstrap over examples for score differences, over windows for the perplexity ratio).
"""
from __future__ import annotations

import numpy as np

from ..plotting import centred_offsets, figure_title, ratio_axis, series_styles
from .kick import EMBEDDING_SCORING

DENSE = "dense"


def _bars(value, low, high):
    value, low, high = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (value, low, high))
    return [np.clip(value - low, 0, None), np.clip(high - value, 0, None)]


SCORING_NAMES = {"rouge/rougeL": "ROUGE-L", EMBEDDING_SCORING: "embedding cosine"}


def _n(headline, task) -> int:
    return int(headline.loc[(DENSE, task)].n)


def _task_axis(ax, headline, name: str) -> None:
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(ylabel="score - dense (paired)", title=f"{name} (n={_n(headline, name)})")


def _finish(fig, axes, title: str, note: str):
    axes[0][0].legend(fontsize="x-small")
    figure_title(fig, title + " | " + note)
    fig.tight_layout()
    return fig


def _perplexity_axis(ax) -> None:
    """The WikiText-2 panel: perplexity / dense with plain tick labels, log only where the ratios span 4x."""
    ratio_axis(ax, axis="y")
    log = ax.get_yscale() == "log"
    ax.set(ylabel="perplexity / dense" + (" (log axis)" if log else ""), title="WikiText-2 perplexity")


def baseline_figure(baseline, *, title: str):
    """The dense model on every task: score with its 95% interval, chance marked, colour by status."""
    import matplotlib.pyplot as plt

    several = baseline.groupby("task").scoring.transform("nunique") > 1  # MMLU, free text with two judges
    scoring = baseline.scoring.map(SCORING_NAMES).fillna(baseline.scoring.str.replace("_micro_accuracy", ""))
    baseline = baseline.assign(what=baseline.task + np.where(several, " · " + scoring, ""))  # name the scoring
    shown = baseline.assign(name=baseline.what + " (n=" + baseline.n.astype(str) + ")")
    colors = {"above the floor": "tab:blue", "free text (no chance level)": "tab:green"}
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(shown) + 1.4))
    y = np.arange(len(shown))[::-1]
    for yy, row in zip(y, shown.itertuples()):
        color = colors.get(row.status, "tab:red")
        ax.errorbar([row.score], [yy], xerr=_bars(row.score, row.low, row.high), fmt="o", color=color, capsize=3)
        if not row.status.startswith("free"):
            ax.plot([row.chance], [yy], marker="|", ms=14, color="black")
    ax.set_yticks(y, shown.name, fontsize="small")
    ax.set(xlabel="dense score (accuracy; free text: ROUGE-L F1 or embedding cosine)\n95% interval over examples; "
                  "|: chance", xlim=(-0.02, 1.02))
    drawn = {status if status in colors else "at the floor: untestable" for status in shown.status}
    for status, color in (*colors.items(), ("at the floor: untestable", "tab:red")):
        if status in drawn:  # only the statuses drawn
            ax.scatter([], [], color=color, label=status)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the panel: no point under it
    figure_title(fig, title)
    fig.tight_layout()
    above = baseline[baseline.status == "above the floor"]
    finding = ("Dense, above the floor: " + (", ".join(f"{r.what} {r.score:.3f} [{r.low:.3f}, {r.high:.3f}] (n={r.n})"
                                                       for r in above.itertuples()) or "nothing") + "; at the floor: "
               + (", ".join(sorted(set(baseline[baseline.status.str.startswith('at the floor')].what))) or "nothing") + ".")
    return fig, finding


def scores_figure(points, headline, tasks, *, title: str):
    """Per panel one swept task (first panel: the perplexity ratio): the paired score difference from dense
    against unstructured sparsity, one line per method, 0 at sparsity 0."""
    import matplotlib.pyplot as plt

    unstructured = points[(points.family == "pruning") & (points.pattern == "unstructured")
                          & points.calibration_seed.eq(points.calibration_seed.min())]
    methods = list(dict.fromkeys(unstructured.method))
    styles = series_styles(methods)
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(4.3 * (1 + len(tasks)), 3.9), squeeze=False)
    for ax, name in zip(axes[0], ["wikitext2", *tasks]):
        for method in methods:
            mine = unstructured[unstructured.method == method].sort_values("sparsity")
            xs = [0.0, *mine.sparsity]
            if name == "wikitext2":
                ys = [1.0, *mine.perplexity_ratio]
                ax.plot(xs, ys, marker=styles[method]["marker"], color=styles[method]["color"], label=method)
            else:
                rows = [headline.loc[(label, name)] for label in mine.index if (label, name) in headline.index]
                ys = [0.0, *(r.difference for r in rows)]
                ax.errorbar(xs[:len(ys)], ys, yerr=_bars(ys, [0.0, *(r.difference_low for r in rows)],
                                                         [0.0, *(r.difference_high for r in rows)]),
                            marker=styles[method]["marker"], color=styles[method]["color"], capsize=3, label=method)
        if name == "wikitext2":
            ax.axhline(3.0, color="tab:red", ls="--", lw=0.8)
            _perplexity_axis(ax)
        else:
            _task_axis(ax, headline, name)
        ax.set_xlabel("unstructured sparsity")
    first = []
    for name in tasks:
        lost = {m: [s for label, s in unstructured[unstructured.method == m].sparsity.sort_values().items()
                    if (label, name) in headline.index and headline.loc[(label, name)].difference_high < 0]
                for m in methods}
        first.append(f"{name} (n={_n(headline, name)}): " + ", ".join(
            f"{m} {min(v):.0%}" if v else f"{m} none" for m, v in lost.items()))
    finding = ("Lowest unstructured sparsity whose paired score interval lies below dense: " + "; ".join(first) + "."
               if first else "No swept task.")
    return _finish(fig, axes, title, "95% paired bootstrap over examples; dashed: the working threshold (3x)"), finding


def nm_figure(points, headline, tasks, *, title: str):
    """N:M against unstructured at the same sparsity, per method and sparsity that has an N:M point (2:4 and 4:8
    at 50%, 1:4 at 25%): the perplexity ratio (plain-labelled log axis) and each swept task's paired difference
    from dense, bars with 95% intervals."""
    import matplotlib.pyplot as plt

    pruned = points[(points.family == "pruning") & points.calibration_seed.eq(points.calibration_seed.min())]
    key = list(zip(pruned.method, pruned.sparsity.round(6)))
    nm = [k for k, pattern in zip(key, pruned.pattern) if pattern != "unstructured"]
    order = list(dict.fromkeys(m for m, _ in nm))
    groups = sorted(dict.fromkeys(nm), key=lambda g: (g[1], order.index(g[0])))  # by sparsity, then method
    shown = pruned[[k in groups for k in key]].assign(group=[k for k in key if k in groups])
    patterns = ["unstructured", *sorted(p for p in set(shown.pattern) if p != "unstructured")]
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(max(3.9, 1.3 * len(groups)) * (1 + len(tasks)), 3.9),
                             squeeze=False)
    width = 0.8 / len(patterns)
    for ax, name in zip(axes[0], ["wikitext2", *tasks]):
        for k, pattern in enumerate(patterns):
            xs, ys, lows, highs = [], [], [], []
            for i, group in enumerate(groups):
                match = shown[(shown.group == group) & (shown.pattern == pattern)]
                if match.empty:
                    continue
                label = match.index[0]
                if name == "wikitext2":
                    y = lo = hi = match.perplexity_ratio.iloc[0]
                elif (label, name) in headline.index:
                    r = headline.loc[(label, name)]
                    y, lo, hi = r.difference, r.difference_low, r.difference_high
                else:
                    continue
                xs.append(i + (k - (len(patterns) - 1) / 2) * width), ys.append(y), lows.append(lo), highs.append(hi)
            base = 1.0 if name == "wikitext2" else 0.0  # a ratio's bar starts at 1 (dense), a difference's at 0
            ax.bar(xs, np.asarray(ys, dtype=float) - base, width, bottom=base, yerr=_bars(ys, lows, highs), capsize=3,
                   label=pattern, color=f"C{k}")
        ax.set_xticks(range(len(groups)), [f"{m}\n{s:.0%}" for m, s in groups])
        if name == "wikitext2":
            top = float(np.nanmax(shown.perplexity_ratio)) if len(shown) else 2.0
            ax.set_ylim(0.9, top * 1.3)
            _perplexity_axis(ax)
        else:
            _task_axis(ax, headline, name)
    ratios = shown.groupby(["group", "pattern"]).perplexity_ratio.first()
    finding = "Perplexity / dense: " + "; ".join(
        f"{m} {s:.0%} " + ", ".join(f"{p} {ratios[((m, s), p)]:.2f}x" for p in patterns if ((m, s), p) in ratios.index)
        for m, s in groups) + "."
    return _finish(fig, axes, title, "N:M vs unstructured at the same sparsity, 95% paired bootstrap over examples"), \
        finding


def storage_figure(points, headline, tasks, *, title: str):
    """Quantized against pruned points at their bits per weight (the one storage model): the perplexity ratio
    and each swept task's paired difference from dense; marker by family, no text on the canvas."""
    import matplotlib.pyplot as plt

    shown = points[(points.index != DENSE) & points.calibration_seed.fillna(0).eq(points.calibration_seed.min())]
    kinds = {"pruning, unstructured": ("o", "tab:blue"), "pruning, N:M": ("^", "tab:green"),
             "quantization": ("s", "tab:orange")}
    kind = np.where(shown.family == "quantization", "quantization",
                    np.where(shown.pattern == "unstructured", "pruning, unstructured", "pruning, N:M"))
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(4.2 * (1 + len(tasks)), 3.9), squeeze=False)
    for ax, name in zip(axes[0], ["wikitext2", *tasks]):
        for family, (marker, color) in kinds.items():
            part = shown[kind == family]
            if name == "wikitext2":
                ax.scatter(part.bits_per_weight, part.perplexity_ratio, marker=marker, color=color, label=family)
                continue
            rows = [(label, headline.loc[(label, name)]) for label in part.index if (label, name) in headline.index]
            if rows:
                x = [part.bits_per_weight[label] for label, _ in rows]
                y = [r.difference for _, r in rows]
                ax.errorbar(x, y, yerr=_bars(y, [r.difference_low for _, r in rows], [r.difference_high for _, r in rows]),
                            fmt=marker, color=color, capsize=2, label=family)
        if name == "wikitext2":
            _perplexity_axis(ax)
        else:
            _task_axis(ax, headline, name)
        ax.set_xlabel("bits per weight (decoder linears)")
    finding = "Bits per weight and perplexity / dense: " + "; ".join(
        f"{label} {row.bits_per_weight:.2f} bits {row.perplexity_ratio:.2f}x"
        for label, row in shown[shown.family == "quantization"].iterrows())
    pruned = shown[(shown.family == "pruning") & shown.perplexity_ratio.notna()]
    if len(pruned):
        fewest = pruned.bits_per_weight.min()
        best = pruned[pruned.bits_per_weight <= fewest * 1.001].perplexity_ratio.idxmin()  # one storage, any pattern
        finding += f"; the fewest pruned bits, {fewest:.2f}, at best {pruned.perplexity_ratio[best]:.2f}x ({best})"
    return _finish(fig, axes, title, "equal storage: one storage model for pruned and quantized weights"), finding + "."


def calibration_figure(calibration, *, title: str):
    """WikiText-2 perplexity and mean KL(dense || point) per calibration count (from the "calibration" frame's
    per-window NLL and KL; KL's panel only where the frame has it), and each task's score where the frame has
    task rows (`kick.calibration_frame`): each seed a dot, the seeds' mean a line, one colour per method."""
    import matplotlib.pyplot as plt

    calibration = calibration.reindex(columns=[*calibration.columns, *{"task"} - set(calibration.columns)])
    windows, tasked = calibration[calibration.task.isna()], calibration[calibration.task.notna()]
    measures = {"nll": "mean"} | ({"kl": "mean"} if "kl" in windows and windows.kl.notna().all() else {})
    per_run = windows.groupby(["method", "calibration_samples", "seed"]).agg(measures).reset_index()
    per_run["perplexity"] = np.exp(per_run.nll)
    panels = [("perplexity", "WikiText-2 perplexity")] + ([("kl", "mean KL(dense || pruned)\n(nats per token)")]
                                                        if "kl" in measures else [])
    for task, rows in tasked.groupby("task", sort=False):
        scores = rows.assign(**{task: rows.dense_score - rows.task_loss}).groupby(
            ["method", "calibration_samples", "seed"])[task].mean()
        per_run = per_run.merge(scores.reset_index(), on=["method", "calibration_samples", "seed"], how="left")
        panels.append((task, f"{task} score\n(mean of {rows.example.nunique()} questions)"))
    styles = series_styles(list(dict.fromkeys(per_run.method)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.2), squeeze=False)
    counts = sorted(per_run.calibration_samples.unique())
    places = centred_offsets(styles)  # the methods side by side at each count (log axis: a factor apart)
    for ax, (column, label) in zip(axes[0], panels):
        for method, rows in per_run.groupby("method", sort=False):
            dodge = 1.06 ** places[method]
            ax.scatter(rows.calibration_samples * dodge, rows[column], color=styles[method]["color"], alpha=0.5,
                       s=14)
            means = rows.groupby("calibration_samples")[column].mean()
            ax.plot(means.index * dodge, means.values, color=styles[method]["color"], marker=styles[method]["marker"],
                    label=method)
        ax.set(xscale="log", xlabel="calibration sequences (log axis)", ylabel=label)
        ax.set_xticks(counts, [f"{s:g}" for s in counts])
        ax.minorticks_off()
        ax.legend(fontsize="x-small")
    seeds = per_run.seed.nunique()
    figure_title(fig, title + f"\ndots: {seeds} calibration seeds; line: their mean; methods set apart along x")
    fig.tight_layout()
    means = per_run.groupby(["method", "calibration_samples"])[[c for c, _ in panels]].mean()
    finding = f"Mean over {seeds} calibration seeds, fewest -> most sequences: " + "; ".join(
        f"{m} perplexity {rows.perplexity.iloc[0]:.1f} at {rows.index[0][1]:g} -> {rows.perplexity.iloc[-1]:.1f} at "
        f"{rows.index[-1][1]:g}" + (f", KL {rows.kl.iloc[0]:.3f} -> {rows.kl.iloc[-1]:.3f} nats" if "kl" in rows else "")
        + "".join(f", {task} {rows[task].iloc[0]:.3f} -> {rows[task].iloc[-1]:.3f}" for task in tasked.task.unique())
        for m, rows in means.groupby(level=0, sort=False)) + "."
    return fig, finding


def perplexity_figure(points, headline, tasks, *, title: str):
    """Per swept task: each point's perplexity ratio against its paired task difference, coloured by family;
    points at matched perplexity but different task damage are what KI7 tests."""
    import matplotlib.pyplot as plt

    shown = points[(points.index != DENSE) & points.perplexity_ratio.notna()]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.8 * max(len(tasks), 1), 4.0), squeeze=False)
    colors = {"pruning": "tab:blue", "quantization": "tab:orange"}
    for ax, name in zip(axes[0], tasks):
        rows = [(label, headline.loc[(label, name)]) for label in shown.index if (label, name) in headline.index]
        for family, color in colors.items():
            part = [(label, r) for label, r in rows if shown.family[label] == family]
            if part:
                x = [shown.perplexity_ratio[label] for label, _ in part]
                y = [r.difference for _, r in part]
                ax.errorbar(x, y, yerr=_bars(y, [r.difference_low for _, r in part], [r.difference_high for _, r in part]),
                            fmt="o", color=color, capsize=2, label=family)
        ax.axhline(0, color="grey", lw=0.8)
        ratio_axis(ax)
        ax.set(xlabel="perplexity / dense", ylabel="score - dense (paired)", title=f"{name} (n={_n(headline, name)})")
        ax.legend(fontsize="x-small")
    figure_title(fig, title + " | 95% paired bootstrap over examples")
    fig.tight_layout()
    from scipy import stats

    ranks = []
    for name in tasks:
        labels = [label for label in shown.index if (label, name) in headline.index]
        if len(labels) >= 3:  # ties (equal differences) take their mean rank
            differences = [headline.loc[(label, name)].difference for label in labels]
            rho = stats.spearmanr(shown.perplexity_ratio[labels], differences)
            ranks.append(f"{name} {rho.statistic:.2f} over {len(labels)} points")
    finding = ("Spearman(perplexity ratio, score difference): " + "; ".join(ranks) + "." if ranks
               else "Fewer than 3 points per task.")
    return fig, finding
