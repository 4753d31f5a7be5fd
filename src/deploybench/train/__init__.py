"""Training: the engine (train_one_epoch, evaluate, fit), recipes, and `train_model` which records the variant."""

from deploybench.train.engine import TrainingInterrupted, evaluate, fit, train_one_epoch
from deploybench.train.recipes import Recipe, default_recipe

__all__ = ["Recipe", "TrainingInterrupted", "default_recipe", "evaluate", "fit", "train_one_epoch"]
