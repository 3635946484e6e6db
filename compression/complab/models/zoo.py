"""The built-in demo classifiers: Deep Compression's two MNIST networks and a small VGG-style CNN.

They are trained on scikit-learn's handwritten digits by `python -m complab.demo.train`; the
weights live in `assets/` as safetensors files. Each entry says how to build the architecture and
which input it expects, so a compact file can rebuild it from a name (timm-style registry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class DemoSpec:
    """What a demo model needs: a builder, its input (C, H, W) and the weights file in assets/."""

    name: str
    build: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int]
    weights_file: str
    description: str


class LeNet300(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998), the fully connected MNIST net of Deep Compression's Table 1."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example (20 and 50 5x5 filters, 500 hidden units), Deep Compression's."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


# Channel widths of the small VGG ("M" = 2x2 max-pool); over-wide on purpose, so channel pruning has
# something to remove, as VGG-16 had on CIFAR-10 in the channel-pruning paper.
VGG_SMALL_CFG: tuple = (32, 32, "M", 64, 64, "M", 128, 128, "M", 256, "M")


class VGGSmall(nn.Module):
    """A VGG-style CNN (3x3 conv + BN + ReLU blocks, global average pool) for 32x32 inputs."""

    def __init__(self, num_classes: int = 10, cfg: tuple = VGG_SMALL_CFG, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


DEMO_MODELS: dict[str, DemoSpec] = {
    spec.name: spec
    for spec in (
        DemoSpec("lenet300", LeNet300, (1, 28, 28), "lenet300.safetensors",
                 "LeNet-300-100: 784-300-100-10 fully connected (Deep Compression, Table 1)"),
        DemoSpec("lenet5", LeNet5, (1, 28, 28), "lenet5.safetensors",
                 "LeNet-5 (Caffe): conv 20, conv 50, fc 500, fc 10 (Deep Compression, Table 1)"),
        DemoSpec("vgg_small", VGGSmall, (1, 32, 32), "vgg_small.safetensors",
                 "VGG-style CNN: 7 conv 3x3 + BN, global pool, fc (for channel pruning)"),
    )
}
