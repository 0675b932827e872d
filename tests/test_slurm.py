"""The SLURM profile on a live cluster (tests/slurm_local.py): real slurmctld/slurmd, real sbatch/srun, two nodes
made of network namespaces where the machine allows them.

The smoke study through `snakemake --profile workflow/profiles/slurm` must give the records and sample shards of the
local run and log every run to an MLflow server on PostgreSQL that is killed and restarted mid-study, nothing lost
or doubled; a training job over two nodes (torchrun --nnodes 2, c10d, gloo) cancelled mid-run must resume and end
with the tensors of the same training as two ranks on one node; its sample set from 3 shard jobs (over both nodes)
must be the bytes of one job's; a GPU request on a cluster without GPUs must fail at once with the scheduler's
message. Skipped only off Debian or without root (the two-node test also without network namespaces); in CI they
run.
"""

import json
import re
import time
from pathlib import Path

import pytest
import torch

from slurm_scenarios import STEPS, mini_study, slurm_snakemake, submitted

from conftest import project_copy
from slurm_local import LocalSlurm

pytestmark = [pytest.mark.slow, pytest.mark.e2e,
              pytest.mark.xdist_group("smoke")]  # one cluster per machine: one xdist worker
# what a record may differ in between two runs of the same study: provenance, not results
PROVENANCE = {"created", "wall_s", "host"}
ORACLE = "results/mini/samples/oracle-diamond-cld/em-uniform-nfe6"
ORACLE_SAMPLED = "results/mini/samples/oracle-diamond-cld/rows.json"


def _on(cluster: LocalSlurm, gpus: int) -> LocalSlurm:
    if cluster.gpus != gpus:
        cluster.restart(gpus)
    return cluster


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
    queued = submitted(log)
    steps = int(re.findall(r"(\d+) of \1 steps \(100%\) done", log)[-1])
    assert len(queued) == steps - 4, log[-3000:]  # every job but the local rules all, mlflow_init, report, track
    jobs = slurm_smoke["jobs"]
    for jobid, job_log in queued.items():
        state, rule = jobs[jobid]  # the scheduler knows each job Snakemake reported
        assert state == "COMPLETED", (jobid, state, Path(job_log).read_text()[-2000:])
        assert f"/rule_{rule}/" in job_log
    rules = {jobs[j][1] for j in queued}
    assert {"prepare", "train", "sample", "fd_digits", "nll"} <= rules, rules
    assert not rules & {"report", "track", "mlflow_init"}  # seconds of work: not queued
    print(f"smoke study on SLURM: {len(queued)} jobs in {slurm_smoke['wall_s']:.0f} s")


def _store(uri: str) -> dict:
    """Every run of the smoke experiment: name -> (status, params, metric -> its whole history as (step, value))."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = {}
    for run in client.search_runs([client.get_experiment_by_name("smoke").experiment_id]):
        metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                   for key in run.data.metrics if not key.startswith("system/")}  # the machine's load: not results
        runs[run.info.run_name] = (run.info.status, run.data.params, metrics)
    return runs


def _results(params: dict) -> dict:
    """A run's params without its provenance: the store's id of its training run, the checkpoint file's hash (the
    file holds wall times)."""
    return {k: v for k, v in params.items() if k not in ("training_run_id", "checkpoint_sha256")}


def test_smoke_on_slurm_logs_to_postgresql_through_a_server_outage_nothing_lost_or_doubled(slurm_smoke, smoke):
    """The cluster's jobs log to an MLflow server on PostgreSQL (docs/cluster.md's recipe for a team), killed after
    the first training and started again two jobs later: the jobs that ran without it finish, and the study's
    `cldsgm track` step logs what they missed. The store then holds the local run's SQLite store: the same runs,
    params and every metric's whole history (no point missing, none twice)."""
    if slurm_smoke["no_postgres"]:
        pytest.skip(slurm_smoke["no_postgres"])
    assert slurm_smoke["backend"].startswith("postgresql://")
    outage = slurm_smoke["outage"]
    assert outage.get("finished_while_down", 0) >= 2, outage  # jobs really ran while the server was down
    print(f"server down {outage['down_s']:.0f} s while {outage['finished_while_down']} outputs were written")
    remote, local = _store(slurm_smoke["store"]), _store(f"sqlite:///{smoke['project'] / 'mlflow.db'}")
    assert remote.keys() == local.keys() and len(remote) > 10
    assert {status for status, _, _ in remote.values()} == {"FINISHED"}
    for name, (_, params, metrics) in remote.items():
        assert _results(params) == _results(local[name][1]), name
        assert metrics.keys() == local[name][2].keys(), name
        for key, history in metrics.items():
            assert len(history) == len({step for step, _ in history}), (name, key)  # no step logged twice
            assert history == local[name][2][key], (name, key)


def test_a_sqlite_store_is_refused_before_anything_is_submitted(slurm, tmp_path):
    project = project_copy(tmp_path / "project")
    done = slurm_snakemake(slurm, project, "--configfile", "params/smoke.yaml", timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "is a SQLite file, which jobs on other nodes would corrupt" in output, output
    assert "MLFLOW_TRACKING_URI=http" in output and not submitted(output)
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
    done = slurm_snakemake(slurm, slurm_smoke["project"], "--configfile", "params/smoke.yaml",
                           env={"MLFLOW_TRACKING_URI": slurm_smoke["store"]})
    assert "Nothing to be done" in done.stdout + done.stderr
    assert not submitted(done.stdout + done.stderr)


# -- two nodes: a training job over both (cancelled mid-run, then resumed), shard jobs over both -------------------
@pytest.fixture(scope="session")
def two_nodes(smoke_runs):
    """What the two-node scenario (slurm_scenarios.two_node_training, run beside the smoke study) saw."""
    if "skipped" in smoke_runs["slurm"]:
        pytest.skip(smoke_runs["slurm"]["skipped"])
    scenario = smoke_runs["nodes"]
    if isinstance(scenario, dict):
        pytest.skip(f"two SLURM nodes: {scenario['skipped']}")
    return scenario.result(timeout=0)  # done (smoke_runs waited); its exception, if any, raised here


def test_a_training_over_two_nodes_cancelled_mid_run_resumes_over_both(two_nodes):
    output = two_nodes["first_output"]
    print(f"scancel of the step reported by Snakemake after {two_nodes['reported_after_s']:.0f} s")
    assert two_nodes["first_rc"] != 0, output[-2000:]
    assert "Error in rule train_nodes" in output and "logs/mini/train/two_nodes.log" in output, output[-3000:]
    assert two_nodes["train_state"] in ("FAILED", "CANCELLED"), two_nodes["train_state"]
    assert two_nodes["train_nodes"] == "node[1-2]"  # sbatch --nodes=2: one torchrun per node
    assert "node=2" in two_nodes["train_tres"], two_nodes["train_tres"]
    assert two_nodes["train_gres"] == "gres:gpu:1"  # --gres=gpu:1: one (fake) GPU on each node
    assert not two_nodes["trained_after_cancel"]
    kept = two_nodes["kept"]
    assert 100 <= kept < STEPS

    # the same command again: no data job, the training resumes over both nodes, 3 shard jobs, a local gathering
    assert two_nodes["second_rules"] == ["sample_part", "sample_part", "sample_part", "train_nodes"]
    assert "localrule sample:" in two_nodes["second_output"]
    assert two_nodes["data_mtime"] == two_nodes["data_mtime_after"]
    trained = two_nodes["trained"]
    assert trained["world_size"] == 2 and trained["step"] == STEPS, trained
    assert trained["ran"] <= STEPS - kept, trained  # resumed, not restarted
    assert set(two_nodes["shard_nodes"]) == {"node1", "node2"}, two_nodes["shard_nodes"]  # spread over both


def test_two_nodes_give_the_tensors_of_two_ranks_on_one_node_and_three_shard_jobs_the_bytes_of_one(two_nodes):
    assert two_nodes["third_rules"] == ["sample", "train"]
    assert len(two_nodes["one_node_nodes"]) == 1 and two_nodes["one_node_nodes"][0] in ("node1", "node2")
    assert two_nodes["one_node"]["world_size"] == 2 and two_nodes["one_node"]["step"] == STEPS
    ours, theirs = two_nodes["two_node_tensors"], two_nodes["one_node_tensors"]
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name, value in ours.items():  # weights, EMA, Adam's moments, RNG states: bit for bit
        assert torch.equal(value, theirs[name]), name
    assert len(two_nodes["three"]) == 6 and two_nodes["one"] == two_nodes["three"]


def test_a_gpu_request_without_gpus_fails_at_once_with_the_scheduler_message(slurm, tmp_path):
    cluster = _on(slurm, 0)
    project = project_copy(tmp_path / "p")
    # the exact-score (oracle) rows need no data and no training: their sampling job is the first submission
    study = mini_study(project, "mini_gpu", sampling__gpus=1, sampling__oracle={"data": ["diamond"], "sdes": ["cld"]})
    started = time.time()
    done = slurm_snakemake(cluster, project, ORACLE_SAMPLED, "--configfile", study, timeout=300, check=False)
    elapsed = time.time() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0 and elapsed < 60, (elapsed, output[-2000:])
    assert "Invalid generic resource (gres) specification" in output, output[-3000:]
    assert "Error in rule sample" in output
    logs = sorted((project / ".snakemake" / "log").glob("*.snakemake.log"))
    assert "Invalid generic resource (gres) specification" in logs[-1].read_text()
    assert not submitted(output)  # refused at submission: nothing left pending
    assert not (project / ORACLE / "done.json").exists() and not (project / ORACLE_SAMPLED).exists()
