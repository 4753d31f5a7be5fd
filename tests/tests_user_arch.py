"""A user architecture module for the `package.module:factory` tests."""

import torch
import torch.nn as nn


def tiny(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def not_a_module(num_classes, in_channels):
    return "nope"


class _Broken(nn.Module):
    """Builds like any model and fails on its first forward, as a user architecture with a bug would."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this architecture is broken")


def broken(num_classes, in_channels):
    return _Broken(num_classes)
