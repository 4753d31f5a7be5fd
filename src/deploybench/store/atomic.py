"""Atomic file and folder writes: everything is written beside its target, then renamed into place."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from deploybench.errors import UserError

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # mkstemp creates 0600 files; written artifacts get the usual mode


def safe_component(name: str) -> str:
    """A path component made from a user-given name; `..`, separators and markup never reach a path.

    Registry names pass unchanged; a user architecture `pkg.mod:factory` becomes `pkg.mod+factory`.
    """
    candidate = name.replace(":", "+")
    if not _SAFE.match(candidate) or ".." in candidate or len(candidate) > 120:
        raise UserError(f"name {name!r} cannot be used in a path (letters, digits and . _ + - only)")
    return candidate


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a rename into it survives a power loss (file systems that refuse it are let be)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    with atomic_save(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_file_target(path: str | os.PathLike, *, writable: bool = False) -> Path:
    """`path` as a file to (over)write: a folder there, or a file where a folder of its path must be, is a
    one-line error; with `writable`, so is a folder that takes no file (a temporary file is made there and
    removed). Commands that write a file the user names (a report) call it with `writable` at their start."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; name the file to write (e.g. {path / 'index.html'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write {path}: {parent} is a file, not a folder")
            if writable:
                try:  # no permission, read-only, a pseudo file system such as /proc
                    fd, probe = tempfile.mkstemp(prefix=".deploybench-probe.", dir=parent)
                except OSError as exc:
                    raise UserError(f"cannot write {path}: {exc.strerror} in {parent}") from None
                os.close(fd)
                os.unlink(probe)
            break
    return path


@contextlib.contextmanager
def atomic_save(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


# Below this much free space, a failed write is taken to be the full disk's doing.
DISK_FULL_BYTES = 1 << 20


def raise_if_disk_full(path: str | os.PathLike, exc: BaseException) -> None:
    """Re-raise `exc` (from a library that wraps I/O errors in its own exception type) as the OSError ENOSPC it
    stands for, when the filesystem holding `path` is (nearly) full; otherwise return."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if free < DISK_FULL_BYTES:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


def sweep_stale_dirs(parent: Path) -> list[Path]:
    """Remove temporary folders left in `parent` by `atomic_dir` writers that died (SIGKILL, power loss)."""
    removed = []
    for tmp in parent.glob(".*.tmp") if parent.is_dir() else []:
        parts = tmp.name.split(".")  # "", final name, pid, random, "tmp"
        if len(parts) == 5 and parts[2].isdigit() and tmp.is_dir() and not _alive(int(parts[2])):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_dir_for(final: str | os.PathLike) -> Path:
    """A new empty temporary folder beside `final`, named `.<final>.<pid>.<random>.tmp` so that
    `sweep_stale_dirs` can tell whether its writer is still alive."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, so that a rename of the folder never publishes unwritten data."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary folder; on success it is renamed to `final` (which must not exist yet).

    On any failure the temporary folder is removed, so a half-written artifact never appears.
    """
    final = Path(final)
    tmp = temp_dir_for(final)
    try:
        yield tmp
        fsync_tree(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


# Locks this process holds, by (path, thread): taking one again in the same thread goes straight in (flock on a
# second descriptor of the same file would wait for the first forever).
_HELD: set[tuple[Path, int]] = set()


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on `lock_path` for the block, creating the file if needed. When
    another process holds it, `on_wait()` is called once and the block waits for it; the OS releases the lock
    of a process that dies, so a crashed holder never blocks the next one. A thread that holds it already enters
    at once (a command that holds a variant's lock while it trains calls the store, which takes it too)."""
    path = Path(lock_path)
    key = (path, threading.get_ident())
    if key in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_path_for(workspace: str | os.PathLike, name: str) -> Path:
    """Where the lock named `name` of `workspace` lives: in the temporary folder, not in the workspace (a lock
    file is no part of what a workspace holds, and a refused command must leave the workspace as it was)."""
    key = hashlib.sha256(f"{Path(workspace).resolve()}\0{name}".encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "deploybench-locks" / f"{key}.lock"
