"""The resumable sharded store shared by sampling and NLL: a directory of shards, a manifest and a lock.

A directory holds `shard_<first>-<last>.npz` files (key `samples`), each written atomically, and `manifest.json`:
the run's identity (what makes two runs the same run), its labels (what the study calls it: source, row, variant,
data; free to change), the kind and per-item shape, and per shard its sha256, NFE, wall seconds and device.
Shards lie on a global grid of the shard size: shard j covers [j S, (j + 1) S), cut to the requested slice, so
separate --first/--count invocations, torchrun ranks (rank r takes the shards j with j mod W = r) and one single run
all write the same files (`ShardPlan`). A lock file serialises the manifest's updates between processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from cldsgm import __version__
from cldsgm.utils.io import atomic_path, atomic_write_json, file_sha256, portable
from cldsgm.utils.progress import Progress

__all__ = ["MANIFEST", "SampleDirError", "ShardPlan", "batch_edges", "check_slice", "fill_shards", "load_samples",
           "read_manifest", "slice_complete"]

MANIFEST = "manifest.json"
FORMAT = "cldsgm-samples-v1"


class SampleDirError(ValueError):
    """A sample directory that cannot be used as asked (another run's shards, missing or corrupted shards)."""


@dataclass(frozen=True)
class ShardPlan:
    """Which shards of a set of n items one process makes: the slice [first, first + count) on the global grid of
    `shard_size`, and of those the shards j with j mod world == rank (torchrun)."""

    n: int
    first: int
    count: int
    shard_size: int
    rank: int = 0
    world: int = 1

    def ranges(self) -> list[tuple[int, int]]:
        """[(a, b)] half-open global ranges of the slice: multiples of shard_size, cut to the slice."""
        end, out, start = self.first + self.count, [], self.first
        while start < end:
            stop = min((start // self.shard_size + 1) * self.shard_size, end)
            out.append((start, stop))
            start = stop
        return out

    def mine(self) -> list[tuple[int, int]]:
        """This rank's share of ranges()."""
        return [r for j, r in enumerate(self.ranges()) if j % self.world == self.rank]


def check_slice(n: int, first: int, count: int | None, batch_size: int, shard_size: int) -> int:
    """The slice's count (default: to the end); ValueError unless 0 <= first < first + count <= n."""
    count = n - first if count is None else count
    if n < 1 or first < 0 or count < 1 or first + count > n:
        raise ValueError(f"need 0 <= first < first + count <= n, got first={first}, count={count}, n={n}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    return count


def batch_edges(a: int, b: int, batch_size: int, *, aligned: bool) -> list[int]:
    """Batch boundaries in [a, b): every batch_size from a, or (aligned) at global multiples of batch_size."""
    if aligned:
        return sorted({a, b, *range((a // batch_size + 1) * batch_size, b, batch_size)})
    return [*range(a, b, batch_size), b]


def _lock(out_dir: Path) -> FileLock:
    """The directory's lock (several processes may fill one directory at once; released if the holder dies)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(out_dir / ".manifest.lock")


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a sample directory, or None where there is none; SampleDirError if it is not one of ours."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SampleDirError(f"{path} is not valid JSON ({err}); delete {out_dir} and sample again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SampleDirError(f"{path} is not a cldsgm sample manifest")
    return manifest


def _shard_name(first: int, last: int) -> str:
    return f"shard_{first:06d}-{last:06d}.npz"


def _claim_dir(out_dir: Path, identity: dict, kind: str, shape, labels: dict) -> None:
    """Create the manifest, or check that the directory holds shards of this very run; record the labels."""
    with _lock(out_dir):
        manifest = read_manifest(out_dir)
        if manifest is None:
            strays = sorted(p.name for p in out_dir.glob("shard_*.npz"))
            if strays:
                raise SampleDirError(f"{out_dir} holds shards without a manifest ({strays[0]}, ...); "
                                     "use an empty --out directory")
            manifest = {"format": FORMAT, "identity": identity, "kind": kind, "shape": list(shape), "shards": {}}
        else:
            stored = portable(manifest["identity"])  # absolute paths of sets made before they were portable
            diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
            if diff:
                details = "; ".join(f"{k}: {manifest['identity'].get(k)!r} there, {identity.get(k)!r} asked"
                                    for k in diff)
                raise SampleDirError(f"{out_dir} holds shards of another run ({details}); use another --out "
                                     "directory or delete this one")
            if not labels or manifest.get("labels") == labels:
                return
        if labels:
            manifest["labels"] = labels
        atomic_write_json(out_dir / MANIFEST, manifest)


def _record_shard(out_dir: Path, name: str, entry: dict) -> None:
    with _lock(out_dir):
        manifest = read_manifest(out_dir)
        manifest["shards"][name] = entry
        manifest["shards"] = dict(sorted(manifest["shards"].items()))
        atomic_write_json(out_dir / MANIFEST, manifest)


def _shard_ok(out_dir: Path, name: str, entry: dict | None) -> bool:
    path = out_dir / name
    if entry is None or not path.is_file():
        return False
    if file_sha256(path) != entry["sha256"]:
        print(f"shard {path} is corrupted (its sha256 differs from {out_dir / MANIFEST}); remaking it",
              file=sys.stderr, flush=True)
        return False
    return True


def _save_shard(path: Path, array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, samples=array)
    data = buffer.getvalue()  # np.savez of the same array gives the same bytes: shards compare by sha256
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def device_name(device) -> str:
    """A device as a record shows it: the GPU's name, or the CPU's cores and threads."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def fill_shards(out_dir: Path, identity: dict, kind: str, shape, make_shard, plan: ShardPlan, *, device="cpu",
                progress: bool = True, unit: str = "img", labels: dict | None = None) -> dict:
    """Claim the directory for `identity`, then make each missing or corrupted shard of the plan with
    make_shard(a, b, bar) -> (array [b - a, ...], mean NFE), save it atomically and record it. Returns a summary:
    {made, kept, complete, done, n, slice_complete, first, count, out_dir}. progress: a bar on a terminal, else
    a line per shard and at least every $CLDSGM_PROGRESS_EVERY seconds (30; cldsgm.utils.progress)."""

    _claim_dir(out_dir, identity, kind, shape, labels or {})
    manifest = read_manifest(out_dir)
    mine = plan.mine()
    todo = [(a, b) for a, b in mine
            if not _shard_ok(out_dir, _shard_name(a, b - 1), manifest["shards"].get(_shard_name(a, b - 1)))]
    bar = Progress(f"{kind} {out_dir.name}", sum(b - a for a, b in todo), unit=unit, enabled=progress)
    made = []
    try:
        for a, b in todo:
            name, start = _shard_name(a, b - 1), time.perf_counter()
            array, nfe = make_shard(a, b, bar)
            sha = _save_shard(out_dir / name, array)
            _record_shard(out_dir, name, {"first": a, "last": b - 1, "count": b - a, "sha256": sha, "nfe": nfe,
                                          "wall_s": round(time.perf_counter() - start, 3),
                                          "device": device_name(device), "rank": plan.rank, "world": plan.world,
                                          "cldsgm_version": __version__})
            made.append(name)
            bar.line()
    finally:
        bar.close()
    done = sum(e["count"] for e in read_manifest(out_dir)["shards"].values())
    return {"made": made, "kept": len(mine) - len(todo), "complete": done == plan.n, "done": done, "n": plan.n,
            "slice_complete": slice_complete(out_dir, plan.first, plan.count), "first": plan.first,
            "count": plan.count, "out_dir": str(out_dir)}


def slice_complete(out_dir: str | Path, first: int, count: int) -> bool:
    """Whether the manifest of out_dir holds shards covering [first, first + count) (by whichever process)."""
    shards = read_manifest(Path(out_dir))["shards"].values()
    return sum(e["count"] for e in shards if first <= e["first"] and e["last"] < first + count) == count


def covering(manifest: dict, stop: int) -> list[str] | None:
    """Shard names that cover [0, stop) in order, or None if some index is missing."""
    names, at = [], 0
    by_first = {e["first"]: (name, e) for name, e in manifest["shards"].items()}
    while at < stop:
        if at not in by_first:
            return None
        name, entry = by_first[at]
        names.append(name)
        at = entry["last"] + 1
    return names


def load_samples(out_dir: str | Path, *, verify: bool = True, limit: int | None = None) -> tuple[np.ndarray, dict]:
    """All n items of a complete directory in index order (or the first `limit`), and its manifest.

    Raises SampleDirError naming what is missing or corrupted.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise SampleDirError(f"{out_dir} holds no {MANIFEST}: run `cldsgm sample --out {out_dir}` first")
    n = manifest["identity"]["n"]
    stop = n if limit is None else min(n, limit)
    names = covering(manifest, stop)
    if names is None:
        have = sum(e["count"] for e in manifest["shards"].values())
        raise SampleDirError(f"{out_dir} is incomplete: {have} of {n} samples; run the same `cldsgm sample` "
                             "command again to finish it")
    arrays = []
    for name in names:
        path = out_dir / name
        if not path.is_file() or (verify and file_sha256(path) != manifest["shards"][name]["sha256"]):
            raise SampleDirError(f"shard {path} is missing or corrupted (sha256 differs from the manifest); run "
                                 "the same `cldsgm sample` command again to remake it")
        with np.load(path) as data:
            arrays.append(data["samples"])
    return np.concatenate(arrays)[:stop], manifest
