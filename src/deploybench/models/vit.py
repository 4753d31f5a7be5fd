"""Vision Transformer trained from scratch on small images (torchvision's implementation)."""
import torch.nn as nn
import torchvision

from deploybench.models.registry import register_model


@register_model("vit-small", family="vit", recipe=dict(epochs=3, lr=1e-3, batch_size=128, optimizer="adamw",
                                                       schedule="cosine", label_smoothing=0.1, weight_decay=0.05))
def vit_small(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ViT with 4x4 patches, width 384, 8 heads, 8 blocks, MLP ratio 4 (~14.2M params)."""
    model = torchvision.models.VisionTransformer(image_size=image_size, patch_size=4, num_layers=8, num_heads=8,
                                                 hidden_dim=384, mlp_dim=4 * 384, num_classes=num_classes)
    if in_channels != 3:
        model.conv_proj = nn.Conv2d(in_channels, 384, kernel_size=4, stride=4)
    return model
