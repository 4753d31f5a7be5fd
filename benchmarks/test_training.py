"""Training speed gates. The speed-up of bf16 mixed precision over fp32 on CPUs that compute bf16 natively
(AVX512-BF16, AMX): one real training step of the engine (forward, loss, backward, optimizer, schedule) at the
recipe's batch size and memory layout, timed in alternated blocks against the same step in fp32 (`paired_speedup`),
so the ratio holds on a shared machine. The gate sits below what the pair reaches (`custom`: about 2x on an
AVX512-BF16 EPYC); it fails when autocast stops reaching bf16 kernels. Elsewhere bf16 is emulated, slower than fp32,
and `--precision auto` does not use it: the test skips.

And the speed-up of batched augmentation of images held in memory (`DeviceSplit`, what training uses for CIFAR
and Fashion-MNIST on every device) over the per-image transforms a DataLoader applies in the main process: on 2
cores of an AMX Xeon about 40x for Fashion-MNIST batches of 128. The gate fails when the batched path falls to a
speed at which the loader's cost it was chosen to remove comes back."""

import pytest
import torch

from benchzoo import THREADS
from deploybench.platform import has_native_bf16
from deploybench.profile.latency import paired_speedup

MIN_SPEEDUP = {"custom": 1.5}
MIN_BATCHED_AUGMENTATION_SPEEDUP = 10.0


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


def test_batched_augmentation_speedup(benchmark, tmp_path):
    from torch.utils.data import default_collate

    from deploybench.data import load_splits
    from deploybench.train.device_data import DeviceSplit
    from ondisk import write_fashion_mnist

    torch.set_num_threads(THREADS)
    splits = load_splits("fashion-mnist", write_fashion_mnist(tmp_path, n_train=1024, n_test=10), augment=True)
    train, batch = splits.train, 128
    held = DeviceSplit.of_dataset(train, splits.info, torch.device("cpu"), augment=True, cutout=0, transfer=False)

    def batched_batches():
        for epoch in range(10**6):
            perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(epoch)).tolist()
            yield from held.epoch_batches(perm, batch, 0, epoch)

    stream = batched_batches()
    picks = torch.randint(0, len(train), (batch,), generator=torch.Generator().manual_seed(0)).tolist()

    def per_image():  # what a DataLoader without workers does for one batch
        return default_collate([train[i] for i in picks])

    def batched():
        return next(stream)

    speedup = paired_speedup(per_image, batched, pairs=7)
    benchmark.pedantic(batched, rounds=20, warmup_rounds=2)
    benchmark.extra_info.update(speedup=speedup, gate=MIN_BATCHED_AUGMENTATION_SPEEDUP)
    assert speedup >= MIN_BATCHED_AUGMENTATION_SPEEDUP, (
        f"batched augmentation is {speedup:.1f}x the per-image DataLoader, below {MIN_BATCHED_AUGMENTATION_SPEEDUP}x"
    )
