"""The values of a finished study that a refactor must not change: every sample and NLL shard's sha256 and summary
statistics (size, mean, standard deviation of its array), and every record's value, standard error and NFE. Written
once from the smoke study (tests/data/smoke_digest.json); the workflow test compares a fresh smoke run against it:
byte for byte on the CPU model that made it, within TOLERANCE everywhere else.

    python tests/smoke_digest.py results/smoke > tests/data/smoke_digest.json   (from a fresh smoke run)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


def shard_stats(path: Path) -> list[float]:
    """[size, mean, standard deviation] of the finite entries of a shard's (first) array, in float64 (an NLL shard
    has a column of NaN where a quantity is not defined: its size counts the finite entries)."""
    import numpy as np

    with np.load(path) as archive:
        array = archive[archive.files[0]].astype(np.float64)
    finite = array[np.isfinite(array)]
    return [float(finite.size), float(finite.mean()), float(finite.std())]


def digest(results: Path, exclude: tuple[str, ...] = ()) -> dict:
    """{'shards': {relative path: sha256}, 'shard_stats': {relative path: [finite size, mean, std]}, 'records':
    {relative path: [value, stderr, nfe]}} of results/<study>."""
    out = {"shards": {}, "shard_stats": {}, "records": {}}
    for path in sorted([*results.glob("samples/*/*/shard_*.npz"), *results.glob("nll/*/shard_*.npz")]):
        key = str(path.relative_to(results))
        if not any(word in key for word in exclude):
            out["shards"][key] = hashlib.sha256(path.read_bytes()).hexdigest()
            out["shard_stats"][key] = shard_stats(path)
    for path in sorted(results.glob("records/**/*.json")):
        key = str(path.relative_to(results))
        if not any(word in key for word in exclude):
            record = json.loads(path.read_text())
            out["records"][key] = [record["value"], record.get("stderr"), record.get("nfe")]
    return out


def cpu_model() -> str:
    """The CPU's model name: kernels of one instruction set still differ in their last bits between CPU models."""
    import platform
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results/<study> of a finished run")
    parser.add_argument("--exclude", action="append", default=[], help="skip paths containing this text")
    args = parser.parse_args()
    import torch

    doc = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": cpu_model(),
           "torch": torch.__version__,
           **digest(args.results, tuple(args.exclude))}
    json.dump(doc, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
