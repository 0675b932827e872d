"""benchmarks/gpu_check.py cannot rot: every section runs at toy sizes on the CPU (--cpu-smoke) and fills its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_cpu_smoke_fills_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = _run("--cpu-smoke", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    s = doc["sections"]
    assert doc["meta"]["mode"] == "cpu-smoke"
    assert set(s) == {"ceilings", "train", "sampling", "inception", "profile", "safety", "compile", "hours"}
    assert not [k for k, v in s.items() if "error" in v], done.stdout[-3000:]
    assert s["ceilings"]["matmul_tflops"] > 0 and s["ceilings"]["copy_gb_s_read_plus_write"] > 0
    rows = {r["variant"]: r for r in s["train"]["rows"]}
    assert len(rows) == 6 and all(r["img_s"] > 0 for r in rows.values())
    assert rows["fp32 eager"]["x_fp32_eager"] == 1.0
    # the CLD CIFAR-10 NCSN++ at nf 16: forward + backward FLOPs counted, PSLD's (2,2,2) network heavier per image
    assert rows["psld fp32+cl+fused (config)"]["gflop_per_img_step"] > rows["fp32 eager"]["gflop_per_img_step"] > 0
    assert s["train"]["trainer"]["img_s"] > 0 and s["train"]["trainer"]["trainer_over_bare"] > 0
    sampling = {r["precision"]: r for r in s["sampling"]["rows"]}
    assert set(sampling) == {"bf16", "bf16+cl", "fp32"}
    assert all(r["nfe"] == 4 and r["img_s"] > 0 and 0 <= r["sampler_share"] < 1 for r in sampling.values())
    assert s["inception"]["pipeline_img_s"] > 0 and s["inception"]["network_img_s"] > 0
    assert s["safety"]["all_finite"] and s["safety"]["bf16_steps"] == 12 and s["safety"]["fp32_steps"] == 6
    assert {"0", "12"} <= set(s["safety"]["eval_along_bf16_run"])
    assert {"blocks", "network"} == set(s["compile"]) and all(c["img_s"] > 0 for c in s["compile"].values())
    assert s["profile"]["train"]["top"] and s["profile"]["sscs_bf16_3nfe"]["top"]
    studies = s["hours"]["studies"]
    assert {"cifar10_cld", "cifar10_psld"} <= set(studies)
    assert studies["cifar10_cld"]["train"] > 0 and studies["cifar10_cld_pretrained"]["train"] == 0
    assert studies["cifar10_cld"]["rows"] == 20  # (em, sscs) x 6 NFE for CLD, em x 6 for VPSDE, two ODE rows
    assert "GPU-hours cifar10_cld" in done.stdout and "training variant" in done.stdout


def test_without_a_gpu_it_stops_with_one_line():
    done = _run()
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no CUDA GPU here, nothing measured (run with --cpu-smoke to check the script on a CPU)"]


def test_unknown_section_is_refused():
    done = _run("--cpu-smoke", "--sections", "train,warp")
    assert done.returncode == 2 and "unknown section(s) ['warp']" in done.stderr
