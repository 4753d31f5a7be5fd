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
import re
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from deploybench.errors import DamagedStore, UserError
from deploybench.store.atomic import (
    FILE_MODE,
    exclusive,
    fsync_dir,
    fsync_tree,
    lock_path_for,
    raise_if_disk_full,
    safe_component,
    sweep_stale_dirs,
    temp_dir_for,
)
from deploybench.store.provenance import files_digest, seal_variant

SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
    id TEXT PRIMARY KEY, parent_id TEXT, model TEXT NOT NULL, dataset TEXT NOT NULL, stage TEXT NOT NULL,
    config TEXT NOT NULL, format TEXT NOT NULL, files TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, seal TEXT);
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
TABLES = ("variants", "training_runs", "measurements", "machine", "commands")
SQLITE_HEADER = b"SQLite format 3\x00"
_VARIANT_ID = re.compile(r"[0-9a-f]{16}")
_ID_PREFIX = re.compile(r"[0-9a-f]{1,16}")
_JSON_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


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
    seal: str | None = None  # made by the account that made the variant (`store.provenance`)
    recorded: bool = field(default=False, compare=False)  # read from the store, not being made

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


def _is_variant_id(value) -> bool:
    return isinstance(value, str) and _VARIANT_ID.fullmatch(value) is not None


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite's error says the file is damaged or no database at all. Busy, full and read-only
    databases raise sqlite3.OperationalError instead, which keeps its own message."""
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+; before, both are plain DatabaseErrors
    return not isinstance(exc, DamagedStore) and (
        type(exc) is sqlite3.DatabaseError or name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"
    )


def _like_prefix(prefix: str) -> str:
    """A pattern for `LIKE ? ESCAPE '\\'` matching what starts with `prefix`, its `%`, `_` and `\\` literal."""
    return re.sub(r"([\\%_])", r"\\\1", prefix) + "%"


def _json_kind(value) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _bad_file_name(name) -> bool:
    """Whether a file name read from the store could point outside its variant's folder (or is no file name)."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        return True
    path = PurePosixPath(name)
    return path.is_absolute() or ".." in path.parts or os.path.normpath(name) != name


def _run_write(write: Callable[[Path], dict | None], folder: Path) -> dict:
    """Call a variant's `write(folder)`. Returns its metrics ({} for None); a full disk is raised as ENOSPC."""
    try:
        return write(folder) or {}
    except OSError:
        raise
    except Exception as exc:  # runtimes (ONNX Runtime, ...) report a full disk in their own exceptions
        raise_if_disk_full(folder, exc)
        raise


def _link_new(src: str, dst: Path) -> None:
    """Put the file `src` at `dst` unless a file is there already (then `dst` is left as it is)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        pass  # another process made the store first: that one is used
    except OSError:  # a file system without hard links; two processes making one new store at once may race here
        if not dst.exists():
            os.rename(src, dst)


_VARIANT_COLUMNS = (
    "id, parent_id, model, dataset, stage, config, format, files, size_bytes, sha256, metrics, created_at, seal"
)


def _insert_variant(con: sqlite3.Connection, row: tuple) -> None:
    """Insert or replace a variants row (its columns in `_VARIANT_COLUMNS` order) in the caller's transaction. A
    store made before variants were sealed gets its `seal` column the first time a variant is written to it."""
    if "seal" not in {column[1] for column in con.execute("PRAGMA table_info(variants)")}:
        con.execute("ALTER TABLE variants ADD COLUMN seal TEXT")
    con.execute(f"INSERT OR REPLACE INTO variants ({_VARIANT_COLUMNS}) VALUES ({','.join('?' * 13)})", row)


class Workspace:
    """A folder holding the SQLite store and the artifacts of every variant."""

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise UserError(f"workspace {self.root} does not exist")
            try:
                # exist_ok: another process may make the same new workspace at the same moment (two commands
                # started at once); a file in its place still fails.
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create workspace {self.root}: {exc.strerror}") from None
        self.db_path = self.root / "deploybench.db"
        self.artifacts = self.root / "artifacts"
        try:
            if not self.db_path.exists():
                self._create_store()
            self._open_store()
        except (sqlite3.OperationalError, OSError) as exc:
            if isinstance(exc, DamagedStore) or os.access(self.root, os.W_OK):
                raise
            code = errno.EROFS if _read_only_fs(self.root) else errno.EACCES  # say why SQLite could not open it
            raise OSError(code, f"workspace is not writable: {os.strerror(code)}", str(self.root)) from None

    # -- the database file -------------------------------------------------------------------------------
    def damaged(self, what: str) -> DamagedStore:
        """The error for a damaged store. Args: what is wrong, on one line. Returns the DamagedStore, whose message
        also names the file and how to recover."""
        db = self.db_path
        return DamagedStore(
            f"{db} is damaged: {what}. The artifacts under {self.artifacts} are untouched. To recover, restore "
            f"{db.name} from a copy, or move it aside (mv {db} {db}.damaged) and run train, optimize and profile run "
            f"(or pipeline) again, which make a new store; `sqlite3 {db}.damaged .recover` prints the rows SQLite "
            f"can still read"
        )

    def _create_store(self) -> None:
        """Make a new store: the schema is written to a temporary file that is then linked into place, so that no
        process sees a half-made store (an empty or foreign file is refused as damaged, never written to) and a
        store another process has just made is kept."""
        fd, tmp = tempfile.mkstemp(prefix=".deploybench.db.", suffix=".tmp", dir=self.root)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        try:
            con = sqlite3.connect(tmp, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode = WAL")
                con.executescript(SCHEMA)
            finally:
                con.close()  # the last connection folds the WAL file into the database and removes it
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            _link_new(tmp, self.db_path)
        finally:
            for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    def _check_header(self) -> None:
        """Refuse a `deploybench.db` that is not an SQLite database (empty, garbage, a folder) before SQLite opens
        it: SQLite would take an empty file for a new database and write into it."""
        if not self.db_path.is_file():
            raise self.damaged("it is not a file")
        with open(self.db_path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise self.damaged("the file is empty" if not header else "it is not an SQLite database")

    def _open_store(self) -> None:
        """Check the existing store before anything is written to it: an SQLite file holding deploybench's tables,
        whole (SQLite's quick_check). A store of an earlier version gets the tables added since."""
        self._check_header()
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)  # no journal mode set: reads only
        try:
            with self._guard():
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "variants" not in tables:
                    raise self.damaged("it is an SQLite database without deploybench's tables")
                problems = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise self.damaged(f"SQLite's quick_check says: {' '.join(problems[0].split())}")
        finally:
            con.close()
        if not set(TABLES) <= tables:
            con = self._connect()
            try:
                con.executescript(SCHEMA)
            finally:
                con.close()

    # -- connections -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Raise SQLite's errors for a damaged file as DamagedStore; every other error passes as it is."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if _corrupt(exc):
                raise self.damaged(f"SQLite says: {exc}") from exc
            raise

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            with self._guard():
                con.row_factory = sqlite3.Row
                con.execute("PRAGMA busy_timeout = 60000")
                if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    con.execute("PRAGMA journal_mode = WAL")
                con.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            con.close()
            raise
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`BEGIN IMMEDIATE`): every statement in it lands, or none does."""
        con = self._connect()
        try:
            with self._guard():
                con.execute("BEGIN IMMEDIATE")
                yield con
                con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                    con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
            with self._guard():
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

    def _json(self, row: sqlite3.Row, column: str, kind: type, where: str):
        """`row[column]` parsed as JSON. Args: the JSON's expected type (dict or list), the row's name for the
        error. Returns the value; anything else is a DamagedStore."""
        try:
            value = json.loads(row[column])
        except (TypeError, ValueError):
            raise self.damaged(f"{where}: its {column} is not JSON") from None
        if not isinstance(value, kind):
            raise self.damaged(f"{where}: its {column} is {_json_kind(value)}, not {_json_kind(kind())}")
        return value

    def _check_variant_row(self, row: sqlite3.Row, where: str) -> None:
        """Validate the columns of a variants row that name things (ids, names, file names) as user input is."""
        if not _is_variant_id(row["id"]):
            raise self.damaged(f"{where}: its id is not 16 lowercase hex digits")
        if row["parent_id"] is not None and not _is_variant_id(row["parent_id"]):
            raise self.damaged(f"{where}: its parent_id {str(row['parent_id'])[:40]!r} is not a variant id")
        for column in ("model", "dataset", "stage", "format", "sha256"):
            if not isinstance(row[column], str):
                raise self.damaged(f"{where}: its {column} is not text")
        if not isinstance(row["size_bytes"], int) or not isinstance(row["created_at"], (int, float)):
            raise self.damaged(f"{where}: its size_bytes or created_at is not a number")

    def _variant_files(self, row: sqlite3.Row, where: str) -> list[str]:
        """The row's file names: relative paths inside the variant's folder, without `..`."""
        files = self._json(row, "files", list, where)
        for name in files:
            if _bad_file_name(name):
                raise self.damaged(
                    f"{where}: its file name {str(name)[:80]!r} is not a path inside the variant's folder"
                )
        return files

    def _row_to_variant(self, row: sqlite3.Row) -> Variant:
        """A variants row as a Variant, every column checked: a row that does not hold up is a DamagedStore."""
        where = f"variants row {str(row['id'])[:40]!r}"
        self._check_variant_row(row, where)
        config = self._json(row, "config", dict, where)
        lineage = config.get("_lineage", [])
        if not isinstance(lineage, list) or not all(isinstance(s, str) for s in lineage):
            raise self.damaged(f"{where}: its config's _lineage is not a list of stage names")
        v = Variant(
            id=row["id"],
            parent_id=row["parent_id"],
            model=row["model"],
            dataset=row["dataset"],
            stage=row["stage"],
            config=config,
            format=row["format"],
            files=self._variant_files(row, where),
            size_bytes=row["size_bytes"],
            sha256=row["sha256"],
            metrics=self._json(row, "metrics", dict, where),
            created_at=row["created_at"],
        )
        try:
            v.path = self.artifact_dir(v.model, v.dataset, v.id)
        except UserError as exc:  # a model or dataset name that cannot be a folder name
            raise self.damaged(f"{where}: {exc}") from None
        v.seal = row["seal"] if "seal" in row.keys() else None  # a store made before seals
        v.recorded = True
        return v

    def get_variant(self, variant_id: str) -> Variant:
        """The variant with this id, or the one whose id starts with it. Args: an id or a prefix of one (user
        input: anything else is refused). Returns the Variant; none or several is a UserError."""
        if not isinstance(variant_id, str) or not _ID_PREFIX.fullmatch(variant_id):
            raise UserError(
                f"no variant {variant_id!r} in {self.root}: a variant is named by its id (16 lowercase "
                f"hex digits) or a prefix of it"
            )
        rows = self._query("SELECT * FROM variants WHERE id = ?", (variant_id,))
        if not rows:
            rows = self._query("SELECT * FROM variants WHERE id LIKE ? ESCAPE '\\'", (_like_prefix(variant_id),))
            if len(rows) != 1:
                raise UserError(
                    f"no variant {variant_id!r} in {self.root}"
                    if not rows
                    else f"variant prefix {variant_id!r} is ambiguous"
                )
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

    def making(self, vid: str, on_wait: Callable[[], None] | None = None):
        """A context that holds the lock on making variant `vid` in this workspace: one process of this machine
        makes a variant at a time (`create_variant` holds it; a command whose work comes before `create_variant`,
        such as training, holds it around that work too). `on_wait()` is called once if another process holds it."""
        return exclusive(lock_path_for(self.root, f"variant/{vid}"), on_wait)

    def create_variant(
        self,
        *,
        model: str,
        dataset: str,
        stage: str,
        config: dict,
        parent: Variant | None,
        fmt: str,
        write: Callable[[Path], dict | None],
    ) -> tuple[Variant, bool]:
        """Make a variant by calling `write(tmp_dir)`, which writes the files and may return metrics.

        Returns (variant, created). An existing variant with the same id is returned as is (created=False). One
        process of this machine makes a variant at a time: a second waits, then finds the first's, so neither
        repeats the work nor writes into a run folder (a pruning's fine-tuning checkpoint) the other uses or
        removes. A process elsewhere that stores it while `write` runs wins the same way (its folder is kept,
        this one's is dropped). The folder appears only complete (atomic rename) and the row only after it.
        """
        parent_id = parent.id if parent else None
        vid = self.variant_id(model, dataset, parent_id, stage, config)
        existing = self.stored_variant(vid)
        if existing is not None:
            return existing, False
        with self.making(vid):
            existing = self.stored_variant(vid)
            if existing is not None:
                return existing, False
            final = self.artifact_dir(model, dataset, vid)
            sweep_stale_dirs(final.parent)
            tmp = temp_dir_for(final)
            try:
                metrics = _run_write(write, tmp)
                fsync_tree(tmp)
                files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
                hashes = {f: file_sha256(tmp / f) for f in files}
                size = sum((tmp / f).stat().st_size for f in files)
                digest = files_digest(hashes)
                lineage = (parent.stages if parent else []) + [stage]
                full_config = dict(config, _lineage=lineage)
                row = (
                    vid,
                    parent_id,
                    model,
                    dataset,
                    stage,
                    _canonical(full_config),
                    fmt,
                    json.dumps(files),
                    size,
                    digest,
                    _canonical(metrics),
                    time.time(),
                    seal_variant(vid, model, dataset, fmt, digest),
                )
                created = self._publish(tmp, final, row)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # left only when the variant was there first, or on a failure
        return self.get_variant(vid), created

    def _publish(self, tmp: Path, final: Path, row: tuple) -> bool:
        """Rename the written folder `tmp` to `final` and insert its variants `row`, inside one write transaction:
        its lock makes the rename and the row one step for every writer, so a folder found without its row is a
        dead writer's and is replaced. Returns False (nothing done) when the variant is stored already."""
        renamed = False
        try:
            with self.transaction() as con:
                if con.execute("SELECT 1 FROM variants WHERE id = ?", (row[0],)).fetchone() and final.is_dir():
                    return False  # another process made it while this one wrote
                if final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)
                renamed = True
                _insert_variant(con, row)
        except BaseException:
            if renamed:  # the row did not land: no folder without its row is left behind
                shutil.rmtree(final, ignore_errors=True)
            raise
        fsync_dir(final.parent)
        return True

    def update_metrics(self, variant_id: str, metrics: dict) -> None:
        """Merge `metrics` into a variant's recorded metrics."""
        with self.transaction() as con:
            row = con.execute("SELECT metrics FROM variants WHERE id = ?", (variant_id,)).fetchone()
            if row is None:
                raise UserError(f"no variant {variant_id!r} in {self.root}")
            merged = dict(self._json(row, "metrics", dict, f"variants row {variant_id!r}"), **metrics)
            con.execute("UPDATE variants SET metrics = ? WHERE id = ?", (_canonical(merged), variant_id))

    # -- training runs -----------------------------------------------------------------------------------
    def start_training_run(self, run_id: str, model: str, dataset: str, config: dict) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO training_runs VALUES (?,?,?,?,?,?,?,?)",
                (run_id, model, dataset, _canonical(config), "running", None, time.time(), None),
            )

    def finish_training_run(self, run_id: str, status: str, variant_id: str | None = None) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE training_runs SET status = ?, variant_id = ?, finished_at = ? WHERE id = ?",
                (status, variant_id, time.time(), run_id),
            )

    def training_runs(self) -> list[dict]:
        return [
            dict(r, config=self._json(r, "config", dict, f"training_runs row {str(r['id'])[:40]!r}"))
            for r in self._query("SELECT * FROM training_runs")
        ]

    # -- measurements ------------------------------------------------------------------------------------
    def add_measurements(self, rows: list[dict]) -> None:
        """Insert measurement rows (variant_id, backend, device, batch_size, threads, metrics, environment)
        in one transaction: all of them or none."""
        now = time.time()
        with self.transaction() as con:
            con.executemany(
                "INSERT INTO measurements (variant_id, backend, device, batch_size, threads, metrics, environment, "
                "created_at) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        r["variant_id"],
                        r["backend"],
                        r["device"],
                        int(r["batch_size"]),
                        int(r["threads"]),
                        _canonical(r["metrics"]),
                        _canonical(r["environment"]),
                        now,
                    )
                    for r in rows
                ],
            )

    def measurements(self, variant_id: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM measurements", ()
        if variant_id:
            sql, args = sql + " WHERE variant_id = ?", (variant_id,)
        return [self._measurement(r) for r in self._query(sql + " ORDER BY id", args)]

    def _measurement(self, row: sqlite3.Row) -> dict:
        """A measurements row as a dict, its JSON parsed and its names checked (a DamagedStore otherwise)."""
        where = f"measurements row {row['id']}"
        if not _is_variant_id(row["variant_id"]):
            raise self.damaged(f"{where}: its variant_id is not a variant id")
        if not isinstance(row["batch_size"], int) or not isinstance(row["threads"], int):
            raise self.damaged(f"{where}: its batch_size or threads is not a whole number")
        return dict(
            row,
            metrics=self._json(row, "metrics", dict, where),
            environment=self._json(row, "environment", dict, where),
        )

    # -- the commands that wrote to this workspace (provenance for the report) --------------------------
    def log_command(self, argv: list[str]) -> int:
        """Record a command line; returns its row id (for `forget_command`)."""
        with self.transaction() as con:
            cur = con.execute(
                "INSERT INTO commands (argv, cwd, created_at) VALUES (?,?,?)",
                (json.dumps(argv), os.getcwd(), time.time()),
            )
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
        return [
            dict(argv=self._command_argv(r), cwd=r["cwd"], created_at=r["created_at"])
            for r in self._query("SELECT * FROM commands ORDER BY id")
        ]

    def _command_argv(self, row: sqlite3.Row) -> list[str]:
        argv = self._json(row, "argv", list, f"commands row {row['id']}")
        if not all(isinstance(a, str) for a in argv):
            raise self.damaged(f"commands row {row['id']}: its argv is not a list of text")
        return argv

    # -- machine facts (peak FLOP/s, ...) ---------------------------------------------------------------
    def get_machine(self, key: str) -> dict | None:
        rows = self._query("SELECT value FROM machine WHERE key = ?", (key,))
        return self._json(rows[0], "value", dict, f"machine row {key!r}") if rows else None

    def set_machine(self, key: str, value: dict) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO machine VALUES (?,?,?)", (key, _canonical(value), time.time()))
