"""The training speed-up of bf16 mixed precision over fp32 on CPUs that compute bf16 natively (AVX512-BF16,
AMX): one real training step of the engine (forward, loss, backward, optimizer, schedule) at the recipe's batch
size and memory layout, timed in alternated blocks against the same step in fp32 (`paired_speedup`), so the
ratio holds on a shared machine. The gate sits below what the pair reaches (`custom`: about 2x on an AVX512-BF16
EPYC); it fails when autocast stops reaching bf16 kernels. Elsewhere bf16 is emulated, slower than fp32, and
`--precision auto` does not use it: the test skips."""

import pytest
import torch

from benchzoo import THREADS
from deploybench.platform import has_native_bf16
from deploybench.profile.latency import paired_speedup

MIN_SPEEDUP = {"custom": 1.5}


def _step(model: str, precision: str):
    """A callable that takes one training step of `model` in `precision` on Fashion-MNIST-shaped data."""
    from deploybench.data import dataset_info
    from deploybench.models.identity import build_model, model_config
    from deploybench.train.engine import make_optimizer, make_scheduler, train_one_epoch
    from deploybench.train.recipes import default_recipe

    recipe = default_recipe(model)
    torch.manual_seed(0)
    net = build_model(
        dict(model_config(model, dataset_info("fashion-mnist")), dataset="fashion-mnist", recipe=recipe.to_dict())
    )
    if recipe.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, recipe)
    sched = make_scheduler(opt, recipe, total_steps=10**6)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(recipe.batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    batch = [(x, torch.randint(0, 10, (recipe.batch_size,)))]
    cpu = torch.device("cpu")
    return lambda: train_one_epoch(net, batch, opt, sched, scaler, cpu, recipe, precision=precision)


@pytest.mark.skipif(not has_native_bf16(), reason="the CPU has no native bf16 (AVX512-BF16 or AMX)")
@pytest.mark.parametrize("model", sorted(MIN_SPEEDUP))
def test_bf16_training_speedup(benchmark, model):
    torch.set_num_threads(THREADS)
    fp32, bf16 = _step(model, "fp32"), _step(model, "bf16")
    speedup = paired_speedup(fp32, bf16, pairs=7)
    benchmark.pedantic(bf16, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(speedup=speedup, gate=MIN_SPEEDUP[model])
    assert speedup >= MIN_SPEEDUP[model], f"{model}: bf16 training is {speedup:.2f}x fp32, below {MIN_SPEEDUP[model]}x"
