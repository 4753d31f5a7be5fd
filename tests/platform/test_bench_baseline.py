"""Which benchmark baseline `make bench` compares with: only one measured on a machine of this fingerprint."""

import json

import pytest

from deploybench.platform import bench_baseline
from deploybench.platform.bench_baseline import KEY, baseline_name, main, record, select, stored_fingerprint

HERE = {
    "cpu_model": "AMD EPYC",
    "cpu_flags": ["avx2", "avx512_bf16", "avx512_vnni", "avx512f", "f16c", "fma"],
    "gpu": None,
    "threads": 2,
}
AVX2 = dict(HERE, cpu_flags=["avx2", "f16c", "fma"])


def _results(fp=None, **stats) -> dict:
    machine_info = {"node": "vm", "cpu": {"brand_raw": "AMD EPYC"}}
    if fp is not None:
        machine_info[KEY] = fp
    return {
        "machine_info": machine_info,
        "benchmarks": [
            {
                "fullname": "benchmarks/test_x.py::test_x",
                "stats": dict({"min": 0.001, "median": 0.002, "data": [0.001, 0.002, 0.003]}, **stats),
            }
        ],
    }


def _write(path, results):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def test_a_baseline_of_another_machine_is_not_compared(tmp_path):
    _write(tmp_path / baseline_name(AVX2), _results(AVX2))
    options, message = select(tmp_path, HERE, "min:400%")
    assert options == []
    assert message.startswith("no baseline for this machine (fingerprint ")
    assert '"avx512_vnni"' in message and "`make bench-baseline` records one" in message


def test_a_baseline_of_this_machine_is_compared_at_the_given_threshold(tmp_path):
    _write(tmp_path / baseline_name(AVX2), _results(AVX2))
    mine = _write(tmp_path / baseline_name(HERE), _results(HERE))
    options, message = select(tmp_path, HERE, "min:400%")
    assert options == [f"--benchmark-compare={mine}", "--benchmark-compare-fail=min:400%"]
    assert message == f"comparing with {mine} (same machine)"


def test_the_fingerprint_decides_not_the_file_name(tmp_path):
    # Named for this machine but measured on another: not compared. Named otherwise but measured here: compared.
    _write(tmp_path / baseline_name(HERE), _results(AVX2))
    assert select(tmp_path, HERE)[0] == []
    other_name = _write(tmp_path / "renamed.json", _results(HERE))
    assert select(tmp_path, HERE)[0] == [f"--benchmark-compare={other_name}"]


@pytest.mark.parametrize("differs", [{"threads": 4}, {"gpu": "NVIDIA H100 80GB HBM3"}, {"cpu_model": "AMD EPYC 9654"}])
def test_threads_gpu_and_cpu_model_are_part_of_the_machine(tmp_path, differs):
    _write(tmp_path / "b.json", _results(dict(HERE, **differs)))
    assert select(tmp_path, HERE)[0] == []


def test_a_baseline_without_a_fingerprint_or_no_directory_compares_nothing(tmp_path):
    _write(tmp_path / "baselines" / "legacy.json", _results(None))
    assert select(tmp_path / "baselines", HERE)[0] == []
    assert select(tmp_path / "missing", HERE)[0] == []


def test_record_names_the_file_for_its_machine_keeps_its_fingerprint_and_drops_raw_timings(tmp_path):
    run = _write(tmp_path / "run.json", _results(AVX2))
    out = record(run, tmp_path / "baselines")
    assert out == tmp_path / "baselines" / "amd-epyc-avx2-2t.json"
    stored = json.loads(out.read_text())
    assert stored_fingerprint(stored) == AVX2
    assert "data" not in stored["benchmarks"][0]["stats"] and stored["benchmarks"][0]["stats"]["min"] == 0.001
    assert select(tmp_path / "baselines", AVX2)[0] == [f"--benchmark-compare={out}"]
    assert select(tmp_path / "baselines", HERE)[0] == []


def test_record_fingerprints_a_run_without_one_as_this_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_baseline, "fingerprint", lambda threads: dict(HERE, threads=threads))
    out = record(_write(tmp_path / "run.json", _results(None)), tmp_path / "baselines", threads=3)
    assert stored_fingerprint(json.loads(out.read_text())) == dict(HERE, threads=3)


def test_the_command_prints_the_options_on_stdout_and_says_which_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_baseline, "fingerprint", lambda threads: dict(HERE, threads=threads))
    assert main(["select", str(tmp_path), "--fail=min:400%", "--threads=2"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "" and err.startswith("no baseline for this machine")

    mine = _write(tmp_path / baseline_name(HERE), _results(HERE))
    assert main(["select", str(tmp_path), "--fail=min:400%", "--threads=2"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [f"--benchmark-compare={mine}", "--benchmark-compare-fail=min:400%"]
    assert err.strip() == f"comparing with {mine} (same machine)"
