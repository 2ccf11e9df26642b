"""ResNet-56 in the standard CIFAR layout (He et al. 2016, sec. 4.2): 3 stages x 9 basic blocks,
16/32/64 channels, option-A (zero-padding) shortcuts.  The speed comparison's reference and, as
`codanet.models.posthoc.resnet56`, the post-hoc baseline of the paper's supplement.  Each ReLU is
its own module, so Captum's DeepLIFT applies its rescale rule to every one."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.pad = c_out - c_in
        self.stride = stride

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.relu2(out + short)


class ResNet56(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 56):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, c = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(_Block(c, width, 2 if (j == 0 and i > 0) else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))
