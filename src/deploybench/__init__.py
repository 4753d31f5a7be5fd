"""deploybench: train image classifiers, optimize them for deployment, and profile every variant."""

__version__ = "0.1.0"
