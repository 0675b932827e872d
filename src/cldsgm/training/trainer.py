"""The training loop: score matching with Adam/AdamW, warm-up, clipping, EMA, AMP, checkpoints and DDP.

Every random draw of step s comes from a generator seeded by (seed, s): the data order (per-epoch seeded
permutations), t, eps and v0 (drawn for the *global* batch, then sliced per rank) and the dropout masks. A
run resumed from a checkpoint therefore follows the uninterrupted run exactly, and DDP on W processes sees the
same global batch as one process.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from cldsgm.config import config_changes, flatten
from cldsgm.data.dataset import scale_images
from cldsgm.data.prepared import load_prepared
from cldsgm.losses import sample_time, score_matching_loss
from cldsgm.models.registry import build_network, count_parameters
from cldsgm.sde import PhaseSpaceSDE
from cldsgm.sde import build_sde as _build_sde
from cldsgm.tracking import TRACKING_FILE, Tracker, git_commit
from cldsgm.training.checkpoint import load_checkpoint, save_checkpoint
from cldsgm.utils.io import atomic_path, atomic_write_text, remove_stale_temporaries

__all__ = ["TrainResult", "build_sde", "train"]


def build_sde(config: dict):
    """The SDE of a resolved config (parameter errors surface as ValueError naming the parameter)."""
    return _build_sde(config["sde"]["name"], **config["sde"]["params"])


@dataclass
class TrainResult:
    step: int
    final_loss: float
    history: list
    run_dir: Path
    ran: int = 0  # steps taken by this call (0: the run had already finished)


class _Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1
        if self.active and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0


_GENERATOR = torch.Generator()  # re-seeded every step: the same draws as a fresh generator, without the allocation


def _step_generator(seed: int, step: int) -> torch.Generator:
    return _GENERATOR.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def _seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the generator the dropout masks come from. torch.manual_seed would also seed every CUDA/XPU/MTIA
    generator, queueing a captured stack trace for each lazy backend on a CPU machine: 8 % of a toy_mlp step."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device only; CUDA is initialised by now, so no queueing


class _Batches:
    """Global batch indices of each step: consecutive slices of per-epoch seeded permutations."""

    def __init__(self, count: int, batch: int, seed: int):
        self.count, self.batch, self.seed, self._cache = count, batch, seed, {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([self.seed, 1, epoch]).permutation(self.count)}
        return self._cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        first = step * self.batch
        epoch, offset = divmod(first, self.count)
        if offset + self.batch <= self.count:  # the whole batch inside one epoch: a slice (the common case)
            return self._perm(epoch)[offset:offset + self.batch]
        positions = np.arange(first, first + self.batch)
        return np.concatenate([self._perm(int(e))[positions[positions // self.count == e] % self.count]
                               for e in np.unique(positions // self.count)])


def _to_batch(data: np.ndarray, kind: str, indices: np.ndarray, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    x = torch.from_numpy(data[indices])
    if kind != "image":
        return x.float()
    x = scale_images(x)
    if hflip:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


class _EMA:
    """Exponential moving average; with warm-up (CLD-SGM, Score-SDE) the decay is min(rate, (1 + n) / (10 + n)),
    without it (PSLD) the constant rate from the first update."""

    def __init__(self, model: torch.nn.Module, rate: float, warmup: bool = True):
        self.model, self.rate, self.updates, self.warmup = copy.deepcopy(model).eval(), rate, 0, warmup
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._averaged, self._source = list(self.model.parameters()), list(model.parameters())

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the module given at construction (its parameter list is cached)."""
        self.updates += 1
        decay = min(self.rate, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.rate
        torch._foreach_lerp_(self._averaged, self._source, 1 - decay)  # one fused call instead of one per tensor


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch -> device. On CUDA through pinned memory without blocking: a plain .to(device) waits for the
    stream to drain, so every step would leave the GPU idle while the host prepares the next batch."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def _first_non_finite(losses: list, step: int) -> tuple[int, float] | None:
    """(step index, value) of the first non-finite loss among those of steps step - len(losses) ... step - 1, or
    None. One host read for all of them: reading each step's loss would synchronise the GPU every step."""
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if not len(bad):
        return None
    index = int(bad[0, 0])
    return step - len(losses) + index, float(values[index])


_MAX_PENDING = 1000  # losses held on the device between reads (bounded memory when log_every is large)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _write_history(path: Path, history: list) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "lr", "grad_norm"])
        writer.writeheader()
        writer.writerows(history)


def _check_fits(model: torch.nn.Module, sde, manifest: dict, config: dict, device: torch.device) -> None:
    """One forward pass on a single zero state, so a network that does not fit the data fails before any write."""
    from cldsgm.models.score import check_network_fits

    check_network_fits(model, sde, manifest["shape"], device=device,
                       what=f"network {config['model']['name']!r} for {config['data']['path']}")


def _resume_config(config: dict, state: dict, run_dir: Path, allow_change: bool, write: bool) -> None:
    """Refuse to resume under a config that changes the maths, unless allowed; then keep the old config."""
    old = state.get("config")
    changed = config_changes(old, config) if old is not None else []
    if not changed:
        return
    if not allow_change:
        diffs = "; ".join(f"{k}: {flatten(old).get(k)!r} -> {flatten(config).get(k)!r}" for k in changed)
        raise ValueError(f"{run_dir} was trained to step {state['step']} under another config ({diffs}); "
                         "use a new --run-dir, or pass --allow-config-change to continue and keep both configs")
    if write:
        atomic_write_text(run_dir / f"config.until-step-{state['step']}.yaml", yaml.safe_dump(old, sort_keys=False))


def train(config: dict, run_dir: str | Path, *, stop_after: int | None = None, progress: bool = True,
          allow_config_change: bool = False, tracking_parent: dict | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir` from a resolved config (cldsgm.config.resolve_config).

    stop_after: leave after this many steps of this call (a checkpoint is written there), as a kill would
    after a checkpoint; the next call resumes. A resumed run must have the same config up to
    config.RESUMABLE_KEYS, unless allow_config_change (then the earlier config is kept as
    config.until-step-<step>.yaml). A run that already reached train.steps returns at once, opening no
    MLflow run. tracking_parent ({uri, experiment, run_id}): log as a child of a study's parent run.
    Only rank 0 writes files and talks to MLflow.
    """
    run_dir = Path(run_dir)
    tcfg, ocfg, lcfg = config["train"], config["optim"], config["loss"]
    device = _device(tcfg["device"])
    ddp = _Distributed(device)
    if tcfg["batch_size"] % ddp.world:
        raise ValueError(f"train.batch_size {tcfg['batch_size']} is not divisible by the world size {ddp.world}")
    local = tcfg["batch_size"] // ddp.world
    sde = build_sde(config)
    data, _, manifest = load_prepared(config["data"]["path"])
    data_channels = manifest["shape"][0]
    network = {"name": config["model"]["name"], "options": config["model"]["options"]}
    torch.manual_seed(config["seed"])  # the initial weights, identical on every rank and every rerun
    model = build_network(network["name"], **network["options"]).to(device)
    if tcfg["channels_last"]:  # NHWC convolutions (tensor cores); a no-op for the 2-D MLPs
        model = model.to(memory_format=torch.channels_last)
    _check_fits(model, sde, manifest, config, device)
    ema = _EMA(model, tcfg["ema_rate"], tcfg["ema_warmup"])
    opt_cls = torch.optim.AdamW if ocfg["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=ocfg["lr"], betas=tuple(ocfg["betas"]), eps=ocfg["eps"],
                        weight_decay=ocfg["weight_decay"], **({"fused": True} if ocfg["fused"] else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg["precision"] == "fp16")
    step, history = 0, []
    checkpoint_path = run_dir / "checkpoint.pt"
    if ddp.main:  # temporaries of a writer killed mid-write (a CIFAR-10 checkpoint with Adam is over 1 GB)
        remove_stale_temporaries(run_dir, ["checkpoint.pt", "loss.csv", "config.yaml", TRACKING_FILE])
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, network=network)
        if state["dataset_sha256"] != manifest["sha256"]:
            raise ValueError(f"checkpoint {checkpoint_path} was trained on another dataset (sha256 "
                             f"{state['dataset_sha256'][:12]}, {config['data']['path']} has "
                             f"{manifest['sha256'][:12]}); use a new run directory")
        _resume_config(config, state, run_dir, allow_config_change, write=ddp.main)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        ema.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, history = state["step"], state["history"]
    if step >= tcfg["steps"]:  # nothing to do: report what is stored, open no tracking run
        return TrainResult(step, history[-1]["loss"] if history else float("nan"), history, run_dir, ran=0)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp.active else model
    if tcfg["compile"]:  # the same parameters, traced; checkpoints and the EMA keep using `model`
        backend = "inductor" if tcfg["compile"] is True else tcfg["compile"]
        known = torch.compiler.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"train.compile: unknown torch.compile backend {backend!r}; use true (inductor) or one "
                             f"of {sorted(known)}")
        wrapped = torch.compile(wrapped, backend=backend)
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    tcfg_track, parent = config["tracking"], tracking_parent or {}
    tracker = Tracker(enabled=ddp.main and tcfg_track["enabled"],
                      experiment=parent.get("experiment") or tcfg_track["experiment"],
                      run_name=tcfg_track["run_name"] or run_dir.name, uri=parent.get("uri") or tcfg_track["uri"],
                      run_dir=run_dir, parent_run_id=parent.get("run_id"),
                      tags={"cldsgm.role": "train", "sde": config["sde"]["name"], "network": config["model"]["name"]})
    if ddp.main:
        tracker.log_params(flatten(config))
        tracker.set_tags({"git_commit": git_commit(), "dataset_sha256": manifest["sha256"],
                          "n_parameters": str(count_parameters(model)), "world_size": str(ddp.world),
                          "run_dir": str(run_dir.absolute())})

    def checkpoint() -> None:
        if ddp.main:
            save_checkpoint(checkpoint_path, {
                "step": step, "model": model.state_dict(), "ema": ema.model.state_dict(), "ema_updates": ema.updates,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "history": history,
                "config": config, "network": network, "dataset_sha256": manifest["sha256"],
                "data": {"kind": manifest["kind"], "shape": list(manifest["shape"])}})
            _write_history(run_dir / "loss.csv", history)

    batches = _Batches(len(data), tcfg["batch_size"], config["seed"])
    first = step
    last = tcfg["steps"] if stop_after is None else min(tcfg["steps"], step + stop_after)
    bar = tqdm(total=last, initial=step, disable=not (progress and ddp.main), desc="train", unit="it")
    # fp32: no autocast context and no loss scaler in the step at all (each costs a few microseconds per call)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if tcfg["precision"] == "bf16" else torch.float16)
                if tcfg["precision"] != "fp32" else contextlib.nullcontext())
    scaling = scaler.is_enabled()
    lr_now = None
    loss_value, status = float("nan"), "FAILED"
    pending = []  # losses since the last read (device tensors): checked for finiteness before any log or checkpoint
    try:
        while step < last:
            gen = _step_generator(config["seed"], step)
            _seed_dropout(int(torch.randint(2**62, (), generator=gen)), device)
            x0 = _to_batch(data, manifest["kind"], batches.indices(step), config["data"]["hflip"], gen)
            state_shape = (len(x0), sde.state_channels(data_channels), *x0.shape[2:])
            t = sample_time(len(x0), lcfg["t_min"], generator=gen)
            eps = torch.randn(state_shape, generator=gen)
            extra = {}
            if isinstance(sde, PhaseSpaceSDE) and lcfg["objective"] == "dsm":
                extra["v0"] = math.sqrt(sde.init_v_var) * torch.randn(x0.shape, generator=gen)
            shard = slice(ddp.rank * local, (ddp.rank + 1) * local)
            extra = {k: _to_device(v[shard], device) for k, v in extra.items()}
            lr = ocfg["lr"] * min(step / ocfg["warmup_steps"], 1.0) if ocfg["warmup_steps"] else ocfg["lr"]
            if lr != lr_now:  # only during warm-up
                for group in optimizer.param_groups:
                    group["lr"] = lr
                lr_now = lr
            with autocast:
                loss = score_matching_loss(sde, wrapped, _to_device(x0[shard], device), objective=lcfg["objective"],
                                           weighting=lcfg["weighting"], mixed_score=lcfg["mixed_score"],
                                           reduction=lcfg["reduction"], t=_to_device(t[shard], device),
                                           eps=_to_device(eps[shard], device), **extra).mean()
            optimizer.zero_grad(set_to_none=True)
            if scaling:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            clip = ocfg["grad_clip"] if ocfg["grad_clip"] is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if scaling:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            ema.update()
            step += 1
            pending.append(loss.detach())
            bar.update(1)  # a no-op when disabled
            logging = step % tcfg["log_every"] == 0 or step == last
            saving = step % tcfg["checkpoint_every"] == 0 or step == last
            if not (logging or saving or len(pending) >= _MAX_PENDING):
                continue
            # a non-finite loss is caught here, before anything is logged or written: the updates since the last
            # read are discarded with the process, and the checkpoint on disk is from before them
            bad = _first_non_finite(pending, step)
            if bad is not None:
                raise FloatingPointError(
                    f"non-finite loss ({bad[1]}) at step {bad[0]}; the last checkpoint is intact. Try "
                    "train.precision: fp32 (fp16 autocast overflowed in the reference, CLD-SGM issues #3 and #6), "
                    "a larger sde.params.numerical_eps, or a lower optim.lr")
            pending.clear()
            if not (logging or saving):
                continue
            loss_value = float(loss.detach())
            if ddp.active:  # report the global-batch loss
                reduced = loss.detach().clone()
                dist.all_reduce(reduced)
                loss_value = float(reduced) / ddp.world
            if not bar.disable:
                bar.set_postfix(loss=f"{loss_value:.4g}")
            if logging:
                history.append({"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)})
                tracker.log_metrics({"loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)}, step)
            if saving:
                checkpoint()
        status = "FINISHED"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a scheduler (the CLI turns it into this)
        status = "KILLED"
        raise
    finally:
        bar.close()
        if ddp.main:
            tracker.log_artifact(run_dir / "loss.csv")
        tracker.end(status)
    return TrainResult(step, loss_value, history, run_dir, ran=step - first)


