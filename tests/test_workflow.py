"""The workflow as a user runs it: lint, dry runs of every study and profile, bad studies stopped before any
job, and the smoke study end to end (killed during training and rerun, a second run with nothing to do, an NFE
change that reruns only what it affects, a store that is down and then filled by `track`, the DVC round trip,
the report and the MLflow UI in a real headless Chromium)."""

import json
import re
import shutil
import subprocess
import urllib.request

import pandas as pd
import pytest
import yaml

from cldsgm.study import job_table, load_study
from cldsgm.utils.io import file_sha256

from conftest import BIN, ROOT, WORKFLOW_ENV, MlflowServer, free_port, project_copy, run_snakemake
from smoke_digest import cpu_model, digest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # the workflow end to end: Snakemake, DVC, MLflow, the browser

def _planned(output: str) -> dict:
    """Job counts per rule from the 'Job stats' table Snakemake prints before a run (dry or real)."""
    counts, table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            table = True
            continue
        if table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
                if parts[0] == "total":  # the table's last row: what follows (a real run's job lines) is not counts
                    break
    return counts


def _smoke_with_nfe(project, name: str, nfe: list[int]) -> str:
    """The smoke study with other NFE budgets, written as params/<name>.yaml (same study name: same results/)."""
    study = yaml.safe_load((project / "params" / "smoke.yaml").read_text())
    study["sampling"]["nfe"] = nfe
    (project / "params" / f"{name}.yaml").write_text(yaml.safe_dump(study))
    return f"params/{name}.yaml"


def test_lint_is_clean(tmp_path):
    done = run_snakemake(project_copy(tmp_path / "p"), "--lint")
    assert "Congratulations" in done.stdout + done.stderr


@pytest.mark.parametrize("study", ["config", "smoke", "default_v1", "samplers", "digits_width", "conditional",
                                   "cifar10_cld",
                                   "cifar10_psld",
                                   "cifar10_cld_pretrained",
                                   "cifar10_psld_pretrained"])
def test_dry_run_of_every_study(tmp_path, study):
    project = project_copy(tmp_path / "p")
    (project / "resources" / "cifar10").mkdir(parents=True)  # what a CIFAR-10 user supplies (not read by -n)
    (project / "resources" / "inception-2015-12-05.pt").write_bytes(b"stand-in: a dry run does not read it")
    (project / "resources" / "checkpoints").mkdir()
    for name in ("cld_cifar10_checkpoint_800000.pth", "psld_cifar10_sota.ckpt"):
        (project / "resources" / "checkpoints" / name).write_bytes(b"stand-in")
    done = run_snakemake(project, "-n", "--configfile", f"params/{study}.yaml")
    jobs = _planned(done.stdout)
    if study.endswith("pretrained"):  # the released weights are imported, not trained
        assert jobs["import_checkpoint"] == 1 and "train" not in jobs, jobs
        assert jobs["fid"] > jobs["sample"] == 1 and jobs["nll"] == 1, jobs  # one sampling job, a FID job per set
        return
    assert jobs["train"] >= 1 and jobs["sample"] >= 1 and jobs["report"] == 1, jobs
    if study.startswith("cifar10"):
        assert jobs["fid"] > jobs["sample"] and jobs["sample_part"] == 10 * jobs["sample"]
    if study == "conditional":  # classifiers, then a sampling job per conditional set, two evaluation jobs per group
        assert jobs["train_classifier"] == 4 and jobs["guided_sample"] + jobs["inpaint_sample"] == 50, jobs
        # groups: a source and guided class (5 x 2) or a source's inpainted sets (4); accuracy, then the distance
        assert jobs["conditional_accuracy"] == 5 * 2 + 4, jobs
        assert jobs["conditional_fd_digits"] + jobs["conditional_sample_distance"] == 5 * 2 + 4, jobs
    else:
        assert "guided_sample" not in jobs and "train_classifier" not in jobs, jobs
    if study == "config":  # the default study: one sampling job per source, under 60 jobs in all
        assert jobs["train"] == 6 and jobs["fd_digits"] > 0 and jobs["sample_distance"] > 0
        assert jobs["sample"] == len(job_table(load_study(yaml.safe_load((ROOT / "params/config.yaml").read_text()),
                                                          "config.yaml"))["sources"])
        assert jobs["total"] < 60, jobs


def test_plain_snakemake_runs_the_default_study(tmp_path):
    """`snakemake -n` with no flag at all (the README's first command): the default workflow profile
    (profiles/default) gives the cores, params/config.yaml the study."""
    project = project_copy(tmp_path / "p")
    done = run_snakemake(project, "-n")
    jobs = _planned(done.stdout)
    assert jobs["train"] == 6 and jobs["report"] == 1 and jobs["total"] < 60, jobs
    assert "cores have to be specified" not in done.stdout + done.stderr


def test_dry_run_with_the_slurm_profile(tmp_path):
    project = project_copy(tmp_path / "p")
    done = run_snakemake(project, "-n", "--profile", "workflow/profiles/slurm", "--configfile", "params/smoke.yaml")
    assert _planned(done.stdout)["train"] == 3


@pytest.mark.parametrize("case", ["misspelt", "sscs_vpsde", "gpus", "cifar_path", "inception", "released",
                                  "psld_sde", "shell_in_override", "path_in_name", "override_key", "nodes"])
def test_bad_studies_stop_before_any_job(tmp_path, case):
    project = project_copy(tmp_path / "p")
    study = yaml.safe_load((project / "params" / "smoke.yaml").read_text())
    if case == "misspelt":
        study["sampling"]["stridngs"] = study["sampling"].pop("stridings")
        expected = "sampling: Additional properties are not allowed ('stridngs' was unexpected)"
    elif case == "sscs_vpsde":
        study["sampling"]["samplers"]["vpsde"].append("sscs")
        expected = "sampling.samplers.vpsde lists 'sscs'"
    elif case == "gpus":  # one GPU per sampling job at most: more would be idle
        study["sampling"]["gpus"] = 2
        expected = "invalid study at sampling.gpus: 2 is greater than the maximum of 1"
    elif case in ("released", "psld_sde"):
        study = yaml.safe_load((project / "params" / "cifar10_psld_pretrained.yaml").read_text())
        (project / "resources" / "cifar10").mkdir(parents=True)
        (project / "resources" / "inception-2015-12-05.pt").write_bytes(b"stand-in")
        expected = ("models.cifar10_psld.checkpoint.file 'resources/checkpoints/psld_cifar10_sota.ckpt' does not "
                    "exist: download the CIFAR-10 .ckpt from the PSLD README")
        if case == "psld_sde":
            (project / "resources" / "checkpoints").mkdir()
            (project / "resources" / "checkpoints" / "psld_cifar10_sota.ckpt").write_bytes(b"stand-in")
            del study["models"]["cifar10_psld"]["checkpoint"]["sde_params"]["nu"]
            expected = "models.cifar10_psld.checkpoint.sde_params lacks ['nu']: a PSLD file does not record its SDE"
    elif case == "shell_in_override":  # a study file from someone else: its values are data, never shell code
        study["models"]["digits_cld"]["overrides"]["train.steps"] = "$(touch PWNED_SHELL)20"
        expected = ("models.digits_cld.overrides on params/train/digits_cld.yaml: invalid value at train.steps: "
                    "'$(touch PWNED_SHELL)20' is not of type 'integer'")
    elif case == "path_in_name":
        study["models"]["../x"] = study["models"].pop("digits_cld")
        expected = "invalid study at models: '../x' does not match '^[A-Za-z0-9_-]+$'"
    elif case == "override_key":
        study["models"]["diamond_cld"]["overrides"]["train.stepz"] = 5
        expected = "models.diamond_cld.overrides on params/train/toy_cld.yaml: invalid value at train: Additional"
    elif case == "nodes":  # a training over several nodes needs srun: a cluster executor
        study["models"]["diamond_cld"]["nodes"] = 2
        expected = ("the training runs diamond_cld ask for several nodes (models.<m>.nodes), which only a cluster "
                    "executor gives: run with --profile workflow/profiles/slurm")
    elif case == "cifar_path":
        study = yaml.safe_load((project / "params" / "cifar10_cld.yaml").read_text())
        expected = "data.cifar10.source 'resources/cifar10' does not exist"
    else:
        study = yaml.safe_load((project / "params" / "cifar10_cld.yaml").read_text())
        (project / "resources" / "cifar10").mkdir(parents=True)
        expected = "evaluation.fid needs the Inception weights resources/inception-2015-12-05.pt, which are missing"
    (project / "params" / "bad.yaml").write_text(yaml.safe_dump(study))
    done = run_snakemake(project, "--cores", "1", "--configfile", "params/bad.yaml", check=False)
    assert done.returncode != 0
    assert expected in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    assert "params/bad.yaml" in done.stdout + done.stderr
    assert not (project / "results").exists() and not (project / "logs").exists()
    assert not list(project.rglob("PWNED*"))


def test_override_values_reach_the_verb_as_data(tmp_path):
    """Shell metacharacters in a string override are passed literally; a nested mapping override trains."""
    project = project_copy(tmp_path / "p")
    hostile = "$(touch PWNED_1)`touch PWNED_2`; touch PWNED_3 | cat > PWNED_4 'x' \"done\""
    study = {
        "study": "inject", "tracking": {"enabled": False}, "data": {"digits": {"test_fraction": 0.2}},
        "models": {"digits_cld": {"data": "digits", "config": "params/train/digits_cld.yaml", "overrides": {
            "train.steps": 2, "train.batch_size": 16, "train.checkpoint_every": 2, "train.log_every": 1,
            "model.options": {"nf": 16, "ch_mult": [1, 2]}, "tracking.run_name": hostile}}},
        "sampling": {"num_samples": {"digits": 8}, "nfe": [2], "samplers": {"cld": ["em"]}},
        "evaluation": {"fd_digits": None, "nll": None, "fid": None},
    }
    (project / "params" / "inject.yaml").write_text(yaml.safe_dump(study))
    run_snakemake(project, "results/inject/runs/digits_cld/done.json", "--cores", "1", "--configfile",
                  "params/inject.yaml")
    assert not list(project.rglob("PWNED*"))
    config = yaml.safe_load((project / "results/inject/runs/digits_cld/config.yaml").read_text())
    assert config["tracking"]["run_name"] == hostile
    assert config["model"]["options"] == {"nf": 16, "ch_mult": [1, 2]}
    assert json.loads((project / "results/inject/runs/digits_cld/done.json").read_text())["step"] == 2


# -- the smoke study end to end (fixture `smoke` in conftest.py) ----------------------------------------------------
@pytest.mark.xdist_group("smoke")
def test_smoke_study_finishes_with_report_and_records(smoke):
    project = smoke["project"]
    metrics = json.loads((project / "reports" / "smoke" / "summary.json").read_text())
    assert metrics["study"] == "smoke" and metrics["figures"] >= 5
    quality = metrics["quality"]
    assert any(k.startswith("digits/digits_cld/sscs-uniform-nfe6/fd_digits") for k in quality)
    assert any(k.startswith("diamond/oracle-diamond-cld/ode-adaptive/sliced_w2") for k in quality)
    assert any(k.startswith("diamond/diamond_vpsde/pc-uniform-nfe5/") for k in quality)
    assert not any("vpsde/sscs" in k for k in quality)  # SSCS only for phase-space SDEs
    assert set(metrics["nll"]) == {"digits_cld/nll_bpd", "diamond_cld/nll_nats", "diamond_vpsde/nll_nats"}
    # every value with its interval; every verdict from the interval of a difference
    assert all(q["ci_low"] is not None and q["ci_low"] <= q["ci_high"] for q in quality.values())
    assert all(n["ci_low"] <= n["value"] <= n["ci_high"] for n in metrics["nll"].values())
    assert metrics["nll"]["diamond_cld/nll_nats"]["upper_bound"] and metrics["nll"]["diamond_cld/nll_nats"]["exact"]
    verdicts = {c["verdict"] for c in metrics["claims"].values()}
    assert verdicts <= {"holds", "does not hold", "inconclusive", "inconclusive (one training seed)"}
    assert "holds" in verdicts and all(c["ci_low"] is not None for c in metrics["claims"].values())
    # the smoke study's model claims rest on one training seed each: never decided
    assert metrics["claims"]["vpsde-cld-nll diamond"]["verdict"] == "inconclusive (one training seed)"
    assert {"cld-equilibrium diamond law", "cld-smooth diamond", "hsm-dsm-variance diamond_cld"} <= set(
        metrics["claims"])
    # every value inside its interval, no distance's interval below 0
    records = pd.read_csv(project / "reports" / "smoke" / "records.csv")
    bounded = records[records["ci_low"].notna()]
    assert len(bounded) >= 60
    outside = bounded[(bounded["value"] < bounded["ci_low"]) | (bounded["value"] > bounded["ci_high"])]
    assert outside.empty, outside[["source", "row", "metric", "value", "ci_low", "ci_high"]]
    distances = bounded[bounded["metric"].isin(["fd_digits", "sliced_w2", "energy", "mode_tv"])]
    assert (distances["ci_low"] >= 0).all() and (distances["value"] >= 0).all()
    assert set(records.loc[records["kind"] == "floor", "source"]) == {"floor-digits", "floor-diamond"}
    record = json.loads((project / "results/smoke/records/oracle-diamond-cld/sscs-uniform-nfe6/sliced_w2.json")
                        .read_text())
    assert record["bootstrap"]["resamples"] == 200 and len(record["bootstrap"]["replicates"]) == 200
    html = (project / "reports" / "smoke" / "index.html").read_text()
    assert "What this study shows" in html and "data:image/png;base64," in html and "seeds (A/B)" in html
    assert "Claims this study does not decide" in html and "objective dsm" in html
    assert (project / "results/smoke/benchmarks/train/digits_cld.tsv").is_file()


@pytest.mark.xdist_group("smoke")
def test_every_long_job_logs_its_progress(smoke):
    """A job's log is a file, not a terminal: lines of done / total, rate and time left, not a tqdm bar."""
    logs = smoke["project"] / "logs" / "smoke"
    expected = {"train": r"^train: (\d+)/\1 it \(100%\), .* it/s, ETA .*, loss ",
                "sample": r"^(image|points) [\w-]+: (\d+)/\2 img \(100%\), .* img/s, ETA ",
                "nll": r"^nll [\w-]+: (\d+)/\1 item \(100%\)"}
    for rule, pattern in expected.items():
        files = sorted((logs / rule).glob("*.log"))
        assert files, f"no {rule} logs"
        for log in files:
            text = log.read_text()
            assert re.search(pattern, text, re.M) and "\r" not in text, f"{log}: {text[-1500:]}"


# On another CPU model the kernels' last bits differ and the values move. Measured on this machine's AMD EPYC by
# running the smoke study again with other kernels (ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41,
# MKL_ENABLE_INSTRUCTIONS=SSE4_2, OPENBLAS_CORETYPE=Nehalem: what a CPU without AVX would run): 21 of 36 shards changed
# bytes, shard means and standard deviations moved by at most 1.0e-7 of the shard's standard deviation, record values
# by at most 1.1e-3 of their size (FD-digits; everything else below 1.1e-6). The bounds are about 20x and 100x those:
DIGEST_RTOL, DIGEST_SHARD_RTOL = 0.02, 1e-5


def digest_differences(committed: dict, ours: dict) -> dict:
    """The records and shard statistics of `ours` outside the tolerances against `committed` (empty when none)."""
    far = {}
    for key, (value, _, nfe) in committed["records"].items():
        got = ours["records"][key]
        if value is None or got[0] is None:
            same = value is got[0] is None
        else:  # 1e-9: a value of 0 may come out as a rounding error's size
            same = abs(got[0] - value) <= max(DIGEST_RTOL * abs(value), 1e-9) and got[2] == nfe
        if not same:
            far[key] = (value, got[0])
    for key, (size, mean, std) in committed["shard_stats"].items():
        got = ours["shard_stats"][key]
        allowed = DIGEST_SHARD_RTOL * max(std, 1e-12)
        if got[0] != size or abs(got[1] - mean) > allowed or abs(got[2] - std) > allowed:
            far[key] = ([size, mean, std], got)
    return far


@pytest.mark.xdist_group("smoke")
def test_smoke_values_equal_the_committed_digest(smoke):
    """Against tests/data/smoke_digest.json (made by tests/smoke_digest.py): on the CPU model that made it, sample and
    NLL shards byte for byte and record values exactly (a change of layout must not change a single number; a change
    meant to change numbers remakes the digest, and its commit says which changed); on any other CPU, every record
    value and shard statistic within the tolerances above. It never skips."""
    import torch

    committed = json.loads((ROOT / "tests" / "data" / "smoke_digest.json").read_text())
    ours = digest(smoke["project"] / "results" / "smoke")
    for kind in ("shards", "shard_stats", "records"):
        missing = sorted(set(committed[kind]) - set(ours[kind]))
        assert not missing, (kind, missing)
    assert len(committed["shards"]) == 36 and len(committed["records"]) == 65
    assert not digest_differences(committed, ours)
    same_cpu = (torch.backends.cpu.get_cpu_capability(), cpu_model()) == (committed["cpu_capability"],
                                                                          committed["cpu_model"])
    if same_cpu:
        for kind in ("shards", "records"):
            changed = {k: (v, ours[kind][k]) for k, v in committed[kind].items() if ours[kind][k] != v}
            assert not changed, (kind, changed)


def test_the_digest_tolerance_catches_a_changed_value():
    committed = json.loads((ROOT / "tests" / "data" / "smoke_digest.json").read_text())
    assert not digest_differences(committed, committed)
    key = next(k for k, v in committed["records"].items() if v[0])
    moved = json.loads(json.dumps(committed))
    moved["records"][key][0] *= 1.05  # 5 %: a change no other CPU explains
    shard = next(iter(committed["shard_stats"]))
    moved["shard_stats"][shard][1] += 1e-3 * committed["shard_stats"][shard][2]  # a mean off by 0.1 % of its spread
    assert set(digest_differences(committed, moved)) == {key, shard}


@pytest.mark.xdist_group("smoke")
def test_training_resumed_after_the_kill(smoke):
    project = smoke["project"]
    for name in smoke["killed_at"]:
        log = (project / "logs" / "smoke" / "train" / f"{name}.log").read_text()
        done = json.loads((project / "results/smoke/runs" / name / "done.json").read_text())
        assert done["ran"] < done["step"], f"{name} restarted from scratch: {log[-500:]}"


@pytest.mark.xdist_group("smoke")
def test_a_second_run_has_nothing_to_do(smoke):
    done = run_snakemake(smoke["project"], "-n", "--configfile", "params/smoke.yaml")
    assert "Nothing to be done" in done.stdout + done.stderr


@pytest.mark.xdist_group("smoke")
def test_mlflow_parent_and_child_runs(smoke):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smoke['project'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("cldsgm.role") == "study"]
    assert parent.info.status == "FINISHED"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"digits_cld", "diamond_cld", "diamond_vpsde"} <= set(children)  # training runs, logged live
    loss = client.get_metric_history(children["digits_cld"].info.run_id, "loss")
    assert [m.step for m in loss] == [5, 10, 15, 20]
    sscs = children["oracle-diamond-cld/sscs-uniform"]
    assert sscs.data.tags["sampler"] == "sscs" and sscs.data.tags["sde"] == "cld"
    assert [m.step for m in client.get_metric_history(sscs.info.run_id, "sliced_w2")] == [6]
    low, high = (client.get_metric_history(sscs.info.run_id, f"sliced_w2_{end}") for end in ("ci_low", "ci_high"))
    assert [m.step for m in low] == [6] and low[0].value <= high[0].value
    pc = children["diamond_vpsde/pc-quadratic"]
    assert [m.step for m in client.get_metric_history(pc.info.run_id, "energy")] == [5]
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.xdist_group("smoke")
def test_mlflow_runs_say_what_made_them(smoke):
    """a model-training experiment; params on every child run; the commit in MLflow's own tag; an
    evaluation run names its training run; the parent holds the study, its params and the headline metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smoke['project'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("cldsgm.role") == "study"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert all(len(r.data.tags["mlflow.source.git.commit"]) in (40, 7) or r.data.tags["mlflow.source.git.commit"]
               == "unknown" for r in [parent, *children.values()])
    assert parent.data.params["study"] == "smoke" and parent.data.params["sampling.nfe"] == "[6]"
    study_files = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert study_files == {"study/smoke.yaml", "study/resolved_study.yaml"}
    metrics = parent.data.metrics
    assert any(k.startswith("claim/") and k + "_ci_low" in metrics for k in metrics)
    # each decided comparison's verdict, as a number to chart and as words with the seeds
    assert metrics["claim/cld-equilibrium diamond law_verdict"] == 1
    assert parent.data.tags["claim/cld-equilibrium diamond law"] == "holds (seeds 1/1)"
    assert metrics["best/diamond/oracle-diamond-cld/sliced_w2"] > 0 and "nll/diamond_cld/nll_nats" in metrics
    for name, run in children.items():  # every child run has params, evaluation runs the ones that made them
        assert run.data.params, name
    pc = children["diamond_vpsde/pc-quadratic"].data
    train = children["diamond_vpsde"]
    assert {k: pc.params[k] for k in ("sampler", "striding", "nfe_budgets", "n", "seed", "precision", "shard_size",
                                      "checkpoint_step")} == {
        "sampler": "pc", "striding": "quadratic", "nfe_budgets": "5", "n": "500", "seed": "0", "precision": "fp32",
        "shard_size": "250", "checkpoint_step": "200"}
    assert len(pc.params["checkpoint_sha256"]) == 64 and len(pc.params["dataset_sha256"]) == 64
    assert pc.tags["cldsgm.training_run_id"] == pc.params["training_run_id"] == train.info.run_id
    assert "training_run_id" not in children["oracle-diamond-cld/sscs-uniform"].data.params  # an oracle: none
    assert any(k.startswith("system/cpu_utilization") for k in client.get_run(train.info.run_id).data.metrics)


def _cldsgm(cwd, *args):
    done = subprocess.run([str(BIN / "cldsgm"), *map(str, args)], cwd=cwd, env=WORKFLOW_ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.xdist_group("smoke")
def test_a_moved_study_describes_itself_and_is_reported_and_logged_from_there(smoke, tmp_path):
    """Records, manifests, tracking files and the report's CSVs store paths relative to the project root: a finished
    study copied to another folder rebuilds its report and logs every run to a new MLflow store from there, and
    nothing in it names the folder it came from."""
    from mlflow.tracking import MlflowClient

    original = smoke["project"]
    stored = [*original.glob("results/smoke/**/*.json"), *original.glob("results/smoke/**/*.yaml"),
              *original.glob("reports/smoke/*.csv")]
    assert stored and not [p for p in stored if str(original) in p.read_text()]
    moved = tmp_path / "moved"
    shutil.copytree(original, moved, ignore=shutil.ignore_patterns("mlflow.db*", "mlruns", ".snakemake"))
    shutil.rmtree(moved / "reports" / "smoke")
    _cldsgm(moved, "report", "--study", "params/smoke.yaml", "--results", "results/smoke", "--out", "reports/smoke")
    assert (moved / "reports/smoke/index.html").is_file()
    parent = "results/smoke/tracking/parent.json"
    _cldsgm(moved, "track", "--init", "--experiment", "smoke", "--uri", "sqlite:///mlflow.db", "--parent-out", parent)
    runs = [arg for run in sorted((moved / "results/smoke/runs").iterdir()) for arg in ("--run-dir", run)]
    _cldsgm(moved, "track", "--parent-run", parent, *runs, "--records", "results/smoke/records", "--artifacts",
            "reports/smoke", "--study", "params/smoke.yaml", "--summary", "results/smoke/tracking/tracked.json")
    here, there = (MlflowClient(f"sqlite:///{p / 'mlflow.db'}") for p in (original, moved))

    def metrics(client):
        exp = client.get_experiment_by_name("smoke")
        return {(r.info.run_name, k): v for r in client.search_runs([exp.experiment_id], max_results=1000)
                for k, v in r.data.metrics.items() if not k.startswith("system/")}

    assert metrics(there) == metrics(here) and len(metrics(there)) > 100
    written = [p for p in moved.rglob("*") if p.is_file() and p.suffix in {".json", ".csv", ".md", ".html"}]
    assert not [p for p in written if str(original) in p.read_text(errors="ignore")]


def _git(cwd, *args):
    done = subprocess.run(["git", *args], cwd=cwd, env=WORKFLOW_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _dvc(cwd, *args):
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=WORKFLOW_ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.xdist_group("smoke")
def test_dvc_round_trip(smoke, tmp_path):
    """commit the study's outputs, push to a local remote, delete them, pull, touch: nothing to do."""
    project = tmp_path / "clone"
    shutil.copytree(smoke["project"], project, ignore=shutil.ignore_patterns("mlflow.db*", "mlruns", ".snakemake"))
    shutil.copytree(ROOT / ".dvc", project / ".dvc", dirs_exist_ok=True)
    _git(project, "init", "-q")
    _dvc(project, "remote", "add", "--local", "-d", "test", str(tmp_path / "remote"))
    run_snakemake(project, "--cores", "1", "--configfile", "params/smoke.yaml", "--touch")
    _dvc(project, "commit", "-f", "smoke")
    _dvc(project, "push", "smoke")
    shown = json.loads(_dvc(project, "metrics", "show", "--json"))
    assert "reports/smoke/metrics.json" in json.dumps(shown)
    # the headline fits a terminal: the comparisons' differences and the verdict counts
    table = _dvc(project, "metrics", "show", "reports/smoke/metrics.json")
    assert max(map(len, table.splitlines())) < 300, table
    headline = json.loads((project / "reports/smoke/metrics.json").read_text())
    assert {"holds", "does not hold", "inconclusive"} <= set(headline) and "cld-equilibrium diamond law" in headline
    # one plot per dataset x metric (trained models and oracles apart), a line per source / sampler / striding
    plots = json.loads(_dvc(project, "plots", "show", "--json"))["data"]  # dvc.yaml's definitions (a target: raw)
    assert {"reports/smoke/plots/diamond_sliced_w2.csv", "reports/smoke/plots/diamond_sliced_w2_oracle.csv",
            "reports/smoke/plots/digits_fd_digits.csv"} <= set(plots)
    spec = plots["reports/smoke/plots/diamond_sliced_w2.csv"][0]["content"]
    assert spec["encoding"]["color"]["field"] == "series" and spec["encoding"]["x"]["field"] == "nfe"
    series = {row["series"] for row in spec["data"]["values"]}
    assert "diamond_cld sscs uniform" in series and not any(s.startswith("oracle-") for s in series)
    for path in ("results/smoke", "reports/smoke"):
        shutil.rmtree(project / path)
    _dvc(project, "pull", "smoke")
    assert (project / "results/smoke/runs/digits_cld/checkpoint.pt").is_file()
    run_snakemake(project, "--cores", "1", "--configfile", "params/smoke.yaml", "--touch")
    done = run_snakemake(project, "-n", "--configfile", "params/smoke.yaml")
    assert "Nothing to be done" in done.stdout + done.stderr

    # one trained model, not the whole study (docs/workflow.md, "One trained model"): its run and its data, then
    # another NFE
    checkpoint = project / "results/smoke/runs/diamond_cld/checkpoint.pt"
    trained = checkpoint.read_bytes()
    for path in ("results/smoke", "reports/smoke"):
        shutil.rmtree(project / path)
    _dvc(project, "pull", "results/smoke/runs/diamond_cld", "results/smoke/data")
    assert not (project / "results/smoke/runs/digits_cld").exists()  # only what was named came
    # targets before --configfile, which takes every word after it as a config file
    run_snakemake(project, "--touch", "--cores", "1", "results/smoke/runs/diamond_cld/done.json",
                  "--configfile", "params/smoke.yaml")
    done = run_snakemake(project, "--cores", "1", "results/smoke/samples/diamond_cld/rows.json",
                         "--configfile", _smoke_with_nfe(project, "smoke_nfe8", [8]))
    jobs = _planned(done.stdout + done.stderr)
    assert jobs == {"sample": 1, "total": 1}, jobs  # no data preparation, no training (sampling logs nothing to MLflow)
    assert checkpoint.read_bytes() == trained
    new_set = project / "results/smoke/samples/diamond_cld/sscs-quadratic-nfe8"
    identity = json.loads((new_set / "manifest.json").read_text())["identity"]
    assert identity["nfe_budget"] == 8 and identity["source"]["sha256"] == file_sha256(checkpoint)


def test_user_inputs_travel_with_dvc_and_a_clone_without_them_is_told_what_is_missing(tmp_path):
    """resources/ (what a CIFAR-10 user supplies) the DVC way: `dvc add`, git holds the .dvc files, `dvc
    push`; a fresh clone refuses the study naming the missing input, `dvc pull` brings it, `snakemake -n` sees it."""
    project = project_copy(tmp_path / "p")
    shutil.copytree(ROOT / ".dvc", project / ".dvc", dirs_exist_ok=True)
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    (project / "resources" / "cifar10").mkdir(parents=True)
    archive = project / "resources" / "cifar10" / "cifar-10-python.tar.gz"
    archive.write_bytes(b"stand-in archive: a dry run does not read it")
    (project / "resources" / "inception-2015-12-05.pt").write_bytes(b"stand-in weights")
    _git(project, "init", "-q")
    _dvc(project, "remote", "add", "--local", "-d", "test", str(tmp_path / "remote"))
    _dvc(project, "add", "resources/cifar10", "resources/inception-2015-12-05.pt")
    _git(project, "add", "-A")
    tracked = _git(project, "ls-files", "resources").split()
    assert sorted(tracked) == ["resources/cifar10.dvc", "resources/inception-2015-12-05.pt.dvc"]  # not the data
    _git(project, "commit", "-q", "-m", "inputs tracked by DVC")
    # with targets: a plain `dvc push` answers "Everything is up to date" while no study stage has run (DVC 3.x)
    _dvc(project, "push", "resources/cifar10.dvc", "resources/inception-2015-12-05.pt.dvc")

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(project), str(clone))
    missing = run_snakemake(clone, "-n", "--configfile", "params/cifar10_cld.yaml", check=False)
    assert missing.returncode != 0 and "resources/cifar10" in missing.stdout + missing.stderr
    _dvc(clone, "remote", "add", "--local", "-d", "test", str(tmp_path / "remote"))
    _dvc(clone, "pull", "resources/cifar10.dvc", "resources/inception-2015-12-05.pt.dvc")
    assert (clone / "resources/cifar10/cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    jobs = _planned(run_snakemake(clone, "-n", "--configfile", "params/cifar10_cld.yaml").stdout)
    assert jobs["train"] >= 1 and jobs["fid"] >= 1, jobs


@pytest.mark.xdist_group("smoke")
def test_an_nfe_change_reruns_only_what_it_affects_and_a_down_store_is_filled_later(smoke, tmp_path):
    project = smoke["project"]
    jobs = _planned(run_snakemake(project, "-n", "--configfile", _smoke_with_nfe(project, "smoke_nfe", [6, 8])).stdout)
    # new rows (em + sscs at NFE 8, 2 stridings, for digits_cld, diamond_cld and the oracle; em and PC at 7 NFE, its
    # largest budget <= 8, for diamond_vpsde) rerun the one sampling job of each of the 4 sources, which keeps the sets
    # it made; nothing else (training, data and NLL are untouched)
    assert jobs.get("sample") == 4, jobs
    assert "train" not in jobs and "prepare" not in jobs and "nll" not in jobs, jobs
    # run it with the store down: the study finishes, `track` warns and leaves its note
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    done = run_snakemake(project, "--cores", "2", "--configfile", "params/smoke_nfe.yaml", env=down, timeout=600)
    tracked = json.loads((project / "results/smoke/tracking/tracked.json").read_text())
    assert tracked["error"] and "failed" in tracked["error"], done.stdout[-2000:]
    log = (project / "logs/smoke/sample/diamond_cld.log").read_text()
    assert "em-uniform-nfe6: made 0 shard(s), kept 2" in log and "em-uniform-nfe8: made 2 shard(s), kept 0" in log, log
    # the store is back (a real server): the track rule, forced, logs what is missing
    server = MlflowServer(tmp_path / "server.db", tmp_path / "artifacts").start()
    try:
        run_snakemake(project, "--cores", "1", "--configfile", "params/smoke_nfe.yaml", "--forcerun", "track",
                   env={"MLFLOW_TRACKING_URI": server.uri})
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
        by_name = {r.info.run_name: r for r in runs}
        steps = sorted(m.step for m in client.get_metric_history(by_name["diamond_cld/em-uniform"].info.run_id,
                                                                  "sliced_w2"))
        assert steps == [6, 8]
        assert len(client.get_metric_history(by_name["digits_cld"].info.run_id, "loss")) == 4
    finally:
        server.stop()


# -- what a person looks at: headless Chromium ----------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path, *args, timeout=120):
    return subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome'}", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.xdist_group("smoke")
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_in_a_real_browser(smoke, tmp_path):
    page = tmp_path / "report.html"
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.title='images '+i.length+' loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length;});"
             "</script></body>")
    page.write_text((smoke["project"] / "reports/smoke/index.html").read_text().replace("</body>", probe))
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout
    title = dom.split("<title>")[1].split("</title>")[0].split()
    assert title[0] == "images" and int(title[1]) >= 5 and title[1] == title[3], title
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1200,3000", f"--screenshot={shot}",
              (smoke["project"] / "reports/smoke/index.html").as_uri())
    assert shot.stat().st_size > 50_000
    print(f"report screenshot: {shot}")


@pytest.mark.xdist_group("smoke")
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_mlflow_ui_shows_the_study(smoke, tmp_path):
    server = MlflowServer(smoke["project"] / "mlflow.db", tmp_path / "artifacts").start()
    try:
        with urllib.request.urlopen(f"{server.uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke",
                                    timeout=10) as response:
            exp_id = json.loads(response.read())["experiment"]["experiment_id"]
        from mlflow.tracking import MlflowClient

        (child,) = MlflowClient(server.uri).search_runs(
            [exp_id], filter_string="attributes.run_name = 'oracle-diamond-cld/sscs-uniform'")
        runs_page = f"{server.uri}/#/experiments/{exp_id}/runs"
        run_page = f"{runs_page}/{child.info.run_id}"
        dom = _chromium(tmp_path, "--virtual-time-budget=20000", "--window-size=1400,1000", "--dump-dom", runs_page,
                        timeout=180).stdout
        assert "smoke" in dom and "matching runs" in dom, dom[-2000:]  # the study's parent run, children inside
        dom = _chromium(tmp_path, "--virtual-time-budget=20000", "--window-size=1400,1000", "--dump-dom", run_page,
                        timeout=180).stdout
        assert "oracle-diamond-cld/sscs-uniform" in dom and "sliced_w2" in dom, dom[-2000:]
        shot = tmp_path / "mlflow.png"
        _chromium(tmp_path, "--virtual-time-budget=20000", "--window-size=1400,1000", f"--screenshot={shot}",
                  run_page, timeout=180)
        assert shot.stat().st_size > 20_000
        print(f"MLflow UI screenshot: {shot}")
    finally:
        server.stop()
