"""Training data kept on the device and augmented there in batches: the ops, their determinism, and exact resume
of a run through that path (forced onto the CPU here; the GPU test runs it on CUDA)."""

import json
import os
import signal
import time

import pytest
import torch
from torch.utils.data import Subset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from deploybench.data import dataset_info, load_splits, train_transform
from deploybench.errors import UserError
from deploybench.store import Workspace
from deploybench.train import engine
from deploybench.train import run as train_run
from deploybench.train.device_data import (
    Augmentation,
    DeviceSplit,
    Draw,
    augment,
    batch_seed,
    color_jitter,
    cutout,
    device_resident,
    draw,
    to_input,
)
from deploybench.train.engine import TrainingInterrupted, data_path, device_keys
from deploybench.train.recipes import default_recipe

CPU = torch.device("cpu")
CIFAR = dataset_info("cifar10")
FMNIST = dataset_info("fashion-mnist")


def _images(n=6, c=3, side=32, seed=0):
    return torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_the_path_is_chosen_for_in_memory_datasets_on_every_device():
    for name in ("cifar10", "cifar100", "fashion-mnist"):
        assert device_resident(name)
    assert not device_resident("imagefolder:/some/where")
    assert data_path("fashion-mnist", CPU) == (True, 0) and data_path("imagefolder:/x", CPU) == (False, 0)
    with pytest.raises(UserError, match="without DataLoader workers"):
        data_path("cifar10", CPU, 2)
    # the path adds its own key; an image folder read on the CPU without workers adds none
    assert device_keys(CPU, 0) == {}
    assert device_keys(CPU, 0, "device") == {"augment_on": "device"}
    assert device_keys(torch.device("cuda"), 0, "device") == {"device": "cuda", "augment_on": "device"}


@pytest.mark.parametrize("info", [CIFAR, FMNIST], ids=lambda i: i.name)
@pytest.mark.parametrize("transfer", [False, True])
def test_the_augmentation_is_the_cpu_transforms(info, transfer):
    steps = {type(t).__name__: t for t in train_transform(info, cutout=8, transfer=transfer).transforms}
    aug = Augmentation.for_dataset(info, cutout=8, transfer=transfer)
    assert aug.padding == steps["RandomCrop"].padding[0] and aug.flip
    assert bool(aug.jitter) == ("ColorJitter" in steps)
    if aug.jitter:
        assert steps["ColorJitter"].brightness == steps["ColorJitter"].contrast == (1 - aug.jitter, 1 + aug.jitter)
    assert list(aug.mean) == list(steps["Normalize"].mean) and list(aug.std) == list(steps["Normalize"].std)
    assert aug.cutout == 8 and ("Resize" in steps) == bool(aug.size) and ("RGB" in steps) == aug.rgb
    plain = Augmentation.for_dataset(info, augment=False)
    assert (plain.padding, plain.flip, plain.jitter, plain.cutout) == (0, False, 0.0, 0)


@pytest.mark.parametrize("info,transfer,shape", [(CIFAR, False, (6, 3, 32, 32)), (FMNIST, True, (6, 3, 224, 224))])
def test_augmented_batches_are_float_inputs_of_the_right_shape(info, transfer, shape):
    images = _images(c=info.in_channels, side=info.image_size)
    aug = Augmentation.for_dataset(info, cutout=8, transfer=transfer)
    x = augment(images, aug, draw(aug, len(images), info.image_size, torch.Generator().manual_seed(0)))
    assert x.shape == shape and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_normalization_is_torchvisions():
    images = _images()
    expected = v2.Normalize(CIFAR.mean, CIFAR.std)(v2.ToDtype(torch.float32, scale=True)(images))
    assert torch.equal(to_input(images, Augmentation.for_dataset(CIFAR, augment=False)), expected)


def test_a_crop_at_the_padding_is_the_image_and_elsewhere_shifts_in_zeros():
    images, aug = _images(), Augmentation.for_dataset(CIFAR)
    p = aug.padding
    centred = augment(images, aug, Draw(offsets=torch.full((6, 2), p)))
    assert torch.equal(centred, to_input(images, aug))
    corner = augment(images, aug, Draw(offsets=torch.zeros(6, 2, dtype=torch.long)))  # p zero rows/columns first
    assert torch.equal(corner[:, :, p:, p:], to_input(images, aug)[:, :, :-p, :-p])
    zero = to_input(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), aug)
    assert torch.equal(corner[:, :, :p, :], zero.expand(6, 3, p, 32))


def test_a_flip_mirrors_the_image_and_only_where_drawn():
    images, aug = _images(), Augmentation.for_dataset(CIFAR)
    flips = torch.tensor([True, False, True, False, False, True])
    x = augment(images, aug, Draw(offsets=torch.full((6, 2), aug.padding), flips=flips))
    plain = to_input(images, aug)
    assert torch.equal(x[flips], plain[flips].flip(-1)) and torch.equal(x[~flips], plain[~flips])


def test_cutout_zeroes_one_square_of_its_side():
    x = to_input(_images(), Augmentation.for_dataset(CIFAR, augment=False)) + 10  # no pixel is 0 by chance
    corners = torch.tensor([[0, 0], [24, 24], [3, 17], [10, 0], [0, 10], [5, 5]])
    cut = cutout(x, corners, 8)
    for i, (r, c) in enumerate(corners.tolist()):
        assert (cut[i, :, r : r + 8, c : c + 8] == 0).all()
        assert (cut[i] == 0).sum() == 3 * 8 * 8
    aug = Augmentation.for_dataset(CIFAR, cutout=8)
    d = draw(aug, 200, 32, torch.Generator().manual_seed(1))
    assert d.corners.min() == 0 and d.corners.max() == 32 - 8  # anywhere the square fits, as RandomErasing
    # A square as large as the image has no place, as RandomErasing leaves the image alone then
    assert draw(Augmentation.for_dataset(CIFAR, cutout=32), 4, 32, torch.Generator()).corners is None


@pytest.mark.parametrize(
    "factors,reference",
    [
        ((1.2, 1, 1), lambda x: TF.adjust_brightness(x, 1.2)),
        ((1, 0.8, 1), lambda x: TF.adjust_contrast(x, 0.8)),
        ((1, 1, 1.2), lambda x: TF.adjust_saturation(x, 1.2)),
    ],
)
def test_each_colour_jitter_is_torchvisions_formula(factors, reference):
    x = _images().float() / 255
    got = color_jitter(x, torch.tensor([factors] * len(x), dtype=torch.float32))
    assert torch.allclose(got, torch.stack([reference(img) for img in x]), atol=1e-5)


def _epoch(split, seed, epoch, start=0):
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(epoch)).tolist()
    return list(split.epoch_batches(perm, 8, seed, epoch, start))


def test_batches_are_a_function_of_seed_epoch_and_batch():
    split = DeviceSplit(_images(n=40), torch.arange(40) % 10, Augmentation.for_dataset(CIFAR, cutout=8))
    first = _epoch(split, seed=0, epoch=0)
    assert len(first) == 5 and [len(y) for _, y in first] == [8] * 5
    again = _epoch(split, seed=0, epoch=0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    resumed = _epoch(split, seed=0, epoch=0, start=3)  # what a run resumed at batch 3 draws
    assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(first[3:], resumed, strict=True))
    assert not torch.equal(_epoch(split, seed=1, epoch=0)[0][0], first[0][0])
    # The same images in another batch or epoch are augmented differently
    same = DeviceSplit(_images(n=1).expand(16, -1, -1, -1).contiguous(), torch.zeros(16, dtype=torch.long), split.aug)
    (x0, _), (x1, _) = _epoch(same, seed=0, epoch=0)
    assert not torch.equal(x0, x1) and not torch.equal(x0, _epoch(same, seed=0, epoch=1)[0][0])
    assert len({batch_seed(0, e, b) for e in range(3) for b in range(3)}) == 9


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_splits_go_to_the_device_from_the_loaded_arrays(name, request):
    data_dir = request.getfixturevalue("tiny_fashion_mnist" if name == "fashion-mnist" else "tiny_cifar10")
    splits = load_splits(name, data_dir, augment=False)
    aug = Augmentation.for_dataset(splits.info, augment=False)
    limited = Subset(splits.train, [5, 0, 3])  # as `limit_train` wraps the train split
    for split in (splits.val, limited):
        on_device = DeviceSplit.from_split(split, aug, CPU)
        assert on_device.images.dtype == torch.uint8 and len(on_device) == len(split)
        (x, y), *_ = list(on_device.in_order(len(split)))
        expected = [split[i] for i in range(len(split))]  # through torchvision's reader and eval transform
        assert torch.equal(x, torch.stack([img for img, _ in expected]))
        assert y.tolist() == [label for _, label in expected]


ARGS = dict(epochs=2, batch_size=8, checkpoint_every=2)


def _train(ws_dir, data_dir, **kw):
    return train_run.train_model(
        Workspace(ws_dir),
        "simple-cnn",
        "fashion-mnist",
        default_recipe("simple-cnn", **ARGS),
        data_dir=data_dir,
        device="cpu",
        log=lambda *_: None,
        **kw,
    )


def _interrupt_at(monkeypatch, call, how, pause=0.0):
    """Make the `call`-th optimizer step send SIGTERM (which the trainer handles) or crash before it is taken;
    the two steps before it each take `pause` seconds more."""
    real_step, calls = torch.optim.SGD.step, [0]

    def step(self, *a, **k):
        calls[0] += 1
        if call - 2 <= calls[0] < call:
            time.sleep(pause)
        if calls[0] == call:
            if how == "crash":
                raise RuntimeError("power cut")
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return lambda: monkeypatch.setattr(torch.optim.SGD, "step", real_step)


@pytest.fixture(scope="module")
def device_path_reference(tmp_path_factory, tiny_fashion_mnist):
    ws = tmp_path_factory.mktemp("device-ref") / "ws"
    variant, _ = _train(ws, tiny_fashion_mnist)  # Fashion-MNIST is held on the device, the CPU here
    return variant, torch.load(variant.path / "model.pt", weights_only=True)


@pytest.mark.parametrize("how,call", [("term", 10), ("crash", 11)])  # epoch 2 (7 steps each), mid-epoch
def test_the_device_path_resumes_to_the_uninterrupted_weights(
    how, call, device_path_reference, monkeypatch, tmp_path, tiny_fashion_mnist
):
    ref, ref_weights = device_path_reference
    assert ref.config["augment_on"] == "device" and "loader_workers" not in ref.config and "device" not in ref.config
    restore = _interrupt_at(monkeypatch, call, how, pause=0.5)
    with pytest.raises(TrainingInterrupted if how == "term" else RuntimeError):
        _train(tmp_path / "ws", tiny_fashion_mnist)
    restore()
    variant, created = _train(tmp_path / "ws", tiny_fashion_mnist, resume=True)
    assert created and variant.id == ref.id
    weights = torch.load(variant.path / "model.pt", weights_only=True)
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    history = [json.loads((v.path / "training.json").read_text())["history"] for v in (variant, ref)]
    assert "resumed_at_step" in history[0][-1] and history[0][-1]["val_loss"] == history[1][-1]["val_loss"]
    assert history[0][-1]["images_per_s"] > 0
    # The resumed epoch's row times only its rest; the part a SIGTERM cut (two 0.5 s steps in it) still counts.
    # A crash checkpoints nothing, so its cut part is trained again and counted then.
    uncounted = variant.metrics["train_seconds"] - sum(h["seconds"] for h in history[0])
    assert uncounted >= 1.0 if how == "term" else uncounted == 0.0


def test_the_device_path_is_a_variant_of_its_own(device_path_reference, tmp_path, tiny_fashion_mnist, monkeypatch):
    monkeypatch.setattr(engine, "device_resident", lambda dataset: False)  # the DataLoader path, as an image folder's
    plain, _ = _train(tmp_path / "ws", tiny_fashion_mnist)
    assert "augment_on" not in plain.config and plain.id != device_path_reference[0].id


@pytest.mark.gpu
def test_trains_on_a_gpu_with_the_data_on_it(tmp_path, tiny_fashion_mnist):
    recipe = default_recipe("simple-cnn", epochs=2, batch_size=8, cutout=8)
    lines = []
    variant, created = train_run.train_model(
        Workspace(tmp_path / "ws"),
        "simple-cnn",
        "fashion-mnist",
        recipe,
        data_dir=tiny_fashion_mnist,
        device="cuda",
        log=lines.append,
    )
    assert created and variant.config["augment_on"] == "device" and variant.config["device"] == "cuda"
    assert "loader_workers" not in variant.config and variant.metrics["loader_workers"] == 0
    assert any("data and augmentation on the device" in line for line in lines)
    assert any("img/s" in line for line in lines)
    weights = torch.load(variant.path / "model.pt", weights_only=True)
    assert all(not k.startswith("_orig_mod.") for k in weights)  # the compiled wrapper's names are not stored
    assert {t.device.type for t in weights.values()} == {"cpu"}
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
