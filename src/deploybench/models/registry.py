"""Model registry: `@register_model` stores a factory by name; `create_model` builds it for a dataset.

Every factory takes `num_classes` and `in_channels` (and optionally `image_size`) so that one
architecture builds for 1x28x28 Fashion-MNIST and 3x32x32 CIFAR alike.
"""
from __future__ import annotations

import fnmatch
import hashlib
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.nn as nn

from deploybench.errors import UserError, unknown_choice


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    factory: Callable[..., nn.Module]
    description: str = ""
    recipe: dict = field(default_factory=dict)  # default training recipe (epochs, lr, batch size, ...)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, recipe: dict | None = None):
    """Decorator registering `factory(num_classes, in_channels, image_size)` under `name`."""

    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = (inspect.getdoc(factory) or "").splitlines()
        _REGISTRY[name] = ModelInfo(name, family, factory, doc[0] if doc else "", dict(recipe or {}))
        return factory

    return wrap


def _ensure_loaded() -> None:
    # Importing the families registers them; done lazily so `registry` has no import cycle.
    import deploybench.models.zoo  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))




def get_model_info(name: str) -> ModelInfo:
    """The registered info for `name`, or for a user architecture given as `package.module:factory`."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"cannot load user architecture {name!r}: {exc}") from None
        if not callable(factory):
            raise UserError(f"user architecture {name!r} is not callable")
        return ModelInfo(name, "user", factory, "user architecture")
    raise unknown_choice("model", name, list(_REGISTRY) + ["package.module:factory"])


def user_code_digest(name: str) -> str | None:
    """sha256 of the source file that defines user architecture `name` (`package.module:factory`); None for the
    zoo, whose code is deploybench's own. A variant made from a user architecture records it, so that edited
    code trains again and never has older weights loaded into it."""
    if name in _REGISTRY or ":" not in name:
        return None
    factory = get_model_info(name).factory
    for where in (factory, type(factory), importlib.import_module(name.partition(":")[0])):
        try:
            source = inspect.getsourcefile(where)
        except TypeError:  # a built-in, or a callable instance of one
            continue
        if source:
            try:
                return hashlib.sha256(Path(source).read_bytes()).hexdigest()
            except OSError as exc:
                raise UserError(f"cannot read {source}, the source of user architecture {name!r}: "
                                f"{exc.strerror}") from None
    raise UserError(f"user architecture {name!r} has no source file to record (define it in a .py module)")


def create_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    """Build model `name` for inputs of `in_channels` x `image_size` x `image_size` and `num_classes`.

    Keyword arguments that are None are dropped, so unset CLI options never override defaults.
    """
    info = get_model_info(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(info.factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in kwargs if k not in params and not takes_any)
    if unknown:
        raise UserError(f"model {name!r} takes no {', '.join(unknown)} (its options: "
                        f"{', '.join(k for k in params if k not in ('num_classes', 'in_channels')) or 'none'})")
    if "image_size" in params or takes_any:
        kwargs["image_size"] = image_size
    model = info.factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
