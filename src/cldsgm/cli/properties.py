"""Verbs that measure what the papers argue from besides sample quality (cldsgm.eval.properties), one record each:
score-jacobian (how smooth a score is over t), objective-variance (the HSM and DSM gradients' noise at one network)
and equilibrium (how close the forward process comes to its prior).
"""

from __future__ import annotations

import time

import click

from cldsgm.cli import main
from cldsgm.cli._common import catalog_choice, click_error, key_values, label_option, parse_labels, writable_dir
from cldsgm.cli.evaluate import _check_resamples, bootstrap_option
from cldsgm.cli.sample import load_source, resolve_source_args, source_options
from cldsgm.utils.io import project_path


def _data_batch(data_path: str, n: int, kind: str, seed: int):
    """n items drawn from a prepared split (cldsgm.data.prepared.random_subset by `seed`), as float data (images
    scaled to [-1, 1]); ValueError if too few."""
    import torch

    from cldsgm.data.prepared import load_prepared, random_subset, scale_images

    data = load_prepared(data_path)[0]
    if len(data) < n:
        raise ValueError(f"{data_path} has {len(data)} items, fewer than --n {n}")
    x = torch.from_numpy(random_subset(data, n, seed))
    split_kind = "image" if data.dtype.kind == "u" else "points"
    if split_kind != kind:
        raise ValueError(f"the model takes {kind} data, {data_path} holds {split_kind}")
    return scale_images(x) if kind == "image" else x.float()


def _measure_options(items: str, n: int, records: str):
    """--data, --n, --seed, --out, --label and --bootstrap of a measurement over the first n items of a split."""
    def decorate(f):
        for decorator in reversed([
            click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True,
                         help=f"A prepared split: {items} --n of its items (drawn by --seed)."),
            click.option("--n", type=click.IntRange(min=2), default=n, show_default=True),
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help=records),
            label_option, bootstrap_option]):
            f = decorator(f)
        return f
    return decorate


def _counts(n: int, resamples: int, seed: int):
    from cldsgm.stats import resample_counts

    return resample_counts(n, resamples, seed) if resamples else None


@main.command("score-jacobian")
@source_options
@_measure_options("the points u_t are drawn around", 256, "Where score_jacobian.json goes.")
def score_jacobian_command(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights, data_path, n, seed, out_dir,
                           labels, resamples):
    """How smooth a score is over t: its Jacobian norm relative to the prior score's, mean of log10 over a log grid
    of t from 1e-3 to 1 (0: as smooth as the prior)."""
    from cldsgm.eval.properties import SMOOTHNESS_TIMES, score_jacobian
    from cldsgm.records import dataset_fields, write_measured

    args = resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights)
    _check_resamples(resamples)
    writable_dir(out_dir, "--out")
    try:
        source = load_source(args, device="cpu")
        x0 = _data_batch(data_path, n, source.kind, seed)
        start = time.perf_counter()
        result = score_jacobian(source.sde, source.score_fn, x0, seed=seed, counts=_counts(n, resamples, seed))
        write_measured(out_dir, "score_jacobian", result["value"], result.get("replicates"), seed, n=n, seed=seed,
                       wall_s=time.perf_counter() - start, device="cpu", sde=source.sde_name,
                       sde_params=source.sde_params, network=source.network, source=source.identity,
                       dataset=dataset_fields(data_path), labels=parse_labels(labels) or None,
                       extra={"per_time": result["per_time"], "times": list(SMOOTHNESS_TIMES)})
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    click.echo(f"score Jacobian: {result['value']:.3f} (mean log10 of the norm relative to the prior's over "
               f"{len(SMOOTHNESS_TIMES)} times, {n} points) -> {out_dir}")


@main.command("objective-variance")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True, help="A CLD or PSLD training run.")
@_measure_options("the examples are", 256, "Records <out>/hsm/grad_variance.json and <out>/dsm/grad_variance.json.")
def objective_variance_command(run_dir, data_path, n, seed, out_dir, labels, resamples):
    """The noise of one SGD step under HSM and DSM at the same network: the trace of the covariance of per-example
    gradients of the score-matching loss (score space, likelihood weighting; the two objectives differ by a
    constant), over the same examples and times."""
    from cldsgm.eval.properties import objective_gradients
    from cldsgm.models.score import ScoreParameterisation
    from cldsgm.records import dataset_fields, write_measured
    from cldsgm.sde import PhaseSpaceSDE
    from cldsgm.sources import load_network

    _check_resamples(resamples)
    writable_dir(out_dir, "--out")
    try:
        path, state, net, sde, data = load_network(run_dir, trainable=True)
        if not isinstance(sde, PhaseSpaceSDE):
            raise ValueError(f"{run_dir} is a {state['config']['sde']['name']} model: HSM and DSM differ only in "
                             "phase space (CLD, PSLD)")
        loss = state["config"]["loss"]
        param = ScoreParameterisation(sde, objective=loss["objective"], mixed_score=loss["mixed_score"])
        x0 = _data_batch(data_path, n, data["kind"], seed)
        start = time.perf_counter()
        result = objective_gradients(sde, net, param, x0, t_min=loss["t_min"], seed=seed,
                                     counts=_counts(n, resamples, seed))
        wall = time.perf_counter() - start
        base = parse_labels(labels)
        for objective, values in result.items():
            write_measured(f"{out_dir}/{objective}", "grad_variance", values["value"], values.get("replicates"),
                           seed, n=n, seed=seed, wall_s=wall, device="cpu", sde=state["config"]["sde"]["name"],
                           sde_params=state["config"]["sde"]["params"], network=state["network"]["name"],
                           source={"checkpoint": project_path(path), "step": int(state["step"])},
                           dataset=dataset_fields(data_path),
                           labels={**base, "row": f"grad-{objective}", "estimator": objective},
                           extra={"objective": objective, "trained_with": loss["objective"],
                                  "loss_mean": values["loss_mean"], "loss_var": values["loss_var"],
                                  "weighting": "likelihood (score space)"})
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    line = ", ".join(f"{k.upper()} {v['value']:.4g}" for k, v in result.items())
    click.echo(f"gradient variance over {n} examples: {line} -> {out_dir}")


@main.command("equilibrium")
@click.option("--oracle", type=catalog_choice("oracles"), required=True, help="The data law.")
@click.option("--sde", "sde_name", type=catalog_choice("sdes"), required=True)
@click.option("--sde-param", "sde_param", multiple=True, help="KEY=VALUE of the SDE (its papers' values by default).")
@click.option("--n", type=click.IntRange(min=100), default=20000, show_default=True,
              help="Monte Carlo draws of p_t per time.")
@click.option("--times", type=click.IntRange(min=2), default=50, show_default=True,
              help="Times t = 1/k, 2/k, ..., 1 on a uniform grid.")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="The record's value is the time at which KL(p_t || prior) first falls below this (nats).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Where prior_kl.json goes.")
@label_option
@bootstrap_option
def equilibrium_command(oracle, sde_name, sde_param, n, times, epsilon, seed, out_dir, labels, resamples):
    """How fast the forward process takes a data law to its prior: KL(p_t || prior) over t (exact densities, Monte
    Carlo); the record's value is the time at which it falls below --epsilon nats."""
    from cldsgm.eval.properties import prior_kl
    from cldsgm.oracles import oracle_law
    from cldsgm.records import write_measured
    from cldsgm.sde import build_sde

    _check_resamples(resamples)
    writable_dir(out_dir, "--out")
    params = key_values(sde_param, "--sde-param")
    try:
        sde = build_sde(sde_name, **params)
        grid = [k / times for k in range(1, times + 1)]
        start = time.perf_counter()
        result = prior_kl(oracle_law(oracle), sde, times=grid, n=n, epsilon=epsilon, seed=seed,
                          counts=_counts(n, resamples, seed))
        write_measured(out_dir, "prior_kl", result["value"], result.get("replicates"), seed, n=n, seed=seed,
                       wall_s=time.perf_counter() - start, device="cpu", sde=sde_name, sde_params=params,
                       source={"oracle": oracle}, labels=parse_labels(labels) or None,
                       extra={"per_time": result["per_time"], "epsilon": epsilon})
    except (ValueError, TypeError, OSError) as err:
        raise click_error(err) from err
    click.echo(f"KL(p_t || prior) of {oracle} under {sde_name} falls below {epsilon:g} nats at t = "
               f"{result['value']:.4g} -> {out_dir}")
