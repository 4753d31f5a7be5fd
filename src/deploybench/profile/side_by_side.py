"""Paired speed-ups, stored (`store.pairs`), and the toolchains side by side: one model's fp32 and int8 forms in
torch.compile, ONNX Runtime and OpenVINO, each timed in alternation with the same reference (the trained model
compiled by torch.compile) and each int8 form with its own toolchain's fp32, in one run.

Only ratios timed in alternation are reported: two p50s measured minutes apart on a shared VM compare two moments
as much as two runtimes (`latency.paired_speedup`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from deploybench.platform import fingerprint, machine_slug
from deploybench.platform.env import environment
from deploybench.profile.backends import get_backend
from deploybench.profile.crosscheck import LoadedRuntimes, paired_against
from deploybench.profile.latency import PAIRS
from deploybench.store import Variant, Workspace
from deploybench.store.pairs import record_pair


def measure_pair(
    ws: Workspace,
    variant: Variant,
    backend: str,
    base: Variant,
    base_backend: str,
    batch_size: int,
    threads: int,
    *,
    command: str,
    runtimes: LoadedRuntimes | None = None,
) -> dict:
    """Time `variant` on `backend` in alternation with `base` on `base_backend`, store the speed-up and return it.
    `runtimes`: as `paired_against`'s."""
    speedup, facts, base_facts = paired_against(
        ws, variant, backend, base, base_backend, batch_size, threads, runtimes=runtimes
    )
    pair = dict(
        variant=variant.id,
        backend=backend,
        against=base.id,
        against_backend=base_backend,
        batch_size=batch_size,
        threads=threads,
        machine=machine_slug(fingerprint()),
        speedup=speedup,
        runs_in=_runs_in(variant, facts),
        against_runs_in=_runs_in(base, base_facts),
        pairs=PAIRS,
        model=variant.model,
        dataset=variant.dataset,
        command=command,
        environment=environment(threads),
    )
    record_pair(ws, pair)
    return pair


def _runs_in(variant: Variant, facts: dict) -> str:
    """The precision the runtime computed in: what it reported (OpenVINO lowers fp32 models to bf16 on CPUs with
    native bf16 unless told otherwise), else the variant's own (float32 for an fp32 model)."""
    return facts.get("runtime_compute_dtype") or variant.metrics.get("compute_dtype") or "float32"


@dataclass(frozen=True)
class Toolchain:
    name: str
    backend: str
    fp32_chain: str  # the chain of its fp32 form, e.g. "train+export"
    int8_method: str  # the int8 method of the toolchain's own quantizer


TOOLCHAINS = (
    Toolchain("torch.compile", "torch-compile-cpu", "train", "int8-pt2e"),
    Toolchain("ONNX Runtime", "ort-cpu", "train+export", "int8-ort"),
    Toolchain("OpenVINO", "openvino-cpu", "train+export", "int8-nncf"),
)


def _made(ws: Workspace, root: Variant, chain: str) -> Variant | None:
    """The newest variant of `chain` made from `root` with the stages' default options (no --float-layers)."""
    found = [
        v
        for v in ws.variants(root.model, root.dataset)
        if v.chain == chain and ws.lineage(v)[0].id == root.id and not v.config.get("float_layers")
    ]
    return max(found, key=lambda v: v.created_at) if found else None


def side_by_side(
    ws: Workspace, root: Variant, batch_sizes: list[int], threads: int, *, command: str, log: Callable = print
) -> list[dict]:
    """For each batch size: every toolchain's fp32 and int8 form over torch.compile's fp32 form of `root` (a
    trained variant), and
    each int8 form over its toolchain's fp32 form, all paired and stored. A form not made yet (`optimize all`
    makes them) or a backend not installed is said in one line and left out. Returns the pairs."""
    forms = []  # (toolchain, precision, variant)
    for tc in TOOLCHAINS:
        ok, why = get_backend(tc.backend).available()
        if not ok:
            log(f"{tc.name}: {tc.backend} is not available here ({why}); left out")
            continue
        fp32 = root if tc.fp32_chain == root.chain else _made(ws, root, tc.fp32_chain)
        int8 = _made(ws, root, f"{tc.fp32_chain}+quantize[{tc.int8_method}]")
        for precision, v in (("fp32", fp32), ("int8", int8)):
            if v is None:
                log(f"{tc.name} {precision}: not made yet (optimize all --model {root.model} makes it); left out")
            else:
                forms.append((tc, precision, v))
    reference = next((f for f in forms if f[0] is TOOLCHAINS[0] and f[1] == "fp32"), None)
    if reference is None:
        log("torch.compile fp32, the reference, cannot run here; nothing measured")
        return []
    pairs = []
    for bs in batch_sizes:
        with LoadedRuntimes() as runtimes:  # each form loaded once at this batch size: the reference is in every pair
            for tc, precision, v in forms:
                todo = [] if (tc, precision) == reference[:2] else [reference]
                own = next((f for f in forms if f[0] is tc and f[1] == "fp32"), None)
                if precision == "int8" and own is not None and own[0] is not reference[0]:
                    todo.append(own)
                for base_tc, base_precision, base in todo:
                    pair = measure_pair(
                        ws, v, tc.backend, base, base_tc.backend, bs, threads, command=command, runtimes=runtimes
                    )
                    pairs.append(pair)
                    log(
                        f"batch {bs}: {tc.name} {precision} ({v.id[:8]}) over {base_tc.name} {base_precision} "
                        f"({base.id[:8]}): {pair['speedup']:.2f}x"
                    )
    return pairs
