"""The study report, reports/<study>/: index.html (self-contained), report.md, summary.json (every value with its
interval), metrics.json (the headline: `dvc metrics`), plots/ (`dvc plots`), CSVs and figures.

It reads only what the jobs left on disk: the JSON records (cldsgm.records.records_frame), the training runs'
loss.csv and the Snakemake benchmark files; it imports no torch. `analysis` turns records into tables and verdicts,
`figures` draws, `render` writes one ordered list of sections as HTML and as Markdown. Sections: quality against
NFE per dataset and metric (trained and oracle rows side by side), NLL, the claims the study can test with a verdict
computed from the numbers, the SSCS sigma_d sweep, conditional generation (guided and inpainted sets, `conditional`),
the papers' published numbers (CIFAR-10 studies), loss curves, sample grids, and cost.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from cldsgm.report.analysis import (
    best_samplers,
    budgets,
    cost_summary,
    cost_table,
    grid_paths,
    headline_metrics,
    loss_histories,
    nll_table,
    published_match,
    published_table,
    quality_tables,
    sample_metrics,
    sigma_sweep,
    with_interval,
    worse_with_nfe,
)
from cldsgm.report.conditional import split_conditional
from cldsgm.report.render import Figure, Section, figure_name, render_html, render_markdown, write_figures
from cldsgm.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["build_report", "published_match", "read_study", "sections", "sigma_sweep"]


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


def _claims_sections(study: dict, rows: list[dict], missing: list[dict], results: Path) -> list[Section]:
    """The papers' claims, ours, and the claims the study does not decide (with what each lacks), from
    cldsgm.report.claims.claim_rows."""
    from cldsgm.report.claims import COLUMNS
    from cldsgm.study import replicas

    frame = pd.DataFrame(rows, columns=[*COLUMNS, "key", "difference", "ci_low", "ci_high"])
    paper, ours = frame[frame["paper"] != "ours"], frame[frame["paper"] == "ours"]
    shown = [c for c in COLUMNS if c != "paper's figure"]
    out = [Section("What this study shows: the papers' claims", table=_once_per_claim(paper[COLUMNS]),
                   text=_CLAIMS_TEXT + _verdict_count(paper) + _regime(study, budgets(results, replicas(study))))]
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


def _claim_rows(study: dict, df: pd.DataFrame, curve: pd.DataFrame) -> tuple[list, list]:
    """cldsgm.report.claims.claim_rows on the study's records and its learning-curve snapshots."""
    from cldsgm.report.claims import claim_rows
    from cldsgm.study import job_table

    return claim_rows(study, job_table(study), pd.concat([df, curve]))


def split_curve(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the study's rows, its learning-curve rows: the snapshots' sets, curve-...): the quality tables are of the
    trained models; the claims decide snapshots apart (each a model of its own)."""
    curve = df["row"].astype(str).str.startswith("curve-")
    return df[~curve], df[curve]


def _conditional_sections(cond: pd.DataFrame, metrics: dict) -> list[Section]:
    """'Conditional generation': accuracy against guidance scale, its steps with paired intervals, the
    guided sets, the inpainted sets against their baseline, and inpainting grids; fills metrics['conditional']."""
    from cldsgm.report.conditional import guidance_figure, guidance_steps, guided_table, inpaint_figure, inpaint_table

    for _, row in cond.iterrows():
        metrics.setdefault("conditional", {})[f"{row['source']}/{row['row']}/{row['metric']}"] = _interval_entry(row)
    out = []
    guided = cond[cond["kind"] == "guided"]
    if not guided.empty:
        out.append(Section("Conditional generation: classifier guidance", figures=[
            Figure("conditional_guidance.png", "class accuracy against guidance scale", guidance_figure(cond))],
            table=guidance_steps(cond), text=(
                "Samples guided towards a class by a noise-conditioned classifier, s + W grad log p(y | u_t), judged "
                "by an independent classifier (digits: the FD-digits network; 2-D: the mixture's most probable "
                "component). The table compares each scale with the one below it: the sets of one source share "
                "their seed, so the interval of the rise is paired; 'rises' where it lies above 0, 'inconclusive' "
                "where it holds 0. W = 0 is unguided sampling.")))
        out.append(Section("Guided sets", level=3, table=guided_table(cond), folded=True, text=(
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
        out.append(Section("Conditional generation: inpainting", table=inpaint_table(cond), text=(
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


def sections(study: dict, df: pd.DataFrame, results: Path, curve: pd.DataFrame | None = None,
             conditional: pd.DataFrame | None = None, floors: pd.DataFrame | None = None,
             claims: tuple[list, list] | None = None) -> tuple[list[Section], dict]:
    """The report's sections, in order, and the content of metrics.json (every value with its interval). First what
    the study shows (the claims, the best sampler per budget, conditional generation), then the plots, then the long
    tables, folded. df: the records without the learning-curve rows, which come as `curve` (split_curve), without
    the conditional sets, which come as `conditional` (report.conditional.split_conditional), and without the
    floors (real data scored like a sample set), which come as `floors`. claims: (rows, undecided) of
    cldsgm.report.claims.claim_rows, where the caller has them."""
    from cldsgm.report.figures import learning_curve_figure, loss_figure, quality_figure, sampler_colours

    metrics = {"study": study["study"], "quality": {}, "nll": {}}
    curve = curve if curve is not None else df.iloc[:0]
    claim_rows, undecided = claims if claims is not None else _claim_rows(study, df, curve)
    claims_parts = _claims_sections(study, claim_rows, undecided, results)
    metrics["claims"] = {c["key"]: {k: c[k] for k in ("claim", "setting", "verdict", "difference", "ci_low",
                                                        "ci_high", "seeds (A/B)", "detectable")}
                         for c in claim_rows}
    best = best_samplers(df)
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
    plots, tables = [], []
    floor_of = {(r["data"], r["metric"]): r for _, r in floors.iterrows()} if floors is not None else {}
    for data, metric, sub, table in quality_tables(df):
        title = f"{data}: {metric} against NFE"
        floor = floor_of.get((data, metric))
        if metric == headline_metrics().get(data):
            plots.append(Figure(figure_name("quality", data, metric), title, quality_figure(
                sub, data, metric, colours, None if floor is None else float(floor["value"]))))
        note = "" if floor is None else (
            f"Floor: {with_interval(floor['value'], floor['ci_low'], floor['ci_high'])}, the {metric} of {floor['n']} "
            "real training items against the same reference: a set near it is as close to the reference as data "
            "of the law itself at that n.")
        tables.append(Section(title, level=3, table=table, folded=True, text=note))
        if floor is not None:
            metrics.setdefault("floor", {})[f"{data}/{metric}"] = _interval_entry(floor)
        for _, row in sub.iterrows():
            metrics["quality"][f"{data}/{row['source']}/{row['row']}/{metric}"] = _interval_entry(row)
    out.append(Section("Quality against NFE", figures=plots, text=(
        "The headline metric of every sample set: one panel per source (trained models, then the exact-score oracles "
        "of 2-D data), one colour per sampler throughout. Values with their intervals for every metric are in the "
        "folded tables below and in quality_<data>_<metric>.csv.")))
    out += tables
    rises = worse_with_nfe(df)
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
    out.append(Section("Negative log-likelihood", table=nll_table(df), text=(
        "CLD and PSLD give an upper bound on the NLL; where the data were drawn from a known law (the diamond), "
        "its exact NLL on the same points stands beside the estimate, with the paired gap.")))
    sweep = sigma_sweep(df, study["sampling"])
    if not sweep.empty:
        for _, row in sweep[sweep["best"] == "best"].iterrows():
            metrics.setdefault("sscs_sigma_best", {})[f"{row['source']}/{row['metric']}/{row['striding']}-nfe"
                                                      f"{row['NFE']}"] = row["sigma_d"]
        out.append(Section("SSCS precision_sigma (sigma_d) sweep", table=sweep, folded=True, text=(
            "The exponential score step with the precision of N(m, sigma_d^2) data; 0 is the point mass (first "
            "order). The best value per source is marked.")))
    if conditional is not None and not conditional.empty:  # after what the study shows, before the long tables
        at = len(claims_parts) + 1
        out[at:at] = _conditional_sections(conditional, metrics)
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
        out.append(Section("Samples", gallery=True, folded=True, figures=[
            Figure(figure_name("grid", label), label, path.read_bytes(), caption=label) for label, path in grids]))
    out.append(Section("Cost (Snakemake benchmark files)", table=cost_summary(cost_table(results)), folded=True))
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


def plot_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables `dvc plots show` draws (dvc.yaml, template .dvc/plots/series.json): one per dataset x metric for
    the trained models ('<data>_<metric>') and one for the exact-score oracles ('<data>_<metric>_oracle'), so that
    a plot holds about 10 lines; long, one line per series (source, sampler, striding) over the NFE budget, with its
    interval. Rows without a budget (the adaptive ODE) are not drawn."""
    tables = {}
    for data, metric, sub, _ in quality_tables(df):
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
    from cldsgm.records import records_frame

    study = read_study(study_path)
    results, out = Path(results), Path(out)
    if not (results / "records").is_dir():
        raise ValueError(f"no records under {results / 'records'}: is {results} a study's results folder?")
    # a row of the report is named by its variant (the sampler's name unless the study gave it another)
    df = records_frame(results / "records")
    df = df.assign(sampler=df["variant"])
    every = df
    df, conditional = split_conditional(df)  # guided and inpainted sets: their own section
    df, curve = split_curve(df)  # the tables, CSVs and claims are of the trained models, as the page
    floors = df[df["kind"] == "floor"]
    df = df[df["kind"] != "floor"]
    decided, undecided = _claim_rows(study, df, curve)
    parts, metrics = sections(study, df, results, curve, conditional, floors, (decided, undecided))
    out.mkdir(parents=True, exist_ok=True)
    for data, metric, sub, _ in quality_tables(df):  # long: one row per value, with its interval
        sub[["source", "sde", "sampler", "striding", "nfe_budget", "nfe", "value", "ci_low", "ci_high", "n"]].to_csv(
            out / f"quality_{data}_{metric}.csv", index=False)
    sweep = sigma_sweep(df, study["sampling"])
    if not sweep.empty:
        sweep.to_csv(out / "sscs_sigma_sweep.csv", index=False)
    cost_table(results).to_csv(out / "cost.csv", index=False)
    if not conditional.empty:
        from cldsgm.report.conditional import guidance_steps, guided_table, inpaint_table

        for name, table in (("conditional_guided", guided_table(conditional)),
                            ("conditional_guidance_steps", guidance_steps(conditional)),
                            ("conditional_inpaint", inpaint_table(conditional))):
            if not table.empty:
                table.to_csv(out / f"{name}.csv", index=False)
    if not every.empty:  # long format, every record
        every.drop(columns=["path", "replicates", "exact", "variance", "extra"]).to_csv(out / "records.csv",
                                                                                       index=False)
    plots = out / "plots"
    if plots.is_dir():  # only this run's tables: a dataset or metric dropped from the study goes
        shutil.rmtree(plots)
    plots.mkdir()
    for name, table in plot_tables(df).items():
        table.to_csv(plots / f"{name}.csv", index=False)
    pd.DataFrame(decided).drop(columns=["metric"], errors="ignore").to_csv(out / "claims.csv", index=False)
    pd.DataFrame(undecided, columns=["claim", "paper", "statement", "paper's figure", "what the study lacks"]).to_csv(
        out / "claims_undecided.csv", index=False)
    nll = nll_table(df)
    if not nll.empty:
        nll.to_csv(out / "nll.csv", index=False)
    title = f"cldsgm study report: {study['study']}"
    write_figures(parts, out / "figures")
    atomic_write_text(out / "report.md", render_markdown(title, study.get("description", ""), parts))
    atomic_write_json(out / "summary.json", metrics)
    atomic_write_json(out / "metrics.json", headline(metrics))
    with atomic_path(out / "index.html") as tmp:  # last: the workflow's marker that the report is whole
        tmp.write_text(render_html(title, study.get("description", ""), parts))
    return metrics
