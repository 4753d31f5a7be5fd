"""What a variant's bytes are, and who made them: the content digest every variant records, and a seal that only
this user account on this machine can make.

The digest (`files_digest`) names a variant's files and their bytes; `Workspace.create_variant` records it and
the artifacts layer checks it before anything is loaded. A digest alone cannot tell a workspace made here from one
copied from elsewhere whose database and files were replaced together, so each variant also records a seal: an
HMAC of its record under a secret key kept outside every workspace (`$DEPLOYBENCH_KEY_FILE`, else
`$XDG_CONFIG_HOME/deploybench/artifact-key`, else `~/.config/deploybench/artifact-key`). A workspace copied from
another machine or account carries seals that do not verify here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

KEY_ENV = "DEPLOYBENCH_KEY_FILE"
_KEYS: dict[str, bytes | None] = {}  # key file -> key (None: it could not be read or made)
_KEY_PROBLEMS: dict[str, str] = {}


def files_digest(hashes: dict[str, str]) -> str:
    """The variant digest of `{relative file name: file sha256}`: sha256 of their canonical JSON."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def key_path() -> Path:
    """Where this account's sealing key lives (see the module docstring)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "deploybench" / "artifact-key"


def _create_key(path: Path) -> None:
    """Write a fresh random key to `path` (mode 0600) unless one is there; concurrent writers agree on one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made the key first: theirs is kept
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _read_key(path: Path) -> bytes:
    """The key at `path`; OSError or ValueError when it is missing, unreadable, malformed or not private."""
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        # a key others can read lets them forge seals; one others can write lets them replace it
        raise ValueError(f"it must belong to this user and be readable by no one else (chmod 600 {path})")
    text = path.read_text().strip()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("it is not 64 hex digits")
    return bytes.fromhex(text)


def sealing_key() -> bytes | None:
    """This account's key, made on first use; None when it can be neither read nor made (`key_problem` says
    why). Read once per process and key file."""
    path = key_path()
    name = str(path)
    if name not in _KEYS:
        try:
            if not path.exists():
                _create_key(path)
            _KEYS[name] = _read_key(path)
        except (OSError, ValueError) as exc:
            _KEYS[name] = None
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            _KEY_PROBLEMS[name] = f"the sealing key {path} cannot be used: {why}; set ${KEY_ENV} to a private file"
    return _KEYS[name]


def key_problem() -> str | None:
    """Why `sealing_key` is None, or None when there is a key."""
    return None if sealing_key() is not None else _KEY_PROBLEMS.get(str(key_path()))


def _record(variant_id: str, model: str, dataset: str, fmt: str, digest: str) -> bytes:
    return json.dumps(
        dict(id=variant_id, model=model, dataset=dataset, format=fmt, sha256=digest),
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def seal_variant(variant_id: str, model: str, dataset: str, fmt: str, digest: str) -> str | None:
    """The seal of a variant record under this account's key (None without a key)."""
    key = sealing_key()
    if key is None:
        return None
    return hmac.new(key, _record(variant_id, model, dataset, fmt, digest), hashlib.sha256).hexdigest()


def sealed_here(variant_id: str, model: str, dataset: str, fmt: str, digest: str, recorded: str | None) -> bool:
    """Whether `recorded` is the seal this account makes for this record: the variant was made here and its
    record is as it was made."""
    expected = seal_variant(variant_id, model, dataset, fmt, digest)
    # a seal read from a store is input like any other: anything but the expected text fails
    return isinstance(recorded, str) and expected is not None and hmac.compare_digest(expected, recorded)
