"""A workspace for the app (trained lenet, its ONNX export, stored measurements) and the app served from it in a
subprocess on a free port, once per test module."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploybench.artifacts.runnable import runnable
from deploybench.data import dataset_info, eval_transform, load_splits
from deploybench.store import Workspace

STARTUP_S = 60


def _metrics(p50, acc, size):
    return dict(
        accuracy_top1=acc,
        accuracy_top5=0.9,
        test_images=20,
        params=61706,
        macs=400_000,
        flops=800_000,
        size_bytes=size,
        latency_ms_p50=p50,
        latency_ms_p90=p50 * 1.1,
        latency_ms_p99=p50 * 1.2,
        latency_ms_ci95=[p50 * 0.99, p50 * 1.01],
        throughput_per_s=1000 / p50,
        peak_mem_bytes=1 << 20,
        pct_of_peak=10.0,
        stable=True,
        runs=50,
    )


@pytest.fixture(scope="module")
def app_workspace(_trained_lenet_workspace, tmp_path_factory, tiny_fashion_mnist):
    """(workspace root, trained variant id, ONNX variant id, data_dir) with rows on torch-cpu and ort-cpu."""
    from deploybench.optimize.export import ExportStage

    src, vid = _trained_lenet_workspace
    root = tmp_path_factory.mktemp("app") / "ws"
    shutil.copytree(src, root)
    ws = Workspace(root)
    trained = ws.get_variant(vid)
    onnx = ExportStage().run(ws, trained, tiny_fashion_mnist)
    env = dict(cpu_model="test cpu", torch="2.x")
    ws.add_measurements(
        [
            dict(
                variant_id=v.id,
                backend=be,
                device="cpu",
                batch_size=1,
                threads=2,
                metrics=_metrics(p50, 0.5, v.size_bytes),
                environment=env,
            )
            for v, be, p50 in ((trained, "torch-cpu", 2.0), (trained, "ort-cpu", 1.5), (onnx, "ort-cpu", 1.0))
        ]
    )
    return root, vid, onnx.id, tiny_fashion_mnist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(app_workspace, tmp_path_factory):
    """The app served by `deploybench app` in a subprocess; killed at the end of the module."""
    root, _, _, data_dir = app_workspace
    port = _free_port()
    log = tmp_path_factory.mktemp("applog") / "app.log"
    local = "127.0.0.1,localhost"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", NO_PROXY=local, no_proxy=local)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploybench.cli.main",
                "app",
                "--workspace",
                str(root),
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer within {STARTUP_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def test_png(app_workspace, tmp_path_factory):
    """A real Fashion-MNIST-format test image saved as PNG."""
    _, _, _, data_dir = app_workspace
    test = load_splits("fashion-mnist", data_dir, augment=False).test
    path = tmp_path_factory.mktemp("png") / "test3.png"
    Image.fromarray(np.asarray(test.data[3], dtype=np.uint8), mode="L").save(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("txt") / "notes.png.txt"
    path.write_text("this is not an image\n")
    return path


def suite_top1(ws_root: Path, variant_id: str, png: Path) -> str:
    """The class the suite predicts: `runnable(variant)` on the PNG through the dataset's eval transform."""
    ws = Workspace(ws_root)
    v = ws.get_variant(variant_id)
    info = dataset_info(v.dataset)
    x = eval_transform(info)(Image.open(png).convert("L")).unsqueeze(0)
    with torch.no_grad():
        return info.classes[int(runnable(v)(x).argmax(1)[0])]
