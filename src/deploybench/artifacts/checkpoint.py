"""Safe checkpoint I/O: `torch.load(weights_only=True)` only, with one-line errors for every bad file."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from deploybench.errors import UserError
from deploybench.store.atomic import atomic_save


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """torch.save `obj` atomically (temp file + rename): a crash never leaves a half-written checkpoint."""
    with atomic_save(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint without executing code: pickles that reference code are refused."""
    return read_checkpoint(path)[0]


# Larger than any checkpoint of an image classifier this tool trains, and small enough to read into memory: a
# bigger file (a sparse file of many GB, a disk image given by mistake) is refused before a byte is read.
MAX_CHECKPOINT_BYTES = 2 * 1024**3


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, str]:
    """`load_checkpoint`, and the sha256 of the bytes it loaded: the file is read once, so the digest that names
    a run or an import is the digest of the weights it used.

    Args: path: a torch.save file (zip archive or legacy pickle). Returns: (the loaded dict, sha256 hex digest).
    Raises UserError, in one line, for a missing, oversized, malformed or code-carrying file.
    """
    path = Path(path)
    data = _read_bounded(path)
    if data[:2] == b"PK":
        _check_zip(path, data)
    elif data[:1] != b"\x80":  # neither torch.save's zip archive nor a (legacy) pickle
        raise UserError(f"checkpoint {path} is not a checkpoint: neither a torch.save zip archive nor a pickle")
    obj = _torch_load(path, data)
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj, hashlib.sha256(data).hexdigest()


def _read_bounded(path: Path) -> bytes:
    """The bytes of `path`, refused before reading when it is not a regular file or is over the size limit."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CHECKPOINT_BYTES:
                raise UserError(
                    f"checkpoint {path} is {size:,} bytes, over the {MAX_CHECKPOINT_BYTES:,}-byte limit "
                    f"of a weights file; it is not read"
                )
            data = f.read(MAX_CHECKPOINT_BYTES + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise UserError(f"checkpoint {path} is over the {MAX_CHECKPOINT_BYTES:,}-byte limit of a weights file")
    return data


def _check_zip(path: Path, data: bytes) -> None:
    """Refuse a zip archive without a central directory, or with an entry that declares more bytes than the whole
    file holds (torch.save stores entries uncompressed): torch would allocate what an entry declares."""
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except Exception:  # zipfile raises BadZipFile, but also struct.error, ValueError, ... on a damaged directory
        raise UserError(
            f"checkpoint {path} is corrupt or truncated: its zip archive has no central directory"
        ) from None
    for entry in entries:
        if entry.file_size > len(data) or entry.compress_size > len(data):
            raise UserError(
                f"checkpoint {path} is corrupt: its entry {entry.filename!r} declares "
                f"{entry.file_size:,} bytes, more than the whole file ({len(data):,})"
            )


def _torch_load(path: Path, data: bytes):
    """`torch.load(weights_only=True)` of `data`; every failure is one UserError."""
    try:
        with warnings.catch_warnings():  # torch warns on stderr (sparse invariants, ...): the error is one line
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph; the line naming what was refused (a GLOBAL, an opcode) is the news.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        raise UserError(
            f"checkpoint {path} refused: it is not a plain weights file that loads with weights_only=True ({why[:160]})"
        ) from None
    except Exception as exc:  # a damaged file makes torch, zipfile, struct and pickle raise any kind of error
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UserError(f"checkpoint {path} is corrupt or truncated: {first or type(exc).__name__}") from None


def read_state_dict(path: str | os.PathLike) -> tuple[dict, str]:
    """The model state dict in the checkpoint at `path` (`extract_state_dict`) and the sha256 of its bytes
    (`read_checkpoint`): what a run or an import started from external weights records."""
    obj, digest = read_checkpoint(path)
    return extract_state_dict(obj, f"checkpoint {path}"), digest


def extract_state_dict(obj: dict, source: str = "checkpoint") -> dict:
    """The model state dict inside a checkpoint (ours keep it under 'model'; plain state dicts pass through).

    Args: obj: a loaded checkpoint; source: how errors name it. Returns: the state dict, checked by
    `check_state_dict`. Raises UserError when there is none or it is not plain finite weights.
    """
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} holds no model state dict")
    check_state_dict(state, source)
    return state


def check_state_dict(state: dict, source: str) -> None:
    """Refuse what a model cannot load or should not run: keys that are not str, and tensors that are sparse,
    nested, quantized, off the CPU (meta tensors have no values) or hold NaN or infinity (weights that diverged
    would be imported as a variant whose every output is garbage)."""
    bad_keys = [repr(k) for k in state if not isinstance(k, str)]
    if bad_keys:
        raise UserError(
            f"{source} is not a state dict: its keys must be parameter names (str), got "
            f"{', '.join(bad_keys[:5])}{_more(bad_keys)}"
        )
    for label, test in _UNLOADABLE:
        keys = [k for k, v in state.items() if test(v)]
        if keys:
            raise UserError(
                f"{source} holds {label} tensors, which a model cannot load: {', '.join(keys[:5])}{_more(keys)}"
            )
    keys = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if keys:
        raise UserError(f"{source} holds non-finite weights (NaN or infinity) in {', '.join(keys[:5])}{_more(keys)}")


# (what, test) of tensors that are no plain dense CPU weights; checked in this order, so that `isfinite` only ever
# sees dense CPU tensors.
_UNLOADABLE = (
    ("sparse", lambda t: t.layout != torch.strided),
    ("nested", lambda t: t.is_nested),
    ("quantized", lambda t: t.is_quantized),
    ("meta (data-less)", lambda t: t.is_meta),
    ("non-CPU", lambda t: t.device.type != "cpu"),
)


def _more(items: list) -> str:
    return f" (+{len(items) - 5} more)" if len(items) > 5 else ""


def load_weights(model: nn.Module, state: dict, source: str) -> nn.Module:
    """Load `state` into `model` strictly.

    Args: model: the architecture; state: its weights; source: how errors name them. Returns: `model`.
    Raises UserError for weights that are not plain finite tensors (`check_state_dict`), or that do not fit:
    the missing, unexpected, mis-shaped and mis-typed keys are listed.
    """
    check_state_dict(state, source)
    own = model.state_dict()
    common = set(own) & set(state)
    mismatches = (
        ("missing", sorted(set(own) - set(state))),
        ("unexpected", sorted(set(state) - set(own))),
        (
            "shape mismatch",
            sorted(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                for k in common
                if state[k].shape != own[k].shape
            ),
        ),
        # A float parameter filled from integers, booleans or complex numbers loads, as garbage.
        (
            "dtype mismatch",
            sorted(f"{k} {state[k].dtype} vs {own[k].dtype}" for k in common if _kind(state[k]) != _kind(own[k])),
        ),
    )
    parts = [f"{label}: {', '.join(keys[:5])}{_more(keys)}" for label, keys in mismatches if keys]
    if parts:
        raise UserError(f"{source} does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return model


def _kind(t: torch.Tensor) -> str:
    """'float', 'complex' or 'integer' (bool included): what a dtype can hold, whatever its width."""
    return "complex" if t.is_complex() else "float" if t.is_floating_point() else "integer"
