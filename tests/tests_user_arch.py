"""A user architecture module for the `package.module:factory` tests."""
import torch.nn as nn


def tiny(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def not_a_module(num_classes, in_channels):
    return "nope"
