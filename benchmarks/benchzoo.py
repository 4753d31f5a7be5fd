"""What the benchmarks measure: a tiny Fashion-MNIST in its real IDX format and, for each small zoo model, its fp32,
int8-pt2e, int8-ort and pruned variants made by the real optimize stages (once per session).

A backend runs what it can: ONNX Runtime runs the ONNX export of the fp32 and pruned variants and the int8-ort
variant; the torch backends run the PyTorch ones. A combination no backend format fits is skipped with the
backend's own reason, as `profile run` records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deploybench.platform.env import physical_cores
from deploybench.profile.latency import Protocol
from deploybench.store import Variant, Workspace
from ondisk import write_fashion_mnist

MODELS = ("lenet", "simple-cnn")
KINDS = ("fp32", "int8-pt2e", "int8-ort", "pruned")
CPU_BACKENDS = ("torch-cpu", "torch-compile-cpu", "ort-cpu")
THREADS = physical_cores()  # what `profile run` uses by default
# Our profiler's protocol inside the benchmarks: short, since pytest-benchmark measures the same call too.
BENCH_PROTOCOL = Protocol(warmup=3, min_runs=15, min_seconds=0.3)


@dataclass
class Zoo:
    ws: Workspace
    data_dir: object
    variants: dict[str, dict[str, Variant]] = field(default_factory=dict)  # model -> kind/"export"/... -> variant

    def for_backend(self, model: str, kind: str, backend: str) -> Variant:
        """The variant of `kind` that `backend` runs: ONNX Runtime gets the ONNX export of fp32 and pruned."""
        made = self.variants[model]
        if backend.startswith("ort") and kind in ("fp32", "pruned"):
            return made[f"{kind}-onnx"]
        return made[kind]


def build_zoo(root) -> Zoo:
    """Train each of MODELS for one epoch on a tiny Fashion-MNIST under `root`, then make its variants."""
    from deploybench.optimize.base import get_stage
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    data_dir = write_fashion_mnist(root / "data", n_train=128, n_test=64)
    zoo = Zoo(Workspace(root / "ws"), data_dir)
    export = get_stage("export")()
    for model in MODELS:
        trained, _ = train_model(
            zoo.ws,
            model,
            "fashion-mnist",
            default_recipe(model, epochs=1, batch_size=32),
            data_dir=data_dir,
            log=lambda *_: None,
        )
        pruned = get_stage("prune")(ratio=0.5, finetune_epochs=0).run(zoo.ws, trained, data_dir)
        zoo.variants[model] = {
            "fp32": trained,
            "fp32-onnx": export.run(zoo.ws, trained, data_dir),
            "int8-pt2e": get_stage("quantize")(method="int8-pt2e", calib_size=32).run(zoo.ws, trained, data_dir),
            "int8-ort": get_stage("quantize")(method="int8-ort", calib_size=32).run(zoo.ws, trained, data_dir),
            "pruned": pruned,
            "pruned-onnx": export.run(zoo.ws, pruned, data_dir),
        }
    return zoo


@dataclass(frozen=True)
class Gate:
    """`fast` = (kind, backend) must run at least `min_speedup` times faster than `slow` on `model`."""

    model: str
    fast: tuple[str, str]
    slow: tuple[str, str]
    min_speedup: float
    batch_size: int = 64
    unstable_on: tuple[str, ...] = ()  # CPU flags of machines where the pair was measured too unstable to gate

    @property
    def id(self) -> str:
        return f"{self.model}-{self.fast[0]}@{self.fast[1]}-vs-{self.slow[0]}@{self.slow[1]}"


# Each threshold sits below the speed-up the pair reaches, idle or with other work on the cores (load slows both
# calls of a pair alike), so a gate fails on a lost optimization, not on noise. Without VNNI, int8 is not faster
# than fp32 within one runtime for models this small, so the int8 gates are against fp32 eager, the deployment
# baseline: they do not depend on VNNI and still fail if int8 falls back to slow kernels or inductor stops
# freezing weights. The pruned-ORT pair reaches 1.94-2.42x on an AMD EPYC with AVX-512 VNNI alone; on an Intel Xeon
# with AMX it measured 1.09x to 1.60x within one day, and on an AMD EPYC that also has AVX-VNNI (family 26) 1.15x to
# 1.96x within half an hour, so on CPUs with either it is recorded (pytest-benchmark) but not gated.
GATES = [
    Gate("simple-cnn", ("int8-ort", "ort-cpu"), ("fp32", "torch-cpu"), 1.5),
    Gate("simple-cnn", ("int8-pt2e", "torch-compile-cpu"), ("fp32", "torch-cpu"), 1.2),
    Gate("simple-cnn", ("pruned", "torch-cpu"), ("fp32", "torch-cpu"), 1.3),
    Gate("simple-cnn", ("pruned", "ort-cpu"), ("fp32", "ort-cpu"), 1.5, unstable_on=("amx_tile", "avx_vnni")),
]
