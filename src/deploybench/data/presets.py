"""Transform presets (torchvision.transforms.v2) for training and evaluation."""

import torch
from torchvision.transforms import v2

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRANSFER_SIZE = 224  # input size of ImageNet-pretrained backbones


def _prefix(info):
    # ImageFolder images come in any size: bring them to the dataset's size first.
    steps = [v2.ToImage()]
    if info.name.startswith("imagefolder:"):
        steps.append(v2.Resize((info.image_size, info.image_size), antialias=True))
    return steps


def _suffix(info, transfer):
    steps = []
    if transfer:
        steps.append(v2.Resize((TRANSFER_SIZE, TRANSFER_SIZE), antialias=True))
        if info.in_channels == 1:
            steps.append(v2.RGB())
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if transfer else (info.mean, info.std)
    return steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def train_transform(info, *, augment=True, cutout=0, transfer=False):
    """Training transform: random crop + flip (+ colour jitter on CIFAR), normalize, optional cutout.

    Args: info: a DatasetInfo; augment: apply the random crop/flip/jitter; cutout: side in pixels of a
    square erased at a random place (0: off); transfer: resize to 224 and use ImageNet mean/std.
    """
    steps = _prefix(info)
    if augment:
        padding = 2 if info.in_channels == 1 else 4
        steps += [v2.RandomCrop(info.image_size, padding=padding), v2.RandomHorizontalFlip()]
        if info.name in ("cifar10", "cifar100"):
            steps.append(v2.ColorJitter(0.2, 0.2, 0.2))
    steps += _suffix(info, transfer)
    if cutout:
        side = TRANSFER_SIZE if transfer else info.image_size
        area = min(1.0, cutout**2 / side**2)  # RandomErasing takes an area fraction: fix it to one square
        steps.append(v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0))
    return v2.Compose(steps)


def eval_transform(info, *, transfer=False):
    """Evaluation transform: to float tensor and normalize (resized to 224 with `transfer`)."""
    return v2.Compose(_prefix(info) + _suffix(info, transfer))
