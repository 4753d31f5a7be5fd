"""Variant formats: how each kind of artifact reloads in a fresh process, without unpickling code.

A format registers a loader that returns a runnable `torch.nn.Module` (torch formats) or nothing for
formats that only non-torch runtimes run (ONNX). Backends ask `load_module` / `onnx_path` and skip a
variant whose format they cannot run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch.nn as nn

from deploybench.errors import UserError
from deploybench.store import Variant

_TORCH_LOADERS: dict[str, Callable[[Variant], nn.Module]] = {}
ONNX_FORMATS = {"onnx"}


class UnsupportedFormat(Exception):
    """This runtime cannot run a variant of this format (a recorded skip, not an error)."""


def register_format(name: str):
    """Decorator registering `loader(variant) -> nn.Module` for format `name`."""

    def wrap(loader):
        _TORCH_LOADERS[name] = loader
        return loader

    return wrap


def torch_formats() -> set[str]:
    return set(_TORCH_LOADERS)


def load_module(variant: Variant) -> nn.Module:
    """The variant as a torch module in eval mode."""
    if variant.format not in _TORCH_LOADERS:
        raise UnsupportedFormat(f"format {variant.format} has no torch loader")
    return _TORCH_LOADERS[variant.format](variant).eval()


def onnx_path(variant: Variant) -> Path:
    if variant.format not in ONNX_FORMATS:
        raise UnsupportedFormat(f"format {variant.format} is not ONNX")
    path = variant.path / "model.onnx"
    if not path.is_file():
        raise UserError(f"variant {variant.id}: {path} is missing")
    return path


@register_format("torch-state")
def _load_torch_state(variant: Variant) -> nn.Module:
    from deploybench.models.checkpoint import extract_state_dict, load_checkpoint, load_weights
    from deploybench.train.run import build_model

    model = build_model(variant.config)
    return load_weights(model, extract_state_dict(load_checkpoint(variant.path / "model.pt")), str(variant.path))
