# The study: read, validated (workflow/schemas/study.schema.yaml) and expanded into its job table by
# cldsgm.study before any job runs; this file only maps that table to paths and command-line flags. A plain
# `snakemake` reads params/config.yaml; `--configfile` replaces it (it is not merged into it).
import json
import os
import shlex

import yaml

from cldsgm import catalog
from cldsgm.config import override_argument
from cldsgm.study import StudyError, job_table, load_study, nll_items
from cldsgm.tracking.store import sqlite_path, tracking_uri

DEFAULT_STUDY = "params/config.yaml"
STUDY_FILE = workflow.configfiles[-1] if workflow.configfiles else DEFAULT_STUDY
if not workflow.configfiles:
    config.update({**yaml.safe_load(open(DEFAULT_STUDY)), **config})
try:
    STUDY = load_study(dict(config), STUDY_FILE)
    TABLE = job_table(STUDY)
except StudyError as err:
    raise WorkflowError(str(err))

NAME = STUDY["study"]
RESULTS = f"results/{NAME}"
LOGS = f"logs/{NAME}"
BENCH = f"{RESULTS}/benchmarks"
ROWS = TABLE["rows"]
SOURCES = TABLE["sources"]
TRAINED, IMPORTED = TABLE["trained"], TABLE["imported"]
MULTINODE = TABLE["multinode"]  # trained over several nodes: the rule train_nodes (train.smk)
SAMPLING = STUDY["sampling"]
SHARDED = SAMPLING["shard_jobs"] > 1  # a sampling job per slice, then a gathering step (sample.smk)
EVALUATION = STUDY["evaluation"]
TRACKING = STUDY["tracking"]["enabled"]
FID = EVALUATION.get("fid") or {}
NLL = EVALUATION.get("nll") or {}


wildcard_constraints:
    data=r"[a-z0-9_]+",
    split=r"train|test",
    model=r"[A-Za-z0-9_-]+",
    source=r"[A-Za-z0-9_-]+",
    row=r"[a-z][a-z0-9_]*(-[a-z][a-z0-9]*)?-[a-z]+(-nfe[0-9]+)?(-step[0-9]+)?",
    part=r"[0-9]+",
    law=r"law-[a-z0-9_]+-[a-z0-9]+",


def model_of(run):
    """The study model (its spec) a training run (a replica name, see cldsgm.study.replicas) belongs to."""
    return STUDY["models"][TABLE["replicas"][run]["model"]]


def flag(name, value):
    """One command-line flag with its value shell-quoted: a study file is data and never reaches a shell as code."""
    return f"{name} {shlex.quote(str(value))}"


def set_flags(dotted):
    """`--set KEY=VALUE` per override, each value written as one line of YAML (what `--set` reads) and quoted."""
    return " ".join(f"--set {shlex.quote(override_argument(key, value))}" for key, value in dotted.items())


def label_flags(**labels):
    """What a record says about itself (cldsgm.records): the names only the study knows."""
    return " ".join(flag("--label", f"{key}={value}") for key, value in labels.items())


def data_file(data, split, suffix="npz"):
    return f"{RESULTS}/data/{data}_{split}.{suffix}"


def parent_run():
    """The study's parent MLflow run file, an input of every job that logs (none when tracking is off)."""
    return [f"{RESULTS}/tracking/parent.json"] if TRACKING else []


def parent_flag(wildcards, input):
    return flag("--parent-run", input.parent) if TRACKING else "--no-tracking"


# -- used by data.smk --------------------------------------------------------------------------------------------


def prepare_flags(wildcards):
    spec, dataset = STUDY["data"][wildcards.data], catalog.DATASETS[wildcards.data]
    flags = []
    if "source" in spec:
        flags.append(flag("--source", spec["source"]))
    if dataset.generator is not None:
        flags.append(flag("--n", spec.get("n_train" if wildcards.split == "train" else "n_test", 10000)))
    if "test_fraction" in spec:
        flags.append(flag("--test-fraction", spec["test_fraction"]))
    if "resolution" in spec:
        flags.append(flag("--resolution", spec["resolution"]))
    return " ".join(flags)


# -- used by train.smk -------------------------------------------------------------------------------------------


def train_flags(wildcards, input):
    seed = TABLE["replicas"][wildcards.model]["seed"]  # the replica's training seed (the study's by default)
    return set_flags({**(model_of(wildcards.model).get("overrides") or {}), "data.path": input.data, "seed": seed})


def train_launcher(wildcards, resources, threads):
    """torchrun for several GPUs on one node (one worker per GPU, threads shared), else plain python; a job over
    several nodes starts one torchrun per node through srun, which meet (c10d) on the job's first node, where the
    batch script runs."""
    model = model_of(wildcards.model)
    gpus, nodes = int(model["gpus"]), int(model["nodes"])
    if nodes > 1:
        workers = max(gpus, 1)
        # a port per job, so that two jobs whose first node is the same do not meet each other
        return (f"OMP_NUM_THREADS={max(1, threads // workers)} srun --nodes={nodes} --ntasks-per-node=1 "
                f"--cpus-per-task={threads} --kill-on-bad-exit=1 torchrun --nnodes={nodes} "
                f"--nproc-per-node={workers} --rdzv-backend=c10d --rdzv-id=$SLURM_JOB_ID "
                "--rdzv-endpoint=$(hostname):$((29400 + SLURM_JOB_ID % 1000)) -m cldsgm")
    if gpus > 1:
        return (f"OMP_NUM_THREADS={max(1, threads // gpus)} torchrun --standalone --nnodes=1 "
                f"--nproc_per_node={gpus} -m cldsgm")
    return "cldsgm"


def train_gres(wildcards):
    """`--gres=gpu:N` (N per node) for a job over several nodes, whose `--gpus` would be a total over them."""
    model = model_of(wildcards.model)
    return f"gpu:{model['gpus']}" if model["nodes"] > 1 and model["gpus"] else ""


def train_done(model):
    return f"{RESULTS}/runs/{model}/done.json"


def train_priority(wildcards):
    """Image models first (the longest jobs: on 2 cores the digits trainings are the critical path), then point
    models; every evaluation job waits at priority 0 (docs/workflow.md, "Cost of the default study": 14:20
    without, at 4000 steps; 10:43 with, at 3000)."""
    return 2 if catalog.DATASETS[model_of(wildcards.model)["data"]].kind == "image" else 1


def on_cluster():
    """Whether the jobs run elsewhere (a cluster executor such as SLURM's), not on this machine."""
    plugin = workflow.executor_plugin
    return plugin is not None and not plugin.common_settings.local_exec


def check_store_for_executor():
    """Before any job is submitted (onstart): jobs on other machines (SLURM) must not write a SQLite store, whose
    locking over a cluster's network file system is the textbook way to corrupt it. One line says what to do."""
    if not on_cluster() or not TRACKING:
        return
    uri = tracking_uri(STUDY["tracking"]["uri"])  # $MLFLOW_TRACKING_URI first, as every job reads it
    if sqlite_path(uri) is not None:
        raise WorkflowError(
            f"the MLflow store {uri} is a SQLite file, which jobs on other nodes would corrupt; start a server on "
            "this node (`mlflow server --backend-store-uri sqlite:///$PWD/mlflow.db --host 0.0.0.0 --port 5000`, "
            "docs/cluster.md) and `export MLFLOW_TRACKING_URI=http://$(hostname):5000`, or set "
            "tracking.enabled: false in the study")


def check_nodes_for_executor():
    """Before any job runs (onstart): a training job over several nodes needs a cluster executor (srun)."""
    if MULTINODE and not on_cluster():
        raise WorkflowError(
            f"{STUDY_FILE}: the training runs {', '.join(MULTINODE)} ask for several nodes (models.<m>.nodes), "
            "which only a cluster executor gives: run with --profile workflow/profiles/slurm (docs/cluster.md), or "
            "set nodes: 1")


def one_of(names):
    """A wildcard pattern matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(names) if names else "(?!)"


def import_flags(wildcards):
    model = model_of(wildcards.model)
    params = (model["checkpoint"].get("sde_params") or {}).items()
    flags = [flag("--format", model["checkpoint"]["format"]), *(flag("--sde-param", f"{k}={v}") for k, v in params)]
    return " ".join([*flags, set_flags(model.get("overrides") or {})])


# -- used by sample.smk ------------------------------------------------------------------------------------------


def source_args(wildcards):
    """The flags `cldsgm sample-rows` shares across the sample sets of one source."""
    src = SOURCES[wildcards.source]
    if src["kind"] == "model":
        args = [flag("--run-dir", f"{RESULTS}/runs/{wildcards.source}"), flag("--net-batch", SAMPLING["net_batch"])]
    else:
        args = [flag("--oracle", src["oracle"]), flag("--sde", src["sde"])]
    return " ".join([*args, flag("--seed", STUDY["seed"]), flag("--t-min", SAMPLING["t_min"]),
                     flag("--batch-size", SAMPLING["batch_size"]), flag("--shard-size", SAMPLING["shard_size"]),
                     flag("--precision", SAMPLING["precision"]),
                     *(flag("--speedup", name) for name in SAMPLING["speedups"])])


def row_spec(row):
    """One sample set as `sample-rows` reads it (JSON, keys in a stable order: the param string is a rerun trigger)."""
    spec = {"out": f"{RESULTS}/samples/{row['source']}/{row['row']}", "sampler": row["sampler"],
            "n": row["num_samples"], "options": dict(sorted(row["options"].items())),
            "labels": {"source": row["source"], "row": row["row"], "variant": row["variant"], "data": row["data"],
                       "kind": row["kind"], **replica_labels(row)}}
    if not catalog.SAMPLERS[row["sampler"]].adaptive:
        spec.update(nfe=row["nfe"], striding=row["striding"])
    if row.get("train_step"):  # a learning-curve row: a snapshot of the run
        spec["checkpoint"] = snapshot_file(row["source"], row["train_step"])
    return json.dumps(spec, sort_keys=True)


def row_flags(wildcards):
    return " ".join(flag("--row", row_spec(r)) for r in source_rows(wildcards.source))


def replica_labels(row):
    """model and seed of a training replica (nothing for an oracle source)."""
    return {"model": row["model"], "seed": row["train_seed"]} if row["kind"] == "model" else {}


def snapshot_file(source, step):
    return f"{RESULTS}/runs/{source}/snapshots/step_{step}.pt"


def sample_inputs(wildcards):
    return [train_done(wildcards.source)] if SOURCES[wildcards.source]["kind"] == "model" else []


def gathered_parts(wildcards):
    if not SHARDED:
        return sample_inputs(wildcards)
    return [f"{RESULTS}/samples/{wildcards.source}/parts/{k}.json" for k in range(SAMPLING["shard_jobs"])]


def samples_done(source):
    """The marker of a source's sample sets (each set also has its own DIR/done.json)."""
    return f"{RESULTS}/samples/{source}/rows.json"


def source_rows(source):
    return [r for r in ROWS if r["source"] == source]


# -- used by evaluate.smk ----------------------------------------------------------------------------------------


def source_samples(wildcards):
    """The done-marker of the sample sets of one source (trained model or oracle)."""
    return [samples_done(wildcards.source)]


def eval_pairs(wildcards):
    """--samples DIR --out DIR for every sample set of the source: one evaluation process per source."""
    pairs = []
    for r in source_rows(wildcards.source):
        pairs += [flag("--samples", f"{RESULTS}/samples/{r['source']}/{r['row']}"),
                  flag("--out", f"{RESULTS}/records/{r['source']}/{r['row']}")]
    return " ".join(pairs)


def distance_data(wildcards):
    return data_file(SOURCES[wildcards.source]["data"], "test")


def distance_oracle(wildcards):
    """The data law to measure mode coverage against, where it has few modes."""
    return mode_law_flag(SOURCES[wildcards.source]["data"])


def mode_law_flag(data):
    """--oracle LAW for a dataset whose law has few modes (mode coverage is measured against it), else nothing."""
    spec = catalog.DATASETS[data]
    return flag("--oracle", spec.oracle) if spec.modes else ""


def nll_flags(wildcards):
    keys = {"probes": "--probes", "n_probes": "--n-probes", "rtol": "--rtol", "atol": "--atol",
            "batch_size": "--batch-size"}
    items = nll_items(STUDY, model_of(wildcards.model)["data"])
    sized = [flag("--num-samples", items)] if items else []
    return " ".join([*sized, *(flag(name, NLL[key]) for key, name in keys.items() if key in NLL),
                     flag("--bootstrap", EVALUATION["bootstrap"])])


def nll_exact(wildcards):
    """--exact-law for data drawn from a known law (the diamond): its exact NLL goes beside the estimate."""
    spec = catalog.DATASETS[model_of(wildcards.model)["data"]]
    return flag("--exact-law", spec.oracle) if spec.exact_law else ""


def nll_labels(wildcards):
    replica = TABLE["replicas"][wildcards.model]
    return label_flags(source=wildcards.model, row="nll", data=model_of(wildcards.model)["data"], kind="model",
                       model=replica["model"], seed=replica["seed"])


def records():
    """What the report and the track job wait for (cldsgm.study.record_files)."""
    return [f"{RESULTS}/{path}" for path in TABLE["records"]]


# -- used by properties.smk --------------------------------------------------------------------------------------


def floors_of(verb):
    """The datasets whose floor the verb measures (a wildcard pattern): the verb scoring their sample sets."""
    return one_of([data for data in TABLE["floors"] if catalog.DATASETS[data].evaluation == verb])


def property_source(wildcards):
    """--run-dir of a trained source, or --oracle and --sde of an exact score."""
    src = SOURCES[wildcards.source]
    if src["kind"] == "model":
        return flag("--run-dir", f"{RESULTS}/runs/{wildcards.source}")
    return f"{flag('--oracle', src['oracle'])} {flag('--sde', src['sde'])}"


def property_labels(source, row=None):
    """What a property's record says it is of: the source (and its model and seed for a training replica)."""
    src = SOURCES[source]
    labels = {"source": source, "data": src["data"], "kind": src["kind"]}
    if src["kind"] == "model":
        labels.update(model=src["model"], seed=src["train_seed"])
    return label_flags(**labels, **({"row": row} if row else {}))


def equilibrium_flags(wildcards):
    law = TABLE["equilibrium"][wildcards.law]
    params = [flag("--sde-param", f"{k}={v}") for k, v in law["sde_params"].items()]
    return " ".join([flag("--oracle", law["oracle"]), flag("--sde", law["sde"]), *params,
                     label_flags(source=law["name"], row="equilibrium", data=law["data"], kind="law")])


# -- used by conditional.smk -------------------------------------------------------------------------------------

CONDITIONAL = TABLE["conditional"]
CLASSIFIERS = CONDITIONAL["classifiers"]
CONDITIONAL_SETS = {f"{s['source']}/{s['row']}": s for s in CONDITIONAL["sets"]}


def classifier_done(name):
    return f"{RESULTS}/classifiers/{name}/done.json"


def conditional_set(wildcards):
    return CONDITIONAL_SETS[f"{wildcards.source}/{wildcards.crow}"]


def set_dir(spec, under="conditional"):
    """A conditional set's sample directory (under='conditional') or its records' (under='records/conditional')."""
    return f"{RESULTS}/{under}/{spec['source']}/{spec['row']}"


def conditional_dir(wildcards):
    return set_dir(conditional_set(wildcards))


def conditional_inputs(wildcards):
    """The score model's run (none for an exact score), the classifier's run, the test split an inpainting fills."""
    spec = conditional_set(wildcards)
    out = [train_done(spec["source"])] if spec["source_kind"] == "model" else []
    if spec["kind"] == "guided" and spec["classifier"] != "oracle":
        out.append(classifier_done(spec["classifier"]))
    if spec["kind"] == "inpaint":
        out.append(data_file(spec["data"], "test"))
    return out


def conditional_args(wildcards):
    """The flags of one conditional set's verb (`cldsgm sample --classifier` or `cldsgm inpaint`), every value
    quoted."""
    spec = conditional_set(wildcards)
    if spec["source_kind"] == "model":
        source = [flag("--run-dir", f"{RESULTS}/runs/{spec['source']}")]
    else:
        source = [flag("--oracle", spec["oracle"]), flag("--sde", spec["sde"])]
    common = [flag("--sampler", spec["sampler"]), flag("--striding", spec["striding"]), flag("--n", spec["n"]),
              flag("--seed", STUDY["seed"]), flag("--t-min", SAMPLING["t_min"]),
              flag("--batch-size", SAMPLING["batch_size"]), flag("--shard-size", SAMPLING["shard_size"]),
              flag("--out", conditional_dir(wildcards)), "--no-progress",
              label_flags(source=spec["source"], row=spec["row"], variant=spec["sampler"], data=spec["data"],
                          kind=spec["kind"])]
    if not catalog.SAMPLERS[spec["sampler"]].adaptive:
        common.append(flag("--nfe", spec["nfe"]))
    if spec["kind"] == "guided":
        classifier = "oracle" if spec["classifier"] == "oracle" else f"{RESULTS}/classifiers/{spec['classifier']}"
        return " ".join([*source, flag("--classifier", classifier), flag("--class", spec["class"]),
                         flag("--guidance-scale", spec["scale"]), *common])
    return " ".join([*source, flag("--images", data_file(spec["data"], "test")), flag("--mask-kind", spec["mask"]),
                     *common])


CONDITIONAL_GROUPS = CONDITIONAL["groups"]


def group_plan(wildcards):
    """How a group of conditional sets is scored (cldsgm.study.conditional_groups)."""
    return CONDITIONAL_GROUPS[f"{wildcards.source}/{wildcards.group}"]


def groups_of(verb):
    """The groups whose distance the verb measures (a wildcard pattern)."""
    return one_of(sorted({key.partition("/")[2] for key, g in CONDITIONAL_GROUPS.items()
                          if g["distance"]["verb"] == verb}))


def group_judge(wildcards):
    """The classifier that tells a group's classes: the study's FD-digits network or an exact law's components."""
    judge = group_plan(wildcards)["judge"]
    return rules.digits_classifier.output.classifier if judge == "fd_classifier" else judge


def group_inputs(wildcards):
    plan = group_plan(wildcards)
    out = [f"{set_dir(s)}/done.json" for s in plan["sets"]]
    if plan["judge"] == "fd_classifier":
        out.append(rules.digits_classifier.output.classifier)
    if plan["distance"]["split"]:
        out.append(data_file(plan["data"], plan["distance"]["split"]))
    return out


def conditional_pairs(wildcards):
    """--samples DIR --out DIR for every set of the group (one process scores them all)."""
    pairs = []
    for spec in group_plan(wildcards)["sets"]:
        pairs += [flag("--samples", set_dir(spec)), flag("--out", set_dir(spec, "records/conditional"))]
    return " ".join(pairs)


def group_reference(wildcards):
    """The distance's reference: the data split, the exact law, the class of a guided group."""
    plan = group_plan(wildcards)
    reference = plan["distance"]
    flags = [flag("--data", data_file(plan["data"], reference["split"]))] if reference["split"] else []
    flags += [flag("--oracle", reference["oracle"])] if reference["oracle"] else []
    flags += [flag("--class", reference["class"])] if reference["class"] is not None else []
    return " ".join(flags)


# -- used by report.smk ------------------------------------------------------------------------------------------


def report_outputs():
    return [f"reports/{NAME}/index.html", f"reports/{NAME}/metrics.json"]


def tracked_output():
    return [f"{RESULTS}/tracking/tracked.json"] if TRACKING else []
