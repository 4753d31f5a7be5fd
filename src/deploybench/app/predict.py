"""Predict: run one image through up to four stored variants (CPU, `runnable`), top-5 per variant with the
latency of that call, and where the variants disagree."""

from __future__ import annotations

import html
import threading
import time
from collections import OrderedDict
from functools import lru_cache

import torch
from PIL import Image

from deploybench.app.inputs import to_input, to_picture
from deploybench.artifacts.runnable import runnable
from deploybench.data import dataset_info, load_splits
from deploybench.errors import UserError
from deploybench.profile.static import root_config
from deploybench.store import Variant, Workspace

MAX_VARIANTS = 4
TOP_K = 5
_LOADED: OrderedDict[str, torch.nn.Module] = OrderedDict()  # variants are immutable: an id is a cache key
_LOCK = threading.Lock()


def variant_label(v: Variant) -> str:
    """How dropdowns name a variant: model, dataset, chain, format and the id's first characters."""
    return f"{v.model} · {v.dataset} · {v.chain} · {v.format} · {v.id[:10]}"


def variant_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, id) of every stored variant, newest first: the only way a user names a variant."""
    return [(variant_label(v), v.id) for v in sorted(ws.variants(), key=lambda v: -v.created_at)]


def chosen_variants(ws: Workspace, ids) -> list[Variant]:
    """The stored variants named by `ids` (ids only, looked up in the store; anything else is refused)."""
    ids = [i for i in (ids or []) if i]
    if not ids:
        raise UserError("choose at least one variant")
    if len(ids) > MAX_VARIANTS:
        raise UserError(f"choose at most {MAX_VARIANTS} variants")
    stored = {v.id: v for v in ws.variants()}
    unknown = [str(i)[:40] for i in ids if i not in stored]
    if unknown:
        raise UserError(f"no such variant in the workspace: {', '.join(unknown)}")
    return [stored[i] for i in dict.fromkeys(ids)]


def _module(v: Variant, x: torch.Tensor) -> torch.nn.Module:
    """The variant's runnable, loaded once; a new one runs `x` once untimed, so that the latency shown is not the
    first call's (allocations, ORT's first run)."""
    with _LOCK:
        if v.id not in _LOADED:
            module = runnable(v).eval()
            with torch.no_grad():
                module(x)
            _LOADED[v.id] = module
            while len(_LOADED) > 8:
                _LOADED.popitem(last=False)
        _LOADED.move_to_end(v.id)
        return _LOADED[v.id]


@lru_cache(maxsize=4)
def _test_set(dataset: str, data_dir: str, transfer: bool):
    # never download from the app: it reads what is on disk
    return load_splits(dataset, data_dir, augment=False, transfer=transfer, download=False).test


def _transfer(ws: Workspace, v: Variant) -> bool:
    return bool(root_config(ws, v).get("transfer"))


def prepare_input(ws: Workspace, v: Variant, data_dir, image: Image.Image | None, index: int | None):
    """(input tensor, true class or None) for `v`: the user's image converted with the dataset's transforms, or
    test image `index` of the variant's dataset."""
    transfer = _transfer(ws, v)
    if image is not None:
        return to_input(image, v.dataset, data_dir, transfer), None
    if index is None:
        raise UserError("upload an image or give the index of a test image")
    test = _test_set(v.dataset, str(data_dir), transfer)
    if not 0 <= int(index) < len(test):
        raise UserError(f"test image index {int(index)} is out of range: {v.dataset} has {len(test)} test images")
    x, label = test[int(index)]
    return x, int(label)


def predict_one(v: Variant, x: torch.Tensor, classes) -> dict:
    """Top-5 of one variant on one image (a batch of one, CPU) and the latency of that call in ms."""
    batch = x.unsqueeze(0).float()
    module = _module(v, batch)
    with torch.no_grad():
        start = time.perf_counter()
        logits = module(batch)
        latency_ms = (time.perf_counter() - start) * 1000
    probs = torch.softmax(logits.float().reshape(1, -1), dim=1)[0]
    top = probs.topk(min(TOP_K, probs.numel()))
    return dict(
        variant=v.id,
        label=variant_label(v),
        latency_ms=latency_ms,
        top=[
            dict(index=int(i), name=_class_name(classes, int(i)), prob=float(p))
            for p, i in zip(top.values, top.indices, strict=True)
        ],
    )


def _class_name(classes, i: int) -> str:
    return classes[i] if 0 <= i < len(classes) else f"class {i}"


def predict(ws: Workspace, data_dir, ids, image: Image.Image | None = None, index: int | None = None) -> dict:
    """Run every chosen variant on the image. Returns {input: pixels the first variant sees, truth, results:
    one `predict_one` dict per variant, disagree: whether their top-1 classes differ}."""
    variants = chosen_variants(ws, ids)
    results, picture, truth = [], None, None
    for v in variants:
        x, label = prepare_input(ws, v, data_dir, image, index)
        classes = list(dataset_info(v.dataset, data_dir).classes)
        if picture is None:
            picture = to_picture(x, v.dataset, data_dir, _transfer(ws, v))
            truth = None if label is None else _class_name(classes, label)
        results.append(predict_one(v, x, classes))
    top1 = {r["top"][0]["name"] for r in results}
    return dict(input=picture, truth=truth, results=results, disagree=len(top1) > 1)


def results_html(out: dict) -> str:
    """The results side by side: one column per variant, its top-5 and latency; a top-1 that differs from the
    first variant's is highlighted."""
    first = out["results"][0]["top"][0]["name"]
    cols = []
    for r in out["results"]:
        top1 = r["top"][0]["name"]
        odd = " disagree" if top1 != first else ""
        rows = "".join(f"<tr><td>{html.escape(t['name'])}</td><td>{100 * t['prob']:.1f}%</td></tr>" for t in r["top"])
        cols.append(
            f"<div class='db-variant{odd}' data-variant='{html.escape(r['variant'])}' style='flex:1;min-width:200px;"
            f"padding:8px;border:2px solid {'#d9534f' if odd else '#ccc'};border-radius:6px'>"
            f"<div style='font-size:0.85em'>{html.escape(r['label'])}</div>"
            f"<div>top-1: <b class='db-top1'>{html.escape(top1)}</b></div>"
            f"<div class='db-latency'>{r['latency_ms']:.2f} ms</div>"
            f"<table>{rows}</table></div>"
        )
    note = (
        "<p class='db-disagree' style='color:#d9534f'><b>The variants disagree on the top-1 class.</b></p>"
        if out["disagree"]
        else "<p class='db-agree'>All variants agree on the top-1 class.</p>"
    )
    truth = f"<p>true class: <b>{html.escape(out['truth'])}</b></p>" if out.get("truth") else ""
    return f"{truth}{note}<div style='display:flex;gap:8px;flex-wrap:wrap'>{''.join(cols)}</div>"
