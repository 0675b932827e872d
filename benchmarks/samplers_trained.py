"""on trained networks: the SSCS step's precision from the model, against the reference SSCS and a sigma_d
sweep, with paired 95 % bootstrap intervals (all sets share seed and n, so item i shares its prior draw and noise).

For a run directory: sigma_d estimated from the network's own score Jacobian (cldsgm.samplers.precision, what
`cldsgm sample` uses when no precision_sigma is given), then per NFE (quadratic): EM, the reference SSCS, SSCS with
sigma_d in a sweep and with the estimate, and the conjugate integrator; metric sliced W2 to held-out points (64
projections, as the records) or FD-digits to held-out digits (the study's classifier). Each row: value [interval],
and the difference to the reference SSCS with its interval and verdict ("holds" = lower, i.e. better).
Run: python benchmarks/samplers_trained.py results/default/runs/diamond_cld results/default/data/diamond_test.npz
     [--classifier results/default/fd_digits/classifier.pt] [--n 4000 --nfe 10 20 50 --sweep 0 0.04 0.1 0.2 0.5 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from cldsgm import catalog
from cldsgm.data.prepared import load_prepared
from cldsgm.eval.bootstrap import frechet_replicates, sliced_w2_replicates
from cldsgm.eval.distances import sliced_wasserstein
from cldsgm.samplers import generate
from cldsgm.samplers.precision import model_sigma_d
from cldsgm.sampling import PILOT_N, quantize_images
from cldsgm.sources import checkpoint_source
from cldsgm.stats import basic_interval, compare, resample_counts, verdict

REFERENCE_SSCS = catalog.bench_presets()["sscs-ref"][1]  # the reference code's SSCS variant


def _metric(source, reference: np.ndarray, classifier):
    """(value, replicates) of a sample set x, given the bootstrap counts."""
    if source.kind == "image":
        from cldsgm.eval.digits import digits_features
        from cldsgm.eval.fid import frechet

        ref = digits_features(classifier, reference)
        mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)

        def metric(x, counts):
            features = digits_features(classifier, quantize_images(x))
            return frechet(features, mu, sigma), frechet_replicates(features, mu, sigma, counts)
        return metric

    def metric(x, counts):
        x = x.to(torch.float64)
        y = torch.from_numpy(reference[:len(x)]).to(torch.float64)
        return (sliced_wasserstein(x, y, n_projections=64),
                sliced_w2_replicates(x.numpy(), y.numpy(), counts, n_projections=64))
    return metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("reference", help="held-out data (.npz of cldsgm prepare)")
    parser.add_argument("--classifier", help="the FD-digits classifier (image data)")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--sweep", type=float, nargs="+", default=[0.0, 0.04, 0.1, 0.2, 0.5, 1.0, 2.0])
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = checkpoint_source(args.run)
    reference, _, _ = load_prepared(args.reference)
    classifier = None
    if source.kind == "image":
        from cldsgm.eval.digits import load_classifier

        classifier = load_classifier(args.classifier)[0]
    n = min(args.n, len(reference)) if source.kind != "image" else args.n
    metric = _metric(source, reference, classifier)
    counts = resample_counts(n, args.resamples, seed=0)
    start = time.perf_counter()
    estimate = model_sigma_d(source.sde, source.score_fn, source.pilot_data(PILOT_N).float(), 1e-3)
    per_time = ", ".join(f"{r['t']:.0e}: {r['sigma_d']:.3f}" for r in estimate["per_time"])
    print(f"{args.run}: n = {n}, sigma_d from the network's Jacobian = {estimate['sigma_d']} ({per_time}; "
          f"{time.perf_counter() - start:.1f} s); data-law value for comparison: the exact score's")
    rows = {"em": ("em", {}), "sscs-ref": ("sscs", REFERENCE_SSCS), "conjugate": ("conjugate", {}),
            **{f"sscs sd={s:g}": ("sscs", {"precision_sigma": s}) for s in args.sweep},
            f"sscs sd=est ({estimate['sigma_d']})": ("sscs", {"precision_sigma": estimate["sigma_d"]})}
    out = {"run": args.run, "n": n, "estimate": estimate, "rows": []}
    for nfe in args.nfe:
        results = {}
        for name, (sampler, options) in rows.items():
            with torch.inference_mode():
                x = generate(source.sde, source.score_fn, n, source.data_shape, sampler=sampler, nfe=nfe,
                             striding="quadratic", seed=0, **options).x
            value, replicates = metric(x, counts)
            results[name] = (value, replicates)
        ref_value, ref_reps = results["sscs-ref"]
        print(f"\nNFE {nfe} (quadratic)            value [95 % interval]        minus sscs-ref [interval] verdict")
        for name, (value, replicates) in results.items():
            low, high = basic_interval(value, replicates)
            diff = compare(value, replicates, ref_value, ref_reps)
            word = verdict(diff["ci_low"], diff["ci_high"]) if name != "sscs-ref" else ""
            print(f"  {name:28s} {value:9.4f} [{max(low, 0):.4f}, {high:.4f}]   {diff['difference']:+.4f} "
                  f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] {word}", flush=True)
            out["rows"].append({"nfe": nfe, "row": name, "value": value, "ci_low": max(low, 0), "ci_high": high,
                                "minus_ref": diff, "verdict": word})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, default=float)


if __name__ == "__main__":
    main()
