"""Accuracy: top-1 and top-5 on the full test split, computed through the backend being profiled."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from deploybench.data import load_splits


def test_split(dataset: str, data_dir, transfer: bool = False):
    """The dataset's full test split with evaluation transforms."""
    return load_splits(dataset, data_dir, augment=False, transfer=transfer).test


def backend_accuracy(backend, test_set, batch_size: int) -> dict:
    """Top-1/top-5 of `backend` (already loaded for `batch_size`) on every image of `test_set`.

    Batches go through `backend.prepare`/`run`/`logits`. The last, partial batch is padded to `batch_size`
    with zeros (and the padding's outputs dropped): fixed-shape ONNX models and static-shape compiled modules
    see only the shape they were built for."""
    correct1 = correct5 = total = 0
    for images, labels in DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=0):
        n = images.shape[0]
        if n < batch_size:
            images = torch.cat([images, images.new_zeros(batch_size - n, *images.shape[1:])])
        logits = backend.logits(backend.run(backend.prepare(images.float())))[:n]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels.view(-1, 1)
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        total += n
    return dict(
        accuracy_top1=correct1 / total if total else None,
        accuracy_top5=correct5 / total if total else None,
        test_images=total,
    )
