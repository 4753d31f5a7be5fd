"""Model identity: what rebuilds an architecture for a dataset, recorded in every variant's config, and the
check that a user architecture's code is still the code its weights were made with."""

from __future__ import annotations

import torch

from deploybench.errors import UserError
from deploybench.models.registry import create_model, user_code_digest


def model_config(model: str, info, transfer: bool = False) -> dict:
    """What `build_model` needs to rebuild an architecture for a dataset (recorded in every variant); a user
    architecture adds the digest of its source (`user_code_digest`)."""
    config = dict(
        arch=model,
        num_classes=info.num_classes,
        in_channels=3 if transfer else info.in_channels,
        image_size=224 if transfer else info.image_size,
        transfer=transfer,
        mean=list(info.mean),
        std=list(info.std),
    )
    code = user_code_digest(model)
    return config if code is None else dict(config, arch_sha256=code)


def code_changed(config: dict) -> bool:
    """Whether `config` was made from a user architecture whose source file has changed since."""
    recorded = config.get("arch_sha256")
    return recorded is not None and user_code_digest(config["arch"]) != recorded


def build_model(config: dict) -> torch.nn.Module:
    """The architecture `config` records, refused when it is a user architecture whose code has changed since:
    weights whose names and shapes still fit would load into other code."""
    if code_changed(config):
        raise UserError(
            f"the code of user architecture {config['arch']!r} changed since this variant was made; "
            f"its weights belong to the earlier code (train it again)"
        )
    return create_model(config["arch"], config["num_classes"], config["in_channels"], config["image_size"])
