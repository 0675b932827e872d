"""Helpers shared by the verbs: one-line errors, output directories, number lists, signals."""

from __future__ import annotations

import click


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


def device_for(name: str, local_rank: int = 0):
    """auto | cpu | cuda -> torch.device; cuda:<LOCAL_RANK> under torchrun. A clear error without a GPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise click.UsageError("--device cuda, but no CUDA device is available (use --device cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def key_values(items, flag: str) -> dict:
    """('a=1', 'b=x') -> {'a': 1.0, 'b': 'x'}: numbers where they parse, else strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
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
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        dist.destroy_process_group()
    if done_path and int(os.environ.get("RANK", "0")) == 0:
        from cldsgm.sampling import slice_complete
        from cldsgm.utils.io import atomic_write_json

        # read again: other ranks may have finished shards of the slice after this one's summary
        if slice_complete(summary["out_dir"], summary["first"], summary["count"]):
            atomic_write_json(done_path, {k: v for k, v in summary.items() if k != "made"})
