"""Four `profile run` processes on one workspace at once: every row lands and the database stays sound."""

import sqlite3
import subprocess
import sys


def test_four_concurrent_profile_runs_lose_nothing(onnx_workspace):
    ws, trained, onnx_variant, data_dir = onnx_workspace
    cmd = [
        sys.executable,
        "-m",
        "deploybench.cli.profile_cmd",
        "run",
        "--workspace",
        str(ws.root),
        "--data-dir",
        str(data_dir),
        "--backends",
        "torch-cpu,ort-cpu",
        "--batch-sizes",
        "1",
        "--threads",
        "1",
        "--quick",
        "--in-process",
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1][-500:] for o in outs]
    rows = ws.measurements()
    assert len(rows) == 4 * 4  # 4 runs x 2 variants x 2 backends x 1 batch size (2 of the 4 skipped)
    assert sum("skipped" not in r["metrics"] for r in rows) == 4 * 2
    con = sqlite3.connect(ws.db_path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
