"""The training engine: `train_one_epoch`, `evaluate` and `fit` (resumable, checkpointed atomically).

Resuming is exact on CPU: the shuffling order of each epoch comes from a generator seeded by (seed, epoch),
the checkpoint stores the step reached inside the epoch and every RNG state, so a resumed run replays the
same batches with the same augmentation and dropout as an uninterrupted one. With data-loading workers the
augmentation comes from per-worker streams seeded per epoch instead, and a resumed epoch deals the same batches
to the same workers.
"""
from __future__ import annotations

import itertools
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from deploybench.artifacts.checkpoint import load_checkpoint, save_checkpoint
from deploybench.errors import UserError
from deploybench.train.recipes import Recipe


class TrainingInterrupted(Exception):
    """SIGTERM arrived: the state was checkpointed and the run can be resumed."""


# Measured on an H200 (16 CPU cores), `custom` on Fashion-MNIST, one epoch at batch 128: 3,358 img/s with the
# augmentation in the main process, 7,168 with 2 workers, 7,188 with 4, 11,563 with 8. A fixed number, not one
# read from the machine, because the workers' random streams shape the weights.
CUDA_LOADER_WORKERS = 4


def default_workers(device: torch.device) -> int:
    """Data-loading processes for training on `device`: CUDA_LOADER_WORKERS on a GPU, none on the CPU (whose
    cores the training itself needs)."""
    return CUDA_LOADER_WORKERS if device.type == "cuda" else 0


def device_keys(device: torch.device, workers: int) -> dict:
    """What shapes trained weights besides the recipe, for a variant's config (and so its id): the device when it
    is not the CPU (GPU kernels, mixed precision) and the number of loader workers when there are any (each draws
    the augmentation of its batches from its own seeded stream). Empty on the CPU without workers: CPU ids stay
    what they always were."""
    keys: dict = {}
    if device.type != "cpu":
        keys["device"] = device.type
    if workers:
        keys["loader_workers"] = workers
    return keys


def _own_process_group(_worker_id: int) -> None:
    """worker_init_fn: leave the trainer's process group. A signal for the whole group (SIGTERM from `timeout`, a
    job scheduler or `kill -- -PGID`; Ctrl-C's SIGINT) then reaches the trainer alone, which checkpoints, stops and
    shuts its workers down; a worker killed by it made the trainer fail wherever it was ("DataLoader worker ... is
    killed by signal: Terminated"). torch's own shutdown still stops the workers."""
    os.setpgid(0, 0)


def train_loader(train_set: Dataset, sampler: Sampler, device: torch.device, workers: int, seed: int) -> DataLoader:
    """The training DataLoader (of `fit` and of pruning's fine-tuning): batches from `sampler`, augmented in
    `workers` processes (0: in this one), pinned for a GPU. Its own generator, seeded with `seed`, keeps it from
    drawing on the global RNG (dropout, augmentation without workers), which a resumed run must find exactly
    where the checkpoint left it; with workers it seeds each worker's stream."""
    return DataLoader(train_set, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=_own_process_group if workers else None,
                      generator=torch.Generator().manual_seed(seed))


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a permutation seeded by (seed, epoch), starting at batch `start`: replayable after a resume."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0):
        self.n, self.batch_size, self.start = n, batch_size, start
        self.perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) - self.start

    def __iter__(self):
        for i in range(self.start * self.batch_size, self.n, self.batch_size):
            yield self.perm[i:i + self.batch_size]


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor  # [true, predicted] counts

    def per_class(self) -> list[dict]:
        """Precision, recall and F1 of every class from the confusion matrix."""
        cm = self.confusion.double()
        tp, pred, true = cm.diag(), cm.sum(0), cm.sum(1)
        prec = torch.where(pred > 0, tp / pred.clamp(min=1), torch.zeros_like(tp))
        rec = torch.where(true > 0, tp / true.clamp(min=1), torch.zeros_like(tp))
        f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-12), torch.zeros_like(tp))
        return [dict(precision=float(p), recall=float(r), f1=float(f), support=int(s))
                for p, r, f, s in zip(prec, rec, f1, true)]


@dataclass
class TrainState:
    epoch: int = 0           # epochs completed
    step: int = 0            # batches completed inside the current epoch
    best_val_top1: float = -1.0
    history: list[dict] = field(default_factory=list)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_state(model: nn.Module, opt, sched, scaler, **extra) -> dict:
    """Everything a run needs to go on from here (weights, optimizer, schedule, scaler, random state) and `extra`:
    what `fit` and pruning's fine-tuning checkpoint."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(), **extra}


def restore_run_state(ckpt: dict, model: nn.Module, opt, sched, scaler) -> None:
    """Put a `run_state` back. A checkpoint whose weights have other names or shapes than `model`'s raises
    RuntimeError before anything has changed (`load_state_dict` would copy every tensor that fits before
    raising on the first that does not)."""
    saved, current = ckpt["model"], model.state_dict()
    misfits = sorted(set(saved) ^ set(current)) or [k for k in current if saved[k].shape != current[k].shape]
    if misfits:
        raise RuntimeError(f"checkpoint does not fit the model: {', '.join(misfits[:3])}"
                           f"{f' and {len(misfits) - 3} more' if len(misfits) > 3 else ''}")
    model.load_state_dict(saved)
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise UserError(f"unknown optimizer {recipe.optimizer!r}; choose one of: adamw, sgd")


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.schedule == "onecycle":
        # OneCycle needs a warm-up phase of at least one step; tiny runs get a schedule they stop early in.
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=max(total, 8), pct_start=0.25)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, [int(total * 0.5), int(total * 0.75)], gamma=0.1)
    raise UserError(f"unknown schedule {recipe.schedule!r}; choose one of: cosine, onecycle, step")


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def train_one_epoch(model, loader, opt, sched, scaler, device, recipe: Recipe, *, on_step: Callable | None = None,
                    loss_fn: Callable | None = None, desc: str = "train", skip: int = 0) -> dict:
    """One pass over `loader`, less its first `skip` batches; returns mean loss, accuracy and images/s.
    `on_step(i)` runs after each step; `loss_fn(logits, x, y)` replaces the default cross-entropy (e.g.
    knowledge distillation)."""
    model.train()
    use_amp = recipe.amp and device.type == "cuda"
    loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(itertools.islice(loader, skip, None), total=len(loader) - skip, desc=desc, leave=False,
               dynamic_ncols=True, mininterval=1.0)
    for i, (x, y) in enumerate(bar):
        x, y = _to_device(x, device, recipe.channels_last), y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(x)
            loss = (loss_fn(logits, x, y) if loss_fn else
                    F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                        img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        if on_step:
            on_step(i)
    elapsed = time.perf_counter() - t0
    return dict(loss=loss_sum / max(seen, 1), top1=correct / max(seen, 1), images_per_s=seen / max(elapsed, 1e-9),
                seconds=elapsed)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int,
             channels_last: bool = False) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix of `model` over `loader`."""
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, top5, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = _to_device(x, device, channels_last), y.to(device)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, num_classes)
        top5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum().item()
        cm += torch.bincount(y.cpu() * num_classes + logits.argmax(1).cpu(),
                             minlength=num_classes ** 2).view(num_classes, num_classes)
        seen += len(y)
    return EvalResult(loss_sum / max(seen, 1), cm.diag().sum().item() / max(seen, 1), top5 / max(seen, 1), cm)


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset, num_classes: int, recipe: Recipe, run_dir: Path,
        *, device: torch.device, resume: bool = False, workers: int = 0,
        on_epoch: Callable[[dict], None] | None = None) -> TrainState:
    """Train `model` following `recipe` on `device`, with `workers` data-loading processes (the caller's choice:
    `default_workers(device)` is the default of `train_model`), validating every epoch.

    Writes `run_dir/last.pt` (everything needed to resume) at every epoch end, every `checkpoint_every`
    steps and on SIGTERM, and `run_dir/best.pt` (weights with the best validation top-1). Returns the state.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.amp and device.type == "cuda")
    state = TrainState()
    last = run_dir / "last.pt"
    if resume:
        ckpt = load_checkpoint(last)
        restore_run_state(ckpt, model, opt, sched, scaler)
        state = TrainState(**ckpt["state"])

    def checkpoint() -> None:
        save_checkpoint(run_state(model, opt, sched, scaler, state=vars(state), recipe=recipe.to_dict()), last)

    terminated = []
    previous = signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    val_loader = DataLoader(val_set, batch_size=256)
    try:
        while state.epoch < recipe.epochs:
            start = state.step
            # Without workers the augmentation draws on the main process's RNG, restored from the checkpoint: the
            # sampler starts at the batch reached. With workers, each worker draws the augmentation of the batches
            # dealt to it in turn from its own stream, seeded by the loader's generator: a resumed epoch deals its
            # batches from the first one again (loading up to an epoch of data for nothing) and skips the done
            # ones, so each worker sees what it saw before the interruption.
            skip = start if workers else 0
            sampler = EpochBatchSampler(len(train_set), recipe.batch_size, recipe.seed, state.epoch, start - skip)
            loader = train_loader(train_set, sampler, device, workers, recipe.seed + state.epoch)

            def on_step(i: int) -> None:
                state.step = start + i + 1
                if terminated:
                    checkpoint()
                    raise TrainingInterrupted(f"stopped by SIGTERM at epoch {state.epoch + 1}, step {state.step}; "
                                              f"checkpoint saved, continue with --resume")
                if recipe.checkpoint_every and state.step % recipe.checkpoint_every == 0:
                    checkpoint()

            stats = train_one_epoch(model, loader, opt, sched, scaler, device, recipe, on_step=on_step,
                                    desc=f"epoch {state.epoch + 1}/{recipe.epochs}", skip=skip)
            val = evaluate(model, val_loader, device, num_classes, recipe.channels_last)
            state.epoch, state.step = state.epoch + 1, 0
            row = dict(epoch=state.epoch, train_loss=stats["loss"], train_top1=stats["top1"], val_loss=val.loss,
                       val_top1=val.top1, lr=sched.get_last_lr()[0], seconds=stats["seconds"],
                       images_per_s=stats["images_per_s"])
            if start:  # a resumed partial epoch: its throughput figures cover only part of it
                row["resumed_at_step"] = start
            state.history.append(row)
            if val.top1 > state.best_val_top1:
                state.best_val_top1 = val.top1
                save_checkpoint({"model": model.state_dict(), "epoch": state.epoch, "val_top1": val.top1},
                                run_dir / "best.pt")
            checkpoint()
            if on_epoch:
                on_epoch(row)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return state
