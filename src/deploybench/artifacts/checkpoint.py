"""Safe checkpoint I/O: `torch.load(weights_only=True)` only, with one-line errors for every bad file."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
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


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, str]:
    """`load_checkpoint`, and the sha256 of the bytes it loaded: the file is read once, so the digest that names
    a run or an import is the digest of the weights it used."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if data[:2] == b"PK" and not zipfile.is_zipfile(io.BytesIO(data)):
        raise UserError(f"checkpoint {path} is corrupt or truncated: its zip archive has no central directory")
    if data[:1] not in (b"P", b"\x80"):  # neither torch.save's zip archive nor a (legacy) pickle
        raise UserError(f"checkpoint {path} is not a checkpoint: neither a torch.save zip archive nor a pickle")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph; the line naming what was refused (a GLOBAL, an opcode) is the news.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        raise UserError(f"checkpoint {path} refused: it is not a plain weights file that loads with "
                        f"weights_only=True ({why[:160]})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError,
            TypeError, IndexError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint {path} is corrupt or truncated: {str(exc).splitlines()[0][:160]}") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj, hashlib.sha256(data).hexdigest()


def read_state_dict(path: str | os.PathLike) -> tuple[dict, str]:
    """The model state dict in the checkpoint at `path` (`extract_state_dict`) and the sha256 of its bytes
    (`read_checkpoint`): what a run or an import started from external weights records."""
    obj, digest = read_checkpoint(path)
    return extract_state_dict(obj), digest


def extract_state_dict(obj: dict) -> dict:
    """The model state dict inside a checkpoint (ours keep it under 'model'; plain state dicts pass through)."""
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("checkpoint holds no model state dict")
    return state


def load_weights(model: nn.Module, state: dict, source: str) -> nn.Module:
    """Load `state` into `model` strictly; a mismatch lists the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise UserError(f"{source} does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return model
