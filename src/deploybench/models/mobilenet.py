"""torchvision's MobileNetV2, the deployment-oriented reference."""

import torch.nn as nn
import torchvision

from deploybench.models.registry import register_model


@register_model(
    "mobilenetv2",
    family="mobilenet",
    recipe=dict(epochs=3, lr=0.05, batch_size=128, optimizer="sgd", schedule="onecycle", label_smoothing=0.1),
)
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's mobilenet_v2 (width 1.0), first conv adapted to the input channels."""
    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    if in_channels != 3:
        model.features[0][0] = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
    return model
