"""Training recipes: each architecture's defaults (in the model registry), overridden by CLI options."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from deploybench.errors import UserError
from deploybench.models import get_model_info


@dataclass(frozen=True)
class Recipe:
    epochs: int = 5
    lr: float = 0.05  # peak learning rate (OneCycle) or initial (cosine, step)
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (momentum 0.9, Nesterov) | adamw
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine | step (x0.1 at 50% and 75% of training)
    label_smoothing: float = 0.0
    seed: int = 0
    channels_last: bool = True
    cutout: int = 0  # side of the square erased by cutout, in pixels (0 = off)
    augment: bool = True
    limit_train: int = 0  # train on the first N shuffled training images (0 = all); for quick runs
    checkpoint_every: int = 200  # also checkpoint every N steps, so a killed run loses little
    # Train for the steps that fit in this many minutes instead of `epochs` (0 = off); see engine._BudgetPlanner.
    budget_minutes: float = 0.0

    def __post_init__(self):
        """Refuse values no run can use, with the CLI option's name, before anything is loaded or recorded."""

        def bad(field: str, rule: str):
            raise UserError(f"--{field.replace('_', '-')} must be {rule}, got {getattr(self, field)}")

        for field in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, field) < 1:
                bad(field, "1 or more")
        for field in ("weight_decay", "cutout", "limit_train"):
            if getattr(self, field) < 0:
                bad(field, "0 or more")
        # NaN fails every comparison (`x < 0` lets it through) and infinity passes `> 0`: both train NaN weights.
        if not math.isfinite(self.weight_decay):
            bad("weight_decay", "0 or more and finite")
        if not (self.budget_minutes >= 0 and math.isfinite(self.budget_minutes)):
            bad("budget_minutes", "0 or more and finite")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", "above 0 and finite")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "in [0, 1)")
        if not 0 <= self.seed < 2**32:
            bad("seed", "in [0, 2**32)")

    def to_dict(self) -> dict:
        return asdict(self)


RECIPE_KEYS = {f.name for f in fields(Recipe)}


def recipe_from_config(recipe: dict) -> Recipe:
    """The Recipe a variant's stored config holds; keys of fields that no longer exist are dropped."""
    return Recipe(**{k: v for k, v in recipe.items() if k in RECIPE_KEYS})


def default_recipe(model: str, **overrides) -> Recipe:
    """The model's registered recipe with `overrides` applied; overrides that are None are ignored."""
    base = {k: v for k, v in get_model_info(model).recipe.items() if k in RECIPE_KEYS}
    base.update({k: v for k, v in overrides.items() if v is not None and k in RECIPE_KEYS})
    return Recipe(**base)
