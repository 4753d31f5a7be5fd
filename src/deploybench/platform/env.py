"""The environment a measurement was taken in: hardware, library versions, threads, commit (no hostname)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

_LIBRARIES = ("torch", "torchvision", "torchao", "onnx", "onnxruntime", "fvcore", "numpy")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_int8_dot_product() -> bool:
    """Whether the CPU has VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products without 16-bit intermediates."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, slower
    than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def physical_cores() -> int:
    """Physical cores (not hyper-threads) available to this process: the default thread count."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in allowed:
        try:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))


def git_commit() -> str | None:
    """The commit of the repository this package runs from, with "-dirty" when tracked files differ from it, or
    None (not a checkout, no git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if changed.returncode != 0 or changed.stdout.strip() else "")


# Distributions that install the same module under another name (the GPU build of ONNX Runtime).
_ALIASES = {"onnxruntime": ("onnxruntime-gpu",)}


def package_version(name: str) -> str | None:
    """The installed version of distribution `name` (or of its alias, e.g. onnxruntime-gpu), or None."""
    for dist in (name, *_ALIASES.get(name, ())):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict:
    return dict(
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        physical_cores=physical_cores(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        cuda=torch.version.cuda if torch.cuda.is_available() else None,
        # Whether fp32 convolutions / matmuls may run in TF32 on the GPU (fewer mantissa bits, faster).
        cuda_tf32=dict(conv=torch.backends.cudnn.allow_tf32, matmul=torch.backends.cuda.matmul.allow_tf32)
        if torch.cuda.is_available()
        else None,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        libraries={n: package_version(n) for n in _LIBRARIES},
        commit=git_commit(),
    )


def load_average() -> float | None:
    """1-minute load average: a busy machine (another job on the cores) makes latencies meaningless."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment(threads: int) -> dict:
    """The environment JSON stored with every measurement (the load average as profiling starts included)."""
    return dict(_static_environment(), threads=threads, load_avg_1m=load_average())


def same_setup(a: dict, b: dict) -> bool:
    """Whether two stored environments describe the same code on the same machine and threads: equal in
    everything but the load average, with a known commit and no uncommitted changes."""

    def fixed(env):
        return {k: v for k, v in json.loads(json.dumps(env)).items() if k != "load_avg_1m"}

    commit = a.get("commit")
    return bool(commit) and not commit.endswith("-dirty") and fixed(a) == fixed(b)


# CPU features that change which kernels run (and so every latency): two machines differing in one of them
# are different machines for a measurement, whatever their model names say.
_KERNEL_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "fma",
    "f16c",
)


def fingerprint(threads: int | None = None) -> dict:
    """What makes latencies of two machines comparable: CPU model, the kernel-relevant CPU flags, GPU, and the
    thread count when given. Equal fingerprints may share a front or a benchmark baseline; others never do."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out = dict(cpu_model=cpu_model(), cpu_flags=sorted(cpu_flags() & set(_KERNEL_FLAGS)), gpu=gpu)
    if threads is not None:
        out["threads"] = threads
    return out


def machine_slug(fp: dict | None = None) -> str:
    """A short file-name-safe name for a fingerprint, e.g. `amd-epyc-avx512-vnni-bf16` or `...-nvidia-h100`:
    the CPU model's words and its widest vector/int8/bf16 features (results files are named by it)."""
    fp = fp or fingerprint()
    flags = set(fp.get("cpu_flags", ()))
    words = [
        w
        for w in re.split(r"[^a-z0-9]+", fp.get("cpu_model", "cpu").lower())
        if w and w not in ("processor", "cpu", "with", "radeon", "graphics")
    ][:3]
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "x86" if fp.get("cpu_model") else ""
    extras = [
        name
        for flag, name in (("avx512_vnni", "vnni"), ("avx_vnni", "vnni"), ("avx512_bf16", "bf16"), ("amx_tile", "amx"))
        if flag in flags
    ]
    gpu = re.split(r"[^a-z0-9]+", fp["gpu"].lower()) if fp.get("gpu") else []
    parts = [*words, isa, *dict.fromkeys(extras), *[g for g in gpu if g][:3]]
    return "-".join(p for p in parts if p) or "unknown-machine"
