"""The report's numbers: records (cldsgm.records.records_frame) in; tables, verdicts and metrics out.

No plotting and no HTML here (cldsgm.report.render draws and writes). A row of the report is named by its
variant: the sampler's name, or the name a study gave a sampler with its own options (sampling.variants).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cldsgm import catalog

__all__ = ["NOISE", "SAMPLE_METRICS", "claims", "cost_table", "grid_paths", "headline_metrics", "loss_histories",
           "nll_table", "published_match", "published_table", "quality_tables", "sigma_sweep"]

NOISE = 0.10  # relative difference under which two figures are called equal ("within noise")
# the metrics of sample sets (one per dataset's evaluation), as opposed to NLL and the classifier's accuracy
SAMPLE_METRICS = tuple(dict.fromkeys(m for spec in catalog.DATASETS.values() for m in spec.metrics))


def headline_metrics() -> dict[str, str]:
    """dataset -> the metric its quality claims are judged by (the first of its evaluation's metrics)."""
    return {name: spec.metrics[0] for name, spec in catalog.DATASETS.items()}


def sample_metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["metric"].isin(SAMPLE_METRICS)] if not df.empty else df


def quality_tables(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """Per (dataset, metric): (data, metric, the records, a table source x sampler x striding against NFE budget;
    the adaptive ODE in a column of its own)."""
    out = []
    sub_all = sample_metrics(df)
    for (data, metric), sub in (sub_all.groupby(["data", "metric"]) if not sub_all.empty else []):
        budget = sub["nfe_budget"].fillna(0).astype(int)  # 0: the adaptive ODE (its NFE is in the CSVs)
        table = sub.assign(nfe_budget=budget).pivot_table(index=["source", "sde", "sampler", "striding"],
                                                          columns="nfe_budget", values="value",
                                                          aggfunc="first").reset_index()
        table.columns = [c if isinstance(c, str) else ("ODE" if c in (0, None) else f"NFE {int(c)}")
                         for c in table.columns]
        out.append((data, metric, sub, table))
    return out


def nll_table(df: pd.DataFrame) -> pd.DataFrame:
    nll = df[df["metric"].str.startswith("nll")] if not df.empty else df
    if nll.empty:
        return pd.DataFrame()
    return nll[["source", "sde", "metric", "value", "stderr", "nfe", "n"]].rename(columns={"source": "model"})


def _verdict(ours: float, theirs: float, lower_is_better: bool = True) -> str:
    if any(v is None or not math.isfinite(v) for v in (ours, theirs)):
        return "not computed"
    if abs(ours - theirs) <= NOISE * max(abs(ours), abs(theirs)):
        return "within noise"
    return "holds" if (ours < theirs) == lower_is_better else "does not hold"


def claims(df: pd.DataFrame) -> list[dict]:
    """The paper claims this study can test, each with our figures and a verdict computed from them."""
    out = []
    if df.empty:
        return out
    for data, metric in headline_metrics().items():
        sub = df[(df["data"] == data) & (df["metric"] == metric)]
        if sub.empty:
            continue
        low = sub[sub["sampler"].isin(["em", "sscs"])]["nfe_budget"].min()
        for source, group in sub[sub["nfe_budget"] == low].groupby("source"):
            for striding in catalog.STRIDINGS:
                em = group[(group["sampler"] == "em") & (group["striding"] == striding)]["value"]
                sscs = group[(group["sampler"] == "sscs") & (group["striding"] == striding)]["value"]
                if len(em) and len(sscs):
                    out.append({"claim": "SSCS beats Euler-Maruyama at low NFE (CLD paper)",
                                "setting": f"{source}, {striding}, NFE {int(low)}, {metric}",
                                "ours": f"SSCS {sscs.iloc[0]:.4g} vs EM {em.iloc[0]:.4g}",
                                "verdict": _verdict(sscs.iloc[0], em.iloc[0])})
        trained = sub[sub["kind"] == "model"]
        best = trained.groupby("sde")["value"].min()
        for other, claim in (("vpsde", "CLD beats the VPSDE baseline (CLD paper)"),
                             ("psld", "PSLD beats CLD (PSLD paper)")):
            first, second = ("psld", "cld") if other == "psld" else ("cld", "vpsde")
            if first in best and second in best:
                out.append({"claim": claim, "setting": f"{data}, best {metric} over samplers and NFE",
                            "ours": f"{first.upper()} {best[first]:.4g} vs {second.upper()} {best[second]:.4g}",
                            "verdict": _verdict(best[first], best[second])})
    for claim in ("HSM has lower loss variance than DSM (CLD paper)", "The mixed score helps (CLD paper)"):
        out.append({"claim": claim, "setting": "needs models that differ only in that choice",
                    "ours": "not tested by this study", "verdict": "not tested"})
    return out


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


def cost_table(results: Path) -> pd.DataFrame:
    """One row per Snakemake benchmark file: rule, job, seconds, peak RSS."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        try:
            bench = pd.read_csv(path, sep="\t")
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        rel = path.relative_to(results / "benchmarks")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem  # benchmarks/<rule>/<job>.tsv or <rule>.tsv
        rows.append({"rule": rule, "job": str(rel.with_suffix(""))[len(rule) + 1:] or rel.stem,
                     "seconds": float(bench["s"].iloc[0]), "max_rss_mb": float(bench.get("max_rss", [math.nan])[0])})
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb"])


def cost_summary(cost: pd.DataFrame) -> pd.DataFrame:
    if cost.empty:
        return pd.DataFrame()
    return (cost.groupby("rule")["seconds"].agg(["count", "sum", "max"]).reset_index()
            .rename(columns={"count": "jobs", "sum": "seconds (total)", "max": "seconds (longest)"}))


def loss_histories(results: Path, models) -> dict[str, pd.DataFrame]:
    """model -> its loss.csv, for the models that have one."""
    out = {}
    for name in models:
        loss_csv = results / "runs" / name / "loss.csv"
        if loss_csv.is_file():
            out[name] = pd.read_csv(loss_csv)
    return out


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
