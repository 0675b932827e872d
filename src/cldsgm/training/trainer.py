"""The training loop: score matching with Adam/AdamW, warm-up, clipping, EMA, AMP, checkpoints and DDP.

With `task: classifier` the same loop trains a noise-conditioned classifier of the forward process's states
(cross-entropy of the labels given u_t ~ p(u_t | x0) and t), with the same checkpoints, resume and tracking.

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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from cldsgm.config import config_changes, flatten
from cldsgm.data.prepared import load_prepared, scale_images
from cldsgm.losses import classifier_loss, sample_time, score_matching_loss
from cldsgm.models.fast import compile_blocks, set_norm_dtype
from cldsgm.models.registry import CLASSIFIERS, build_network, count_parameters
from cldsgm.sde import PhaseSpaceSDE
from cldsgm.sde import build_sde as _build_sde
from cldsgm.tracking import COMMIT_TAG, TRACKING_FILE, Tracker, git_commit
from cldsgm.training.checkpoint import load_checkpoint, save_checkpoint
from cldsgm.utils.io import atomic_path, atomic_write_text, project_path, remove_stale_temporaries
from cldsgm.utils.launch import launch, resolve_device
from cldsgm.utils.progress import Progress

__all__ = ["TrainResult", "build_sde", "keep_snapshot", "network_of", "snapshot_path", "train"]


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
    n_parameters: int = 0  # trainable parameters of the network
    train_seconds: float = 0.0  # wall seconds of the training steps, over every call that ran them (resumes too)


class _Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: torch.device):
        here = launch()
        self.world, self.rank = here.world, here.rank
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


def _write_history(path: Path, history: list) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "lr", "grad_norm"])
        writer.writeheader()
        writer.writerows(history)


def _check_fits(model: torch.nn.Module, sde, manifest: dict, config: dict, device: torch.device) -> None:
    """One forward pass on a single zero state, so a network that does not fit the data fails before any write."""
    from cldsgm.models.score import check_classifier_fits, check_network_fits

    what = f"network {config['model']['name']!r} for {config['data']['path']}"
    if config.get("task", "score") == "classifier":
        check_classifier_fits(model, sde, manifest["shape"], device=device, what=what)
    else:
        check_network_fits(model, sde, manifest["shape"], device=device, what=what)


def network_of(config: dict, labels: np.ndarray | None) -> dict:
    """{name, options} of the network a config trains; a classifier's num_classes comes from the labels (one
    more than the largest). Raises ValueError for a task and network that do not go together, or missing labels."""
    name, options = config["model"]["name"], dict(config["model"]["options"])
    if config.get("task", "score") != "classifier":
        if name in CLASSIFIERS:
            raise ValueError(f"{name!r} is a classifier network: train it with `cldsgm train-classifier` "
                             "(task: classifier), not as a score model")
        return {"name": name, "options": options}
    if name not in CLASSIFIERS:
        raise ValueError(f"a classifier needs a classifier network ({', '.join(CLASSIFIERS)}), not {name!r}")
    if labels is None:
        raise ValueError(f"{config['data']['path']} has no labels: a classifier needs a labelled dataset (the "
                         "digits' classes, a toy mixture's components; `cldsgm prepare` again if it predates them)")
    needed = int(labels.max()) + 1
    if options.setdefault("num_classes", needed) < needed:
        raise ValueError(f"model.options.num_classes {options['num_classes']} is less than the labels need ({needed})")
    return {"name": name, "options": options}


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


@dataclass
class _State:
    """What a run carries from step to step and into its checkpoint."""

    model: torch.nn.Module
    ema: _EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0
    history: list = None
    seconds: float = 0.0  # wall seconds spent in training steps so far (kept across resumes)

    def checkpoint(self, path: Path, config: dict, network: dict, manifest: dict) -> None:
        save_checkpoint(path, {
            "step": self.step, "train_seconds": self.seconds, "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "ema_updates": self.ema.updates, "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "history": self.history, "config": config, "network": network,
            "dataset_sha256": manifest["sha256"], "data": {"kind": manifest["kind"], "shape": list(manifest["shape"])}})


def _build(config: dict, network: dict, sde, manifest: dict, device: torch.device) -> _State:
    """The network (seeded: identical on every rank and rerun), its EMA, the optimiser and the loss scaler."""
    tcfg, ocfg = config["train"], config["optim"]
    torch.manual_seed(config["seed"])
    model = build_network(network["name"], **network["options"]).to(device)
    if tcfg["channels_last"]:  # NHWC convolutions (tensor cores); a no-op for the 2-D MLPs
        model = model.to(memory_format=torch.channels_last)
    set_norm_dtype(model, tcfg["norm_dtype"])
    _check_fits(model, sde, manifest, config, device)
    opt_cls = torch.optim.AdamW if ocfg["optimizer"] == "adamw" else torch.optim.Adam
    fused = {"fused": True} if ocfg["fused"] else {}
    optimizer = opt_cls(model.parameters(), lr=scaled_lr(ocfg, tcfg["batch_size"])[0], betas=tuple(ocfg["betas"]),
                        eps=ocfg["eps"], weight_decay=ocfg["weight_decay"], **fused)
    return _State(model, _EMA(model, tcfg["ema_rate"], tcfg["ema_warmup"]), optimizer,
                  torch.amp.GradScaler(device.type, enabled=tcfg["precision"] == "fp16"), 0, [])


def _resume(state: _State, path: Path, config: dict, network: dict, manifest: dict, allow_change: bool,
            write: bool) -> None:
    """Load the checkpoint at `path` into `state`, after checking it was trained on this data under this config."""
    saved = load_checkpoint(path, network=network)
    if saved["dataset_sha256"] != manifest["sha256"]:
        raise ValueError(f"checkpoint {path} was trained on another dataset (sha256 {saved['dataset_sha256'][:12]}, "
                         f"{config['data']['path']} has {manifest['sha256'][:12]}); use a new run directory")
    _resume_config(config, saved, path.parent, allow_change, write=write)
    state.model.load_state_dict(saved["model"])
    state.ema.model.load_state_dict(saved["ema"])
    state.ema.updates = saved["ema_updates"]
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])
    state.step, state.history = saved["step"], saved["history"]
    state.seconds = float(saved.get("train_seconds", 0.0))  # absent in checkpoints of earlier versions


def compile_scope(option) -> tuple[str, str] | None:
    """train.compile as (scope, backend): None when off; true -> ('network', 'inductor'); 'blocks' -> ('blocks',
    'inductor'); 'blocks:NAME' -> ('blocks', NAME); another string -> ('network', that backend). ValueError for a
    backend torch does not know."""
    if option is False or option is None:
        return None
    if option is True:
        scope, backend = "network", "inductor"
    elif option == "blocks" or option.startswith("blocks:"):
        scope, backend = "blocks", option.partition(":")[2] or "inductor"
    else:
        scope, backend = "network", option
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"train.compile: unknown torch.compile backend {backend!r}; use true (inductor), 'blocks' "
                         f"or one of {sorted(known)}")
    return scope, backend


def _compiled(model: torch.nn.Module, ddp: _Distributed, compile_option) -> torch.nn.Module:
    """The module the loss calls: DDP-wrapped under torchrun, traced by torch.compile when asked (checkpoints and
    the EMA keep using `model`, which holds the same parameters; a block-compiled model is compiled in place)."""
    scope = compile_scope(compile_option)
    if scope is not None and scope[0] == "blocks":
        try:
            compile_blocks(model, backend=scope[1])
        except ValueError as err:
            raise ValueError(f"train.compile: {err}") from None
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp.active else model
    if scope is None or scope[0] == "blocks":
        return wrapped
    return torch.compile(wrapped, backend=scope[1])


def _tracker(config: dict, run_dir: Path, ddp: _Distributed, parent: dict, manifest: dict, model) -> Tracker:
    """The run's MLflow run (rank 0 only; a disabled tracker elsewhere), with its params and provenance tags."""
    tracking = config["tracking"]
    role = "train-classifier" if config.get("task", "score") == "classifier" else "train"
    tracker = Tracker(enabled=ddp.main and tracking["enabled"], experiment=parent.get("experiment") or
                      tracking["experiment"], run_name=tracking["run_name"] or run_dir.name,
                      uri=parent.get("uri") or tracking["uri"], run_dir=run_dir, parent_run_id=parent.get("run_id"),
                      tags={"cldsgm.role": role, "sde": config["sde"]["name"], "network": config["model"]["name"]})
    if ddp.main:
        tracker.log_params(flatten(config))
        tracker.set_tags({COMMIT_TAG: git_commit(), "dataset_sha256": manifest["sha256"],
                          "n_parameters": str(count_parameters(model)), "world_size": str(ddp.world),
                          "run_dir": project_path(run_dir)})
        tracker.start_system_metrics()  # every 10 s ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL)
    return tracker


class _Batch:
    """One step's draws, a pure function of (seed, step): the data indices, hflips, t, eps (and v0 for DSM on
    phase space), made on the CPU from one seeded generator, so every rank and every rerun sees the same batch."""

    def __init__(self, config: dict, sde, data, manifest: dict, batches: _Batches, step: int, labels=None):
        lcfg = config["loss"]
        gen = _step_generator(config["seed"], step)
        self.dropout_seed = int(torch.randint(2**62, (), generator=gen))
        indices = batches.indices(step)
        self.x0 = _to_batch(data, manifest["kind"], indices, config["data"]["hflip"], gen)
        state_shape = (len(self.x0), sde.state_channels(manifest["shape"][0]), *self.x0.shape[2:])
        self.t = sample_time(len(self.x0), lcfg["t_min"], generator=gen)
        self.eps = torch.randn(state_shape, generator=gen)
        self.extra = {} if labels is None else {"y": torch.from_numpy(labels[indices])}
        if isinstance(sde, PhaseSpaceSDE) and lcfg["objective"] == "dsm":
            self.extra["v0"] = math.sqrt(sde.init_v_var) * torch.randn(self.x0.shape, generator=gen)

    def on(self, device: torch.device, shard: slice) -> dict:
        """This rank's share of the batch, on the device: the keyword arguments of the loss."""
        return {"x0": _to_device(self.x0[shard], device), "t": _to_device(self.t[shard], device),
                "eps": _to_device(self.eps[shard], device),
                **{k: _to_device(v[shard], device) for k, v in self.extra.items()}}


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    """Where train.snapshot_every keeps the checkpoint of `step`: <run dir>/snapshots/step_<step>.pt."""
    return Path(run_dir) / "snapshots" / f"step_{int(step)}.pt"


def keep_snapshot(checkpoint_path: Path, path: Path) -> None:
    """A copy of the checkpoint just written (atomic: a kill mid-copy leaves no partial snapshot)."""
    import shutil

    with atomic_path(path) as tmp:
        shutil.copyfile(checkpoint_path, tmp)


def scaled_lr(ocfg: dict, batch_size: int) -> tuple[float, int]:
    """(peak learning rate, warm-up steps) at `batch_size` from optim.lr and optim.warmup_steps, which are given for
    optim.lr_reference_batch B0: under lr_scaling sqrt the rate is lr * sqrt(B / B0) (Adam's square-root rule,
    Malladi et al. 2022), under linear lr * B / B0; either way the warm-up covers the same number of images,
    warmup_steps * B0 / B steps. lr_scaling none: both as written."""
    if ocfg["lr_scaling"] == "none":
        return ocfg["lr"], ocfg["warmup_steps"]
    ratio = batch_size / ocfg["lr_reference_batch"]
    power = 0.5 if ocfg["lr_scaling"] == "sqrt" else 1.0
    return ocfg["lr"] * ratio**power, round(ocfg["warmup_steps"] / ratio)


def _learning_rate(ocfg: dict, batch_size: int, step: int) -> float:
    """Linear warm-up to the peak rate over the warm-up steps (scaled_lr), then constant."""
    lr, warmup = scaled_lr(ocfg, batch_size)
    return lr * min(step / warmup, 1.0) if warmup else lr


def _update(state: _State, loss: torch.Tensor, clip) -> torch.Tensor:
    """Backward, clip, optimiser step (through the loss scaler for fp16), EMA; returns the gradient norm (a device
    tensor: reading it would synchronise)."""
    state.optimizer.zero_grad(set_to_none=True)
    scaling = state.scaler.is_enabled()
    if scaling:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
    else:
        loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip)
    if scaling:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.ema.update()
    return grad_norm


def train(config: dict, run_dir: str | Path, *, stop_after: int | None = None, progress: bool = True,
          allow_config_change: bool = False, tracking_parent: dict | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir` from a resolved config (cldsgm.config.resolve_config).

    stop_after: leave after this many steps of this call (a checkpoint is written there), as a kill would
    after a checkpoint; the next call resumes. A resumed run must have the same config up to
    config.RESUMABLE_KEYS, unless allow_config_change (then the earlier config is kept as
    config.until-step-<step>.yaml). A run that already reached train.steps returns at once, opening no
    MLflow run. tracking_parent ({uri, experiment, run_id}): log as a child of a study's parent run.
    Only rank 0 writes files and talks to MLflow. progress: a bar on a terminal, else a line (step, loss, it/s,
    ETA) on standard error at least every $CLDSGM_PROGRESS_EVERY seconds (30; cldsgm.utils.progress).
    """
    run_dir = Path(run_dir)
    tcfg, ocfg, lcfg = config["train"], config["optim"], config["loss"]
    try:  # the local rank's GPU under torchrun
        device = resolve_device(tcfg["device"], launch().local_rank)
    except ValueError as err:
        raise ValueError(f"train.device: {err}") from None
    ddp = _Distributed(device)
    if tcfg["batch_size"] % ddp.world:
        raise ValueError(f"train.batch_size {tcfg['batch_size']} is not divisible by the world size {ddp.world}")
    sde = build_sde(config)
    data, labels, manifest = load_prepared(config["data"]["path"])
    network = network_of(config, labels)
    classifier = config.get("task", "score") == "classifier"
    state = _build(config, network, sde, manifest, device)
    checkpoint_path = run_dir / "checkpoint.pt"
    if ddp.main:  # temporaries of a writer killed mid-write (a CIFAR-10 checkpoint with Adam is over 1 GB)
        remove_stale_temporaries(run_dir, ["checkpoint.pt", "loss.csv", "config.yaml", TRACKING_FILE])
    if checkpoint_path.exists():
        _resume(state, checkpoint_path, config, network, manifest, allow_config_change, write=ddp.main)
    if state.step >= tcfg["steps"]:  # nothing to do: report what is stored, open no tracking run
        final = state.history[-1]["loss"] if state.history else float("nan")
        return TrainResult(state.step, final, state.history, run_dir, ran=0,
                           n_parameters=count_parameters(state.model), train_seconds=state.seconds)
    loss_of = _compiled(state.model, ddp, tcfg["compile"])
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    tracker = _tracker(config, run_dir, ddp, tracking_parent or {}, manifest, state.model)

    def checkpoint(snapshot: bool) -> None:
        if ddp.main:
            state.checkpoint(checkpoint_path, config, network, manifest)
            _write_history(run_dir / "loss.csv", state.history)
            if snapshot:
                keep_snapshot(checkpoint_path, snapshot_path(run_dir, state.step))

    batches = _Batches(len(data), tcfg["batch_size"], config["seed"])
    shard = slice(ddp.rank * tcfg["batch_size"] // ddp.world, (ddp.rank + 1) * tcfg["batch_size"] // ddp.world)
    first = state.step
    last = tcfg["steps"] if stop_after is None else min(tcfg["steps"], state.step + stop_after)
    bar = Progress("train", last, initial=state.step, unit="it", enabled=progress and ddp.main)
    # fp32: no autocast context and no loss scaler in the step at all (each costs a few microseconds per call)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if tcfg["precision"] == "bf16" else torch.float16)
                if tcfg["precision"] != "fp32" else contextlib.nullcontext())
    clip = ocfg["grad_clip"] if ocfg["grad_clip"] is not None else float("inf")
    lr_now, loss_value, status = None, float("nan"), "FAILED"
    pending = []  # losses since the last read (device tensors): checked for finiteness before any log or checkpoint
    clock = time.perf_counter()
    try:
        while state.step < last:
            batch = _Batch(config, sde, data, manifest, batches, state.step, labels if classifier else None)
            _seed_dropout(batch.dropout_seed, device)
            lr = _learning_rate(ocfg, tcfg["batch_size"], state.step)
            if lr != lr_now:  # only during warm-up
                for group in state.optimizer.param_groups:
                    group["lr"] = lr
                lr_now = lr
            with autocast:
                if classifier:
                    loss = classifier_loss(sde, loss_of, **batch.on(device, shard), objective=lcfg["objective"])
                else:
                    loss = score_matching_loss(sde, loss_of, **batch.on(device, shard), objective=lcfg["objective"],
                                               weighting=lcfg["weighting"], mixed_score=lcfg["mixed_score"],
                                               reduction=lcfg["reduction"]).mean()
            grad_norm = _update(state, loss, clip)
            state.step += 1
            pending.append(loss.detach())
            bar.update(1)  # a no-op when disabled; between loss reads it shows the last loss read
            logging = state.step % tcfg["log_every"] == 0 or state.step == last
            snapshot = bool(tcfg["snapshot_every"]) and state.step % tcfg["snapshot_every"] == 0
            saving = snapshot or state.step % tcfg["checkpoint_every"] == 0 or state.step == last
            if not (logging or saving or len(pending) >= _MAX_PENDING):
                continue
            # a non-finite loss is caught here, before anything is logged or written: the updates since the last
            # read are discarded with the process, and the checkpoint on disk is from before them
            bad = _first_non_finite(pending, state.step)
            if bad is not None:
                raise FloatingPointError(
                    f"non-finite loss ({bad[1]}) at step {bad[0]}; the last checkpoint is intact. Try "
                    "train.precision: fp32 (fp16 autocast overflowed in the reference, CLD-SGM issues #3 and #6), "
                    "a larger sde.params.numerical_eps, or a lower optim.lr")
            pending.clear()
            if not (logging or saving):
                continue
            loss_value = _global_loss(loss, ddp)
            state.seconds += time.perf_counter() - clock  # the steps' time, read once the device has finished them
            bar.set_values(loss=loss_value)
            if logging:
                state.history.append({"step": state.step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)})
                tracker.log_metrics({"loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)}, state.step)
            if saving:
                checkpoint(snapshot)
            clock = time.perf_counter()  # logging and checkpoint writes are not training time
        status = "FINISHED"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a scheduler (the CLI turns it into this)
        status = "KILLED"
        raise
    finally:
        bar.close()
        if ddp.main:
            tracker.log_artifact(run_dir / "loss.csv")
        tracker.end(status)
    return TrainResult(state.step, loss_value, state.history, run_dir, ran=state.step - first,
                       n_parameters=count_parameters(state.model), train_seconds=state.seconds)


def _global_loss(loss: torch.Tensor, ddp: _Distributed) -> float:
    """The loss of the global batch: this rank's, or the mean over the ranks under torchrun (one host read)."""
    if not ddp.active:
        return float(loss.detach())
    reduced = loss.detach().clone()
    dist.all_reduce(reduced)
    return float(reduced) / ddp.world
