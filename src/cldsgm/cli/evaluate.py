"""Evaluation verbs: FID/KID (clean-fid, offline), FD-digits, 2-D distances and NLL; each writes JSON records.

Every verb writes one record per metric, `<--out>/<metric>.json` (cldsgm.records), and prints one line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from cldsgm.cli import main
from cldsgm.cli._common import (
    catalog_choice,
    click_error,
    device_for,
    finish_ranks_and_mark,
    label_option,
    parse_labels,
    writable_dir,
)
from cldsgm.cli.sample import load_source, resolve_source_args, source_options
from cldsgm.records import dataset_fields, sample_set_fields, write_metric
from cldsgm.utils.launch import launch

_MODE = catalog_choice("fid_modes")


def bootstrap_option(f):
    """--bootstrap B: resamples of the generated samples behind each record's 95 % interval (0: none)."""
    return click.option("--bootstrap", "resamples", type=int, default=200, show_default=True,
                        help="Bootstrap resamples of the generated samples for each value's 95 % interval and the "
                             "paired comparisons of the report (at least 100; 0: no interval).")(f)


def _check_resamples(resamples: int) -> None:
    from cldsgm.stats import MIN_RESAMPLES

    if resamples and resamples < MIN_RESAMPLES:
        raise click.BadParameter(f"at least {MIN_RESAMPLES} resamples (or 0 for none), got {resamples}",
                                 param_hint="--bootstrap")


def _record(out_dir, metric: str, estimate: float, replicates, resample_seed: int, **fields) -> None:
    """One record: the value with its interval (bias-corrected for a biased metric; cldsgm.records.measured)."""
    from cldsgm.records import write_measured

    write_measured(out_dir, metric, estimate, replicates, resample_seed, **fields)


@main.command("fid-stats")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True, help="A prepared split (.npz).")
@click.option("--inception", type=click.Path(dir_okay=False), default=None,
              help="inception-2015-12-05.pt (default: $CLDSGM_INCEPTION, else resources/).")
@click.option("--mode", type=_MODE, default="clean", show_default=True)
@click.option("--n", "n", type=int, default=None, help="Only the first n images.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", type=catalog_choice("devices"), default="auto", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="Statistics file (.npz).")
def fid_stats_command(data_path, inception, mode, n, batch_size, device, out_path):
    """Reference statistics (mu, sigma, features) of a prepared image split for `cldsgm fid`."""
    from cldsgm.data.prepared import load_prepared
    from cldsgm.eval.fid import inception_features, load_inception, save_stats

    try:
        torch_device = device_for(device)
        model, backbone = load_inception(inception, mode, torch_device)
        images, _, manifest = load_prepared(data_path)
        if manifest["kind"] != "image":
            raise ValueError(f"{data_path} holds {manifest['kind']}, not images")
        images = images[:n] if n else images
        start = time.perf_counter()
        feats = inception_features(images, model, mode, batch_size=batch_size, device=torch_device, progress=True)
        save_stats(out_path, feats, {"mode": mode, "backbone": backbone, "n": len(images),
                                     "dataset": dataset_fields(data_path), "wall_s": time.perf_counter() - start})
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    click.echo(f"FID statistics of {len(images)} images ({mode}) -> {out_path}")


@main.command("fid")
@click.option("--samples", "samples_dir", type=click.Path(file_okay=False), required=True)
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False), required=True,
              help="From `cldsgm fid-stats`, or a file with mu (2048,) and sigma (2048, 2048).")
@click.option("--inception", type=click.Path(dir_okay=False), default=None,
              help="inception-2015-12-05.pt (default: $CLDSGM_INCEPTION, else resources/).")
@click.option("--mode", type=_MODE, default="clean", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", type=catalog_choice("devices"), default="auto", show_default=True)
@click.option("--kid/--no-kid", default=True, show_default=True, help="Also KID (needs features in --stats).")
@bootstrap_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Records: fid.json, kid.json.")
def fid_command(samples_dir, stats_path, inception, mode, batch_size, device, kid, out_dir, resamples):
    """FID (and KID) of a complete sample directory against reference statistics, with clean-fid's code."""
    from cldsgm.eval.fid import reference_stats, score_images
    from cldsgm.shards import load_samples

    _check_resamples(resamples)
    try:  # cheap checks first: weights, statistics, samples, then the features
        torch_device = device_for(device)
        reference = reference_stats(stats_path, inception, mode, torch_device)
        images, manifest = load_samples(samples_dir)
        if manifest["kind"] != "image":
            raise ValueError(f"{samples_dir} holds {manifest['kind']}: FID needs images (use sample-distance)")
        writable_dir(out_dir, "--out")
        scores = score_images(images, reference, inception, mode, batch_size=batch_size, device=torch_device,
                              with_kid=kid, resamples=resamples, resample_seed=manifest["identity"]["seed"])
        common = {"n": scores["n"], "mode": mode, "backbone": scores["backbone"], "device": str(torch_device),
                  "dataset": reference["dataset"], "wall_s": scores["wall_s"],
                  **sample_set_fields(manifest, samples_dir)}
        seed = manifest["identity"]["seed"]
        _record(out_dir, "fid", scores["fid"], scores.get("fid_replicates"), seed, **common)
        line = f"FID ({mode}) {scores['fid']:.4g}"
        if scores["kid"] is not None:
            _record(out_dir, "kid", scores["kid"], scores.get("kid_replicates"), seed,
                    method="bootstrap over KID's subsets of the samples", **common)
            line += f", KID {scores['kid']:.4g}"
        elif kid:
            line += " (no KID: the statistics file holds no features)"
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    click.echo(f"{line} over {scores['n']} samples -> {out_dir}")


@main.command("digits-classifier")
@click.option("--train", "train_path", type=click.Path(dir_okay=False), required=True, help="digits_train.npz")
@click.option("--test", "test_path", type=click.Path(dir_okay=False), required=True, help="digits_test.npz")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="Classifier file (.pt).")
@click.option("--record-dir", type=click.Path(file_okay=False), default=None,
              help="Also write classifier_accuracy.json here (default: beside --out).")
@label_option
def digits_classifier_command(train_path, test_path, epochs, seed, out_path, record_dir, labels):
    """Train the FD-digits feature network on the digits training split; record its test accuracy."""
    import torch

    from cldsgm.data.prepared import load_prepared
    from cldsgm.eval.digits import accuracy, save_classifier, train_classifier
    from cldsgm.utils.io import project_path

    try:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
        x_train, y_train, _ = load_prepared(train_path)
        x_test, y_test, _ = load_prepared(test_path)
        if y_train is None or y_test is None:
            raise ValueError("the digits classifier needs labelled splits (cldsgm prepare --dataset digits)")
        start = time.perf_counter()
        model = train_classifier(x_train, y_train, epochs=epochs, seed=seed)
        acc = accuracy(model, x_test, y_test)
        wall = time.perf_counter() - start
        meta = {"test_accuracy": acc, "train": dataset_fields(train_path), "test": dataset_fields(test_path),
                "epochs": epochs, "seed": seed}
        save_classifier(out_path, model, meta)
        write_metric(record_dir or Path(out_path).parent, "classifier_accuracy", acc, n=len(x_test), seed=seed,
               wall_s=wall, device="cpu", dataset=meta["test"], labels=parse_labels(labels) or None,
               extra={"classifier": project_path(out_path), "epochs": epochs})
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    click.echo(f"digits classifier: test accuracy {acc:.4f} ({len(x_test)} images, {wall:.1f} s) -> {out_path}")


def _of_class(data, labels, label: int | None, path, items: str, measure: str):
    """The items of a prepared split labelled `label` (all of them for None): a per-class reference. ValueError
    naming the `items` and the `measure` where the split has fewer than two of them (no covariance, no distance)."""
    if label is None:
        return data
    if labels is None or not (labels == label).sum() > 1:
        raise ValueError(f"{path} has fewer than two {items} of class {label}: no per-class {measure}")
    return data[labels == label]


def _pairs(samples_dirs, out_dirs, real=None) -> list[tuple[str, str]]:
    """--samples / --out given in pairs (several sample sets in one process: one torch import, not one each), or
    --real with one --out (the floor)."""
    if real is not None:
        if samples_dirs or len(out_dirs) != 1:
            raise click.UsageError("--real takes one --out and no --samples")
        return [(None, out_dirs[0])]
    if not samples_dirs:
        raise click.UsageError("give --samples (a sample directory, with --out) or --real (a real split: the floor)")
    if len(samples_dirs) != len(out_dirs):
        raise click.UsageError(f"give one --out per --samples ({len(samples_dirs)} --samples, {len(out_dirs)} --out)")
    return list(zip(samples_dirs, out_dirs, strict=True))


def _evaluated(samples_dir, real, n, labels):
    """(items, the seed their resampling is drawn from, their record fields) of a sample directory, or of n items
    drawn from a real split (--real: the floor, what the metric gives data of the law itself at that n)."""
    from cldsgm.data.prepared import load_prepared, random_subset
    from cldsgm.shards import load_samples

    if samples_dir is not None:
        items, manifest = load_samples(samples_dir)
        return items, manifest["identity"]["seed"], sample_set_fields(manifest, samples_dir)
    if n is None:
        raise click.UsageError("--real needs --n, the size of the sample sets it is the floor of")
    items = load_prepared(real)[0]
    if len(items) < n:
        raise ValueError(f"--real {real} has {len(items)} items, fewer than --n {n}")
    return random_subset(items, n, 0), 0, {"seed": 0, "extra": {"real": dataset_fields(real), "pick": "random, seed 0"},
                            "labels": {"kind": "floor", **parse_labels(labels)}}


def _floor_options(f):
    """--real SPLIT --n N (instead of --samples): the metric of n real items, the floor of sample sets of that size."""
    for decorator in reversed([
        click.option("--real", type=click.Path(dir_okay=False), default=None,
                     help="Instead of --samples: --n items drawn from this prepared split of real data (seed 0), "
                          "scored like a sample set (the metric's floor at that n; a split other than --data's)."),
        click.option("--n", "n", type=int, default=None, help="With --real: how many items."),
        label_option]):
        f = decorator(f)
    return f


@main.command("fd-digits")
@click.option("--samples", "samples_dirs", type=click.Path(file_okay=False), multiple=True,
              help="A complete sample directory; repeat with --out for several.")
@click.option("--classifier", type=click.Path(dir_okay=False), required=True, help="From `digits-classifier`.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True,
              help="The held-out reference split (digits_test.npz).")
@click.option("--out", "out_dirs", type=click.Path(file_okay=False), required=True, multiple=True,
              help="Where the record fd_digits.json of the matching --samples goes.")
@click.option("--class", "class_label", type=int, default=None,
              help="Per-class FD: only the reference images of this class (for class-conditional sets).")
@_floor_options
@bootstrap_option
def fd_digits_command(samples_dirs, classifier, data_path, out_dirs, class_label, real, n, labels, resamples):
    """FD-digits of complete sample directories of 8x8 digits against the held-out split (not FID); with --class,
    against that class's images only."""

    from cldsgm.data.prepared import load_prepared
    from cldsgm.eval.digits import digits_features, fd_digits, fd_digits_replicates, load_classifier

    pairs = _pairs(samples_dirs, out_dirs, real)
    _check_resamples(resamples)
    try:
        model, meta = load_classifier(classifier)
        reference = _of_class(*load_prepared(data_path)[:2], class_label, data_path, "images", "FD")
        ref = digits_features(model, reference)
        for samples_dir, out_dir in pairs:
            images, seed, fields = _evaluated(samples_dir, real, n, labels)
            start = time.perf_counter()
            value = fd_digits(model, images, reference)
            replicates = fd_digits_replicates(model, images, ref, resamples, seed)
            extra = {**fields.pop("extra", {}), "classifier_accuracy": meta["test_accuracy"],
                     **({"class": class_label} if class_label is not None else {})}
            _record(out_dir, "fd_digits", value, replicates, seed, n=len(images), wall_s=time.perf_counter() - start,
                    device="cpu", dataset=dataset_fields(data_path), extra=extra, **fields)
            click.echo(f"FD-digits {value:.4g} over {len(images)} samples of {samples_dir or real} -> {out_dir}")
    except (ValueError, OSError) as err:
        raise click_error(err) from err


@main.command("class-accuracy")
@click.option("--samples", "samples_dirs", type=click.Path(file_okay=False), required=True, multiple=True,
              help="A complete class-conditional or inpainted sample directory; repeat with --out for several.")
@click.option("--classifier", required=True, metavar="FILE|oracle:LAW",
              help="The judge: a `digits-classifier` file for 8x8 digits, or oracle:diamond (the mixture's component).")
@click.option("--out", "out_dirs", type=click.Path(file_okay=False), required=True, multiple=True,
              help="Where class_accuracy.json (and known_pixel_error.json for inpainted sets) go.")
@bootstrap_option
def class_accuracy_command(samples_dirs, classifier, out_dirs, resamples):
    """The share of samples the classifier assigns to the class they were asked to be (the guided class, or the
    original image's for inpainting), with its bootstrap interval; for inpainted sets also the known pixels' error."""
    from cldsgm.eval.conditional import class_accuracy, known_pixel_error
    from cldsgm.shards import load_samples

    pairs = _pairs(samples_dirs, out_dirs)
    _check_resamples(resamples)
    try:
        for samples_dir, out_dir in pairs:
            samples, manifest = load_samples(samples_dir)
            start = time.perf_counter()
            value, replicates = class_accuracy(samples, manifest, classifier, resamples)
            common = {"n": len(samples), "wall_s": time.perf_counter() - start, "device": "cpu",
                      **sample_set_fields(manifest, samples_dir)}
            _record(out_dir, "class_accuracy", value, replicates, manifest["identity"]["seed"], upper=1.0,
                    extra={"classifier": classifier}, **common)  # a share: at most 1
            line = f"class accuracy {value:.4g}"
            if "inpaint" in manifest["identity"]:
                error = known_pixel_error(samples, manifest)
                write_metric(out_dir, "known_pixel_error", error, **common)
                line += f", known-pixel error {error:.3g}"
            click.echo(f"{line} over {len(samples)} samples of {samples_dir} -> {out_dir}")
    except (ValueError, OSError) as err:
        raise click_error(err) from err


@main.command("sample-distance")
@click.option("--samples", "samples_dirs", type=click.Path(file_okay=False), multiple=True,
              help="A complete sample directory of points; repeat with --out for several.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
              help="Fresh data: a prepared split of points (default: draws from --oracle's law).")
@click.option("--oracle", type=catalog_choice("oracles"), default=None,
              help="The data law: reference draws, and mode coverage for mixtures of few components.")
@click.option("--seed", type=int, default=12345, show_default=True, help="Seed of the oracle's reference draws.")
@click.option("--out", "out_dirs", type=click.Path(file_okay=False), required=True, multiple=True,
              help="Records of the matching --samples: sliced_w2.json, energy.json (+ mode_tv.json).")
@click.option("--class", "class_label", type=int, default=None,
              help="Per-class distances of a class-conditional set: the reference narrowed to this class (the data's "
                   "points labelled K, or the oracle's component K); no mode coverage.")
@_floor_options
@bootstrap_option
def sample_distance_command(samples_dirs, data_path, oracle, seed, out_dirs, class_label, real, n, labels, resamples):
    """Sliced W2, energy distance and mode coverage of 2-D samples against fresh data; with --class, against one
    class (mixture component) only."""
    import numpy as np
    import torch

    from cldsgm.data.prepared import load_prepared
    from cldsgm.eval.points import point_distances
    from cldsgm.oracles import oracle_law

    if data_path is None and oracle is None:
        raise click.UsageError("give --data (a prepared split) and/or --oracle (the data law)")
    pairs = _pairs(samples_dirs, out_dirs, real)
    _check_resamples(resamples)
    try:
        mixture = oracle_law(oracle) if oracle else None
        reference = (_of_class(*load_prepared(data_path)[:2], class_label, data_path, "points", "distance")
                     if data_path is not None else None)
        if class_label is not None and mixture is not None:
            mixture = mixture.component(class_label)  # ValueError for a component the law lacks
        modes = mixture if class_label is None else None  # one component: no mode coverage to measure
        for samples_dir, out_dir in pairs:
            points, resample_seed, fields = _evaluated(samples_dir, real, n, labels)
            if points.dtype == np.uint8 or points.ndim != 2:
                raise ValueError(f"{samples_dir or real} holds images; sample-distance is for 2-D points")
            if data_path is not None:
                dataset = dataset_fields(data_path)
                ref = reference
            else:
                ref = mixture.sample(len(points), generator=torch.Generator().manual_seed(seed)).numpy()
                dataset = {"oracle": oracle, "seed": seed}
            if class_label is not None:
                dataset = {**dataset, "class": class_label}
            start = time.perf_counter()
            result = point_distances(points, np.asarray(ref), mixture=modes, resamples=resamples,
                                     resample_seed=resample_seed)
            extra = fields.pop("extra", {})
            common = {"n": result["n"], "wall_s": time.perf_counter() - start, "device": "cpu", "dataset": dataset,
                      **fields}
            replicates = result.get("replicates", {})
            for metric in ("sliced_w2", "energy"):
                _record(out_dir, metric, result[metric], replicates.get(metric), resample_seed,
                        **({"extra": extra} if extra else {}), **common)
            if "mode_tv" in result:
                _record(out_dir, "mode_tv", result["mode_tv"], replicates.get("mode_tv"), resample_seed,
                        extra={**extra, "mode_weights": result["mode_weights"]}, **common)
            modes_line = f", mode TV {result['mode_tv']:.3g}" if "mode_tv" in result else ""
            click.echo(f"sliced W2 {result['sliced_w2']:.4g}, energy {result['energy']:.4g}{modes_line} of "
                       f"{samples_dir or real} -> {out_dir}")
    except (ValueError, OSError) as err:
        raise click_error(err) from err


@main.command("nll")
@source_options
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True, help="A prepared split.")
@click.option("--num-samples", "--n", "n", type=int, default=None,
              help="Only the first n items (under torchrun write --num-samples).")
@click.option("--first", type=int, default=0, show_default=True)
@click.option("--count", type=int, default=None)
@click.option("--probes", type=catalog_choice("probes"), default="auto", show_default=True,
              help="Hutchinson probes, or the exact divergence; auto: exact up to 16 state dimensions (2-D points, "
                   "phase space included), Rademacher probes above.")
@click.option("--n-probes", type=int, default=1, show_default=True)
@click.option("--rtol", type=float, default=1e-5, show_default=True)
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--ode-method", type=catalog_choice("ode_methods"), default="scipy_rk45", show_default=True)
@click.option("--t-min", type=float, default=1e-5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--net-batch", type=int, default=256, show_default=True)
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--precision", type=catalog_choice("precisions"), default="fp32", show_default=True)
@click.option("--device", type=catalog_choice("devices"), default="auto", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Shards, manifest and the record nll_bpd.json (images) or nll_nats.json (points).")
@click.option("--record-dir", type=click.Path(file_okay=False), default=None,
              help="Write the record here instead of into --out.")
@click.option("--done", "done_path", type=click.Path(dir_okay=False), default=None,
              help="Write this JSON summary once this invocation's slice is complete (a workflow's output).")
@click.option("--exact-law", type=catalog_choice("oracles"), default=None,
              help="The law the data were drawn from (points): its exact NLL on the same items goes beside the "
                   "estimate, with the gap and its standard error.")
@label_option
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="a bar on a terminal; in a log file a line at least every $CLDSGM_PROGRESS_EVERY seconds (30)")
@click.option("--bootstrap", "resamples", type=int, default=0, show_default=True,
              help="Bootstrap resamples of the items behind the record's interval, resampled alike for every model "
                   "evaluated on the same items and seed (paired comparisons); 0: a normal interval.")
def nll_command(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights, data_path, n, first, count, probes,
                n_probes, rtol, atol, ode_method, t_min, seed, batch_size, net_batch, shard_size, precision, device,
                out_dir, record_dir, done_path, exact_law, labels, progress, resamples):
    """NLL (bits/dim for images, nats for points) of a prepared split through the probability-flow ODE."""
    source_args = resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights)
    _check_resamples(resamples)
    writable_dir(out_dir, "--out")
    here = launch()
    from cldsgm.data.prepared import load_prepared
    from cldsgm.eval.nll import nll_interval, nll_summary, nll_to_dir

    try:
        torch_device = device_for(device)
        source = load_source(source_args, precision=precision, device=torch_device, net_batch=net_batch)
        data, _, _ = load_prepared(data_path)
        start = time.perf_counter()
        summary = nll_to_dir(source, data, dataset_fields(data_path), out_dir, n=n, first=first, count=count,
                             probes=probes, n_probes=n_probes, rtol=rtol, atol=atol, method=ode_method, t_min=t_min,
                             seed=seed, batch_size=batch_size, shard_size=shard_size, rank=here.rank, world=here.world,
                             device=torch_device, progress=progress and here.main)
        finish_ranks_and_mark(done_path, summary)
        if not summary["complete"]:
            click.echo(f"NLL: {summary['done']} of {summary['n']} items done -> {out_dir} (run again to finish)")
            return
        from cldsgm import catalog
        from cldsgm.oracles import oracle_law

        result = nll_summary(out_dir, data=data, exact_law=oracle_law(exact_law) if exact_law else None)
        ident = result["identity"]
        extra = {**({"exact": result["exact"]} if "exact" in result else {}), **nll_interval(result, resamples, seed)}
        shard_wall = time.perf_counter() - start
        write_metric(record_dir or out_dir, result["metric"], result["value"], stderr=result["stderr"],
                     nfe=result["nfe"], n=result["n"], seed=seed, wall_s=shard_wall, device=str(torch_device),
                     sde=ident["sde"], sde_params=ident["sde_params"], network=ident["network"], source=ident["source"],
                     dataset=ident["dataset"], t_min=t_min, sampler="ode", labels=parse_labels(labels) or None,
                     options={"probes": ident["probes"], "n_probes": ident["n_probes"], "rtol": rtol, "atol": atol,
                              "method": ode_method}, variance=result["variance"],
                     bound=catalog.SDES[ident["sde"]].phase_space, **extra)
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    unit = "bits/dim" if result["metric"] == "nll_bpd" else "nats"
    click.echo(f"NLL {result['value']:.4f} ± {result['stderr'] or float('nan'):.2g} {unit} over {result['n']} items "
               f"(mean NFE {result['nfe']:.0f}) -> {out_dir}")
