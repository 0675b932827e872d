"""The report's plots (matplotlib, Agg): PNG bytes, drawn from the analysis' frames."""

from __future__ import annotations

import io

import pandas as pd

from cldsgm.records import METRICS

__all__ = ["loss_figure", "quality_figure"]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error_bars(group: pd.DataFrame):
    """[2, n] distances from each value to the ends of its 95 % interval (0 where a value has none)."""
    import numpy as np

    value = group["value"].to_numpy(float)
    low = np.where(group["ci_low"].notna(), group["ci_low"].to_numpy(float), value)
    high = np.where(group["ci_high"].notna(), group["ci_high"].to_numpy(float), value)
    return np.stack([np.clip(value - low, 0, None), np.clip(high - value, 0, None)])


def quality_figure(df: pd.DataFrame, data: str, metric: str) -> bytes:
    """One line per (source, sampler, striding) against the NFE spent, each value with its 95 % interval as an
    error bar; the adaptive ODE as a star; log axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (source, sampler, striding), group in df.groupby(["source", "sampler", "striding"], sort=True):
        group = group.sort_values("nfe")
        label = f"{source} {sampler} {striding}"
        style = {"marker": "*", "markersize": 10, "linestyle": "none"} if striding == "adaptive" else {
            "marker": "o", "markersize": 3, "linestyle": "--" if group["kind"].iloc[0] == "oracle" else "-"}
        ax.errorbar(group["nfe"], group["value"], yerr=_error_bars(group), capsize=2, elinewidth=0.8, label=label,
                    **style)
    ax.set_xscale("log")
    if (df["value"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("NFE (spent)")
    ax.set_ylabel(metric)
    ax.set_title(f"{data}: {METRICS.get(metric, metric)} (bars: 95 % intervals)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


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
