"""`train_model`: data + model + engine, then test metrics, figures and the trained variant in the store."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from deploybench.artifacts.checkpoint import load_checkpoint, load_weights, read_state_dict
from deploybench.data import canonical_dataset, data_keys, dataset_info, load_splits
from deploybench.errors import UserError
from deploybench.models import count_params, create_model
from deploybench.models.identity import model_config
from deploybench.store import Variant, Workspace
from deploybench.train import plots
from deploybench.train.engine import default_workers, device_keys, evaluate, fit
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
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    return dev


def train_model(ws: Workspace, model: str, dataset: str, recipe: Recipe, *, data_dir: str | Path = "data",
                resume: bool | None = False, restart: bool = False, pretrained: str | None = None,
                checkpoint: str | None = None, device: str | None = None, workers: int | None = None,
                log=print) -> tuple[Variant, bool]:
    """Train `model` on `dataset` and record it as the trained variant. Returns (variant, newly_trained).

    The same (model, dataset, recipe) already trained returns the stored variant. A run that was interrupted
    must be continued with `resume=True` or discarded with `restart=True`; it is never overwritten silently.
    `resume=None` (the main job) continues an interrupted run when there is one and starts one otherwise.
    `checkpoint` starts from external weights (validated against the architecture).
    `workers`: data-loading processes for training (default: `default_workers(device)`).
    """
    dataset = canonical_dataset(dataset)
    dev = training_device(device)
    if workers is None:
        workers = default_workers(dev)
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    transfer = bool(pretrained)
    splits = load_splits(dataset, data_dir, seed=recipe.seed, augment=recipe.augment, cutout=recipe.cutout,
                         transfer=transfer)
    info = splits.info
    config = dict(model_config(model, info, transfer), recipe=recipe.to_dict(), dataset=dataset,
                  pretrained=Path(pretrained).name if pretrained else None,
                  init_checkpoint=Path(checkpoint).name if checkpoint else None)
    # Starting weights are known by their bytes: two files of one name start two runs. Each file is read once,
    # here, and refused with one line when bad, before the store is asked for the run.
    imagenet_state = init_state = None
    if pretrained:
        imagenet_state, config["pretrained_sha256"] = read_state_dict(pretrained)
    if checkpoint:
        init_state, config["init_checkpoint_sha256"] = read_state_dict(checkpoint)
    config.update(device_keys(dev, workers))  # a GPU or loader workers give other weights: a variant of its own
    config.update(data_keys(dataset, data_dir))  # so do other data files than the published ones
    vid = ws.variant_id(model, dataset, None, "train", config)
    existing = ws.stored_variant(vid)
    if existing is not None:
        return existing, False
    run_dir = ws.run_dir(model, dataset, vid)
    last = run_dir / "last.pt"
    if resume is None:
        resume = last.exists() and not restart
    if resume and not last.exists():
        raise UserError(f"nothing to resume: no interrupted run of {model} on {dataset} with this recipe")
    if last.exists() and not resume:
        if not restart:
            raise UserError(f"an interrupted run of {model} on {dataset} exists ({run_dir}); "
                            f"pass --resume to continue it or --restart to discard it")
        shutil.rmtree(run_dir)

    torch.manual_seed(recipe.seed)  # the initial weights are part of the recipe
    net = create_model(model, info.num_classes, config["in_channels"], config["image_size"],
                       pretrained=imagenet_state)
    if init_state is not None:
        load_weights(net, init_state, checkpoint)
    train_set = splits.train
    if recipe.limit_train and recipe.limit_train < len(train_set):
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(recipe.seed))
        train_set = Subset(train_set, keep[:recipe.limit_train].tolist())
    ws.start_training_run(vid, model, dataset, config)
    log(f"training {model} ({count_params(net):,} params) on {dataset}: {len(train_set)} train / "
        f"{len(splits.val)} val / {len(splits.test)} test images, {recipe.epochs} epochs, device {dev}")
    from torch.utils.tensorboard import SummaryWriter  # heavy imports, needed only once training starts

    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def on_epoch(row: dict) -> None:
        for k in ("train_loss", "val_loss", "train_top1", "val_top1", "lr", "images_per_s"):
            writer.add_scalar(k, row[k], row["epoch"])
        writer.flush()
        log(f"epoch {row['epoch']}: train loss {row['train_loss']:.3f} top-1 {100 * row['train_top1']:.2f}% | "
            f"val top-1 {100 * row['val_top1']:.2f}% | {row['seconds']:.0f} s, {row['images_per_s']:.0f} img/s")

    try:
        state = fit(net, train_set, splits.val, info.num_classes, recipe, run_dir, device=dev, resume=resume,
                    workers=workers, on_epoch=on_epoch)
    except BaseException:
        ws.finish_training_run(vid, "interrupted")
        writer.close()
        raise
    writer.close()

    net.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    net.to(memory_format=torch.contiguous_format)
    test = evaluate(net, DataLoader(splits.test, batch_size=256), dev, info.num_classes)
    per_class = test.per_class()
    full_epochs = [h for h in state.history if "resumed_at_step" not in h]
    metrics = dict(accuracy_top1=test.top1, accuracy_top5=test.top5, test_loss=test.loss, compute_dtype="float32",
                   best_val_top1=state.best_val_top1, params=count_params(net), epochs=len(state.history),
                   seconds_per_epoch=(sum(h["seconds"] for h in full_epochs) / len(full_epochs)) if full_epochs else None,
                   train_seconds=sum(h["seconds"] for h in state.history), device=str(dev),
                   threads=torch.get_num_threads(), loader_workers=workers, torch_version=torch.__version__,
                   test_images=len(splits.test))

    def write(d: Path) -> dict:
        torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, d / "model.pt")
        plots.learning_curves(state.history, d / "learning_curves")
        plots.confusion_matrix(test.confusion, list(info.classes), d / "confusion_matrix")
        (d / "training.json").write_text(json.dumps(dict(
            history=state.history, per_class=[dict(c, name=n) for c, n in zip(per_class, info.classes)],
            confusion=test.confusion.tolist(), classes=list(info.classes)), indent=1))
        shutil.copytree(run_dir / "tensorboard", d / "tensorboard")
        return metrics

    variant, created = ws.create_variant(model=model, dataset=dataset, stage="train", config=config, parent=None,
                                         fmt="torch-state", write=write)
    ws.finish_training_run(vid, "done", variant.id)
    log(f"test top-1 {100 * test.top1:.2f}% top-5 {100 * test.top5:.2f}% -> variant {variant.id}")
    return variant, created


def import_checkpoint(ws: Workspace, model: str, dataset: str, checkpoint: str, *, data_dir: str | Path = "data",
                      log=print) -> Variant:
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
    config = dict(model_config(model, info), dataset=dataset, recipe=default_recipe(model).to_dict(),
                  checkpoint=Path(checkpoint).name, checkpoint_sha256=digest, **data_keys(dataset, data_dir))
    existing = ws.stored_variant(ws.variant_id(model, dataset, None, "import", config))
    if existing is not None:  # validated above; evaluated when it was imported
        log(f"already imported {checkpoint} as variant {existing.id}: test top-1 "
            f"{100 * existing.metrics['accuracy_top1']:.2f}%")
        return existing
    splits = load_splits(dataset, data_dir, augment=False)
    net.eval()
    test = evaluate(net, DataLoader(splits.test, batch_size=256), torch.device("cpu"), info.num_classes)

    def write(d: Path) -> dict:
        torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, d / "model.pt")
        return dict(accuracy_top1=test.top1, accuracy_top5=test.top5, test_loss=test.loss, params=count_params(net),
                    compute_dtype="float32",
                    test_images=len(splits.test), source_checkpoint=str(checkpoint))

    variant, created = ws.create_variant(model=model, dataset=dataset, stage="import", config=config, parent=None,
                                         fmt="torch-state", write=write)
    log(f"{'imported' if created else 'already imported'} {checkpoint} as variant {variant.id}: "
        f"test top-1 {100 * variant.metrics['accuracy_top1']:.2f}%")
    return variant
