"""How a classifier's logits are scored against labels: loss, top-1, top-5 and the confusion matrix.

One scorer for every accuracy the suite reports (training's validation, a stage's test pass, the profile's
accuracy pass), so that a top-1 computed in one place and taken over by another is the same number, ties
included. It lives here, below both `train` and `profile`, because both score and neither may import the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deploybench.errors import UserError


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor  # [true, predicted] counts

    @property
    def images(self) -> int:
        """How many images were scored."""
        return int(self.confusion.sum())

    def per_class(self) -> list[dict]:
        """Precision, recall and F1 of every class from the confusion matrix."""
        cm = self.confusion.double()
        tp, pred, true = cm.diag(), cm.sum(0), cm.sum(1)
        prec = torch.where(pred > 0, tp / pred.clamp(min=1), torch.zeros_like(tp))
        rec = torch.where(true > 0, tp / true.clamp(min=1), torch.zeros_like(tp))
        f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-12), torch.zeros_like(tp))
        return [
            dict(precision=float(p), recall=float(r), f1=float(f), support=int(s))
            for p, r, f, s in zip(prec, rec, f1, true, strict=True)
        ]


class Scorer:
    """Scores batches as they come (`add`), keeping counts rather than logits, and gives the `result`."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.loss_sum = 0.0
        self.top5_hits = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Score `logits` [n, classes] against `labels` [n]."""
        if not len(labels):
            return
        logits, labels = logits.float(), labels.long()
        k = self.num_classes
        if logits.shape[1] != k or int(labels.min()) < 0 or int(labels.max()) >= k:
            raise UserError(
                f"the model gives {logits.shape[1]} outputs for {k} classes and the labels run from "
                f"{int(labels.min())} to {int(labels.max())}: the model's head does not fit this dataset"
            )
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        # Top-1 is the first of the top-5, not a separate argmax: on tied logits the two could pick different
        # classes and count an image a top-1 hit and a top-5 miss.
        top = logits.topk(min(5, k), 1).indices
        self.top5_hits += int((top == labels[:, None]).any(1).sum())
        self.confusion += torch.bincount(labels * k + top[:, 0], minlength=k * k).view(k, k)

    def result(self) -> EvalResult:
        """Mean loss, top-1, top-5 (fractions; 0 without images) and the confusion matrix so far."""
        seen = int(self.confusion.sum())
        if not seen:
            return EvalResult(0.0, 0.0, 0.0, self.confusion.clone())
        top1 = int(self.confusion.diag().sum()) / seen
        return EvalResult(self.loss_sum / seen, top1, self.top5_hits / seen, self.confusion.clone())


def eval_result(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix of `logits` [N, classes] against `labels` [N]."""
    scorer = Scorer(num_classes)
    scorer.add(logits, labels)
    return scorer.result()
