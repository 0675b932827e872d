"""A released reference checkpoint (CLD-SGM or PSLD) written as a run directory of ours: checkpoint.pt + config.yaml.

The written checkpoint is what `cldsgm sample / fid / nll` and the workflow read from a trained run: EMA and raw
weights in our layout, the resolved config, the network, the data shape, and where it came from (format, path,
sha256 of the source file).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cldsgm.models.ncsnpp import NCSNpp
from cldsgm.models.reference import from_reference, read_reference
from cldsgm.models.registry import PRESETS, build_network
from cldsgm.sde import build_sde
from cldsgm.training.checkpoint import load_tensor_file, save_checkpoint
from cldsgm.utils.io import atomic_write_text, project_path

__all__ = ["import_reference_checkpoint"]

def import_reference_checkpoint(file: str | Path, fmt: str, config: dict, run_dir: str | Path) -> dict:
    """Convert `file` (format 'cld-sgm' | 'psld') for the network and SDE of `config`; write run_dir/checkpoint.pt.

    Returns a summary {format, file, sha256, step, tensors, run_dir}. Raises ValueError (wrong format, tensors that
    do not fit: unknown, missing and mis-shaped listed together), UnsafeCheckpointError (a pickle that would run
    code: refused before it runs) or FileNotFoundError. Nothing is written unless every tensor fits.
    """
    from cldsgm.models.score import check_network_fits
    from cldsgm.utils.io import file_sha256

    file, run_dir = Path(file), Path(run_dir)
    name, options = config["model"]["name"], dict(config["model"].get("options") or {})
    net = build_network(name, **options)
    if not isinstance(net, NCSNpp):
        raise ValueError(f"network {name!r} is not an NCSN++: the released checkpoints are NCSN++ models")
    state = load_tensor_file(file, what="checkpoint")
    what = f"checkpoint {file} ({fmt})"
    weights = read_reference(state, fmt, fourier=net.embedding == "fourier", what=what)
    ema = from_reference(net, weights["ema"], what=what)
    raw = from_reference(net, weights["raw"], what=what)
    net.load_state_dict(ema, strict=True)  # both already checked tensor by tensor; strict as a last guard

    sde = build_sde(config["sde"]["name"], **config["sde"]["params"])
    merged = {**PRESETS[name][1], **options}
    channels = merged["in_channels"] // sde.state_channels(1)  # (x, v) or (x, m): twice the data channels
    shape = [channels, merged["image_size"], merged["image_size"]]
    check_network_fits(net.eval(), sde, shape, what=what)

    sha256 = file_sha256(file)
    source = {"format": fmt, "path": project_path(file), "sha256": sha256, "step": weights["step"]}
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / "checkpoint.pt", {
        "step": weights["step"], "model": raw, "ema": ema, "config": config,
        "network": {"name": name, "options": options}, "data": {"kind": "image", "shape": shape},
        "history": [], "imported_from": source})
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return {"format": fmt, "file": str(file), "sha256": sha256, "step": weights["step"], "tensors": len(ema),
            "run_dir": str(run_dir)}
