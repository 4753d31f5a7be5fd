"""Where `deploybench search` keeps each study's summary, `WORKSPACE/search/<study>.json`, and how the readers (the
report, the results files) find them. A file that is not a summary is skipped: a reader never fails on one."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from deploybench.store.workspace import Workspace

SUMMARY_DIR = "search"


def summary_path(ws: Workspace, study_name: str) -> Path:
    """`WS/search/<study>.json`; a name with other characters than letters, digits and `._+-` gets a hash."""
    slug = re.sub(r"[^A-Za-z0-9._+-]", "_", study_name).lstrip(".")[:80] or "study"
    if slug != study_name:
        slug += "-" + hashlib.sha256(study_name.encode()).hexdigest()[:8]
    return ws.root / SUMMARY_DIR / f"{slug}.json"


def parse_summary(text: str) -> dict | None:
    """The summary a file's `text` holds, or None when it is not a summary."""
    try:
        summary = json.loads(text)
    except ValueError:
        return None
    ok = (
        isinstance(summary, dict)
        and isinstance(summary.get("trials"), list)
        and isinstance(summary.get("study"), str)
        and isinstance(summary.get("finished_at") or 0, (int, float))  # readers order by it
    )
    return summary if ok else None


def load_summary(path: Path) -> dict | None:
    """The summary in `path`, or None when there is none or the file is not a summary."""
    try:
        return parse_summary(path.read_text())
    except (OSError, ValueError):
        return None


def stored_summaries(ws: Workspace) -> list[dict]:
    """Every readable search summary of the workspace, in file-name order."""
    found = (load_summary(p) for p in sorted((ws.root / SUMMARY_DIR).glob("*.json")))
    return [s for s in found if s is not None]
