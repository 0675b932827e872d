"""Intervals and verdicts: bootstrap replicates recomputed exactly on each resample, paired comparisons that
cover zero when two sets come from one law and find a real difference, the exact NLL of a mixture, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cldsgm import stats
from cldsgm.eval import bootstrap
from cldsgm.eval.distances import energy_distance, sliced_wasserstein
from cldsgm.eval.fid import frechet
from cldsgm.oracles import diamond
from cldsgm.samplers import generate
from cldsgm.sde import build_sde

N, PROJECTIONS, RESAMPLES = 2000, 64, 100


def _resampled(x, counts_row):
    return x[np.repeat(np.arange(len(x)), counts_row)]


def test_replicates_are_the_metrics_of_the_resampled_sets():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 0.3
    counts = stats.resample_counts(300, 100, seed=5)
    assert (counts.sum(1) == 300).all() and counts.shape == (100, 300)
    sw2, energy = bootstrap.sliced_w2_replicates(x, y, counts), bootstrap.energy_replicates(x, y, counts)
    for b in (0, 57):
        xb = torch.from_numpy(_resampled(x, counts[b]))
        assert sw2[b] == pytest.approx(sliced_wasserstein(xb, torch.from_numpy(y)), rel=1e-12)
        assert energy[b] == pytest.approx(energy_distance(xb, torch.from_numpy(y)), rel=1e-9)
    for n, d in ((40, 64), (200, 16)):  # the Gram path (n <= d) and the covariance path
        f, r = rng.normal(size=(n, d)), rng.normal(size=(500, d)) * 1.2
        c = stats.resample_counts(n, 100, 1)
        fd = bootstrap.frechet_replicates(f, r.mean(0), np.cov(r, rowvar=False), c)
        assert fd[3] == pytest.approx(frechet(_resampled(f, c[3]), r.mean(0), np.cov(r, rowvar=False)), rel=1e-6)
    modes, weights = rng.integers(0, 4, 300), np.full(4, 0.25)
    tv = bootstrap.mode_tv_replicates(modes, weights, counts)
    assert tv[9] == pytest.approx(0.5 * np.abs(np.bincount(_resampled(modes, counts[9]), minlength=4) / 300
                                               - weights).sum())


def test_resampling_is_paired_by_seed_and_size():
    same = stats.resample_counts(500, 100, seed=3)
    assert np.array_equal(same, stats.resample_counts(500, 100, seed=3))
    assert not np.array_equal(same, stats.resample_counts(500, 100, seed=4))
    with pytest.raises(ValueError, match="at least 100 resamples"):
        stats.resample_counts(500, 50, seed=3)


def _sw2_with_replicates(x, reference, seed):
    value = sliced_wasserstein(torch.from_numpy(x), torch.from_numpy(reference), n_projections=PROJECTIONS)
    counts = stats.resample_counts(len(x), RESAMPLES, seed)
    return value, bootstrap.sliced_w2_replicates(x, reference, counts, n_projections=PROJECTIONS)


def _diamond_sets(sampler, seed, sde=None):
    sde = sde or build_sde("cld")
    x = generate(sde, diamond().score_fn(sde), N, (2,), sampler=sampler, nfe=10, striding="uniform", seed=seed).x
    return x.double().numpy()


@pytest.mark.slow
def test_intervals_of_a_difference_cover_zero_between_two_draws_of_one_law():
    """Coverage: 40 pairs of EM sets (NFE 10, exact diamond score) of different seeds, n = 2,000 each."""
    reference = diamond().sample(N, generator=torch.Generator().manual_seed(10_000)).double().numpy()
    covered = 0
    for k in range(40):
        a = _sw2_with_replicates(_diamond_sets("em", 2 * k + 1), reference, 2 * k + 1)
        b = _sw2_with_replicates(_diamond_sets("em", 2 * k + 2), reference, 2 * k + 2)
        diff = stats.compare(a[0], a[1], b[0], b[1])
        covered += diff["ci_low"] <= 0 <= diff["ci_high"]
    print(f"coverage: {covered} of 40 intervals of the difference hold 0")
    assert covered >= 34


def test_a_real_difference_holds_and_a_sampler_against_itself_is_inconclusive():
    reference = diamond().sample(N, generator=torch.Generator().manual_seed(10_000)).double().numpy()
    em, sscs = (_sw2_with_replicates(_diamond_sets(s, 1), reference, 1) for s in ("em", "sscs"))
    assert em[0] > 5 * sscs[0]  # SW2 of EM at NFE 10 is far larger
    paired = stats.compare(sscs[0], sscs[1], em[0], em[1])  # the same seed: paired
    assert stats.verdict(paired["ci_low"], paired["ci_high"]) == "holds"
    again = _sw2_with_replicates(_diamond_sets("sscs", 2), reference, 2)
    same = stats.compare(sscs[0], sscs[1], again[0], again[1])
    assert stats.verdict(same["ci_low"], same["ci_high"]) == "inconclusive"
    assert stats.verdict(-same["ci_high"] - 1, -same["ci_low"] - 1) == "holds"  # the rule itself, both ways
    assert stats.verdict(1.0, 2.0) == "does not hold"


def test_interval_fields_clip_a_distance_at_zero_and_keep_the_replicates():
    replicates = np.linspace(0.03, 0.05, 121)
    fields = stats.interval_fields(0.04, replicates, seed=7)
    assert fields["ci_low"] == pytest.approx(0.0305) and fields["ci_high"] == pytest.approx(0.0495)
    # resampling repeats items and biases a distance upwards: the basic interval moves the other way, and a
    # distance's lower end stops at 0
    assert stats.interval_fields(0.01, replicates, seed=7)["ci_low"] == 0.0
    assert stats.interval_fields(-0.01, replicates, seed=7, nonnegative=False)["ci_low"] < 0  # KID may be negative
    assert fields["bootstrap"]["resamples"] == 121 and fields["bootstrap"]["seed"] == 7
    assert "basic bootstrap" in fields["ci_method"]


def test_the_exact_mixture_nll_matches_scipy():
    from scipy.stats import multivariate_normal

    mix = diamond()
    points = mix.sample(500, generator=torch.Generator().manual_seed(3))
    ours = -mix.log_prob(points).numpy()
    density = sum(float(w) * multivariate_normal(m.numpy(), np.diag(s.numpy() ** 2)).pdf(points.numpy())
                  for w, m, s in zip(mix.weights, mix.means, mix.stds, strict=True))
    np.testing.assert_allclose(ours, -np.log(density), rtol=0, atol=1e-10)


@pytest.mark.parametrize("change, message", [
    (("models", "diamond_cld", "seeds", []), "models.diamond_cld.seeds: [] should be non-empty"),
    (("models", "diamond_cld", "seeds", [1, 1]), "models.diamond_cld.seeds: [1, 1] has non-unique elements"),
    (("evaluation", None, "bootstrap", 50), "evaluation.bootstrap: 50 is less than the minimum of 100"),
])
def test_bad_seed_lists_and_bootstrap_counts_are_named(change, message):
    import yaml

    from cldsgm.study import StudyError, load_study

    study = yaml.safe_load(open("params/smoke.yaml"))
    section, name, key, value = change
    (study[section][name] if name else study[section])[key] = value
    with pytest.raises(StudyError, match="params/bad.yaml: invalid study at " + message.replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.").replace(":", ":")):
        load_study(study, "params/bad.yaml")


def test_replicas_of_a_model_get_their_own_runs_seeds_and_rows():
    import yaml

    from cldsgm.study import job_table, load_study

    study = yaml.safe_load(open("params/smoke.yaml"))
    study["models"]["diamond_cld"]["seeds"] = [0, 3]
    table = job_table(load_study(study, "params/smoke.yaml"))
    assert table["replicas"]["diamond_cld"] == {"model": "diamond_cld", "seed": 0}
    assert table["replicas"]["diamond_cld-seed3"] == {"model": "diamond_cld", "seed": 3}
    assert "diamond_cld-seed3" in table["trained"] and "diamond_cld-seed3" in table["nll"]
    rows = [r for r in table["rows"] if r["model"] == "diamond_cld"]
    assert {r["source"] for r in rows} == {"diamond_cld", "diamond_cld-seed3"}
    assert {r["train_seed"] for r in rows} == {0, 3}
