"""The SLURM profile on a live single-node cluster (tests/slurm_local.py): real slurmctld/slurmd, real sbatch/srun.

The smoke study through `snakemake --profile workflow/profiles/slurm` must give the records and sample shards of the
local run; a 2-GPU training job (fake gres, CPU/gloo) must run two torchrun ranks; a sample set split into 3 shard
jobs must give the bytes of one job; a job cancelled with scancel must be reported and redone without losing work;
a GPU request on a cluster without GPUs must fail at once with the scheduler's message. Skipped only off Debian or
without root; in CI they run.
"""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, SLURM_FAST_POLL, SLURM_PROFILE, WORKFLOW_ENV, project_copy, run_snakemake
from slurm_local import LocalSlurm

pytestmark = [pytest.mark.slow, pytest.mark.e2e,
              pytest.mark.xdist_group("smoke")]  # one cluster per machine: one xdist worker
PROFILE = (*SLURM_PROFILE, *SLURM_FAST_POLL)
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: ([^)]+)\)")
# what a record may differ in between two runs of the same study: provenance, not results
PROVENANCE = {"created", "wall_s", "host"}


def _on(cluster: LocalSlurm, gpus: int) -> LocalSlurm:
    if cluster.gpus != gpus:
        cluster.restart(gpus)
    return cluster


def _slurm_snakemake(cluster, project, *args, timeout=600, check=True, env=None):
    return run_snakemake(project, *PROFILE, *args, env={"SLURM_CONF": str(cluster.conf), **(env or {})},
                         timeout=timeout, check=check)


def _submitted(output: str) -> dict[str, str]:
    """SLURM job id -> the job's log file, from Snakemake's 'has been submitted' lines."""
    return {jobid: log for jobid, log in SUBMITTED.findall(output)}


def _mini_study(project: Path, name: str, **changes) -> str:
    """A one-model study on the diamond data (a few jobs), written as params/<name>.yaml."""
    study = {
        "study": "mini", "seed": 0, "tracking": {"enabled": False},
        "data": {"diamond": {"n_train": 2000, "n_test": 1000}},
        "models": {"diamond_cld": {"data": "diamond", "config": "params/train/toy_cld.yaml", "gpus": 0,
                                   "overrides": {"train.steps": 200, "train.checkpoint_every": 100,
                                                 "train.log_every": 20}}},
        "sampling": {"num_samples": {"diamond": 600}, "nfe": [6], "stridings": ["uniform"],
                     "samplers": {"cld": ["em"]}, "shard_size": 100, "net_batch": 64},
        "evaluation": {"fd_digits": None, "nll": None, "fid": None},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            study[section][field] = value
        else:
            study[section] = value
    (project / "params" / f"{name}.yaml").write_text(yaml.safe_dump(study))
    return f"params/{name}.yaml"


SAMPLES = "results/mini/samples/diamond_cld/em-uniform-nfe6"
ORACLE = "results/mini/samples/oracle-diamond-cld/em-uniform-nfe6"
SAMPLED = "results/mini/samples/diamond_cld/rows.json"  # the sampling job's marker (every set of the source)
ORACLE_SAMPLED = "results/mini/samples/oracle-diamond-cld/rows.json"
TRAINED = "results/mini/runs/diamond_cld/done.json"


# -- the smoke study on SLURM ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm_smoke(smoke_runs):
    """The smoke study through the SLURM profile (run alongside the local one: conftest.smoke_runs)."""
    if "skipped" in smoke_runs["slurm"]:
        pytest.skip(smoke_runs["slurm"]["skipped"])
    return smoke_runs["slurm"]


def _normalised(value, project: Path):
    """A record without its provenance: no time, host or checkpoint-file hash; paths relative to the project."""
    if isinstance(value, dict):
        return {k: _normalised(v, project) for k, v in value.items()
                if k not in PROVENANCE and not (k == "sha256" and "checkpoint" in value)}
    if isinstance(value, list):
        return [_normalised(v, project) for v in value]
    return value.replace(str(project), "<project>") if isinstance(value, str) else value


def test_smoke_study_runs_every_job_on_slurm(slurm_smoke):
    log = slurm_smoke["log"]
    submitted = _submitted(log)
    steps = int(re.findall(r"(\d+) of \1 steps \(100%\) done", log)[-1])
    assert len(submitted) == steps - 4, log[-3000:]  # every job but the local rules all, mlflow_init, report, track
    jobs = slurm_smoke["jobs"]
    for jobid, job_log in submitted.items():
        state, rule = jobs[jobid]  # the scheduler knows each job Snakemake reported
        assert state == "COMPLETED", (jobid, state, Path(job_log).read_text()[-2000:])
        assert f"/rule_{rule}/" in job_log
    rules = {jobs[j][1] for j in submitted}
    assert {"prepare", "train", "sample", "fd_digits", "nll"} <= rules, rules
    assert not rules & {"report", "track", "mlflow_init"}  # seconds of work: not queued
    print(f"smoke study on SLURM: {len(submitted)} jobs in {slurm_smoke['wall_s']:.0f} s")


def test_smoke_on_slurm_logs_every_run_to_the_http_store(slurm_smoke, smoke):
    """The cluster's jobs log to an MLflow server (as docs/cluster.md tells cluster users): the same runs as the local
    run's SQLite store, the parent finished."""
    from mlflow.tracking import MlflowClient

    def runs(uri):
        client = MlflowClient(uri)
        return {r.info.run_name: r.info.status
                for r in client.search_runs([client.get_experiment_by_name("smoke").experiment_id])}

    remote, local = runs(slurm_smoke["store"]), runs(f"sqlite:///{smoke['project'] / 'mlflow.db'}")
    assert remote == local and len(remote) > 10 and set(remote.values()) == {"FINISHED"}


def test_a_sqlite_store_is_refused_before_anything_is_submitted(slurm, tmp_path):
    cluster = _on(slurm, 0)
    project = project_copy(tmp_path / "project")
    done = _slurm_snakemake(cluster, project, "--configfile", "params/smoke.yaml", timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "is a SQLite file, which jobs on other nodes would corrupt" in output, output
    assert "MLFLOW_TRACKING_URI=http" in output and not _submitted(output)
    assert not (project / "results").exists()


def test_smoke_records_and_shards_equal_the_local_run(slurm_smoke, smoke):
    remote, local = slurm_smoke["project"] / "results/smoke", smoke["project"] / "results/smoke"
    shards = sorted(remote.glob("samples/*/*/shard_*.npz")) + sorted(remote.glob("nll/*/shard_*.npz"))
    assert len(shards) >= 14
    for shard in shards:  # sample shards: byte for byte
        assert shard.read_bytes() == (local / shard.relative_to(remote)).read_bytes(), shard
    records = sorted(remote.glob("records/**/*.json"))
    assert len(records) >= 30
    for path in records:  # metric records: equal but for provenance (time, host, absolute paths)
        ours, theirs = json.loads(path.read_text()), json.loads((local / path.relative_to(remote)).read_text())
        assert _normalised(ours, slurm_smoke["project"]) == _normalised(theirs, smoke["project"]), path
    for run in remote.glob("runs/*/checkpoint.pt"):  # the trained weights themselves
        a = torch.load(run, weights_only=True, map_location="cpu")
        b = torch.load(local / run.relative_to(remote), weights_only=True, map_location="cpu")
        for key in ("model", "ema"):
            assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), (run, key)


def test_smoke_second_run_on_slurm_has_nothing_to_do(slurm, slurm_smoke):
    done = _slurm_snakemake(_on(slurm, 0), slurm_smoke["project"], "--configfile", "params/smoke.yaml",
                            env={"MLFLOW_TRACKING_URI": slurm_smoke["store"]})
    assert "Nothing to be done" in done.stdout + done.stderr
    assert not _submitted(done.stdout + done.stderr)


# -- GPUs: a 2-rank training job (cancelled mid-run, then resumed), shard jobs, no GPU on the cluster -----------------
def _model(gpus: int, steps: int) -> dict:
    return {"diamond_cld": {"data": "diamond", "config": "params/train/toy_cld.yaml", "gpus": gpus,
                            "overrides": {"train.steps": steps, "train.checkpoint_every": 100, "train.log_every": 100}}}


STEPS = 300  # the cancel comes at the first checkpoint (step 100), before the end


def test_a_cancelled_two_rank_training_resumes_and_three_shard_jobs_equal_one(slurm, tmp_path):
    """One project, to keep CI short: gpu=2 -> torchrun with 2 ranks; scancel mid-run -> reported, rerun resumes;
    the sample set from 3 shard jobs == the set from one job, byte for byte."""
    cluster = _on(slurm, 2)
    project = project_copy(tmp_path / "p")
    study = _mini_study(project, "mini_gpu", models=_model(gpus=2, steps=STEPS), sampling__shard_jobs=3)
    run = project / "results/mini/runs/diamond_cld"
    proc = subprocess.Popen([str(BIN / "snakemake"), *PROFILE, SAMPLED, "--configfile", study],
                            cwd=project, env={**WORKFLOW_ENV, "SLURM_CONF": str(cluster.conf)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoint.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.1)
        train_job = next(j for j, (state, rule) in cluster.jobs().items() if rule == "train" and state == "RUNNING")
        data_mtime = {p.name: p.stat().st_mtime_ns for p in (project / "results/mini/data").iterdir()}
        subprocess.run(["scancel", train_job], env=cluster.env, check=True, timeout=30)
        cancelled = time.time()
        output, _ = proc.communicate(timeout=180)
        print(f"scancel reported by Snakemake after {time.time() - cancelled:.0f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output[-2000:]
    assert "Error in rule train" in output and "logs/mini/train/diamond_cld.log" in output, output[-3000:]
    assert cluster.jobs()[train_job][0] == "CANCELLED"
    assert cluster.job_field(train_job, "TresPerJob") == "gres:gpu:2"  # sbatch --gpus=2
    assert not (project / TRAINED).exists()
    kept = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")["step"]
    assert 100 <= kept < STEPS

    # the same command again: no data job, training resumes with 2 ranks, then 3 shard jobs and the gathering job
    done = _slurm_snakemake(cluster, project, SAMPLED, "--configfile", study)
    jobs = cluster.jobs()
    # the gathering `sample` step only checks the parts' sha256: a local rule, not a queued job
    assert sorted(jobs[j][1] for j in _submitted(done.stdout + done.stderr)) == [
        "sample_part", "sample_part", "sample_part", "train"]
    assert "localrule sample:" in done.stdout + done.stderr
    assert data_mtime == {p.name: p.stat().st_mtime_ns for p in (project / "results/mini/data").iterdir()}
    trained = json.loads((project / TRAINED).read_text())
    assert trained["world_size"] == 2 and trained["step"] == STEPS, trained
    assert trained["ran"] <= STEPS - kept, trained  # resumed, not restarted
    three = {p.name: p.read_bytes() for p in (project / SAMPLES).glob("shard_*.npz")}
    assert len(three) == 6

    # the same set made by one job
    shutil.move(project / SAMPLES, tmp_path / "three_jobs")
    (project / SAMPLED).unlink()
    one = _mini_study(project, "mini_one", models=_model(gpus=2, steps=STEPS))
    done = _slurm_snakemake(cluster, project, SAMPLED, "--configfile", one)
    assert sorted(cluster.jobs()[j][1] for j in _submitted(done.stdout + done.stderr)) == ["sample"]
    assert {p.name: p.read_bytes() for p in (project / SAMPLES).glob("shard_*.npz")} == three


def test_a_gpu_request_without_gpus_fails_at_once_with_the_scheduler_message(slurm, tmp_path):
    cluster = _on(slurm, 0)
    project = project_copy(tmp_path / "p")
    # the exact-score (oracle) rows need no data and no training: their sampling job is the first submission
    study = _mini_study(project, "mini_gpu", sampling__gpus=1, sampling__oracle={"data": ["diamond"], "sdes": ["cld"]})
    started = time.time()
    done = _slurm_snakemake(cluster, project, ORACLE_SAMPLED, "--configfile", study, timeout=300, check=False)
    elapsed = time.time() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0 and elapsed < 60, (elapsed, output[-2000:])
    assert "Invalid generic resource (gres) specification" in output, output[-3000:]
    assert "Error in rule sample" in output
    logs = sorted((project / ".snakemake" / "log").glob("*.snakemake.log"))
    assert "Invalid generic resource (gres) specification" in logs[-1].read_text()
    assert not _submitted(output)  # refused at submission: nothing left pending
    assert not (project / ORACLE / "done.json").exists() and not (project / ORACLE_SAMPLED).exists()
