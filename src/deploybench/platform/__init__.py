"""What this machine is and can do: CPU model and flags, GPU, cores, library versions, the fingerprint that
keeps measurements of different machines apart. Every layer above asks here; nothing here imports deploybench."""

from deploybench.platform.env import (
    cpu_flags,
    cpu_model,
    environment,
    fingerprint,
    git_commit,
    has_int8_dot_product,
    has_native_bf16,
    load_average,
    machine_slug,
    package_version,
    physical_cores,
    same_setup,
)

__all__ = [
    "cpu_flags",
    "cpu_model",
    "environment",
    "fingerprint",
    "git_commit",
    "has_int8_dot_product",
    "has_native_bf16",
    "load_average",
    "machine_slug",
    "package_version",
    "physical_cores",
    "same_setup",
]
