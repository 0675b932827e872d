"""Conditional generation on exact scores: classifier guidance with the mixture's exact class posterior (a
closed form), and inpainting by replacement against the exact conditional law of a Gaussian mixture."""

import pytest
import torch

from cldsgm.conditional import ClassifierGradient, check_mask, guided_score, inpaint, make_mask, mixture_class_gradient
from cldsgm.eval.distances import sliced_wasserstein
from cldsgm.oracles import diamond
from cldsgm.samplers import generate
from cldsgm.sde import build_sde

N = 4000


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
@pytest.mark.parametrize("sampler, options", [("em", {}), ("sscs", {"precision_sigma": 0.04}), ("conjugate", {})])
def test_guidance_with_the_exact_posterior_samples_the_asked_component(sde_name, sampler, options):
    """Scale 1 turns the mixture's score into component k's: at NFE 50 every sample lands in k (measured 100 % for
    EM, SSCS, the conjugate integrator and the ODE) and the sliced W2 to k's own law is at its floor (measured
    1.3-4.9e-3 against 1.8e-3 between two draws of k at n = 5000); unguided, k gets its 1/9."""
    law, k, sde = diamond(), 2, build_sde(sde_name)
    reference = law.component(k).sample(N, generator=torch.Generator().manual_seed(7))
    floor = sliced_wasserstein(law.component(k).sample(N, generator=torch.Generator().manual_seed(8)), reference)
    score = guided_score(law.score_fn(sde), mixture_class_gradient(law, sde, k), 1.0)
    result = generate(sde, score, N, (2,), sampler=sampler, nfe=50, striding="quadratic", dtype=torch.float64,
                      **options)
    assert float((law.classify(result.x) == k).double().mean()) >= 0.99
    assert sliced_wasserstein(result.x, reference) < 4 * floor, floor
    unguided = generate(sde, law.score_fn(sde), N, (2,), sampler=sampler, nfe=50, striding="quadratic",
                        dtype=torch.float64, **options)
    assert float((law.classify(unguided.x) == k).double().mean()) < 0.2


def test_scale_zero_is_the_unconditioned_score_and_bad_scales_are_refused():
    sde, law = build_sde("cld"), diamond()
    score = law.score_fn(sde)
    assert guided_score(score, mixture_class_gradient(law, sde, 0), 0.0) is score
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance scale"):
            guided_score(score, mixture_class_gradient(law, sde, 0), bad)


def test_a_class_out_of_range_is_one_clear_error():
    sde, law = build_sde("psld"), diamond()
    with pytest.raises(ValueError, match=r"class 9 is out of range: this classifier knows classes 0 \.\.\. 8"):
        mixture_class_gradient(law, sde, 9)
    with pytest.raises(ValueError, match="out of range"):
        ClassifierGradient(lambda u, t: u.flatten(1)[:, :3], -1, 3)


def test_the_classifier_gradient_is_the_log_softmax_gradient_and_counts_its_calls():
    """A linear classifier logits = u W: grad_u log softmax_y = W[:, y] - sum_j p_j W[:, j], checked in closed form,
    also when called inside inference mode (as the samplers do)."""
    weights = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    grad_fn = ClassifierGradient(lambda u, t: u @ weights, 1, 3)
    u = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        grad = grad_fn(u, torch.tensor(0.5))
    probs = torch.softmax(u @ weights, -1)
    assert torch.allclose(grad, weights[:, 1] - probs @ weights.T, atol=1e-6)
    assert grad_fn.nfe == 1


@pytest.mark.parametrize("sde_name", ["cld", "psld"])
@pytest.mark.parametrize("sampler", ["em", "sscs"])
def test_inpainting_keeps_the_known_pixels_and_samples_the_conditional(sde_name, sampler):
    """The diamond with x1 known: the known coordinate comes back exactly, and the completions (x1, x2) are as close
    to the exact conditional law p(x2 | x1) (a mixture in closed form) as the replacement method gets (measured sliced
    W2 0.028-0.035 at NFE 50-1000 against a floor of 0.025 between two exact draws and 0.078 for an unconditioned x2);
    the completed point's component agrees with the original's at the exact conditional's rate, 5/9."""
    law, sde = diamond(), build_sde(sde_name)
    x0 = law.sample(N, generator=torch.Generator().manual_seed(3))
    mask = make_mask("half", (2,))
    options = {"precision_sigma": 0.04} if sampler == "sscs" else {}
    result = inpaint(sde, law.score_fn(sde), x0, mask, sampler=sampler, nfe=50, striding="quadratic",
                     dtype=torch.float64, **options)
    assert torch.equal(result.x[:, 0], x0[:, 0]) and result.nfe == 50
    generator = torch.Generator().manual_seed(11)
    weights = torch.softmax(torch.log(law.weights) - 0.5 * ((x0[:, :1] - law.means[:, 0]) / law.stds[:, 0]) ** 2, 1)
    k = torch.multinomial(weights, 1, generator=generator)[:, 0]
    exact = torch.stack([x0[:, 0], law.means[k, 1] + law.stds[k, 1] * torch.randn(N, generator=generator,
                                                                                  dtype=torch.float64)], 1)
    unconditioned = torch.stack([x0[:, 0], law.sample(N, generator=generator)[:, 1]], 1)
    assert sliced_wasserstein(result.x, exact) < 0.6 * sliced_wasserstein(unconditioned, exact)
    agree = float((law.classify(result.x) == law.classify(x0)).double().mean())
    assert 0.5 < agree < 0.62, agree


def test_masks_have_the_asked_shape_and_a_wrong_mask_is_refused():
    center = make_mask("center", (1, 8, 8))
    assert center.shape == (1, 8, 8) and center.sum() == 64 - 16 and center[0, 2:6, 2:6].sum() == 0
    half = make_mask("half", (3, 4, 4))
    assert half[..., :2].eq(1).all() and half[..., 2:].eq(0).all()
    random = make_mask("random", (3, 8, 8), seed=1)
    assert torch.equal(random[0], random[2]) and 0 < random.mean() < 1  # one draw per pixel, all channels alike
    assert torch.equal(random, make_mask("random", (3, 8, 8), seed=1))
    with pytest.raises(ValueError, match="mask kind"):
        make_mask("circle", (1, 8, 8))
    with pytest.raises(ValueError, match="center mask needs images"):
        make_mask("center", (2,))
    images = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"give one mask of shape \(1, 8, 8\)"):
        check_mask(torch.ones(1, 4, 4), images)
    with pytest.raises(ValueError, match="only 0"):
        check_mask(torch.full((1, 8, 8), 0.5), images)


def test_inpainting_refuses_a_sampler_and_an_sde_it_does_not_run():
    law = diamond()
    x0, mask = law.sample(8), make_mask("half", (2,))
    with pytest.raises(ValueError, match="inpainting runs the samplers"):
        inpaint(build_sde("cld"), law.score_fn(build_sde("cld")), x0, mask, sampler="conjugate", nfe=10)
    with pytest.raises(ValueError, match="phase-space SDE"):
        inpaint(build_sde("vpsde"), law.score_fn(build_sde("vpsde")), x0, mask, nfe=10)


# -- the classifier: trained by the score models' trainer, used by `cldsgm sample --classifier` ---------------
@pytest.fixture(scope="module")
def classifier_run(diamond_data, tmp_path_factory):
    """A toy_classifier of CLD's states on the diamond (9 components as classes), 300 steps: for plumbing."""
    from cldsgm.training import train

    from conftest import toy_config

    run_dir = tmp_path_factory.mktemp("classifier") / "run"
    config = toy_config(diamond_data, task="classifier", model={"name": "toy_classifier"},
                        train={"steps": 300, "batch_size": 256, "checkpoint_every": 300, "log_every": 50})
    train(config, run_dir, progress=False)
    return run_dir


def test_the_diamond_is_prepared_with_its_components_as_labels(diamond_data):
    from cldsgm.data.prepared import load_prepared

    data, labels, _ = load_prepared(diamond_data)
    assert labels is not None and labels.shape == (len(data),) and set(labels.tolist()) == set(range(9))
    assert torch.equal(torch.from_numpy(labels), diamond().classify(torch.from_numpy(data)))


def test_a_trained_classifier_tells_components_apart_near_the_data(classifier_run):
    """Cross-entropy falls below the uniform log 9 = 2.197 (t ~ U[1e-5, 1], most of it where the classes mix) and
    at t = 0.01 the classifier names the component of most held-out points."""
    import csv

    from cldsgm.conditional import load_classifier

    losses = [float(r["loss"]) for r in csv.DictReader((classifier_run / "loss.csv").open())]
    assert losses[-1] < 2.1 < losses[0] + 0.1
    clf = load_classifier(classifier_run)
    assert clf.num_classes == 9 and clf.sde_name == "cld" and clf.data_shape == (2,)
    law, sde = diamond(), build_sde("cld", numerical_eps=1e-6)
    x = law.sample(1000, generator=torch.Generator().manual_seed(5))
    u = sde.perturb(x, torch.full((1000,), 0.01, dtype=torch.float64), "hsm").u.float()
    accuracy = (clf.net(u, torch.full((1000,), 0.01)).argmax(1) == law.classify(x)).double().mean()
    assert accuracy > 0.8, accuracy  # measured 0.93 after 300 steps; chance is 1/9


def test_a_classifier_config_needs_a_classifier_network_and_labels(diamond_data, tmp_path):
    from cldsgm.training import train

    from conftest import toy_config

    with pytest.raises(ValueError, match="a classifier needs a classifier network"):
        train(toy_config(diamond_data, task="classifier"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="is a classifier network: train it with `cldsgm train-classifier`"):
        train(toy_config(diamond_data, model={"name": "toy_classifier"}), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def cli(*args):
    """The CLI in this process (no interpreter and torch start per call): (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from cldsgm.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _identity(out):
    import json

    return json.loads((out / "manifest.json").read_text())["identity"]


def test_sample_with_the_oracle_classifier_lands_in_the_class(tmp_path):
    import numpy as np

    from conftest import run_cli

    out = tmp_path / "k3"
    done = run_cli("sample", "--oracle", "diamond", "--sde", "psld", "--sampler", "em", "--nfe", "50",
                   "--striding", "quadratic", "--num-samples", "500", "--classifier", "oracle", "--class", "3",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    x = np.load(next(out.glob("shard_*.npz")))["samples"]
    assert float((diamond().classify(torch.from_numpy(x).double()) == 3).double().mean()) >= 0.99
    guidance = _identity(out)["guidance"]
    assert guidance == {"classifier": {"oracle": "diamond"}, "class": 3, "scale": 1.0,
                        "classifier_nfe_per_score_nfe": 1}


def test_sample_with_a_trained_classifier_and_its_bad_inputs(classifier_run, toy_run, tmp_path):
    """The CLD classifier guides the CLD score model (recorded in the manifest); a class out of range, a classifier of
    another SDE, a score run given as classifier: one line, exit 1, no --out left behind."""
    from conftest import run_cli

    common = ("sample", "--sampler", "sscs", "--nfe", "10", "--num-samples", "64", "--precision-sigma", "0.04")
    good = run_cli(*common, "--run-dir", str(toy_run), "--classifier", str(classifier_run), "--class", "4",
                   "--guidance-scale", "2", "--out", str(tmp_path / "good"))
    assert good.returncode == 0, good.stderr
    guidance = _identity(tmp_path / "good")["guidance"]
    assert guidance["class"] == 4 and guidance["scale"] == 2.0 and guidance["classifier"]["step"] == 300
    bad = {"range": ("--run-dir", str(toy_run), "--classifier", str(classifier_run), "--class", "9"),
           "sde": ("--oracle", "diamond", "--sde", "psld", "--classifier", str(classifier_run), "--class", "1"),
           "score run": ("--run-dir", str(toy_run), "--classifier", str(toy_run), "--class", "1"),
           "oracle": ("--run-dir", str(toy_run), "--classifier", "oracle", "--class", "1")}
    messages = {"range": "class 9 is out of range", "sde": "was trained for cld",
                "score run": "is not a classifier's checkpoint", "oracle": "--classifier oracle is the exact"}
    for name, args in bad.items():
        out = tmp_path / name.replace(" ", "_")
        code, _, stderr = cli(*common, *args, "--out", out)
        assert code == 1 and messages[name] in stderr, (name, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert not out.exists()


def test_cldsgm_inpaint_writes_a_resumable_directory_and_refuses_bad_masks(diamond_data, digits_data, tmp_path):
    """The oracle's PSLD score inpaints held-out diamond points (x1 known): the shard keeps x1 byte for byte, a rerun
    keeps the shard; a mask of the wrong shape, a center mask on 2-D points, images of another shape: one line,
    exit 1, no --out."""
    import numpy as np

    from cldsgm.data.prepared import load_prepared

    from conftest import run_cli

    common = ("inpaint", "--oracle", "diamond", "--sde", "psld", "--nfe", "20", "--num-samples", "200")
    out = tmp_path / "half"
    done = run_cli(*common, "--images", str(diamond_data), "--mask-kind", "half", "--out", str(out))
    assert done.returncode == 0, done.stderr
    shard = next(out.glob("shard_*.npz"))
    completed = np.load(shard)["samples"]
    assert np.array_equal(completed[:, 0], load_prepared(diamond_data)[0][:200, 0])
    assert _identity(out)["inpaint"]["mask"] == {"kind": "half", "seed": 0}
    before = shard.stat().st_mtime_ns
    code, stdout, _ = cli(*common, "--images", diamond_data, "--mask-kind", "half", "--out", out)
    assert code == 0 and "kept 1" in stdout and shard.stat().st_mtime_ns == before
    wrong = tmp_path / "wrong_mask.npy"
    np.save(wrong, np.ones(3, dtype=np.float32))
    cases = {"mask shape": (("--images", str(diamond_data), "--mask", str(wrong)), "give one mask of shape (2,)"),
             "center": (("--images", str(diamond_data), "--mask-kind", "center"), "center mask needs images"),
             "images": (("--images", str(digits_data[1]), "--mask-kind", "half"), "holds data of shape [1, 8, 8]")}
    for name, (args, message) in cases.items():
        target = tmp_path / name.replace(" ", "_")
        code, _, stderr = cli(*common, *args, "--out", target)
        assert code == 1 and message in stderr, (name, stderr)
        assert len(stderr.strip().splitlines()) == 1 and not target.exists(), (name, stderr)


def test_class_accuracy_records_for_guided_inpainted_and_unconditional_sets(diamond_data, tmp_path):
    """The oracle-guided set scores 1 with an interval; the inpainted one gets a known-pixel error of exactly 0 and
    the exact conditional's component agreement (about 5/9); an unconditional set asks for no class: refused."""
    import json


    sets = {"guided": ("sample", "--sampler", "em", "--nfe", "50", "--striding", "quadratic", "--classifier",
                       "oracle", "--class", "7"),
            "inpainted": ("inpaint", "--images", str(diamond_data), "--mask-kind", "half", "--nfe", "50",
                          "--striding", "quadratic"),
            "plain": ("sample", "--sampler", "em", "--nfe", "20")}
    for name, args in sets.items():
        code, _, stderr = cli(*args, "--oracle", "diamond", "--sde", "psld", "--num-samples", "400", "--out",
                              tmp_path / name, "--no-progress")
        assert code == 0, stderr
    for name in ("guided", "inpainted"):
        code, _, stderr = cli("class-accuracy", "--samples", tmp_path / name, "--classifier", "oracle:diamond",
                              "--out", tmp_path / f"rec_{name}", "--bootstrap", "100")
        assert code == 0, stderr
    guided = json.loads((tmp_path / "rec_guided" / "class_accuracy.json").read_text())
    assert guided["value"] >= 0.99 and 1.0 >= guided["ci_high"] >= guided["value"] >= guided["ci_low"] > 0.95
    inpainted = tmp_path / "rec_inpainted"
    assert json.loads((inpainted / "known_pixel_error.json").read_text())["value"] == 0.0
    assert 0.45 < json.loads((inpainted / "class_accuracy.json").read_text())["value"] < 0.68
    code, _, stderr = cli("class-accuracy", "--samples", tmp_path / "plain", "--classifier", "oracle:diamond",
                          "--out", tmp_path / "rec_plain")
    assert code == 1 and "asks for no class" in stderr


def test_inpainted_digits_keep_their_known_pixels_byte_for_byte(digits_run, digits_data, tmp_path):
    """Images go to [-1, 1] and back through uint8: the known pixels are written as the file has them."""
    import numpy as np

    from cldsgm.conditional import make_mask
    from cldsgm.data.prepared import load_prepared

    from conftest import run_cli

    out = tmp_path / "center"
    done = run_cli("inpaint", "--run-dir", str(digits_run), "--images", str(digits_data[1]), "--mask-kind", "center",
                   "--sampler", "sscs", "--nfe", "6", "--precision-sigma", "1", "--num-samples", "16",
                   "--out", str(out), "--done", str(tmp_path / "center.done.json"))
    assert done.returncode == 0, done.stderr
    completed = np.load(next(out.glob("shard_*.npz")))["samples"]
    known = make_mask("center", (1, 8, 8)).numpy() > 0.5
    originals = load_prepared(digits_data[1])[0][:16]
    assert np.array_equal(completed[:, known], originals[:, known])
    assert not np.array_equal(completed[:, ~known], originals[:, ~known])
    # the workflow's marker, and the mask beside the shards for readers without torch (the report's grid)
    assert (tmp_path / "center.done.json").is_file()
    assert np.array_equal(np.load(out / "mask.npy"), known[None].astype(np.uint8))
    from cldsgm.report.conditional import inpaint_figure

    png = inpaint_figure(out, digits_data[1], count=8)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (out / "mask.npy").unlink()
    assert inpaint_figure(out, digits_data[1]) is None  # a set without its mask: no grid rather than a wrong one


def test_the_mask_none_is_unconditional_sampling_byte_for_byte():
    """Nothing known: inpainting is `generate` with the same seed (the baseline of the study's inpainting rows)."""
    sde, law = build_sde("psld"), diamond()
    x_known = law.sample(64, generator=torch.Generator().manual_seed(3)).float()
    mask = make_mask("none", (2,))
    assert float(mask.sum()) == 0.0
    for sampler, options in (("em", {}), ("sscs", {"precision_sigma": 0.04})):
        filled = inpaint(sde, law.score_fn(sde), x_known, mask, sampler=sampler, nfe=12, seed=5, **options)
        plain = generate(sde, law.score_fn(sde), 64, (2,), sampler=sampler, nfe=12, seed=5, dtype=torch.float32,
                         **options)
        assert torch.equal(filled.x, plain.x) and filled.nfe == plain.nfe, sampler


def test_per_class_sample_distance_and_its_bad_class(diamond_data, tmp_path):
    """sample-distance --class K: a set guided to component 2 is near component 2's law (oracle draws, or the data's
    points labelled 2) and far from component 4's; a class the law lacks: one line, no record."""
    import json

    code, _, stderr = cli("sample", "--oracle", "diamond", "--sde", "psld", "--sampler", "em", "--nfe", "30",
                          "--striding", "quadratic", "--num-samples", "400", "--classifier", "oracle", "--class", "2",
                          "--out", tmp_path / "k2", "--no-progress")
    assert code == 0, stderr
    values = {}
    for name, args in {"oracle2": ("--oracle", "diamond", "--class", "2"),
                       "data2": ("--data", diamond_data, "--class", "2"),
                       "oracle4": ("--oracle", "diamond", "--class", "4")}.items():
        code, _, stderr = cli("sample-distance", "--samples", tmp_path / "k2", *args, "--out", tmp_path / name,
                              "--bootstrap", "100")
        assert code == 0, stderr
        record = json.loads((tmp_path / name / "sliced_w2.json").read_text())
        assert not (tmp_path / name / "mode_tv.json").exists()  # one component: no mode coverage
        values[name] = record["value"]
    assert values["oracle2"] < 0.03 and values["data2"] < 0.03 and values["oracle4"] > 0.3, values
    for args, message in ((("--oracle", "diamond", "--class", "9"), "component 9 is out of range"),
                          (("--data", diamond_data, "--class", "12"), "fewer than two points of class 12")):
        code, _, stderr = cli("sample-distance", "--samples", tmp_path / "k2", *args, "--out", tmp_path / "bad")
        assert code == 1 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert not (tmp_path / "bad").exists()
