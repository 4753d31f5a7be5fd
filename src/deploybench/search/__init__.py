"""`deploybench search`: Optuna proposes recipes of the optimize stages, each trial's variant is made by the stages
(so a repeated recipe costs nothing) and measured on the validation split and the target backend; the result is a
front, a winner within an accuracy budget and its paired comparison with `optimize all`. See docs/search.md."""

from deploybench.search.fidelity import Fidelity
from deploybench.search.measure import LatencyProtocol
from deploybench.search.results import render_summary, summary_path
from deploybench.search.space import BACKEND_SPACES, TrialRecipe, search_space
from deploybench.search.study import SearchInterrupted, SearchSpec, check_spec, run_search

__all__ = [
    "BACKEND_SPACES",
    "Fidelity",
    "LatencyProtocol",
    "SearchInterrupted",
    "SearchSpec",
    "TrialRecipe",
    "check_spec",
    "render_summary",
    "run_search",
    "search_space",
    "summary_path",
]
