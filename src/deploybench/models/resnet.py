"""ResNets: torchvision's resnet18 (ImageNet stem), its CIFAR adaptation, and pre-activation resnet44v2."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from deploybench.errors import UserError
from deploybench.models.registry import register_model

_RECIPE = dict(epochs=1, lr=0.1, batch_size=128, optimizer="sgd", schedule="onecycle", label_smoothing=0.1)


def _load_imagenet_weights(model: nn.Module, state: dict, in_channels: int) -> None:
    """Load an ImageNet state dict: conv1 summed over RGB for 1-channel inputs, fc left new."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if in_channels != 3 and "conv1.weight" in state:
        state["conv1.weight"] = (
            state["conv1.weight"].sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        missing, unexpected = [str(exc).splitlines()[-1].strip()], []
    if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
        raise UserError(
            f"the pretrained weights are not a resnet18 ImageNet state dict "
            f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})"
        )
    # Transfer recipe: only layer4 and the new classifier learn.
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(("layer4.", "fc."))


@register_model("resnet18", family="resnet", recipe=dict(_RECIPE, epochs=2))
def resnet18(num_classes: int = 10, in_channels: int = 3, pretrained: dict | None = None) -> nn.Module:
    """torchvision's resnet18 (7x7 stem + max-pool); `pretrained` is an ImageNet state dict (the caller reads the
    file, with `load_checkpoint`)."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if pretrained is not None:
        _load_imagenet_weights(model, pretrained, in_channels)
    return model


@register_model("resnet18-cifar", family="resnet", recipe=_RECIPE)
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's resnet18 with the CIFAR stem: one 3x3 stride-1 conv and no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


class BasicBlockV2(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings"): BN-ReLU-conv, BN-ReLU-conv, + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


@register_model("resnet44v2", family="resnet", recipe=dict(_RECIPE, epochs=2))
def resnet44v2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Pre-activation ResNet: stages 32 (7 blocks), 64 (7, /2), 128 (7, /2), 256 (3, /2); GAP, dropout 0.1, FC."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)]
    cin = 32
    for cout, blocks, stride in [(32, 7, 1), (64, 7, 2), (128, 7, 2), (256, 3, 2)]:
        for i in range(blocks):
            layers.append(BasicBlockV2(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(cin, num_classes),
    ]
    return nn.Sequential(*layers)
