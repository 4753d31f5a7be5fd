"""Accuracy: top-1 and top-5 on the full test split, computed through the backend being profiled.

A stage evaluates each variant it makes through `evaluate_variant` too: the backend its format runs on here
(`evaluating_backend`), at `ACCURACY_BATCH_SIZE` and the profile's default threads, so its predictions are the
ones the profile's accuracy pass on that backend would compute. `stage_accuracy` tells the profile when a
variant's recorded evaluation can stand for that pass (the same backend, batch size, threads, data files, and
code on the same machine) and it is not made again.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from deploybench.artifacts import formats
from deploybench.data import load_splits
from deploybench.models.scoring import eval_result
from deploybench.platform.env import environment, physical_cores, same_setup
from deploybench.profile.backends import get_backend
from deploybench.store import Variant

# The profile's default batch sizes; its accuracy pass runs at the largest one, and so does a stage's.
DEFAULT_BATCH_SIZES = (1, 64)
ACCURACY_BATCH_SIZE = max(DEFAULT_BATCH_SIZES)
_SCORES = ("accuracy_top1", "accuracy_top5", "test_images")


def test_split(dataset: str, data_dir, transfer: bool = False):
    """The dataset's full test split with evaluation transforms."""
    return load_splits(dataset, data_dir, augment=False, transfer=transfer).test


def backend_logits(backend, images, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, classes] float32, labels [N]) of `backend` (already loaded for `batch_size`) on every image
    of the dataset `images`, in order.

    Batches go through `backend.prepare`/`run`/`logits`. The last, partial batch is padded to `batch_size`
    with zeros (and the padding's outputs dropped): fixed-shape ONNX models and static-shape compiled modules
    see only the shape they were built for."""
    outputs, labels = [], []
    for x, y in DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0):
        n = x.shape[0]
        if n < batch_size:
            x = torch.cat([x, x.new_zeros(batch_size - n, *x.shape[1:])])
        outputs.append(backend.logits(backend.run(backend.prepare(x.float())))[:n])
        labels.append(y)
    if not outputs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(labels)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """A row's accuracy keys: top-1/top-5 (fractions; None without images) and the image count of `logits`
    against `labels`, scored as everywhere else (`models.scoring`)."""
    if not len(labels):
        return dict(accuracy_top1=None, accuracy_top5=None, test_images=0)
    result = eval_result(logits, labels, logits.shape[1])
    return dict(accuracy_top1=result.top1, accuracy_top5=result.top5, test_images=result.images)


def backend_accuracy(backend, test_set, batch_size: int) -> dict:
    """Top-1/top-5 of `backend` (already loaded for `batch_size`) on every image of `test_set`."""
    return scores(*backend_logits(backend, test_set, batch_size))


def evaluating_backend(variant: Variant) -> str:
    """The backend a stage evaluates `variant` on: its format's own runtime, on the CPU (where int8 programs
    run and the profile measures by default), except fp16/bf16 modules, which run on the GPU when there is one
    (fp16 is a GPU method; without native support a CPU emulates both, many times slower than fp32)."""
    if variant.format in formats.ONNX_FORMATS:
        return "ort-cpu"
    if variant.format in formats.OPENVINO_FORMATS:
        return "openvino-cpu"
    half = variant.format in formats.HALF_FORMATS
    return "torch-cuda" if half and torch.cuda.is_available() else "torch-cpu"


def evaluate_variant(variant: Variant, images, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(logits, labels, record) of `variant` on the dataset `images` through `evaluating_backend(variant)` in
    this process, at `ACCURACY_BATCH_SIZE` with `threads` (default: the profile's, the physical cores).

    The record says what computed them (backend, batch size, threads, the environment as the profile stores
    it) and how long loading and the pass took, so that `stage_accuracy` can tell whether a profile's pass would
    compute them again. Torch's own thread count is restored afterwards (a backend sets it for the data pipeline
    around the model)."""
    threads = threads or physical_cores()
    name = evaluating_backend(variant)
    cls = get_backend(name)
    cls.preload()
    impl, before = cls(), torch.get_num_threads()
    started = time.perf_counter()
    try:
        impl.load(variant, ACCURACY_BATCH_SIZE, threads)
        logits, labels = backend_logits(impl, images, ACCURACY_BATCH_SIZE)
    finally:
        impl.close()
        torch.set_num_threads(before)
    record = dict(
        backend=name,
        batch_size=ACCURACY_BATCH_SIZE,
        threads=threads,
        environment=environment(threads),
        seconds=time.perf_counter() - started,  # what a profile that takes this pass from the stage saves
    )
    return logits, labels, record


def stage_accuracy(variant: Variant, backend: str, batch_size: int, env: dict, data_sha256: str | None) -> dict:
    """The accuracy keys of a profile row (`_SCORES` and `accuracy_batch_size`) taken from the test-split
    evaluation `variant` records from its stage (`accuracy_evaluated_by`), when that evaluation is the pass the
    profile would make: on `backend` at `batch_size`, on the data files `data_sha256` (`data_keys`: None for the
    published files), by the same code on the same machine with the same threads (`env`: the profile's
    `environment(threads)`, compared by `same_setup`). Else {}."""
    by = variant.metrics.get("accuracy_evaluated_by") or {}
    if (
        by.get("backend") != backend
        or by.get("batch_size") != batch_size
        or variant.config.get("data_sha256") != data_sha256
        or not same_setup(by.get("environment") or {}, env)
        or any(variant.metrics.get(k) is None for k in _SCORES)
    ):
        return {}
    return dict({k: variant.metrics[k] for k in _SCORES}, accuracy_batch_size=batch_size, accuracy_source="stage")
