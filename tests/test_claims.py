"""The papers' claims as data (cldsgm.claims): which rows a claim compares, what a study lacks to decide it, and the
statistics behind a verdict -- the seed-level interval's coverage with simulated training seeds, the bias-corrected
value inside its interval, the properties the papers argue from measured against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from cldsgm import claims, stats
from cldsgm.study import job_table, load_study, study_claims, study_units


def _default_units():
    study = load_study(yaml.safe_load(open("params/config.yaml")), "params/config.yaml")
    table = job_table(study)
    return study, table, study_units(study, table)


def test_the_paper_claims_compare_the_papers_samplers_at_the_papers_setting():
    """The CLD paper's SSCS claim is decided with the reference SSCS (the study's variant sscsref), never our SSCS,
    at NFE 50 with quadratic striding; ours is a claim apart."""
    _, _, units = _default_units()
    found = claims.instances(claims.CLAIMS["cld-sscs-em"], units)
    assert {i.setting for i in found} == {"digits_cld, NFE 50, quadratic striding",
                                          "diamond_cld, NFE 50, quadratic striding",
                                          "oracle-diamond-cld, NFE 50, quadratic striding"}
    for inst in found:
        assert [u[0]["variant"] for u in inst.a] == ["sscsref"] and [u[0]["variant"] for u in inst.b] == ["em"]
        assert inst.paired and inst.a[0][0]["nfe"] == 50
    ours = claims.instances(claims.CLAIMS["ours-sscs"], units)
    assert {u[0]["variant"] for i in ours for u in i.a} == {"sscs"}  # sigma_d from the model: the study gives none
    assert claims.CLAIMS["ours-sscs"].paper == "ours"


def test_method_claims_pair_models_of_the_same_data_budget_and_network():
    _, _, units = _default_units()
    found = claims.instances(claims.CLAIMS["cld-vpsde-em"], units)
    assert sorted(i.models for i in found) == [("diamond_cld", "diamond_vpsde"), ("digits_cld", "digits_vpsde")]
    assert all(not i.paired for i in found)
    changed = [dict(u, budget="1 x 1") if u["model"] == "digits_vpsde" else u for u in units]
    assert [i.models for i in claims.instances(claims.CLAIMS["cld-vpsde-em"], changed)] == [
        ("diamond_cld", "diamond_vpsde")]  # another budget: no longer the same comparison


def test_the_default_study_decides_what_its_rows_serve_and_names_what_the_rest_lack():
    study, table, _ = _default_units()
    decided, lacking = study_claims(study, table)
    ids = {i.claim.id for i in decided}
    assert {"cld-sscs-em", "cld-vpsde-ode", "psld-cld-tradeoff-em", "cld-smooth", "cld-equilibrium",
            "hsm-dsm-variance", "vpsde-cld-nll", "ours-sscs"} <= ids
    why = dict((c.id, text) for c, text in lacking)
    assert set(why) == {"hsm-dsm-quality", "mixed-score"}
    assert why["hsm-dsm-quality"] == "needs a trained model with sde cld, objective dsm (DSM)"
    assert why["mixed-score"].startswith("needs a trained model with sde cld, mixed_score true beside one with sde "
                                         "cld, mixed_score false that share data, budget, network, objective")


def test_a_claim_with_an_unknown_selector_is_refused():
    with pytest.raises(ValueError, match="selects unknown attributes \\['colour'\\]"):
        claims.Claim("x", "ours", "s", "—", claims.Side("A", {"colour": "red"}), claims.Side("B"))
    with pytest.raises(ValueError, match="compare is 'within' or 'between'"):
        claims.Claim("x", "ours", "s", "—", claims.Side("A"), claims.Side("B"), compare="beside")
    with pytest.raises(ValueError, match="is built in"):
        claims.unregister("cld-sscs-em")


# -- the seed-level interval --------------------------------------------------------------------------------------


def _two_stage_bootstrap(values_a, reps_a, values_b, reps_b, rng):
    """The interval a bootstrap over seeds, then samples, gives (what the seed stage replaces)."""
    def side(reps):
        picks = rng.integers(0, len(reps), size=(reps.shape[1], len(reps)))
        return reps[picks, np.arange(reps.shape[1])[:, None]].mean(1)

    d = float(np.mean(values_a) - np.mean(values_b))
    return stats.basic_interval(d, side(reps_a) - side(reps_b))


def _null_pair(rng, tau: float, sigma: float, shared: bool):
    """Two sides of one method, 3 seeds each: (values, [3, 200] replicates) per side. shared: the replicas draw
    their samples with one set of noise streams (as a study's do), so a side's sampling error is common to its seeds
    and its replicates' resampling too."""
    common = rng.normal(0, sigma)
    sides = []
    for _side in range(2):
        seeds = rng.normal(0, tau, 3)
        if shared:
            error = 0.5 * common + math.sqrt(0.75) * rng.normal(0, sigma)
            values = seeds + error + rng.normal(0, 0.05 * sigma, 3)
            replicates = values[:, None] + rng.normal(0, sigma, 200)[None, :]
        else:
            values = seeds + rng.normal(0, sigma, 3)
            replicates = values[:, None] + rng.normal(0, sigma, (3, 200))
        sides += [values, replicates]
    return sides


def _holds_zero(found) -> bool:
    return found["ci_low"] <= 0 <= found["ci_high"]


def test_the_seed_interval_covers_a_null_difference_where_a_two_stage_bootstrap_does_not():
    """Coverage with simulated training seeds: two methods with the same mean, 3 seeds each. Seed-to-seed spread 1,
    sampling noise 0.1, independent (the regime of Bouthillier et al. 2021): the t interval over the seeds holds 0
    in >= 90 % of 200 pairs; resampling 3 seeds with replacement far less often. Sampling noise shared by the
    replicas (a study's samples use one set of noise streams) and larger than the seeds' spread: the t interval over
    the seeds alone fails; with the samples' bootstrap variance added (Satterthwaite) it holds 0 again."""
    rng = np.random.default_rng(7)
    held_t = held_boot = held_shared = held_shared_t = 0
    for _ in range(200):
        a, reps_a, b, reps_b = _null_pair(rng, 1.0, 0.1, shared=False)
        held_t += _holds_zero(stats.seed_interval(a, b))
        low, high = _two_stage_bootstrap(a, reps_a, b, reps_b, rng)
        held_boot += low <= 0 <= high
        a, reps_a, b, reps_b = _null_pair(rng, 0.2, 1.0, shared=True)
        sampling = float(np.var(reps_a.mean(0) - reps_b.mean(0), ddof=1))
        held_shared += _holds_zero(stats.seed_interval(a, b, sampling_var=sampling))
        held_shared_t += _holds_zero(stats.seed_interval(a, b))
    print(f"null held: independent noise, seed interval {held_t}/200, two-stage bootstrap {held_boot}/200; shared "
          f"noise, with the samples' variance {held_shared}/200, seeds alone {held_shared_t}/200")
    assert held_t >= 180 and held_boot < 175 and held_shared >= 180 and held_shared_t < 120


def test_the_seed_interval_finds_a_real_difference_and_pairs_shared_seeds():
    a, b = np.array([1.0, 1.1, 0.9, 1.05]), np.array([2.0, 2.2, 1.9, 2.1])
    found = stats.seed_interval(a, b)
    assert found["ci_high"] < 0 and found["difference"] == pytest.approx(-1.0375)
    # the same seeds on both sides (two samplers on each network): the seed-to-seed part cancels
    shift = np.array([0.0, 5.0, -5.0, 2.0])
    paired = stats.seed_interval(a + shift, b + shift, paired=True)
    unpaired = stats.seed_interval(a + shift, b + shift)
    assert paired["ci_high"] < 0 < unpaired["ci_high"]
    assert stats.min_detectable(1.0) == pytest.approx(2.8, abs=0.01)
    assert stats.min_detectable(1.0, df=2) > stats.min_detectable(1.0)
    with pytest.raises(ValueError, match="at least 2 seeds per side"):
        stats.seed_interval([1.0], [2.0, 3.0])


def test_a_biased_value_is_corrected_and_lies_inside_its_interval():
    replicates = np.linspace(0.05, 0.07, 121)  # a distance whose resamples sit above the estimate
    fields = stats.interval_fields(0.04, replicates, seed=7, biased=True)
    assert fields["plug_in"] == 0.04 and fields["value"] == pytest.approx(0.02)
    assert fields["ci_low"] <= fields["value"] <= fields["ci_high"] and "bias-corrected" in fields["ci_method"]
    clipped = stats.interval_fields(0.01, replicates, seed=7, biased=True)
    assert clipped["value"] == 0.0 and clipped["ci_low"] == 0.0  # a distance stops at 0


# -- FD-digits at n = 200 -----------------------------------------------------------------------------------------


def _frechet_gaussians(mu1, s1, mu2, s2) -> float:
    from scipy import linalg

    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.mark.slow
def test_fd_digits_intervals_at_200_samples_cover_the_law_and_a_null_difference():
    """Coverage of FD in 128 features at n = 200 (the default study's digits): features of a known Gaussian law
    against a fixed 359-item reference. The bias-corrected value's interval holds the law's own FD to the reference
    (closed form) in >= 34 of 40 sets, where the plug-in value lies above it in every set; the interval of the
    difference of two sets of one law holds 0 in >= 34 of 40 pairs."""
    from cldsgm.eval.bootstrap import frechet_replicates
    from cldsgm.eval.fid import frechet

    rng = np.random.default_rng(0)
    d, n = 128, 200
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov_ref = (q * (10 * np.arange(1, d + 1) ** -1.3)) @ q.T  # a decaying spectrum, as classifier features have
    mu_law, cov_law = 0.5 * rng.normal(size=d) / math.sqrt(d), (q * (13 * np.arange(1, d + 1) ** -1.3)) @ q.T
    reference = rng.multivariate_normal(np.zeros(d), cov_ref, size=359)
    mu_r, cov_r = reference.mean(0), np.cov(reference, rowvar=False)
    truth = _frechet_gaussians(mu_law, cov_law, mu_r, cov_r)
    covered = above = held = 0
    sets = []
    for k in range(80):
        x = rng.multivariate_normal(mu_law, cov_law, size=n)
        plug_in = frechet(x, mu_r, cov_r)
        fields = stats.interval_fields(plug_in, frechet_replicates(x, mu_r, cov_r, stats.resample_counts(n, 200, k)),
                                       seed=k, biased=True)
        sets.append(fields)
        if k < 40:
            covered += fields["ci_low"] <= truth <= fields["ci_high"]
            above += plug_in > fields["ci_high"] or plug_in > truth
    for a, b in zip(sets[40::2], sets[41::2], strict=True):
        diff = stats.compare(a["plug_in"], a["bootstrap"]["replicates"], b["plug_in"], b["bootstrap"]["replicates"])
        held += diff["ci_low"] <= 0 <= diff["ci_high"]
    print(f"FD {truth:.3g}: {covered}/40 intervals hold it, plug-in above it in {above}/40; null held {held}/20")
    assert covered >= 34 and above == 40 and held >= 17


# -- the properties the papers argue from, against closed forms ------------------------------------------------------


def test_the_marginal_log_density_is_the_exact_scores_potential():
    from cldsgm.oracles import diamond
    from cldsgm.sde import build_sde

    mix = diamond()
    for name in ("cld", "vpsde", "psld"):
        sde = build_sde(name)
        width = 4 if name != "vpsde" else 2
        u = torch.randn(64, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        t = torch.tensor(0.3, dtype=torch.float64)
        u.requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.marginal_log_prob(sde, u, t).sum(), u)
        torch.testing.assert_close(grad, mix.score_fn(sde)(u.detach(), t), rtol=1e-9, atol=1e-9)


def test_the_score_jacobian_of_gaussian_data_is_known():
    """Data N(0, s^2) under the VPSDE: p_t = N(0, a_t^2 s^2 + 1 - a_t^2), whose score -u / v_t has the Jacobian norm
    1 / v_t times the prior's; the Monte Carlo estimate over 4000 points is within 2 % at every t."""
    from cldsgm.eval.properties import score_jacobian
    from cldsgm.oracles import GaussianMixture
    from cldsgm.sde import build_sde

    sde, law = build_sde("vpsde"), GaussianMixture.gaussian(2, 0.3)
    x0 = law.sample(4000, generator=torch.Generator().manual_seed(0))
    times = (1e-3, 0.05, 0.3, 1.0)
    found = score_jacobian(sde, law.score_fn(sde), x0, times=times, seed=1)
    for row in found["per_time"]:
        t = torch.tensor(row["t"], dtype=torch.float64)
        variance = float(sde.var(t, 0.09))
        assert row["ratio"] == pytest.approx(variance ** -2, rel=0.02), row
    assert found["value"] == pytest.approx(np.mean([-math.log10(float(sde.var(torch.tensor(t), 0.09)))
                                                    for t in times]), abs=0.01)


def test_prior_kl_of_gaussian_data_matches_the_closed_form():
    """KL between two Gaussians in closed form: data N(0, s^2 I_2) under the VPSDE at t, against the prior N(0, I)."""
    from cldsgm.eval.properties import prior_kl
    from cldsgm.oracles import GaussianMixture
    from cldsgm.sde import build_sde

    sde, law = build_sde("vpsde"), GaussianMixture.gaussian(2, 0.3)
    times = [0.1, 0.2, 0.4]
    found = prior_kl(law, sde, times=times, n=20000, seed=3, counts=stats.resample_counts(20000, 100, 3))
    for row in found["per_time"]:
        v = float(sde.var(torch.tensor(row["t"], dtype=torch.float64), 0.09))
        exact = 2 * 0.5 * (v - 1 - math.log(v))
        assert abs(row["kl"] - exact) < 4 * row["se"] + 1e-4, (row, exact)
    assert times[0] <= found["value"] <= times[-1] or found["value"] == times[-1]
    assert len(found["replicates"]) == 100


def test_the_gradient_variance_is_the_trace_of_the_per_example_covariance():
    from cldsgm.eval.properties import _trace_cov

    rng = np.random.default_rng(0)
    g = rng.normal(size=(30, 7)) * rng.uniform(0.1, 3, size=7)
    direct = np.trace(np.cov(g, rowvar=False))
    assert _trace_cov(g @ g.T, np.ones((1, 30)))[0] == pytest.approx(direct, rel=1e-12)
    counts = stats.resample_counts(30, 100, 1)
    resampled = np.repeat(g, counts[5], axis=0)
    assert _trace_cov(g @ g.T, counts)[5] == pytest.approx(np.trace(np.cov(resampled, rowvar=False)), rel=1e-10)


def test_the_parent_run_carries_each_verdict_as_a_number_and_in_words():
    from cldsgm.tracking.store import claim_tags, headline_metrics

    summary = {"claims": {"cld-sscs-em diamond_cld nfe50": {"verdict": "holds", "difference": -0.02, "ci_low": -0.04,
                                                            "ci_high": -0.01, "seeds (A/B)": "1/1"},
                          "cld-vpsde-em digits nfe50": {"verdict": "inconclusive (one training seed)",
                                                        "difference": 7.8, "ci_low": -3.2, "ci_high": 21.1,
                                                        "seeds (A/B)": "1/1"}}}
    metrics = headline_metrics(summary)
    assert metrics["claim/cld-sscs-em diamond_cld nfe50_verdict"] == 1
    assert metrics["claim/cld-vpsde-em digits nfe50_verdict"] == 0
    assert metrics["claim/cld-vpsde-em digits nfe50_ci_high"] == 21.1
    assert claim_tags(summary)["claim/cld-vpsde-em digits nfe50"] == "inconclusive (one training seed) (seeds 1/1)"
