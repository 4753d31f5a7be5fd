"""Hostile workspaces from the command line: a damaged store, rows naming paths outside the workspace, LIKE
wildcards in a variant prefix, markup planted in a variant's figures, and two identical commands at once. Each
ends in one `error:` line and a non-zero exit, or succeeds, and never changes what the workspace holds."""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_reliability import refused, snapshot

from deploybench.cli import optimize as optimize_cli
from deploybench.cli import profile_cmd as profile_cli

ENV = dict(cpu_model="test cpu", torch="2.x")


def _metrics(p50: float, acc: float) -> dict:
    return dict(
        accuracy_top1=acc,
        accuracy_top5=0.99,
        test_images=20,
        params=61706,
        macs=416_520,
        flops=833_040,
        size_bytes=250_000,
        latency_ms_p50=p50,
        latency_ms_p90=p50 * 1.1,
        latency_ms_p99=p50 * 1.3,
        latency_ms_ci95=[p50 * 0.98, p50 * 1.02],
        throughput_per_s=1000 / p50,
        peak_mem_bytes=1 << 20,
        stable=True,
        runs=50,
    )


@pytest.fixture
def measured(trained_workspace):
    """(workspace, trained lenet, data_dir) with a measurement row per batch size, written directly."""
    ws, trained, data_dir = trained_workspace
    ws.add_measurements(
        [
            dict(
                variant_id=trained.id,
                backend="torch-cpu",
                device="cpu",
                batch_size=bs,
                threads=2,
                metrics=_metrics(2.0 * bs, 0.55),
                environment=ENV,
            )
            for bs in (1, 64)
        ]
    )
    return ws, trained, data_dir


def every_file(root: Path) -> dict[str, str]:
    """Every file's sha256, the database and its WAL files included."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tamper(db: Path, sql: str, args=()) -> None:
    con = sqlite3.connect(db)
    con.execute("PRAGMA foreign_keys = OFF")
    con.execute(sql, args)
    con.commit()
    con.close()


def _truncate_half(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


# The whole file: compared byte for byte. A row: compared row for row (a refused command logs its line, then
# takes it back out).
FILE_DAMAGE = {
    "garbage": lambda db: db.write_bytes(b"\x13" + os.urandom(16383)),
    "half": _truncate_half,
    "empty": lambda db: db.write_bytes(b""),
}
ROW_DAMAGE = {
    "config-not-json": 'UPDATE variants SET config = \'{"_lineage": ["train"\'',
    "metrics-a-list": "UPDATE variants SET metrics = '[0.55]'",
}
COMMANDS = {
    "compare": lambda ws, out: ["compare", "--workspace", str(ws)],
    "report": lambda ws, out: ["report", "--workspace", str(ws), "--out", str(out)],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", list(FILE_DAMAGE) + list(ROW_DAMAGE))
def test_a_damaged_store_is_one_line_and_exit_1(kind, command, measured, tmp_path, capsys):
    ws, _, _ = measured
    out = tmp_path / "report" / "index.html"
    if kind in FILE_DAMAGE:
        FILE_DAMAGE[kind](ws.db_path)
        before, take = every_file(ws.root), every_file
    else:
        tamper(ws.db_path, ROW_DAMAGE[kind])
        before, take = snapshot(ws.root), snapshot
    err = refused(
        lambda: profile_cli.main(COMMANDS[command](ws.root, out)),
        capsys,
        f"{ws.db_path} is damaged",
        "artifacts",
        "restore deploybench.db from a copy",
        code=1,
    )
    assert "Traceback" not in err
    assert take(ws.root) == before
    assert not out.exists()


def test_a_damaged_training_record_is_one_line_and_exit_1(measured, tmp_path, capsys):
    ws, trained, _ = measured
    record = trained.path / "training.json"
    record.write_text(record.read_text()[:200])  # cut short: not JSON
    before, out = snapshot(ws.root), tmp_path / "r.html"
    refused(
        lambda: profile_cli.main(["report", "--workspace", str(ws.root), "--out", str(out)]),
        capsys,
        f"the training record {record} of variant {trained.id} is damaged: it is not JSON",
        "restore",
        code=1,
    )
    assert snapshot(ws.root) == before and not out.exists()


def _copy_row(db: Path, vid: str, new_id: str, files: str | None = None) -> None:
    """Insert a copy of variant `vid`'s row under `new_id` (and other `files`), as a tampered store would hold."""
    columns = "id, parent_id, model, dataset, stage, config, format, files, size_bytes, sha256, metrics, created_at"
    tamper(
        db,
        f"INSERT INTO variants ({columns}) SELECT ?, parent_id, model, dataset, stage, config, format, "
        "coalesce(?, files), size_bytes, sha256, metrics, created_at + 1 FROM variants WHERE id = ?",
        (new_id, files, vid),
    )


@pytest.mark.parametrize("how", ["id", "files"])
def test_a_row_naming_a_path_outside_its_folder_is_never_measured(how, trained_workspace, tmp_path, capsys):
    ws, trained, data_dir = trained_workspace
    if how == "id":  # its folder would be tmp_path/outside: put a good model there, which must not be measured
        shutil.copytree(trained.path, tmp_path / "outside")
        _copy_row(ws.db_path, trained.id, "../../../../outside")
    else:
        shutil.copy(trained.path / "model.pt", tmp_path / "model.pt")
        _copy_row(ws.db_path, trained.id, "0123456789abcdef", '["../../../../../model.pt"]')
    before = snapshot(ws.root)
    refused(
        lambda: profile_cli.main(
            [
                "run",
                "--model",
                "lenet",
                "--backends",
                "torch-cpu",
                "--batch-sizes",
                "1",
                "--quick",
                "--in-process",
                "--workspace",
                str(ws.root),
                "--data-dir",
                str(data_dir),
            ]
        ),
        capsys,
        "is damaged",
        "is not a path inside the variant's folder" if how == "files" else "its id is not",
        code=1,
    )
    assert snapshot(ws.root) == before


@pytest.mark.parametrize("prefix", ["%{tail}", "_{tail6}", "%"])
@pytest.mark.parametrize("command", ["profile-run", "optimize-quantize"])
def test_like_wildcards_in_a_variant_prefix_match_nothing(prefix, command, trained_workspace, capsys):
    ws, trained, data_dir = trained_workspace
    given = prefix.format(tail=trained.id[-4:], tail6=trained.id[1:7])
    common = ["--variant", given, "--workspace", str(ws.root), "--data-dir", str(data_dir)]
    before = snapshot(ws.root)
    if command == "profile-run":
        call = lambda: profile_cli.main(
            ["run", "--backends", "torch-cpu", "--batch-sizes", "1", "--quick", "--in-process"] + common
        )
    else:
        call = lambda: optimize_cli.main(["quantize", "--model", "lenet", "--method", "bf16"] + common)
    refused(call, capsys, f"no variant {given!r}")
    assert snapshot(ws.root) == before


PLANTED = '<script>alert("xss-7f3e")</script><rect onload="alert(1)" width="1" height="1"/>'


def test_markup_planted_in_a_variants_figures_never_reaches_the_report(measured, tmp_path, capsys):
    ws, trained, _ = measured
    for name in ("learning_curves.svg", "confusion_matrix.svg"):
        svg = trained.path / name
        svg.write_text(svg.read_text().replace("</svg>", PLANTED + "</svg>"))
    out = tmp_path / "r.html"
    assert profile_cli.main(["report", "--workspace", str(ws.root), "--out", str(out)]) == 0
    html = out.read_text()
    assert html.count("<script") == 1  # the report's own
    for planted in ("onload", "xss-7f3e", "alert("):
        assert planted not in html, planted
    assert "top-1 (%)" in html and "predicted" in html  # the figures are drawn, from training.json's numbers


# Two identical `optimize quantize` at once, each in its own process: both wait inside the variant's `write`
# (at its torch.save) until the other is there too, so both publish the same variant.
RACE_CHILD = r"""
import sys, time
from pathlib import Path
import torch
from deploybench.cli.main import main

real_save = torch.save

def save(obj, f, *args, **kwargs):
    tmp = Path(f).parent
    if tmp.name.endswith(".tmp"):
        final, deadline = tmp.parent / tmp.name.split(".")[1], time.time() + 60
        while len(list(tmp.parent.glob(f".{final.name}.*.tmp"))) < 2 and not final.exists() and time.time() < deadline:
            time.sleep(0.01)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_identical_optimize_runs_at_once_both_end_with_the_variant(trained_workspace, tmp_path):
    ws, _, data_dir = trained_workspace
    argv = [
        sys.executable,
        "-c",
        RACE_CHILD,
        "optimize",
        "quantize",
        "--model",
        "lenet",
        "--dataset",
        "fashion-mnist",
        "--method",
        "bf16",
        "--workspace",
        str(ws.root),
        "--data-dir",
        str(data_dir),
    ]
    procs = [
        subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err
    (made,) = [v for v in ws.variants("lenet") if v.stage == "quantize"]
    assert all(made.id in out for out, _ in results)  # each names the one variant
    assert not [p.name for p in made.path.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
