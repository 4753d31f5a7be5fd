"""The workspace store: content-addressed variants, atomic folders, all-or-nothing writes."""

import signal
import sqlite3
import subprocess
import sys

import pytest

from deploybench.errors import UserError
from deploybench.store import Workspace, atomic_write_bytes, safe_component


def write_files(d):
    (d / "model.onnx").write_bytes(b"graph")
    (d / "model.onnx.data").write_bytes(b"weights" * 10)
    return {"accuracy_top1": 0.5}


def test_variant_is_content_addressed_and_reused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    a, created = ws.create_variant(
        model="lenet", dataset="cifar10", stage="train", config={"lr": 1}, parent=None, fmt="onnx", write=write_files
    )
    assert created and a.files == ["model.onnx", "model.onnx.data"] and a.size_bytes == 5 + 70
    again, created = ws.create_variant(
        model="lenet",
        dataset="cifar10",
        stage="train",
        config={"lr": 1},
        parent=None,
        fmt="onnx",
        write=lambda d: pytest.fail("must be reused"),
    )
    assert not created and again.id == a.id
    child, _ = ws.create_variant(
        model="lenet", dataset="cifar10", stage="prune", config={"ratio": 0.5}, parent=a, fmt="onnx", write=write_files
    )
    assert child.parent_id == a.id and child.stages == ["train", "prune"]
    assert [v.id for v in ws.lineage(child)] == [a.id, child.id]
    ws.update_metrics(child.id, {"agreement_top1": 0.99})
    assert ws.get_variant(child.id[:8]).metrics == {"accuracy_top1": 0.5, "agreement_top1": 0.99}


def test_failed_write_leaves_nothing(tmp_path):
    ws = Workspace(tmp_path / "ws")

    def broken(d):
        (d / "model.pt").write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ws.create_variant(
            model="lenet", dataset="cifar10", stage="train", config={}, parent=None, fmt="x", write=broken
        )
    assert ws.variants() == []
    assert not any(p.is_file() for p in (tmp_path / "ws").rglob("*") if p.parent != tmp_path / "ws")


def test_unsafe_names_never_reach_paths(tmp_path):
    for bad in ["../evil", "a/b", "<script>alert(1)</script>", "..", "/abs"]:
        with pytest.raises(UserError):
            safe_component(bad)
    assert safe_component("pkg.mod:factory") == "pkg.mod+factory"
    with pytest.raises(UserError):
        Workspace(tmp_path / "ws").artifact_dir("../../x", "cifar10", "id")


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


KILLED_WRITER = r"""
import os, signal, sys
from deploybench.store import Workspace
ws = Workspace(sys.argv[1])
(v,) = ws.variants()
rows = [dict(variant_id=v.id, backend="torch-cpu", device="cpu", batch_size=b, threads=1, metrics={"x": b},
             environment={}) for b in range(50)]
with ws.transaction() as con:
    for i, r in enumerate(rows):
        con.execute("INSERT INTO measurements (variant_id, backend, device, batch_size, threads, metrics, "
                    "environment, created_at) VALUES (?,?,?,?,?,'{}','{}',0)",
                    (r["variant_id"], r["backend"], r["device"], r["batch_size"], r["threads"]))
        if i == 25:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_multi_row_write_leaves_all_or_nothing(tmp_path):
    ws = Workspace(tmp_path / "ws")
    v, _ = ws.create_variant(
        model="lenet", dataset="cifar10", stage="train", config={}, parent=None, fmt="x", write=write_files
    )
    ws.add_measurements(
        [dict(variant_id=v.id, backend="b", device="cpu", batch_size=1, threads=1, metrics={}, environment={})]
    )
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "ws")])
    assert r.returncode == -signal.SIGKILL
    assert len(ws.measurements()) == 1  # the killed transaction left no row
    con = sqlite3.connect(ws.db_path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


KILLED_DURING_WRITE = r"""
import os, signal, sys
from deploybench.store import Workspace
ws = Workspace(sys.argv[1])
def write(d):
    (d / "model.pt").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
ws.create_variant(model="lenet", dataset="cifar10", stage="train", config={}, parent=None, fmt="x", write=write)
"""


def test_folder_of_a_killed_writer_is_swept(tmp_path):
    r = subprocess.run([sys.executable, "-c", KILLED_DURING_WRITE, str(tmp_path / "ws")])
    assert r.returncode == -signal.SIGKILL
    parent = tmp_path / "ws" / "artifacts" / "lenet" / "cifar10"
    assert [p.name.endswith(".tmp") for p in parent.iterdir()] == [True]  # what SIGKILL leaves behind
    ws = Workspace(tmp_path / "ws")
    assert ws.variants() == []
    v, created = ws.create_variant(
        model="lenet", dataset="cifar10", stage="train", config={"other": 1}, parent=None, fmt="x", write=write_files
    )
    assert created and [p.name for p in parent.iterdir()] == [v.id]
