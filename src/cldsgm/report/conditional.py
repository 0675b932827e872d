"""The report's section on conditional generation, from the records of a study's `conditional` sets.

Guided sets: the share of samples in the asked class against the guidance scale (with intervals), each step up in
scale compared with the one below it (a paired interval: the sets of one source share their seed, so sample i has
the same prior draw and noise at every scale), and the class's own distance (per-class FD-digits, sliced W2 to the
mixture component). Inpainted sets: how often a completion is classified as the image it completes, against the
unconditional baseline (the mask `none`: nothing known, judged against the same images; paired), the known pixels'
error and the completions' distance to the held-out split; a grid of originals, what the sampler saw, completions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cldsgm.report.analysis import headline_metrics, paired, with_interval
from cldsgm.stats import verdict

__all__ = ["CONDITIONAL_KINDS", "MISSING_RGB", "guidance_figure", "guidance_steps", "guided_table", "inpaint_figure",
           "inpaint_table", "split_conditional"]

CONDITIONAL_KINDS = ("guided", "inpaint")


def _classifier_name(identity: dict | None) -> str | None:
    """A guidance block's classifier as the report names it: 'oracle:<law>', or its run directory's name."""
    if identity is None:
        return None
    if identity.get("oracle"):
        return f"oracle:{identity['oracle']}"
    return Path(str(identity.get("checkpoint", "?"))).parent.name


def split_conditional(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the unconditional records, the conditional ones with columns classifier, class, scale and mask from each
    record's condition block)."""
    if df.empty:
        return df, df.assign(classifier=[], **{"class": []}, scale=[], mask=[])
    conditional = df["kind"].isin(CONDITIONAL_KINDS)
    cond = df[conditional].copy()

    def field(block: str, key: str):
        return [(c or {}).get(block, {}).get(key) if isinstance(c, dict) else None for c in cond["condition"]]

    cond["classifier"] = [_classifier_name(c) for c in field("guidance", "classifier")]
    cond["class"] = field("guidance", "class")
    cond["scale"] = field("guidance", "scale")
    cond["mask"] = [None if m is None else m.get("kind") or Path(str(m.get("file"))).name
                    for m in field("inpaint", "mask")]
    return df[~conditional], cond


def _metric(cond: pd.DataFrame, metric: str) -> pd.DataFrame:
    return cond[cond["metric"] == metric]


def _distance(data: str) -> str:
    """The distance a conditional set of `data` is scored by (the dataset's headline metric)."""
    return headline_metrics().get(data, "sliced_w2")


def _keyed(cond: pd.DataFrame, metric: str, keys: list[str]) -> dict:
    return {tuple(row[k] for k in keys): row for _, row in _metric(cond, metric).iterrows()}


def guided_table(cond: pd.DataFrame) -> pd.DataFrame:
    """One row per guided set: source, classifier, class, scale W, sampler, NFE (score evaluations; each also costs
    one classifier gradient where W > 0), the class accuracy and the class's distance, each with its interval."""
    keys = ["source", "classifier", "class", "scale"]
    guided = cond[cond["kind"] == "guided"]
    accuracy = _metric(guided, "class_accuracy")
    distances = {metric: _keyed(guided, metric, keys) for metric in {_distance(d) for d in accuracy["data"]}}
    rows = []
    for _, row in accuracy.sort_values(keys).iterrows():
        metric = _distance(row["data"])
        distance = distances[metric].get(tuple(row[k] for k in keys))
        rows.append({"source": row["source"], "classifier": row["classifier"], "class": int(row["class"]),
                     "W": row["scale"], "sampler": row["sampler"], "NFE": row["nfe"],
                     "class accuracy [95 %]": with_interval(row["value"], row["ci_low"], row["ci_high"]),
                     "per-class distance [95 %]": "—" if distance is None else
                     f"{metric} {with_interval(distance['value'], distance['ci_low'], distance['ci_high'])}",
                     "n": row["n"]})
    return pd.DataFrame(rows, columns=["source", "classifier", "class", "W", "sampler", "NFE",
                                       "class accuracy [95 %]", "per-class distance [95 %]", "n"])


def _paired(a, b, higher_is_better: bool = True) -> tuple[str, str]:
    """'difference [low, high]' of A - B and its verdict (A better than B), from the records' replicates."""
    if a["replicates"] is None or b["replicates"] is None:
        return with_interval(a["value"] - b["value"], None, None), "not computed"
    result = paired(a, b)
    return (with_interval(result["difference"], result["ci_low"], result["ci_high"]),
            verdict(result["ci_low"], result["ci_high"], lower_is_better=not higher_is_better))


def guidance_steps(cond: pd.DataFrame) -> pd.DataFrame:
    """Per source, classifier and class, each scale against the one below it: the rise in class accuracy with its
    paired 95 % interval, and whether it rises (interval above 0), falls, or is inconclusive."""
    accuracy = _metric(cond[cond["kind"] == "guided"], "class_accuracy")
    rows = []
    for (source, classifier, label), group in accuracy.groupby(["source", "classifier", "class"], sort=True):
        group = group.sort_values("scale")
        for (_, low), (_, high) in zip(group.iloc[:-1].iterrows(), group.iloc[1:].iterrows(), strict=True):
            difference, said = _paired(high, low)
            rows.append({"source": source, "classifier": classifier, "class": int(label),
                         "step": f"W {low['scale']:g} -> {high['scale']:g}", "accuracy rise [95 %]": difference,
                         "verdict": {"holds": "rises", "does not hold": "falls"}.get(said, said)})
    return pd.DataFrame(rows, columns=["source", "classifier", "class", "step", "accuracy rise [95 %]", "verdict"])


def inpaint_table(cond: pd.DataFrame) -> pd.DataFrame:
    """One row per inpainted set: source, mask, sampler, NFE, the share of completions classified as the original
    (with its interval), its difference to the same source's unconditional baseline (mask none; paired) with a
    verdict, the known pixels' largest error, and the completions' distance to the held-out split."""
    sets = cond[cond["kind"] == "inpaint"]
    accuracy = _metric(sets, "class_accuracy")
    baseline = {row["source"]: row for _, row in accuracy[accuracy["mask"] == "none"].iterrows()}
    errors = _keyed(sets, "known_pixel_error", ["source", "mask"])
    distances = {metric: _keyed(sets, metric, ["source", "mask"])
                 for metric in {_distance(d) for d in accuracy["data"]}}
    rows = []
    for _, row in accuracy.sort_values(["source", "mask"]).iterrows():
        base = baseline.get(row["source"])
        if row["mask"] == "none" or base is None:
            difference, said = "—", "baseline" if row["mask"] == "none" else "no baseline (add mask none)"
        else:
            difference, said = _paired(row, base)
        metric = _distance(row["data"])
        distance = distances[metric].get((row["source"], row["mask"]))
        error = errors.get((row["source"], row["mask"]))
        rows.append({"source": row["source"], "mask": row["mask"], "sampler": row["sampler"], "NFE": row["nfe"],
                     "classified as the original [95 %]": with_interval(row["value"], row["ci_low"], row["ci_high"]),
                     "minus baseline [95 %]": difference, "verdict": said,
                     "known-pixel error": None if error is None else error["value"],
                     "distance to held-out [95 %]": "—" if distance is None else
                     f"{metric} {with_interval(distance['value'], distance['ci_low'], distance['ci_high'])}",
                     "n": row["n"]})
    return pd.DataFrame(rows, columns=["source", "mask", "sampler", "NFE", "classified as the original [95 %]",
                                       "minus baseline [95 %]", "verdict", "known-pixel error",
                                       "distance to held-out [95 %]", "n"])


def guidance_figure(cond: pd.DataFrame) -> bytes:
    """Against the guidance scale, one column per dataset: the class accuracy (top) and the class's own distance
    (bottom, log scale: per-class FD-digits or sliced W2 to the component); one line per source and class, the 95 %
    intervals as error bars (dodged a little sideways so that they do not hide each other)."""
    from cldsgm.report.figures import _png, _pyplot

    plt = _pyplot()
    guided = cond[cond["kind"] == "guided"]
    datasets = sorted(guided["data"].unique())
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.4 * len(datasets), 6.6), squeeze=False, sharex="col")
    for col, data in enumerate(datasets):
        metric = _distance(data)
        for row, name in enumerate(("class_accuracy", metric)):
            ax = axes[row, col]
            sub = _metric(guided[guided["data"] == data], name)
            series = sorted(sub.groupby(["source", "class"]).groups)
            for i, (source, label) in enumerate(series):
                group = sub[(sub["source"] == source) & (sub["class"] == label)].sort_values("scale")
                shift = (i - (len(series) - 1) / 2) * 0.04
                low = (group["value"] - group["ci_low"].fillna(group["value"])).clip(lower=0)
                high = (group["ci_high"].fillna(group["value"]) - group["value"]).clip(lower=0)
                ax.errorbar(group["scale"] + shift, group["value"], yerr=[low, high], marker="o", markersize=4,
                            capsize=3, label=f"{source}, class {int(label)}")
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(data, fontsize=10)
                ax.set_ylim(0, 1.05)
                ax.set_ylabel("share in the asked class")
                ax.legend(fontsize=7, loc="lower right")
            else:
                ax.set_yscale("log")
                ax.set_ylabel(f"per-class {metric}")
                ax.set_xlabel("guidance scale W")
    fig.suptitle("Class-conditional sampling against the guidance scale (bars: 95 % intervals)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _rgb(images: np.ndarray) -> np.ndarray:
    """uint8 [n, C, H, W] (C = 1 or 3) -> [n, H, W, 3]."""
    images = images.transpose(0, 2, 3, 1)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


MISSING_RGB = (60, 110, 220)  # the missing pixels in the 'given' row: a colour no grey digit has


def inpaint_figure(samples_dir: str | Path, images: str | Path, count: int = 12, title: str = "") -> bytes | None:
    """Three rows of `count` images: the originals, what the sampler was given (missing pixels blue), and the
    completions; None where the set is not of images or its files (the shards, mask.npy, the images) are missing."""
    from cldsgm.data.prepared import load_prepared
    from cldsgm.report.figures import _png, _pyplot
    from cldsgm.shards import load_samples

    mask_file = Path(samples_dir) / "mask.npy"
    if not mask_file.is_file() or not Path(images).is_file():
        return None
    completions = load_samples(samples_dir)[0][:count]
    if completions.ndim != 4:
        return None
    originals = load_prepared(images)[0][:len(completions)]
    mask = np.load(mask_file).astype(bool)
    known = np.broadcast_to(mask if len(mask) == 1 else mask[:len(completions)], completions.shape).all(axis=1)
    given = _rgb(originals)
    given[~known] = MISSING_RGB
    plt = _pyplot()
    fig, axes = plt.subplots(3, len(completions), figsize=(0.8 * len(completions), 2.9), squeeze=False)
    for row, (label, block) in enumerate((("original", _rgb(originals)), ("given", given),
                                          ("completed", _rgb(completions)))):
        for col, image in enumerate(block):
            axes[row, col].imshow(image, interpolation="nearest")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return _png(fig)
