"""Paired speed-ups (two variants timed in alternation in one run), kept as `WORKSPACE/pairs/<key>.json`, one file
per (variant, backend, other variant, its backend, batch size, threads, machine): a re-measurement replaces it.
Written by `profile check --against` and `profile side-by-side`, read by `profile results`. A file that is not a
pair is skipped: a reader never fails on one."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from deploybench.store.atomic import atomic_write_text
from deploybench.store.workspace import Workspace

PAIRS_DIR = "pairs"
KEY = ("variant", "backend", "against", "against_backend", "batch_size", "threads", "machine")


def record_pair(ws: Workspace, pair: dict) -> Path:
    """Store `pair` (the `KEY` fields, `speedup`, and what produced it) with the time it was recorded."""
    missing = [k for k in (*KEY, "speedup") if k not in pair]
    if missing:
        raise ValueError(f"a pair needs {', '.join(missing)}")
    digest = hashlib.sha256(json.dumps([pair[k] for k in KEY]).encode()).hexdigest()[:16]
    path = ws.root / PAIRS_DIR / f"{pair['variant'][:16]}-{digest}.json"
    return atomic_write_text(path, json.dumps(dict(pair, recorded_at=time.time()), indent=1, sort_keys=True))


def _load(path: Path) -> dict | None:
    try:
        pair = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(pair, dict) and all(k in pair for k in KEY) and isinstance(pair.get("speedup"), (int, float))
    return pair if ok else None


def stored_pairs(ws: Workspace) -> list[dict]:
    """Every readable pair of the workspace, oldest first."""
    found = (_load(p) for p in (ws.root / PAIRS_DIR).glob("*.json"))
    return sorted((p for p in found if p is not None), key=lambda p: p.get("recorded_at", 0))
