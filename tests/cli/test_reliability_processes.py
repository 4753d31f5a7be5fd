"""Reliability of `profile run`'s processes and refusals: a measuring child dies with its parent (even one killed
with SIGKILL), a child left by another run is reported, and a refused run writes nothing (every check that can
refuse comes before the first write to the store)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_reliability import refused, snapshot

from deploybench.cli import profile_cmd as profile_cli

WORKER = "deploybench.profile.worker"
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/cmdline").exists(),
    reason="parent-death signal and /proc are Linux's",
)


def _store_ceiling(ws, threads: int = 1) -> None:
    """A stored CPU ceiling, so that the run times no GEMM before it starts its children."""
    from deploybench.profile import machine

    ws.set_machine(
        machine.peak_key("cpu", threads),
        {
            "float32": 1e12,
            "by_runtime": {"float32": {"onnxruntime": 1e12}},
            "method": machine.PEAK_METHOD,
            "hardware": machine._hardware("cpu"),
            "threads": threads,
        },
    )


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _workers_of(parent: int) -> list[int]:
    """Pids of the profiling workers whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and WORKER in _cmdline(int(entry.name)):
            try:
                ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                found.append(int(entry.name))
    return found


def _wait_for(predicate, seconds: float, step: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


RUN_CLI = "import sys; from deploybench.cli.main import main; sys.exit(main(sys.argv[1:]))"


# -- a measuring child dies with its parent --------------------------------------------------------------------------
@linux_only
@pytest.mark.timeout(240)
def test_a_child_dies_with_its_parent_killed_by_sigkill(trained_workspace, tmp_path):
    """`profile run` is killed with SIGKILL while its child measures: the child is gone at once, not left
    burning a core until its full-protocol measurement ends."""
    ws, trained, data_dir = trained_workspace
    _store_ceiling(ws)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN_CLI,
            "profile",
            "run",
            "--variant",
            trained.id,
            "--backends",
            "torch-cpu",
            "--batch-sizes",
            "64",
            "--threads",
            "1",
            "--workspace",
            str(ws.root),
            "--data-dir",
            str(data_dir),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers = []
    try:
        workers = _wait_for(lambda: _workers_of(parent.pid) or parent.poll() is not None, 180)
        assert isinstance(workers, list), f"the run ended before its child was seen: {parent.stderr.read()[-2000:]}"
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not any(map(_alive, workers)), 5), f"child {workers} outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        for pid in workers if isinstance(workers, list) else []:
            if _alive(pid) and WORKER in _cmdline(pid):  # left by code that does not stop it: not this test's to keep
                os.kill(pid, signal.SIGKILL)
        parent.stderr.close()


GRANDCHILD = r"""
import os, subprocess, sys, time
from deploybench.platform.process import child_dies_with_parent
hook = child_dies_with_parent()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=hook)
print(child.pid, flush=True)
time.sleep(60)
"""


@linux_only
@pytest.mark.timeout(60)
def test_the_parent_death_signal_stops_a_child_whose_parent_is_killed():
    """The platform hook alone: a process started with it gets SIGKILL when its parent is SIGKILLed."""
    middle = subprocess.Popen([sys.executable, "-c", GRANDCHILD], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(middle.stdout.readline())
        assert _alive(child)
        middle.kill()
        middle.wait()
        assert _wait_for(lambda: not _alive(child), 5), "the child outlived its parent"
    finally:
        middle.kill()
        middle.wait()
        middle.stdout.close()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_hook_is_none_where_there_is_no_parent_death_signal(monkeypatch):
    from deploybench.platform import process

    monkeypatch.setattr(process.sys, "platform", "darwin")
    assert process.child_dies_with_parent() is None


# -- a child left by another run is reported ---------------------------------------------------------------------
def _fake_worker(tmp_path: Path, name: str) -> subprocess.Popen:
    """A sleeping process whose command line reads like a profiling worker's."""
    job = tmp_path / f"{name}.json"
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "-m",
            WORKER,
            str(job),
            str(tmp_path / f"{name}-result.json"),
        ]
    )


@linux_only
@pytest.mark.timeout(120)
def test_running_workers_of_other_runs_are_reported_in_one_warning_and_dead_ones_forgotten(trained_workspace, tmp_path):
    from deploybench.profile import runner

    ws, trained, data_dir = trained_workspace
    _store_ceiling(ws)
    orphan, sibling = _fake_worker(tmp_path, "orphan"), _fake_worker(tmp_path, "sibling")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        runner._record_worker(ws.root, orphan.pid, orphan.args, parent=gone.pid)  # its run was SIGKILLed
        runner._record_worker(ws.root, sibling.pid, sibling.args, parent=os.getpid())  # a run still going
        runner._record_worker(ws.root, gone.pid, [sys.executable, "-m", WORKER, "x", "y"], parent=os.getpid())
        impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a reused pid
        runner._record_worker(ws.root, impostor.pid, orphan.args, parent=gone.pid)
        lines = []
        runner.profile_variants(
            ws,
            [trained],
            ["torch-cpu"],
            batch_sizes=(2,),
            threads=1,
            quick=True,
            data_dir=data_dir,
            isolate=False,
            log=lines.append,
        )
        (warning,) = [line for line in lines if "profiling process" in line]
        assert warning.startswith("warning: ") and "\n" not in warning
        assert f"pid {orphan.pid} (its run is gone: `kill {orphan.pid}` stops it)" in warning
        assert f"pid {sibling.pid} (of the run with pid {os.getpid()})" in warning
        assert {int(p) for p in re.findall(r"\bpid (\d+) \((?:its|of)", warning)} == {orphan.pid, sibling.pid}
        left = sorted(int(p.stem) for p in (ws.root / runner.WORKERS_DIR).glob("*.json"))
        assert left == sorted([orphan.pid, sibling.pid])  # the dead one's and the impostor's files removed
    finally:
        for proc in (orphan, sibling, locals().get("impostor")):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_a_measured_child_leaves_no_pid_file_and_no_folder(trained_workspace):
    from deploybench.profile import runner

    ws, trained, data_dir = trained_workspace
    _store_ceiling(ws)
    (row,) = runner.profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=True,
        log=lambda _: None,
    )
    assert row["metrics"]["memory_isolated"] is True and "skipped" not in row["metrics"]
    assert not (ws.root / runner.WORKERS_DIR).exists()


def test_a_child_past_its_time_limit_is_stopped_with_its_whole_group(trained_workspace, monkeypatch):
    """The worker and anything it started share a process group of their own: a timeout kills the group."""
    from deploybench.profile import runner

    ws, trained, data_dir = trained_workspace
    _store_ceiling(ws)
    started = []
    real = subprocess.Popen

    def popen(cmd, **kw):
        proc = real(cmd, **kw)
        started.append((proc, kw))
        return proc

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    monkeypatch.setattr(runner, "CHILD_TIMEOUT_S", 0.5)
    (row,) = runner.profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=True,
        log=lambda _: None,
    )
    assert "ran past its 0.5 s limit" in row["metrics"]["skipped"]
    ((proc, kw),) = started
    assert kw.get("start_new_session") is True
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no process of its group is left
    assert not (ws.root / runner.WORKERS_DIR).exists()


# -- a refused run writes nothing ----------------------------------------------------------------------------------
RUN = ["run", "--quick", "--backends", "torch-cpu", "--batch-sizes", "4", "--threads", "1"]


def _spoil(variant, how: str) -> str:
    """Spoil the variant's model.pt; returns a text the error must hold (a truncated file is refused by its
    digest or by the loader, whichever reads it first)."""
    path = variant.path / "model.pt"
    if how == "deleted":
        path.unlink()
        return f"{path} is missing"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return variant.id


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_refused_run_leaves_the_stored_metrics_as_they_were(trained_workspace, how, capsys):
    """A refused run stores no static metrics (size, MACs, params), no ceiling, no row."""
    ws, trained, data_dir = trained_workspace
    expected = _spoil(trained, how)
    before = snapshot(ws.root)
    refused(
        lambda: profile_cli.main(
            RUN + ["--variant", trained.id, "--workspace", str(ws.root), "--data-dir", str(data_dir)]
        ),
        capsys,
        expected,
    )
    assert snapshot(ws.root) == before
    assert ws.get_variant(trained.id).metrics == trained.metrics


@pytest.mark.timeout(180)
def test_a_spoiled_variant_is_refused_before_any_other_is_measured(onnx_workspace, capsys):
    """Every variant of the run is checked before the first is measured: its export's rows are not stored."""
    ws, trained, onnx_variant, data_dir = onnx_workspace
    expected = _spoil(trained, "truncated")
    before = snapshot(ws.root)
    refused(
        lambda: profile_cli.main(
            [
                "run",
                "--quick",
                "--backends",
                "torch-cpu,ort-cpu",
                "--batch-sizes",
                "4",
                "--threads",
                "1",
                "--variant",
                onnx_variant.id,
                "--variant",
                trained.id,
                "--workspace",
                str(ws.root),
                "--data-dir",
                str(data_dir),
            ]
        ),
        capsys,
        expected,
    )
    assert snapshot(ws.root) == before


@pytest.mark.parametrize("which,name", [("export", "model.onnx"), ("trained", "training.json")])
def test_every_file_a_variant_lists_must_be_there(onnx_workspace, which, name, capsys):
    ws, trained, onnx_variant, data_dir = onnx_workspace
    variant = onnx_variant if which == "export" else trained
    assert name in variant.files
    (variant.path / name).unlink()
    before = snapshot(ws.root)
    refused(
        lambda: profile_cli.main(
            RUN + ["--variant", variant.id, "--in-process", "--workspace", str(ws.root), "--data-dir", str(data_dir)]
        ),
        capsys,
        f"{variant.path / name} is missing",
    )
    assert snapshot(ws.root) == before


def test_worker_records_are_json_with_their_command_line(tmp_path):
    from deploybench.profile import runner

    runner._record_worker(tmp_path, 123, ["python", "-m", WORKER, "a", "b"], parent=45)
    (path,) = (tmp_path / runner.WORKERS_DIR).glob("*.json")
    assert path.name == "123.json"
    assert json.loads(path.read_text()) == dict(pid=123, parent=45, argv=["python", "-m", WORKER, "a", "b"])
    runner._forget_worker(tmp_path, 123)
    assert not (tmp_path / runner.WORKERS_DIR).exists()
