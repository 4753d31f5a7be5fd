"""Session fixtures of the benchmarks: the zoo of variants (see benchzoo) and loaded backends; and the
fingerprint of the measuring machine in every benchmark JSON, by which `make bench` picks its baseline
(deploybench.platform.bench_baseline)."""

import pytest
import torch

from benchzoo import THREADS, Zoo, build_zoo
from deploybench.platform.bench_baseline import KEY, this_machine
from deploybench.profile.backends import get_backend
from deploybench.profile.static import input_shape, root_config
from deploybench.store import Variant


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info[KEY] = this_machine(THREADS)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    torch.set_num_threads(THREADS)
    return build_zoo(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="session")
def loaded(zoo):
    """loaded(variant, backend, batch_size) -> (backend instance, prepared input), or a pytest skip with the
    backend's reason. Instances are cached for the session (torch.compile compiles once) and closed at its end."""
    cache: dict = {}

    def get(variant: Variant, backend: str, batch_size: int):
        key = (variant.id, backend, batch_size)
        if key not in cache:
            cls = get_backend(backend)
            for ok, why in (cls.available(), cls.supports(variant)):
                if not ok:
                    pytest.skip(f"{backend}: {why}")
            impl = cls()
            impl.load(variant, batch_size, THREADS)
            shape = input_shape(root_config(zoo.ws, variant))
            torch.manual_seed(0)
            inputs = impl.prepare(torch.randn(batch_size, *shape))
            impl.run(inputs)  # first call: compiles / allocates outside every timed region
            cache[key] = impl, inputs
        return cache[key]

    yield get
    for impl, _ in cache.values():
        impl.close()
