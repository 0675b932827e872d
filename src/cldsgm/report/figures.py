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


def quality_figure(df: pd.DataFrame, data: str, metric: str) -> bytes:
    """One line per (source, sampler, striding) against the NFE spent; the adaptive ODE as a star; log axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (source, sampler, striding), group in df.groupby(["source", "sampler", "striding"], sort=True):
        group = group.sort_values("nfe")
        style = "--" if group["kind"].iloc[0] == "oracle" else "-"
        label = f"{source} {sampler} {striding}"
        if striding == "adaptive":
            ax.plot(group["nfe"], group["value"], marker="*", markersize=10, linestyle="none", label=label)
        else:
            ax.plot(group["nfe"], group["value"], style, marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    if (df["value"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("NFE (spent)")
    ax.set_ylabel(metric)
    ax.set_title(f"{data}: {METRICS.get(metric, metric)}", fontsize=9)
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
