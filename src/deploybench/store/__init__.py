"""The workspace: a SQLite database of variants and measurements, plus atomic artifact folders."""

from deploybench.store.atomic import atomic_dir, atomic_write_bytes, atomic_write_text, safe_component
from deploybench.store.workspace import Variant, Workspace, dataset_component, default_workspace

__all__ = [
    "Variant",
    "Workspace",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "dataset_component",
    "default_workspace",
    "safe_component",
]
