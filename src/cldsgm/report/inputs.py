"""Everything the report reads from disk, in one place: the study, the records (cldsgm.records.records_frame) split
into the trained models' sets, the learning-curve snapshots, the conditional sets and the floors, the Snakemake
benchmark files, the training runs' loss.csv, config.yaml and done.json. Analysis (cldsgm.report.analysis) is
pandas in and tables out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["ReportInputs", "budgets", "cost_table", "loss_histories", "read_inputs", "split_curve"]


@dataclass
class ReportInputs:
    """What a report is made of. records: every record (long); df: the trained models' and oracles' sample sets and
    properties; curve: the learning-curve snapshots' sets; conditional: guided and inpainted sets; floors: real data
    scored like a sample set; cost: one row per benchmark file; losses: model -> loss.csv; budgets: model -> what
    one training replica cost."""

    study: dict
    results: Path
    records: pd.DataFrame
    df: pd.DataFrame
    curve: pd.DataFrame
    conditional: pd.DataFrame
    floors: pd.DataFrame
    cost: pd.DataFrame
    losses: dict
    budgets: dict


def split_curve(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the study's rows, its learning-curve rows: the snapshots' sets, curve-...): the quality tables are of the
    trained models; the claims decide snapshots apart (each a model of its own)."""
    curve = df["row"].astype(str).str.startswith("curve-")
    return df[~curve], df[curve]


def read_inputs(study: dict, results: str | Path) -> ReportInputs:
    """The inputs of a study's report from results/<study>/; ValueError when it holds no records."""
    from cldsgm.records import records_frame
    from cldsgm.report.conditional import split_conditional
    from cldsgm.study import replicas

    results = Path(results)
    if not (results / "records").is_dir():
        raise ValueError(f"no records under {results / 'records'}: is {results} a study's results folder?")
    records = records_frame(results / "records")
    records = records.assign(sampler=records["variant"])  # a row is named by its variant (the sampler's by default)
    df, conditional = split_conditional(records)  # guided and inpainted sets: their own section
    df, curve = split_curve(df)  # the tables, CSVs and claims are of the trained models
    floors = df[df["kind"] == "floor"]
    df = df[df["kind"] != "floor"]
    return ReportInputs(study, results, records, df, curve, conditional, floors, cost_table(results),
                        loss_histories(results, study["models"]), budgets(results, replicas(study)))


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


def budgets(results: Path, replicas: dict) -> dict[str, dict]:
    """model -> what one of its training replicas cost: steps, batch size, parameters, training seconds (from the
    run's config.yaml and done.json; the first replica's, the others train the same budget)."""
    import json

    import yaml

    out = {}
    for run, replica in replicas.items():
        if replica["model"] in out:
            continue
        config_path, done_path = results / "runs" / run / "config.yaml", results / "runs" / run / "done.json"
        if not config_path.is_file():
            continue
        config = yaml.safe_load(config_path.read_text())
        done = json.loads(done_path.read_text()) if done_path.is_file() else {}
        out[replica["model"]] = {"steps": config["train"]["steps"], "batch_size": config["train"]["batch_size"],
                                 "n_parameters": done.get("n_parameters"), "train_seconds": done.get("train_seconds")}
    return out


def loss_histories(results: Path, models) -> dict[str, pd.DataFrame]:
    """model -> its loss.csv, for the models that have one."""
    out = {}
    for name in models:
        loss_csv = results / "runs" / name / "loss.csv"
        if loss_csv.is_file():
            out[name] = pd.read_csv(loss_csv)
    return out


