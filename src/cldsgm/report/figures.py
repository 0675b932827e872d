"""The report's plots (matplotlib, Agg): PNG bytes, drawn from the analysis' frames.

Quality plots are faceted: one panel per source (a trained model beside its exact-score oracle), one colour per
sampler throughout the report, the 95 % intervals as bands, at most MAX_LINES lines per panel (a panel with more
series is split by striding, then into parts), and one legend for the figure.
"""

from __future__ import annotations

import io

import pandas as pd

from cldsgm.records import METRICS

__all__ = ["MAX_LINES", "curves_figure", "learning_curve_figure", "loss_figure", "quality_axes", "quality_figure",
           "quality_panels", "sampler_colours"]

MAX_LINES = 10  # lines per panel: more cannot be told apart


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sampler_colours(samplers) -> dict[str, tuple]:
    """One colour per sampler (variant) name, the same in every plot of a report (sorted names, tab10 then tab20)."""
    plt = _pyplot()
    names = sorted(set(samplers))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def quality_panels(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """[(panel title, its records)]: one panel per source, trained models first then oracles, split by striding
    and then into parts where a panel would hold more than MAX_LINES series (sampler x striding)."""
    panels = []
    order = sorted(df["source"].unique(), key=lambda s: (s.startswith("oracle-"), s))
    for source in order:
        sub = df[df["source"] == source]
        series = sub.groupby(["sampler", "striding"]).ngroups
        groups = [(source, sub)] if series <= MAX_LINES else [
            (f"{source}, {striding}", part) for striding, part in sub.groupby("striding")]
        for title, part in groups:
            keys = sorted(part.groupby(["sampler", "striding"]).groups)
            chunks = [keys[i:i + MAX_LINES] for i in range(0, len(keys), MAX_LINES)]
            for k, chunk in enumerate(chunks):
                mask = [key in chunk for key in zip(part["sampler"], part["striding"], strict=True)]
                panels.append((title if len(chunks) == 1 else f"{title} ({k + 1}/{len(chunks)})", part[mask]))
    return panels


def _series(ax, group: pd.DataFrame, colour, label: str, log_y: bool = False) -> None:
    """One sampler row against NFE with its interval as a band (the adaptive ODE: one star with a bar). On a log
    y axis an interval reaching 0 (a distance's lower end stops there) is drawn down to a tenth of its value: a
    band to 0 would fill the panel to its bottom edge and hide the rows under it."""
    group = group.sort_values("nfe")
    low = group["ci_low"].fillna(group["value"])
    high = group["ci_high"].fillna(group["value"])
    if log_y:
        low = low.where(low > 0, group["value"] / 10)
    if group["striding"].iloc[0] == "adaptive":
        # a value lies inside its interval (a biased metric's is bias-corrected); older records' plug-in values may
        # not: the bars stop at the value
        bars = [(group["value"] - low).clip(lower=0), (high - group["value"]).clip(lower=0)]
        ax.errorbar(group["nfe"], group["value"], yerr=bars, color=colour,
                    marker="*", markersize=9, linestyle="none", label=label)
        return
    style = "--" if group["striding"].iloc[0] == "uniform" else "-"
    ax.plot(group["nfe"], group["value"], style, marker="o", markersize=3, color=colour, label=label)
    ax.fill_between(group["nfe"], low, high, color=colour, alpha=0.18, linewidth=0)


def quality_axes(df: pd.DataFrame, data: str, metric: str, colours: dict | None = None, floor: float | None = None):
    """The faceted figure (matplotlib Figure) of quality_figure; floor: the metric of real data at the sets' n, a
    grey dotted line on every panel."""
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    colours = colours or sampler_colours(df["sampler"])
    panels = quality_panels(df)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.6), squeeze=False, sharey=True)
    positive = bool((df["value"] > 0).all())
    for ax, (title, part) in zip(axes.flat, panels, strict=False):
        for (sampler, striding), group in part.groupby(["sampler", "striding"], sort=True):
            _series(ax, group, colours[sampler], sampler if striding != "uniform" else f"{sampler} (uniform)",
                    log_y=positive)
        if floor is not None and (floor > 0 or not positive):
            ax.axhline(floor, color="0.4", linestyle=":", linewidth=1.2, label="floor: real data at this n")
        ax.set_xscale("log")
        # ticks at 10, 20, 50, 100 ... written as numbers (matplotlib's default labels minor ticks 2x10^1, 3x10^1
        # ... on short ranges, which overlap)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if positive:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("NFE (spent)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric, fontsize=8)
    handles = {}
    for ax in axes.flat[:len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(6, len(handles)), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    reach_zero = " (a band down to a tenth of its value reaches 0)" if positive else ""
    fig.suptitle(f"{data}: {METRICS.get(metric, metric)} (bands: 95 % intervals{reach_zero}; dashed: uniform "
                 "striding)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(handles) // 6), 1, 0.97))
    return fig


def quality_figure(df: pd.DataFrame, data: str, metric: str, colours: dict | None = None,
                   floor: float | None = None) -> bytes:
    """Quality against NFE, one panel per source (see the module docstring); log axes; the floor dotted."""
    return _png(quality_axes(df, data, metric, colours, floor))


def learning_curve_axes(df: pd.DataFrame, metric: str):
    """The metric of each model's snapshots against its training step, intervals as bands: one colour per model,
    one line per training replica (seed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    palette = plt.get_cmap("tab10").colors
    models = df["model"] if "model" in df else df["source"]
    for i, (model, rows) in enumerate(sorted(df.groupby(models))):
        colour = palette[i % len(palette)]
        for k, (_, group) in enumerate(sorted(rows.groupby("source"))):
            group = group.sort_values("train_step")
            ax.plot(group["train_step"], group["value"], marker="o", markersize=3, color=colour,
                    label=model if k == 0 else None, linewidth=1.5 if k == 0 else 1.0)
            ax.fill_between(group["train_step"], group["ci_low"].fillna(group["value"]),
                            group["ci_high"].fillna(group["value"]), color=colour, alpha=0.12, linewidth=0)
    if (df["value"] > 0).all():  # a curve spans orders of magnitude early on
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def learning_curve_figure(df: pd.DataFrame, metric: str) -> bytes:
    """PNG of learning_curve_axes: records of the snapshots of one dataset and metric (train_step, value, interval)."""
    return _png(learning_curve_axes(df, metric))


def loss_figure(runs: dict[str, pd.DataFrame]) -> bytes:
    """The training loss of each model against its step (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, history in sorted(runs.items()):
        ax.plot(history["step"], history["loss"], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (per-sample mean)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def curves_figure(series: dict[str, tuple[list, list]], *, xlabel: str, ylabel: str, title: str, log_x: bool = False,
                  log_y: bool = False, line: float | None = None, line_label: str = "",
                  groups: dict[str, str] | None = None) -> bytes:
    """Lines y(x), one per label (series: label -> (x, y)), one colour per group (groups: label -> group, e.g. the
    SDE, so that a trained network and its exact score share it); exact scores and data laws dashed (labels starting
    'oracle-' or 'law-'); an optional horizontal reference line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    groups = groups or {label: label for label in series}
    palette = plt.get_cmap("tab10").colors
    colour = {g: palette[i % len(palette)] for i, g in enumerate(sorted(set(groups.values())))}
    for label, (x, y) in sorted(series.items()):
        style = "--" if label.startswith(("oracle-", "law-")) else "-"
        ax.plot(x, y, style, marker="o", markersize=2.5, label=label, color=colour[groups.get(label, label)])
    if line is not None:
        ax.axhline(line, color="0.4", linestyle=":", linewidth=1.2, label=line_label)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)
