"""Sampler oracles with exact scores: stationarity, exactness on Gaussian data and the samplers' invariants."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.linalg import expm

from cldsgm.eval.distances import energy_distance, sliced_wasserstein
from cldsgm.oracles import GaussianMixture, diamond
from cldsgm.samplers import PerSampleNoise, generate, sample_em, sample_seeds, sample_sscs, time_grid
from cldsgm.samplers.noise import _splitmix64
from cldsgm.sde import CLD, PSLD, VPSDE

from conftest import f64

# -- time grids -------------------------------------------------------------------------------------------


def test_quadratic_grid_matches_spec():
    np.testing.assert_allclose(time_grid(5, 1e-3, "quadratic").numpy(), [1, 0.5629375, 0.25075, 0.0634375, 0.001])


def test_psld_grids_with_six_discrete_steps():
    np.testing.assert_allclose(time_grid(6, 1e-3, "uniform").numpy(), [1, 0.8002, 0.6004, 0.4006, 0.2008, 0.001])
    np.testing.assert_allclose(time_grid(6, 1e-3, "quadratic").numpy(),
                               [1, 0.64036, 0.36064, 0.16084, 0.04096, 0.001])
    assert len(time_grid(6, 1e-3, denoise=False)) == 7
    assert time_grid(6).dtype == torch.float64


@pytest.mark.parametrize(("kwargs", "match"), [({"nfe": 1}, "nfe"), ({"nfe": 10, "t_min": 0.0}, "t_min"),
                                               ({"nfe": 10, "t_min": 1.0}, "t_min"),
                                               ({"nfe": 10, "striding": "cubic"}, "striding")])
def test_bad_grid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        time_grid(**kwargs)


# -- per-sample noise -------------------------------------------------------------------------------------


def test_splitmix64_matches_unsigned_reference():
    """torch int64 wrap-around reproduces the uint64 hash (fails on a platform that does not wrap)."""
    rng = np.random.default_rng(0)
    values = rng.integers(-(2**63), 2**63 - 1, 10_000, dtype=np.int64)
    x = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    np.testing.assert_array_equal(_splitmix64(torch.from_numpy(values)).numpy(), x.view(np.int64))


def test_noise_is_standard_normal_and_independent():
    noise = PerSampleNoise(sample_seeds(0, 0, 2000))
    first, second = noise.normal((50,), dtype=torch.float64), noise.normal((50,), dtype=torch.float64)
    values = first.flatten().numpy()
    assert stats.kstest(values, "norm").pvalue > 1e-3
    assert abs(values.mean()) < 5 / math.sqrt(values.size) and abs(values.var() - 1) < 5 * math.sqrt(2 / values.size)
    # across draws, across samples, across elements: no correlation
    for a, b in ((first, second), (first[:-1], first[1:]), (first[:, :-1], first[:, 1:])):
        assert abs(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]) < 0.01


def test_noise_depends_only_on_seed_and_draw():
    seeds = sample_seeds(3, 0, 6)
    whole = PerSampleNoise(seeds)
    parts = [PerSampleNoise(seeds[:2]), PerSampleNoise(seeds[2:])]
    for _ in range(3):
        torch.testing.assert_close(whole.normal((4, 2)), torch.cat([p.normal((4, 2)) for p in parts]), rtol=0, atol=0)
    assert not torch.equal(sample_seeds(3, 0, 6), sample_seeds(4, 0, 6))
    torch.testing.assert_close(sample_seeds(3, 2, 4), seeds[2:], rtol=0, atol=0)


# -- every sampler: shapes, dtypes, determinism, batch independence ----------------------------------------

CASES = [(CLD(), "em", {}), (CLD(), "sscs", {}), (CLD(), "sscs", {"score_step": "euler", "score_time": "start"}),
         (PSLD(), "em", {}), (PSLD(), "sscs", {}), (VPSDE(), "em", {}), (VPSDE(), "pc", {}),
         (CLD(), "ode", {}), (VPSDE(), "ode", {"method": "dopri5"})]
CASE_IDS = ["cld-em", "cld-sscs", "cld-sscs-ref", "psld-em", "psld-sscs", "vp-em", "vp-pc", "cld-ode", "vp-ode"]


@pytest.mark.parametrize(("sde", "sampler", "options"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampler_shape_dtype_determinism(sde, sampler, options, dtype):
    score = diamond().score_fn(sde)
    a = generate(sde, score, 6, (2,), sampler=sampler, nfe=8, seed=1, dtype=dtype, **options)
    b = generate(sde, score, 6, (2,), sampler=sampler, nfe=8, seed=1, dtype=dtype, **options)
    assert a.x.shape == (6, 2) and a.x.dtype == dtype and a.u.shape == (6, sde.state_channels(2))
    assert torch.isfinite(a.u).all()
    torch.testing.assert_close(a.u, b.u, rtol=0, atol=0)
    c = generate(sde, score, 6, (2,), sampler=sampler, nfe=8, seed=2, dtype=dtype, **options)
    assert not torch.equal(a.u, c.u)
    if sampler in ("em", "sscs"):
        assert a.nfe == 8
    elif sampler == "pc":
        assert a.nfe == 1 + 2 * 3  # 3 steps of (corrector + predictor) and the denoising step
    else:
        assert a.nfe > 8


@pytest.mark.parametrize(("sde", "sampler", "options"), CASES, ids=CASE_IDS)
def test_samples_do_not_depend_on_batch_size(sde, sampler, options):
    score = diamond().score_fn(sde)
    kwargs = {"sampler": sampler, "nfe": 10, "seed": 5, "dtype": torch.float64, **options}
    whole = generate(sde, score, 8, (2,), **kwargs).u
    parts = torch.cat([generate(sde, score, 3, (2,), first_index=0, **kwargs).u,
                       generate(sde, score, 5, (2,), first_index=3, **kwargs).u])
    if sampler == "ode":  # adaptive steps are shared by a batch: equal up to the solver tolerance
        torch.testing.assert_close(whole, parts, rtol=0, atol=1e-2)
    else:
        torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)


# -- SSCS --------------------------------------------------------------------------------------------------


def test_sscs_half_step_matches_spec_and_expm():
    sde = CLD()
    ou = sde.splitting_ou()
    a_r = np.array([[0.0, -sde.m_inv], [1.0, -sde.friction * sde.m_inv]])
    np.testing.assert_allclose(np.array(ou.drift_matrix), a_r)
    phi = np.array([float(c) for c in ou.transition(f64(0.1))]).reshape(2, 2)
    np.testing.assert_allclose(phi, expm(0.1 * a_r), rtol=1e-12)
    cov = ou.added_cov(f64(0.1))
    np.testing.assert_allclose([float(cov.xx), float(cov.xv), float(cov.vv)], [7.926332e-3, -2.681280e-2, 0.1360456],
                               rtol=1e-6)
    sigma_inf = np.diag([1.0, sde.mass])
    np.testing.assert_allclose(a_r @ sigma_inf + sigma_inf @ a_r.T + np.diag(sde.noise), 0, atol=1e-12)


@pytest.mark.parametrize("sde", [CLD(), PSLD(), PSLD(Gamma=1.0, nu=3.0)], ids=["cld", "psld", "psld-b"])
@pytest.mark.parametrize("options", [{}, {"score_step": "euler", "score_time": "start", "second_half": "reference"},
                                     {"score_step": "exponential", "score_time": "start"}])
def test_sscs_keeps_the_prior_invariant_under_the_prior_score(sde, options):
    n, steps = 100_000, 7
    noise = PerSampleNoise(sample_seeds(11, 0, n))
    u0 = sde.prior_from_normal(noise.normal((2,), dtype=torch.float64))
    ts = time_grid(steps, 1e-3, "quadratic", denoise=False)
    u = sample_sscs(sde, lambda u, t: sde.prior_score(u), u0, ts, noise=noise, denoise=False, **options)
    cov = np.cov(u.numpy().T)
    se = 5 * math.sqrt(2 / n)
    np.testing.assert_allclose(np.diag(cov), [1.0, sde.mass], rtol=se)
    assert abs(cov[0, 1]) < se * math.sqrt(sde.mass)
    # with the prior score the score step is the identity: the map is exact, not just in law
    assert not torch.allclose(u, u0)


def test_sscs_beats_em_at_low_nfe_on_diamond():
    """The paper's claim, measured with the exact score: CLD, uniform striding, NFE 20 and 50."""
    mix, sde = diamond(), CLD(numerical_eps=1e-6)
    score = mix.score_fn(sde)
    ref = mix.sample(10_000, generator=torch.Generator().manual_seed(1))
    # measured over seeds 0-2: sscs / em = 0.19 at NFE 20 and 0.67 at NFE 50 (sliced W2, floor ~0.02)
    for nfe, ratio in ((20, 0.4), (50, 0.8)):
        dist = {name: sliced_wasserstein(generate(sde, score, 10_000, (2,), sampler=name, nfe=nfe,
                                                  dtype=torch.float64).x, ref) for name in ("em", "sscs")}
        assert dist["sscs"] < ratio * dist["em"], (nfe, dist)


# -- convergence -------------------------------------------------------------------------------------------


class _IndicatorNoise:
    """Noise for a linear sampler: sample 0 gets none, sample j >= 1 a unit kick at draw j - 1 only."""

    def __init__(self):
        self.draws = 0

    def like(self, u):
        kick = torch.zeros_like(u)
        if self.draws + 1 < u.shape[0]:
            kick[self.draws + 1] = 1.0
        self.draws += 1
        return kick


def test_em_weak_order_one_on_nested_grids():
    """|Var(x_{t_min}) - exact| of EM with the exact score of Gaussian data falls like h (weak order 1).

    With a linear score EM is linear, u_n = m u_0 + sum_k c_k z_k, so Var(u_n) = m^2 Var(u_0) + sum_k c_k^2
    exactly; running the sampler on indicator inputs gives m and every c_k without Monte Carlo error.
    """
    sde, s2, t_min = VPSDE(), 0.25, 0.05
    score = GaussianMixture.gaussian(1, math.sqrt(s2)).score_fn(sde)
    exact_var = float(sde.var(f64(t_min), s2))
    steps_list, errors = (8, 16, 32, 64, 128), []
    for steps in steps_list:
        u0 = torch.zeros(steps + 1, 1, dtype=torch.float64)
        u0[0] = 1.0
        u = sample_em(sde, score, u0, time_grid(steps, t_min, "uniform", denoise=False), noise=_IndicatorNoise(),
                      denoise=False)
        var = float(u[0, 0] ** 2 * sde.var(f64(1.0), s2) + (u[1:, 0] ** 2).sum())  # start from the exact p_1
        errors.append(var - exact_var)
    order = -np.polyfit(np.log(steps_list[-3:]), np.log(np.abs(errors[-3:])), 1)[0]
    print('EM weak errors', errors, 'order', order)
    assert 0.9 < order < 1.1, (errors, order)
    # a Monte Carlo check that the linear bookkeeping describes the sampler
    n = 200_000
    noise = PerSampleNoise(sample_seeds(21, 0, n))
    u0 = math.sqrt(float(sde.var(f64(1.0), s2))) * noise.normal((1,), dtype=torch.float64)
    u = sample_em(sde, score, u0, time_grid(8, t_min, "uniform", denoise=False), noise=noise, denoise=False)
    assert abs(float(u.var()) - (exact_var + errors[0])) < 5 * math.sqrt(2 / n) * float(u.var())


CONVERGENCE = [(CLD(numerical_eps=1e-6), "em", {}), (CLD(numerical_eps=1e-6), "sscs", {}),
               (CLD(numerical_eps=1e-6), "sscs", {"score_step": "euler", "score_time": "start"}),
               (PSLD(), "em", {}), (PSLD(), "sscs", {}), (VPSDE(), "em", {}), (VPSDE(), "pc", {"n_corrector": 0})]


def _diamond_distances(sde, sampler, nfes, striding="quadratic", n=4000, **options):
    mix = diamond()
    score = mix.score_fn(sde)
    ref, ref2 = (mix.sample(n, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    dist = [energy_distance(generate(sde, score, n, (2,), sampler=sampler, nfe=nfe, striding=striding,
                                     dtype=torch.float64, **options).x, ref) for nfe in nfes]
    return dist, energy_distance(ref, ref2)


@pytest.mark.parametrize(("sde", "sampler", "options"), CONVERGENCE,
                         ids=["cld-em", "cld-sscs", "cld-sscs-ref", "psld-em", "psld-sscs", "vp-em", "vp-predictor"])
def test_every_sampler_converges_to_the_data_law(sde, sampler, options):
    dist, floor = _diamond_distances(sde, sampler, (6, 30, 200), **options)
    assert dist[2] < dist[1] < dist[0], dist
    assert dist[2] < 4 * floor, (dist, floor)


def test_per_sample_corrector_steps_grow_the_error_with_nfe():
    """step_size 'sample' (each sample's own |z| / |s|) is heavy-tailed in low
    dimension (|s| ~ 0 at a mode's centre): its error grows with NFE at fixed snr, and a smaller snr does not cure it
    (measured, energy distance, floor 5e-4: uniform NFE 30/400 gives 2.4e-2/1.4e-2 at snr 0.16 and 1.0e-2/2.0e-3 at
    0.01). The default 'noise' step, 2 alpha snr^2 sigma_t^2, improves with NFE like EM does."""
    old, floor = _diamond_distances(VPSDE(), "pc", (19, 99), step_size="sample")
    new, _ = _diamond_distances(VPSDE(), "pc", (19, 99))
    em, _ = _diamond_distances(VPSDE(), "em", (19, 99))
    assert old[1] > old[0], old
    assert new[1] < new[0] and new[1] < 3 * em[1], (new, em)
    assert new[1] < 0.5 * old[1], (new, old)


@pytest.mark.parametrize("sde", [CLD(numerical_eps=1e-6), PSLD(), VPSDE()], ids=["cld", "psld", "vp"])
def test_probability_flow_ode_converges_as_tolerance_tightens(sde):
    mix = diamond()
    score, n = mix.score_fn(sde), 3000
    ref, ref2 = (mix.sample(n, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    floor = energy_distance(ref, ref2)
    loose = generate(sde, score, n, (2,), sampler="ode", rtol=1e-1, atol=1e-1, dtype=torch.float64)
    tight = generate(sde, score, n, (2,), sampler="ode", rtol=1e-5, atol=1e-5, dtype=torch.float64)
    assert tight.nfe > loose.nfe
    assert energy_distance(tight.x, ref) < 4 * floor < energy_distance(loose.x, ref)


# -- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sde", "kwargs", "match"), [
    (VPSDE(), {"sampler": "sscs", "nfe": 10}, "sscs"),
    (CLD(), {"sampler": "pc", "nfe": 10}, "pc"),
    (CLD(), {"sampler": "heun", "nfe": 10}, "unknown sampler"),
    (CLD(), {"sampler": "em", "nfe": 1}, "nfe"),
    (CLD(), {"sampler": "em", "nfe": 10, "t_min": 1.5}, "t_min"),
    (CLD(), {"sampler": "em", "nfe": 10, "t_min": 0.0}, "t_min"),
    (CLD(), {"sampler": "ode", "method": "euler"}, "ODE method"),
    (CLD(), {"sampler": "sscs", "nfe": 10, "score_step": "rk4"}, "score_step"),
])
def test_bad_sampler_input(sde, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(sde, diamond().score_fn(sde), 4, (2,), **kwargs)
