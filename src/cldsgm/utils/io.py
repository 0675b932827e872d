"""Atomic file writes: a reader (or Snakemake) never sees a half-written output.

Temporary files are named `.<name>.<random>.tmp` beside their target, so a writer killed mid-write leaves
a file that no reader mistakes for the output, and that `remove_stale_temporaries` can find later.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "default_file_mode", "file_sha256", "portable",
           "portable_uri", "project_path", "remove_stale_temporaries"]

_UMASK_LOCK = threading.Lock()


def default_file_mode() -> int:
    """0o666 less the process umask: the mode open() would give a new file (0o644 under the usual 022)."""
    with _UMASK_LOCK:  # os.umask can only be read by setting it; the lock keeps threads from seeing 0
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The result has the mode a plain open() would give (umask honoured): mkstemp alone makes it 0600,
    unreadable to colleagues sharing a data directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temporaries(directory: str | os.PathLike, names) -> list[Path]:
    """Delete `.<name>.*.tmp` left in `directory` by a writer of ours that was killed; return what went.

    Only call this where one process owns the files `names` (a training run directory): a live writer's
    temporary would be removed too.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for name in names:
        for stale in directory.glob(f".{name}.*.tmp"):
            try:
                stale.unlink()
                removed.append(stale)
            except FileNotFoundError:  # another cleaner got there first
                pass
    return removed


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes (hex), read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def project_path(path: str | os.PathLike) -> str:
    """`path` as records, manifests and tracking files store it: relative to the working directory (the project root,
    where Snakemake and the verbs run) when it lies inside it, else absolute. A study pulled into another folder or
    onto another machine then describes itself correctly; readers resolve it against their working directory."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def portable_uri(uri: str | None) -> str | None:
    """A tracking URI as tracking files store it: a SQLite file inside the project as `sqlite:///<relative path>`
    (resolved against the working directory when read), any other URI unchanged."""
    if uri is None or not uri.startswith("sqlite:///"):
        return uri
    return f"sqlite:///{project_path(Path(uri[len('sqlite:///'):]).expanduser())}"


def portable(obj):
    """`obj` (JSON-like) with every absolute path inside the working directory made relative (project_path): for
    comparing an identity stored by an earlier version, which kept absolute paths, with a portable one."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(os.sep) and Path(obj).is_relative_to(Path.cwd()):
        return project_path(obj)
    return obj
