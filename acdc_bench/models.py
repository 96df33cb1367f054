"""Model registry for the benchmark suites.

Every model is registered in :data:`MODELS` under the name used by the suite
configs.  Convolutions that feed a BatchNorm carry no bias, and convolutions are
initialised Kaiming-normal (``fan_out``, ReLU gain) as in the reference codes.

==============  ==============  =======  ========================================
name            input (C,H,W)   classes  notes
==============  ==============  =======  ========================================
lenet-300-100   (1, 28, 28)     10       266,610 parameters (Fashion-MNIST)
resnet50        (3, 224, 224)   1000     torchvision v1.5, 25.557M params, 4.09G MACs
mobilenetv1     (3, 224, 224)   1000     Howard et al. width 1.0, 4.23M params, 569M MACs
wrn28-10        (3, 32, 32)     100      pre-activation WideResNet, dropout 0.3, 36.5M params
==============  ==============  =======  ========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torchvision

__all__ = ["ModelSpec", "MODELS", "build_model", "model_names", "model_spec",
           "lenet_300_100", "resnet50", "wrn28_10", "MobileNetV1", "WideResNet"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    Attributes:
        builder: called as ``builder(num_classes=...)``; returns a fresh, randomly
            initialised model.
        input_shape: the (channels, height, width) of one input example.
        num_classes: the default number of output classes.
        description: a one-line human-readable summary.
    """

    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    description: str


def _init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- LeNet


def lenet_300_100(num_classes: int = 10) -> nn.Module:
    """The fully connected LeNet-300-100 of LeCun et al. for 28x28 grey images."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 300),
        nn.ReLU(inplace=True),
        nn.Linear(300, 100),
        nn.ReLU(inplace=True),
        nn.Linear(100, num_classes),
    )


# ------------------------------------------------------------------------ ResNet50


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet50 v1.5 (stride 2 in the 3x3 conv), random weights."""
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


# --------------------------------------------------------------------- MobileNetV1


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int,
                  groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                  padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017), width multiplier 1.0, for 224x224 inputs.

    A 3x3 stride-2 convolution to 32 channels, then 13 depthwise-separable blocks
    (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), global average pooling
    and a 1024-to-``num_classes`` linear layer.
    """

    #: (output channels, depthwise stride) of the 13 depthwise-separable blocks.
    BLOCKS: tuple[tuple[int, int], ...] = (
        (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
        (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, kernel_size=3, stride=2)]
        channels = 32
        for out_channels, stride in self.BLOCKS:
            layers.append(nn.Sequential(
                _conv_bn_relu(channels, channels, 3, stride, groups=channels),
                _conv_bn_relu(channels, out_channels, 1, 1),
            ))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init_conv_bn(self)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------- WideResNet


class _PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 with an identity or 1x1 shortcut.

    When the shape changes, the shortcut 1x1 convolution reads the pre-activated
    input (as in Zagoruyko and Komodakis' code).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """Pre-activation WideResNet-``depth``-``widen_factor`` for 32x32 inputs."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.3,
                 num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_channels = widths[0]
        for group, out_channels in enumerate(widths[1:]):
            blocks = []
            for i in range(blocks_per_group):
                stride = 2 if group > 0 and i == 0 else 1
                blocks.append(_PreActBasicBlock(in_channels, out_channels, stride, dropout))
                in_channels = out_channels
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        _init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.groups(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def wrn28_10(num_classes: int = 100) -> nn.Module:
    """WideResNet-28-10 with dropout 0.3, as in the AC/DC CIFAR-100 runs."""
    return WideResNet(depth=28, widen_factor=10, dropout=0.3, num_classes=num_classes)


# ------------------------------------------------------------------------ registry


MODELS: dict[str, ModelSpec] = {
    "lenet-300-100": ModelSpec(
        lenet_300_100, (1, 28, 28), 10,
        "LeNet-300-100 MLP (784-300-100-10) for Fashion-MNIST"),
    "resnet50": ModelSpec(
        resnet50, (3, 224, 224), 1000,
        "torchvision ResNet50 v1.5 for ImageNet"),
    "mobilenetv1": ModelSpec(
        MobileNetV1, (3, 224, 224), 1000,
        "MobileNetV1 width 1.0 (Howard et al. 2017) for ImageNet"),
    "wrn28-10": ModelSpec(
        wrn28_10, (3, 32, 32), 100,
        "pre-activation WideResNet-28-10, dropout 0.3, for CIFAR-100"),
}


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``; ``ValueError`` if unknown."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(model_names())}") from None


def build_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised model ``name`` with ``num_classes`` outputs.

    ``num_classes`` defaults to the registered number for that model.
    """
    spec = model_spec(name)
    return spec.builder(num_classes=spec.num_classes if num_classes is None else num_classes)
