"""The benchmark baseline gate of `make bench` fails on a real regression and passes on its own baseline.

Runs the MAC-counting benchmark twice in a subprocess, with the options `make bench` uses: once to write a
baseline, then against it (passes), then against a doctored copy whose medians are 10x faster (fails with
pytest-benchmark's "Performance has regressed").
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = "benchmarks/test_facts.py::test_mac_counting_resnet18"


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", BENCH, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _fail_option() -> str:
    """The threshold `make bench` uses, read from the Makefile (so this test follows it)."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("BENCH_FAIL"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("BENCH_FAIL not found in the Makefile")


def test_baseline_gate_catches_a_regression(tmp_path):
    base = tmp_path / "baseline.json"
    first = _bench(f"--benchmark-json={base}")
    assert first.returncode == 0, first.stdout[-2000:]
    fail = f"--benchmark-compare-fail={_fail_option()}"
    same = _bench(f"--benchmark-compare={base}", fail)
    assert same.returncode == 0, same.stdout[-2000:]

    data = json.loads(base.read_text())
    for bench in data["benchmarks"]:
        for key in ("min", "max", "mean", "median", "q1", "q3"):
            bench["stats"][key] /= 10
    doctored = tmp_path / "faster-past.json"
    doctored.write_text(json.dumps(data))
    slower = _bench(f"--benchmark-compare={doctored}", fail)
    assert slower.returncode != 0
    assert "Performance has regressed" in slower.stdout + slower.stderr
