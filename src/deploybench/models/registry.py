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
    """The registered info for `name`, or for a user architecture given as `package.module:factory`.

    Raises UserError for an unknown name, and for a user architecture that cannot be imported or is no factory
    (`_user_factory`): nothing it names is called here.
    """
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return ModelInfo(name, "user", _user_factory(name), "user architecture")
    raise unknown_choice("model", name, list(_REGISTRY) + ["package.module:factory"])


# The arguments every factory is called with (`create_model`).
REQUIRED_ARGS = ("num_classes", "in_channels")


def _user_factory(name: str) -> Callable[..., nn.Module]:
    """The factory `package.module:factory` names, checked before anything calls it: an nn.Module class, or a
    function written in Python, whose signature names `num_classes` and `in_channels`. A built-in (`os:system`)
    or a function that takes anything (`subprocess:run`, via **kwargs) is refused, never called with our
    arguments."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"user architecture {name!r} must be package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a module runs arbitrary code at import: a SyntaxError, a raise, exit()
        raise UserError(
            f"cannot load user architecture {name!r}: importing {module_name} failed: {_one_line(exc)}"
        ) from None
    try:
        factory = getattr(module, attr)
    except Exception:  # AttributeError, or whatever a module's own __getattr__ raises
        raise UserError(f"cannot load user architecture {name!r}: module {module_name} has no {attr!r}") from None
    _check_factory(name, factory)
    return factory


def _check_factory(name: str, factory) -> None:
    """Refuse a `factory` that is not an nn.Module class or a Python function from a source file, or whose
    signature cannot take `num_classes` and `in_channels` by name."""
    attr = name.partition(":")[2]
    is_module_class = inspect.isclass(factory) and issubclass(factory, nn.Module)
    if not (is_module_class or inspect.isfunction(factory)) or not _source_file(factory):
        raise UserError(
            f"user architecture {name!r} is a {type(factory).__name__}, not an nn.Module class or a "
            f"function returning one, defined in a Python source file"
        )
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as exc:
        raise UserError(f"user architecture {name!r} has no signature to check: {_one_line(exc)}") from None
    # By name only: **kwargs would take anything, and a positional-only parameter cannot be passed by name.
    named = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    absent = [arg for arg in REQUIRED_ARGS if arg not in named]
    if absent:
        raise UserError(
            f"user architecture {name!r} must take {' and '.join(REQUIRED_ARGS)} by name; "
            f"{attr}{inspect.signature(factory)} has no {' or '.join(absent)}"
        )


def _source_file(obj) -> str | None:
    """The Python source file that defines `obj`, or None (a built-in, code made by exec)."""
    try:
        return inspect.getsourcefile(obj)
    except TypeError:
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


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
                raise UserError(
                    f"cannot read {source}, the source of user architecture {name!r}: {exc.strerror}"
                ) from None
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
        raise UserError(
            f"model {name!r} takes no {', '.join(unknown)} (its options: "
            f"{', '.join(k for k in params if k not in ('num_classes', 'in_channels')) or 'none'})"
        )
    if "image_size" in params or takes_any:
        kwargs["image_size"] = image_size
    model = _build(info, num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _build(info: ModelInfo, **kwargs):
    """`info.factory(**kwargs)`; a user architecture that fails to build is one line (the zoo's own failures are
    bugs, and keep their traceback)."""
    if info.family != "user":
        return info.factory(**kwargs)
    try:
        return info.factory(**kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"user architecture {info.name!r} failed to build: {_one_line(exc)}") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
