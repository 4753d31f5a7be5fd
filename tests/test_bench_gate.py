"""The benchmark baseline gate of `make bench` fails on a real regression and passes on its own baseline.

Runs the MAC-counting benchmark in a subprocess with the options `make bench` uses, through the same steps:
a run recorded as this machine's baseline (`bench_baseline record`, as `make bench-baseline` does), the
options `bench_baseline select` then gives (a comparison at BENCH_FAIL), a run with them (passes), and a run
against a doctored copy of the baseline whose timings are 10x faster (fails with pytest-benchmark's
"Performance has regressed"). A baseline of another machine is not compared at all.
"""

import json
import subprocess
import sys
from pathlib import Path

from deploybench.platform.bench_baseline import KEY, record, select, this_machine

ROOT = Path(__file__).resolve().parents[1]
BENCH = "benchmarks/test_facts.py::test_mac_counting_resnet18"


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", BENCH, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fail_option() -> str:
    """The threshold `make bench` uses, read from the Makefile (so this test follows it)."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("BENCH_FAIL"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("BENCH_FAIL not found in the Makefile")


def test_baseline_gate_catches_a_regression(tmp_path):
    run = tmp_path / "run.json"
    first = _bench(f"--benchmark-json={run}")
    assert first.returncode == 0, first.stdout[-2000:]
    here = json.loads(run.read_text())["machine_info"][KEY]
    assert here == this_machine(here["threads"])  # benchmarks/conftest.py records the machine's fingerprint

    baselines = tmp_path / "baselines"
    base = record(run, baselines)
    options, message = select(baselines, here, _fail_option())
    assert message == f"comparing with {base} (same machine)"
    same = _bench(*options)
    assert same.returncode == 0, same.stdout[-2000:]

    data = json.loads(base.read_text())
    for bench in data["benchmarks"]:
        for key in ("min", "max", "mean", "median", "q1", "q3"):
            bench["stats"][key] /= 10
    base.write_text(json.dumps(data))
    slower = _bench(*options)
    assert slower.returncode != 0
    assert "Performance has regressed" in slower.stdout + slower.stderr

    data["machine_info"][KEY] = dict(here, threads=here["threads"] + 1)
    base.write_text(json.dumps(data))
    assert select(baselines, here, _fail_option())[0] == []
