"""The self-contained HTML Pareto report, built from the workspace store alone."""

from deploybench.report.html import build_report

__all__ = ["build_report"]
