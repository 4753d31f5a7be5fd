"""The training engine: `train_one_epoch`, `evaluate` and `fit` (resumable, checkpointed atomically).

Resuming is exact on CPU: the shuffling order of each epoch comes from a generator seeded by (seed, epoch),
the checkpoint stores the step reached inside the epoch and every RNG state, so a resumed run replays the
same batches with the same augmentation and dropout as an uninterrupted one. With data-loading workers the
augmentation comes from per-worker streams seeded per epoch instead, and a resumed epoch deals the same batches
to the same workers. Data held on the device (`device_data.DeviceSplit`, chosen by `device_data.device_resident`)
is augmented there from a generator seeded per (seed, epoch, batch), so a resumed run draws the same as well.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from deploybench.artifacts.checkpoint import load_checkpoint, save_checkpoint
from deploybench.errors import UserError
from deploybench.models.scoring import EvalResult, Scorer
from deploybench.platform import has_native_bf16
from deploybench.platform.progress import note, progress
from deploybench.train.device_data import DeviceSplit, device_resident
from deploybench.train.recipes import Recipe


class TrainingInterrupted(Exception):
    """SIGTERM arrived: the state was checkpointed and the run can be resumed."""


# Augmenting in the main process leaves a GPU waiting for batches, so GPU training of data that does not stay on the
# device (an image folder; pruning's fine-tuning) loads it in worker processes. The number is fixed, not read from
# the machine, because the workers' random streams shape the weights.
CUDA_LOADER_WORKERS = 4


def default_workers(device: torch.device) -> int:
    """Data-loading processes for training on `device` from a DataLoader (image folders): CUDA_LOADER_WORKERS on a
    GPU, none on the CPU (whose cores the training itself needs)."""
    return CUDA_LOADER_WORKERS if device.type == "cuda" else 0


def data_path(dataset: str, device: torch.device, workers: int | None = None) -> tuple[bool, int]:
    """Where training (and pruning's fine-tune) on `device` reads `dataset` from: (on the device, loader workers).
    On the device (`device_resident`) no DataLoader runs, so no workers; otherwise `workers` (`--workers`),
    defaulting to `default_workers(device)`. A negative count, or workers for data on the device, is a one-line
    error."""
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    if device_resident(dataset):
        if workers:
            raise UserError(
                "--workers: CIFAR and Fashion-MNIST are held in memory and augmented there in batches, "
                "without DataLoader workers; leave --workers out"
            )
        return True, 0
    return False, default_workers(device) if workers is None else workers


def device_keys(device: torch.device, workers: int, augment_on: str | None = None) -> dict:
    """What shapes trained weights besides the recipe, for a variant's config (and so its id): the device when it
    is not the CPU (GPU kernels, mixed precision), the number of loader workers when there are any (each draws
    the augmentation of its batches from its own seeded stream) and `augment_on` ("device") when the images are
    augmented by batched ops on the device (`device_data`), whose random draws and colour jitter differ from the
    per-image transforms'. Empty on the CPU for an image folder read without workers."""
    keys: dict = {}
    if device.type != "cpu":
        keys["device"] = device.type
    if workers:
        keys["loader_workers"] = workers
    if augment_on:
        keys["augment_on"] = augment_on
    return keys


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(requested: str, device: torch.device) -> str:
    """The precision a run on `device` trains in, for `--precision` `requested` (auto, fp32, bf16, fp16).

    `auto` is bf16 mixed precision exactly where the hardware computes bf16 natively (AVX512-BF16 or AMX CPUs, GPUs
    that support it) and fp32 elsewhere on the CPU, where torch emulates bf16 more slowly than fp32; an older GPU
    gets fp16 with loss scaling. The weights stay fp32 either way (autocast): only the matmuls and convolutions
    run in the lower precision. An explicit choice the device cannot run is a one-line error."""
    if requested not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cuda = device.type == "cuda"
    bf16_ok = torch.cuda.is_bf16_supported() if cuda else True  # the CPU runs bf16 everywhere, natively or not
    if requested == "auto":
        if cuda:
            return "bf16" if bf16_ok else "fp16"
        return "bf16" if has_native_bf16() else "fp32"
    if requested == "bf16" and not bf16_ok:
        raise UserError("--precision bf16: this GPU does not support bf16; use fp16 or fp32")
    if requested == "fp16" and not cuda:
        raise UserError("--precision fp16 trains on a GPU only (loss scaling); on the CPU use bf16 or fp32")
    return requested


def precision_keys(precision: str) -> dict:
    """The precision for a variant's config (and so its id) when it is not fp32: bf16 or fp16 arithmetic gives
    other weights. Empty for fp32, which every id without the key means."""
    return {} if precision == "fp32" else {"precision": precision}


def _own_process_group(_worker_id: int) -> None:
    """worker_init_fn: leave the trainer's process group. A signal for the whole group (SIGTERM from `timeout`, a
    job scheduler or `kill -- -PGID`; Ctrl-C's SIGINT) then reaches the trainer alone, which checkpoints, stops and
    shuts its workers down; a worker killed by the signal would make the trainer fail wherever it is ("DataLoader
    worker ... is killed by signal: Terminated"). torch's own shutdown still stops the workers."""
    os.setpgid(0, 0)


def train_loader(train_set: Dataset, sampler: Sampler, device: torch.device, workers: int, seed: int) -> DataLoader:
    """The training DataLoader (of `fit` and of pruning's fine-tuning): batches from `sampler`, augmented in
    `workers` processes (0: in this one), pinned for a GPU. Its own generator, seeded with `seed`, keeps it from
    drawing on the global RNG (dropout, augmentation without workers), which a resumed run must find exactly
    where the checkpoint left it; with workers it seeds each worker's stream."""
    return DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_own_process_group if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a permutation seeded by (seed, epoch), starting at batch `start`: replayable after a resume."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0):
        self.n, self.batch_size, self.start = n, batch_size, start
        self.perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) - self.start

    def __iter__(self):
        for i in range(self.start * self.batch_size, self.n, self.batch_size):
            yield self.perm[i : i + self.batch_size]


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # batches completed inside the current epoch
    best_val_top1: float = -1.0
    history: list[dict] = field(default_factory=list)
    total_steps: int = 0  # the steps the run trains; 0 while a time budget has not yet sized the schedule
    steps_per_epoch: int = 0
    # Training seconds of epochs cut short by a stop: the row of a resumed epoch times only the rest of it.
    seconds_before_stops: float = 0.0

    def steps_done(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    def epochs_planned(self) -> float:
        """The run's length in epochs (a time budget may end it inside an epoch); 0 until it is known."""
        return self.total_steps / self.steps_per_epoch if self.steps_per_epoch else 0.0


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
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
        **extra,
    }


def restore_run_state(ckpt: dict, model: nn.Module, opt, sched, scaler) -> None:
    """Put a `run_state` back. A checkpoint whose weights have other names or shapes than `model`'s raises
    RuntimeError before anything has changed (`load_state_dict` would copy every tensor that fits before
    raising on the first that does not)."""
    saved, current = ckpt["model"], model.state_dict()
    misfits = sorted(set(saved) ^ set(current)) or [k for k in current if saved[k].shape != current[k].shape]
    if misfits:
        raise RuntimeError(
            f"checkpoint does not fit the model: {', '.join(misfits[:3])}"
            f"{f' and {len(misfits) - 3} more' if len(misfits) > 3 else ''}"
        )
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


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    """The learning-rate schedule of `recipe` over `total_steps` optimizer steps."""
    total = max(1, total_steps)
    if recipe.schedule == "onecycle":
        # OneCycle needs a warm-up phase of at least one step; tiny runs get a schedule they stop early in.
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=max(total, 8), pct_start=0.25)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, [int(total * 0.5), int(total * 0.75)], gamma=0.1)
    raise UserError(f"unknown schedule {recipe.schedule!r}; choose one of: cosine, onecycle, step")


def resize_schedule(sched, opt: torch.optim.Optimizer, recipe: Recipe, total_steps: int, done: int) -> None:
    """Make `sched` the schedule of `recipe` over `total_steps`, at step `done`: what a run sized by a time budget
    once its first steps are timed does. The schedule is replayed without optimizer steps, and loaded into `sched`
    itself: the epoch under way steps that object, a new one would leave it stepping the old."""
    for group in opt.param_groups:  # a new scheduler starts from the current lr: the replay must start at the base
        group["lr"] = group.get("initial_lr", group["lr"])
    sized = make_scheduler(opt, recipe, total_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a scheduler before its optimizer: on purpose
        for _ in range(done):
            sized.step()
    sched.load_state_dict(sized.state_dict())


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite: nothing it would make is worth storing."""


def train_one_epoch(
    model,
    loader,
    opt,
    sched,
    scaler,
    device,
    recipe: Recipe,
    *,
    on_step: Callable | None = None,
    loss_fn: Callable | None = None,
    desc: str = "train",
    skip: int = 0,
    precision: str = "fp32",
) -> dict:
    """One pass over `loader`, less its first `skip` batches, with autocast to `precision` (a resolved
    `training_precision`); returns mean loss, accuracy and images/s. `on_step(i)` runs after each step and ends
    the pass early when it returns True; `loss_fn(logits, x, y)` replaces the default cross-entropy (e.g.
    knowledge distillation)."""
    model.train()
    autocast_dtype = _AUTOCAST[precision]
    loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
    bar = progress(
        itertools.islice(loader, skip, None),
        total=len(loader) - skip,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    for i, (x, y) in enumerate(bar):
        x, y = _to_device(x, device, recipe.channels_last), y.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
            loss = (
                loss_fn(logits, x, y) if loss_fn else F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            )
        loss_value = loss.item()
        if not math.isfinite(loss_value):  # no step is taken on it: the weights stay the last finite ones
            raise TrainingDiverged(
                f"training diverged: the loss became {loss_value} at step {skip + i + 1} of "
                f"{desc}; no variant is stored (try a lower --lr)"
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += loss_value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(
            loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}"
        )
        if on_step and on_step(i):
            break
    elapsed = time.perf_counter() - t0
    return dict(
        loss=loss_sum / max(seen, 1),
        top1=correct / max(seen, 1),
        images_per_s=seen / max(elapsed, 1e-9),
        seconds=elapsed,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, device: torch.device, num_classes: int, channels_last: bool = False
) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix of `model` over `loader` (a DataLoader, or any iterable of
    (images, labels) batches)."""
    model.eval()
    scorer = Scorer(num_classes)
    for x, y in loader:
        scorer.add(model(_to_device(x, device, channels_last)).cpu(), y.cpu())
    return scorer.result()


@dataclass
class _Run:
    """What `fit` trains and checkpoints: the model, its optimizer, schedule and loss scaler, and the progress."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    recipe: Recipe
    precision: str  # a resolved `training_precision`
    last: Path  # the resumable checkpoint
    state: TrainState
    # What training steps call: `model` compiled (on a GPU with the data on it), or None for `model` itself.
    # `model` keeps the weights and their names, which checkpoints and the stored variant hold.
    compiled: nn.Module | None = None

    def checkpoint(self) -> None:
        """Write everything needed to resume to `last`, atomically."""
        save_checkpoint(
            run_state(
                self.model, self.opt, self.sched, self.scaler, state=vars(self.state), recipe=self.recipe.to_dict()
            ),
            self.last,
        )


def _start_run(
    model: nn.Module, train_images: int, recipe: Recipe, precision: str, device: torch.device, last: Path, resume: bool
) -> _Run:
    """Seed the RNGs, put `model` on `device` and build its optimizer, schedule and scaler; with `resume`, restore
    all of them and the progress from the checkpoint `last`. Without a time budget the run's length is the
    recipe's epochs; with one it is sized by `_BudgetPlanner` once the first steps are timed."""
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, recipe)
    per_epoch = math.ceil(train_images / recipe.batch_size)
    sched = make_scheduler(opt, recipe, recipe.epochs * per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = TrainState(steps_per_epoch=per_epoch, total_steps=0 if recipe.budget_minutes else recipe.epochs * per_epoch)
    run = _Run(model, opt, sched, scaler, recipe, precision, last, state)
    if resume:
        ckpt = load_checkpoint(last)
        restore_run_state(ckpt, model, opt, sched, scaler)
        run.state = TrainState(**{**vars(state), **ckpt["state"]})
    return run


# A time budget is sized from steps timed after a few warm-up steps (allocator, kernel selection, caches).
BUDGET_WARMUP_STEPS, BUDGET_TIMED_STEPS = 5, 20
# A forward pass without gradients costs about a third of a training step per image: the validation pass at each
# epoch's end, counted in the budget.
_EVAL_COST = 1 / 3


class BudgetClock:
    """The clock of a run with a time budget: the seconds left of it, counted from the clock's making, and the
    seconds a step takes, timed over BUDGET_TIMED_STEPS steps after BUDGET_WARMUP_STEPS (`StepBudget`'s clock)."""

    clock = staticmethod(time.perf_counter)

    def __init__(self):
        self.started, self.timed, self.timed_from = self.clock(), 0, None

    def step_seconds(self) -> float | None:
        """Call after each step: the seconds a step takes once the timed steps are done (at that call only)."""
        self.timed += 1
        if self.timed == BUDGET_WARMUP_STEPS:
            self.timed_from = self.clock()
        elif self.timed == BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS:
            return (self.clock() - self.timed_from) / BUDGET_TIMED_STEPS
        return None

    def seconds_left(self, minutes: float) -> float:
        return minutes * 60 - (self.clock() - self.started)


class StepBudget:
    """The steps a run takes within `minutes`, counted from its start (at most `limit`, None for no cap): timed on
    its first steps (`BudgetClock`), then `resize` fixes `total`. Without `minutes`, `limit`; `sized`: the total a
    checkpointed run already fixed. Training's time budget (`_BudgetPlanner`), pruning's fine-tuning and QAT size
    their runs by it."""

    def __init__(self, minutes: float | None, limit: int | None, sized: int | None = None, log=note):
        self.minutes, self.total = minutes, sized or (limit if minutes is None else 0)
        self.limit, self.clock, self.log = limit, BudgetClock(), log

    def on_step(self, plan) -> None:
        """After each step; `plan(step_seconds)` sizes the run (by calling `resize`)."""
        if not self.total and (step_seconds := self.clock.step_seconds()) is not None:
            plan(step_seconds)

    def resize(
        self,
        sched,
        opt,
        recipe: Recipe,
        done: int,
        step_seconds: float,
        per_epoch: int,
        what: str,
        overhead: float = 0.0,
    ) -> int:
        """Fix `total` at step `done` from `step_seconds` (plus `overhead` seconds a step of other work the run
        makes), make `sched` (of `recipe`) span it, say so and return it."""
        fit = done + max(1, int(self.clock.seconds_left(self.minutes) / (step_seconds + overhead)))
        self.total = fit if self.limit is None else min(self.limit, fit)
        resize_schedule(sched, opt, recipe, self.total, done)
        self.log(
            f"{what} budget {self.minutes:g} min: {self.total} steps ({self.total / per_epoch:.2f} epochs) "
            f"at {step_seconds * 1000:.0f} ms a step"
        )
        return self.total


class _BudgetPlanner:
    """Sizes a run with `recipe.budget_minutes` to the optimizer steps that fit in the budget, counted from the
    start of `fit` (a `StepBudget` with no cap): after BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS steps (or at the end
    of the first epoch, if it is shorter) it fixes `state.total_steps` from the measured seconds per step and the
    validation passes the run will make, rebuilds the schedule over that length and fast-forwards it to the steps
    already taken."""

    def __init__(self, run: _Run, val_images: int, log: Callable[[str], None]):
        self.run, self.val_images = run, val_images
        self.budget = StepBudget(run.recipe.budget_minutes, None, log=log)

    @property
    def pending(self) -> bool:
        return not self.run.state.total_steps

    def on_step(self) -> None:
        """After each training step of a run not yet sized."""
        self.budget.on_step(self.plan)

    def on_epoch_end(self, row: dict) -> None:
        """At an epoch's end, for a first epoch too short to time BUDGET_TIMED_STEPS steps in."""
        if self.pending:
            steps = self.run.state.steps_per_epoch - row.get("resumed_at_step", 0)
            self.plan(row["seconds"] / max(steps, 1))

    def plan(self, step_seconds: float) -> None:
        run, state = self.run, self.run.state
        # Each epoch ends with a validation pass: its cost, spread over the epoch's steps.
        val_seconds = self.val_images / run.recipe.batch_size * step_seconds * _EVAL_COST
        state.total_steps = self.budget.resize(
            run.sched,
            run.opt,
            run.recipe,
            state.steps_done(),
            step_seconds,
            state.steps_per_epoch,
            "time",
            overhead=val_seconds / state.steps_per_epoch,
        )


@contextmanager
def _sigterm_flag() -> Iterator[list]:
    """Within the block a SIGTERM is noted in the yielded list (empty until then) instead of ending the process."""
    terminated: list = []
    previous = signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def epoch_loader(
    train_set: Dataset | DeviceSplit, recipe: Recipe, device: torch.device, workers: int, epoch: int, start: int
) -> tuple[Iterable, int]:
    """The training loader of `epoch` (0-based) resuming at batch `start`, and how many of its batches to skip.

    Data on the device yields the batches of the epoch's permutation from batch `start`, each augmented from its
    own seeded generator: nothing to skip. Without workers the augmentation draws on the main process's RNG,
    restored from the checkpoint: the sampler starts at the batch reached. With workers, each worker draws the
    augmentation of the batches dealt to it in turn from its own stream, seeded by the loader's generator: a
    resumed epoch deals its batches from the first one again (loading up to an epoch of data for nothing) and
    skips the done ones, so each worker sees what it saw before the interruption."""
    if isinstance(train_set, DeviceSplit):
        perm = EpochBatchSampler(len(train_set), recipe.batch_size, recipe.seed, epoch).perm
        return train_set.epoch_batches(perm, recipe.batch_size, recipe.seed, epoch, start), 0
    skip = start if workers else 0
    sampler = EpochBatchSampler(len(train_set), recipe.batch_size, recipe.seed, epoch, start - skip)
    return train_loader(train_set, sampler, device, workers, recipe.seed + epoch), skip


def _step_hook(run: _Run, start: int, terminated: list, budget: _BudgetPlanner) -> Callable[[int], bool]:
    """`on_step` for an epoch resumed at batch `start`: counts the steps, sizes a time-budgeted run, checkpoints
    every `checkpoint_every`, on SIGTERM checkpoints and raises TrainingInterrupted, and ends the epoch (returns
    True) when the run has taken all its steps."""
    started = time.perf_counter()

    def on_step(i: int) -> bool:
        run.state.step = start + i + 1
        if budget.pending:
            budget.on_step()
        if terminated:
            run.state.seconds_before_stops += time.perf_counter() - started
            run.checkpoint()
            raise TrainingInterrupted(
                f"stopped by SIGTERM at epoch {run.state.epoch + 1}, step {run.state.step}; "
                f"checkpoint saved, continue with --resume"
            )
        if run.recipe.checkpoint_every and run.state.step % run.recipe.checkpoint_every == 0:
            run.checkpoint()
        return bool(run.state.total_steps) and run.state.steps_done() >= run.state.total_steps

    return on_step


def _epoch_row(epoch: int, stats: dict, val: EvalResult, lr: float, resumed_at_step: int, steps: int) -> dict:
    """The history row of `epoch` (1-based) from its training `stats` and validation; `steps`: the steps it ended
    at (fewer than an epoch's when a time budget ended the run inside it)."""
    row = dict(
        epoch=epoch,
        train_loss=stats["loss"],
        train_top1=stats["top1"],
        val_loss=val.loss,
        val_top1=val.top1,
        lr=lr,
        seconds=stats["seconds"],
        images_per_s=stats["images_per_s"],
        steps=steps,
    )
    if resumed_at_step:  # a resumed partial epoch: its throughput figures cover only part of it
        row["resumed_at_step"] = resumed_at_step
    return row


def _train_epoch(
    run: _Run,
    train_set: Dataset | DeviceSplit,
    val_loader: Iterable,
    num_classes: int,
    device: torch.device,
    workers: int,
    terminated: list,
    budget: _BudgetPlanner,
) -> dict:
    """Train the epoch under way (from the step reached) and validate; returns its history row."""
    recipe, start = run.recipe, run.state.step
    loader, skip = epoch_loader(train_set, recipe, device, workers, run.state.epoch, start)
    planned = math.ceil(run.state.epochs_planned())
    stats = train_one_epoch(
        run.compiled or run.model,
        loader,
        run.opt,
        run.sched,
        run.scaler,
        device,
        recipe,
        on_step=_step_hook(run, start, terminated, budget),
        desc=f"epoch {run.state.epoch + 1}/{planned or '?'}",
        skip=skip,
        precision=run.precision,
    )
    val = evaluate(run.model, val_loader, device, num_classes, recipe.channels_last)
    steps = run.state.step
    run.state.epoch, run.state.step = run.state.epoch + 1, 0
    return _epoch_row(run.state.epoch, stats, val, run.sched.get_last_lr()[0], start, steps)


def _record_epoch(run: _Run, row: dict, best: Path) -> None:
    """Add `row` to the history, keep the weights in `best` when they validate best so far, checkpoint."""
    run.state.history.append(row)
    if row["val_top1"] > run.state.best_val_top1:
        run.state.best_val_top1 = row["val_top1"]
        save_checkpoint({"model": run.model.state_dict(), "epoch": row["epoch"], "val_top1": row["val_top1"]}, best)
    run.checkpoint()


def fit(
    model: nn.Module,
    train_set: Dataset | DeviceSplit,
    val_set: Dataset | DeviceSplit,
    num_classes: int,
    recipe: Recipe,
    run_dir: Path,
    *,
    device: torch.device,
    precision: str = "fp32",
    resume: bool = False,
    workers: int = 0,
    on_epoch: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> TrainState:
    """Train `model` following `recipe` on `device` in `precision` (a resolved `training_precision`), with
    `workers` data-loading processes (the caller's choice: `default_workers(device)` is the default of
    `train_model`), validating every epoch. A recipe with `budget_minutes` trains the steps that fit in that time
    (see `_BudgetPlanner`), its last epoch possibly cut short; `log` gets the line that says how many.

    Writes `run_dir/last.pt` (everything needed to resume) at every epoch end, every `checkpoint_every`
    steps and on SIGTERM, and `run_dir/best.pt` (weights with the best validation top-1). Calls `on_epoch` with
    each epoch's history row. Returns the state.

    `train_set` and `val_set` may be `DeviceSplit`s (images already on `device`): then no DataLoader runs and, on
    a GPU, training steps run the model through `torch.compile`, whose fused kernels the data then keeps busy.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _start_run(model, len(train_set), recipe, precision, device, run_dir / "last.pt", resume)
    if isinstance(train_set, DeviceSplit) and device.type == "cuda":
        # Static shapes: an epoch has at most two batch sizes, each compiled once. Validation runs `model` as it
        # is (eval mode and other batch sizes would be more graphs for a short pass).
        run.compiled = torch.compile(model, dynamic=False)
    val_loader = val_set.in_order(256) if isinstance(val_set, DeviceSplit) else DataLoader(val_set, batch_size=256)
    budget = _BudgetPlanner(run, len(val_set), log)
    with _sigterm_flag() as terminated:
        while budget.pending or run.state.steps_done() < run.state.total_steps:
            row = _train_epoch(run, train_set, val_loader, num_classes, device, workers, terminated, budget)
            budget.on_epoch_end(row)
            _record_epoch(run, row, run_dir / "best.pt")
            if on_epoch:
                on_epoch(row)
    return run.state
