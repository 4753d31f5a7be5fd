"""Imports every model family so that each registers itself."""

from deploybench.models import cnn, lenet, mobilenet, resnet, vit  # noqa: F401
