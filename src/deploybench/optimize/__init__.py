"""Optimize stages (quantize, prune, export): variant in, new variant out."""
