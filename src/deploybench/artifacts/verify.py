"""What every load of a variant goes through first: its files must be the ones the store recorded, and a format
whose loader could run code if its file were hostile loads only when this account made it, or when the user said
`--trust-artifacts`.

A workspace is copied, shared and imported, so its files and its database are input like any other. The digest
(`store.provenance.files_digest`) catches files changed after the store recorded them; the seal catches a
database and files replaced together, which a digest alone cannot.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from deploybench.errors import UserError
from deploybench.store import Variant
from deploybench.store.provenance import files_digest, key_problem, sealed_here

TRUST_ENV = "DEPLOYBENCH_TRUST_ARTIFACTS"
# (path, device, inode, size, mtime_ns, ctime_ns) -> sha256: a file is hashed once per process while unchanged
_HASHES: dict[tuple, str] = {}


def set_trusted(trusted: bool) -> None:
    """Whether this process and the processes it starts load variants another account made (`--trust-artifacts`).
    The choice lives in the environment so that profiling's child processes inherit it."""
    if trusted:
        os.environ[TRUST_ENV] = "1"
    else:
        os.environ.pop(TRUST_ENV, None)


def trusted() -> bool:
    """Whether `set_trusted(True)` holds for this process."""
    return os.environ.get(TRUST_ENV) == "1"


def _open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file. O_NONBLOCK: a FIFO put in a file's place
    after it was listed must not block the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file; refusing to load it")
    return fd


def _read_fd(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _file_sha256(path: Path) -> str:
    """sha256 of a regular file's bytes, cached by (path, identity, size, times)."""
    fd = _open_regular(path)
    st = os.fstat(fd)
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _HASHES:
        os.close(fd)
        return _HASHES[key]
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _entry_problem(path: Path, root: Path) -> str | None:
    """Why the folder entry `path` cannot be part of a variant (None when it is a regular file, or a folder to
    walk into). Judged from `lstat` and `realpath` only: nothing outside the folder is opened."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(root):
            return "is a symlink to a path outside the variant's folder"
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return "is a symlink to something that is not a regular file"
        return None
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return None
    return "is not a regular file"


def _folder_files(folder: Path) -> tuple[list[str], list[str]]:
    """(relative names of the regular files under `folder`, the problems of its other entries). Symlinked
    folders are not followed (a recorded variant has none)."""
    root = Path(os.path.realpath(folder))
    files, problems = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            problem = _entry_problem(path, root)
            if problem:
                problems.append(f"{rel} {problem}")
            elif name in filenames:
                files.append(rel)
    return sorted(files), problems


def _differences(variant: Variant) -> tuple[list[str], dict[str, str]]:
    """(what differs between the variant's folder and its record, `{file: sha256}` of the folder's files)."""
    files, problems = _folder_files(variant.path)
    if problems:  # nothing is hashed in a folder with an entry that points out of it or is no file
        return problems, {}
    recorded = set(variant.files) if isinstance(variant.files, list) else set()
    differs = []
    missing = sorted(recorded - set(files))
    added = sorted(set(files) - recorded)
    if missing:
        differs.append(f"missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if added:
        differs.append(f"not recorded: {', '.join(added[:3])}{' ...' if len(added) > 3 else ''}")
    hashes = {} if differs else {f: _file_sha256(variant.path / f) for f in files}
    if not differs and files_digest(hashes) != variant.sha256:
        differs.append("the bytes of its files changed")
    return differs, hashes


def _check_seal(variant: Variant) -> None:
    """Refuse a variant of a code-capable format that this account did not make, unless trusted."""
    if trusted() or sealed_here(
        variant.id, variant.model, variant.dataset, variant.format, variant.sha256, variant.seal
    ):
        return
    why = key_problem()
    raise UserError(
        f"variant {variant.id}: this {variant.format} program was not made by this user on this machine "
        f"(or its record was changed since){f' ({why})' if why else ''}, and loading a program from elsewhere "
        f"can run code; refusing to load it (pass --trust-artifacts if you trust where this workspace came from)"
    )


def verify_variant(variant: Variant, *, needs_seal: bool = False) -> dict[str, str]:
    """Refuse to load a recorded variant whose files are not those the store recorded (a file missing, added,
    changed, a symlink out of its folder), or, with `needs_seal`, one another account made (`--trust-artifacts`
    lifts that). Args: the variant; whether its format's loader could run code from a hostile file. Returns
    `{file: sha256}` of its files; {} for a variant being made, whose folder this process is writing."""
    if not variant.recorded:
        return {}
    differs, hashes = _differences(variant)
    if differs:
        raise UserError(
            f"variant {variant.id}: its files do not match the digest the store recorded "
            f"({'; '.join(differs)}); refusing to load it"
        )
    if needs_seal:
        _check_seal(variant)
    return hashes


def read_verified(variant: Variant, name: str, *, needs_seal: bool = False) -> bytes:
    """The bytes of one of a variant's files, read once and checked to be the bytes `verify_variant` vouched
    for, so that the file cannot change between the check and the load."""
    path = variant.path / name
    hashes = verify_variant(variant, needs_seal=needs_seal)
    try:
        data = _read_fd(_open_regular(path))
    except FileNotFoundError:
        raise UserError(f"variant {variant.id}: {path} is missing") from None
    if variant.recorded:
        if hashes.get(name) != hashlib.sha256(data).hexdigest():
            raise UserError(
                f"variant {variant.id}: its files do not match the digest the store recorded ({name} "
                f"changed while it was read); refusing to load it"
            )
    return data
