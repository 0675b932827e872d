"""The study report, reports/<study>/: index.html (self-contained), report.md, summary.json (every value with its
interval), metrics.json (the headline: `dvc metrics`), plots/ (`dvc plots`), CSVs and figures.

It reads only what the jobs left on disk, all of it in `inputs` (the JSON records, the training runs' loss.csv,
config.yaml and done.json, the Snakemake benchmark files); it imports no torch. `analysis` turns records into tables
and verdicts (pandas in, tables out; `report_tables` computes each table once), `figures` draws, `render` writes one
ordered list of sections as HTML and as Markdown. Sections: quality against
NFE per dataset and metric (trained and oracle rows side by side), NLL, the claims the study can test with a verdict
computed from the numbers, the SSCS sigma_d sweep, conditional generation (guided and inpainted sets, `conditional`),
the papers' published numbers (CIFAR-10 studies), loss curves, sample grids, and cost.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cldsgm.report.analysis import (
    best_samplers,
    cost_summary,
    grid_paths,
    headline_metrics,
    nll_table,
    published_match,
    published_table,
    quality_tables,
    sample_metrics,
    sigma_sweep,
    with_interval,
    worse_with_nfe,
)
from cldsgm.report.inputs import ReportInputs, read_inputs
from cldsgm.report.render import Figure, Section, figure_name, render_html, render_markdown, write_figures
from cldsgm.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["ReportTables", "build_report", "published_match", "read_study", "report_tables", "sections",
           "sigma_sweep"]


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


def _regime(study: dict, found: dict) -> str:
    """One sentence on what the claims rest on: the data, each model's training budget (`budgets`), the seeds, the
    intervals."""
    data = ", ".join(f"{name} ({spec.get('n_train', 'all')} train points)" if "n_train" in spec else name
                     for name, spec in study["data"].items())
    trained = sorted({(b["steps"], b["batch_size"]) for b in found.values()})
    seeds = sorted({len(m.get("seeds") or [study["seed"]]) for m in study["models"].values()})
    same = "the same budget for every SDE of a dataset" if len(trained) <= len(study["data"]) else "budgets differ"
    budget = "; ".join(f"{s} steps x batch {b}" for s, b in trained) or "imported"
    return (f"Regime: data {data}; training {budget} ({same}); {'/'.join(map(str, seeds))} training seed(s) per "
            f"model; {study['evaluation']['bootstrap']} bootstrap resamples of the samples.")


_CLAIMS_TEXT = (
    "Each claim compares A with B in the setting its paper states it at (lower is better unless the statement says "
    "otherwise). Values are bias-corrected estimates with their 95 % intervals; A - B is the bias-corrected "
    "difference with its interval: a basic bootstrap over the samples (paired where the two sets share their seed) "
    "for one training seed per side; for several, a t interval over the seeds' values with the samples' bootstrap "
    "variance of their mean added (the replicas share their samples' noise streams). The claim holds where the "
    "interval lies on A's side of 0, does not hold where it lies on B's, and is inconclusive where it holds 0. A "
    "claim about a method (two trained models) from one training seed per side reads 'inconclusive (one training "
    "seed)': the interval holds the samples' variation only. 'Detectable': the smallest true difference this study "
    "finds with 80 % power (≥: with one seed, the seed-to-seed spread would raise it). ")


def _verdict_count(frame: pd.DataFrame) -> str:
    """'12 comparisons: 4 hold, 1 does not hold, 7 inconclusive (5 of them from one training seed). '"""
    verdicts = frame["verdict"].value_counts()
    one_seed = int(verdicts.get("inconclusive (one training seed)", 0))
    inconclusive = int(verdicts.get("inconclusive", 0)) + one_seed
    return (f"{len(frame)} comparisons: {int(verdicts.get('holds', 0))} hold, "
            f"{int(verdicts.get('does not hold', 0))} do not hold, {inconclusive} inconclusive"
            + (f" ({one_seed} of them from one training seed per side)" if one_seed else "") + ". ")


def _once_per_claim(frame: pd.DataFrame) -> pd.DataFrame:
    """The claims table as shown: a claim's id, paper, statement and figure on its first comparison only."""
    shown = frame.reset_index(drop=True).copy()
    repeat = shown["claim"].eq(shown["claim"].shift())
    for column in ("claim", "paper", "statement", "paper's figure"):
        if column in shown:
            shown.loc[repeat, column] = ""
    return shown


def _claims_sections(study: dict, rows: list[dict], missing: list[dict], budgets: dict) -> list[Section]:
    """The papers' claims, ours, and the claims the study does not decide (with what each lacks), from
    cldsgm.report.claims.claim_rows."""
    from cldsgm.report.claims import COLUMNS

    frame = pd.DataFrame(rows, columns=[*COLUMNS, "key", "difference", "ci_low", "ci_high"])
    paper, ours = frame[frame["paper"] != "ours"], frame[frame["paper"] == "ours"]
    shown = [c for c in COLUMNS if c != "paper's figure"]
    out = [Section("What this study shows: the papers' claims", table=_once_per_claim(paper[COLUMNS]),
                   text=_CLAIMS_TEXT + _verdict_count(paper) + _regime(study, budgets))]
    if not ours.empty:
        out.append(Section("What this project adds: our claims", level=3, table=_once_per_claim(ours[shown]),
                           folded=True, text="Claims of this project (not of the papers), decided the same way: "
                           + _verdict_count(ours)))
    if missing:
        out.append(Section("Claims this study does not decide", level=3, table=pd.DataFrame(missing), folded=True,
                           text=(
            "Every claim of the catalogue (`cldsgm claims`) that this study lists or could list, with what it would "
            "need: params/claims.yaml decides the model claims with three training seeds per model.")))
    return out


def _conditional_sections(cond: pd.DataFrame, tables: ReportTables, metrics: dict) -> list[Section]:
    """'Conditional generation': accuracy against guidance scale, its steps with paired intervals, the
    guided sets, the inpainted sets against their baseline, and inpainting grids; fills metrics['conditional']."""
    from cldsgm.report.conditional import guidance_figure, inpaint_figure

    for _, row in cond.iterrows():
        metrics.setdefault("conditional", {})[f"{row['source']}/{row['row']}/{row['metric']}"] = _interval_entry(row)
    out = []
    guided = cond[cond["kind"] == "guided"]
    if not guided.empty:
        out.append(Section("Conditional generation: classifier guidance", figures=[
            Figure("conditional_guidance.png", "class accuracy against guidance scale", guidance_figure(cond))],
            table=tables.conditional["conditional_guidance_steps"], text=(
                "Samples guided towards a class by a noise-conditioned classifier, s + W grad log p(y | u_t), judged "
                "by an independent classifier (digits: the FD-digits network; 2-D: the mixture's most probable "
                "component). The table compares each scale with the one below it: the sets of one source share "
                "their seed, so the interval of the rise is paired; 'rises' where it lies above 0, 'inconclusive' "
                "where it holds 0. W = 0 is unguided sampling.")))
        out.append(Section("Guided sets", level=3, table=tables.conditional["conditional_guided"], folded=True, text=(
            "Per-class distance: FD-digits against the training split's images of the class, or sliced W2 against "
            "the mixture component's own law. NFE counts score evaluations; each also costs one classifier gradient "
            "(a forward and a backward pass) where W > 0.")))
    inpainted = cond[cond["kind"] == "inpaint"]
    if not inpainted.empty:
        grids = []
        for _, row in inpainted[inpainted["metric"] == "class_accuracy"].sort_values(["source", "mask"]).iterrows():
            images = (row["condition"] or {}).get("inpaint", {}).get("images")
            label = f"{row['source']} / {row['row']}"
            png = inpaint_figure(row["samples"], images, title=label) if images and row["samples"] else None
            if png is not None:
                grids.append(Figure(figure_name("inpaint", label), label, png))
        out.append(Section("Conditional generation: inpainting", table=tables.conditional["conditional_inpaint"], text=(
            "The known pixels' data and momentum replaced by a forward-process draw from the image after every step "
            "(the PSLD reference's method), the known pixels put back exactly at the end (known-pixel error 0). "
            "'Classified as the original': the share of completions the judge assigns the label of the image they "
            "complete; the baseline is the mask 'none' (nothing known: unconditional samples judged against the same "
            "images, same seed, so the difference is paired). Distance: FD-digits or sliced W2 of the completions "
            "against the held-out split.")))
        if grids:
            out.append(Section("Inpainting grids", level=3, figures=grids, text=(
                "Rows: the original test images, what the sampler was given (missing pixels blue), the completions "
                "(the first 12 test images of each set).")))
    return out


@dataclass
class ReportTables:
    """Every table of a report, computed once from its inputs (pandas in, tables out): the quality tables (data,
    metric, long rows, wide table), the claims (decided rows, undecided), the best sampler per budget, the rows that
    get worse with NFE, NLL, the sigma_d sweep, the cost summary, the conditional tables and dvc's plot tables."""

    quality: list
    claims: tuple[list, list]
    best: pd.DataFrame
    rises: pd.DataFrame
    nll: pd.DataFrame
    sweep: pd.DataFrame
    cost: pd.DataFrame
    conditional: dict
    plots: dict


def report_tables(inputs: ReportInputs) -> ReportTables:
    """The report's tables from its inputs, each computed once."""
    from cldsgm.report.claims import claim_rows
    from cldsgm.report.conditional import guidance_steps, guided_table, inpaint_table
    from cldsgm.study import job_table

    df, study = inputs.df, inputs.study
    quality = quality_tables(df)
    cond = inputs.conditional
    conditional = ({"conditional_guided": guided_table(cond), "conditional_guidance_steps": guidance_steps(cond),
                    "conditional_inpaint": inpaint_table(cond)} if not cond.empty else {})
    return ReportTables(quality, claim_rows(study, job_table(study), pd.concat([df, inputs.curve])), best_samplers(df),
                        worse_with_nfe(df), nll_table(df), sigma_sweep(df, study["sampling"]),
                        cost_summary(inputs.cost), conditional, plot_tables(quality))


def sections(inputs: ReportInputs, tables: ReportTables) -> tuple[list[Section], dict]:
    """The report's sections, in order, and the content of metrics.json (every value with its interval). First what
    the study shows (the claims, the best sampler per budget, conditional generation), then the plots, then the long
    tables, folded."""
    from cldsgm.report.figures import learning_curve_figure, loss_figure, quality_figure, sampler_colours

    study, df, curve, floors = inputs.study, inputs.df, inputs.curve, inputs.floors
    metrics = {"study": study["study"], "quality": {}, "nll": {}}
    claim_rows, undecided = tables.claims
    claims_parts = _claims_sections(study, claim_rows, undecided, inputs.budgets)
    metrics["claims"] = {c["key"]: {k: c[k] for k in ("claim", "setting", "verdict", "difference", "ci_low",
                                                        "ci_high", "seeds (A/B)", "detectable")}
                         for c in claim_rows}
    best = tables.best
    out = [*claims_parts, Section("Best sampler per NFE budget", table=best, folded=len(best) > 40, text=(
        "Per source and NFE budget, the row with the lowest headline metric and the runner-up, with the paired "
        "difference (runner-up minus best) and its 95 % interval: 'best' where the interval lies above 0, 'tied' "
        "where it holds 0 (then either may be used)."))]
    if not curve.empty:
        figures = []
        for (data, metric), sub in curve[curve["variant"] == "curve"].groupby(["data", "metric"]):
            if metric != headline_metrics().get(data):
                continue
            figures.append(Figure(figure_name("curve", data, metric), f"{data}: learning curve",
                                  learning_curve_figure(sub, metric)))
        out.append(Section("Learning curves", figures=figures, text=(
            f"The headline metric of each model's training snapshots, sampled with "
            f"{study['sampling']['curve']['sampler']} at NFE {study['sampling']['curve']['nfe']}, one line per "
            "training seed (bands: 95 % intervals): a model whose curve still falls at its last step is under-trained "
            "for the claims above."
            + (" The samplers compared on every snapshot are decided in the claims tables ('<model> step <s>')."
               if study["sampling"]["curve"].get("compare") else ""))))
    colours = sampler_colours(sample_metrics(df)["sampler"]) if not df.empty else {}
    plots, quality_sections = [], []
    floor_of = {(r["data"], r["metric"]): r for _, r in floors.iterrows()}
    for data, metric, sub, table in tables.quality:
        title = f"{data}: {metric} against NFE"
        floor = floor_of.get((data, metric))
        if metric == headline_metrics().get(data):
            plots.append(Figure(figure_name("quality", data, metric), title, quality_figure(
                sub, data, metric, colours, None if floor is None else float(floor["value"]))))
        note = "" if floor is None else (
            f"Floor: {with_interval(floor['value'], floor['ci_low'], floor['ci_high'])}, the {metric} of {floor['n']} "
            "real training items against the same reference: a set near it is as close to the reference as data "
            "of the law itself at that n.")
        quality_sections.append(Section(title, level=3, table=table, folded=True, text=note))
        if floor is not None:
            metrics.setdefault("floor", {})[f"{data}/{metric}"] = _interval_entry(floor)
        for _, row in sub.iterrows():
            metrics["quality"][f"{data}/{row['source']}/{row['row']}/{metric}"] = _interval_entry(row)
    out.append(Section("Quality against NFE", figures=plots, text=(
        "The headline metric of every sample set: one panel per source (trained models, then the exact-score oracles "
        "of 2-D data), one colour per sampler throughout. Values with their intervals for every metric are in the "
        "folded tables below and in quality_<data>_<metric>.csv.")))
    out += quality_sections
    rises = tables.rises
    out.append(Section("Rows that get worse with more NFE", level=3, table=rises, folded=len(rises) > 5, text=(
        "A sampler row whose metric rises from one NFE budget to the next by more than the paired 95 % interval of "
        "the difference (the sets share their seed, so the comparison is paired), with what the study can say about "
        "why. A one-sided 97.5 % bound flags about 1 in 40 pairs by chance alone; an empty table means that no row "
        "gets worse beyond its interval.")))
    from cldsgm.report.properties import property_sections

    out += property_sections(df)
    nll_records = df[df["metric"].str.startswith("nll")] if not df.empty else df
    for _, row in nll_records.iterrows():
        metrics["nll"][f"{row['source']}/{row['metric']}"] = {
            **_interval_entry(row), "upper_bound": row["bound"] is True,
            "exact": row["exact"]["value"] if isinstance(row["exact"], dict) else None}
    out.append(Section("Negative log-likelihood", table=tables.nll, text=(
        "CLD and PSLD give an upper bound on the NLL; where the data were drawn from a known law (the diamond), "
        "its exact NLL on the same points stands beside the estimate, with the paired gap.")))
    sweep = tables.sweep
    if not sweep.empty:
        for _, row in sweep[sweep["best"] == "best"].iterrows():
            metrics.setdefault("sscs_sigma_best", {})[f"{row['source']}/{row['metric']}/{row['striding']}-nfe"
                                                      f"{row['NFE']}"] = row["sigma_d"]
        out.append(Section("SSCS precision_sigma (sigma_d) sweep", table=sweep, folded=True, text=(
            "The exponential score step with the precision of N(m, sigma_d^2) data; 0 is the point mass (first "
            "order). The best value per source is marked.")))
    if not inputs.conditional.empty:  # after what the study shows, before the long tables
        at = len(claims_parts) + 1
        out[at:at] = _conditional_sections(inputs.conditional, tables, metrics)
    if "cifar10" in study["data"]:
        out.append(Section("Published numbers (CIFAR-10)", table=published_table(df)))
    if not study["evaluation"].get("fid"):
        out.append(Section("Not computed", items=[
            "FID/KID: not computed in this study (evaluation.fid is off, or no Inception weights)."]))
    if inputs.losses:
        out.append(Section("Training loss", figures=[Figure("training_loss.png", "training loss",
                                                            loss_figure(inputs.losses))]))
    grids = grid_paths(df)
    if grids:
        out.append(Section("Samples", gallery=True, folded=True, figures=[
            Figure(figure_name("grid", label), label, path.read_bytes(), caption=label) for label, path in grids]))
    out.append(Section("Cost (Snakemake benchmark files)", table=tables.cost, folded=True))
    metrics["figures"] = sum(len(s.figures) for s in out)
    return out, metrics


def headline(summary: dict) -> dict:
    """metrics.json: the few figures `dvc metrics show` / `diff` should put side by side (summary.json and the CSVs
    hold the rest): per decided comparison its difference A - B (negative: A lower), keyed by the claim and its
    setting ('cld-sscs-em diamond_cld nfe50', 'cld-vpsde-ode digits'), and how many comparisons hold, do not hold,
    are inconclusive (one training seed included)."""
    tested = {key: c for key, c in summary["claims"].items() if c["difference"] is not None}
    out = {key: round(float(c["difference"]), 6) for key, c in tested.items()}
    for verdict in ("holds", "does not hold", "inconclusive"):
        out[verdict] = sum(c["verdict"].startswith(verdict) for c in tested.values())
    return out


def plot_tables(quality: list) -> dict[str, pd.DataFrame]:
    """The tables `dvc plots show` draws (dvc.yaml, template .dvc/plots/series.json): one per dataset x metric for
    the trained models ('<data>_<metric>') and one for the exact-score oracles ('<data>_<metric>_oracle'), so that
    a plot holds about 10 lines; long, one line per series (source, sampler, striding) over the NFE budget, with its
    interval. Rows without a budget (the adaptive ODE) are not drawn."""
    tables = {}
    for data, metric, sub, _ in quality:
        sub = sub.dropna(subset=["nfe_budget"])
        oracle = sub["source"].astype(str).str.startswith("oracle-")
        for suffix, part in (("", sub[~oracle]), ("_oracle", sub[oracle])):
            if part.empty:
                continue
            series = part["source"].astype(str) + " " + part["sampler"].astype(str) + " " + part["striding"].astype(str)
            tables[f"{data}_{metric}{suffix}"] = pd.DataFrame({
                "nfe": part["nfe_budget"].astype(int), "value": part["value"], "ci_low": part["ci_low"],
                "ci_high": part["ci_high"], "series": series}).sort_values(["series", "nfe"])
    return tables


def build_report(study_path: str | Path, results: str | Path, out: str | Path) -> dict:
    """Write reports/<study>/ from the study's records; return the summary.json content (every value with its
    interval; metrics.json is its `headline`)."""
    inputs = read_inputs(read_study(study_path), results)
    tables = report_tables(inputs)
    parts, metrics = sections(inputs, tables)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for data, metric, sub, _ in tables.quality:  # long: one row per value, with its interval
        sub[["source", "sde", "sampler", "striding", "nfe_budget", "nfe", "value", "ci_low", "ci_high", "n"]].to_csv(
            out / f"quality_{data}_{metric}.csv", index=False)
    if not tables.sweep.empty:
        tables.sweep.to_csv(out / "sscs_sigma_sweep.csv", index=False)
    inputs.cost.to_csv(out / "cost.csv", index=False)
    for name, table in tables.conditional.items():
        if not table.empty:
            table.to_csv(out / f"{name}.csv", index=False)
    if not inputs.records.empty:  # long format, every record
        inputs.records.drop(columns=["path", "replicates", "exact", "variance", "extra"]).to_csv(
            out / "records.csv", index=False)
    plots = out / "plots"
    if plots.is_dir():  # only this run's tables: a dataset or metric dropped from the study goes
        shutil.rmtree(plots)
    plots.mkdir()
    for name, table in tables.plots.items():
        table.to_csv(plots / f"{name}.csv", index=False)
    decided, undecided = tables.claims
    pd.DataFrame(decided).drop(columns=["metric"], errors="ignore").to_csv(out / "claims.csv", index=False)
    pd.DataFrame(undecided, columns=["claim", "paper", "statement", "paper's figure", "what the study lacks"]).to_csv(
        out / "claims_undecided.csv", index=False)
    if not tables.nll.empty:
        tables.nll.to_csv(out / "nll.csv", index=False)
    study = inputs.study
    title = f"cldsgm study report: {study['study']}"
    write_figures(parts, out / "figures")
    atomic_write_text(out / "report.md", render_markdown(title, study.get("description", ""), parts))
    atomic_write_json(out / "summary.json", metrics)
    atomic_write_json(out / "metrics.json", headline(metrics))
    with atomic_path(out / "index.html") as tmp:  # last: the workflow's marker that the report is whole
        tmp.write_text(render_html(title, study.get("description", ""), parts))
    return metrics
