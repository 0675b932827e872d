"""Power of a study's claims: per comparison between trained models, the spread of the seeds' values, the sampling
noise within one seed, and the smallest true difference the study detects (80 % power, 5 %) at its seed count and at
others, n fixed or doubled. Reads a finished study (its records), prints a Markdown table.

    python benchmarks/claims_power.py --study params/claims.yaml --results results/claims

With k seeds per side the difference's variance is (s_A^2 + s_B^2) / k + v, s the seed-to-seed standard deviation
of a side's values and v the bootstrap variance over the samples of the difference of the sides' means (the replicas
share their samples' noise streams, so v does not shrink with k; it halves with 2n). The detectable effect is
(t_0.975 + t_0.8) se with Satterthwaite's degrees of freedom (cldsgm.stats.min_detectable), as the report's
intervals.
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def _side(units) -> tuple[float, float, int, list]:
    """(variance of the seeds' bias-corrected values, one seed's sampling variance, seeds, the seeds' values)."""
    from cldsgm.report.claims import _seed_value

    values = [_seed_value(u) for u in units]
    centres = np.array([v["value"] for v in values])
    sampling = float(np.mean([np.var(v["replicates"], ddof=1) for v in values]))
    return float(centres.var(ddof=1)) if len(values) > 1 else math.nan, sampling, len(values), values


def _detectable(var_a: float, var_b: float, k: int, shared: float) -> float:
    from cldsgm.stats import min_detectable

    seeds = (var_a + var_b) / k
    df = (var_a + var_b) ** 2 / ((var_a**2 + var_b**2) / (k - 1)) if var_a + var_b > 0 else 1.0
    df = (seeds + shared) ** 2 / (seeds**2 / df) if seeds > 0 else 1e6  # Satterthwaite, as cldsgm.stats
    return min_detectable(math.sqrt(seeds + shared), df)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--results", required=True)
    args = parser.parse_args()
    from cldsgm import claims
    from cldsgm.records import records_frame
    from cldsgm.report import read_study
    from cldsgm.report.claims import _sampling_var, record_units
    from cldsgm.study import job_table

    study = read_study(args.study)
    df = records_frame(f"{args.results}/records")
    units = record_units(study, job_table(study), df.assign(sampler=df["variant"]))
    print("| comparison | seeds | seed sd A, B | sampling sd A, B | detectable: at k | k = 5 | k = 10 | k, 2n |")
    print("|---|---|---|---|---|---|---|---|")
    for claim in claims.CLAIMS.values():
        if claim.compare != "between" or "model" not in claim.sources:
            continue
        for inst in claims.instances(claim, units):
            if inst.a[0][0]["kind"] != "model":  # exact scores and data laws have no seeds
                continue
            (var_a, samp_a, k, seeds_a), (var_b, samp_b, _, seeds_b) = _side(inst.a), _side(inst.b)
            if k < 2 or math.isnan(var_a) or math.isnan(var_b):
                print(f"| {inst.key} | {k} | — | {math.sqrt(samp_a):.3g}, {math.sqrt(samp_b):.3g} | "
                      f"≥ {2.8 * math.sqrt(samp_a + samp_b):.3g} (one seed) | | | |")
                continue
            shared = _sampling_var(seeds_a, seeds_b)
            print(f"| {inst.key} | {k} | {math.sqrt(var_a):.3g}, {math.sqrt(var_b):.3g} | "
                  f"{math.sqrt(samp_a):.3g}, {math.sqrt(samp_b):.3g} | {_detectable(var_a, var_b, k, shared):.3g} | "
                  f"{_detectable(var_a, var_b, 5, shared):.3g} | {_detectable(var_a, var_b, 10, shared):.3g} | "
                  f"{_detectable(var_a, var_b, k, shared / 2):.3g} |")


if __name__ == "__main__":
    main()
