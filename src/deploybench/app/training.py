"""Training: learning curves and confusion matrix of a trained variant, drawn from its training.json numbers."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from deploybench.app.predict import variant_label
from deploybench.errors import UserError
from deploybench.store import Workspace
from deploybench.train.plots import confusion_figure, learning_curves_figure

_HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "train_top1", "val_top1")


def trained_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, id) of every trained variant (the training runs that finished with a variant), newest first."""
    trained = [v for v in ws.variants() if v.stage == "train" and "training.json" in v.files]
    return [(variant_label(v), v.id) for v in sorted(trained, key=lambda v: -v.created_at)]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def training_record(ws: Workspace, variant_id: str | None) -> dict:
    """The parsed training.json of a stored trained variant; UserError when there is none or it is damaged."""
    v = ws.find_variant(str(variant_id)) if variant_id else None
    if v is None or v.stage != "train":
        raise UserError("choose a trained variant")
    path = v.path / "training.json"
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise UserError(f"variant {v.id[:12]} has no readable training record (training.json)") from None
    history, classes = record.get("history") if isinstance(record, dict) else None, record.get("classes")
    confusion = record.get("confusion")
    ok = (
        isinstance(history, list)
        and all(isinstance(h, dict) and all(_number(h.get(k)) for k in _HISTORY_KEYS) for h in history)
        and isinstance(classes, list)
        and all(isinstance(c, str) for c in classes)
        and isinstance(confusion, list)
        and len(confusion) == len(classes)
        and all(isinstance(r, list) and len(r) == len(classes) and all(_number(c) for c in r) for r in confusion)
    )
    if not ok:
        raise UserError(f"the training record of variant {v.id[:12]} is damaged; the figures cannot be drawn")
    return record


def training_figures(ws: Workspace, variant_id: str | None):
    """(learning curves, confusion matrix) matplotlib figures of one trained variant."""
    record = training_record(ws, variant_id)
    curves = learning_curves_figure(record["history"])
    confusion = confusion_figure(record["confusion"], record["classes"])
    for fig in (curves, confusion):  # Gradio renders the figure itself; pyplot need not keep it alive
        plt.close(fig)
    return curves, confusion
