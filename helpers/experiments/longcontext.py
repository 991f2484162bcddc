"""Compression error as a function of context length (arXiv 2406.06773), reusable pieces.

    reference = DenseReference(model, windows)            # dense pass, done once
    variants = [parse_variant({"method": "magnitude", "sparsity": 0.5}), parse_variant({"kv_bits": 4})]
    Runner(model, table, model_name=..., protocol=...).run(
        variants, [context_kl_measurement(reference, edges=edges, contexts=contexts)])
    frame = latest_frame(table, model=..., protocol=...)  # figures are drawn from the table only

Why one pass at the longest context is enough: the models are causal, so the KL at position t of a
window of length T equals the KL at the last position of the window cut to length t + 1. The mean
KL "at context c" is therefore the mean over positions < c of the long window (`context_kl`).

The attention-noise simulation (`simulate_attention_noise`) is the paper's theory in a few lines:
one attention head whose keys and/or values carry additive noise. With an unnormalized sum over
earlier tokens the output-error variance grows linearly with position; with softmax weights the
noise is averaged instead (variance ~ sum_s a_ts^2), which does not grow. The notebooks show both
next to the measured curves.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..evaluation.metrics import DenseReference, evaluate
from .core import Measurement, Point, Variant, variant_table as core_variant_table
from ..evaluation.uncertainty import INTERVALS, bootstrap_interval, interval_name, standard_error, t_interval  # noqa: F401 (re-exported)


# --------------------------------------------------------------------------- positions and contexts
def log_bin_edges(length: int, bins_per_octave: int = 2) -> list[int]:
    """Position edges [0, ..., length] spaced evenly on a log axis of the 1-based position.

    Bin i holds positions edges[i] <= p < edges[i + 1]; the first bins are single positions
    (0, 1, 2, ...), later bins double in width every `bins_per_octave` bins.
    """
    if length < 1:
        raise ValueError(f"length={length}; expected at least one position.")
    if bins_per_octave < 1:
        raise ValueError(f"bins_per_octave={bins_per_octave}; expected a positive integer (2 is a good default).")
    points, k = set(), 0
    while True:
        point = int(round(2 ** (k / bins_per_octave)))
        if point >= length + 1:
            break
        points.add(point)
        k += 1
    edges = [p - 1 for p in sorted(points)] + [length]
    if len(edges) > 3 and edges[-1] - edges[-2] < (edges[-2] - edges[-3]) / 2:
        del edges[-2]  # a last sliver narrower than half its neighbour joins it
    return edges


def bin_centers(edges: Sequence[int]) -> np.ndarray:
    """Geometric centre of each bin in 1-based positions (where to draw it on a log axis)."""
    edges = np.asarray(edges, dtype=float)
    return np.sqrt((edges[:-1] + 1) * edges[1:])


def binned_mean(values: torch.Tensor, edges: Sequence[int]) -> torch.Tensor:
    """Mean of `values` [..., positions] within each bin -> [..., bins] (float64)."""
    if edges[0] != 0 or edges[-1] != values.shape[-1] or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges {list(edges)[:4]}...{list(edges)[-2:]} must rise strictly from 0 to the "
                         f"number of positions ({values.shape[-1]}); build them with log_bin_edges().")
    values = values.double()
    return torch.stack([values[..., a:b].mean(-1) for a, b in zip(edges, edges[1:])], dim=-1)


def context_lengths(max_context: int, smallest: int = 64) -> list[int]:
    """Powers of two from `smallest` up to `max_context`, and `max_context` itself."""
    if max_context < 2:
        raise ValueError(f"max_context={max_context}; expected at least 2 tokens.")
    out, c = [], max(2, min(smallest, max_context))
    while c < max_context:
        out.append(c)
        c *= 2
    return out + [max_context]


def context_kl(kl: torch.Tensor, contexts: Iterable[int]) -> torch.Tensor:
    """Mean KL over positions < c for each context c: [windows, positions] -> [windows, contexts].

    Valid because the model is causal: position t of a long window sees exactly the tokens a window
    of length t + 1 would.
    """
    contexts = list(contexts)
    bad = [c for c in contexts if not 1 <= c <= kl.shape[-1]]
    if bad:
        raise ValueError(f"contexts {bad} are outside 1..{kl.shape[-1]} (the positions measured); "
                         "measure longer windows or drop those contexts.")
    return torch.stack([kl[..., :c].double().mean(-1) for c in contexts], dim=-1)


# --------------------------------------------------------------------------- summaries across windows
def summarize_windows(frame, by: Sequence[str], value: str = "value", *, confidence: float = 0.95,
                      interval: str = "t", seed: int = 0):
    """Per group: mean over windows, standard error, an interval of the mean (`interval`: 't', a
    Student-t interval, or 'bootstrap', a percentile bootstrap over windows) and the number of windows;
    the `interval` column names what was computed."""
    import pandas as pd

    if interval not in INTERVALS:
        raise ValueError(f"interval={interval!r}; expected one of {INTERVALS}.")
    rows = []
    for keys, group in frame.groupby(list(by), sort=False, dropna=False):
        values = group[value].to_numpy(dtype=float)
        if interval == "t":
            low, high = t_interval(values, confidence=confidence)
        else:
            low, high = bootstrap_interval(values, confidence=confidence, seed=seed)
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows.append({**dict(zip(by, keys)), "mean": values.mean(), "standard_error": standard_error(values),
                     "low": low, "high": high, "windows": values.size,
                     "interval": interval_name(interval, values.size, confidence)})
    return pd.DataFrame(rows)


def window_growth(kl_context, kl_bins, *, first_position: int = 16, base_context: int | None = None):
    """Growth with context, per (label, window): the independent unit for intervals and pairing.

    kl_context / kl_bins: the `kl_context` and `kl_bin` rows of `variant_records` (columns label,
    window, value and context / position_start, position_stop). Returns one row per label and window:
      growth        mean KL at the longest context / mean KL at `base_context` (default: the shortest);
      log_slope     slope of log KL against log position over the bins from 1-based position
                    `first_position` on (0 flat, 1 linear in position);
      slope_per_1k  least-squares slope of KL against position over the same positions, nats per
                    1,000 tokens (bins weighted by their width, i.e. every position counts once);
      kl_first, kl_last  the two context means behind `growth`.
    """
    import pandas as pd

    rows = []
    shortest, longest = kl_context.context.min(), kl_context.context.max()
    if base_context is not None:
        if base_context not in set(kl_context.context):
            raise ValueError(f"base_context={base_context} is not a measured context; measured: "
                             f"{sorted(set(kl_context.context))}.")
        shortest = base_context
    contexts = kl_context.set_index(["label", "window", "context"])["value"]
    for (label, window), bins in kl_bins.groupby(["label", "window"], sort=False):
        bins = bins[bins.position_start + 1 >= first_position].sort_values("position_start")
        centre = np.sqrt((bins.position_start.to_numpy(float) + 1) * bins.position_stop.to_numpy(float))
        middle = (bins.position_start.to_numpy(float) + bins.position_stop.to_numpy(float) + 1) / 2
        width = (bins.position_stop - bins.position_start).to_numpy(float)
        kl = bins.value.to_numpy(float)
        slope = float(np.polyfit(middle, kl, 1, w=np.sqrt(width))[0]) * 1000 if len(kl) > 1 else float("nan")
        first, last = contexts[(label, window, shortest)], contexts[(label, window, longest)]
        rows.append({"label": label, "window": window, "kl_first": first, "kl_last": last,
                     "growth": last / first if first > 0 else float("nan"),
                     "log_slope": growth_exponent(centre, kl), "slope_per_1k": slope})
    return pd.DataFrame(rows)


def interval_summary(per_window, columns: Sequence[str], *, by: str = "label", ratios: Sequence[str] = ("growth",),
                     confidence: float = 0.95):
    """Mean and Student-t interval over windows of each column of `per_window` (one row per window),
    per `by`. Columns in `ratios` are summarized on the log scale (geometric mean, interval
    exponentiated), as a ratio should be. Long format: by, quantity, estimate, low, high, windows, interval."""
    import pandas as pd

    rows = []
    for key, group in per_window.groupby(by, sort=False):
        for column in columns:
            values = group[column].to_numpy(float)
            values = values[np.isfinite(values)]
            ratio = column in ratios
            if ratio:
                values = np.log(values[values > 0])
            low, high = t_interval(values, confidence=confidence)
            estimate = values.mean() if values.size else float("nan")
            if ratio:
                estimate, low, high = np.exp(estimate), np.exp(low), np.exp(high)
            rows.append({by: key, "quantity": column, "estimate": float(estimate), "low": float(low),
                         "high": float(high), "windows": int(values.size),
                         "interval": ("geometric mean, " if ratio else "mean, ")
                         + interval_name("t", int(values.size), confidence)})
    return pd.DataFrame(rows)


def paired_differences(per_window, pairs: Iterable[tuple[str, str]], column: str, *, ratio: bool = False,
                       confidence: float = 0.95):
    """Paired comparison of two variants on the same windows: per pair (a, b), the per-window
    difference column(a) - column(b) (or, with `ratio`, the ratio column(a) / column(b), summarized on
    the log scale), its mean with a Student-t interval over the shared windows, and how many windows
    have a above b. Windows only one of the two variants measured are left out."""
    import pandas as pd

    table = per_window.pivot_table(index="window", columns="label", values=column)
    rows = []
    for a, b in pairs:
        missing = [label for label in (a, b) if label not in table.columns]
        if missing:
            raise ValueError(f"paired_differences: no per-window {column!r} for {missing}; labels present: "
                             f"{sorted(table.columns)}.")
        both = table[[a, b]].dropna()
        x, y = both[a].to_numpy(float), both[b].to_numpy(float)
        d = np.log(x / y) if ratio else x - y
        low, high = t_interval(d, confidence=confidence)
        estimate = d.mean() if d.size else float("nan")
        if ratio:
            estimate, low, high = np.exp(estimate), np.exp(low), np.exp(high)
        rows.append({"a": a, "b": b, "quantity": column + (" ratio a/b" if ratio else " difference a-b"),
                     "estimate": float(estimate), "low": float(low), "high": float(high), "windows": int(d.size),
                     "a_above_b": int((x > y).sum()), "interval": ("geometric mean, " if ratio else "mean, ")
                     + interval_name("t", int(d.size), confidence)})
    return pd.DataFrame(rows)


def growth_exponent(positions: Sequence[float], values: Sequence[float]) -> float:
    """Slope of log(value) against log(position): 0 flat, 1 linear growth, -1 decay as 1/t."""
    x, y = np.log(np.asarray(positions, float)), np.asarray(values, float)
    keep = np.isfinite(x) & (y > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[keep], np.log(y[keep]), 1)[0])


# --------------------------------------------------------------------------- the theory, simulated
@torch.no_grad()
def simulate_attention_noise(positions: int, *, dim: int = 64, noise_std: float = 0.1,
                             noisy: str = "keys+values", normalization: str = "softmax",
                             noise: str = "token", query_scale: float = 1.0, trials: int = 32,
                             seed: int = 0) -> torch.Tensor:
    """Variance of one causal attention head's output error at each position [positions].

    Queries, keys and values are standard normal; keys and/or values (`noisy`: "keys", "values" or
    "keys+values") get additive Gaussian noise of std `noise_std`: independent per token
    (`noise="token"`, the paper's assumption) or a fixed linear error e_s = E x_s of the token's
    features (`noise="weight"`, what rounding a projection matrix does). `normalization="softmax"` is
    real attention (weights sum to 1); `"sum"` adds up the exp-weighted values of all earlier tokens
    without dividing, the accumulation in which the paper's linear growth appears.
    `query_scale` sharpens (large) or flattens (0: uniform attention) the attention weights.
    """
    if noisy not in ("keys", "values", "keys+values"):
        raise ValueError(f"noisy={noisy!r}; expected 'keys', 'values' or 'keys+values'.")
    if normalization not in ("softmax", "sum"):
        raise ValueError(f"normalization={normalization!r}; expected 'softmax' or 'sum'.")
    if noise not in ("token", "weight"):
        raise ValueError(f"noise={noise!r}; expected 'token' (independent per token) or 'weight'.")
    gen = torch.Generator().manual_seed(seed)
    shape = (trials, positions, dim)
    q = torch.randn(shape, generator=gen, dtype=torch.float64) * query_scale / math.sqrt(dim)
    k = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)

    def error(x):
        if noise == "token":
            return noise_std * torch.randn(shape, generator=gen, dtype=torch.float64)
        matrix = noise_std * torch.randn((trials, dim, dim), generator=gen, dtype=torch.float64) / math.sqrt(dim)
        return x @ matrix

    k_noisy = k + error(k) if "keys" in noisy else k
    v_noisy = v + error(v) if "values" in noisy else v
    causal = torch.ones(positions, positions, dtype=torch.bool).tril()

    def attend(keys, values):
        scores = (q @ keys.transpose(1, 2)).masked_fill(~causal, -math.inf)
        if normalization == "softmax":
            return torch.softmax(scores, dim=-1) @ values
        return scores.exp() @ values

    diff = attend(k_noisy, v_noisy) - attend(k, v)
    return diff.pow(2).mean(dim=(0, 2)).float()


# --------------------------------------------------------------------------- measurements for the runner
def variant_records(kl: torch.Tensor, nll: torch.Tensor, *, edges: Sequence[int],
                    contexts: Sequence[int]) -> list[dict]:
    """Tidy rows of one evaluated variant: perplexity, mean KL, KL per log bin and per context, per window."""
    rows = [{"metric": "perplexity", "value": math.exp(nll.double().mean().item())},
            {"metric": "mean_kl", "value": kl.double().mean().item()}]
    binned = binned_mean(kl, edges)
    by_context = context_kl(kl, contexts)
    for window in range(kl.shape[0]):
        for index, (start, stop) in enumerate(zip(edges, edges[1:])):
            rows.append({"metric": "kl_bin", "value": binned[window, index].item(), "window": window,
                         "position_start": start, "position_stop": stop})
        for index, context in enumerate(contexts):
            rows.append({"metric": "kl_context", "value": by_context[window, index].item(), "window": window,
                         "context": context})
    return rows


def context_kl_measurement(reference: DenseReference, *, edges: Sequence[int], contexts: Sequence[int],
                           dataset: str | None = None) -> Measurement:
    """KL(dense || variant) per position of the reference's windows, binned by position and by context. The
    dense variant (`Variant.dense()`) is recorded from the reference itself (its perplexity, KL 0), no second
    pass; a lazy reference runs its pass before the first variant is compressed."""
    def measure(point: Point) -> list[dict]:
        if point.variant.is_dense:
            kl = torch.zeros(reference.windows.shape, dtype=torch.float64)  # KL(p || p) = 0 at every position
            return variant_records(kl, reference.nll, edges=edges, contexts=contexts)
        result = evaluate(point.model, reference.windows, reference, progress=False)
        return variant_records(result.kl, result.nll, edges=edges, contexts=contexts)

    return Measurement("context_kl", measure, {"edges": list(edges), "contexts": list(contexts)}, dataset,
                       prepare=reference.prepare)


def protection_measurement(layer_maps: Callable[[Variant], bool] = lambda variant: False) -> Measurement:
    """Per layer, for the variants `layer_maps` selects: the number of protected groups and how
    concentrated they are in input columns (share of the protected groups in the single
    most-protected column of groups). Variants without protected groups give no rows."""
    from ..compression.protect import protection_maps

    def measure(point: Point) -> list[dict]:
        if point.report is None or not layer_maps(point.variant):
            return []
        rows = []
        for name, protected in protection_maps(point.report.layers).items():
            per_column = protected.sum(dim=0).double()
            total = float(per_column.sum())
            rows.append({"metric": "protected_groups", "value": total, "layer": name})
            if total:
                rows.append({"metric": "protected_column_share", "value": float(per_column.max()) / total,
                             "layer": name, "column_groups": int(per_column.numel())})
        return rows

    return Measurement("protected_groups", measure)


# --------------------------------------------------------------------------- from recorded rows to tables
_SETTING_COLUMNS = {  # tidy column -> the recorded settings it is read from (first present wins)
    "sparsity": ("settings.recipe.sparsity",),
    "pattern": ("settings.recipe.pattern",),
    "bits": ("settings.recipe.quant.bits",),
    "group_size": ("settings.recipe.quant.group_size",),
    "kv_bits": ("settings.kv_cache.bits",),
    "blocks": ("settings.blocks", "settings.kv_cache.blocks", "settings.recipe.blocks"),
    "protected_fraction": ("settings.protect_fraction",),
    "protection_rule": ("settings.protect_rule",),
}


def variant_table(frame):
    """One row per variant (`core.variant_table`) with the settings these notebooks compare: sparsity (0 for
    none), pattern, bits (nan: none), group_size, kv_bits, blocks, protected_fraction, protection_rule."""
    import pandas as pd

    out = core_variant_table(frame, _SETTING_COLUMNS)
    out["sparsity"] = pd.to_numeric(out["sparsity"], errors="coerce").fillna(0.0)
    out["bits"] = pd.to_numeric(out["bits"], errors="coerce")
    return out


def disjoint_bins(contexts: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The early and late position bins [start, stop) growth is judged on: the last octave of contexts
    (e.g. [4096, 8192)) against the octave two before it ([1024, 2048)), disjoint and far apart; built from
    measured contexts, so each bin's mean follows exactly from the cumulative means (`bin_kl`)."""
    contexts = sorted(set(int(c) for c in contexts))
    if len(contexts) < 4:
        raise ValueError(f"contexts {contexts}: need at least 4 to place two disjoint bins an octave apart; "
                         "lower smallest_context or measure a longer window.")
    return (contexts[-4], contexts[-3]), (contexts[-2], contexts[-1])


def bin_kl(kl_context, start: int, stop: int):
    """Mean KL over positions [start, stop) per (label, window), from the mean KL over positions < c
    (`kl_context` rows): (stop * M(stop) - start * M(start)) / (stop - start); start 0 needs no M(0)."""
    import pandas as pd

    from ..claims.rules import bin_means_from_cumulative

    table = kl_context.pivot_table(index=["label", "window"], columns="context", values="value", sort=False)
    for needed in (c for c in (start, stop) if c):
        if needed not in table.columns:
            raise ValueError(f"context {needed} was not measured (measured: {sorted(table.columns)}); pick bin "
                             "edges among the measured contexts (disjoint_bins does).")
    if start == 0:
        return table[stop].rename("kl")
    means = bin_means_from_cumulative([start, stop], table[[start, stop]].to_numpy(float))[:, 1]
    return pd.Series(means, index=table.index, name="kl")


def growth_frame(frame, variants=None, *, model: str | None = None):
    """The claims board's "context_growth" frame: one row per (variant, window) with the mean KL over the
    early and the late disjoint bin (`disjoint_bins`), their edges, the variant's ppl_ratio and recorded
    settings (family, method, sparsity, pattern, bits, kv_bits, blocks, ...). Dense is left out."""
    table = variant_table(frame)
    kl_context = frame[frame.metric == "kl_context"].astype({"context": int, "window": int})
    (a, b), (c, d) = disjoint_bins(kl_context.context.unique())
    early, late = bin_kl(kl_context, a, b), bin_kl(kl_context, c, d)
    out = early.rename("early_bin_kl").to_frame().join(late.rename("late_bin_kl")).reset_index()
    out = out[out.label != "dense"]
    out = out.join(table.drop(columns=["perplexity"]), on="label")
    out["model"] = model if model is not None else frame["model"].iloc[0]
    out["early_bin_start"], out["early_bin_stop"], out["late_bin_start"], out["late_bin_stop"] = a, b, c, d
    if variants is not None:  # the notebook's order
        order = {v.label: i for i, v in enumerate(variants)}
        out = out.sort_values(["label", "window"], key=lambda s: s.map(order) if s.name == "label" else s)
    return out.reset_index(drop=True)


def windows_needed(standard_deviation: float, effect: float, *, most: int = 1000) -> int | None:
    """The fewest windows at which a paired design with this per-window standard deviation (log ratio)
    detects `effect` (log ratio) at the claims' level and power (`claims.rules.detectable_effect`);
    None beyond `most`."""
    from ..claims.rules import detectable_effect

    if not (math.isfinite(standard_deviation) and standard_deviation >= 0 and effect > 0):
        return None
    return next((n for n in range(2, most + 1) if detectable_effect(standard_deviation, n) <= effect), None)


def growth_summary(growth, *, effect: float = math.log(1.1)):
    """Per variant from a `growth_frame`: KL in the early and late bin (means over windows), the late/early
    ratio (geometric mean, 95% t-interval over windows), its per-window standard deviation (log), the smallest
    ratio this many windows detect (`claims.rules.detectable_effect`, as a factor) and the windows needed to
    detect `effect` (default: a 10% difference). Index: label, in the frame's order."""
    import pandas as pd

    from ..claims.rules import detectable_effect

    rows = []
    for label, group in growth.groupby("label", sort=False):
        logs = np.log(group.late_bin_kl.to_numpy(float) / group.early_bin_kl.to_numpy(float))
        logs = logs[np.isfinite(logs)]
        low, high = t_interval(logs)
        sd = float(np.std(logs, ddof=1)) if logs.size > 1 else float("nan")
        rows.append({"label": label, "ppl_ratio": group.ppl_ratio.iloc[0], "working": group.working.iloc[0],
                     "early_kl": group.early_bin_kl.mean(), "late_kl": group.late_bin_kl.mean(),
                     "late/early": math.exp(logs.mean()) if logs.size else float("nan"),
                     "low": math.exp(low), "high": math.exp(high), "windows": int(logs.size),
                     "log_sd": sd, "detectable": math.exp(detectable_effect(sd, int(logs.size))),
                     "windows_for_10%": windows_needed(sd, effect)})
    return pd.DataFrame(rows).set_index("label")


def attention_noise_frame(kl_bins, variant_rows, *, first_position: int = 16):
    """The claims board's "attention_noise" frame (LC5): per working variant and window, the log-log slope of
    per-position KL against position from `first_position` on (1 = the linear accumulation of the theory),
    with the variant's ppl_ratio; `variant_rows` is a `variant_table`."""
    import pandas as pd

    rows = []
    for (label, window), bins in kl_bins.groupby(["label", "window"], sort=False):
        bins = bins[bins.position_start + 1 >= first_position]
        centre = np.sqrt((bins.position_start.to_numpy(float) + 1) * bins.position_stop.to_numpy(float))
        rows.append({"label": label, "window": window, "log_slope": growth_exponent(centre, bins.value)})
    per_window = pd.DataFrame(rows, columns=["label", "window", "log_slope"])
    working = variant_rows[variant_rows.working & (variant_rows.index != "dense")]
    out = per_window[per_window.label.isin(working.index)][["label", "window", "log_slope"]]
    out = out.rename(columns={"window": "unit"})
    out["ppl_ratio"] = out.label.map(working.ppl_ratio)
    return out.reset_index(drop=True)


def damage_matches(table) -> dict[str, str]:
    """For each working variant of a `variant_table`: the published setting of the same method whose
    perplexity ratio (claims.registry.PUBLISHED_RATIOS) lies nearest its own, when within
    claims.rules.DAMAGE_TOLERANCE, as "LLaMA-2-7B (4096) wanda 50% (1.25x)"; variants without one are absent."""
    from ..claims.registry import PUBLISHED_RATIOS
    from ..claims.rules import DAMAGE_TOLERANCE, nearest_setting

    out = {}
    for label, row in table.iterrows():
        if label == "dense" or not row.working:
            continue
        published = {f"{model} {setting}": ratio for (model, setting), ratio in PUBLISHED_RATIOS.items()
                     if setting.split(" ")[0] == row.method}
        if published:
            setting, _, within = nearest_setting(published, float(row.ppl_ratio), DAMAGE_TOLERANCE)
            if within:
                out[label] = f"{setting} ({published[setting]:.3g}x)"
    return out


def matched_pairs(table, *, tolerance: float | None = None) -> list[tuple[str, str]]:
    """(quantized, pruned) pairs at matched damage, for LC3: each working weight-quantized or KV-cache variant
    with the working pruned variant (random pruning included) nearest in perplexity ratio, when within
    `tolerance` (default claims.rules.DAMAGE_TOLERANCE)."""
    from ..claims.rules import DAMAGE_TOLERANCE, nearest_setting

    tolerance = DAMAGE_TOLERANCE if tolerance is None else tolerance
    working = table[table.working & (table.index != "dense")]
    pruned = working[working.family == "pruning"].ppl_ratio.to_dict()
    pairs = []
    for label, row in working[working.family.isin(["quantization", "activations"])].iterrows():
        if pruned:
            other, _, within = nearest_setting(pruned, float(row.ppl_ratio), tolerance)
            if within:
                pairs.append((label, other))
    return pairs


def paired_growth(growth, pairs: Iterable[tuple[str, str]]):
    """Per (a, b) pair of a `growth_frame`'s variants: the per-window ratio of their late/early KL ratios
    (a / b; > 1: a grows more), geometric mean with its 95% t-interval over the shared windows
    (`paired_differences`), with both variants' perplexity ratios."""
    per_window = growth.assign(bin_growth=growth.late_bin_kl / growth.early_bin_kl)
    out = paired_differences(per_window, list(pairs), "bin_growth", ratio=True)
    if len(out):
        ratio = growth.groupby("label").ppl_ratio.first()
        out["ppl_ratio_a"], out["ppl_ratio_b"] = out.a.map(ratio), out.b.map(ratio)
    return out


def block_comparison(kl_bins, table, window_size: int):
    """Global-only vs sliding-window-only compression (Gemma-3): for the variants of a `variant_table`
    whose `blocks` is "full_attention" or "sliding_attention", the log-log slope of per-position KL past the
    sliding window per window (0 flat, 1 linear), summarized (mean, 95% t-interval over windows), and
    paired global - sliding for counterparts of the same base label. Returns (per_window, summary, pairs);
    empty frames when there is nothing to compare."""
    import pandas as pd

    chosen = [label for label in table.index if table.blocks.get(label) in ("full_attention", "sliding_attention")]
    if not chosen or not window_size:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    slopes = attention_noise_frame(kl_bins[kl_bins.label.isin(chosen)], table.assign(working=True),
                                   first_position=window_size + 1).rename(columns={"unit": "window"})
    summary = interval_summary(slopes, ["log_slope"], ratios=())
    base = {label: label.rsplit(" [", 1)[0] for label in chosen}
    pairs = [(g, s) for g in chosen for s in chosen if table.blocks[g] == "full_attention"
             and table.blocks[s] == "sliding_attention" and base[g] == base[s]]
    return slopes, summary, (paired_differences(slopes, pairs, "log_slope") if pairs else pd.DataFrame())


# --------------------------------------------------------------------------- outlier protection (notebook 02)
def protection_summary(growth):
    """Per quantized setting of a `growth_frame` (the claims board's "protection" frame): its grid (bits,
    group_size), protection (protection_rule, protected_fraction), effective bits per weight, perplexity ratio,
    the late-bin KL (mean over windows with its 95% t-interval) and the late/early growth (`growth_summary`)."""
    import pandas as pd

    rows = []
    for label, group in growth.groupby("label", sort=False):
        low, high = t_interval(group.late_bin_kl.to_numpy(float))
        first = group.iloc[0]
        rows.append({"label": label, "bits": first.bits, "group_size": first.group_size,
                     "blocks": first.get("blocks", None), "protection_rule": first.protection_rule, "protected_fraction": float(first.protected_fraction or 0),
                     "bits_per_weight": first.bits_per_weight, "late_kl": group.late_bin_kl.mean(),
                     "late_kl_low": low, "late_kl_high": high})
    out = pd.DataFrame(rows).set_index("label")
    return out.join(growth_summary(growth).drop(columns=["late_kl", "early_kl"]))


def protection_pairs(summary) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """From a `protection_summary`: (protected, unprotected) pairs of the same grid (bits, group size, quantized
    blocks), and (magnitude, other rule) pairs of the same grid and protected fraction (LC7's comparison). Both
    in reading order: by grid (as first listed), then rule (magnitude first), then fraction; seeds as listed."""
    from ..claims.registry import quantization_grid

    grid = quantization_grid(summary)
    plain = {grid[label]: label for label in summary.index if summary.protected_fraction[label] == 0}
    grids = list(dict.fromkeys(grid[label] for label in summary.index))
    rules = list(dict.fromkeys(["magnitude", *summary.protection_rule]))
    protected = sorted((label for label in summary.index if summary.protected_fraction[label] > 0),
                       key=lambda label: (grids.index(grid[label]), rules.index(summary.protection_rule[label]),
                                          summary.protected_fraction[label]))
    versus_plain = [(label, plain[grid[label]]) for label in protected if grid[label] in plain]
    magnitude = [label for label in protected if summary.protection_rule[label] == "magnitude"]
    versus_rule = [(m, o) for m in magnitude for o in protected if summary.protection_rule[o] != "magnitude"
                   and grid[o] == grid[m] and abs(summary.protected_fraction[o] - summary.protected_fraction[m]) < 1e-12]
    return versus_plain, versus_rule


def paired_late_kl(growth, pairs: Iterable[tuple[str, str]]):
    """Per (a, b) pair: the per-window ratio of late-bin KL (a / b; < 1: a is closer to dense late in the
    window), geometric mean with its 95% t-interval over the shared windows."""
    return paired_differences(growth, list(pairs), "late_bin_kl", ratio=True)


def block_frame(slopes, table):
    """The claims board's "block_slopes" frame (LC8) from `block_comparison`'s per-window slopes: per pair of
    counterparts (the same compression on the global blocks only and on the sliding-window blocks only, named by
    their shared base label) and window, global_slope, sliding_slope and the worse perplexity ratio."""
    import pandas as pd

    if slopes.empty:
        return pd.DataFrame(columns=["label", "window", "global_slope", "sliding_slope", "ppl_ratio"])
    rows = slopes.assign(base=slopes.label.str.rsplit(" [", n=1).str[0], kind=slopes.label.map(table.blocks),
                         ratio=slopes.label.map(table.ppl_ratio))
    wide = rows.pivot_table(index=["base", "window"], columns="kind", values=["log_slope", "ratio"])
    if ("log_slope", "full_attention") not in wide.columns or ("log_slope", "sliding_attention") not in wide.columns:
        return pd.DataFrame(columns=["label", "window", "global_slope", "sliding_slope", "ppl_ratio"])
    out = pd.DataFrame({"global_slope": wide[("log_slope", "full_attention")],
                        "sliding_slope": wide[("log_slope", "sliding_attention")],
                        "ppl_ratio": wide["ratio"].max(axis=1)}).dropna(subset=["global_slope", "sliding_slope"])
    return out.reset_index().rename(columns={"base": "label"})
