"""`prune`: structural channel pruning with torch-pruning's dependency graph, then fine-tuning (optionally
distilled from the unpruned parent).

The classifier keeps all its outputs. `vit-small`'s attention is pruned the way torch-pruning supports for
a fused `qkv` projection (its timm ViT recipe): `ratio` of the heads of every block are removed whole
(`prune_num_heads`, ranked by their mean importance; the head width stays), and the residual stream and the
MLPs are narrowed by `ratio` like any other channels. The result is saved as plain tensors plus the changed
layer attributes (`formats.shaped_state`, which carries each attention's `num_heads`): it reloads with
`weights_only=True`.

Fine-tuning defaults to 2 epochs: the smallest count that recovers most of the loss at ratio 0.5 on
Fashion-MNIST; `--finetune-epochs 0` keeps the raw pruned weights. Fine-tuning runs on the GPU when there is
one, with the training loader's workers, as `train` does; the variant's config then records `device` and
`loader_workers` (so its id differs from a CPU-made one) and its metrics `finetune_device`. Ranking and removing
channels run on the CPU. Distillation (`--distill`) adds
KL(teacher ‖ student) on logits softened at T=4 (scaled by T²) to the cross-entropy, weighted equally.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from deploybench.artifacts.checkpoint import load_checkpoint, save_checkpoint
from deploybench.artifacts.formats import EAGER_FORMATS, load_module, shaped_state
from deploybench.data import load_splits
from deploybench.errors import UserError, unknown_choice
from deploybench.models.vit import Attention, VisionTransformer
from deploybench.optimize.base import (
    Stage,
    StageConfig,
    StageData,
    count_params,
    macs_of,
    register_stage,
    root_recipe,
    split_seed,
    stage_data,
)
from deploybench.optimize.choices import PRUNE_IMPORTANCES
from deploybench.platform.progress import note
from deploybench.store import Variant, Workspace
from deploybench.train.device_data import DeviceSplit
from deploybench.train.engine import (
    StepBudget,
    data_path,
    device_keys,
    epoch_loader,
    make_optimizer,
    make_scheduler,
    precision_keys,
    restore_run_state,
    run_state,
    train_one_epoch,
    training_precision,
)
from deploybench.train.recipes import default_recipe

TEMPERATURE = 4.0


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    ratio: float = 0.5  # share of channels (and of attention heads) removed
    importance: str = "magnitude"  # magnitude (group L2) | taylor | bn-scale | lamp
    global_pruning: bool = False  # rank channels across layers instead of the same share in each
    iterative_steps: int = 1
    finetune_epochs: int = 2
    distill: bool = False
    finetune_lr: float | None = None  # default: 1/10 of the training recipe's peak lr
    calib_size: int = 256  # taylor: training images whose gradients rank the channels
    seed: int = 0
    finetune_fraction: float = 1.0  # share of the training images each fine-tuning epoch draws (search screens at < 1)
    round_to: int = 0  # keep every pruned layer's channel count a multiple of this (0: any count)
    finetune_minutes: float | None = None  # fine-tune for the steps that fit in this time (at most finetune_epochs)

    UNSET: ClassVar[dict[str, object]] = {"finetune_fraction": 1.0, "round_to": 0, "finetune_minutes": None}


def _importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "bn-scale":
        return tp.importance.BNScaleImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise unknown_choice("importance", name, PRUNE_IMPORTANCES)


def _classifier(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("no final nn.Linear classifier found to keep whole")
    return linears[-1]


def _taylor_gradients(model: nn.Module, data: StageData, cfg: PruneConfig) -> None:
    model.zero_grad(set_to_none=True)
    for x, y in DataLoader(data.calibration(cfg.calib_size, cfg.seed), batch_size=64):
        F.cross_entropy(model(x), y).backward()


def _follow_head_schedule(pruner, attentions: list, ratio: float, steps: int) -> None:
    """Make local head pruning end at `ratio` of the heads after `steps` steps.

    torch-pruning 1.6.1 removes ceil(r_k x the heads still there) at step k, with r_k the cumulative target
    (r_k = ratio * k / steps), so iterative runs overshoot: 8 -> 6 -> 3 heads at ratio 0.5 in 2 steps (channels
    are counted from the initial widths and do not). Each qkv layer gets the per-step share of its remaining
    heads that follows the linear schedule instead: 8 -> 6 -> 4."""
    for m in attentions:
        kept = [m.num_heads - math.ceil(ratio * k / steps * m.num_heads) for k in range(steps + 1)]
        # ceil((n - 0.5) / left * left) == n exactly, where n / left * left could round up to n + 1
        pruner.head_pruning_ratio_dict[m.qkv] = [0.0] + [
            (kept[k - 1] - kept[k] - 0.5) / kept[k - 1] if kept[k - 1] > kept[k] else 0.0 for k in range(1, steps + 1)
        ]


def fraction_subset(train_set, fraction: float, seed: int):
    """A seeded random `fraction` of `train_set` (at least one image); the set itself when `fraction` is 1."""
    if fraction >= 1.0:
        return train_set
    n = max(1, round(len(train_set) * fraction))
    picked = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(train_set, sorted(picked.tolist()))


def _aligned_pruner(tp):
    """torch-pruning's BasePruner, except that `round_to` never takes a layer's last channels: torch-pruning 1.6.1
    rounds the kept count down to a multiple of `round_to`, and where fewer than `round_to` would be kept that is
    none, a group it then refuses to prune, so the layer would stay whole (`custom` pruned 0.8 with `round_to` 32
    would keep its 64-channel layers). Here such a layer keeps one multiple; a layer narrower than `round_to` is pruned
    unaligned."""

    class AlignedPruner(tp.pruner.BasePruner):
        def _round_to(self, n_pruned, current_channels, round_to):
            if current_channels < round_to:
                return n_pruned
            kept = current_channels - n_pruned
            return current_channels - max(kept - kept % round_to, round_to)

    return AlignedPruner


def prune_model(model: nn.Module, data: StageData, cfg: PruneConfig) -> nn.Module:
    """Prune `model` in place with torch-pruning's BasePruner (`_aligned_pruner`); returns it."""
    import torch_pruning as tp

    example = data.example(2)
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    extra = {}
    if attentions:
        extra = dict(
            num_heads={m.qkv: m.num_heads for m in attentions},
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=cfg.ratio,
        )
    if isinstance(model, VisionTransformer):
        extra["unwrapped_parameters"] = model.unwrapped_parameters()
    pruner = _aligned_pruner(tp)(
        model,
        example,
        importance=_importance(cfg.importance),
        pruning_ratio=cfg.ratio,
        ignored_layers=[_classifier(model)],
        global_pruning=cfg.global_pruning,
        iterative_steps=cfg.iterative_steps,
        round_to=cfg.round_to or None,
        **extra,
    )
    if attentions and not cfg.global_pruning:
        _follow_head_schedule(pruner, attentions, cfg.ratio, cfg.iterative_steps)
    model.eval()
    for _ in range(cfg.iterative_steps):
        if cfg.importance == "taylor":
            _taylor_gradients(model, data, cfg)
        pruner.step()
        for m in attentions:  # torch-pruning counts the heads it removed; the forward reshapes with num_heads
            m.num_heads = pruner.num_heads[m.qkv]
    model.zero_grad(set_to_none=True)
    return model


def finetune(
    model: nn.Module,
    teacher: nn.Module | None,
    train_set,
    recipe,
    epochs: int,
    lr: float,
    seed: int,
    *,
    device: torch.device,
    workers: int,
    precision: str = "fp32",
    checkpoint: Path | None = None,
    minutes: float | None = None,
) -> list[dict]:
    """Fine-tune on `device` with the train engine (its optimizer, a cosine schedule, its training batches: of a
    `DeviceSplit` held on `device`, or of a DataLoader with `workers` processes); distill from `teacher` if given.
    Both models must already be on `device`. Prints one line per epoch on stderr. With `minutes`, it takes the
    steps that fit in that time (timed on its first steps, at most `epochs` epochs; the cosine schedule spans
    them), as `train --budget-minutes` does; the last epoch may end early.

    With `checkpoint`, everything needed to go on (weights, optimizer, schedule, scaler, random state, history and
    the steps a budget sized) is written there atomically after every epoch, and a run that finds it starts after
    its last epoch: an interrupted fine-tuning loses at most the epoch it was in, and ends with the weights an
    uninterrupted one has. A checkpoint that does not fit the model (another torch-pruning made other shapes) is
    set aside."""
    recipe = replace(recipe, epochs=epochs, lr=lr, schedule="cosine", seed=seed)
    torch.manual_seed(seed)
    per_epoch = -(-len(train_set) // recipe.batch_size)
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe, epochs * per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    history: list[dict] = []
    sized = None
    if checkpoint is not None and checkpoint.is_file():
        ckpt = load_checkpoint(checkpoint)
        try:
            restore_run_state(ckpt, model, opt, sched, scaler)
        except RuntimeError:
            checkpoint.replace(checkpoint.with_suffix(".stale"))
        else:
            history, sized = [dict(h, resumed=True) for h in ckpt["history"]], ckpt.get("total_steps")
    budget = StepBudget(minutes, epochs * per_epoch, sized)

    def distill(logits, x, y):
        loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        with torch.no_grad():
            soft = F.log_softmax(teacher(x).float() / TEMPERATURE, 1)
        kd = (
            F.kl_div(F.log_softmax(logits.float() / TEMPERATURE, 1), soft, log_target=True, reduction="batchmean")
            * TEMPERATURE**2
        )
        return 0.5 * loss + 0.5 * kd

    def plan(done: int, step_seconds: float) -> None:
        budget.resize(sched, opt, recipe, done, step_seconds, per_epoch, "fine-tune")

    for epoch in range(len(history), epochs):
        before = sum(h.get("steps", per_epoch) for h in history)
        if budget.total and before >= budget.total:
            break

        def on_step(i: int, before=before) -> bool:
            budget.on_step(lambda step_s: plan(before + i + 1, step_s))
            return bool(budget.total) and before + i + 1 >= budget.total

        loader, _ = epoch_loader(train_set, recipe, device, workers, epoch, 0)
        stats = train_one_epoch(
            model,
            loader,
            opt,
            sched,
            scaler,
            device,
            recipe,
            loss_fn=distill if teacher is not None else None,
            desc=f"fine-tune {epoch + 1}/{epochs}",
            precision=precision,
            on_step=on_step,
        )
        steps = min(per_epoch, budget.total - before) if budget.total else per_epoch
        if not budget.total:  # an epoch too short to time the budget's steps in: sized on the whole of it
            plan(before + steps, stats["seconds"] / steps)
        history.append(
            dict(epoch=epoch + 1, loss=stats["loss"], top1=stats["top1"], seconds=stats["seconds"], steps=steps)
        )
        note(
            f"fine-tune epoch {epoch + 1}/{epochs}: loss {stats['loss']:.3f} top-1 {100 * stats['top1']:.2f}% | "
            f"{stats['seconds']:.0f} s, {stats['images_per_s']:.0f} img/s"
        )
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(run_state(model, opt, sched, scaler, history=history, total_steps=budget.total), checkpoint)
    return history


@register_stage
class PruneStage(Stage):
    """Structured pruning + fine-tuning of a PyTorch variant."""

    name = "prune"
    Config = PruneConfig

    def __init__(self, config: PruneConfig | None = None, **options):
        super().__init__(config, **options)
        c = self.config
        if not 0.0 < c.ratio < 1.0:
            raise UserError(f"--ratio must be between 0 and 1 (exclusive), got {c.ratio}")
        if c.importance not in PRUNE_IMPORTANCES:
            raise unknown_choice("importance", c.importance, PRUNE_IMPORTANCES)
        if c.iterative_steps < 1 or c.finetune_epochs < 0:
            raise UserError("--iterative-steps must be >= 1 and --finetune-epochs >= 0")
        if c.finetune_lr is not None and not c.finetune_lr > 0:
            raise UserError(f"--finetune-lr must be above 0, got {c.finetune_lr}")
        if c.round_to < 0:
            raise UserError(f"--round-to must be >= 0 (0: any channel count), got {c.round_to}")
        if not 0.0 < c.finetune_fraction <= 1.0:
            raise UserError(f"the fine-tuning fraction must be in (0, 1], got {c.finetune_fraction}")
        if c.finetune_minutes is not None and not c.finetune_minutes > 0:
            raise UserError(f"--finetune-minutes must be above 0, got {c.finetune_minutes}")

    def run(self, ws: Workspace, parent: Variant, data_dir) -> Variant:
        if parent.format not in EAGER_FORMATS:
            raise UserError(f"prune needs an fp32 PyTorch variant (trained or pruned); {parent.id} is {parent.format}")
        cfg = self.config
        data = stage_data(ws, parent, data_dir)
        recipe = root_recipe(ws, parent) or default_recipe(parent.config["arch"])
        lr = cfg.finetune_lr if cfg.finetune_lr is not None else recipe.lr / 10
        # Fine-tuning runs on the GPU when there is one, in the precision training would choose there, reading the
        # data as training would (`data_path`); each shapes the weights, so the config (and id) records them.
        device = torch.device("cuda" if cfg.finetune_epochs and torch.cuda.is_available() else "cpu")
        on_device, workers = data_path(parent.dataset, device) if cfg.finetune_epochs else (False, 0)
        precision = training_precision("auto", device) if cfg.finetune_epochs else "fp32"
        keys = dict(device_keys(device, workers, "device" if on_device else None), **precision_keys(precision))
        config = self.variant_config(parent, data_dir, **keys)
        # The fine-tuning's checkpoint is kept under the id of the variant it makes (which names the parent and
        # every option), so only the same stage on the same parent resumes it; it goes once the variant is stored.
        run_dir = ws.run_dir(
            parent.model,
            parent.dataset,
            f"prune-{ws.variant_id(parent.model, parent.dataset, parent.id, self.name, config)}",
        )

        def write(d) -> dict:
            teacher = load_module(parent)
            model = load_module(parent)
            example = data.example(2)
            before = dict(params=count_params(model), macs=macs_of(model, example))
            prune_model(model, data, cfg)
            after = dict(params=count_params(model), macs=macs_of(model, example))
            history = []
            if cfg.finetune_epochs:
                transfer = bool(parent.config.get("transfer"))
                if on_device:  # the batched path augments the raw arrays `data` already holds: no second read
                    train = DeviceSplit.of_dataset(
                        fraction_subset(data.splits.train, cfg.finetune_fraction, cfg.seed),
                        data.info,
                        device,
                        augment=recipe.augment,
                        cutout=recipe.cutout,
                        transfer=transfer,
                    )
                else:  # split as `data` is (the root's seed), so the fine-tune never sees the root's validation images
                    splits = load_splits(
                        parent.dataset,
                        data_dir,
                        seed=split_seed(ws, parent),
                        augment=recipe.augment,
                        cutout=recipe.cutout,
                        transfer=transfer,
                    )
                    train = fraction_subset(splits.train, cfg.finetune_fraction, cfg.seed)
                history = finetune(
                    model.to(device),
                    teacher.to(device).eval() if cfg.distill else None,
                    train,
                    recipe,
                    cfg.finetune_epochs,
                    lr,
                    cfg.seed,
                    device=device,
                    workers=workers,
                    precision=precision,
                    checkpoint=run_dir / "last.pt",
                    minutes=cfg.finetune_minutes,
                )
            torch.save(shaped_state(model.cpu().eval()), d / "model.pt")
            ratio = (before["macs"] / after["macs"]) if before["macs"] and after["macs"] else None
            return dict(
                params=after["params"],
                macs=after["macs"],
                params_before=before["params"],
                macs_before=before["macs"],
                macs_reduction=ratio,
                params_reduction=before["params"] / max(after["params"], 1),
                finetune_lr=lr,
                finetune_history=history,
                finetune_device=device.type if cfg.finetune_epochs else None,
                finetune_resumed_epochs=sum(bool(h.get("resumed")) for h in history),
                note=None
                if after["params"] < before["params"]
                else f"importance {cfg.importance} found nothing to prune in this model",
            )

        variant = self.make_variant(ws, parent, data_dir, fmt="torch-pruned", write=write, config=config)
        shutil.rmtree(run_dir, ignore_errors=True)
        return variant
