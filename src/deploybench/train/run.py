"""`train_model`: data + model + engine, then test metrics, figures and the trained variant in the store."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from deploybench.artifacts.checkpoint import load_checkpoint, load_weights, read_state_dict
from deploybench.data import Splits, canonical_dataset, data_keys, dataset_info, load_splits
from deploybench.errors import UserError
from deploybench.models import count_params, create_model
from deploybench.models.identity import model_config
from deploybench.models.scoring import EvalResult
from deploybench.store import Variant, Workspace
from deploybench.train import plots
from deploybench.train.device_data import DeviceSplit
from deploybench.train.engine import (
    TrainingDiverged,
    TrainState,
    data_path,
    device_keys,
    evaluate,
    fit,
    precision_keys,
    training_precision,
)
from deploybench.train.recipes import Recipe, default_recipe


def training_device(name: str | None) -> torch.device:
    """`--device`: cpu or cuda[:N] (default cuda when present); anything else, or a GPU that is not here, is a
    one-line error before any work."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be cpu or cuda (or cuda:N), got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda (or cuda:N), got {name!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    return dev


@dataclass
class _Plan:
    """One training run, decided before any training: its data, device, loader workers or data on the device,
    config (and so variant id), checkpoint folder and starting weights."""

    model: str
    dataset: str
    device: torch.device
    workers: int
    precision: str  # a resolved `training_precision`
    splits: Splits
    config: dict
    variant_id: str
    run_dir: Path
    imagenet_state: dict | None  # --pretrained backbone weights
    init_state: dict | None  # --checkpoint weights
    checkpoint: str | None  # the file `init_state` came from
    augment_on: str | None  # "device": the splits go to the device and are augmented there (`device_resident`)
    transfer: bool  # --pretrained: images resized to the backbone's input size, ImageNet normalization


def _starting_weights(config: dict, pretrained: str | None, checkpoint: str | None) -> tuple[dict | None, dict | None]:
    """The (pretrained, checkpoint) state dicts, each file read once and refused with one line when bad. Starting
    weights are known by their bytes: their sha256 goes into `config`, so two files of one name start two runs."""
    imagenet_state = init_state = None
    if pretrained:
        imagenet_state, config["pretrained_sha256"] = read_state_dict(pretrained)
    if checkpoint:
        init_state, config["init_checkpoint_sha256"] = read_state_dict(checkpoint)
    return imagenet_state, init_state


def _plan(
    ws: Workspace,
    model: str,
    dataset: str,
    recipe: Recipe,
    *,
    data_dir: str | Path,
    pretrained: str | None,
    checkpoint: str | None,
    device: str | None,
    workers: int | None,
    precision: str,
) -> _Plan:
    """Check the options, load the splits and read the starting weights; returns the run they make."""
    dataset = canonical_dataset(dataset)
    dev = training_device(device)
    on_device, workers = data_path(dataset, dev, workers)
    precision = training_precision(precision, dev)
    transfer = bool(pretrained)
    splits = load_splits(
        dataset, data_dir, seed=recipe.seed, augment=recipe.augment, cutout=recipe.cutout, transfer=transfer
    )
    config = dict(
        model_config(model, splits.info, transfer),
        recipe=recipe.to_dict(),
        dataset=dataset,
        pretrained=Path(pretrained).name if pretrained else None,
        init_checkpoint=Path(checkpoint).name if checkpoint else None,
    )
    imagenet_state, init_state = _starting_weights(config, pretrained, checkpoint)
    # A GPU, loader workers or augmentation on the device give other weights: a variant of their own.
    config.update(device_keys(dev, workers, "device" if on_device else None))
    config.update(precision_keys(precision))  # and so does bf16 or fp16 arithmetic
    config.update(data_keys(dataset, data_dir))  # so do other data files than the published ones
    vid = ws.variant_id(model, dataset, None, "train", config)
    return _Plan(
        model,
        dataset,
        dev,
        workers,
        precision,
        splits,
        config,
        vid,
        ws.run_dir(model, dataset, vid),
        imagenet_state,
        init_state,
        checkpoint,
        "device" if on_device else None,
        transfer,
    )


def _resume_or_restart(plan: _Plan, resume: bool | None, restart: bool) -> bool:
    """Whether to resume the run in `plan.run_dir` (see `train_model`); discards it on `restart`. An interrupted
    run is never overwritten silently, and resuming needs one."""
    last = plan.run_dir / "last.pt"
    if resume is None:
        resume = last.exists() and not restart
    if resume and not last.exists():
        raise UserError(f"nothing to resume: no interrupted run of {plan.model} on {plan.dataset} with this recipe")
    if last.exists() and not resume:
        if not restart:
            raise UserError(
                f"an interrupted run of {plan.model} on {plan.dataset} exists ({plan.run_dir}); "
                f"pass --resume to continue it or --restart to discard it"
            )
        shutil.rmtree(plan.run_dir)
    return resume


def _build(plan: _Plan, recipe: Recipe) -> tuple[nn.Module, Dataset]:
    """The initial network (seeded: the initial weights are part of the recipe) and the training images."""
    torch.manual_seed(recipe.seed)
    net = create_model(
        plan.model,
        plan.splits.info.num_classes,
        plan.config["in_channels"],
        plan.config["image_size"],
        pretrained=plan.imagenet_state,
    )
    if plan.init_state is not None:
        load_weights(net, plan.init_state, plan.checkpoint)
    train_set = plan.splits.train
    if recipe.limit_train and recipe.limit_train < len(train_set):
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(recipe.seed))
        train_set = Subset(train_set, keep[: recipe.limit_train].tolist())
    return net, train_set


def _check_forward(plan: _Plan, net: nn.Module) -> None:
    """One forward pass over two training images, in eval mode: a model whose forward raises, or whose output is
    not one logit per class, is one UserError before a run folder or a store record exists."""
    x = torch.stack([plan.splits.train[i][0] for i in range(min(2, len(plan.splits.train)))])
    classes = plan.splits.info.num_classes
    was_training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(x)
    except Exception as exc:  # noqa: BLE001  any failure of user code is the model's, reported in one line
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(
            f"{plan.model}: a forward pass on a batch of {plan.dataset} images {tuple(x.shape)} "
            f"failed: {type(exc).__name__}: {why}"
        ) from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"{plan.model}: its forward pass returns {shape} for a batch of {len(x)}, not ({len(x)}, {classes}) logits"
        )


def _epoch_logger(writer, log) -> Callable[[dict], None]:
    """`on_epoch` for `fit`: the epoch's figures to TensorBoard and one line to `log`."""

    def on_epoch(row: dict) -> None:
        for k in ("train_loss", "val_loss", "train_top1", "val_top1", "lr", "images_per_s"):
            writer.add_scalar(k, row[k], row["epoch"])
        writer.flush()
        log(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.3f} top-1 {100 * row['train_top1']:.2f}% | "
            f"val top-1 {100 * row['val_top1']:.2f}% | {row['seconds']:.0f} s, {row['images_per_s']:.0f} img/s"
        )

    return on_epoch


def _device_splits(plan: _Plan, train_set: Dataset, recipe: Recipe) -> tuple[DeviceSplit, DeviceSplit]:
    """The training and validation images on the plan's device, from the arrays the loaded splits hold: the
    training split with the recipe's augmentation, the validation split normalized only."""
    info, dev = plan.splits.info, plan.device
    return (
        DeviceSplit.of_dataset(
            train_set, info, dev, augment=recipe.augment, cutout=recipe.cutout, transfer=plan.transfer
        ),
        DeviceSplit.of_dataset(plan.splits.val, info, dev, augment=False, transfer=plan.transfer),
    )


def _fit_recorded(
    ws: Workspace, plan: _Plan, net: nn.Module, train_set: Dataset, recipe: Recipe, resume: bool, log
) -> TrainState:
    """Run `fit` with TensorBoard logging; the store's record of the run says "interrupted" if it does not end."""
    from torch.utils.tensorboard import SummaryWriter  # heavy imports, needed only once training starts

    writer = SummaryWriter(log_dir=str(plan.run_dir / "tensorboard"))
    try:
        train_data, val_data = (
            _device_splits(plan, train_set, recipe) if plan.augment_on else (train_set, plan.splits.val)
        )
        return fit(
            net,
            train_data,
            val_data,
            plan.splits.info.num_classes,
            recipe,
            plan.run_dir,
            device=plan.device,
            precision=plan.precision,
            resume=resume,
            workers=plan.workers,
            on_epoch=_epoch_logger(writer, log),
            log=log,
        )
    except TrainingDiverged:
        # Resuming would only diverge again from the same state: the run is closed and its folder removed.
        ws.finish_training_run(plan.variant_id, "diverged")
        writer.close()
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        raise
    except BaseException:
        ws.finish_training_run(plan.variant_id, "interrupted")
        raise
    finally:
        writer.close()


def _metrics(plan: _Plan, net: nn.Module, state: TrainState, test: EvalResult) -> dict:
    """The trained variant's metrics: test accuracy, training time and what it ran on."""
    full_epochs = [h for h in state.history if "resumed_at_step" not in h]
    return dict(
        accuracy_top1=test.top1,
        accuracy_top5=test.top5,
        test_loss=test.loss,
        compute_dtype="float32",
        best_val_top1=state.best_val_top1,
        params=count_params(net),
        epochs=round(state.epochs_planned(), 2),  # what the run did: a time budget may end it inside an epoch
        train_precision=plan.precision,
        seconds_per_epoch=(sum(h["seconds"] for h in full_epochs) / len(full_epochs)) if full_epochs else None,
        # Training images a second over the epochs trained from their start (a resumed one counts only part).
        images_per_s=(sum(h["images_per_s"] for h in full_epochs) / len(full_epochs)) if full_epochs else None,
        train_seconds=sum(h["seconds"] for h in state.history) + state.seconds_before_stops,
        device=str(plan.device),
        threads=torch.get_num_threads(),
        loader_workers=plan.workers,
        torch_version=torch.__version__,
        test_images=len(plan.splits.test),
    )


def _write_trained(d: Path, plan: _Plan, net: nn.Module, state: TrainState, test: EvalResult) -> dict:
    """Write the variant's files into `d`: CPU weights, figures, training.json, TensorBoard logs; returns metrics."""
    classes = list(plan.splits.info.classes)
    torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, d / "model.pt")
    plots.learning_curves(state.history, d / "learning_curves")
    plots.confusion_matrix(test.confusion, classes, d / "confusion_matrix")
    per_class = [dict(c, name=n) for c, n in zip(test.per_class(), classes, strict=True)]
    (d / "training.json").write_text(
        json.dumps(
            dict(history=state.history, per_class=per_class, confusion=test.confusion.tolist(), classes=classes),
            indent=1,
        )
    )
    shutil.copytree(plan.run_dir / "tensorboard", d / "tensorboard")
    return _metrics(plan, net, state, test)


def _record(ws: Workspace, plan: _Plan, net: nn.Module, state: TrainState, log) -> tuple[Variant, bool]:
    """Test the best epoch's weights and store them as the trained variant; returns (variant, created)."""
    net.load_state_dict(load_checkpoint(plan.run_dir / "best.pt")["model"])
    net.to(memory_format=torch.contiguous_format)
    test = evaluate(net, DataLoader(plan.splits.test, batch_size=256), plan.device, plan.splits.info.num_classes)
    variant, created = ws.create_variant(
        model=plan.model,
        dataset=plan.dataset,
        stage="train",
        config=plan.config,
        parent=None,
        fmt="torch-state",
        write=lambda d: _write_trained(d, plan, net, state, test),
    )
    ws.finish_training_run(plan.variant_id, "done", variant.id)
    log(f"test top-1 {100 * test.top1:.2f}% top-5 {100 * test.top5:.2f}% -> variant {variant.id}")
    return variant, created


def train_model(
    ws: Workspace,
    model: str,
    dataset: str,
    recipe: Recipe,
    *,
    data_dir: str | Path = "data",
    resume: bool | None = False,
    restart: bool = False,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    workers: int | None = None,
    precision: str = "auto",
    log=print,
) -> tuple[Variant, bool]:
    """Train `model` on `dataset` and record it as the trained variant. Returns (variant, newly_trained).

    The same (model, dataset, recipe) already trained returns the stored variant. A run that was interrupted
    must be continued with `resume=True` or discarded with `restart=True`; it is never overwritten silently.
    `resume=None` (the main job) continues an interrupted run when there is one and starts one otherwise.
    `checkpoint` starts from external weights (validated against the architecture).
    `workers`: data-loading processes for training (default: `default_workers(device)`); none where the images
    are kept and augmented on the device (`device_resident`: CIFAR and Fashion-MNIST).
    `precision`: auto, fp32, bf16 or fp16 (see `training_precision`); what it resolves to is in the config.
    `log`: where the progress lines go (one per epoch).
    """
    plan = _plan(
        ws,
        model,
        dataset,
        recipe,
        data_dir=data_dir,
        pretrained=pretrained,
        checkpoint=checkpoint,
        device=device,
        workers=workers,
        precision=precision,
    )
    existing = ws.stored_variant(plan.variant_id)
    if existing is not None:
        return existing, False
    net, train_set = _build(plan, recipe)
    _check_forward(plan, net)  # before anything is written: a model that cannot run leaves no run behind
    # One process trains one recipe at a time; a second waits, then finds the first's variant.
    with ws.making(
        plan.variant_id, on_wait=lambda: log(f"another process is training this recipe of {model}; waiting for it")
    ):
        existing = ws.stored_variant(plan.variant_id)
        if existing is not None:
            return existing, False
        resume = _resume_or_restart(plan, resume, restart)
        ws.start_training_run(plan.variant_id, model, plan.dataset, plan.config)
        splits = plan.splits
        log(
            f"training {model} ({count_params(net):,} params) on {plan.dataset}: {len(train_set)} train / "
            f"{len(splits.val)} val / {len(splits.test)} test images, "
            f"{f'{recipe.budget_minutes:g} min' if recipe.budget_minutes else f'{recipe.epochs} epochs'}, "
            f"device {plan.device}, {plan.precision}"
            f"{', data and augmentation on the device' if plan.augment_on else ''}"
        )
        state = _fit_recorded(ws, plan, net, train_set, recipe, resume, log)
        return _record(ws, plan, net, state, log)


def import_checkpoint(
    ws: Workspace, model: str, dataset: str, checkpoint: str, *, data_dir: str | Path = "data", log=print
) -> Variant:
    """Record external weights of `model` as a root variant (stage "import") of `dataset`, so every command that
    takes a model can start from them. The file is read with `weights_only=True`, must fit the architecture
    and class count exactly (mismatched keys and shapes are listed), and is evaluated on the test split once.
    The same file imported again gives the same variant (its config holds the file's sha256), found before any
    evaluation."""
    dataset = canonical_dataset(dataset)
    state, digest = read_state_dict(checkpoint)
    info = dataset_info(dataset, data_dir)
    net = create_model(model, info.num_classes, info.in_channels, info.image_size)
    load_weights(net, state, checkpoint)
    # The recipe is the architecture's default: fine-tuning stages (prune, qat) train with it.
    config = dict(
        model_config(model, info),
        dataset=dataset,
        recipe=default_recipe(model).to_dict(),
        checkpoint=Path(checkpoint).name,
        checkpoint_sha256=digest,
        **data_keys(dataset, data_dir),
    )
    existing = ws.stored_variant(ws.variant_id(model, dataset, None, "import", config))
    if existing is not None:  # validated above; evaluated when it was imported
        log(
            f"already imported {checkpoint} as variant {existing.id}: test top-1 "
            f"{100 * existing.metrics['accuracy_top1']:.2f}%"
        )
        return existing
    splits = load_splits(dataset, data_dir, augment=False)
    net.eval()
    test = evaluate(net, DataLoader(splits.test, batch_size=256), torch.device("cpu"), info.num_classes)

    def write(d: Path) -> dict:
        torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, d / "model.pt")
        return dict(
            accuracy_top1=test.top1,
            accuracy_top5=test.top5,
            test_loss=test.loss,
            params=count_params(net),
            compute_dtype="float32",
            test_images=len(splits.test),
            source_checkpoint=str(checkpoint),
        )

    variant, created = ws.create_variant(
        model=model, dataset=dataset, stage="import", config=config, parent=None, fmt="torch-state", write=write
    )
    log(
        f"{'imported' if created else 'already imported'} {checkpoint} as variant {variant.id}: "
        f"test top-1 {100 * variant.metrics['accuracy_top1']:.2f}%"
    )
    return variant
