"""`optimize all`: every stage and the chains prune→fine-tune, each quantization method, export,
prune→quantize, prune→export→int8-ort. A chain that fails is reported and the others go on; the store's
atomic writes mean a failed stage leaves nothing behind. Chains share stages: the same (parent, stage,
config) is made once and found the next time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from deploybench.errors import failure_line, traceback_tail
from deploybench.optimize.base import Stage
from deploybench.optimize.choices import QUANT_METHODS
from deploybench.optimize.export import ExportStage
from deploybench.optimize.prune import PruneStage
from deploybench.optimize.quantize import METHODS, QuantizeStage
from deploybench.platform.progress import progress as progress_display
from deploybench.store import Variant, Workspace

QAT_TRIGGER = 0.01  # run QAT only when int8-pt2e loses more than 1 point of top-1


@dataclass
class Chain:
    name: str
    steps: list[Stage]
    # Why this chain is skipped, given the variants made so far by chain name (None: run it).
    skip: Callable[[dict[str, Variant]], str | None] = lambda done: None


@dataclass
class ChainResult:
    name: str
    status: str  # ok | failed | skipped
    variants: list[Variant] = field(default_factory=list)
    message: str = ""


def _qat_needed(done: dict[str, Variant]) -> str | None:
    ptq = done.get("quantize:int8-pt2e")
    if ptq is None:
        return "int8-pt2e did not run, so its accuracy drop is unknown"
    drop = -(ptq.metrics.get("accuracy_delta") or 0.0)
    if drop <= QAT_TRIGGER:
        return f"int8-pt2e loses {100 * drop:.2f} points (<= {100 * QAT_TRIGGER:.0f}): QAT not needed"
    return None


def _quant_skip(name: str, force_qat: bool) -> Callable[[dict[str, Variant]], str | None]:
    """Why `optimize all` skips method `name` given what it made so far: what the machine says of the method,
    and for QAT, whether int8-pt2e lost enough accuracy to need it."""

    def skip(done: dict[str, Variant]) -> str | None:
        if why := METHODS[name].left_out_of_all():
            return why
        return _qat_needed(done) if name == "qat" and not force_qat else None

    return skip


def default_chains(
    *,
    ratio: float = 0.5,
    finetune_epochs: int = 2,
    finetune_minutes: float | None = None,
    distill: bool = True,
    calib_size: int = 512,
    qat_epochs: int = 1,
    qat_minutes: float | None = None,
    force_qat: bool = False,
) -> list[Chain]:
    """The chains `optimize all` runs."""
    export = ExportStage()
    prune = PruneStage(ratio=ratio, finetune_epochs=finetune_epochs, finetune_minutes=finetune_minutes, distill=distill)

    def quant(method: str) -> QuantizeStage:
        return QuantizeStage(method=method, calib_size=calib_size, qat_epochs=qat_epochs, qat_minutes=qat_minutes)

    chains = [Chain("export", [export])]
    for spec in QUANT_METHODS.values():
        if spec.in_all:
            chains.append(Chain(f"quantize:{spec.name}", [quant(spec.name)], skip=_quant_skip(spec.name, force_qat)))
    chains += [
        Chain("prune", [prune]),
        Chain("prune→int8-pt2e", [prune, quant("int8-pt2e")]),
        Chain("prune→export", [prune, export]),
        Chain("prune→export→int8-ort", [prune, export, quant("int8-ort")]),
    ]
    return chains


def _run_chain(ws: Workspace, root: Variant, data_dir, chain: Chain, log) -> ChainResult:
    """Run the stages of `chain` from `root`; a failure is logged and returned, not raised (KeyboardInterrupt is)."""
    made, parent = [], root
    try:
        for stage in chain.steps:
            parent = stage.run(ws, parent, data_dir)
            made.append(parent)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001  one broken chain must not stop the others
        log(f"chain {chain.name} failed: {failure_line(exc)}" + traceback_tail(exc))
        return ChainResult(chain.name, "failed", made, failure_line(exc))
    return ChainResult(chain.name, "ok", made)


def run_chains(
    ws: Workspace, root: Variant, data_dir, chains: list[Chain], *, progress: bool = True, log=print
) -> list[ChainResult]:
    """Run every chain from `root`; failures are caught, reported and do not stop the others.

    Args:
        progress: show progress: a bar on a terminal, else one line per chain that runs through.
        log: where the lines go; a failed chain and a skipped one (with the reason) are always logged.
    Returns:
        one result per chain, in order.
    """
    results, done = [], {}
    bar = progress_display(
        chains, desc="optimize all", unit="chain", log=log, enabled=progress, leave=None, dynamic_ncols=True
    )
    for chain in bar:
        bar.set_postfix_str(chain.name)
        reason = chain.skip(done)
        if reason:
            results.append(ChainResult(chain.name, "skipped", message=reason))
            log(f"{chain.name} skipped: {reason}")
            continue
        start_s = time.perf_counter()
        result = _run_chain(ws, root, data_dir, chain, log)
        results.append(result)
        if result.status == "ok":
            done[chain.name] = result.variants[-1]
            bar.milestone(f"{chain.name} ok in {time.perf_counter() - start_s:.1f} s -> variant {done[chain.name].id}")
    bar.close()
    return results


def optimize_all(
    ws: Workspace, root: Variant, data_dir, *, progress: bool = True, log=print, **options
) -> list[ChainResult]:
    """`optimize all`: the default chains from `root` (options: see `default_chains`)."""
    return run_chains(ws, root, data_dir, default_chains(**options), progress=progress, log=log)


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "bytes":
        return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"
    return f"{value:,}"


def summary_table(root: Variant, results: list[ChainResult]) -> str:
    """The closing table: one row per variant (root first), then failed and skipped chains."""
    rows, seen = [root], {root.id}
    for r in results:
        for v in r.variants:
            if v.id not in seen:
                rows.append(v)
                seen.add(v.id)
    table = [("variant", "stages", "format", "params", "MACs", "size", "top-1", "agree", "note")]
    for v in rows:
        m = v.metrics
        table.append(
            (
                v.id,
                v.chain,
                v.format,
                _fmt(m.get("params"), "int"),
                _fmt(m.get("macs"), "int"),
                _fmt(v.size_bytes, "bytes"),
                _fmt(m.get("accuracy_top1"), "pct"),
                _fmt(m.get("agreement_top1"), "pct") if v.parent_id else "-",
                m.get("note") or "",
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.status != "ok":
            lines.append(f"{r.status}: {r.name}: {r.message}")
    return "\n".join(lines)
