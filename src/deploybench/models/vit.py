"""Vision Transformer trained from scratch on small images.

The layers are torchvision's `VisionTransformer` (pre-norm blocks, GELU MLP, class token, learned position
embedding, LayerNorm eps 1e-6), with the same parameter count, but the attention keeps its Q, K and V
projections in one `qkv` Linear and reshapes with `num_heads` in its forward, as timm's does. That is the
layout torch-pruning removes whole heads from (`num_heads={attn.qkv: n}`, `prune_num_heads=True`); it cannot
remove heads from `nn.MultiheadAttention`, whose packed `in_proj_weight` it only narrows.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from deploybench.models.registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention; the head width is whatever `qkv` holds per head, so pruning may change both
    `num_heads` (whole heads) and the embedding width."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        num_classes: int,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        tokens = (image_size // patch_size) ** 2 + 1
        self.conv_proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_dim) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        fan_in = self.conv_proj.in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=(1 / fan_in) ** 0.5)
        nn.init.zeros_(self.conv_proj.bias)

    def unwrapped_parameters(self) -> list[tuple[nn.Parameter, int]]:
        """Parameters outside any layer, with their channel dimension (for torch-pruning)."""
        return [(self.class_token, 2), (self.pos_embedding, 2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.blocks(x))[:, 0])


@register_model(
    "vit-small",
    family="vit",
    recipe=dict(
        epochs=3, lr=1e-3, batch_size=128, optimizer="adamw", schedule="cosine", label_smoothing=0.1, weight_decay=0.05
    ),
)
def vit_small(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ViT with 4x4 patches, width 384, 8 heads, 8 blocks, MLP ratio 4 (~14.2M params)."""
    return VisionTransformer(
        image_size=image_size,
        patch_size=4,
        in_channels=in_channels,
        dim=384,
        depth=8,
        num_heads=8,
        mlp_dim=4 * 384,
        num_classes=num_classes,
    )
