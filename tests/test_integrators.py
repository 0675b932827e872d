"""Acceptance tests T1-T3 (docs/samplers.md): exact moment propagation on 1-D Gaussian data (float64, no
Monte Carlo, seconds) and the identities the integrators rest on.

rel = Var(x) after the sampler / Var(x) of the exact law pushed through the same denoising map - 1; the order
is log2 of the ratio of |rel| at NFE 81 -> 161 -> 321 (tests/moments.py).
"""

import math

import pytest
import torch

from cldsgm.oracles import diamond
from cldsgm.samplers.integrators import complete_score, sample_conjugate, sample_ge_ode, sample_ge_sde
from cldsgm.samplers.sde_solvers import sample_em, sample_sscs
from cldsgm.sde import build_sde

from moments import GaussianData, relative_variance_error

NFES = (81, 161, 321)
SIGMA = 0.04


def _cld():
    return build_sde("cld", beta_min=4.0, beta_max=4.0, m_inv=4.0, gamma=0.04, numerical_eps=0.0)


def _psld():
    return build_sde("psld", Gamma=0.01, nu=4.01, beta_min=8.0, beta_max=8.0, numerical_eps=0.0)


def _rels(sampler, sde, striding, **options):
    data = GaussianData(sde, m=0.3, sigma=SIGMA)
    return [relative_variance_error(sampler, sde, n, striding, data, **options) for n in NFES]


def _orders(rels):
    return [math.log2(abs(a / b)) for a, b in zip(rels[:-1], rels[1:], strict=True)]


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
@pytest.mark.parametrize("striding", ["quadratic", "uniform"])
def test_sscs_with_the_data_precision_is_second_order(sde_name, striding):
    """T1 (c) for CLD; T3 for PSLD (the full 2x2 precision)."""
    sde = _cld() if sde_name == "cld" else _psld()
    rels = _rels(sample_sscs, sde, striding, precision_sigma=SIGMA)
    assert all(1.9 <= order <= 2.1 for order in _orders(rels)), (rels, _orders(rels))
    if striding == "quadratic":
        assert abs(rels[1]) < 1e-2, rels
    # the values measured when the tests were written: CLD q 1.80e-2 / 4.49e-3 / 1.12e-3, PSLD q 1.30e-2 / ...
    expected = {("cld", "quadratic"): 4.49e-3, ("cld", "uniform"): 6.28e-2, ("psld", "quadratic"): 3.24e-3,
                ("psld", "uniform"): 5.9e-2}[sde_name, striding]
    assert rels[1] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
def test_the_point_mass_default_is_first_order(sde_name):
    """T1 (d), a regression guard documenting why precision_sigma exists (the default stays as it was)."""
    sde = _cld() if sde_name == "cld" else _psld()
    rels = _rels(sample_sscs, sde, "quadratic")
    assert rels[1] > (0.1 if sde_name == "cld" else 0.03), rels
    assert all(order < 1.5 for order in _orders(rels)), rels


def test_euler_maruyama_error_decreases_monotonically():
    """T1 (f)."""
    data = GaussianData(_cld(), sigma=SIGMA)
    rels = [abs(relative_variance_error(sample_em, data.sde, n, "quadratic", data)) for n in (41, 81, 161, 321)]
    assert rels == sorted(rels, reverse=True), rels


def test_lambda_ddim_on_the_cholesky_eps_is_first_order():
    """T1 (e), the plain conjugate integrator (Cholesky eps): ratio of |rel| at quadratic NFE 161 -> 321 in
    [1.7, 2.3]; measured -0.108 / -0.087 / -0.046."""
    rels = _rels(sample_conjugate, _cld(), "quadratic", predict="eps_cholesky", order=0, lam=0.0)
    assert 1.7 <= abs(rels[1] / rels[2]) <= 2.3, rels
    assert rels == pytest.approx([-0.108, -0.0867, -0.0462], rel=0.02)


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
@pytest.mark.parametrize("nfe", [2, 3, 5])
def test_conjugate_is_exact_for_a_point_mass_at_any_step(sde_name, nfe):
    """Data delta_m: along its probability-flow ODE x0_hat is constant, so the data-prediction integrator in the gDDIM
    factor is exact at any step size (measured <= 1e-10); the Cholesky-eps one is not (its eps drifts over a step
    and the coarse backward map amplifies the drift: rel ~ 1e11-1e15 here), the blow-up at coarse steps."""
    sde = _cld() if sde_name == "cld" else _psld()
    point_mass = GaussianData(sde, sigma=0.0)
    for order in (0, 1, 2, 3):
        rel = relative_variance_error(sample_conjugate, sde, nfe, "quadratic", point_mass, order=order)
        assert abs(rel) <= 1e-9, (order, rel)
    cholesky = relative_variance_error(sample_conjugate, sde, nfe, "quadratic", point_mass, predict="eps_cholesky",
                                       order=0)
    assert abs(cholesky) > 1e3, cholesky


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
def test_conjugate_order_k_converges_at_order_k_plus_one(sde_name):
    """Adams-Bashforth on x0_hat: order k -> global order k + 1 (measured CLD 2.0 / 3.1 / 4.5, PSLD 2.0 / 2.7 /
    4.2 at quadratic NFE 161 -> 321; PSLD order 2 has a small constant, so its ratio wanders)."""
    sde = _cld() if sde_name == "cld" else _psld()
    data = GaussianData(sde, sigma=SIGMA)
    for order, low in ((0, 0.8), (1, 1.8), (2, 2.1), (3, 3.5)):
        rels = [relative_variance_error(sample_conjugate, sde, n, "quadratic", data, order=order) for n in (161, 321)]
        assert math.log2(abs(rels[0] / rels[1])) >= low, (order, rels)


def test_conjugate_order_zero_is_gddim_zero():
    """T2: order 0 of the data prediction = order 0 of eps_R = GE-D with sigma_d = 0 (gDDIM-0) (numerical_eps 0: GE-D
    uses the exact kernel, the multistep the trained one)."""
    sde = _cld()
    score_fn = diamond().score_fn(sde)
    ts = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.02, 1e-3], dtype=torch.float64)
    u = sde.prior_sample((32, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gddim = sample_ge_ode(sde, score_fn, u, ts)
    for predict in ("x0", "eps"):
        out = sample_conjugate(sde, score_fn, u, ts, predict=predict, order=0)
        assert torch.allclose(out, gddim, rtol=1e-6, atol=1e-8), (predict, float((out - gddim).abs().max()))


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
def test_conjugate_beats_euler_maruyama_at_low_nfe_on_the_diamond(sde_name):
    """The acceptance of at small n: finite and below EM at quadratic NFE 5, 8, 10 (the old
    Cholesky-eps lambda-DDIM gave 7e4 / 20 / 8 for CLD)."""
    from cldsgm.eval.distances import sliced_wasserstein
    from cldsgm.samplers import generate

    sde, mix = build_sde(sde_name), diamond()
    ref = mix.sample(2000, generator=torch.Generator().manual_seed(1))
    for nfe in (5, 8, 10):
        runs = {name: generate(sde, mix.score_fn(sde), 2000, (2,), sampler=name, nfe=nfe, striding="quadratic",
                               dtype=torch.float64).x for name in ("conjugate", "em")}
        conj, em = (sliced_wasserstein(runs[name], ref) for name in ("conjugate", "em"))
        assert math.isfinite(conj) and conj < em, (nfe, conj, em)


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
@pytest.mark.parametrize("nfe", [2, 3, 5, 11])
def test_gaussian_exact_steps_are_exact_at_any_nfe(sde_name, nfe):
    """T1 (a) GE-A and (b) GE-D with sigma_d = sigma, started from the exact law at t = 1."""
    sde = _cld() if sde_name == "cld" else _psld()
    data = GaussianData(sde, sigma=SIGMA)
    ancestral = relative_variance_error(sample_ge_sde, sde, nfe, "quadratic", data, precision_sigma=SIGMA)
    deterministic = relative_variance_error(sample_ge_ode, sde, nfe, "quadratic", data, precision_sigma=SIGMA)
    assert abs(ancestral) <= 1e-10 and abs(deterministic) <= 1e-8, (ancestral, deterministic)


@pytest.mark.parametrize("t", [1e-3, 0.01, 0.1, 0.5, 1.0])
def test_cld_score_completion_recovers_s_x(t):
    """T2: the s_v -> x0_hat -> s_x completion reproduces the oracle's s_x on the diamond (to 1e-10 relative)."""
    sde = build_sde("cld", numerical_eps=0.0)
    score_fn = diamond().score_fn(sde)
    torch.manual_seed(0)
    t = torch.tensor(t, dtype=torch.float64)
    u = sde.prior_sample((64, 2), dtype=torch.float64) * 0.7
    exact = score_fn(u, t)
    s_x_exact, s_v = sde.split(exact)
    completed = complete_score(sde, u, sde.join(torch.zeros_like(s_v), s_v), t)
    s_x = sde.split(completed)[0]
    assert torch.allclose(s_x, s_x_exact, rtol=1e-10, atol=1e-10 * float(s_x_exact.abs().max()))


def test_options_are_checked():
    sde, u, ts = _cld(), torch.zeros(2, 2, dtype=torch.float64), torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        sample_conjugate(sde, lambda u, t: -u, u, ts, predict="eps_cholesky", order=0, lam=-1.0)
    with pytest.raises(ValueError, match="lam applies to predict 'eps_cholesky' only"):
        sample_conjugate(sde, lambda u, t: -u, u, ts, lam=0.5)
    with pytest.raises(ValueError, match="order must be an integer in 0..3"):
        sample_conjugate(sde, lambda u, t: -u, u, ts, order=4)
    with pytest.raises(ValueError, match="predict must be one of"):
        sample_conjugate(sde, lambda u, t: -u, u, ts, predict="v")
    with pytest.raises(ValueError, match="precision_sigma must be >= 0"):
        sample_sscs(sde, lambda u, t: -u, u, ts, noise=None, precision_sigma=-0.1)
    with pytest.raises(ValueError, match="needs a phase-space SDE"):
        sample_ge_ode(build_sde("vpsde"), lambda u, t: -u, torch.zeros(2, 1), ts)


# -- wiring: the CLI, the study sweep and the report -------------------------------------------------------------
def test_new_samplers_through_the_cli(tmp_path):
    from conftest import run_cli

    done = run_cli("sample", "--oracle", "diamond", "--sde", "psld", "--sampler", "conjugate", "--predict",
                   "eps_cholesky", "--order", "0", "--lam", "0.5", "--nfe", "10", "--striding", "quadratic",
                   "--num-samples", "64", "--out", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    manifest = (tmp_path / "c" / "manifest.json").read_text()
    assert '"lam": 0.5' in manifest and '"sampler": "conjugate"' in manifest
    done = run_cli("sample", "--oracle", "diamond", "--sde", "cld", "--sampler", "sscs", "--lam", "0.5", "--nfe", "4",
                   "--num-samples", "4", "--out", str(tmp_path / "x"))
    assert done.returncode != 0 and "--lam do(es) not apply to sampler 'sscs'" in done.stderr
    done = run_cli("sample", "--oracle", "diamond", "--sde", "cld", "--sampler", "conjugate", "--order", "7", "--nfe",
                   "4", "--num-samples", "4", "--out", str(tmp_path / "o"))
    assert done.returncode != 0 and "order: 7 is greater than the maximum of 3" in done.stderr
    assert not (tmp_path / "o").exists()


def _study(**sampling):
    return {"study": "t", "data": {"digits": {}, "diamond": {}},
            "models": {"d": {"data": "digits", "config": "params/train/digits_cld.yaml"},
                       "p": {"data": "diamond", "config": "params/train/toy_cld.yaml"}},
            "sampling": {"num_samples": {"digits": 8, "diamond": 8}, "nfe": [10, 20], "stridings": ["uniform"],
                         "samplers": {"cld": ["em", "sscsfix", "sd01"]}, **sampling},
            "evaluation": {}}


def test_variants_make_their_own_rows():
    from cldsgm.study import load_study, sample_rows

    variants = {"sscsfix": {"sampler": "sscs", "options": {"precision_sigma": 0.04}, "stridings": ["quadratic"]},
                "sd01": {"sampler": "sscs", "options": {"precision_sigma": 0.1}, "nfe": [20], "data": ["digits"]}}
    rows = sample_rows(load_study(_study(variants=variants), "t.yaml"))
    names = {(r["source"], r["row"]) for r in rows}
    assert ("d", "sscsfix-quadratic-nfe10") in names and ("p", "sscsfix-quadratic-nfe20") in names
    assert ("d", "sd01-uniform-nfe20") in names and ("p", "sd01-uniform-nfe20") not in names  # digits only
    fix = next(r for r in rows if r["row"] == "sscsfix-quadratic-nfe10")
    assert fix["sampler"] == "sscs" and fix["options"] == {"precision_sigma": 0.04}


@pytest.mark.parametrize("variants, message", [
    ({}, "lists 'sscsfix', which is neither a sampler"),
    ({"sscsfix": {"sampler": "sscs", "options": {"lam": 1.0}}, "sd01": {"sampler": "sscs"}},
     "sampling.variants.sscsfix.options has ['lam'], not options of sampler 'sscs'"),
])
def test_bad_variants_are_named(variants, message):
    from cldsgm.study import StudyError, load_study

    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study(_study(variants=variants), "t.yaml")


def test_the_report_records_the_best_precision_sigma():
    import pandas as pd

    from cldsgm.report import sigma_sweep

    df = pd.DataFrame([{"source": "d", "metric": "fd_digits", "striding": "quadratic", "nfe_budget": 20,
                        "sampler": name, "value": value} for name, value in
                       (("sscs", 9.0), ("sd002", 7.5), ("sd01", 8.0), ("em", 3.0))])
    sampling = {"variants": {"sd002": {"sampler": "sscs", "options": {"precision_sigma": 0.02}},
                             "sd01": {"sampler": "sscs", "options": {"precision_sigma": 0.1}}}}
    sweep = sigma_sweep(df, sampling)
    assert list(sweep["sigma_d"]) == [0.0, 0.02, 0.1]  # em is not part of the sweep
    assert sweep.loc[sweep["best"] == "best", "sigma_d"].tolist() == [0.02]


# every fixed-step sampler of the catalog under the options that change its order (tests/moments.py, quadratic grids)
_REFERENCE_SSCS = {"score_time": "start", "score_step": "euler", "second_half": "reference"}
ORDER_CASES = [
    ("em", "cld", {}), ("em", "psld", {}), ("em", "vpsde", {}), ("pc", "vpsde", {}),
    ("euler_ode", "cld", {}), ("euler_ode", "vpsde", {}),
    ("sscs", "cld", {}), ("sscs", "cld", {"precision_sigma": SIGMA}), ("sscs", "psld", {"precision_sigma": SIGMA}),
    ("sscs", "cld", _REFERENCE_SSCS), ("sscs", "cld", {**_REFERENCE_SSCS, "precision_sigma": SIGMA}),
    ("ge_ode", "cld", {}), ("ge_sde", "cld", {}),
    *(("conjugate", "cld", {"order": k}) for k in range(4)),
    *(("conjugate", "cld", {"predict": "eps", "order": k}) for k in range(4)),
    ("conjugate", "psld", {"order": 2}), ("conjugate", "cld", {"predict": "eps_cholesky", "order": 0}),
]


def _moment_data(sde_name):
    from moments import GaussianDataVP

    if sde_name == "vpsde":
        sde = build_sde("vpsde")
        return sde, GaussianDataVP(sde, m=0.3, sigma=SIGMA)
    sde = _cld() if sde_name == "cld" else _psld()
    return sde, GaussianData(sde, m=0.3, sigma=SIGMA)


@pytest.mark.parametrize(("name", "sde_name", "options"), ORDER_CASES,
                         ids=[f"{n}-{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}"
                              for n, s, o in ORDER_CASES])
def test_each_declared_order_is_the_measured_one(name, sde_name, options):
    """catalog.SamplerSpec.order (per option where the options change it) against the order measured on nested
    quadratic grids, NFE 41 -> 81 -> 161 (-> 321 for PSLD): the best ratio reaches the declared order (within 0.3)
    and the worst does not exceed it by a whole order (an error that changes sign between two grids makes one ratio
    jump)."""
    from cldsgm import catalog

    spec = catalog.sampler(name)
    declared = spec.order_with(options)
    sde, data = _moment_data(sde_name)
    nfes = (41, 81, 161, 321) if sde_name == "psld" else (41, 81, 161)  # PSLD's small constants: a finer grid
    rels = [relative_variance_error(spec.load(), sde, n, "quadratic", data, **options) for n in nfes]
    orders = _orders(rels)
    assert max(orders) >= declared - 0.3 and min(orders) <= declared + 0.9, (declared, orders, rels)


def test_every_fixed_step_sampler_has_its_order_measured():
    from cldsgm import catalog

    measured = {name for name, _, _ in ORDER_CASES}
    assert measured == {name for name, spec in catalog.SAMPLERS.items() if not spec.adaptive}
    assert all(catalog.SAMPLERS[name].order is None for name in catalog.SAMPLERS if catalog.SAMPLERS[name].adaptive)
