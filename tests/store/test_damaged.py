"""A damaged store is refused, never written to: a database file that is empty, garbage, truncated or not
deploybench's; rows whose JSON or names do not hold up (ids, file names, model names are checked as user input
is); variant prefixes whose LIKE wildcards would match other ids; and two writers making one variant at once."""

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploybench.errors import DamagedStore, UserError
from deploybench.store import Workspace

ARGS = dict(model="lenet", dataset="cifar10", stage="train", config={"lr": 1}, parent=None, fmt="onnx")


def write_files(d):
    (d / "model.onnx").write_bytes(b"graph")
    (d / "model.onnx.data").write_bytes(b"weights" * 10)
    return {"accuracy_top1": 0.5}


def stored(tmp_path) -> tuple[Workspace, object]:
    """A workspace holding one variant, a measurement, a training run, a command and a machine fact."""
    ws = Workspace(tmp_path / "ws")
    v, _ = ws.create_variant(**ARGS, write=write_files)
    ws.add_measurements(
        [
            dict(
                variant_id=v.id,
                backend="torch-cpu",
                device="cpu",
                batch_size=1,
                threads=1,
                metrics={"latency_ms_p50": 1.0},
                environment={"cpu": "x"},
            )
        ]
    )
    ws.start_training_run(v.id, "lenet", "cifar10", {"lr": 1})
    ws.log_command(["train", "--model", "lenet"])
    ws.set_machine("peak", {"float32": 1.0})
    return ws, v


def every_file(root: Path) -> dict[str, bytes]:
    """Every file under `root` (the database and its WAL files included), byte for byte."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tamper(ws: Workspace, sql: str, args=()) -> None:
    """Change the store behind the library's back, as a broken tool or a hand edit would."""
    con = sqlite3.connect(ws.db_path)
    con.execute("PRAGMA foreign_keys = OFF")
    con.execute(sql, args)
    con.commit()
    con.close()


def _truncate_half(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _foreign_sqlite(db: Path) -> None:
    db.unlink()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()


def _folder(db: Path) -> None:
    db.unlink()
    db.mkdir()


FILE_DAMAGE = {
    "empty": (lambda db: db.write_bytes(b""), "the file is empty"),
    "garbage": (lambda db: db.write_bytes(b"\x13" + os.urandom(8191)), "it is not an SQLite database"),
    "half": (_truncate_half, "malformed"),
    "foreign-sqlite": (_foreign_sqlite, "without deploybench's tables"),
    "folder": (_folder, "it is not a file"),
}


@pytest.mark.parametrize("kind", FILE_DAMAGE)
def test_a_damaged_database_file_is_refused_and_never_written(kind, tmp_path):
    ws, _ = stored(tmp_path)
    for i in range(40):  # enough pages that half the file loses tables
        ws.log_command(["x" * 500, str(i)])
    damage, detail = FILE_DAMAGE[kind]
    damage(ws.db_path)
    before = every_file(ws.root)
    with pytest.raises(DamagedStore) as info:
        Workspace(ws.root)
    message = str(info.value)
    for text in (f"{ws.db_path} is damaged", detail, "artifacts", "restore deploybench.db from a copy", ".recover"):
        assert text in message, message
    assert "\n" not in message
    assert every_file(ws.root) == before  # not one byte written, no WAL or temporary file left
    assert sorted(os.listdir(ws.root)) == ["artifacts", "deploybench.db"]


def test_an_empty_database_file_is_not_taken_for_a_new_store(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "deploybench.db").touch()
    with pytest.raises(DamagedStore, match="the file is empty"):
        Workspace(root)
    assert (root / "deploybench.db").stat().st_size == 0 and os.listdir(root) == ["deploybench.db"]


def test_a_new_store_appears_whole_and_alone(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert os.listdir(ws.root) == ["deploybench.db"]  # no temporary file, no WAL left
    assert ws.db_path.read_bytes().startswith(b"SQLite format 3\x00")
    assert ws.variants() == [] and ws.commands() == []
    assert oct(ws.db_path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_store_of_an_earlier_version_gets_the_tables_added_since(tmp_path):
    ws, v = stored(tmp_path)
    tamper(ws, "DROP TABLE machine")
    assert Workspace(ws.root).get_variant(v.id).id == v.id
    assert Workspace(ws.root).get_machine("peak") is None


# Each: (SQL that damages one row, the reading that meets it, text the error names).
ROW_DAMAGE = {
    "config-not-json": (
        'UPDATE variants SET config = \'{"_lineage": ["train"\'',
        lambda ws, v: ws.variants(),
        "its config is not JSON",
    ),
    "metrics-a-list": (
        "UPDATE variants SET metrics = '[0.5]'",
        lambda ws, v: ws.get_variant(v.id),
        "its metrics is an array, not an object",
    ),
    "files-outside": (
        "UPDATE variants SET files = '[\"../../../../outside.onnx\"]'",
        lambda ws, v: ws.variants(),
        "'../../../../outside.onnx' is not a path inside the variant's folder",
    ),
    "files-absolute": (
        "UPDATE variants SET files = '[\"/etc/passwd\"]'",
        lambda ws, v: ws.variants(),
        "'/etc/passwd' is not a path inside",
    ),
    "id-with-dotdot": (
        "UPDATE variants SET id = '../../../evil'",
        lambda ws, v: ws.variants(),
        "its id is not 16 lowercase hex digits",
    ),
    "parent-id": ("UPDATE variants SET parent_id = 'a%'", lambda ws, v: ws.variants(), "is not a variant id"),
    "model-name": ("UPDATE variants SET model = '../x'", lambda ws, v: ws.variants(), "cannot be used in a path"),
    "lineage": (
        'UPDATE variants SET config = \'{"_lineage": "train"}\'',
        lambda ws, v: ws.variants(),
        "_lineage is not a list",
    ),
    "training-run": (
        "UPDATE training_runs SET config = 'not json'",
        lambda ws, v: ws.training_runs(),
        "training_runs row",
    ),
    "measurement": (
        "UPDATE measurements SET metrics = '[]'",
        lambda ws, v: ws.measurements(),
        "measurements row 1: its metrics is an array",
    ),
    "measurement-variant": (
        "UPDATE measurements SET variant_id = '../x'",
        lambda ws, v: ws.measurements(),
        "its variant_id is not a variant id",
    ),
    "command": ("UPDATE commands SET argv = '{\"a\": 1}'", lambda ws, v: ws.commands(), "commands row 1"),
    "machine": ("UPDATE machine SET value = '1.5'", lambda ws, v: ws.get_machine("peak"), "its value is a number"),
    "update-metrics": (
        "UPDATE variants SET metrics = 'null'",
        lambda ws, v: ws.update_metrics(v.id, {"a": 1}),
        "its metrics is null",
    ),
}


@pytest.mark.parametrize("kind", ROW_DAMAGE)
def test_a_row_that_does_not_hold_up_is_a_damaged_store(kind, tmp_path):
    ws, v = stored(tmp_path)
    sql, read, text = ROW_DAMAGE[kind]
    tamper(ws, sql)
    con = sqlite3.connect(ws.db_path)
    before = {
        t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
        for t in ("variants", "measurements", "training_runs", "commands", "machine")
    }
    con.close()
    with pytest.raises(DamagedStore) as info:
        read(Workspace(ws.root), v)
    assert f"{ws.db_path} is damaged" in str(info.value) and text in str(info.value), str(info.value)
    con = sqlite3.connect(ws.db_path)
    assert before == {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in before}
    con.close()


def test_variant_prefixes_are_hex_and_their_wildcards_literal(tmp_path):
    ws, v = stored(tmp_path)
    assert ws.get_variant(v.id[:5]).id == v.id
    for bad in ["%" + v.id[-4:], "_" + v.id[1:6], "%", "", v.id[:4] + "%", v.id[:4] + "\\", "../" + v.id]:
        with pytest.raises(UserError, match="no variant"):
            ws.get_variant(bad)


def test_like_prefix_takes_wildcards_literally():
    from deploybench.store.workspace import _like_prefix

    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (id TEXT)")
    con.executemany("INSERT INTO t VALUES (?)", [("5313cca5",), ("%cca5",), ("a_b\\c",), ("axb\\c",)])
    match = lambda prefix: [
        r[0] for r in con.execute("SELECT id FROM t WHERE id LIKE ? ESCAPE '\\'", (_like_prefix(prefix),))
    ]
    assert match("%cca") == ["%cca5"] and match("a_b\\") == ["a_b\\c"] and match("5313") == ["5313cca5"]


# -- two writers making one variant -------------------------------------------------------------------------------
def test_a_variant_stored_by_another_writer_meanwhile_is_returned(tmp_path, monkeypatch):
    """A writer that does not share this one's lock (another machine on a shared folder) stores the variant while
    this one's `write` runs: this one's folder is dropped and the stored variant returned; renaming onto the
    other's non-empty folder would fail with ENOTEMPTY."""
    monkeypatch.setattr("deploybench.store.workspace.exclusive", lambda *lock: contextlib.nullcontext())
    ws = Workspace(tmp_path / "ws")

    def racing_write(d):
        (d / "model.onnx").write_bytes(b"mine")
        _, created = Workspace(ws.root).create_variant(**ARGS, write=write_files)
        assert created
        return {"accuracy_top1": 0.1}

    v, created = ws.create_variant(**ARGS, write=racing_write)
    assert not created and v.metrics == {"accuracy_top1": 0.5}
    assert (v.path / "model.onnx").read_bytes() == b"graph"
    assert [p.name for p in v.path.parent.iterdir()] == [v.id]  # this writer's temporary folder is gone
    assert [x.id for x in ws.variants()] == [v.id]


def test_a_folder_left_without_its_row_is_replaced(tmp_path):
    """A writer killed between its rename and its row leaves a complete folder: the next writer replaces it."""
    ws = Workspace(tmp_path / "ws")
    vid = ws.variant_id("lenet", "cifar10", None, "train", {"lr": 1})
    orphan = ws.artifact_dir("lenet", "cifar10", vid)
    orphan.mkdir(parents=True)
    (orphan / "stale.bin").write_bytes(b"old")
    v, created = ws.create_variant(**ARGS, write=write_files)
    assert created and v.id == vid and sorted(p.name for p in v.path.iterdir()) == ["model.onnx", "model.onnx.data"]


RACER = r"""
import json, sys, time
from pathlib import Path
from deploybench.store import Workspace

root, me, log = sys.argv[1], sys.argv[2], Path(sys.argv[3])
(log.parent / f"started-{me}").touch()

def write(d):
    with open(log, "a") as fh:
        fh.write(me + "\n")
    deadline = time.time() + 60
    # Stay inside write() until the other writer has started, and a moment more, so that it comes while this runs.
    while not (log.parent / f"started-{1 - int(me)}").exists() and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(1.0)
    (d / "model.onnx").write_bytes(b"graph")
    return {"accuracy_top1": 0.5}

v, created = Workspace(root).create_variant(model="lenet", dataset="cifar10", stage="train", config={},
                                            parent=None, fmt="onnx", write=write)
print(json.dumps([v.id, created]))
"""


def test_a_process_holding_a_variants_lock_makes_it_without_waiting_for_itself(tmp_path):
    """Training holds the lock on making its variant around the fitting, then stores it through create_variant,
    which takes the same lock: the second take must go straight in, not wait for itself forever."""
    ws = Workspace(tmp_path / "ws")
    vid = ws.variant_id(ARGS["model"], ARGS["dataset"], None, ARGS["stage"], ARGS["config"])
    made = []

    def make():
        with ws.making(vid):
            made.append(ws.create_variant(**ARGS, write=write_files))

    worker = threading.Thread(target=make, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "create_variant waited for the lock its own thread holds"
    ((v, created),) = made
    assert created and v.id == vid


def test_two_processes_making_one_variant_at_once_make_it_once(tmp_path):
    """The second waits for the first and finds its variant: the work is done once, never side by side."""
    ws = Workspace(tmp_path / "ws")
    log = tmp_path / "writes"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(ws.root), str(me), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err
    made = [json.loads(out) for out, _ in results]
    assert made[0][0] == made[1][0] and sorted(c for _, c in made) == [False, True]
    assert len(log.read_text().split()) == 1  # one write() ran
    (v,) = ws.variants()
    assert sorted(p.name for p in v.path.parent.iterdir()) == [v.id]
