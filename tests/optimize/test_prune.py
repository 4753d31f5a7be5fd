"""Pruning: `vit-small` loses whole attention heads, the ones with the least importance, on every schedule; an
interrupted fine-tuning resumes after its last epoch."""

import pytest
import torch
from torch.utils.data import TensorDataset

from deploybench.models import create_model
from deploybench.optimize.prune import PruneConfig, prune_model

HEADS, WIDTH = 8, 384
HEAD_DIM = WIDTH // HEADS


class _Data:
    """The two things `prune_model` asks of its data: an example batch and calibration images (taylor)."""

    def example(self, n):
        return torch.randn(n, 1, 28, 28)

    def calibration(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def _vit():
    torch.manual_seed(0)
    return create_model("vit-small", num_classes=10, in_channels=1, image_size=28).eval()


def _silence_heads(model, heads):
    """Zero the Q, K and V rows and the output-projection columns of `heads` in every block."""
    with torch.no_grad():
        for block in model.blocks:
            for h in heads:
                for part in range(3):
                    rows = slice(part * WIDTH + h * HEAD_DIM, part * WIDTH + (h + 1) * HEAD_DIM)
                    block.attn.qkv.weight[rows] = 0
                    block.attn.qkv.bias[rows] = 0
                block.attn.proj.weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0


def _widths(model):
    return [
        m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]


def test_round_to_keeps_channel_counts_multiples_of_n_and_enters_the_id_only_when_set():
    torch.manual_seed(0)
    model = create_model("custom", num_classes=10, in_channels=1, image_size=28).eval()
    plain = prune_model(
        create_model("custom", num_classes=10, in_channels=1, image_size=28).eval(), _Data(), PruneConfig(ratio=0.8)
    )
    assert _widths(plain) == [12, 12, 25, 25, 51, 102, 10]  # 20% kept, rounded down: no alignment
    aligned = prune_model(model, _Data(), PruneConfig(ratio=0.8, round_to=8))
    assert _widths(aligned) == [8, 8, 24, 24, 48, 96, 10]  # the classifier keeps its outputs
    assert aligned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert "round_to" not in PruneConfig(ratio=0.8).to_dict()  # ids of variants made before the option stay
    assert PruneConfig(ratio=0.8, round_to=8).to_dict()["round_to"] == 8


@pytest.mark.parametrize(
    "ratio, round_to, widths",
    [(0.8, 32, [32, 32, 32, 32, 32, 96, 10]), (0.9, 16, [16, 16, 16, 16, 16, 48, 10])],
)
def test_round_to_above_a_layers_kept_count_keeps_one_multiple_instead_of_the_whole_layer(ratio, round_to, widths):
    # 20% of 64 channels is 12, fewer than 32: torch-pruning's own rounding keeps none and leaves the layer whole
    model = create_model("custom", num_classes=10, in_channels=1, image_size=28).eval()
    assert _widths(prune_model(model, _Data(), PruneConfig(ratio=ratio, round_to=round_to))) == widths


def test_a_layer_narrower_than_round_to_is_pruned_unaligned():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 12, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12 * 26 * 26, 10)
    ).eval()
    assert _widths(prune_model(model, _Data(), PruneConfig(ratio=0.5, round_to=16))) == [6, 10]


def test_a_negative_round_to_is_one_user_error():
    from deploybench.errors import UserError
    from deploybench.optimize.prune import PruneStage

    with pytest.raises(UserError, match="--round-to must be >= 0"):
        PruneStage(ratio=0.5, round_to=-8)


@pytest.mark.parametrize("importance", ["magnitude", "lamp"])
def test_the_least_important_heads_are_removed_whole(importance):
    model = _vit()
    _silence_heads(model, [1, 3, 5, 7])
    prune_model(model, _Data(), PruneConfig(ratio=0.5, importance=importance))
    for block in model.blocks:
        attn = block.attn
        assert attn.num_heads == 4
        assert attn.qkv.out_features == 3 * 4 * HEAD_DIM  # whole heads went; each keeps its width
        rows = attn.qkv.weight.view(3, 4, HEAD_DIM, -1)
        assert (rows.flatten(2).norm(dim=2) > 0).all()  # none of the silenced heads is left
        assert block.mlp[0].out_features == 4 * WIDTH // 2
    assert model.conv_proj.out_channels == WIDTH // 2 and model.pos_embedding.shape[-1] == WIDTH // 2
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("steps,importance", [(1, "taylor"), (2, "magnitude"), (4, "magnitude")])
def test_iterative_head_pruning_ends_at_the_ratio(steps, importance):
    model = _vit()
    params = sum(p.numel() for p in model.parameters())
    prune_model(model, _Data(), PruneConfig(ratio=0.5, importance=importance, iterative_steps=steps, calib_size=8))
    assert [b.attn.num_heads for b in model.blocks] == [4] * 8  # torch-pruning alone gives 3 at 2 steps
    assert sum(p.numel() for p in model.parameters()) < params / 3.5
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_global_head_pruning_removes_half_of_all_heads():
    model = _vit()
    prune_model(model, _Data(), PruneConfig(ratio=0.5, global_pruning=True))
    assert sum(b.attn.num_heads for b in model.blocks) == 8 * HEADS // 2
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_pruned_vit_reloads_in_a_fresh_process(tmp_path, tiny_fashion_mnist, random_root, reload_fresh):
    from deploybench.optimize.base import get_stage
    from deploybench.store import Workspace

    ws = Workspace(tmp_path / "ws")
    root = random_root(ws, "vit-small", tiny_fashion_mnist)
    pruned = get_stage("prune")(ratio=0.5, finetune_epochs=0).run(ws, root, tiny_fashion_mnist)
    assert pruned.metrics["params"] < pruned.metrics["params_before"] / 3.5
    assert pruned.metrics["macs"] < pruned.metrics["macs_before"] / 3.5
    reload_fresh(ws, [pruned], tiny_fashion_mnist)


@pytest.mark.parametrize("on_device", [False, True], ids=["dataloader", "data-held-on-the-device"])
def test_an_interrupted_finetuning_resumes_after_its_last_epoch_with_the_weights_of_an_uninterrupted_one(
    trained_workspace, monkeypatch, on_device
):
    # A large model's fine-tuning epochs are long: a stop must not throw away the ones already finished. Both data
    # paths training has (a DataLoader, or the split held on the device and augmented there in batches) resume.
    import shutil

    from deploybench.artifacts.formats import load_module
    from deploybench.optimize import prune
    from deploybench.optimize.base import get_stage
    from deploybench.store import Workspace
    from deploybench.train import engine

    monkeypatch.setattr(engine, "device_resident", lambda dataset: on_device)
    ws, trained, data_dir = trained_workspace
    shutil.copytree(ws.root, ws.root.parent / "whole")
    other = Workspace(ws.root.parent / "whole")

    def stage():
        return get_stage("prune")(ratio=0.5, finetune_epochs=2, distill=True)

    whole = stage().run(other, other.get_variant(trained.id), data_dir)
    assert whole.config.get("augment_on") == ("device" if on_device else None)  # a variant of its own
    real, calls = prune.train_one_epoch, []

    def epoch(*args, fail_at=None, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # what a SIGTERM raises in any command (cli.common.Terminated)
        return real(*args, **kwargs)

    monkeypatch.setattr(prune, "train_one_epoch", lambda *a, **k: epoch(*a, fail_at=2, **k))
    before = {v.id for v in ws.variants()}
    with pytest.raises(KeyboardInterrupt):
        stage().run(ws, trained, data_dir)
    assert {v.id for v in ws.variants()} == before  # no variant from a fine-tuning cut short
    (kept,) = ws.root.glob("runs/*/*/prune-*/last.pt")
    assert kept.parent.name == f"prune-{whole.id}"  # under the id of the variant it is for

    calls.clear()
    monkeypatch.setattr(prune, "train_one_epoch", epoch)
    resumed = stage().run(ws, trained, data_dir)
    assert len(calls) == 1  # the first epoch was not run again
    assert resumed.id == whole.id
    assert [h["epoch"] for h in resumed.metrics["finetune_history"]] == [1, 2]
    assert resumed.metrics["finetune_resumed_epochs"] == 1 and whole.metrics["finetune_resumed_epochs"] == 0
    assert resumed.metrics["predictions_sha256"] == whole.metrics["predictions_sha256"]
    a, b = load_module(resumed).state_dict(), load_module(whole).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not kept.parent.exists()  # gone once the variant is stored


def test_a_checkpoint_of_other_shapes_is_set_aside_and_the_finetuning_starts_from_the_pruned_weights(
    trained_workspace, monkeypatch
):
    # A checkpoint left by another pruning of the same parent (here ratio 0.5, planted where ratio 0.25's goes)
    # fits only in part: lenet's last bias has 10 entries either way. Nothing of it may reach the model.
    import shutil

    from deploybench.artifacts.formats import load_module
    from deploybench.optimize import prune
    from deploybench.optimize.base import get_stage
    from deploybench.store import Workspace

    ws, trained, data_dir = trained_workspace
    shutil.copytree(ws.root, ws.root.parent / "whole")
    other = Workspace(ws.root.parent / "whole")
    whole = get_stage("prune")(ratio=0.25, finetune_epochs=2).run(other, other.get_variant(trained.id), data_dir)

    real = prune.train_one_epoch
    calls = []

    def stop_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prune, "train_one_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        get_stage("prune")(ratio=0.5, finetune_epochs=2).run(ws, trained, data_dir)
    (half,) = ws.root.glob("runs/*/*/prune-*/last.pt")
    planted = half.parent.parent / f"prune-{whole.id}" / "last.pt"
    planted.parent.mkdir()
    half.replace(planted)
    saved = torch.load(planted, weights_only=True)["model"]
    fitting = [k for k, v in load_module(whole).state_dict().items() if k in saved and saved[k].shape == v.shape]
    assert fitting and len(fitting) < len(saved)  # a partial fit, the case that matters

    monkeypatch.setattr(prune, "train_one_epoch", real)
    real_finetune, set_aside = prune.finetune, []

    def watched(*args, **kwargs):  # the run directory goes once the variant is stored: look before that
        history = real_finetune(*args, **kwargs)
        set_aside.append(planted.with_suffix(".stale").is_file())
        return history

    monkeypatch.setattr(prune, "finetune", watched)
    made = get_stage("prune")(ratio=0.25, finetune_epochs=2).run(ws, trained, data_dir)
    assert set_aside == [True] and made.id == whole.id and made.metrics["finetune_resumed_epochs"] == 0
    a, b = load_module(made).state_dict(), load_module(whole).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert made.metrics["predictions_sha256"] == whole.metrics["predictions_sha256"]


@pytest.mark.parametrize("on_device", [False, True], ids=["dataloader", "data-held-on-the-device"])
def test_the_finetune_trains_on_the_roots_training_images_and_reads_the_files_only_as_needed(
    tmp_path, tiny_fashion_mnist, random_root, monkeypatch, on_device
):
    # Another seed holds out other validation files: split with seed 0, a seed-3 model would fine-tune on some of
    # the images it is validated on. The batched path augments the arrays the stage's data already holds, so the
    # files are read once; the DataLoader path reads them again with the training transforms.
    from deploybench.data import load_splits
    from deploybench.optimize import base, prune
    from deploybench.optimize.base import get_stage
    from deploybench.store import Workspace
    from deploybench.train import engine
    from deploybench.train.device_data import DeviceSplit, _base_and_indices

    monkeypatch.setattr(engine, "device_resident", lambda dataset: on_device)
    ws = Workspace(tmp_path / "ws")
    root = random_root(ws, "lenet", tiny_fashion_mnist, seed=3)
    reads, seen, real_finetune = [], [], prune.finetune

    def counted(real):
        def load(*args, **kwargs):
            reads.append(kwargs.get("seed", 0))
            return real(*args, **kwargs)

        return load

    def watched(model, teacher, train, *args, **kwargs):
        seen.append(train)
        return real_finetune(model, teacher, train, *args, **kwargs)

    monkeypatch.setattr(base, "load_splits", counted(base.load_splits))
    monkeypatch.setattr(prune, "load_splits", counted(prune.load_splits))
    monkeypatch.setattr(prune, "finetune", watched)
    base._stage_data.cache_clear()
    get_stage("prune")(ratio=0.5, finetune_epochs=1).run(ws, root, tiny_fashion_mnist)

    assert reads == ([3] if on_device else [3, 3])
    expected = load_splits("fashion-mnist", tiny_fashion_mnist, seed=3, augment=False)
    seed_0 = load_splits("fashion-mnist", tiny_fashion_mnist, seed=0, augment=False)
    assert _base_and_indices(seed_0.train)[1] != _base_and_indices(expected.train)[1]  # the seed matters here
    (train,) = seen
    if on_device:
        assert isinstance(train, DeviceSplit)
        held = DeviceSplit.of_dataset(expected.train, expected.info, torch.device("cpu"), augment=False)
        assert torch.equal(train.images, held.images) and torch.equal(train.labels, held.labels)
    else:
        assert _base_and_indices(train)[1] == _base_and_indices(expected.train)[1]


def _budgeted_finetune(monkeypatch, tmp_path, *, minutes, epochs=3, stop_in_epoch=None):
    """Fine-tune a tiny net on 400 random 1x8x8 images (50 steps of 8 an epoch) on a clock that reads 10 s more at
    each look, so a budget sizes the run to the same steps on any machine. Returns (history, weights, the learning
    rate it ended at)."""
    from deploybench.optimize import prune
    from deploybench.train import engine
    from deploybench.train.recipes import default_recipe

    ticks = iter(range(0, 10**6, 10))
    monkeypatch.setattr(engine.BudgetClock, "clock", staticmethod(lambda: float(next(ticks))))
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(400, 1, 8, 8), torch.randint(0, 3, (400,)))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    recipe = default_recipe("lenet", batch_size=8)
    real, steps, opts = prune.train_one_epoch, [], []

    def epoch(*args, on_step, **kwargs):
        opts.append(args[2])

        def counted(i):
            steps.append(i)
            if stop_in_epoch and len(steps) == 50 * (stop_in_epoch - 1) + 3:
                raise KeyboardInterrupt
            return on_step(i)

        return real(*args, on_step=counted, **kwargs)

    monkeypatch.setattr(prune, "train_one_epoch", epoch)
    kwargs = dict(device=torch.device("cpu"), workers=0, checkpoint=tmp_path / "last.pt", minutes=minutes)
    history = prune.finetune(net, None, data, recipe, epochs, 0.05, 0, **kwargs)
    return history, net.state_dict(), opts[-1].param_groups[0]["lr"]


def test_a_finetune_budget_sizes_the_cosine_schedule_to_the_steps_that_fit_and_resumes_to_the_same_weights(
    monkeypatch, tmp_path
):
    # Timed over steps 6-25 at 0.5 s a step (10 s of the fake clock over 20 steps), with 30 s gone at the sizing
    # and 60 s allowed, it takes 25 + 60 steps: epoch 1 whole (50), 35 of epoch 2, no epoch 3.
    from deploybench.train import engine

    history, weights, lr = _budgeted_finetune(monkeypatch, tmp_path / "a", minutes=1.0)
    assert [h["steps"] for h in history] == [50, 35]
    assert lr < 1e-9  # the cosine spans the 85 steps taken, not the 150 of three epochs

    with pytest.raises(KeyboardInterrupt):  # stopped in epoch 2: its checkpoint holds epoch 1 and the sizing
        _budgeted_finetune(monkeypatch, tmp_path / "b", minutes=1.0, stop_in_epoch=2)
    resumed, again, _ = _budgeted_finetune(monkeypatch, tmp_path / "b", minutes=1.0)
    assert [h["steps"] for h in resumed] == [50, 35] and resumed[0].get("resumed") and not resumed[1].get("resumed")
    assert all(torch.equal(weights[k], again[k]) for k in weights)

    unbounded, plain, end = _budgeted_finetune(monkeypatch, tmp_path / "c", minutes=None)
    roomy, same, _ = _budgeted_finetune(monkeypatch, tmp_path / "d", minutes=600.0)  # does not bind: the epochs
    assert [h["steps"] for h in unbounded] == [h["steps"] for h in roomy] == [50, 50, 50] and end < 1e-9
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    assert not all(torch.equal(plain[k], weights[k]) for k in plain)
    assert engine.StepBudget(None, 150).total == 150


def test_finetune_minutes_enters_the_id_only_when_set_and_must_be_positive(trained_workspace):
    from deploybench.errors import UserError
    from deploybench.optimize.base import get_stage

    ws, trained, data_dir = trained_workspace
    stage = get_stage("prune")
    assert "finetune_minutes" not in stage(ratio=0.5).config.to_dict()
    assert stage(ratio=0.5, finetune_minutes=5).config.to_dict()["finetune_minutes"] == 5
    with pytest.raises(UserError, match="--finetune-minutes must be above 0"):
        stage(ratio=0.5, finetune_minutes=0)
