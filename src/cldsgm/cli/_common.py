"""Helpers shared by the verbs: one-line errors, output directories, number lists, signals."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click


class CatalogChoice(click.Choice):
    """A click.Choice over names that cldsgm.catalog holds, read when the command line is parsed: a sampler
    registered at run time is a valid choice, and no command keeps a list of names of its own."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names
        super().__init__([])

    @property
    def choices(self):
        return tuple(self._names())

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns its list; the catalog is the source
        pass


def catalog_choice(what: str) -> CatalogChoice:
    """A choice of catalog names: 'samplers', 'sdes', 'datasets', 'oracles', 'stridings', 'precisions', 'devices',
    'ode_methods', 'probes', 'fid_modes', 'speedups', 'inpaint_samplers', 'mask_kinds' or 'checkpoint_formats'."""
    from cldsgm import catalog

    tables = {"samplers": lambda: catalog.SAMPLERS, "sdes": lambda: catalog.SDES, "datasets": lambda: catalog.DATASETS,
              "oracles": lambda: catalog.ORACLES, "stridings": lambda: catalog.STRIDINGS,
              "precisions": lambda: catalog.PRECISIONS, "devices": lambda: catalog.DEVICES,
              "ode_methods": lambda: catalog.ODE_METHODS, "probes": lambda: catalog.NLL_PROBES,
              "fid_modes": lambda: catalog.FID_MODES, "speedups": lambda: catalog.NETWORK_SPEEDUPS,
              "inpaint_samplers": catalog.inpaint_samplers, "mask_kinds": lambda: catalog.MASK_KINDS,
              "checkpoint_formats": lambda: catalog.CHECKPOINT_FORMATS}
    return CatalogChoice(tables[what])


def label_option(f):
    """--label KEY=VALUE (repeatable): what a study calls the output (source, row, variant, data, kind)."""
    return click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
                        help="What the study calls this (source, row, variant, data, kind): kept in the manifest and "
                             "every record made from it, so that records describe themselves.")(f)


def pairs(items, flag: str) -> list[tuple[str, str]]:
    """('a=1', 'b=x=y') -> [('a', '1'), ('b', 'x=y')]; a usage error naming `flag` for an item without KEY=."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
        out.append((key, value))
    return out


def parse_labels(items) -> dict:
    """('source=digits_cld', 'row=em-uniform-nfe6') -> {'source': 'digits_cld', ...}: strings, in order."""
    return dict(pairs(items, "--label"))


def floats(text: str, name: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from err


def click_error(err: Exception) -> click.ClickException:
    """One line for a failure: our own messages as they are; a system error (permissions, disk full, a file
    where a folder should be) as 'cannot write <file>: <reason>' instead of a traceback."""
    if isinstance(err, OSError) and err.errno is not None:
        where = f" {err.filename}" if err.filename else ""
        return click.ClickException(f"cannot write{where}: {err.strerror or err}")
    return click.ClickException(str(err))


def writable_dir(path: str, flag: str) -> bool:
    """Create `path` (and parents) now, so that an unwritable location fails before any work is done.

    Returns whether it was created here (see remove_if_empty).
    """
    import os
    from pathlib import Path

    created = not Path(path).exists()
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f"{flag} {path} cannot be created: {err.strerror or err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise click.ClickException(f"{flag} {path} is not writable")
    return created


def remove_if_empty(path: str) -> None:
    """Undo writable_dir after a failure that wrote nothing: no empty run directory is left behind."""
    from pathlib import Path

    try:
        Path(path).rmdir()  # fails, as wanted, unless the directory is empty
    except OSError:
        pass



def sigterm_as_interrupt() -> None:
    """SIGTERM (Snakemake, SLURM, a user's kill) unwinds like Ctrl-C: the run is closed KILLED, files stay whole."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def device_for(name: str):
    """--device auto | cpu | cuda -> torch.device (cuda:<LOCAL_RANK> under torchrun); a usage error without a GPU."""
    from cldsgm.utils.launch import launch, resolve_device

    try:
        return resolve_device(name, launch().local_rank)
    except ValueError as err:
        raise click.UsageError(f"--device {name}: {err}") from None


def key_values(items, flag: str) -> dict:
    """('a=1', 'b=x') -> {'a': 1.0, 'b': 'x'}: numbers where they parse, else strings."""
    out = {}
    for key, value in pairs(items, flag):
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def finish_ranks_and_mark(done_path, summary: dict) -> None:
    """Under torchrun, wait for every rank (gloo barrier); then rank 0 writes `done_path` if the slice is whole.

    `done_path` is what a workflow declares as the job's output: it appears only when the job's work is
    complete, so a killed job never leaves a file that looks finished.
    """
    from cldsgm.utils.launch import launch

    if launch().world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        dist.destroy_process_group()
    if done_path and launch().main:
        from cldsgm.shards import slice_complete
        from cldsgm.utils.io import atomic_write_json

        # read again: other ranks may have finished shards of the slice after this one's summary
        if slice_complete(summary["out_dir"], summary["first"], summary["count"]):
            atomic_write_json(done_path, {k: v for k, v in summary.items() if k != "made"})
