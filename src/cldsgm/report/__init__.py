"""The study report, reports/<study>/: index.html (self-contained), report.md, metrics.json, CSVs, figures.

It reads only what the jobs left on disk: the JSON records (cldsgm.records), the training runs' loss.csv and
the Snakemake benchmark files; it imports no torch. Sections: quality against NFE per dataset and metric
(trained and oracle rows side by side), NLL, the claims the study can test with a verdict computed from the
numbers, the papers' published numbers (CIFAR-10 studies), loss curves, sample grids, and cost.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import pandas as pd
import yaml

from cldsgm.records import METRICS, read_record
from cldsgm.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["build_report", "claims", "load_records", "published_match", "sigma_sweep"]

QUALITY = {"digits": "fd_digits", "cifar10": "fid", "diamond": "sliced_w2", "multimodal_swissroll": "sliced_w2"}
NOISE = 0.10  # relative difference under which two figures are called equal ("within noise")


def load_records(results: Path) -> pd.DataFrame:
    """Every record under results/records as one row: source, row, metric, value, stderr, NFE, sampler, ..."""
    rows = []
    for path in sorted((results / "records").rglob("*.json")):
        rec = read_record(path)
        parts = path.relative_to(results / "records").parts
        source_kind = "oracle" if "oracle" in (rec.get("source") or {}) else "model"
        rows.append({"source": parts[0], "row": parts[1] if len(parts) > 2 else "", "metric": rec["metric"],
                     "value": rec["value"], "stderr": rec.get("stderr"), "nfe": rec.get("nfe"),
                     "nfe_budget": rec.get("nfe_budget"), "sampler": rec.get("sampler"),
                     "striding": rec.get("striding") or ("adaptive" if rec.get("sampler") == "ode" else None),
                     "sde": rec.get("sde"), "network": rec.get("network"), "kind": source_kind, "n": rec["n"],
                     "wall_s": rec["wall_s"], "path": str(path)})
    return pd.DataFrame(rows)


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _quality_figure(df: pd.DataFrame, data: str, metric: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (source, sampler, striding), group in df.groupby(["source", "sampler", "striding"], sort=True):
        group = group.sort_values("nfe")
        style = "--" if group["kind"].iloc[0] == "oracle" else "-"
        label = f"{source} {sampler} {striding}"
        if sampler == "ode":
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
    return _figure_png(fig)


def _loss_figure(runs: dict[str, pd.DataFrame]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, history in sorted(runs.items()):
        ax.plot(history["step"], history["loss"], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (per-sample mean)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


def _verdict(ours: float, theirs: float, lower_is_better: bool = True) -> str:
    if any(v is None or not math.isfinite(v) for v in (ours, theirs)):
        return "not computed"
    if abs(ours - theirs) <= NOISE * max(abs(ours), abs(theirs)):
        return "within noise"
    return "holds" if (ours < theirs) == lower_is_better else "does not hold"


def claims(df: pd.DataFrame, data_of: dict) -> list[dict]:
    """The paper claims this study can test, each with our figures and a verdict computed from them."""
    out = []
    if df.empty:
        return out
    df = df.assign(data=df["source"].map(data_of))
    for data, metric in QUALITY.items():
        sub = df[(df["data"] == data) & (df["metric"] == metric)]
        if sub.empty:
            continue
        low = sub[sub["sampler"].isin(["em", "sscs"])]["nfe_budget"].min()
        for source, group in sub[sub["nfe_budget"] == low].groupby("source"):
            for striding in ("uniform", "quadratic"):
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


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(v) for v in row.tolist()) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.tolist()) + "</tr>"
                   for _, row in frame.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cost(results: Path) -> pd.DataFrame:
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
    adaptive = paper["metric"].startswith("nll") or paper["sampler"] == "ode"
    if not paper["metric"].startswith("nll"):
        sub = sub[sub["sampler"] == paper["sampler"]]
        if not adaptive:
            sub = sub[sub["nfe_budget"] == paper["NFE"]]
    if sub.empty:
        return "not computed"
    hit = sub.iloc[0]
    return f"{hit['value']:.4g}" + (f" (NFE {hit['nfe']:.0f})" if adaptive and pd.notna(hit.get("nfe")) else "")


def build_report(study_path: str | Path, results: str | Path, out: str | Path) -> dict:
    """Write reports/<study>/ from the study's records; return the metrics.json content."""
    study = yaml.safe_load(Path(study_path).read_text())
    results, out = Path(results), Path(out)
    if not (results / "records").is_dir():
        raise ValueError(f"no records under {results / 'records'}: is {results} a study's results folder?")
    df = load_records(results)
    data_of = {name: model["data"] for name, model in study.get("models", {}).items()}
    for data in study.get("sampling", {}).get("oracle", {}).get("data", []):
        for sde in study["sampling"]["oracle"].get("sdes", []):
            data_of[f"oracle-{data}-{sde}"] = data
    if not df.empty:
        df["data"] = df["source"].map(data_of)
        # a sampler variant (sampling.variants) is named by its row's directory: sscsfix-quadratic-nfe20 -> sscsfix
        df["sampler"] = [row.split("-")[0] if row and row != "nll" else sampler
                         for row, sampler in zip(df["row"].fillna(""), df["sampler"], strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    sections_html, sections_md, metrics = [], [], {"study": study["study"], "quality": {}, "nll": {}}
    figures = 0

    # quality against NFE, per dataset and metric
    sample_metrics = df[df["row"].astype(bool) & (df["row"] != "nll")] if not df.empty else df
    for (data, metric), sub in (sample_metrics.groupby(["data", "metric"]) if not sample_metrics.empty else []):
        budget = sub["nfe_budget"].fillna(0).astype(int)  # 0: the adaptive ODE (its NFE is in the CSVs)
        table = sub.assign(nfe_budget=budget).pivot_table(index=["source", "sde", "sampler", "striding"],
                                                          columns="nfe_budget", values="value",
                                                          aggfunc="first").reset_index()
        table.columns = [c if isinstance(c, str) else ("ODE" if c in (0, None) else f"NFE {int(c)}")
                         for c in table.columns]
        table.to_csv(out / f"quality_{data}_{metric}.csv", index=False)
        png = _quality_figure(sub, data, metric)
        figures += 1
        title = f"{data}: {metric} against NFE"
        sections_html.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                             f"src='data:image/png;base64,{png}'/>{_html_table(table)}")
        sections_md.append(f"### {title}\n\n{_md_table(table)}")
        for _, row in sub.iterrows():
            metrics["quality"][f"{data}/{row['source']}/{row['row']}/{metric}"] = row["value"]

    # NLL
    nll = df[df["metric"].str.startswith("nll")] if not df.empty else df
    nll_table = (nll[["source", "sde", "metric", "value", "stderr", "nfe", "n"]].rename(columns={"source": "model"})
                 if not nll.empty else pd.DataFrame())
    for _, row in nll.iterrows():
        metrics["nll"][f"{row['source']}/{row['metric']}"] = row["value"]

    # claims, published numbers
    claim_rows = claims(df, data_of)
    claim_table = pd.DataFrame(claim_rows)
    published = pd.DataFrame()
    if "cifar10" in study.get("data", {}):
        from cldsgm.report.published import PUBLISHED

        published = pd.DataFrame(PUBLISHED, columns=["sde", "sampler", "NFE", "metric", "paper", "status", "source"])
        published.insert(5, "ours", [published_match(df, row) for _, row in published.iterrows()])
    missing = []
    if not (study.get("evaluation") or {}).get("fid"):
        missing.append("FID/KID: not computed in this study (evaluation.fid is off, or no Inception weights).")

    # SSCS sigma_d sweep (integrators): the best value per source
    sweep = sigma_sweep(df, study.get("sampling", {}))
    if not sweep.empty:
        sweep.to_csv(out / "sscs_sigma_sweep.csv", index=False)
        for _, row in sweep[sweep["best"] == "best"].iterrows():
            metrics.setdefault("sscs_sigma_best", {})[f"{row['source']}/{row['metric']}/{row['striding']}-nfe"
                                                      f"{row['NFE']}"] = row["sigma_d"]

    # training: loss curves; cost
    runs = {}
    for name in study.get("models", {}):
        loss_csv = results / "runs" / name / "loss.csv"
        if loss_csv.is_file():
            runs[name] = pd.read_csv(loss_csv)
    cost = _cost(results)
    out.mkdir(parents=True, exist_ok=True)
    cost.to_csv(out / "cost.csv", index=False)
    if not df.empty:  # long format: what `dvc plots` draws (x = nfe, y = value)
        df.drop(columns=["path"]).to_csv(out / "records.csv", index=False)
    cost_summary = (cost.groupby("rule")["seconds"].agg(["count", "sum", "max"]).reset_index()
                    .rename(columns={"count": "jobs", "sum": "seconds (total)", "max": "seconds (longest)"})
                    if not cost.empty else pd.DataFrame())

    # sample grids: the largest fixed-step budget of each source's first sampler
    grids = []
    for source in sorted(set(df["source"])) if not df.empty else []:
        sub = df[(df["source"] == source) & df["row"].astype(bool) & (df["sampler"] != "ode")]
        if sub.empty:
            continue
        row = sub.sort_values("nfe_budget").iloc[-1]["row"]
        grid = results / "samples" / source / row / "grid.png"
        if grid.is_file():
            grids.append((f"{source} / {row}", base64.b64encode(grid.read_bytes()).decode()))

    title = f"cldsgm study report: {study['study']}"
    body = [f"<h1>{html.escape(title)}</h1><p>{html.escape(study.get('description', ''))}</p>",
            "<h2>Quality against NFE</h2>", *sections_html,
            "<h2>Negative log-likelihood</h2>", _html_table(nll_table),
            "<h2>Paper claims</h2><p>Verdict rule: two figures within "
            f"{int(NOISE * 100)} % of each other are 'within noise'.</p>", _html_table(claim_table)]
    if not sweep.empty:
        body += ["<h2>SSCS precision_sigma (sigma_d) sweep</h2><p>The exponential score step with the precision of "
                 "N(m, sigma_d^2) data; 0 is the point mass (first order). The best value per source is marked.</p>",
                 _html_table(sweep)]
    if not published.empty:
        body += ["<h2>Published numbers (CIFAR-10)</h2>", _html_table(published)]
    if missing:
        body += ["<h2>Not computed</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul>"]
    if runs:
        png = _loss_figure(runs)
        figures += 1
        body.append(f"<h2>Training loss</h2><img alt='training loss' src='data:image/png;base64,{png}'/>")
    if grids:
        body.append("<h2>Samples</h2><div class='grids'>" + "".join(
            f"<figure><img alt='{html.escape(label)}' src='data:image/png;base64,{b64}'/><figcaption>"
            f"{html.escape(label)}</figcaption></figure>" for label, b64 in grids) + "</div>")
        figures += len(grids)
    body += ["<h2>Cost (Snakemake benchmark files)</h2>", _html_table(cost_summary)]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}.grids{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:260px}"
             "figure img{width:260px}figcaption{font-size:11px}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    markdown = "\n".join([f"# {title}\n", study.get("description", ""), "\n## Quality against NFE\n", *sections_md,
                          "\n## Negative log-likelihood\n", _md_table(nll_table), "\n## Paper claims\n",
                          _md_table(claim_table), *(["\n## Published numbers (CIFAR-10)\n", _md_table(published)]
                                                    if not published.empty else []),
                          *(["\n## Not computed\n", *[f"- {m}" for m in missing]] if missing else []),
                          "\n## Cost\n", _md_table(cost_summary)])
    metrics["claims"] = {f"{c['claim']} [{c['setting']}]": c["verdict"] for c in claim_rows}
    metrics["figures"] = figures
    claim_table.to_csv(out / "claims.csv", index=False)
    if not nll_table.empty:
        nll_table.to_csv(out / "nll.csv", index=False)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_json(out / "metrics.json", metrics)
    with atomic_path(out / "index.html") as tmp:  # last: the workflow's marker that the report is whole
        tmp.write_text(page)
    return metrics
