"""Pruning `vit-small`: whole attention heads go, the ones with the least importance, on every schedule."""
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
                block.attn.proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0


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
