"""Per-machine baselines of the benchmark suite: which one `make bench` compares with, and how one is recorded.

Absolute timings mean something only on the machine that took them: a CPU with other vector or int8/bf16
instructions runs other kernels. So each baseline is a pytest-benchmark JSON that holds, in its
`machine_info`, the fingerprint of the machine it was measured on (`fingerprint(threads)`: CPU model,
kernel-relevant CPU flags, GPU, threads), and the suite's timings are compared with a baseline only when that
fingerprint equals this machine's. Elsewhere the timings are recorded and not compared; the same-run ratio
gates and the deterministic facts of the suite hold on every machine.

    python -m deploybench.platform.bench_baseline select DIR [--fail SPEC]   # pytest options on stdout
    python -m deploybench.platform.bench_baseline record RESULTS DIR         # RESULTS -> DIR/<machine>.json

Both say on stderr, in one line, what they did.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deploybench.platform.env import fingerprint, machine_slug, physical_cores

# The key of `machine_info` (pytest-benchmark's JSON) that holds the fingerprint of the measuring machine.
KEY = "deploybench_fingerprint"


def default_threads() -> int:
    """The thread count the benchmark suite runs with (benchmarks/benchzoo.py's THREADS)."""
    return physical_cores()


def this_machine(threads: int | None = None) -> dict:
    """This machine's fingerprint as a baseline stores it (JSON types: a list of flags, None as null)."""
    return _normalized(fingerprint(default_threads() if threads is None else threads))


def _normalized(fp: dict) -> dict:
    return json.loads(json.dumps(fp, sort_keys=True))


def _describe(fp: dict) -> str:
    return json.dumps(fp, sort_keys=True)


def baseline_name(fp: dict) -> str:
    """The file name of a fingerprint's baseline: the machine's slug and its thread count, which the slug lacks
    (two VMs of one CPU model with different vCPU counts are different machines to a timing)."""
    threads = fp.get("threads")
    return f"{machine_slug(fp)}{f'-{threads}t' if threads is not None else ''}.json"


def stored_fingerprint(results: dict) -> dict | None:
    """The fingerprint a pytest-benchmark JSON was recorded with, or None (a file without one belongs to no
    known machine and is never compared)."""
    fp = (results.get("machine_info") or {}).get(KEY)
    return _normalized(fp) if isinstance(fp, dict) else None


def find_baseline(directory: Path, here: dict) -> Path | None:
    """The baseline in `directory` whose fingerprint equals `here`, or None. The file named for `here` is looked
    at first; a matching file under another name counts too, as the fingerprint, not the name, decides."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    named = directory / baseline_name(here)
    candidates = [named] if named.is_file() else []
    candidates += sorted(p for p in directory.glob("*.json") if p != named)
    for path in candidates:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench baseline {path} is unreadable: {exc}") from exc
        if stored_fingerprint(results) == _normalized(here):
            return path
    return None


def select(directory: Path, here: dict, fail: str | None = None) -> tuple[list[str], str]:
    """The pytest options that compare this run with this machine's baseline in `directory` (none where there
    is no baseline for it), and the line that says which it is."""
    path = find_baseline(directory, here)
    if path is None:
        return [], (
            f"no baseline for this machine (fingerprint {_describe(_normalized(here))}): timings recorded, "
            f"not compared; `make bench-baseline` records one"
        )
    options = [f"--benchmark-compare={path}"]
    if fail:
        options.append(f"--benchmark-compare-fail={fail}")
    return options, f"comparing with {path} (same machine)"


def record(results_path: Path, directory: Path, threads: int | None = None) -> Path:
    """Write the pytest-benchmark JSON at `results_path` as the baseline of the machine that measured it, under
    `directory`; returns its path. The fingerprint is the one the run stored (benchmarks/conftest.py adds it),
    else this machine's. Raw timings are dropped: the comparison reads only each benchmark's statistics."""
    results = json.loads(Path(results_path).read_text())
    fp = stored_fingerprint(results) or this_machine(threads)
    results.setdefault("machine_info", {})[KEY] = fp
    for bench in results.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / baseline_name(fp)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploybench.platform.bench_baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="print the pytest options comparing with this machine's baseline, if any")
    sel.add_argument("directory", type=Path)
    sel.add_argument("--fail", help="--benchmark-compare-fail's value, added when a baseline is compared")
    sel.add_argument("--threads", type=int, help="threads of the benchmark run (default: physical cores)")
    rec = sub.add_parser("record", help="store a pytest-benchmark JSON as its machine's baseline")
    rec.add_argument("results", type=Path)
    rec.add_argument("directory", type=Path)
    rec.add_argument("--threads", type=int, help="threads of the benchmark run, where the JSON has no fingerprint")
    args = parser.parse_args(argv)

    if args.command == "select":
        options, message = select(args.directory, this_machine(args.threads), args.fail)
        print(message, file=sys.stderr)
        print(" ".join(options))
    else:
        out = record(args.results, args.directory, args.threads)
        fp = stored_fingerprint(json.loads(out.read_text()))
        print(f"recorded {out} (fingerprint {_describe(fp)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
