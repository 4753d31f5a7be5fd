"""The Pareto front, with noise: a point is dominated only when another is better beyond measurement noise.

Each objective says which way is better and when a difference is beyond noise:
- latency (`latency_ms_p50`, minimize): better only when the 95% intervals of the medians do not overlap
  (a's upper bound below b's lower bound);
- accuracy (`accuracy_top1`, maximize): better only when the difference exceeds one standard error of a
  proportion on the test set, sqrt(p(1-p)/n) with p the mean of the two and n the test images (both are
  evaluated on the same images, so the paired noise is smaller than two independent errors; one standard
  error is a simple, conservative middle);
- size and MACs (minimize) are exact counts: any difference counts.
a dominates b when a is not worse than b beyond noise on every objective and better beyond noise on one.
Rows missing an objective's value are never on the front (and never dominate). Nor, on a front with a timed
objective (latency), are rows whose timing is not stable (`stable` False): their interval does not bound the
true latency, so they can neither win nor make another row lose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class Objective:
    key: str
    maximize: bool
    beyond_noise: Callable[[dict, dict], bool]  # is a better than b beyond noise?
    timed: bool = False  # a timing: only a stable measurement counts

    def value(self, row: dict):
        return row.get(self.key)

    def usable(self, row: dict) -> bool:
        """Whether `row` can be compared on this objective: it has a value, and a stable one when timed."""
        return self.value(row) is not None and not (self.timed and row.get("stable") is False)


def _latency_better(a: dict, b: dict) -> bool:
    ci_a, ci_b = a.get("latency_ms_ci95"), b.get("latency_ms_ci95")
    if ci_a and ci_b:
        return ci_a[1] < ci_b[0]
    return a["latency_ms_p50"] < b["latency_ms_p50"]


def accuracy_noise(a: dict, b: dict) -> float:
    """One standard error of a proportion at the two rows' mean accuracy on the test set."""
    n = min(a.get("test_images") or 0, b.get("test_images") or 0)
    if n <= 0:
        return 0.0
    p = (a["accuracy_top1"] + b["accuracy_top1"]) / 2
    return math.sqrt(p * (1 - p) / n)


def _accuracy_better(a: dict, b: dict) -> bool:
    return a["accuracy_top1"] - b["accuracy_top1"] > accuracy_noise(a, b)


def _exact(key: str) -> Callable[[dict, dict], bool]:
    return lambda a, b: a[key] < b[key]


ACCURACY = Objective("accuracy_top1", True, _accuracy_better)
LATENCY = Objective("latency_ms_p50", False, _latency_better, timed=True)
SIZE = Objective("size_bytes", False, _exact("size_bytes"))
MACS = Objective("macs", False, _exact("macs"))
DEFAULT_OBJECTIVES = (ACCURACY, LATENCY)


def usable(row: dict, objectives: Iterable[Objective]) -> bool:
    """Whether `row` can be on a front of `objectives` (and dominate on it): see `Objective.usable`."""
    return all(o.usable(row) for o in objectives)


def dominates(a: dict, b: dict, objectives: Iterable[Objective] = DEFAULT_OBJECTIVES) -> bool:
    """Whether `a` is not worse than `b` beyond noise on every objective and better beyond noise on one; a row
    that is not `usable` dominates nothing."""
    objectives = list(objectives)
    return (
        usable(a, objectives)
        and all(not o.beyond_noise(b, a) for o in objectives)
        and any(o.beyond_noise(a, b) for o in objectives)
    )


def pareto_front(rows: list[dict], objectives: Iterable[Objective] = DEFAULT_OBJECTIVES) -> list[bool]:
    """For each row, whether it is on the front among `rows` (compare within one dataset, backend and batch size)."""
    objectives = list(objectives)
    valid = [usable(r, objectives) for r in rows]
    return [
        ok and not any(valid[j] and j != i and dominates(rows[j], r, objectives) for j in range(len(rows)))
        for i, (r, ok) in enumerate(zip(rows, valid, strict=True))
    ]


def mark_pareto(
    rows: list[dict],
    objectives: Iterable[Objective] = DEFAULT_OBJECTIVES,
    group_by: tuple[str, ...] = ("dataset", "backend", "batch_size"),
    key: str = "pareto",
) -> list[dict]:
    """Set `row[key]` to front membership within each group of `group_by` (in place; returns rows)."""
    objectives = list(objectives)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(g) for g in group_by), []).append(r)
    for members in groups.values():
        for r, on in zip(members, pareto_front(members, objectives), strict=True):
            r[key] = on
    return rows
