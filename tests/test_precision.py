"""The effective sigma_d from a score's Jacobian (cldsgm.samplers.precision): exact on Gaussian data, the component
std on the diamond near the data, an inverse that round-trips, and the flip experiment in miniature."""

import math

import pytest
import torch

from cldsgm.oracles import GaussianMixture, diamond
from cldsgm.samplers.precision import effective_sigma, sigma_from_stiffness, stiffness_of_sigma
from cldsgm.sde import build_sde

TIMES = (1e-3, 5e-3, 0.02, 0.1, 0.5)


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
def test_gaussian_data_gives_its_own_std_at_every_time(sde_name):
    """N(0, 0.07^2): the score is affine, its Jacobian the kernel precision of sigma 0.07 at every t."""
    sde, law = build_sde(sde_name), GaussianMixture.gaussian(2, 0.07)
    x0 = law.sample(256, generator=torch.Generator().manual_seed(0))
    for row in effective_sigma(sde, law.score_fn(sde), x0, TIMES, probes=1):
        assert row["sigma_d"] == pytest.approx(0.07, rel=1e-6), row


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
def test_diamond_gives_the_component_std_near_the_data(sde_name):
    """Measured 0.0400 at t <= 0.01 for both SDEs; mode mixing makes it grow towards the global std (0.41) later."""
    sde, law = build_sde(sde_name), diamond()
    x0 = law.sample(2000, generator=torch.Generator().manual_seed(0))
    rows = effective_sigma(sde, law.score_fn(sde), x0, (1e-3, 5e-3, 0.1), probes=2)
    assert all(r["sigma_d"] == pytest.approx(0.04, rel=0.02) for r in rows[:2]), rows
    assert rows[2]["sigma_d"] > 0.3, rows


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
def test_the_softest_direction_names_the_largest_std(sde_name):
    """Data with several scales, N(0, diag(0.02^2, 0.05^2, 0.3^2, 1.5^2)) in random order: the softest direction is
    the largest std at every t, exactly (the score is affine and 4 Lanczos steps span the space);
    the mean stiffness names a scale in between, set by the stiff directions (the estimator that failed on digits)."""
    stds = torch.tensor([[0.3, 0.02, 1.5, 0.05]], dtype=torch.float64)
    law = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64), stds)
    sde = build_sde(sde_name)
    x0 = law.sample(64, generator=torch.Generator().manual_seed(0))
    times = (1e-2, 2e-2, 5e-2)
    for row in effective_sigma(sde, law.score_fn(sde), x0, times, reading="softest"):
        assert row["sigma_d"] == pytest.approx(1.5, rel=1e-3), row
    for row in effective_sigma(sde, law.score_fn(sde), x0, times, reading="mean", probes=2):
        assert 0.02 < row["sigma_d"] < 0.3, row


def test_overlapping_modes_are_capped_at_the_datas_own_spread():
    """The diamond with component std 0.2: its modes overlap, the log-density is not concave between them and the
    softest direction is flatter than any Gaussian (inf at every t <= 0.02); the estimate stops at the data's largest
    principal std (about 0.46), where the flip experiment's sweep has its optimum (docs/samplers.md, "The SSCS
    flip")."""
    from cldsgm.samplers.precision import data_sigma_max, model_sigma_d

    sde, law = build_sde("cld"), diamond(0.2)
    x0 = law.sample(256, generator=torch.Generator().manual_seed(1))
    estimate = model_sigma_d(sde, law.score_fn(sde), x0, 1e-3)
    assert all(math.isinf(r["sigma_d"]) for r in estimate["per_time"][:2]), estimate["per_time"]
    assert estimate["sigma_d"] == pytest.approx(data_sigma_max(x0), rel=1e-2)
    assert 0.35 < estimate["sigma_d"] < 0.6
    narrow = model_sigma_d(sde, diamond().score_fn(sde), diamond().sample(256), 1e-3)
    assert narrow["sigma_d"] == pytest.approx(0.04, rel=1e-2) and narrow["data_sigma_max"] > 0.3  # not capped


def test_the_datas_largest_principal_std():
    from cldsgm.samplers.precision import data_sigma_max

    x = torch.randn(20_000, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.3, 0.02, 1.5, 0.05]
                                                                                               ).view(1, 1, 2, 2)
    assert data_sigma_max(x + 5.0) == pytest.approx(1.5, rel=0.02)  # centred: the mean does not count


def test_a_reading_that_does_not_exist_is_refused():
    sde, law = build_sde("cld"), GaussianMixture.gaussian(2, 0.07)
    with pytest.raises(ValueError, match="reading must be"):
        effective_sigma(sde, law.score_fn(sde), law.sample(8), (1e-2,), reading="median")


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.04, 0.3, 2.0])
def test_the_inverse_round_trips(sigma):
    sde = build_sde("cld")
    for t in TIMES:
        assert sigma_from_stiffness(sde, t, stiffness_of_sigma(sde, t, sigma)) == pytest.approx(sigma, abs=1e-7)


def test_stiffness_outside_every_gaussian():
    """Stiffer than a point mass -> 0; flatter than any Gaussian -> inf (not a crash, not a negative sqrt)."""
    sde = build_sde("psld")
    p0 = stiffness_of_sigma(sde, 0.01, 0.0)
    assert sigma_from_stiffness(sde, 0.01, 2 * p0) == 0.0
    assert math.isinf(sigma_from_stiffness(sde, 0.01, -1e9))


# -- wiring: `cldsgm sample` takes sigma_d from the model when the study gives none ---------------------------------
def _manifest(out):
    import json

    return json.loads((out / "manifest.json").read_text())["identity"]


def test_sample_takes_sigma_d_from_the_oracle_score(tmp_path):
    from conftest import run_cli

    common = ("sample", "--oracle", "diamond", "--sde", "cld", "--sampler", "sscs", "--nfe", "6", "--num-samples", "64")
    assert run_cli(*common, "--out", str(tmp_path / "auto")).returncode == 0
    ident = _manifest(tmp_path / "auto")
    assert ident["options"] == {"precision_sigma": 0.04}
    assert ident["precision_sigma_from"]["method"] == "softest-direction-capped"
    assert run_cli(*common, "--precision-sigma", "0", "--out", str(tmp_path / "zero")).returncode == 0
    ident = _manifest(tmp_path / "zero")
    assert ident["options"] == {"precision_sigma": 0.0} and "precision_sigma_from" not in ident
    assert run_cli(*common, "--score-step", "euler", "--out", str(tmp_path / "euler")).returncode == 0
    assert "precision_sigma" not in _manifest(tmp_path / "euler")["options"]


def test_a_checkpoint_estimate_is_made_once_and_kept_beside_it(toy_run, tmp_path):
    import json

    from conftest import run_cli

    common = ("sample", "--run-dir", str(toy_run), "--sampler", "sscs", "--nfe", "6", "--num-samples", "32")
    assert run_cli(*common, "--out", str(tmp_path / "a")).returncode == 0
    stored = toy_run / "precision_sigma.json"
    entries = json.loads(stored.read_text())
    (key, estimate), = entries.items()
    assert key.endswith(":ema:0.001:softest-direction-capped") and len(estimate["per_time"]) == 3
    assert _manifest(tmp_path / "a")["options"]["precision_sigma"] == estimate["sigma_d"] > 0
    before = stored.stat().st_mtime_ns
    assert run_cli(*common, "--seed", "1", "--out", str(tmp_path / "b")).returncode == 0
    assert stored.stat().st_mtime_ns == before  # reused, not recomputed


def test_the_measured_block_is_the_one_that_tells_widths_apart():
    """CLD noises v only; PSLD's v-stiffness barely moves with the data width near the data (3 % between sigma 0 and
    infinity at t = 1e-3), its x-stiffness by six orders of magnitude: x is measured there."""
    from cldsgm.samplers.precision import informative_block

    cld, psld = build_sde("cld"), build_sde("psld")
    assert [informative_block(cld, t) for t in TIMES] == ["v"] * len(TIMES)
    assert informative_block(psld, 1e-3) == "x"
    spread = {b: stiffness_of_sigma(psld, 1e-3, 0.0, b) / stiffness_of_sigma(psld, 1e-3, 10.0, b) for b in "xv"}
    assert spread["v"] < 1.05 and spread["x"] > 1e5, spread
