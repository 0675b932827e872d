"""Scenarios on the live SLURM cluster that the session fixture (conftest.smoke_runs) runs beside the smoke study:
each returns what it saw, and tests/test_slurm.py asserts on it."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import torch
import yaml

from conftest import BIN, SLURM_FAST_POLL, SLURM_PROFILE, WORKFLOW_ENV, project_copy, run_snakemake

PROFILE = (*SLURM_PROFILE, *SLURM_FAST_POLL)
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: ([^)]+)\)")
STEPS = 300  # the cancel comes at the first checkpoint (step 100), before the end


def submitted(output: str) -> dict[str, str]:
    """SLURM job id -> the job's log file, from Snakemake's 'has been submitted' lines."""
    return {jobid: log for jobid, log in SUBMITTED.findall(output)}


def slurm_snakemake(cluster, project, *args, timeout=600, check=True, env=None):
    return run_snakemake(project, *PROFILE, *args, env={"SLURM_CONF": str(cluster.conf), **(env or {})},
                         timeout=timeout, check=check)


def mini_study(project: Path, name: str, **changes) -> str:
    """A one-model study on the diamond data (a few jobs), written as params/<name>.yaml; `section__field=value`
    or `section=value` change it."""
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


def toy_model(gpus: int, nodes: int = 1) -> dict:
    return {"data": "diamond", "config": "params/train/toy_cld.yaml", "gpus": gpus, "nodes": nodes,
            "overrides": {"train.steps": STEPS, "train.checkpoint_every": 100, "train.log_every": 100}}


def samples(model: str) -> str:
    return f"results/mini/samples/{model}/em-uniform-nfe6"


def sampled(model: str) -> str:
    """The sampling job's marker (every set of the source)."""
    return f"results/mini/samples/{model}/rows.json"


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (weights, EMA, optimizer state), by a flat name."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for k, item in enumerate(value):
                walk(f"{prefix}/{k}", item)

    walk("", torch.load(path, weights_only=True, map_location="cpu"))
    return flat


def _steps(cluster, jobid: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-s", "-j", jobid, "-o", "%i"], capture_output=True, text=True,
                         env=cluster.env, timeout=30).stdout
    return out.split()


def two_node_training(cluster, root: Path) -> dict:
    """A training job over the cluster's two nodes (`nodes: 2`, one fake GPU each: torchrun --nnodes 2, c10d on
    the first node, gloo) whose srun step is cancelled at its first checkpoint, then resumed by the same command;
    its sample set from 3 shard jobs; then the same set from one job and the same training as two ranks on one
    node (`gpus: 2`). Returns what each step left, for test_slurm.py."""
    project = project_copy(root / "p")
    models = {"two_nodes": toy_model(gpus=1, nodes=2), "one_node": toy_model(gpus=2)}
    study = mini_study(project, "mini_nodes", models=models, sampling__shard_jobs=3)
    run = project / "results/mini/runs/two_nodes"
    env = {**WORKFLOW_ENV, "SLURM_CONF": str(cluster.conf)}
    facts: dict = {"project": project}
    proc = subprocess.Popen([str(BIN / "snakemake"), *PROFILE, sampled("two_nodes"), "--configfile", study],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 400
        while not (run / "checkpoint.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.1)
        job = next(j for j, (state, rule) in cluster.jobs().items() if rule == "train_nodes" and state == "RUNNING")
        step = f"{job}.0"  # the command's `srun torchrun`: the job step on both nodes
        while step not in _steps(cluster, job):
            assert time.time() < deadline, _steps(cluster, job)
            time.sleep(0.1)
        facts["data_mtime"] = {p.name: p.stat().st_mtime_ns for p in (project / "results/mini/data").iterdir()}
        subprocess.run(["scancel", step], env=cluster.env, check=True, timeout=30)
        cancelled = time.time()
        output, _ = proc.communicate(timeout=300)
        facts["reported_after_s"] = time.time() - cancelled
    finally:
        if proc.poll() is None:
            proc.kill()
    facts.update(first_rc=proc.returncode, first_output=output, train_job=job, train_state=cluster.jobs()[job][0],
                 train_nodes=cluster.job_field(job, "NodeList"), train_tres=cluster.job_field(job, "TRES"),
                 train_gres=cluster.job_field(job, "TresPerNode"),
                 kept=torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")["step"],
                 trained_after_cancel=(run / "done.json").exists())

    # the same command again: the training resumes over both nodes, then 3 shard jobs and the gathering step
    done = slurm_snakemake(cluster, project, sampled("two_nodes"), "--configfile", study)
    jobs = cluster.jobs()
    second = submitted(done.stdout + done.stderr)
    facts.update(second_output=done.stdout + done.stderr, second_rules=sorted(jobs[j][1] for j in second),
                 shard_nodes=sorted(cluster.job_field(j, "NodeList") for j in second if jobs[j][1] == "sample_part"),
                 data_mtime_after={p.name: p.stat().st_mtime_ns for p in (project / "results/mini/data").iterdir()},
                 trained=yaml.safe_load((run / "done.json").read_text()),
                 three={p.name: p.read_bytes() for p in (project / samples("two_nodes")).glob("shard_*.npz")})

    # the same set from one job, and the same training as two ranks on one node, in one run
    shutil.move(project / samples("two_nodes"), root / "three_jobs")
    (project / sampled("two_nodes")).unlink()
    one = mini_study(project, "mini_one_job", models=models)
    done = slurm_snakemake(cluster, project, sampled("two_nodes"), "results/mini/runs/one_node/done.json",
                           "--configfile", one)
    jobs = cluster.jobs()
    third = submitted(done.stdout + done.stderr)
    facts.update(third_rules=sorted(jobs[j][1] for j in third),
                 one_node_nodes=[cluster.job_field(j, "NodeList") for j in third if jobs[j][1] == "train"],
                 one_node=yaml.safe_load((project / "results/mini/runs/one_node/done.json").read_text()),
                 one={p.name: p.read_bytes() for p in (project / samples("two_nodes")).glob("shard_*.npz")},
                 two_node_tensors=tensors(run / "checkpoint.pt"),
                 one_node_tensors=tensors(project / "results/mini/runs/one_node/checkpoint.pt"))
    return facts
