"""`cldsgm sample`: a checkpoint or an exact-score oracle sampled into sharded, resumable, checksummed files."""

from __future__ import annotations

import click

from cldsgm.cli import main
from cldsgm.cli._common import (
    catalog_choice,
    click_error,
    device_for,
    finish_ranks_and_mark,
    key_values,
    label_option,
    parse_labels,
    remove_if_empty,
    writable_dir,
)
from cldsgm.utils.launch import launch


def _option_flags() -> list:
    """One click option per sampler option of the catalog (shared flags, e.g. --precision-sigma, once), unset by
    default: a sampler's own default applies unless the flag is given."""
    from cldsgm import catalog

    seen: dict[str, tuple] = {}
    for spec in catalog.SAMPLERS.values():
        for option in spec.options:
            entry = seen.setdefault(option.cli_flag, (option, []))
            entry[1].append(spec.name)
    flags = []
    for flag, (option, users) in seen.items():
        kind = click.Choice(option.choices) if option.choices else option.type
        flags.append(click.option(flag, option.cli_dest, type=kind, default=None,
                                  help=f"{', '.join(users)}: {option.help} (default {option.default})."))
    return flags


def sampler_options(sampler: str, given: dict) -> dict:
    """The sampler keywords from the CLI values that were given; an option of another sampler is an error."""
    from cldsgm import catalog

    allowed = {option.cli_dest: option.name for option in catalog.sampler(sampler).options}
    wrong = sorted(k for k, v in given.items() if v is not None and k not in allowed)
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise click.UsageError(f"{flags} do(es) not apply to sampler {sampler!r}")
    options = {allowed[k]: v for k, v in given.items() if v is not None}
    try:
        catalog.sampler(sampler).check_options(options)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    return options


def sampler_flags(f):
    """Every sampler option of the catalog as a flag."""
    for decorator in reversed(_option_flags()):
        f = decorator(f)
    return f


def source_options(f):
    """--run-dir / --checkpoint / --oracle (+ --sde, --sde-param for oracles) and --raw-weights."""
    for decorator in reversed([
        click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                     help="A training run directory (its checkpoint.pt)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="A checkpoint file."),
        click.option("--oracle", type=catalog_choice("oracles"), default=None,
                     help="The exact score of a 2-D law instead of a network."),
        click.option("--sde", "sde_name", type=catalog_choice("sdes"), default=None,
                     help="Oracle only: the SDE (default cld). A checkpoint brings its own."),
        click.option("--sde-param", "sde_param", multiple=True, help="Oracle only: KEY=VALUE of the SDE."),
        click.option("--raw-weights", is_flag=True, help="Use the raw weights instead of the EMA."),
    ]):
        f = decorator(f)
    return f


def resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights) -> dict:
    given = [name for name, value in (("--run-dir", run_dir), ("--checkpoint", checkpoint), ("--oracle", oracle))
             if value]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --run-dir, --checkpoint, --oracle")
    if oracle is None and (sde_name or sde_param):
        raise click.UsageError("--sde and --sde-param are for --oracle; a checkpoint brings its own SDE")
    if oracle is not None and raw_weights:
        raise click.UsageError("--raw-weights applies to checkpoints, not to --oracle")
    return {"checkpoint": checkpoint or run_dir, "oracle": oracle, "sde_name": sde_name or "cld",
            "sde_params": key_values(sde_param, "--sde-param"), "raw_weights": raw_weights}


def load_source(args: dict, *, precision: str = "fp32", device="cpu", net_batch: int = 256, speedups=()):
    from cldsgm.sources import checkpoint_source, oracle_source

    if args["oracle"]:
        return oracle_source(args["oracle"], args["sde_name"], args["sde_params"])
    return checkpoint_source(args["checkpoint"], raw_weights=args["raw_weights"], precision=precision, device=device,
                             net_batch=net_batch, speedups=speedups)


def speedup_option(f):
    """--speedup NAME (repeatable): how the network runs faster, never what the sampler computes."""
    return click.option("--speedup", "speedups", multiple=True, type=catalog_choice("speedups"),
                        help="cast-weights (bf16/fp16 weights instead of autocast), compile-blocks (torch.compile of "
                             "each repeated block), cuda-graph (each network call replayed from a CUDA graph). "
                             "Repeatable; recorded in the manifest.")(f)


@main.command("sample")
@source_options
@click.option("--sampler", required=True, type=catalog_choice("samplers"))
@click.option("--nfe", type=int, default=None, help="Fixed-step samplers: the NFE budget, denoising included.")
@click.option("--striding", type=catalog_choice("stridings"), default="uniform", show_default=True)
@click.option("--t-min", type=float, default=1e-3, show_default=True, help="Sampling end time (forward).")
@click.option("--num-samples", "--n", "n", type=int, required=True,
              help="Size of the whole sample set (under torchrun write --num-samples: torchrun takes --n as its own).")
@click.option("--first", type=int, default=0, show_default=True, help="First index of this invocation's slice.")
@click.option("--count", type=int, default=None, help="Samples in this slice (default: to the end).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True, help="Samples integrated at once.")
@click.option("--net-batch", type=int, default=256, show_default=True,
              help="Rows per network call (padded): fixes the numerics, whatever --batch-size.")
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--precision", type=catalog_choice("precisions"), default="fp32", show_default=True,
              help="Autocast of the network only.")
@speedup_option
@click.option("--device", type=catalog_choice("devices"), default="auto", show_default=True)
@click.option("--no-denoise", is_flag=True, help="Skip the final noise-free denoising step.")
@sampler_flags
@label_option
@click.option("--classifier", default=None, metavar="RUN|oracle",
              help="Class-conditional sampling: a `cldsgm train-classifier` run directory, or 'oracle' (the exact "
                   "class posterior of an --oracle mixture: its components are the classes).")
@click.option("--class", "class_label", type=int, default=None, help="With --classifier: the class to sample.")
@click.option("--guidance-scale", type=float, default=1.0, show_default=True,
              help="With --classifier: W in s + W grad log p(y | u_t) (1: the conditional law; 0: unguided).")
@click.option("--done", "done_path", type=click.Path(dir_okay=False), default=None,
              help="Write this JSON summary once this invocation's slice is complete (a workflow's output).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="a bar on a terminal; in a log file a line at least every $CLDSGM_PROGRESS_EVERY seconds (30)")
def sample_command(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights, sampler, nfe, striding, t_min, n,
                   first, count, seed, batch_size, net_batch, shard_size, out_dir, precision, speedups, device,
                   no_denoise, labels, classifier, class_label, guidance_scale, done_path, progress, **sampler_values):
    """Sample a set of n into DIR/shard_<first>-<last>.npz + manifest.json + grid.png; resumes; torchrun-aware.

    Image i of a run (seed) is the same bytes whatever --batch-size and however the set is split (--first/--count
    invocations, torchrun ranks). Re-running the command verifies finished shards and makes the rest. Sampler
    options apply to the samplers named in their help; the adaptive ODE takes tolerances instead of --nfe.
    """
    from cldsgm import catalog

    source_args = resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights)
    options = sampler_options(sampler, sampler_values)
    labels = parse_labels(labels)
    adaptive = catalog.sampler(sampler).adaptive
    if adaptive and nfe is not None:
        raise click.UsageError(f"the {sampler} sampler is adaptive: give tolerances (--rtol/--atol), not --nfe")
    if not adaptive and nfe is None:
        raise click.UsageError(f"sampler {sampler!r} needs --nfe")
    if (classifier is None) != (class_label is None):
        raise click.UsageError("--classifier and --class go together (class-conditional sampling)")
    guidance = None if classifier is None else {"classifier": classifier, "class": class_label,
                                                "scale": guidance_scale}
    created = writable_dir(out_dir, "--out")
    here = launch()

    from cldsgm.sampling import sample_to_dir

    try:
        torch_device = device_for(device)
        source = load_source(source_args, precision=precision, device=torch_device, net_batch=net_batch,
                             speedups=speedups)
        summary = sample_to_dir(source, out_dir, sampler=sampler, nfe=nfe, n=n, striding=striding, t_min=t_min,
                                seed=seed, first=first, count=count, batch_size=batch_size, shard_size=shard_size,
                                options=options, denoise=not no_denoise, rank=here.rank, world=here.world,
                                device=torch_device, precision=precision, net_batch=None if oracle else net_batch,
                                progress=progress and here.main, labels=labels, guidance=guidance)
        finish_ranks_and_mark(done_path, summary)
    except (ValueError, OSError) as err:
        if created:  # a bad classifier, class or scale: refused before any shard, and no empty --out is left
            remove_if_empty(out_dir)
        raise click_error(err) from err
    state = "complete" if summary["complete"] else f"{summary['done']} of {summary['n']} done"
    click.echo(f"sampled {len(summary['made'])} shard(s), kept {summary['kept']} -> {out_dir} ({state})")


@main.command("inpaint")
@source_options
@click.option("--images", type=click.Path(dir_okay=False, exists=True), required=True,
              help="A prepared dataset file (`cldsgm prepare`'s .npz): the images whose known pixels are kept.")
@click.option("--mask", "mask_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A .npy (or .npz with 'mask') of 0 (missing) and 1 (known): one image's shape or one per image.")
@click.option("--mask-kind", type=catalog_choice("mask_kinds"), default=None,
              help="Instead of --mask: the central square, the right half, or random pixels (from --seed) missing; "
                   "none: all missing (unconditional samples judged against the same images: the baseline).")
@click.option("--sampler", type=catalog_choice("inpaint_samplers"), default="em", show_default=True)
@click.option("--nfe", type=int, required=True, help="The NFE budget, denoising included.")
@click.option("--striding", type=catalog_choice("stridings"), default="uniform", show_default=True)
@click.option("--t-min", type=float, default=1e-3, show_default=True)
@click.option("--num-samples", "--n", "n", type=int, default=None, help="The first n images (default: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--device", type=catalog_choice("devices"), default="auto", show_default=True)
@click.option("--no-denoise", is_flag=True, help="Skip the final noise-free denoising step.")
@sampler_flags
@label_option
@click.option("--done", "done_path", type=click.Path(dir_okay=False), default=None,
              help="Write this JSON summary once the set is complete (a workflow's output).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def inpaint_command(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights, images, mask_file, mask_kind,
                    sampler, nfe, striding, t_min, n, seed, batch_size, shard_size, out_dir, device, no_denoise,
                    labels, done_path, progress, **sampler_values):
    """Fill in the missing pixels of images with a CLD or PSLD model: after every step the known pixels' data and
    momentum are replaced by a forward-process draw from the image (the PSLD reference's method); the result keeps
    them exactly. Writes the same sharded, resumable directory as `cldsgm sample`."""
    source_args = resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights)
    options = sampler_options(sampler, sampler_values)
    if (mask_file is None) == (mask_kind is None):
        raise click.UsageError("give --mask FILE or --mask-kind KIND (one of them)")
    created = writable_dir(out_dir, "--out")

    from cldsgm.sampling import inpaint_to_dir

    try:
        torch_device = device_for(device)
        source = load_source(source_args, device=torch_device)
        summary = inpaint_to_dir(source, out_dir, images=images, mask=mask_file, mask_kind=mask_kind, sampler=sampler,
                                 nfe=nfe, n=n, striding=striding, t_min=t_min, seed=seed, batch_size=batch_size,
                                 shard_size=shard_size, options=options, denoise=not no_denoise, device=torch_device,
                                 progress=progress, labels=parse_labels(labels))
        finish_ranks_and_mark(done_path, summary)
    except (ValueError, OSError) as err:
        if created:  # refused before any shard: no empty --out is left
            remove_if_empty(out_dir)
        raise click_error(err) from err
    click.echo(f"inpainted {len(summary['made'])} shard(s), kept {summary['kept']} -> {out_dir}")


def parse_row(text: str) -> dict:
    """One --row of `sample-rows`: a JSON object {out, sampler, n, nfe (fixed-step samplers), striding, options (by
    the catalog's option names), labels, checkpoint (optional: another checkpoint of the source, e.g. a snapshot)}."""
    import json

    from cldsgm import catalog

    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not JSON ({err}): {text[:80]!r}", param_hint="--row") from None
    if not isinstance(row, dict):
        raise click.BadParameter(f"a JSON object is expected, got {text[:80]!r}", param_hint="--row")
    allowed = {"out", "sampler", "n", "nfe", "striding", "options", "labels", "checkpoint"}
    missing, extra = {"out", "sampler", "n"} - set(row), set(row) - allowed
    if missing or extra:
        raise click.BadParameter(f"{text[:80]!r}: missing {sorted(missing)}, unknown {sorted(extra)} (keys: "
                                 f"{sorted(allowed)})", param_hint="--row")
    if row["sampler"] not in catalog.SAMPLERS:
        raise click.BadParameter(f"unknown sampler {row['sampler']!r}", param_hint="--row")
    try:
        catalog.sampler(row["sampler"]).check_options(row.get("options") or {})
    except ValueError as err:
        raise click.BadParameter(f"{row['out']}: {err}", param_hint="--row") from None
    row = {"nfe": None, "striding": "uniform", "options": {}, "labels": {}, "checkpoint": None, **row}
    return {**row, "labels": {str(k): str(v) for k, v in row["labels"].items()}}  # labels are text, as --label's


def part_of(n: int, part: int, parts: int) -> tuple[int, int]:
    """(first, count) of part k of `parts` equal slices of a set of n (the last ones may be shorter or one sample)."""
    size = -(-n // parts)
    first = min(part * size, n - 1)
    return first, max(1, min(size, n - first))


@main.command("sample-rows")
@source_options
@click.option("--row", "rows", multiple=True, required=True, metavar="JSON",
              help="One sample set: {\"out\": DIR, \"sampler\": S, \"n\": N, \"nfe\": K, \"striding\": ..., "
                   "\"options\": {...}, \"labels\": {...}, \"checkpoint\": FILE}. Repeat per set.")
@click.option("--t-min", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--net-batch", type=int, default=256, show_default=True)
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--precision", type=catalog_choice("precisions"), default="fp32", show_default=True)
@speedup_option
@click.option("--device", type=catalog_choice("devices"), default="auto", show_default=True)
@click.option("--part", type=int, default=None, help="Make only slice PART of every set (of --parts).")
@click.option("--parts", type=int, default=1, show_default=True)
@click.option("--done", "done_path", type=click.Path(dir_okay=False), default=None,
              help="Write this JSON summary once every set (or slice) is complete.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="a bar on a terminal; in a log file a line at least every $CLDSGM_PROGRESS_EVERY seconds (30)")
def sample_rows_command(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights, rows, t_min, seed, batch_size,
                        net_batch, shard_size, precision, speedups, device, part, parts, done_path, progress):
    """Several sample sets of one source in one process (one network load, one torch import).

    Each set is its own directory with the same bytes as `cldsgm sample` with the same arguments would write, and
    gets DIR/done.json once complete; a rerun verifies finished shards and makes only what is missing. --part K
    --parts P makes slice K of every set (separate jobs or GPUs); a later call without --part verifies them all.
    """
    from cldsgm.sampling import sample_to_dir
    from cldsgm.utils.io import atomic_write_json

    source_args = resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights)
    specs = [parse_row(text) for text in rows]
    outs = [spec["out"] for spec in specs]
    if len(set(outs)) != len(outs):
        raise click.UsageError("two --row entries write the same directory")
    if parts < 1 or (part is not None and not 0 <= part < parts):
        raise click.UsageError(f"--part must be in [0, --parts) and --parts >= 1 (got {part}, {parts})")
    for out in outs:
        writable_dir(out, "--row out")
    summaries = []
    try:
        torch_device = device_for(device)
        loaded = {}

        def source_of(spec):
            args = {**source_args, "checkpoint": spec["checkpoint"] or source_args["checkpoint"]}
            key = args["checkpoint"] or args["oracle"]
            if key not in loaded:
                loaded[key] = load_source(args, precision=precision, device=torch_device, net_batch=net_batch,
                                          speedups=speedups)
            return loaded[key]

        for spec in specs:
            first, count = part_of(spec["n"], part, parts) if part is not None else (0, None)
            summary = sample_to_dir(source_of(spec), spec["out"], sampler=spec["sampler"], nfe=spec["nfe"],
                                    n=spec["n"], striding=spec["striding"], t_min=t_min, seed=seed, first=first,
                                    count=count, batch_size=batch_size, shard_size=shard_size,
                                    options=spec["options"], device=torch_device, precision=precision,
                                    net_batch=None if oracle else net_batch, progress=progress,
                                    labels=spec["labels"])
            if part is None:
                finish_ranks_and_mark(f"{spec['out']}/done.json", summary)
            summaries.append({k: v for k, v in summary.items() if k != "made"})
            click.echo(f"{spec['out']}: made {len(summary['made'])} shard(s), kept {summary['kept']}")
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    if done_path and all(s["slice_complete"] for s in summaries):
        atomic_write_json(done_path, {"sets": summaries})
