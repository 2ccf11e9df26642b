"""An ordinary classifier behind the interface that the attribution methods and the metrics use,
so the paper's post-hoc methods explain a ResNet exactly as they explain a CoDA-Net
(docs/evaluation.md, "A post-hoc ResNet").

The metrics remove a pixel by zeroing every channel of the encoded input [x, 1-x]; the wrapped
network sees only the first C channels of that input, so for it a removed pixel is 0 (black, the
background of Fashion-MNIST and MNIST).  Its logits are read as sigmoid probabilities, as a
CoDA-Net's are: train it with the same binary cross-entropy (scripts/resnet_baseline.py).
"""
from __future__ import annotations

import torch
from torch import nn

from .coda_net import CoDANet, check_images


class PlainClassifier(nn.Module):
    """`net` (images in [0, 1] -> logits) with `in_channels`, `num_classes`, `class_names`,
    `forward_encoded` and `cam_layer`: the layer GradCAM reads, named by its path in `net`
    (a ResNet's last block, "blocks.8").  It is looked up, not registered a second time: Captum's
    DeepLIFT would otherwise hook its ReLUs twice."""

    def __init__(self, net: nn.Module, *, in_channels: int, num_classes: int, cam_layer: str,
                 name: str = "plain"):
        super().__init__()
        self.net, self.cam_layer_name = net, cam_layer
        try:
            net.get_submodule(cam_layer)
        except AttributeError as e:
            raise ValueError(f"cam_layer {cam_layer!r} is not a submodule of the network: {e}") from None
        self.in_channels, self.num_classes, self.name = in_channels, num_classes, name
        self.class_names: list[str] | None = None

    @property
    def cam_layer(self) -> nn.Module:
        return self.net.get_submodule(self.cam_layer_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels)
        return self.net(x)                                           # (N, K)

    def forward_encoded(self, x_encoded: torch.Tensor) -> torch.Tensor:
        """Logits for an encoded input (N, 2C, H, W): the network sees x = its first C channels."""
        return self.net(x_encoded[:, :self.in_channels])

    # targets: ints, class names or one per sample, checked exactly as a CoDA-Net checks them
    resolve_targets = CoDANet.resolve_targets


def resnet56(num_classes: int = 10, in_channels: int = 1) -> PlainClassifier:
    """The CIFAR-layout ResNet-56 (codanet.bench.resnet) as a PlainClassifier; on 28x28 inputs
    its three stages work at 28, 14 and 7 pixels, as coda_cpu's."""
    from ..bench.resnet import ResNet56
    net = ResNet56(num_classes=num_classes, in_channels=in_channels)
    return PlainClassifier(net, in_channels=in_channels, num_classes=num_classes,
                           cam_layer=f"blocks.{len(net.blocks) - 1}", name="resnet56")
