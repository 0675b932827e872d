"""Evaluation verbs, all offline: FID/KID through clean-fid's code with a stand-in Inception, FD-digits, NLL,
2-D distances, and the one record format."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from click.testing import CliRunner
from torch import nn

from cldsgm.cli import main
from cldsgm.data.prepared import load_prepared, save_prepared
from cldsgm.eval import fid as fidlib
from cldsgm.eval.digits import DigitsClassifier, digits_features, fd_digits, load_classifier
from cldsgm.oracles import oracle_law
from cldsgm.records import RecordError, make_record, read_record, write_record

pytestmark = pytest.mark.slow


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


# -- a stand-in for NVIDIA's TorchScript Inception: the same call interface, written to the test's temp dir -------
class _Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 5, stride=4)
        self.proj = nn.Linear(16 * 4 * 4, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4).flatten(1)
        return torch.tanh(self.proj(h))[:, :, None, None]  # (B, 2048, 1, 1) like Inception's pool3


class _StandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        # legacy_tensorflow path: [0, 255] images of any size, resized inside
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128.0) / 128.0)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "standin-inception.pt"  # any name: the loader links it
    torch.jit.script(_StandIn().eval()).save(str(path))
    return path


def _fd_eigh(mu1, s1, mu2, s2):
    """Fréchet distance by symmetric eigendecompositions: an implementation independent of scipy's sqrtm."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner).sum())


def _kid_unbiased(x, y):
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over the whole sets (equal sizes)."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3), ((y @ y.T / d + 1) ** 3), ((x @ y.T / d + 1) ** 3)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


@pytest.mark.e2e
def test_fid_and_kid_through_clean_fid_match_direct_formulas(standin, digits_run, digits_data, tmp_path):
    _invoke("sample", "--run-dir", digits_run, "--sampler", "em", "--nfe", 4, "--n", 48, "--net-batch", 16,
            "--device", "cpu", "--no-progress", "--out", tmp_path / "samples")
    reference = tmp_path / "ref.npz"
    _invoke("fid-stats", "--data", digits_data[1], "--n", 48, "--inception", standin, "--mode", "clean",
            "--device", "cpu", "--out", reference)
    result = _invoke("fid", "--samples", tmp_path / "samples", "--stats", reference, "--inception", standin,
                     "--mode", "clean", "--device", "cpu", "--out", tmp_path / "records")
    assert "FID (clean)" in result.output and "KID" in result.output
    record, kid_record = read_record(tmp_path / "records" / "fid.json"), read_record(tmp_path / "records" / "kid.json")
    assert record["mode"] == "clean" and record["n"] == 48 and record["nfe"] == 4 and record["sampler"] == "em"
    assert len(record["backbone"]) == 64 and record["source"]["weights"] == "ema"

    # the same features, taken again through clean-fid's pieces, and the distances by independent formulas
    model, _ = fidlib.load_inception(standin, "clean")
    from cldsgm.shards import load_samples

    images, _ = load_samples(tmp_path / "samples")
    feats = fidlib.inception_features(images, model, "clean")
    mu, sigma, ref_feats, meta = fidlib.load_stats(reference)
    assert meta["mode"] == "clean" and ref_feats.shape == (48, 2048)
    direct = _fd_eigh(feats.mean(0), np.cov(feats, rowvar=False), mu, sigma)
    assert record["plug_in"] == pytest.approx(direct, rel=1e-6)  # FID's value: bias-corrected, inside its interval
    assert record["ci_low"] <= record["value"] <= record["ci_high"] and record["value"] < record["plug_in"]
    assert kid_record["value"] == pytest.approx(_kid_unbiased(feats, ref_feats), rel=1e-9, abs=1e-12)  # unbiased


def test_a_set_against_its_own_statistics_is_at_zero():
    """clean-fid's sqrtm leaves about -2e-4 for identical laws; `frechet` reports a distance >= 0. Fewer samples
    than dimensions (a singular covariance), as for FID on small sets; 256-d (a 2048-d sqrtm costs 18 s)."""
    feats = np.random.default_rng(0).normal(size=(48, 256)) ** 3
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    value = fidlib.frechet(feats, mu, sigma)
    assert 0 <= value < 1e-6 * fidlib.frechet(feats + 1.0, mu, sigma)


def test_legacy_tensorflow_mode_resizes_inside_the_network(standin, digits_data, tmp_path):
    images, _, _ = load_prepared(digits_data[1])
    model, _ = fidlib.load_inception(standin, "legacy_tensorflow")
    assert model.resize_inside
    feats = fidlib.inception_features(images[:8], model, "legacy_tensorflow")
    clean = fidlib.inception_features(images[:8], fidlib.load_inception(standin, "clean")[0], "clean")
    assert feats.shape == clean.shape == (8, 2048) and not np.allclose(feats, clean)  # different resizers


def test_fid_bad_inputs_stop_with_one_line_and_write_nothing(standin, digits_run, tmp_path, monkeypatch):
    monkeypatch.delenv("CLDSGM_INCEPTION", raising=False)
    monkeypatch.chdir(tmp_path)
    _invoke("sample", "--run-dir", digits_run, "--sampler", "em", "--nfe", 4, "--n", 8, "--net-batch", 8,
            "--device", "cpu", "--no-progress", "--out", tmp_path / "samples")
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(64), sigma=np.eye(64))
    runner = CliRunner()
    cases = [
        (["--stats", tmp_path / "wrong.npz"], "resources/inception-2015-12-05.pt"),  # no weights anywhere
        (["--stats", tmp_path / "wrong.npz", "--inception", tmp_path / "nope.pt"], "Inception weights not found"),
        (["--stats", tmp_path / "wrong.npz", "--inception", standin], "2048-dimensional"),
    ]
    for extra, message in cases:
        result = runner.invoke(main, ["fid", "--samples", str(tmp_path / "samples"), "--device", "cpu",
                                      "--out", str(tmp_path / "records"), *map(str, extra)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "records").exists()
    assert not list(tmp_path.glob("*.pt"))  # nothing was downloaded or written as weights


def test_fd_digits_classifier_and_distance(digits_data, tmp_path):
    train_path, test_path = digits_data
    result = _invoke("digits-classifier", "--train", train_path, "--test", test_path, "--out", tmp_path / "cls.pt")
    accuracy = read_record(tmp_path / "classifier_accuracy.json")["value"]
    assert accuracy >= 0.95 and "test accuracy" in result.output
    model, meta = load_classifier(tmp_path / "cls.pt")
    assert meta["test_accuracy"] == accuracy
    test, _, _ = load_prepared(test_path)
    train, _, _ = load_prepared(train_path)
    noise = np.random.default_rng(0).integers(0, 256, size=test.shape, dtype=np.uint8)
    x = torch.from_numpy(test).float()
    for _ in range(3):  # a badly blurred copy: three 3x3 box blurs
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    blurred = x.round().clamp(0, 255).to(torch.uint8).numpy()
    fd = {name: fd_digits(model, images, test) for name, images in
          (("train", train), ("noise", noise), ("blurred", blurred))}
    assert fd["train"] * 20 < fd["noise"] and fd["train"] * 20 < fd["blurred"], fd
    assert digits_features(model, test[:5]).shape == (5, 128)


@pytest.mark.e2e
def test_fd_digits_of_a_sample_directory_writes_a_record(digits_run, digits_data, tmp_path):
    _invoke("digits-classifier", "--train", digits_data[0], "--test", digits_data[1], "--epochs", 2,
            "--out", tmp_path / "cls.pt")
    _invoke("sample", "--run-dir", digits_run, "--sampler", "sscs", "--nfe", 4, "--n", 40, "--net-batch", 40,
            "--device", "cpu", "--no-progress", "--out", tmp_path / "samples")
    _invoke("fd-digits", "--samples", tmp_path / "samples", "--classifier", tmp_path / "cls.pt",
            "--data", digits_data[1], "--out", tmp_path / "rec")
    record = read_record(tmp_path / "rec" / "fd_digits.json")
    assert record["metric"] == "fd_digits" and record["sampler"] == "sscs" and record["value"] > 0
    # per-class FD: the reference narrowed to one class's images; a class the data lacks is refused
    _invoke("fd-digits", "--samples", tmp_path / "samples", "--classifier", tmp_path / "cls.pt",
            "--data", digits_data[1], "--class", 3, "--out", tmp_path / "rec3", "--bootstrap", 0)
    per_class = read_record(tmp_path / "rec3" / "fd_digits.json")
    assert per_class["extra"]["class"] == 3 and per_class["value"] > 0 and per_class["value"] != record["value"]
    refused = CliRunner().invoke(main, ["fd-digits", "--samples", str(tmp_path / "samples"), "--classifier",
                                        str(tmp_path / "cls.pt"), "--data", str(digits_data[1]), "--class", "12",
                                        "--out", str(tmp_path / "rec12")])
    assert refused.exit_code == 1 and "fewer than two images of class 12" in refused.stderr
    assert not (tmp_path / "rec12" / "fd_digits.json").exists()


def test_a_classifier_file_with_code_is_refused(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"format": "cldsgm-digits-classifier-v1", "state_dict": Payload()}, tmp_path / "cls.pt")
    with pytest.raises(ValueError, match="refusing to unpickle code"):
        load_classifier(tmp_path / "cls.pt")
    assert not (tmp_path / "pwned").exists()
    assert isinstance(DigitsClassifier(), nn.Module)


def _gauss_split(tmp_path, n=300):
    points = oracle_law("gaussian").sample(n, generator=torch.Generator().manual_seed(1)).float().numpy()
    save_prepared(tmp_path, "gauss", "test", points, kind="points", source="test")
    exact = -oracle_law("gaussian").log_prob(torch.from_numpy(points).double()).numpy()
    return tmp_path / "gauss_test.npz", exact


def test_nll_with_the_gaussian_oracle_reproduces_the_analytic_nll(tmp_path):
    data, exact = _gauss_split(tmp_path)
    _invoke("nll", "--oracle", "gaussian", "--sde", "vpsde", "--data", data, "--probes", "exact", "--batch-size", 100,
            "--shard-size", 150, "--device", "cpu", "--no-progress", "--out", tmp_path / "vp")
    record = read_record(tmp_path / "vp" / "nll_nats.json")
    assert record["value"] == pytest.approx(exact.mean(), abs=2e-3)  # VPSDE: exact per item
    assert record["stderr"] == pytest.approx(exact.std(ddof=1) / np.sqrt(len(exact)), rel=0.05)
    # CLD: an upper bound per item whose mean over v is the NLL: within its standard error of the truth
    _invoke("nll", "--oracle", "gaussian", "--data", data, "--probes", "exact", "--batch-size", 100,
            "--device", "cpu", "--no-progress", "--out", tmp_path / "cld")
    record = read_record(tmp_path / "cld" / "nll_nats.json")
    assert abs(record["value"] - exact.mean()) < 3 * record["stderr"], (record["value"], exact.mean())
    assert record["nfe"] > 10 and record["source"] == {"oracle": "gaussian"}
    assert record["bound"] is True and record["ci_low"] < record["value"] < record["ci_high"]


def test_nll_beside_the_exact_nll_of_the_data_law_with_the_probe_variance_apart(tmp_path):
    data, exact = _gauss_split(tmp_path, n=120)
    _invoke("nll", "--oracle", "gaussian", "--sde", "vpsde", "--data", data, "--probes", "gaussian", "--n-probes", 3,
            "--exact-law", "gaussian", "--batch-size", 60, "--device", "cpu", "--no-progress", "--out", tmp_path / "vp")
    record = read_record(tmp_path / "vp" / "nll_nats.json")
    assert record["bound"] is False  # VPSDE: the ODE's NLL itself
    assert record["exact"]["value"] == pytest.approx(exact.mean(), rel=1e-12)
    assert record["exact"]["gap"] == pytest.approx(record["value"] - exact.mean(), abs=1e-12)
    variance = record["variance"]
    # the Hutchinson probes add variance of their own; the data's is what remains; both are positive here
    assert variance["probes"] > 0 and variance["data"] > 0
    assert variance["probes"] + variance["data"] == pytest.approx(variance["between_items"])


def test_nll_of_a_trained_toy_net_is_finite_and_resumes(toy_run, diamond_data, tmp_path):
    args = ["nll", "--run-dir", toy_run, "--data", diamond_data, "--n", 40, "--batch-size", 20, "--shard-size", 20,
            "--rtol", 1e-3, "--atol", 1e-3, "--device", "cpu", "--no-progress", "--out", tmp_path / "nll"]
    _invoke(*args[:-2], "--first", 0, "--count", 20, *args[-2:])
    assert not (tmp_path / "nll" / "nll_nats.json").exists()  # half done: no record yet
    result = _invoke(*args)
    record = read_record(tmp_path / "nll" / "nll_nats.json")
    assert np.isfinite(record["value"]) and record["stderr"] > 0 and record["n"] == 40
    assert "over 40 items" in result.output


def test_nll_refuses_data_the_model_does_not_take(toy_run, digits_data, tmp_path):
    for source in (["--oracle", "diamond"], ["--run-dir", str(toy_run)]):
        result = CliRunner().invoke(main, ["nll", *source, "--data", str(digits_data[1]), "--device", "cpu",
                                           "--out", str(tmp_path / "x")])
        assert result.exit_code == 1 and "the model takes points data of shape [2]" in result.output


def test_sample_distance_with_mode_coverage(tmp_path):
    _invoke("sample", "--oracle", "diamond", "--sampler", "sscs", "--nfe", 50, "--n", 2000, "--no-progress",
            "--out", tmp_path / "s")
    result = _invoke("sample-distance", "--samples", tmp_path / "s", "--oracle", "diamond", "--out", tmp_path / "r")
    assert "mode TV" in result.output
    tv = read_record(tmp_path / "r" / "mode_tv.json")
    assert tv["value"] < 0.05 and len(tv["extra"]["mode_weights"]) == 9
    w2 = read_record(tmp_path / "r" / "sliced_w2.json")
    assert w2["nfe_budget"] == 50 and w2["sampler"] == "sscs" and 0 < w2["value"] < 0.1


def test_sample_distance_refuses_images(digits_run, tmp_path):
    _invoke("sample", "--run-dir", digits_run, "--sampler", "em", "--nfe", 4, "--n", 8, "--net-batch", 8,
            "--device", "cpu", "--no-progress", "--out", tmp_path / "s")
    result = CliRunner().invoke(main, ["sample-distance", "--samples", str(tmp_path / "s"), "--oracle", "diamond",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "is for 2-D points" in result.output


def test_records_are_validated_on_write_and_read(tmp_path):
    record = make_record("fid", 3.2, n=10, seed=0, wall_s=1.0, device="cpu", mode="clean")
    write_record(tmp_path / "fid.json", record)
    assert read_record(tmp_path / "fid.json")["value"] == 3.2
    with pytest.raises(RecordError, match="metric"):
        make_record("fidd", 1.0, n=1, seed=0, wall_s=0, device="cpu")
    bad = {**record, "colour": "red"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RecordError, match="colour"):
        read_record(tmp_path / "bad.json")


def test_nll_of_points_takes_the_exact_divergence_and_resamples_its_items(toy_run, diamond_data, tmp_path):
    """--probes auto: the exact divergence for a 4-D phase-space state; --bootstrap: an interval over the items,
    resampled alike for every model on the same items and seed (paired), its value inside it."""
    common = ["--data", diamond_data, "--n", 60, "--batch-size", 60, "--rtol", 1e-3, "--atol", 1e-3, "--device", "cpu",
              "--no-progress", "--bootstrap", 100, "--exact-law", "diamond"]
    _invoke("nll", "--run-dir", toy_run, *common, "--out", tmp_path / "model")
    _invoke("nll", "--oracle", "diamond", *common, "--out", tmp_path / "oracle")
    model, oracle = (read_record(tmp_path / d / "nll_nats.json") for d in ("model", "oracle"))
    assert model["options"]["probes"] == "exact" and model["options"]["n_probes"] == 0
    assert model["ci_low"] <= model["value"] <= model["ci_high"] and model["bootstrap"]["resamples"] == 100
    assert model["plug_in"] == model["value"]  # a mean: no bias to correct
    # the exact score's NLL bound is above the law's own NLL by the velocity's ELBO gap only
    assert oracle["exact"]["gap"] > 0 and model["exact"]["value"] == oracle["exact"]["value"]


def test_the_floor_is_real_data_scored_like_a_sample_set(diamond_data, digits_data, tmp_path):
    from cldsgm.data import prepare

    prepare("diamond", "test", tmp_path, n=2000, seed=1)
    result = _invoke("sample-distance", "--real", diamond_data, "--n", 1000, "--data", tmp_path / "diamond_test.npz",
                     "--oracle", "diamond", "--out", tmp_path / "floor", "--label", "source=floor-diamond",
                     "--bootstrap", 100)
    assert "sliced W2" in result.output
    w2 = read_record(tmp_path / "floor" / "sliced_w2.json")
    assert w2["labels"] == {"kind": "floor", "source": "floor-diamond"} and w2["n"] == 1000
    assert w2["ci_low"] <= w2["value"] <= w2["ci_high"] < 0.1 and w2["value"] < w2["plug_in"]  # bias-corrected
    assert w2["extra"]["real"]["split"] == "train"
    _invoke("digits-classifier", "--train", digits_data[0], "--test", digits_data[1], "--epochs", 2,
            "--out", tmp_path / "cls.pt")
    _invoke("fd-digits", "--real", digits_data[0], "--n", 200, "--classifier", tmp_path / "cls.pt", "--data",
            digits_data[1], "--out", tmp_path / "fd", "--bootstrap", 100)
    fd = read_record(tmp_path / "fd" / "fd_digits.json")
    assert fd["labels"]["kind"] == "floor" and fd["ci_low"] <= fd["value"] <= fd["ci_high"]
    assert fd["value"] < fd["plug_in"]
    for extra, message in ((["--samples", tmp_path / "s"], "--real takes one --out and no --samples"),
                           ([], "--real needs --n")):
        refused = CliRunner().invoke(main, [str(a) for a in ["sample-distance", "--real", diamond_data, *extra,
                                                             "--oracle", "diamond", "--out", tmp_path / "x"]])
        assert refused.exit_code == 2 and message in refused.output
    too_many = CliRunner().invoke(main, ["sample-distance", "--real", str(diamond_data), "--n", "99999", "--oracle",
                                         "diamond", "--out", str(tmp_path / "x")])
    assert too_many.exit_code == 1 and "fewer than --n 99999" in too_many.output


def test_the_property_verbs_write_one_record_each(toy_run, diamond_data, tmp_path):
    result = _invoke("score-jacobian", "--run-dir", toy_run, "--data", diamond_data, "--n", 64, "--bootstrap", 100,
                     "--out", tmp_path / "jac", "--label", "source=toy")
    jac = read_record(tmp_path / "jac" / "score_jacobian.json")
    assert len(jac["extra"]["per_time"]) == 10 and jac["ci_low"] <= jac["value"] <= jac["ci_high"]
    assert "score Jacobian" in result.output
    _invoke("objective-variance", "--run-dir", toy_run, "--data", diamond_data, "--n", 16, "--bootstrap", 100,
            "--out", tmp_path / "grad", "--label", "source=toy")
    hsm, dsm = (read_record(tmp_path / "grad" / k / "grad_variance.json") for k in ("hsm", "dsm"))
    assert hsm["labels"] == {"source": "toy", "row": "grad-hsm", "estimator": "hsm"}
    assert dsm["extra"]["objective"] == "dsm"
    assert hsm["value"] > 0 and dsm["value"] > 0 and hsm["bootstrap"]["seed"] == dsm["bootstrap"]["seed"]
    _invoke("equilibrium", "--oracle", "diamond", "--sde", "cld", "--n", 2000, "--times", 10, "--bootstrap", 100,
            "--out", tmp_path / "eq")
    eq = read_record(tmp_path / "eq" / "prior_kl.json")
    kl = [p["kl"] for p in eq["extra"]["per_time"]]
    assert kl[0] > 0.1 > kl[-1] and 0.1 < eq["value"] < 1 and eq["ci_low"] <= eq["value"] <= eq["ci_high"]
    refused = CliRunner().invoke(main, ["equilibrium", "--oracle", "diamond", "--sde", "cld", "--sde-param",
                                        "m_inv=-1", "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 1 and refused.output.startswith("Error: ") and len(refused.output.splitlines()) == 1
    wrong = CliRunner().invoke(main, ["objective-variance", "--run-dir", str(toy_run), "--data",
                                      str(digits_data_path(tmp_path)), "--out", str(tmp_path / "bad2")])
    assert wrong.exit_code == 1 and "the model takes points data" in wrong.output


def digits_data_path(tmp_path):
    from cldsgm.data import prepare

    prepare("digits", "test", tmp_path)
    return tmp_path / "digits_test.npz"
