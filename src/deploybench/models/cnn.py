"""Plain VGG-style CNNs: `custom` (2.66M params on CIFAR-10) and `simple-cnn` (~98K)."""

import torch.nn as nn

from deploybench.models.registry import register_model


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model(
    "custom",
    family="cnn",
    recipe=dict(epochs=2, lr=0.1, batch_size=128, optimizer="sgd", schedule="onecycle", label_smoothing=0.1),
)
def custom(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Five conv-BN-ReLU layers with three max-pools, then a 512-wide classifier with dropout."""
    side = image_size // 8  # three 2x2 max-pools
    return nn.Sequential(
        *conv_bn_relu(in_channels, 64),
        *conv_bn_relu(64, 64),
        nn.MaxPool2d(2),
        *conv_bn_relu(64, 128),
        *conv_bn_relu(128, 128),
        nn.MaxPool2d(2),
        *conv_bn_relu(128, 256),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256 * side * side, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    )


@register_model(
    "simple-cnn",
    family="cnn",
    recipe=dict(epochs=5, lr=0.05, batch_size=128, optimizer="sgd", schedule="onecycle", label_smoothing=0.0),
)
def simple_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Three conv + max-pool blocks (16, 32, 64 channels), then FC 72 with dropout: ~98K params."""
    side = image_size // 8
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 72),
        nn.ReLU(inplace=True),
        nn.Dropout(0.3),
        nn.Linear(72, num_classes),
    )
