"""Profiling: static metrics, latency, memory, accuracy and % of peak for every (variant, backend, batch size),
stored in the workspace; `compare_rows` reads them back with baselines and the Pareto front."""

from deploybench.profile.compare import compare_rows, render
from deploybench.profile.pareto import mark_pareto, pareto_front
from deploybench.profile.runner import profile_variants

__all__ = ["compare_rows", "mark_pareto", "pareto_front", "profile_variants", "render"]
