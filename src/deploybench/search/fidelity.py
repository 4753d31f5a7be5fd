"""The fidelity schedule: two rungs of successive halving over trials, run inside each trial.

Fine-tuning after pruning is the one costly step of a recipe (minutes per epoch where everything else takes
seconds), and latency does not depend on it: the pruned shapes are fixed before fine-tuning starts. So a recipe
that fine-tunes is first made at low fidelity (rung 0: one epoch over `screen_fraction` of the training images,
accuracy on the first `screen_val_images` validation images) and is promoted to full fine-tuning (rung 1) only
when its rung-0 result ranks in the best 1/`eta` of all rung-0 results so far (asynchronous successive halving,
ASHA's rule, with NSGA-II's order for two objectives). Optuna's pruners cannot do this: `Trial.report` is
refused in multi-objective studies. Why these numbers: docs/search.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from deploybench.errors import UserError


@dataclass(frozen=True)
class Fidelity:
    screen_fraction: float = 0.2  # rung 0 fine-tunes one epoch over this share of the training images
    screen_val_images: int = 1000  # rung 0 measures accuracy on this many validation images
    eta: int = 3  # promote the best 1/eta of the rung-0 results
    slack_pts: float = 5.0  # a rung-0 drop this far above the budget is not promoted: short fine-tuning
    #                                 recovers a few points, not tens

    def __post_init__(self):
        if not 0 < self.screen_fraction <= 1 or self.screen_val_images < 1 or self.eta < 1 or self.slack_pts < 0:
            raise UserError(f"fidelity out of range: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def _dominates(a: dict, b: dict) -> bool:
    """Whether rung-0 point `a` is at least as fast and as accurate as `b` and better in one."""
    return (
        a["speedup"] >= b["speedup"]
        and a["val_top1"] >= b["val_top1"]
        and (a["speedup"] > b["speedup"] or a["val_top1"] > b["val_top1"])
    )


def pareto_order(points: list[dict]) -> list[dict]:
    """`points` in NSGA-II's order: by non-dominated front, then by speed-up within a front."""
    left, ordered = list(points), []
    while left:
        front = [p for p in left if not any(_dominates(q, p) for q in left if q is not p)]
        ordered += sorted(front, key=lambda p: -p["speedup"])
        left = [p for p in left if all(p is not f for f in front)]
    return ordered


def promotion(point: dict, peers: list[dict], budget_pts: float, fidelity: Fidelity) -> tuple[bool, str]:
    """Whether a rung-0 `point` (speedup, val_top1, val_drop_pts) goes on to full fidelity, and why.

    Args:
        peers: the other rung-0 points of the study so far (any worker's).
        budget_pts: the study's accuracy budget in points.
    Returns:
        (promoted, reason).
    """
    limit = budget_pts + fidelity.slack_pts
    if point["val_drop_pts"] > limit:
        return False, f"loses {point['val_drop_pts']:.2f} pts at rung 0, more than budget + slack ({limit:g})"
    field = [p for p in peers if p["val_drop_pts"] <= limit] + [point]
    keep = math.ceil(len(field) / fidelity.eta)
    place = next(i for i, p in enumerate(pareto_order(field)) if p is point)
    if place < keep:
        return True, f"ranks {place + 1} of {len(field)} at rung 0 (the best {keep} go on)"
    return False, f"ranks {place + 1} of {len(field)} at rung 0 (only the best {keep} go on)"
