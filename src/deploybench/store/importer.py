"""`deploybench import`: merge the variants, measurements, paired speed-ups and search summaries of a workspace made
elsewhere into this one.

Variant ids are content-addressed, so a variant already here is skipped and importing twice changes nothing; an
id that is here with other bytes (sha256) is refused. The other workspace is untrusted input: its rows pass the
store's checks, each artifact is hashed as it is copied and must match its recorded sha256, and no imported
variant is sealed (a torch.export program from elsewhere keeps needing `--trust-artifacts`). Everything is checked
before anything is written; folders are copied beside their place, then renamed in with the rows in one
transaction. A paired speed-up or search summary that is here too (same pair of variants, backends, batch size,
threads and machine; same study) is replaced only by a later one, as measuring again or summing the study up again
would; an imported summary's study stays in the other workspace's database, so it is marked as not in this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from deploybench.errors import UserError
from deploybench.store.atomic import (
    FILE_MODE,
    atomic_write_text,
    fsync_dir,
    fsync_tree,
    sweep_stale_dirs,
    temp_dir_for,
)
from deploybench.store.pairs import PAIRS_DIR, load_pair, pair_path, parse_pair
from deploybench.store.provenance import files_digest
from deploybench.store.search_summaries import SUMMARY_DIR, load_summary, parse_summary, summary_path
from deploybench.store.workspace import Variant, Workspace, _canonical, _insert_variant

_MEASUREMENT_COLUMNS = (
    "variant_id",
    "backend",
    "device",
    "batch_size",
    "threads",
    "metrics",
    "environment",
    "created_at",
)


@dataclass
class ImportSummary:
    """What an import added (ids of new variants, counts of the rest) and what it found here already (a pair or
    summary here that is as recent as the other's counts as present)."""

    variants: list[str] = field(default_factory=list)
    measurements: int = 0
    pairs: int = 0
    summaries: int = 0
    variants_present: int = 0
    measurements_present: int = 0
    pairs_present: int = 0
    summaries_present: int = 0


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy the regular file `src` to `dst` (no symlink followed) and return the sha256 of the bytes written."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    h = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{src} is not a regular file; refusing to import it")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.dup(fd), "rb") as fin, open(dst, "xb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                h.update(chunk)
                fout.write(chunk)
        os.chmod(dst, FILE_MODE)
    finally:
        os.close(fd)
    return h.hexdigest()


def _hash_file(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UserError(f"{path} is not a regular file; refusing to import it")
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _check_files(v: Variant, hash_file) -> None:
    """Refuse the source variant `v` unless its recorded files hash to its recorded sha256 (via `hash_file`)."""
    try:
        hashes = {name: hash_file(name) for name in v.files}
    except OSError as exc:
        raise UserError(
            f"variant {v.id} in {v.path}: {exc.strerror or exc}: {exc.filename}; nothing imported"
        ) from None
    if files_digest(hashes) != v.sha256:
        raise UserError(
            f"variant {v.id}: its files in {v.path} do not match its recorded sha256 (changed or "
            f"tampered with); nothing imported"
        )


def _measurement_key(m: dict) -> tuple:
    """What makes two measurement rows the same row (the row id is each store's own)."""
    return (
        m["variant_id"],
        m["backend"],
        m["device"],
        m["batch_size"],
        m["threads"],
        _canonical(m["metrics"]),
        _canonical(m["environment"]),
        float(m["created_at"]),
    )


def _plan(ws: Workspace, other: Workspace) -> tuple[list[Variant], list[dict], ImportSummary]:
    """The variants and measurements of `other` to add to `ws`, every refusal raised before anything is written."""
    summary = ImportSummary()
    theirs = other.variants()
    ids = {v.id for v in theirs}
    new = []
    for v in theirs:
        mine = ws.find_variant(v.id)
        if mine is not None:
            if mine.sha256 != v.sha256:
                raise UserError(
                    f"variant {v.id} ({v.model} {v.chain}) is in both workspaces with different bytes "
                    f"(sha256 {v.sha256[:12]} there, {mine.sha256[:12]} here); nothing imported"
                )
            summary.variants_present += 1
            continue
        if v.parent_id and v.parent_id not in ids and ws.find_variant(v.parent_id) is None:
            raise UserError(f"variant {v.id}: its parent {v.parent_id} is in neither workspace; nothing imported")
        _check_files(v, lambda name, v=v: _hash_file(v.path / name))
        new.append(v)
    present = {_measurement_key(m) for m in ws.measurements()}
    measurements = []
    for m in other.measurements():
        key = _measurement_key(m)
        if key in present:
            summary.measurements_present += 1
        else:
            present.add(key)  # a row twice in the source comes in once
            measurements.append(m)
    return new, measurements, summary


def _read_records(folder: Path, parse) -> list[tuple[dict, str]]:
    """Each record of `folder`'s JSON files that `parse` accepts, with the text it was read from."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        record = parse(text)
        if record is not None:
            found.append((record, text))
    return found


def _plan_records(ws: Workspace, other: Workspace, known, summary: ImportSummary) -> dict[Path, str]:
    """The paired speed-ups and search summaries of `other` to write into `ws` (path: text), each newer than the one
    at its place here, if any. A pair of a variant in neither workspace (`known` says) is refused."""
    writes: dict[Path, str] = {}
    pairs = _read_records(other.root / PAIRS_DIR, parse_pair)
    for pair, text in sorted(pairs, key=lambda r: _stamp(r[0], "recorded_at")):  # the latest of a key wins
        for vid in (pair["variant"], pair["against"]):
            if not known(vid):
                raise UserError(
                    f"a paired speed-up of {pair['variant']} over {pair['against']} names variant {vid}, which is in "
                    "neither workspace; nothing imported"
                )
        dest = pair_path(ws, pair)
        mine = load_pair(dest)
        if mine is not None and _stamp(mine, "recorded_at") >= _stamp(pair, "recorded_at"):
            summary.pairs_present += 1
            continue
        writes[dest] = text
    summary.pairs = len(writes)
    summaries = _read_records(other.root / SUMMARY_DIR, parse_summary)
    for found, _ in sorted(summaries, key=lambda r: _stamp(r[0], "finished_at")):  # the latest of a study wins
        dest = summary_path(ws, found["study"])
        mine = load_summary(dest)
        if mine is not None and _stamp(mine, "finished_at") >= _stamp(found, "finished_at"):
            summary.summaries_present += 1
            continue
        # Its study's trials stay in the other workspace's database: the report shows the stored importances.
        writes[dest] = json.dumps(dict(found, storage_in_workspace=False), indent=1, default=str)
    summary.summaries = len(writes) - summary.pairs
    return writes


def _stamp(record: dict, key: str) -> float:
    """When `record` was made (`key`), 0 when it does not say."""
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _stage(ws: Workspace, v: Variant) -> Path:
    """Copy `v`'s files into a temporary folder beside its place in `ws`, checking the copied bytes."""
    final = ws.artifact_dir(v.model, v.dataset, v.id)
    sweep_stale_dirs(final.parent)
    tmp = temp_dir_for(final)
    try:
        _check_files(v, lambda name: _copy_hashed(v.path / name, tmp / name))  # the bytes copied are the bytes checked
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def import_workspace(ws: Workspace, other_root: str | os.PathLike) -> ImportSummary:
    """Merge the variants and measurements of the workspace at `other_root` into `ws` (module docstring).
    Returns what was added; a conflict, a missing parent or a changed file is a UserError and nothing is added."""
    other_root = Path(other_root)
    if not (other_root / "deploybench.db").is_file():
        raise UserError(f"{other_root} is not a deploybench workspace (no deploybench.db in it)")
    if other_root.resolve() == ws.root.resolve():
        raise UserError(f"{other_root} is this workspace; nothing to import")
    other = Workspace(other_root, create=False)
    new, measurements, summary = _plan(ws, other)
    theirs = {v.id for v in new}
    records = _plan_records(ws, other, lambda vid: vid in theirs or ws.find_variant(vid) is not None, summary)
    staged: dict[str, Path] = {}
    renamed: list[Path] = []
    try:
        for v in new:
            staged[v.id] = _stage(ws, v)
        with ws.transaction() as con:
            for v in new:  # parents first: `variants()` lists by creation time
                if con.execute("SELECT 1 FROM variants WHERE id = ?", (v.id,)).fetchone():
                    continue  # another process imported it meanwhile
                final = ws.artifact_dir(v.model, v.dataset, v.id)
                if final.exists():  # a dead writer's folder without its row
                    shutil.rmtree(final)
                os.rename(staged.pop(v.id), final)
                renamed.append(final)
                # no seal: a variant from elsewhere was not made by this account
                _insert_variant(
                    con,
                    (
                        v.id,
                        v.parent_id,
                        v.model,
                        v.dataset,
                        v.stage,
                        _canonical(v.config),
                        v.format,
                        json.dumps(v.files),
                        v.size_bytes,
                        v.sha256,
                        _canonical(v.metrics),
                        v.created_at,
                        None,
                    ),
                )
                summary.variants.append(v.id)
            con.executemany(
                f"INSERT INTO measurements ({', '.join(_MEASUREMENT_COLUMNS)}) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        m["variant_id"],
                        m["backend"],
                        m["device"],
                        m["batch_size"],
                        m["threads"],
                        _canonical(m["metrics"]),
                        _canonical(m["environment"]),
                        m["created_at"],
                    )
                    for m in measurements
                ],
            )
            summary.measurements = len(measurements)
    except BaseException:
        for final in renamed:  # the rows did not land: no folder without its row is left
            shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        for tmp in staged.values():
            shutil.rmtree(tmp, ignore_errors=True)
    for final in {f.parent for f in renamed}:
        fsync_dir(final)
    for dest, text in records.items():  # each names variants that are here now
        atomic_write_text(dest, text)
    return summary
