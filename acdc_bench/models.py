"""Model registry for the benchmark suites.

Every model is registered in :data:`MODELS` under the name used by the suite
configs, with the structure and initialisation of the reference code the paper
suites follow (a recipe may re-initialise it: :func:`acdc_bench.config.recipe.initialize`).

==============  ==============  =======  ========================================
name            input (C,H,W)   classes  notes
==============  ==============  =======  ========================================
lenet-300-100   (1, 28, 28)     10       266,610 parameters (Fashion-MNIST)
resnet50        (3, 224, 224)   1000     torchvision v1.5, 25.557M params, 4.09G MACs
mobilenetv1     (3, 224, 224)   1000     Howard et al. width 1.0, 4.23M params, 569M MACs
wrn28-10        (3, 32, 32)     100      AC/DC's WideResNet-28-10, dropout 0.3, 36,546,980 params
==============  ==============  =======  ========================================

Initialisation: ResNet50 is torchvision's (Kaiming normal ``fan_out`` convolutions, as
AC/DC's ``models/resnet_imagenet.py``); MobileNetV1 and WideResNet-28-10 keep PyTorch's
default initialisation, as AC/DC's ``models/mobilenet.py`` and ``models/wide_resnet_cifar.py``
do (the latter defines a ``conv_init`` that is never applied).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
import torchvision

__all__ = ["ModelSpec", "MODELS", "build_model", "model_names", "model_spec",
           "lenet_300_100", "resnet50", "wrn28_10", "MobileNetV1", "WideResNet", "WideBasicBlock"]


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
    and a 1024-to-``num_classes`` linear layer. PyTorch's default initialisation, as in
    AC/DC's ``models/mobilenet.py`` (and STR's MobileNetV1).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------- WideResNet


class WideBasicBlock(nn.Module):
    """One block of AC/DC's WideResNet (``wide_basic`` of meliketoy/wide-resnet.pytorch).

    ``conv2(relu(bn2(dropout(conv1(relu(bn1(x))))))) + shortcut(x)``: dropout after the
    first convolution, the stride in the second, every convolution with a bias, and the
    shortcut (a 1x1 convolution with bias when the shape changes, else the identity)
    reading the raw block input.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """AC/DC's CIFAR WideResNet-``depth``-``widen_factor`` (``models/wide_resnet_cifar.py``).

    A 3x3 convolution (with bias) to 16 channels, three groups of ``(depth - 4) / 6``
    :class:`WideBasicBlock` (widths 16k, 32k, 64k; the first block of groups 2 and 3 has
    stride 2), a final BatchNorm with momentum 0.9 (as in the reference code), ReLU, 8x8
    average pooling (32x32 inputs) and a linear layer. Module names follow the reference
    code (``conv1``, ``layer1``-``layer3``, ``bn1``, ``linear``), so its checkpoints load.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.3,
                 num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=True)
        in_channels = widths[0]
        for index, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            layers = []
            for block_stride in [stride] + [1] * (blocks - 1):
                layers.append(WideBasicBlock(in_channels, width, dropout, block_stride))
                in_channels = width
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=0.9)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.linear(torch.flatten(out, 1))


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
        "AC/DC's WideResNet-28-10 (meliketoy/wide-resnet.pytorch), dropout 0.3, for CIFAR-100"),
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
