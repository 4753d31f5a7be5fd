"""LeNet-5 and its extensions: dilated, depthwise-separable, and depthwise-separable with residuals."""

import torch
import torch.nn as nn

from deploybench.models.registry import register_model

_RECIPE = dict(epochs=5, lr=0.05, batch_size=128, optimizer="sgd", schedule="onecycle", label_smoothing=0.0)


@register_model("lenet", family="lenet", recipe=_RECIPE)
def lenet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Classic LeNet-5: tanh, average pooling, 2 conv + 3 FC (28x28 inputs are padded to 32x32 as LeCun did)."""
    pad = max(0, (32 - image_size) // 2)
    side = ((image_size + 2 * pad - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=pad),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.Tanh(),
        nn.Linear(120, 84),
        nn.Tanh(),
        nn.Linear(84, num_classes),
    )


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


def _separable(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (optionally dilated) then pointwise 1x1, each followed by BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
        *_bn_relu(cin),
        nn.Conv2d(cin, cout, 1, bias=False),
        *_bn_relu(cout),
    )


class _Residual(nn.Module):
    """x + body(x), with a 1x1 projection when channels change."""

    def __init__(self, body: nn.Module, cin: int, cout: int):
        super().__init__()
        self.body = body
        self.proj = (
            nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.body(x)


def _head(cin: int, num_classes: int) -> list[nn.Module]:
    return [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(cin, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    ]


@register_model("dilated-cnn", family="lenet", recipe=_RECIPE)
def dilated_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """LeNet extended: five 3x3 conv-BN-ReLU layers, one dilated (d=2), dropout, global pooling: ~128K params."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
        *_bn_relu(32),
        nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False),
        *_bn_relu(32),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        *_bn_relu(64),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        *_bn_relu(64),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 96, 3, padding=1, bias=False),
        *_bn_relu(96),
        nn.Dropout2d(0.1),
        *_head(96, num_classes),
    )


@register_model("depthwise-cnn", family="lenet", recipe=_RECIPE)
def depthwise_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """`dilated-cnn` with depthwise-separable convolutions after the stem, widened to ~109K params."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
        *_bn_relu(32),
        _separable(32, 64, dilation=2),
        nn.MaxPool2d(2),
        _separable(64, 128),
        _separable(128, 128),
        nn.MaxPool2d(2),
        _separable(128, 256),
        nn.Dropout2d(0.1),
        *_head(256, num_classes),
    )


@register_model("depthwise-res-cnn", family="lenet", recipe=_RECIPE)
def depthwise_res_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """`depthwise-cnn` with residual blocks (two separable convs each): ~236K params."""

    def block(cin, cout, dilation=1):
        return _Residual(nn.Sequential(_separable(cin, cout, dilation), _separable(cout, cout)), cin, cout)

    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
        *_bn_relu(32),
        block(32, 64, dilation=2),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.MaxPool2d(2),
        block(128, 256),
        nn.Dropout2d(0.1),
        *_head(256, num_classes),
    )
