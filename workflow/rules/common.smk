# The study: read, validated (workflow/schemas/study.schema.yaml) and expanded into the sweep table before any
# job runs. A plain `snakemake` reads params/config.yaml; `--configfile` replaces it (it is not merged into it).
import os

import yaml

from cldsgm.study import StudyError, load_study, sample_rows

DEFAULT_STUDY = "params/config.yaml"
STUDY_FILE = workflow.configfiles[-1] if workflow.configfiles else DEFAULT_STUDY
if not workflow.configfiles:
    config.update({**yaml.safe_load(open(DEFAULT_STUDY)), **config})
try:
    STUDY = load_study(dict(config), STUDY_FILE)
except StudyError as err:
    raise WorkflowError(str(err))

NAME = STUDY["study"]
RESULTS = f"results/{NAME}"
LOGS = f"logs/{NAME}"
BENCH = f"{RESULTS}/benchmarks"
ROWS = sample_rows(STUDY)
SAMPLING = STUDY["sampling"]
EVALUATION = STUDY["evaluation"]
TRACKING = STUDY["tracking"]["enabled"]
POINTS = ("diamond", "multimodal_swissroll")


wildcard_constraints:
    data=r"[a-z0-9_]+",
    split=r"train|test",
    model=r"[A-Za-z0-9_]+",
    source=r"[A-Za-z0-9_-]+",
    row=r"[a-z]+-[a-z]+(-nfe[0-9]+)?",
    part=r"[0-9]+",


def row_of(source, row):
    return next(r for r in ROWS if r["source"] == source and r["row"] == row)


def data_file(data, split, suffix="npz"):
    return f"{RESULTS}/data/{data}_{split}.{suffix}"


def parent_run():
    """The study's parent MLflow run file, an input of every job that logs (none when tracking is off)."""
    return [f"{RESULTS}/tracking/parent.json"] if TRACKING else []


def parent_flag(wildcards, input):
    return f"--parent-run {input.parent}" if TRACKING else "--no-tracking"
