"""Training data held in the training device's memory and augmented there as batched tensor ops.

Per-image transforms cannot keep up with a small network on 32x32 images: a GPU trains it far quicker than
DataLoader workers crop, flip and normalize images one by one, and on a few CPU cores a DataLoader in the main
process takes a large share of each training step (benchmarks/test_training.py times the two paths). A
dataset of a few hundred MB (Fashion-MNIST, CIFAR) fits in memory as uint8, so the whole split goes to the
device once and each batch is gathered, augmented and normalized by a handful of ops over the whole batch, on a
GPU and on the CPU alike.

The augmentation of a batch is a function of (seed, epoch, batch index) alone: the order comes from the
engine's `EpochBatchSampler` permutation and the random draws from a generator on the device seeded per
(seed, epoch, batch). A run resumed at any step draws what the uninterrupted one drew.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from deploybench.data import DatasetInfo
from deploybench.data.presets import IMAGENET_MEAN, IMAGENET_STD, TRANSFER_SIZE

# The datasets whose images fit in memory (as uint8: CIFAR's train split is 150 MB). An image folder may hold
# anything, so it keeps the DataLoader.
DEVICE_RESIDENT_DATASETS = ("cifar10", "cifar100", "fashion-mnist")
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights (rgb_to_grayscale)


def device_resident(dataset: str) -> bool:
    """Whether training (and pruning's fine-tune) keeps `dataset`'s images on the training device and augments
    them there in batches (`DeviceSplit`) rather than reading them through a DataLoader: for the datasets that fit
    in memory, on every device."""
    return dataset in DEVICE_RESIDENT_DATASETS


@dataclass(frozen=True)
class Augmentation:
    """What `presets.train_transform` does, as parameters of batched ops (`for_dataset` derives them the same
    way). `padding`: zero padding of the random crop (0: no crop); `flip`: random horizontal flip; `jitter`: the
    brightness, contrast and saturation range of the colour jitter (0: none); `mean`/`std`: normalization;
    `size`: the side images are resized to (transfer learning), or None; `rgb`: a gray image is repeated to three
    channels; `cutout`: side of the square zeroed after normalization (0: none)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 0
    flip: bool = False
    jitter: float = 0.0
    cutout: int = 0
    size: int | None = None
    rgb: bool = False

    @classmethod
    def for_dataset(
        cls, info: DatasetInfo, *, augment: bool = True, cutout: int = 0, transfer: bool = False
    ) -> Augmentation:
        """The augmentation `presets.train_transform(info, augment=, cutout=, transfer=)` applies; with
        `augment=False` and `cutout=0`, the evaluation transform's normalization only."""
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if transfer else (info.mean, info.std)
        return cls(
            mean=tuple(mean),
            std=tuple(std),
            padding=(2 if info.in_channels == 1 else 4) if augment else 0,
            flip=augment,
            jitter=0.2 if augment and info.name in ("cifar10", "cifar100") else 0.0,
            cutout=cutout,
            size=TRANSFER_SIZE if transfer else None,
            rgb=transfer and info.in_channels == 1,
        )


@dataclass
class Draw:
    """The random choices of one batch of `n` images: crop `offsets` [n, 2] (row, column into the padded image),
    `flips` [n] (bool), `jitter` factors [n, 3] (brightness, contrast, saturation) and cutout `corners` [n, 2]
    (top-left row, column). Each is None where the augmentation does not use it."""

    offsets: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    jitter: torch.Tensor | None = None
    corners: torch.Tensor | None = None


def _cutout_side(aug: Augmentation, side: int) -> int:
    """The side of the erased square on images of `side` pixels: none when the square would cover the whole image,
    as RandomErasing, which finds no place for it then and leaves the image as it is."""
    return aug.cutout if 0 < aug.cutout < side else 0


def draw(aug: Augmentation, n: int, image_size: int, generator: torch.Generator) -> Draw:
    """The random choices of `aug` for `n` images of `image_size` pixels a side, from `generator` (on the device
    the images are on), always in the same order, so a generator seeded alike gives the same batch."""
    dev = generator.device
    d = Draw()
    if aug.padding:
        d.offsets = torch.randint(0, 2 * aug.padding + 1, (n, 2), generator=generator, device=dev)
    if aug.flip:
        d.flips = torch.rand(n, generator=generator, device=dev) < 0.5
    if aug.jitter:
        d.jitter = torch.empty(n, 3, device=dev).uniform_(1 - aug.jitter, 1 + aug.jitter, generator=generator)
    out_size = aug.size or image_size
    side = _cutout_side(aug, out_size)
    if side:
        d.corners = torch.randint(0, out_size - side + 1, (n, 2), generator=generator, device=dev)
    return d


def crop_flip(images: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None, padding: int):
    """Crop each of `images` [n, c, h, w] (any dtype) to h x w at `offsets` into the image zero-padded by
    `padding` on every side, then mirror those where `flips` is True; one gather for the whole batch."""
    n, c, h, w = images.shape
    dev = images.device
    rows = torch.arange(h, device=dev).expand(n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    if offsets is not None and padding:
        images = F.pad(images, (padding, padding, padding, padding))
        rows, cols = rows + offsets[:, :1], cols + offsets[:, 1:]
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    channel = torch.arange(c, device=dev)[None, :, None, None]
    return images[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation of RGB `x` [n, 3, h, w] in [0, 1] scaled by `factors` [n, 3], with
    torchvision's formulas (a blend with black, the image's mean gray, its grayscale; clamped to [0, 1]).

    It approximates torchvision's ColorJitter(0.2, 0.2, 0.2) of the CPU path: that applies the three in a random
    order per image, and rounds to uint8 after each; here the order is fixed and the values stay float."""
    f = factors[:, :, None, None, None]
    x = (x * f[:, 0]).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (f[:, 1] * x + (1 - f[:, 1]) * mean).clamp(0, 1)
    return (f[:, 2] * x + (1 - f[:, 2]) * _gray(x)).clamp(0, 1)


def cutout(x: torch.Tensor, corners: torch.Tensor, side: int) -> torch.Tensor:
    """`x` [n, c, h, w] with a `side` x `side` square zeroed at each image's `corners` (top-left row, column)."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - corners[:, :1]
    cols = torch.arange(w, device=x.device)[None, :] - corners[:, 1:]
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return x.masked_fill(inside[:, None], 0.0)


def to_input(images: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    """uint8 `images` [n, c, h, w] as the network's input: floats in [0, 1] (ToDtype), resized to `aug.size`,
    gray made RGB, normalized (Normalize) — the evaluation transform of the CPU path, batched."""
    return _normalize(_resize(images.to(torch.float32).mul_(1.0 / 255), aug), aug)


def _resize(x: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    """Bilinear upsampling to `aug.size` (antialiasing, which the CPU path asks for, does nothing when enlarging;
    unlike it the values are not rounded to uint8 on the way), gray repeated to RGB when `aug.rgb`."""
    if aug.size and x.shape[-1] != aug.size:
        x = F.interpolate(x, size=(aug.size, aug.size), mode="bilinear", align_corners=False).clamp_(0, 1)
    return x.expand(-1, 3, -1, -1) if aug.rgb else x


@functools.lru_cache(maxsize=8)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalization's mean and std as [c, 1, 1] float tensors on `device`, made once: a tensor built from a
    list per batch would be a host-to-device copy that waits for the GPU."""
    return (
        torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1).to(device),
        torch.tensor(std, dtype=torch.float32).view(-1, 1, 1).to(device),
    )


def _normalize(x: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    mean, std = _stats(aug.mean, aug.std, x.device)
    return x.sub(mean).div_(std)


def augment(images: torch.Tensor, aug: Augmentation, d: Draw) -> torch.Tensor:
    """The training input made of uint8 `images` [n, c, h, w] with the choices `d`: crop, flip, colour jitter,
    to float, resize, normalize, cutout — the order of `presets.train_transform`."""
    x = crop_flip(images, d.offsets, d.flips, aug.padding)
    x = x.to(torch.float32).mul_(1.0 / 255)
    if d.jitter is not None:
        x = color_jitter(x, d.jitter)
    x = _normalize(_resize(x, aug), aug)
    if d.corners is not None:
        x = cutout(x, d.corners, _cutout_side(aug, x.shape[-1]))
    return x


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of the generator that draws batch `batch` (0-based, within the epoch) of `epoch` (0-based)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes up to 2**63


class Batches:
    """A re-iterable sequence of `count` batches that `make` yields afresh each time it is iterated."""

    def __init__(self, count: int, make: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]):
        self.count, self.make = count, make

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.make()


def _base_and_indices(split: Dataset) -> tuple[Dataset, list[int]]:
    """The torchvision dataset under `split`'s (nested) Subsets and the indices into it that `split` holds."""
    indices: list[int] | None = None
    while isinstance(split, Subset):
        outer = list(split.indices)
        indices = outer if indices is None else [outer[i] for i in indices]
        split = split.dataset
    return split, list(range(len(split))) if indices is None else indices


class DeviceSplit:
    """One split's images, uint8 [n, c, h, w], and labels on one device, batched with `aug` (a training split:
    `epoch_batches`) or only normalized (`in_order`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, aug: Augmentation):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 images [n, c, h, w] and n labels, got {images.dtype} {images.shape}")
        self.images, self.labels, self.aug = images, labels, aug

    @classmethod
    def from_split(cls, split: Dataset, aug: Augmentation, device: torch.device) -> DeviceSplit:
        """The images of `split` (a Subset, possibly nested, of a torchvision FashionMNIST or CIFAR dataset) read
        from the arrays that dataset already holds (`.data`: a uint8 tensor [N, h, w] or array [N, h, w, c]),
        so no file is read again, and put on `device`."""
        base, indices = _base_and_indices(split)
        data, targets = getattr(base, "data", None), getattr(base, "targets", None)
        if data is None or targets is None:
            raise ValueError(f"{type(base).__name__} holds no image array (.data, .targets) to put on a device")
        idx = np.asarray(indices, dtype=np.int64)
        images = torch.as_tensor(data[torch.from_numpy(idx)] if isinstance(data, torch.Tensor) else data[idx])
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        labels = torch.as_tensor(np.asarray(targets, dtype=np.int64)[idx])
        return cls(images.contiguous().to(device), labels.to(device), aug)

    @classmethod
    def of_dataset(
        cls,
        split: Dataset,
        info: DatasetInfo,
        device: torch.device,
        *,
        augment: bool,
        cutout: int = 0,
        transfer: bool = False,
    ) -> DeviceSplit:
        """`split` on `device` with the augmentation its dataset's training transform applies (`augment`, `cutout`,
        `transfer` as in `Augmentation.for_dataset`; neither for an evaluation split)."""
        aug = Augmentation.for_dataset(info, augment=augment, cutout=cutout, transfer=transfer)
        return cls.from_split(split, aug, device)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.labels)

    def epoch_batches(self, perm: list[int], batch_size: int, seed: int, epoch: int, start: int = 0) -> Batches:
        """The augmented batches of `epoch` in the order of `perm` (the epoch's permutation of the split's
        indices), from batch `start` on; batch b draws its augmentation from a generator seeded by
        `batch_seed(seed, epoch, b)`."""
        order = torch.as_tensor(perm, dtype=torch.long).to(self.device)  # once an epoch: no copy per batch
        count = max(0, -(-len(order) // batch_size) - start)

        def make():
            gen = torch.Generator(device=self.device)
            for b in range(start, start + count):
                idx = order[b * batch_size : (b + 1) * batch_size]
                gen.manual_seed(batch_seed(seed, epoch, b))
                images = self.images[idx]
                yield augment(images, self.aug, draw(self.aug, len(idx), images.shape[-1], gen)), self.labels[idx]

        return Batches(count, make)

    def in_order(self, batch_size: int) -> Batches:
        """The split in its order, normalized without augmentation (the evaluation transform)."""
        count = -(-len(self) // batch_size)

        def make():
            for i in range(0, len(self), batch_size):
                yield to_input(self.images[i : i + batch_size], self.aug), self.labels[i : i + batch_size]

        return Batches(count, make)
