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
@pytest.mark.e2e
def test_cpu_smoke_fills_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = _run("--cpu-smoke", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    s = doc["sections"]
    assert doc["meta"]["mode"] == "cpu-smoke"
    assert set(s) == {"ceilings", "train", "sampling", "inception", "profile", "safety", "hours"}
    assert not [k for k, v in s.items() if "error" in v], done.stdout[-3000:]
    assert s["ceilings"]["matmul_tflops"] > 0 and s["ceilings"]["copy_gb_s_read_plus_write"] > 0
    rows = {r["variant"]: r for r in s["train"]["rows"]}
    assert list(rows)[0] == "bf16+cl+fused (config)" and rows["bf16+cl+fused (config)"]["x_config"] == 1.0
    assert len(rows) == 6 and all(r["img_s"] > 0 for r in rows.values()) and "fast_stopped" not in s["train"]
    for layout in ("NCHW", "NHWC"):  # compiled blocks with GroupNorm in bf16: timed, and as accurate as eager bf16
        fast = rows[f"bf16 blocks+gn {layout}"]
        assert fast["compile_s"] > 0 and fast["rel_err_fast_vs_fp32"] < 1.2 * fast["rel_err_eager_bf16_vs_fp32"]
    assert rows["bf16 blocks+gn best layout, batch 8"]["batch"] == 8
    # the CLD CIFAR-10 NCSN++ at nf 16: forward + backward FLOPs counted, PSLD's (2,2,2) network heavier per image
    assert rows["psld fp32+cl+fused (config)"]["gflop_per_img_step"] > rows["fp32 eager"]["gflop_per_img_step"] > 0
    assert s["train"]["trainer"]["img_s"] > 0 and s["train"]["trainer"]["trainer_over_bare"] > 0
    sampling = {r["variant"]: r for r in s["sampling"]["rows"]}
    assert set(sampling) == {"bf16 autocast (config)", "bf16 cast+graph", "bf16 cast+blocks+graph"}
    assert all(r["nfe"] == 4 and r["img_s"] > 0 and 0 <= r["sampler_share"] < 1 for r in sampling.values())
    assert all(0 < r["output_rel_err_vs_fp32"] < 0.05 for r in sampling.values())
    assert s["inception"]["pipeline_img_s"] > 0 and s["inception"]["network_img_s"] > 0
    assert s["safety"]["all_finite"] and s["safety"]["bf16_steps"] == 12 and s["safety"]["fp32_steps"] == 6
    assert s["safety"]["bf16_config"].startswith("bf16 blocks+gn")
    assert {"0", "12"} <= set(s["safety"]["eval_along_bf16_run"])
    assert s["profile"]["train"]["top"] and s["profile"]["sscs_3nfe"]["top"]
    assert s["profile"]["train_config"].startswith("bf16 blocks+gn")
    studies = s["hours"]["studies"]
    assert {"cifar10_cld", "cifar10_psld"} <= set(studies)
    assert studies["cifar10_cld"]["train"] > 0 and studies["cifar10_cld_pretrained"]["train"] == 0
    assert studies["cifar10_cld"]["rows"] == 20  # (em, sscs) x 6 NFE for CLD, em x 6 for VPSDE, two ODE rows
    assert "GPU-hours cifar10_cld" in done.stdout and "training variant" in done.stdout
    assert "s of the budget left" in done.stdout


def test_without_a_gpu_it_stops_with_one_line():
    done = _run()
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no CUDA GPU here, nothing measured (run with --cpu-smoke to check the script on a CPU)"]


def test_unknown_section_is_refused():
    done = _run("--cpu-smoke", "--sections", "train,warp")
    assert done.returncode == 2 and "unknown section(s) ['warp']" in done.stderr


def test_a_section_out_of_time_keeps_what_it_measured(tmp_path):
    """The compiled variants' child gets no time: the section says so and keeps the eager baseline it measured."""
    out = tmp_path / "short.json"
    done = _run("--cpu-smoke", "--sections", "train", "--budget-s", "4", "--out", str(out))
    s = json.loads(out.read_text())["sections"]
    assert done.returncode == 0, done.stderr[-2000:]
    assert s["train"]["rows"][0]["variant"] == "bf16+cl+fused (config)" and s["train"]["rows"][0]["img_s"] > 0
    assert "left" in s["train"]["fast_stopped"] or "cut off" in s["train"]["fast_stopped"]
