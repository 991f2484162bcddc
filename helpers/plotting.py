"""One look for every figure, and every figure saved beside the tidy table it was drawn from.

    setup_style()                                   # once, at the top of a notebook
    ax.set_title(caption(model, protocol, date))    # what was measured, how, and when
    save_figure(fig, "01_pruning_ppl", output_dir, table, finding="...", protocol=protocol)

`save_figure` writes `<name>.png`, `<name>.csv` (the rows the figure shows) and, when a finding is
given, `<name>.md`: one markdown line that `python -m helpers.running.reproduce` gathers into
figures/SUMMARY.md.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

DPI = 150
PALETTE = "colorblind"


def setup_style() -> None:
    """Seaborn's white grid, the colour-blind palette and a figure size that reads on a laptop."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 100,
        "savefig.dpi": DPI,
        "savefig.bbox": "tight",
        "axes.titlesize": "medium",
        "axes.titlelocation": "left",
        "legend.frameon": False,
    })


def describe_protocol(protocol: Any) -> str:
    """A protocol dict (or string) as one short line: `dataset=wikitext2, seq_len=512, ...`."""
    if protocol is None:
        return ""
    if isinstance(protocol, dict):
        return ", ".join(f"{key}={value}" for key, value in protocol.items() if value is not None)
    return str(protocol)


def caption(model: str, protocol: Any, date: str | _dt.date | None = None) -> str:
    """Figure title naming the model, the protocol and the date of the run (today by default)."""
    if date is None:
        date = _dt.date.today()
    if isinstance(date, (_dt.date, _dt.datetime)):
        date = date.strftime("%Y-%m-%d")
    return f"{model} | {describe_protocol(protocol)} | {date}"


def save_figure(fig, name: str, output_dir: str | Path, table, *, finding: str | None = None,
                protocol: Any = None) -> Path:
    """Write `<output_dir>/<name>.png` and beside it `<name>.csv`, the tidy table it was drawn from.

    `table` is the DataFrame the figure was drawn from, or the path of a results table
    (`.jsonl` from helpers.results.ResultsTable, or `.csv`), copied as CSV. With `finding`
    (one sentence: what the figure shows) a `<name>.md` line is written for figures/SUMMARY.md.
    Returns the PNG's path.
    """
    import pandas as pd

    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"figure name={name!r}; expected a bare name such as '00_quickstart_kl' "
                         "(no folder, no extension).")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(table, (str, Path)):
        path = Path(table)
        if path.suffix == ".jsonl":
            from .results import ResultsTable
            frame = ResultsTable(path).frame()
        elif path.suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            raise ValueError(f"table={str(path)!r}: expected a DataFrame, a .jsonl results table or a .csv file.")
    elif isinstance(table, pd.DataFrame):
        frame = table
    else:
        raise ValueError(f"table is a {type(table).__name__}; expected the DataFrame the figure was drawn "
                         "from or the path of a results table.")
    png = folder / f"{name}.png"
    fig.savefig(png)
    frame.to_csv(folder / f"{name}.csv", index=False)
    if finding:
        line = " ".join(finding.split())
        if protocol is not None:
            line += f" *Protocol:* {describe_protocol(protocol)}."
        (folder / f"{name}.md").write_text(line + "\n", encoding="utf-8")
    return png


# the one list of verdicts (helpers.claims.rules decides them; their meanings are written there)
VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive", "untestable here")


def figure_title(fig, text: str, *, chars_per_inch: float = 15.0) -> None:
    """A left-aligned small suptitle wrapped to the figure's width (each given line separately), so a long
    caption neither runs off the canvas nor widens a tight-bboxed PNG into a mostly blank one."""
    import textwrap

    width = max(20, int(fig.get_figwidth() * chars_per_inch))
    lines = [wrapped for line in text.split("\n") for wrapped in (textwrap.wrap(line, width) or [""])]
    fig.suptitle("\n".join(lines), x=0.01, ha="left", fontsize="small")


def ratio_axis(ax, axis: str = "x") -> None:
    """An axis of ratios (`axis` "x" or "y"), called after plotting: a log axis with plain tick labels (0.5, 1, 2)
    when the data span a factor of 4 or more, else a linear axis (a log axis over 0.9-1.2 would show one tick).
    The span is the data's, not the axis limits' (a linear axis's margin can reach below 0 from a ratio of 1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    if axis not in ("x", "y"):
        raise ValueError(f"axis={axis!r}; expected 'x' or 'y'.")
    data = ax.dataLim
    low, high = (data.x0, data.x1) if axis == "x" else (data.y0, data.y1)
    if not low > 0 or high / low < 4:
        return
    scale, target = (ax.set_xscale, ax.xaxis) if axis == "x" else (ax.set_yscale, ax.yaxis)
    scale("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_minor_locator(LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
    target.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    target.set_minor_formatter(FuncFormatter(lambda x, _: ""))


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
LINESTYLES = ("-", "--", ":", "-.")


def centred_offsets(labels) -> dict[str, float]:
    """Each series' place in a row centred on 0 (-0.5, 0.5 for two; -1, 0, 1 for three), to draw series side by
    side at shared x values: times a step on a linear axis, as the power of a factor on a log axis."""
    labels = list(dict.fromkeys(labels))
    return {label: i - (len(labels) - 1) / 2 for i, label in enumerate(labels)}


def series_styles(labels, *, families: dict | None = None) -> dict[str, dict]:
    """One distinct look per series, for any number of series: {label: {color, marker, linestyle}}.

    Colours come from the 20-colour `tab20` palette and markers from MARKERS, paired so that no two
    labels share both (up to 20 x 12 series); with `families` ({label: family}) every family gets
    its own line style, so a reader can tell e.g. pruning from quantization at a glance."""
    import matplotlib as mpl

    labels = list(dict.fromkeys(labels))
    colors = [mpl.colors.to_hex(c) for c in mpl.colormaps["tab20"].colors]
    colors = colors[0::2] + colors[1::2]  # the strong tones first, their light partners after
    styles_by_family = {}
    for family in dict.fromkeys((families or {}).get(label) for label in labels):
        styles_by_family[family] = LINESTYLES[len(styles_by_family) % len(LINESTYLES)]
    if len(labels) > len(colors) * len(MARKERS):
        raise ValueError(f"{len(labels)} series is more than {len(colors) * len(MARKERS)} distinct styles; "
                         "split the figure into panels.")
    return {label: {"color": colors[i % len(colors)], "marker": MARKERS[(i + i // len(colors)) % len(MARKERS)],
                    "linestyle": styles_by_family[(families or {}).get(label)]}
            for i, label in enumerate(labels)}
