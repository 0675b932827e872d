"""The study report, reports/<study>/: index.html (self-contained), report.md, metrics.json, CSVs and figures.

It reads only what the jobs left on disk: the JSON records (cldsgm.records.records_frame), the training runs'
loss.csv and the Snakemake benchmark files; it imports no torch. `analysis` turns records into tables and verdicts,
`figures` draws, `render` writes one ordered list of sections as HTML and as Markdown. Sections: quality against
NFE per dataset and metric (trained and oracle rows side by side), NLL, the claims the study can test with a verdict
computed from the numbers, the SSCS sigma_d sweep, the papers' published numbers (CIFAR-10 studies), loss curves,
sample grids, and cost.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cldsgm.report.analysis import (
    budgets,
    claims,
    cost_summary,
    cost_table,
    grid_paths,
    loss_histories,
    nll_table,
    published_match,
    published_table,
    quality_tables,
    sigma_sweep,
    worse_with_nfe,
)
from cldsgm.report.render import Figure, Section, figure_name, render_html, render_markdown, write_figures
from cldsgm.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["build_report", "claims", "published_match", "read_study", "sections", "sigma_sweep"]


def read_study(study_path: str | Path) -> dict:
    """The study as the workflow ran it: validated, with the schema's defaults filled in (files are not checked:
    a report may be made where the CIFAR-10 archive or the Inception weights are not)."""
    import yaml

    from cldsgm.study import load_study

    return load_study(yaml.safe_load(Path(study_path).read_text()), str(study_path), check_files=False)


def _interval_entry(row) -> dict:
    """A metrics.json entry: the value and its 95 % interval (null where there is none)."""
    def number(v):
        return None if v is None or v != v else float(v)

    return {"value": number(row["value"]), "ci_low": number(row["ci_low"]), "ci_high": number(row["ci_high"])}


def sections(study: dict, df: pd.DataFrame, results: Path) -> tuple[list[Section], dict]:
    """The report's sections, in order, and the content of metrics.json (every value with its interval)."""
    from cldsgm.report.figures import loss_figure, quality_figure
    from cldsgm.study import replicas

    metrics = {"study": study["study"], "quality": {}, "nll": {}}
    out = [Section("Quality against NFE", text=(
        f"Each value with its 95 % interval [low, high]: a basic bootstrap over the generated samples "
        f"({study['evaluation']['bootstrap']} resamples, the reference data fixed); the bars of the plots are the "
        "same intervals."))]
    for data, metric, sub, table in quality_tables(df):
        title = f"{data}: {metric} against NFE"
        out.append(Section(title, level=3, table=table, figures=[
            Figure(figure_name("quality", data, metric), title, quality_figure(sub, data, metric))]))
        for _, row in sub.iterrows():
            metrics["quality"][f"{data}/{row['source']}/{row['row']}/{metric}"] = _interval_entry(row)
    rises = worse_with_nfe(df)
    out.append(Section("Rows that get worse with more NFE", level=3, table=rises, text=(
        "A sampler row whose metric rises from one NFE budget to the next by more than the paired 95 % interval of "
        "the difference (the sets share their seed, so the comparison is paired), with what the study can say about "
        "why. A one-sided 97.5 % bound flags about 1 in 40 pairs by chance alone; an empty table means that no row "
        "gets worse beyond its interval.")))
    nll_records = df[df["metric"].str.startswith("nll")] if not df.empty else df
    for _, row in nll_records.iterrows():
        metrics["nll"][f"{row['source']}/{row['metric']}"] = {
            **_interval_entry(row), "upper_bound": row["bound"] is True,
            "exact": row["exact"]["value"] if isinstance(row["exact"], dict) else None}
    out.append(Section("Negative log-likelihood", table=nll_table(df), text=(
        "CLD and PSLD give an upper bound on the NLL; where the data were drawn from a known law (the diamond), "
        "its exact NLL on the same points stands beside the estimate, with the paired gap.")))
    claim_rows = claims(df, budgets(results, replicas(study)))
    metrics["claims"] = {f"{c['claim']} [{c['setting']}]": {k: c[k] for k in ("verdict", "difference", "ci_low",
                                                                                 "ci_high")} for c in claim_rows}
    shown = ["claim", "setting", "A", "B", "A - B [95 %]", "seeds (A/B)", "budget (A; B)", "verdict"]
    out.append(Section("Paper claims", text=(
        "Each claim compares A with B (lower is better). The interval of A - B is a basic bootstrap interval over the "
        "generated samples (paired where the two sets share their seeds) and, for models trained with several seeds, "
        "over the seeds too: the claim holds where it lies below 0, does not hold where it lies above 0, and is "
        "inconclusive where it holds 0."), table=pd.DataFrame(claim_rows, columns=[*shown, "difference", "ci_low",
                                                                                    "ci_high"])[shown]))
    sweep = sigma_sweep(df, study["sampling"])
    if not sweep.empty:
        for _, row in sweep[sweep["best"] == "best"].iterrows():
            metrics.setdefault("sscs_sigma_best", {})[f"{row['source']}/{row['metric']}/{row['striding']}-nfe"
                                                      f"{row['NFE']}"] = row["sigma_d"]
        out.append(Section("SSCS precision_sigma (sigma_d) sweep", table=sweep, text=(
            "The exponential score step with the precision of N(m, sigma_d^2) data; 0 is the point mass (first "
            "order). The best value per source is marked.")))
    if "cifar10" in study["data"]:
        out.append(Section("Published numbers (CIFAR-10)", table=published_table(df)))
    if not study["evaluation"].get("fid"):
        out.append(Section("Not computed", items=[
            "FID/KID: not computed in this study (evaluation.fid is off, or no Inception weights)."]))
    runs = loss_histories(results, study["models"])
    if runs:
        out.append(Section("Training loss", figures=[Figure("training_loss.png", "training loss", loss_figure(runs))]))
    grids = grid_paths(df)
    if grids:
        out.append(Section("Samples", gallery=True, figures=[
            Figure(figure_name("grid", label), label, path.read_bytes(), caption=label) for label, path in grids]))
    out.append(Section("Cost (Snakemake benchmark files)", table=cost_summary(cost_table(results))))
    metrics["figures"] = sum(len(s.figures) for s in out)
    return out, metrics


def build_report(study_path: str | Path, results: str | Path, out: str | Path) -> dict:
    """Write reports/<study>/ from the study's records; return the metrics.json content."""
    from cldsgm.records import records_frame

    study = read_study(study_path)
    results, out = Path(results), Path(out)
    if not (results / "records").is_dir():
        raise ValueError(f"no records under {results / 'records'}: is {results} a study's results folder?")
    # a row of the report is named by its variant (the sampler's name unless the study gave it another)
    df = records_frame(results / "records")
    df = df.assign(sampler=df["variant"])
    parts, metrics = sections(study, df, results)
    out.mkdir(parents=True, exist_ok=True)
    for data, metric, sub, _ in quality_tables(df):  # long: one row per value, with its interval
        sub[["source", "sde", "sampler", "striding", "nfe_budget", "nfe", "value", "ci_low", "ci_high", "n"]].to_csv(
            out / f"quality_{data}_{metric}.csv", index=False)
    sweep = sigma_sweep(df, study["sampling"])
    if not sweep.empty:
        sweep.to_csv(out / "sscs_sigma_sweep.csv", index=False)
    cost_table(results).to_csv(out / "cost.csv", index=False)
    if not df.empty:  # long format: what `dvc plots` draws (x = nfe, y = value)
        df.drop(columns=["path", "replicates", "exact", "variance"]).to_csv(out / "records.csv", index=False)
    from cldsgm.study import replicas

    pd.DataFrame(claims(df, budgets(results, replicas(study)))).to_csv(out / "claims.csv", index=False)
    nll = nll_table(df)
    if not nll.empty:
        nll.to_csv(out / "nll.csv", index=False)
    title = f"cldsgm study report: {study['study']}"
    write_figures(parts, out / "figures")
    atomic_write_text(out / "report.md", render_markdown(title, study.get("description", ""), parts))
    atomic_write_json(out / "metrics.json", metrics)
    with atomic_path(out / "index.html") as tmp:  # last: the workflow's marker that the report is whole
        tmp.write_text(render_html(title, study.get("description", ""), parts))
    return metrics
