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


def pair_path(ws: Workspace, pair: dict) -> Path:
    """The file of `pair`'s `KEY` in `ws`: a pair of the same key, measured again or imported, replaces it."""
    digest = hashlib.sha256(json.dumps([pair[k] for k in KEY]).encode()).hexdigest()[:16]
    return ws.root / PAIRS_DIR / f"{pair['variant'][:16]}-{digest}.json"


def write_pair(ws: Workspace, pair: dict) -> Path:
    """Store `pair` as it is (an imported pair keeps the time it was recorded)."""
    return atomic_write_text(pair_path(ws, pair), json.dumps(pair, indent=1, sort_keys=True))


def record_pair(ws: Workspace, pair: dict) -> Path:
    """Store `pair` (the `KEY` fields, `speedup`, and what produced it) with the time it was recorded."""
    missing = [k for k in (*KEY, "speedup") if k not in pair]
    if missing:
        raise ValueError(f"a pair needs {', '.join(missing)}")
    return write_pair(ws, dict(pair, recorded_at=time.time()))


def parse_pair(text: str) -> dict | None:
    """The pair a file's `text` holds, or None when it is not a pair."""
    try:
        pair = json.loads(text)
    except ValueError:
        return None
    ok = (
        isinstance(pair, dict)
        and all(k in pair for k in KEY)
        and isinstance(pair["variant"], str)
        and isinstance(pair["against"], str)
        and isinstance(pair.get("speedup"), (int, float))
        and isinstance(pair.get("recorded_at", 0), (int, float))  # readers order by it
    )
    return pair if ok else None


def load_pair(path: Path) -> dict | None:
    """The pair in `path`, or None when there is none or the file is not a pair."""
    try:
        return parse_pair(path.read_text())
    except (OSError, ValueError):
        return None


def stored_pairs(ws: Workspace) -> list[dict]:
    """Every readable pair of the workspace, oldest first."""
    found = (load_pair(p) for p in (ws.root / PAIRS_DIR).glob("*.json"))
    return sorted((p for p in found if p is not None), key=lambda p: p.get("recorded_at", 0))
