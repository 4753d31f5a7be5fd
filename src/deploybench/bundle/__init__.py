"""Deployment bundles: one variant as a folder with its model, config, model card and a standalone predict.py."""

from deploybench.bundle.build import build_bundle

__all__ = ["build_bundle"]
