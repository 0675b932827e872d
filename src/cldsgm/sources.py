"""Score sources: what samples come from, a training checkpoint's network or an exact-score oracle.

A source bundles the SDE, a score function (u, t) -> score, the data's kind and per-sample shape, and a JSON-able
identity (checkpoint path, sha256, step and weights, or the oracle) that every manifest and record carries.
A network is evaluated on blocks of exactly `net_batch` rows (`FixedRowsNet`, the last block padded), because
matrix kernels pick their blocking by batch size and a sample's last bits would otherwise depend on its batch.
Oracles need no padding: their score is per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from cldsgm.oracles import GaussianMixture, oracle_law
from cldsgm.sde import build_sde
from cldsgm.utils.io import file_sha256, project_path

__all__ = ["FixedRowsNet", "ScoreSource", "checkpoint_source", "compute_dtype", "fast_network", "load_network",
           "oracle_source"]


def compute_dtype(precision: str) -> torch.dtype | None:
    """The reduced-precision dtype of a catalog.PRECISIONS name (None for fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class FixedRowsNet(nn.Module):
    """`net` evaluated on blocks of exactly `rows` samples (the last one zero-padded), optionally under autocast.

    Makes a sample's output independent of the batch it comes in (see the module docstring). The output is
    cast back to the input's dtype: autocast touches the network only, never the sampler's arithmetic.
    """

    def __init__(self, net: nn.Module, rows: int, precision: str = "fp32", cast_inputs: bool = False):
        super().__init__()
        if rows < 1:
            raise ValueError(f"net_batch must be >= 1, got {rows}")
        # cast_inputs: the network's weights are in the precision's dtype (cast_for_inference): the state is cast to
        # it instead of running under autocast
        self.net, self.rows, self.precision, self.cast_inputs = net, int(rows), precision, cast_inputs

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        outs = []
        for start in range(0, u.shape[0], self.rows):
            block_u, block_t = u[start:start + self.rows], t[start:start + self.rows]
            k = block_u.shape[0]
            if k < self.rows:
                block_u = torch.cat([block_u, block_u.new_zeros(self.rows - k, *block_u.shape[1:])])
                block_t = torch.cat([block_t, block_t.new_full((self.rows - k,), 0.5)])
            dtype = compute_dtype(self.precision)
            if self.cast_inputs:
                out = self.net(block_u.to(dtype), block_t)
            else:
                with torch.autocast(u.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    out = self.net(block_u, block_t)
            outs.append(out[:k].to(u.dtype))
        return torch.cat(outs)


@dataclass
class ScoreSource:
    """What samples come from: an SDE, a score function (u, t) -> score, and what the data look like.

    identity: JSON-able description (checkpoint path, sha256, step and weights, or the oracle) that goes into
    every manifest and record. mixture: the oracle's data law (mode coverage, exact NLL), else None.
    """

    sde: object
    sde_name: str
    score_fn: object
    data_shape: tuple
    kind: str
    identity: dict
    network: str | None = None
    mixture: GaussianMixture | None = None
    sde_params: dict = field(default_factory=dict)
    data_path: str | None = None  # the prepared training data of a checkpoint (pilot batches, e.g. sigma_d)
    speedups: tuple = ()  # catalog.NETWORK_SPEEDUPS the network runs with

    def pilot_data(self, n: int, seed: int = 0) -> Tensor:
        """n data samples [n, *data_shape] (float64; images in [-1, 1]): the oracle's law, or the first n of a fixed
        permutation of the checkpoint's training data. ValueError when neither is available."""
        if self.mixture is not None:
            return self.mixture.sample(n, generator=torch.Generator().manual_seed(seed))
        if self.data_path is None:
            raise ValueError("this score source has no data to draw a pilot batch from")
        from cldsgm.data.prepared import load_prepared, random_subset, scale_images

        data, _, _ = load_prepared(self.data_path)
        x = torch.from_numpy(random_subset(data, n, seed))
        return (scale_images(x) if self.kind == "image" else x).to(torch.float64)


def load_network(path: str | Path, *, raw_weights: bool = False, device="cpu", trainable: bool = False):
    """(checkpoint path, its state, the network with its EMA (or raw) weights in eval mode, the SDE, {kind, shape}
    of its data) of a training checkpoint or the run directory holding one; parameters frozen unless trainable.
    Raises FileNotFoundError, UnsafeCheckpointError or ValueError (not a cldsgm checkpoint, or weights that do not
    fit the recorded network)."""
    from cldsgm.models.registry import build_network
    from cldsgm.models.score import check_network_fits
    from cldsgm.training.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = load_checkpoint(path)
    config = state["config"]
    data = state.get("data") or _data_from_manifest(config, path)
    sde = build_sde(config["sde"]["name"], **config["sde"]["params"])
    net = build_network(state["network"]["name"], **state["network"]["options"])
    weights = state["model"] if raw_weights else state["ema"]
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path}: weights do not fit network {state['network']['name']!r} "
                         f"({str(err).splitlines()[0]})") from None
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(trainable)
    check_network_fits(net, sde, data["shape"], device=device, what=f"checkpoint {path}")
    return path, state, net, sde, data


def checkpoint_source(path: str | Path, *, raw_weights: bool = False, precision: str = "fp32", device="cpu",
                      net_batch: int = 256, speedups=()) -> ScoreSource:
    """The score model of a training checkpoint (EMA weights unless raw_weights), on `device`, in eval mode.

    path: a checkpoint.pt or the run directory holding it (errors: load_network).
    speedups: names of catalog.NETWORK_SPEEDUPS (ValueError for others, and for cast-weights in fp32).
    """
    from cldsgm.models.score import ScoreParameterisation

    path, state, net, sde, data = load_network(path, raw_weights=raw_weights, device=device)
    config = state["config"]
    param = ScoreParameterisation(sde, objective=config["loss"]["objective"], mixed_score=config["loss"]["mixed_score"])
    speedups = tuple(sorted(set(speedups)))
    wrapped = FixedRowsNet(fast_network(net, speedups, precision), net_batch, precision,
                           cast_inputs="cast-weights" in speedups)
    identity = {"checkpoint": project_path(path), "sha256": file_sha256(path), "step": int(state["step"]),
                "weights": "raw" if raw_weights else "ema"}
    return ScoreSource(sde, config["sde"]["name"], param.score_fn(wrapped), tuple(data["shape"]), data["kind"],
                       identity, network=state["network"]["name"], sde_params=dict(config["sde"]["params"]),
                       data_path=config["data"].get("path"), speedups=speedups)


def fast_network(net: nn.Module, speedups, precision: str, *, backend: str = "inductor") -> nn.Module:
    """`net` with the catalog's NETWORK_SPEEDUPS applied: weights cast once, repeated blocks compiled (by `backend`),
    calls replayed from CUDA graphs (cldsgm.models.fast). ValueError for an unknown name or cast-weights in fp32."""
    from cldsgm import catalog
    from cldsgm.models.fast import GraphedNet, cast_for_inference, compile_blocks

    unknown = sorted(set(speedups) - set(catalog.NETWORK_SPEEDUPS))
    if unknown:
        raise ValueError(f"unknown speedup(s) {unknown}; choose from {list(catalog.NETWORK_SPEEDUPS)}")
    if "cast-weights" in speedups:
        dtype = compute_dtype(precision)
        if dtype is None:
            raise ValueError(f"cast-weights needs precision bf16 or fp16, not {precision}")
        net = cast_for_inference(net, dtype)
    if "compile-blocks" in speedups:
        net = compile_blocks(net, backend=backend)
    return GraphedNet(net) if "cuda-graph" in speedups else net


def _data_from_manifest(config: dict, path: Path) -> dict:
    """Data kind and shape of checkpoints written before they recorded them: from the training data's manifest."""
    from cldsgm.data.prepared import read_manifest

    manifest_path = Path(config["data"]["path"]).with_suffix(".json")
    if not manifest_path.is_file():
        raise ValueError(f"checkpoint {path} does not record its data shape and its training data manifest "
                         f"{manifest_path} is missing")
    manifest = read_manifest(manifest_path)
    return {"kind": manifest["kind"], "shape": manifest["shape"]}


def oracle_source(name: str, sde_name: str = "cld", sde_params: dict | None = None) -> ScoreSource:
    """The exact score of a 2-D Gaussian-mixture law of cldsgm.catalog.ORACLES under an SDE."""
    mix = oracle_law(name)  # ValueError naming the choices
    sde = build_sde(sde_name, **(sde_params or {}))
    return ScoreSource(sde, sde_name, mix.score_fn(sde), (mix.dim,), "points", {"oracle": name},
                       mixture=mix, sde_params=dict(sde_params or {}))
