"""The workspace store: `DIR/deploybench.db` (SQLite, WAL) and `DIR/artifacts/<model>/<dataset>/<variant-id>/`.

A variant's id is a hash of (model, dataset, parent, stage, config), so running a stage again with the same
config finds the existing variant instead of redoing the work. Writes use `BEGIN IMMEDIATE` so several
processes can share one workspace; multi-row writes are one transaction (all rows or none).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from deploybench.errors import UserError
from deploybench.store.atomic import atomic_dir, raise_if_disk_full, safe_component, sweep_stale_dirs

SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
    id TEXT PRIMARY KEY, parent_id TEXT, model TEXT NOT NULL, dataset TEXT NOT NULL, stage TEXT NOT NULL,
    config TEXT NOT NULL, format TEXT NOT NULL, files TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS variants_model ON variants(model, dataset);
CREATE TABLE IF NOT EXISTS training_runs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, dataset TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, variant_id TEXT, started_at REAL NOT NULL, finished_at REAL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, variant_id TEXT NOT NULL REFERENCES variants(id), backend TEXT NOT NULL,
    device TEXT NOT NULL, batch_size INTEGER NOT NULL, threads INTEGER NOT NULL, metrics TEXT NOT NULL,
    environment TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS measurements_variant ON measurements(variant_id);
CREATE TABLE IF NOT EXISTS machine (key TEXT PRIMARY KEY, value TEXT NOT NULL, measured_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS commands (id INTEGER PRIMARY KEY AUTOINCREMENT, argv TEXT NOT NULL, cwd TEXT NOT NULL,
    created_at REAL NOT NULL);
"""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def dataset_component(dataset: str) -> str:
    """A folder name for a dataset; `imagefolder:PATH` becomes `imagefolder-<name>-<hash of the full path>`."""
    if dataset.startswith("imagefolder:"):
        path = os.path.abspath(dataset.split(":", 1)[1])
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.basename(path))[:40] or "root"
        return f"imagefolder-{name.lstrip('.') or 'root'}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    return safe_component(dataset)


def default_workspace() -> Path:
    return Path(os.environ.get("DEPLOYBENCH_WORKSPACE", "workspace"))


@dataclass
class Variant:
    """One model artifact: the trained model or the output of an optimize stage."""

    id: str
    parent_id: str | None
    model: str
    dataset: str
    stage: str
    config: dict
    format: str
    files: list[str]
    size_bytes: int
    sha256: str
    metrics: dict = field(default_factory=dict)
    created_at: float = 0.0
    path: Path = Path()

    @property
    def stages(self) -> list[str]:
        """The chain of stages that produced this variant, oldest first (filled in by the workspace)."""
        return self.config.get("_lineage", [self.stage])

    @property
    def chain(self) -> str:
        """How tables, logs and the report name the variant's making: its stages joined by "+", with the
        quantize method in brackets (`train+quantize[bf16]`), since one parent has up to six quantized
        children whose stages alone read the same."""
        method = self.config.get("method")
        return "+".join(self.stages) + (f"[{method}]" if method else "")


def _read_only_fs(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


class Workspace:
    """A folder holding the SQLite store and the artifacts of every variant."""

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise UserError(f"workspace {self.root} does not exist")
            try:
                self.root.mkdir(parents=True)
            except OSError as exc:
                raise UserError(f"cannot create workspace {self.root}: {exc.strerror}") from None
        self.db_path = self.root / "deploybench.db"
        self.artifacts = self.root / "artifacts"
        try:
            with self._connect() as con:
                if not self._schema_present(con):
                    con.executescript(SCHEMA)
        except sqlite3.OperationalError:
            if not os.access(self.root, os.W_OK):  # say why SQLite could not open it
                code = errno.EROFS if _read_only_fs(self.root) else errno.EACCES
                raise OSError(code, f"workspace is not writable: {os.strerror(code)}", str(self.root)) from None
            raise

    # -- connections -------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout = 60000")
        if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA foreign_keys = ON")
        return con

    @staticmethod
    def _schema_present(con: sqlite3.Connection) -> bool:
        return con.execute("SELECT count(*) FROM sqlite_master WHERE name='commands'").fetchone()[0] > 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`BEGIN IMMEDIATE`): every statement in it lands, or none does."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    # -- variants ----------------------------------------------------------------------------------------
    @staticmethod
    def variant_id(model: str, dataset: str, parent_id: str | None, stage: str, config: dict) -> str:
        key = _canonical({"model": model, "dataset": dataset, "parent": parent_id, "stage": stage, "config": config})
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def artifact_dir(self, model: str, dataset: str, variant_id: str) -> Path:
        return self.artifacts / safe_component(model) / dataset_component(dataset) / variant_id

    def run_dir(self, model: str, dataset: str, name: str) -> Path:
        """Where an unfinished run (training, a pruning's fine-tuning) keeps its checkpoints until its variant is
        stored: `runs/MODEL/DATASET/NAME`."""
        return self.root / "runs" / safe_component(model) / dataset_component(dataset) / name

    def _row_to_variant(self, row: sqlite3.Row) -> Variant:
        v = Variant(id=row["id"], parent_id=row["parent_id"], model=row["model"], dataset=row["dataset"],
                    stage=row["stage"], config=json.loads(row["config"]), format=row["format"],
                    files=json.loads(row["files"]), size_bytes=row["size_bytes"], sha256=row["sha256"],
                    metrics=json.loads(row["metrics"]), created_at=row["created_at"])
        v.path = self.artifact_dir(v.model, v.dataset, v.id)
        return v

    def get_variant(self, variant_id: str) -> Variant:
        rows = self._query("SELECT * FROM variants WHERE id = ?", (variant_id,))
        if not rows:
            rows = self._query("SELECT * FROM variants WHERE id LIKE ?", (variant_id + "%",))
            if len(rows) != 1:
                raise UserError(f"no variant {variant_id!r} in {self.root}" if not rows
                                else f"variant prefix {variant_id!r} is ambiguous")
        return self._row_to_variant(rows[0])

    def find_variant(self, variant_id: str) -> Variant | None:
        rows = self._query("SELECT * FROM variants WHERE id = ?", (variant_id,))
        return self._row_to_variant(rows[0]) if rows else None

    def stored_variant(self, variant_id: str) -> Variant | None:
        """The variant with this id when it is complete (recorded and its folder there): what a command about to
        make it finds instead, before doing any work."""
        variant = self.find_variant(variant_id)
        return variant if variant is not None and variant.path.is_dir() else None

    def variants(self, model: str | None = None, dataset: str | None = None) -> list[Variant]:
        sql, args = "SELECT * FROM variants WHERE 1=1", []
        if model:
            sql, args = sql + " AND model = ?", args + [model]
        if dataset:
            sql, args = sql + " AND dataset = ?", args + [dataset]
        return [self._row_to_variant(r) for r in self._query(sql + " ORDER BY created_at", args)]

    def lineage(self, variant: Variant) -> list[Variant]:
        """The chain from the trained root to `variant`, oldest first."""
        chain = [variant]
        while chain[-1].parent_id:
            chain.append(self.get_variant(chain[-1].parent_id))
        return chain[::-1]

    def create_variant(self, *, model: str, dataset: str, stage: str, config: dict, parent: Variant | None,
                       fmt: str, write: Callable[[Path], dict | None]) -> tuple[Variant, bool]:
        """Make a variant by calling `write(tmp_dir)`, which writes the files and may return metrics.

        Returns (variant, created). An existing variant with the same id is returned as is (created=False).
        The folder appears only complete (atomic rename) and the row only after it.
        """
        parent_id = parent.id if parent else None
        vid = self.variant_id(model, dataset, parent_id, stage, config)
        existing = self.stored_variant(vid)
        if existing is not None:
            return existing, False
        final = self.artifact_dir(model, dataset, vid)
        sweep_stale_dirs(final.parent)
        if final.exists():  # complete folder of a process that died before its row was written
            shutil.rmtree(final)
        with atomic_dir(final) as tmp:
            try:
                metrics = write(tmp) or {}
            except OSError:
                raise
            except Exception as exc:  # runtimes (ONNX Runtime, ...) report a full disk in their own exceptions
                raise_if_disk_full(tmp, exc)
                raise
        try:
            files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
            hashes = {f: file_sha256(final / f) for f in files}
            size = sum((final / f).stat().st_size for f in files)
            digest = hashlib.sha256(_canonical(hashes).encode()).hexdigest()
            lineage = (parent.stages if parent else []) + [stage]
            full_config = dict(config, _lineage=lineage)
            with self.transaction() as con:
                con.execute("INSERT OR REPLACE INTO variants VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (vid, parent_id, model, dataset, stage, _canonical(full_config), fmt, json.dumps(files),
                             size, digest, _canonical(metrics), time.time()))
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return self.get_variant(vid), True

    def update_metrics(self, variant_id: str, metrics: dict) -> None:
        """Merge `metrics` into a variant's recorded metrics."""
        with self.transaction() as con:
            row = con.execute("SELECT metrics FROM variants WHERE id = ?", (variant_id,)).fetchone()
            merged = dict(json.loads(row["metrics"]), **metrics)
            con.execute("UPDATE variants SET metrics = ? WHERE id = ?", (_canonical(merged), variant_id))

    # -- training runs -----------------------------------------------------------------------------------
    def start_training_run(self, run_id: str, model: str, dataset: str, config: dict) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO training_runs VALUES (?,?,?,?,?,?,?,?)",
                        (run_id, model, dataset, _canonical(config), "running", None, time.time(), None))

    def finish_training_run(self, run_id: str, status: str, variant_id: str | None = None) -> None:
        with self.transaction() as con:
            con.execute("UPDATE training_runs SET status = ?, variant_id = ?, finished_at = ? WHERE id = ?",
                        (status, variant_id, time.time(), run_id))

    def training_runs(self) -> list[dict]:
        return [dict(r, config=json.loads(r["config"])) for r in self._query("SELECT * FROM training_runs")]

    # -- measurements ------------------------------------------------------------------------------------
    def add_measurements(self, rows: list[dict]) -> None:
        """Insert measurement rows (variant_id, backend, device, batch_size, threads, metrics, environment)
        in one transaction: all of them or none."""
        now = time.time()
        with self.transaction() as con:
            con.executemany(
                "INSERT INTO measurements (variant_id, backend, device, batch_size, threads, metrics, environment, "
                "created_at) VALUES (?,?,?,?,?,?,?,?)",
                [(r["variant_id"], r["backend"], r["device"], int(r["batch_size"]), int(r["threads"]),
                  _canonical(r["metrics"]), _canonical(r["environment"]), now) for r in rows])

    def measurements(self, variant_id: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM measurements", ()
        if variant_id:
            sql, args = sql + " WHERE variant_id = ?", (variant_id,)
        return [dict(r, metrics=json.loads(r["metrics"]), environment=json.loads(r["environment"]))
                for r in self._query(sql + " ORDER BY id", args)]

    # -- the commands that wrote to this workspace (provenance for the report) --------------------------
    def log_command(self, argv: list[str]) -> int:
        """Record a command line; returns its row id (for `forget_command`)."""
        with self.transaction() as con:
            cur = con.execute("INSERT INTO commands (argv, cwd, created_at) VALUES (?,?,?)",
                              (json.dumps(argv), os.getcwd(), time.time()))
            return int(cur.lastrowid)

    def forget_command(self, row: int) -> None:
        """Remove a command line logged by a command that then failed."""
        with self.transaction() as con:
            con.execute("DELETE FROM commands WHERE id = ?", (row,))
            # AUTOINCREMENT's counter goes back too: to the highest id another process may have logged since,
            # or away when this was the first command ever logged.
            if con.execute("SELECT COUNT(*) FROM commands").fetchone()[0]:
                con.execute("UPDATE sqlite_sequence SET seq = (SELECT MAX(id) FROM commands) WHERE name = 'commands'")
            else:
                con.execute("DELETE FROM sqlite_sequence WHERE name = 'commands'")

    def commands(self) -> list[dict]:
        return [dict(argv=json.loads(r["argv"]), cwd=r["cwd"], created_at=r["created_at"])
                for r in self._query("SELECT * FROM commands ORDER BY id")]

    # -- machine facts (peak FLOP/s, ...) ---------------------------------------------------------------
    def get_machine(self, key: str) -> dict | None:
        rows = self._query("SELECT value FROM machine WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else None

    def set_machine(self, key: str, value: dict) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO machine VALUES (?,?,?)", (key, _canonical(value), time.time()))
