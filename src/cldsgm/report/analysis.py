"""The report's numbers: records (cldsgm.records.records_frame) in; tables, intervals, verdicts and metrics out.

No plotting and no HTML here (cldsgm.report.render draws and writes). A row of the report is named by its
variant: the sampler's name, or the name a study gave a sampler with its own options (sampling.variants). Every
value is shown with its 95 % interval; every verdict comes from the interval of a difference (cldsgm.stats), never
from point values alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from cldsgm import catalog, stats

__all__ = ["SAMPLE_METRICS", "cost_summary", "grid_paths", "headline_metrics", "nll_table",
           "paired", "published_match", "published_table", "quality_tables", "sigma_sweep", "with_interval",
           "worse_with_nfe"]

# the metrics of sample sets (one per dataset's evaluation), as opposed to NLL and the classifier's accuracy
SAMPLE_METRICS = tuple(dict.fromkeys(m for spec in catalog.DATASETS.values() for m in spec.metrics))


def headline_metrics() -> dict[str, str]:
    """dataset -> the metric its quality claims are judged by (the first of its evaluation's metrics)."""
    return {name: spec.metrics[0] for name, spec in catalog.DATASETS.items()}


def sample_metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["metric"].isin(SAMPLE_METRICS)] if not df.empty else df


def paired(a, b) -> dict:
    """A - B of two records (rows of records_frame) from their plug-in estimates and replicates (cldsgm.stats.compare:
    the bias-corrected difference and its basic interval; paired where the sets share their seed)."""
    def plug_in(row):  # frames made by hand may lack the column: a record's plug-in is its value then
        value = row.get("plug_in")
        return row["value"] if value is None or value != value else value

    return stats.compare(plug_in(a), a["replicates"], plug_in(b), b["replicates"])


def with_interval(value, low, high) -> str:
    """'0.1234 [0.1100, 0.1350]', or the value alone where it has no interval."""
    def fmt(v):
        return f"{v:.4g}"

    if value is None or value != value:
        return "—"
    if low is None or high is None or low != low or high != high:
        return fmt(value)
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def quality_tables(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """Per (dataset, metric): (data, metric, the records, a table source x sampler x striding against NFE budget,
    each cell the value with its 95 % interval; the adaptive ODE in a column of its own)."""
    out = []
    sub_all = sample_metrics(df)
    for (data, metric), sub in (sub_all.groupby(["data", "metric"]) if not sub_all.empty else []):
        budget = sub["nfe_budget"].fillna(0).astype(int)  # 0: the adaptive ODE (its NFE is in the CSVs)
        cells = sub.assign(nfe_budget=budget, cell=[with_interval(v, lo, hi) for v, lo, hi in
                                                    zip(sub["value"], sub["ci_low"], sub["ci_high"], strict=True)])
        table = cells.pivot_table(index=["source", "sde", "sampler", "striding"], columns="nfe_budget",
                                  values="cell", aggfunc="first").reset_index()
        table.columns = [c if isinstance(c, str) else ("ODE" if c in (0, None) else f"NFE {int(c)}")
                         for c in table.columns]
        out.append((data, metric, sub, table.fillna("")))
    return out


def _gap_check(exact: dict | None, n) -> str:
    """Whether the NLL's gap to the exact NLL is known to 5 %: the paired gap's standard error (the model's and the
    law's NLL on the same items, so the items' own spread cancels) against 5 % of the gap; else the items it needs."""
    if not exact or not exact.get("gap") or exact.get("gap_stderr") is None:
        return "—"
    target = 0.05 * abs(exact["gap"])
    if exact["gap_stderr"] < target:
        return "yes"
    needed = math.ceil(int(n) * (exact["gap_stderr"] / target) ** 2)
    return f"no: about {needed} items would be needed"


def nll_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per NLL record: the estimate with its interval, whether it bounds the NLL from above, the exact NLL of
    the data law on the same points where it is known, the gap and whether its standard error is under 5 % of it,
    the divergence estimator and how the items' variance splits between the data and the Hutchinson probes."""
    nll = df[df["metric"].str.startswith("nll")] if not df.empty else df
    rows = []
    for _, r in nll.iterrows():
        exact = r["exact"] if isinstance(r["exact"], dict) else None
        variance = r["variance"] if isinstance(r["variance"], dict) else {}
        options = json.loads(r["options"]) if isinstance(r["options"], str) else {}
        split = (f"data {variance['data']:.3g}, probes {variance['probes']:.3g}" if "probes" in variance
                 else "exact divergence: data only" if options.get("probes") == "exact"
                 else "one probe per item: not separated")
        rows.append({"model": r["source"], "sde": r["sde"], "metric": r["metric"],
                     "estimate [95 %]": with_interval(r["value"], r["ci_low"], r["ci_high"]),
                     "kind": "upper bound" if r["bound"] is True else "estimate", "n": r["n"],
                     "divergence": options.get("probes", "—"),
                     "exact NLL of the data law": f"{exact['value']:.4g} ± {exact['stderr']:.2g}" if exact else "—",
                     "gap (estimate - exact)": f"{exact['gap']:.4g} ± {exact['gap_stderr']:.2g}" if exact else "—",
                     "gap se < 5 % of gap": _gap_check(exact, r["n"]), "variance (data, probes)": split})
    return pd.DataFrame(rows)


def _rises(group: pd.DataFrame) -> list[tuple]:
    """(row at the smaller NFE, row at the larger, the difference larger - smaller) for consecutive budgets of one
    row family where the paired interval of the difference lies above 0 (worse beyond its interval)."""
    ordered = group.dropna(subset=["nfe_budget"]).sort_values("nfe_budget")
    out = []
    for (_, lo), (_, hi) in zip(ordered.iterrows(), ordered.iloc[1:].iterrows(), strict=False):
        if not (isinstance(lo["replicates"], list) and isinstance(hi["replicates"], list)
                and len(lo["replicates"]) == len(hi["replicates"])):
            continue
        diff = paired(hi, lo)
        if diff["ci_low"] > 0:
            out.append((lo, hi, diff))
    return out


def worse_with_nfe(df: pd.DataFrame) -> pd.DataFrame:
    """Sampler rows whose metric gets worse from one NFE budget to the next beyond the paired interval of the
    difference (sets of one source and seed share prior draws and noise, so their replicates are paired), each with
    the reason the study can give: whether the same sampler on the exact score of that data rises too."""
    sub = sample_metrics(df)
    if sub.empty:
        return pd.DataFrame()
    rows = []
    for (source, sampler, striding, metric), group in sub.groupby(["source", "sampler", "striding", "metric"]):
        for lo, hi, diff in _rises(group):
            oracle = sub[(sub["kind"] == "oracle") & (sub["data"] == lo["data"]) & (sub["sde"] == lo["sde"])
                         & (sub["sampler"] == sampler) & (sub["striding"] == striding) & (sub["metric"] == metric)]
            oracle_rises = bool(_rises(oracle))
            if lo["kind"] == "oracle":
                why = ("on the exact score, so the sampler's own: a bias that does not shrink with the step (e.g. "
                       "a corrector of fixed snr), or one of the pairs flagged by chance (about 1 in 40; a sampler "
                       "that converges falls again at the next budget)")
            elif len(oracle) and not oracle_rises:
                why = ("the network, not the sampler: the same sampler on the exact score improves with NFE here; a "
                       "sampler converges to the model's law, and a coarse grid's error can offset part of the "
                       "model's own")
            elif oracle_rises:
                why = "the sampler: it rises on the exact score too"
            else:
                why = "no exact-score row of this sampler to tell the sampler from the network"
            rows.append({"source": source, "row": f"{sampler}, {striding}", "metric": metric,
                         "NFE": f"{int(lo['nfe_budget'])} -> {int(hi['nfe_budget'])}",
                         "values": f"{lo['value']:.4g} -> {hi['value']:.4g}",
                         "increase [95 %]": with_interval(diff["difference"], diff["ci_low"], diff["ci_high"]),
                         "why": why})
    return pd.DataFrame(rows)


def sigma_sweep(df: pd.DataFrame, sampling: dict) -> pd.DataFrame:
    """SSCS rows that differ only in precision_sigma (sigma_d), per source, metric, striding and NFE, where a study
    ran at least two values: one row each, the best (lowest) marked."""
    if df.empty:
        return pd.DataFrame()
    variants, base = sampling.get("variants", {}), sampling.get("options", {}).get("sscs", {})
    sigma = {"sscs": float(base.get("precision_sigma", 0.0))}
    for name, variant in variants.items():
        extra = set(variant.get("options") or {}) - {"precision_sigma"}
        if variant["sampler"] == "sscs" and not extra:  # the same SSCS as `sscs` but for sigma_d
            sigma[name] = float(variant["options"].get("precision_sigma", 0.0))
    sub = df[df["sampler"].isin(sigma)].assign(sigma_d=lambda d: d["sampler"].map(sigma))
    rows = []
    for (source, metric, striding, nfe), group in sub.groupby(["source", "metric", "striding", "nfe_budget"]):
        if group["sigma_d"].nunique() < 2:
            continue
        best = group["value"].min()
        for _, row in group.sort_values("sigma_d").iterrows():
            rows.append({"source": source, "metric": metric, "striding": striding, "NFE": int(nfe),
                         "sigma_d": row["sigma_d"], "value": row["value"], "best": "best" if row["value"] == best
                         else ""})
    return pd.DataFrame(rows)


def published_match(df: pd.DataFrame, paper) -> str:
    """Our value for a published row (sde, sampler, NFE, metric): fixed-step samplers at the same NFE; the adaptive
    ODE and NLL whatever their NFE (ours is shown with it); 'not computed' where the study has none."""
    if df.empty:
        return "not computed"
    sub = df[(df["sde"] == paper["sde"]) & (df["metric"] == paper["metric"])]
    spec = catalog.SAMPLERS.get(paper["sampler"])  # the papers also list rows that are no sampler of ours
    adaptive = paper["metric"].startswith("nll") or (spec is not None and spec.adaptive)
    if not paper["metric"].startswith("nll"):
        sub = sub[sub["sampler"] == paper["sampler"]]
        if not adaptive:
            sub = sub[sub["nfe_budget"] == paper["NFE"]]
    if sub.empty:
        return "not computed"
    hit = sub.iloc[0]
    return f"{hit['value']:.4g}" + (f" (NFE {hit['nfe']:.0f})" if adaptive and pd.notna(hit.get("nfe")) else "")


def published_table(df: pd.DataFrame) -> pd.DataFrame:
    """The papers' CIFAR-10 numbers with ours beside each."""
    from cldsgm.report.published import PUBLISHED

    published = pd.DataFrame(PUBLISHED, columns=["sde", "sampler", "NFE", "metric", "paper", "status", "source"])
    published.insert(5, "ours", [published_match(df, row) for _, row in published.iterrows()])
    return published


def cost_summary(cost: pd.DataFrame) -> pd.DataFrame:
    if cost.empty:
        return pd.DataFrame()
    return (cost.groupby("rule")["seconds"].agg(["count", "sum", "max"]).reset_index()
            .rename(columns={"count": "jobs", "sum": "seconds (total)", "max": "seconds (longest)"}))


def grid_paths(df: pd.DataFrame) -> list[tuple[str, Path]]:
    """Per source, the preview grid of its largest fixed-step budget: (label, path), from the records' samples."""
    out = []
    sub_all = sample_metrics(df)
    for source in sorted(set(sub_all["source"])) if not sub_all.empty else []:
        sub = sub_all[(sub_all["source"] == source) & sub_all["nfe_budget"].notna() & sub_all["samples"].notna()]
        if sub.empty:
            continue
        best = sub.sort_values("nfe_budget").iloc[-1]
        grid = Path(best["samples"]) / "grid.png"
        if grid.is_file():
            out.append((f"{source} / {best['row']}", grid))
    return out


def best_samplers(df: pd.DataFrame) -> pd.DataFrame:
    """Per source and fixed NFE budget, by the dataset's headline metric: the best row, the runner-up and the paired
    difference runner-up - best with its interval; 'best' where that interval lies above 0, else 'tied'."""
    rows = []
    sub_all = sample_metrics(df)
    if sub_all.empty:
        return pd.DataFrame(rows)
    headline = headline_metrics()
    for (source, data, budget), group in sub_all[sub_all["nfe_budget"].notna()].groupby(
            ["source", "data", "nfe_budget"], sort=True):
        group = group[group["metric"] == headline.get(data)].sort_values("value")
        if group.empty:
            continue
        best = group.iloc[0]
        row = {"source": source, "NFE": int(budget), "metric": best["metric"],
               "best": f"{best['sampler']} {best['striding']} "
                       f"{with_interval(best['value'], best['ci_low'], best['ci_high'])}"}
        if len(group) > 1:
            second = group.iloc[1]
            row["runner-up"] = (f"{second['sampler']} {second['striding']} "
                                f"{with_interval(second['value'], second['ci_low'], second['ci_high'])}")
            if isinstance(best["replicates"], list) and isinstance(second["replicates"], list) and \
                    len(best["replicates"]) == len(second["replicates"]):
                diff = paired(second, best)
                row["runner-up - best [95 %]"] = with_interval(diff["difference"], diff["ci_low"], diff["ci_high"])
                row["verdict"] = "best" if diff["ci_low"] > 0 else "tied"
            else:
                row["runner-up - best [95 %]"], row["verdict"] = "—", "no interval"
        rows.append(row)
    return pd.DataFrame(rows)
