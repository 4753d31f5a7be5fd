"""`deploybench bundle VARIANT --out DIR`: a folder a deployment engineer takes away: the model in its runtime's
format, config.json, a model card (README.md), predict.py and requirements.txt. Built beside DIR, then renamed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from deploybench.bundle.card import model_card
from deploybench.bundle.model_files import write_model
from deploybench.bundle.predict_py import predict_script
from deploybench.data import dataset_info
from deploybench.errors import UserError
from deploybench.profile.compare import compare_rows, measurement_machine
from deploybench.profile.static import input_shape, root_config
from deploybench.store import Variant, Workspace
from deploybench.store.atomic import fsync_dir, fsync_tree, temp_dir_for

_MEASURED_KEYS = (
    "backend",
    "device",
    "batch_size",
    "threads",
    "accuracy_top1",
    "accuracy_top5",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "throughput_per_s",
    "stable",
)
_BACKEND_PREFIX = {"onnxruntime": "ort", "torch": "torch", "openvino": "openvino"}


def check_out_dir(out: str | os.PathLike) -> Path:
    """`out` as a new bundle folder: it may not exist yet, or be an empty folder."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; name a new folder for the bundle")
    return out


def _machines(ws: Workspace, v: Variant) -> dict[str, dict]:
    """{machine slug: its environment (CPU, GPU, versions)} of the variant's measurements."""
    return {measurement_machine(m): m["environment"] for m in ws.measurements(v.id)}


def measured(ws: Workspace, v: Variant) -> list[dict]:
    """The variant's latest stored measurements, one per (machine, backend, batch size), with the machine named."""
    envs = _machines(ws, v)
    rows = []
    for r in compare_rows(ws, include_skipped=False):
        if r["variant"] == v.id:
            env = envs.get(r["machine"], {})
            rows.append(
                dict(
                    {k: r.get(k) for k in _MEASURED_KEYS},
                    machine=r["machine"],
                    cpu_model=env.get("cpu_model"),
                    gpu=env.get("gpu"),
                )
            )
    return rows


def expected_accuracy(v: Variant, rows: list[dict], runtime: str) -> dict:
    """Top-1/top-5 on the test split: measured on the bundle's runtime when it was, else on any, else as recorded."""
    with_acc = [r for r in rows if r["accuracy_top1"] is not None]
    same = [r for r in with_acc if r["backend"].startswith(_BACKEND_PREFIX[runtime])]
    for r in same or with_acc:
        return dict(top1=r["accuracy_top1"], top5=r["accuracy_top5"], backend=r["backend"], machine=r["machine"])
    if v.metrics.get("accuracy_top1") is not None:
        return dict(top1=v.metrics["accuracy_top1"], top5=v.metrics.get("accuracy_top5"), backend=None, machine=None)
    return {}


def bundle_config(ws: Workspace, v: Variant, model, data_dir=None) -> dict:
    """config.json: input, normalization, classes, runtime, expected accuracy and latency, lineage."""
    cfg = root_config(ws, v)
    info = dataset_info(v.dataset, data_dir)
    c, h, w = input_shape(cfg)
    rows = measured(ws, v)
    return dict(
        variant=v.id,
        model=v.model,
        dataset=v.dataset,
        format=v.format,
        chain=v.chain,
        model_file=model.model_file,
        files=model.files,
        input=dict(
            name="input",
            shape=[1, c, h, w],
            layout="NCHW",
            dtype="float32",
            batch=model.batch,
            scale="pixels / 255, then (x - mean) / std per channel",
            color="grayscale" if c == 1 else "RGB",
        ),
        mean=list(cfg.get("mean", info.mean)),
        std=list(cfg.get("std", info.std)),
        classes=list(info.classes),
        runtime=dict(name=model.runtime, version=model.runtime_version, opset=model.opset),
        expected=dict(
            accuracy=expected_accuracy(v, rows, model.runtime),
            latency=[
                {
                    k: r[k]
                    for k in (
                        "machine",
                        "cpu_model",
                        "gpu",
                        "backend",
                        "device",
                        "batch_size",
                        "threads",
                        "latency_ms_p50",
                        "latency_ms_p90",
                        "throughput_per_s",
                        "stable",
                    )
                }
                for r in rows
                if r["latency_ms_p50"] is not None
            ],
        ),
        lineage=[
            dict(
                id=p.id,
                stage=p.stage,
                format=p.format,
                config={k: val for k, val in p.config.items() if not k.startswith("_")},
            )
            for p in ws.lineage(v)
        ],
        notes=model.notes,
    )


def build_bundle(ws: Workspace, variant: str, out: str | os.PathLike, data_dir=None) -> Path:
    """Write the bundle of `variant` (an id or prefix) to the new folder `out`; returns its path."""
    out = check_out_dir(out)
    v = ws.get_variant(variant)
    tmp = temp_dir_for(out)
    try:
        model = write_model(v, tmp, input_shape(root_config(ws, v)))
        config = bundle_config(ws, v, model, data_dir)
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        (tmp / "README.md").write_text(model_card(config))
        (tmp / "predict.py").write_text(predict_script(model.runtime))
        (tmp / "requirements.txt").write_text("\n".join(model.requirements) + "\n")
        fsync_tree(tmp)
        check_out_dir(out)  # still new: another process may have made it meanwhile
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out
