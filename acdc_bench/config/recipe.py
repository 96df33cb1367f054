"""A run's training recipe, applied: optimizer, learning rate, weight initialisation.

The resolved run (:class:`acdc_bench.config.run.RunConfig`) holds the recipe: ``optimizer``,
``lr_schedule`` (its rate: :meth:`RunConfig.lr_at`), ``label_smoothing``, ``batch_size``,
``amp`` and ``init`` (a method's own ``recipe`` under ``budget: paper``, the suite's shared one
under ``budget: matched``; see :func:`acdc_bench.config.run_config`); these functions turn
them into objects. The training loop, the attach API and the benchmarks all go through them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from acdc_bench.config.run import INIT_SCHEMES, NO_DECAY_CATEGORIES, Optimizer

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def optimizer_kwargs(optimizer: Optimizer) -> dict:
    """``torch.optim.SGD`` keyword arguments of a recipe's optimizer."""
    return dict(lr=float(optimizer.lr), momentum=float(optimizer.momentum), nesterov=bool(optimizer.nesterov),
                weight_decay=float(optimizer.weight_decay))


def no_decay_parameters(model: nn.Module, categories: Sequence[str]) -> set[int]:
    """Ids of ``model``'s parameters that get no weight decay under ``no_decay: categories``.

    ``bn``: every parameter of a normalisation layer (BatchNorm scale and shift);
    ``bias``: the bias of every other layer (convolutions, linear layers);
    ``depthwise``: the weight of every depthwise convolution (``groups == in_channels > 1``).
    The TF reference codes (RigL, Gale et al.) put their L2 term on kernels only: ``[bias, bn]``.
    """
    unknown = sorted(set(categories) - set(NO_DECAY_CATEGORIES))
    if unknown:
        raise ValueError(f"optimizer.no_decay: unknown categories {unknown}; allowed: {', '.join(NO_DECAY_CATEGORIES)}")
    ids: set[int] = set()
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, _NORM_TYPES):
            if "bn" in categories:
                ids.update(id(p) for p in own.values())
            continue
        if "bias" in categories and own.get("bias") is not None:
            ids.add(id(own["bias"]))
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        if "depthwise" in categories and depthwise and "weight" in own:
            ids.add(id(own["weight"]))
    return ids


def build_optimizer(model: nn.Module, optimizer: Optimizer | Mapping, groups: Sequence[dict] | None = None
                    ) -> torch.optim.Optimizer:
    """SGD over ``groups`` (a method's parameter groups) or all of ``model``'s parameters.
    ``optimizer``: a run's :class:`~acdc_bench.config.run.Optimizer`, or a recipe's ``optimizer``
    mapping (``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``no_decay``).

    ``optimizer.no_decay`` (e.g. ``[bias, bn]``) splits every group into the parameters that
    keep its weight decay and those that get none (whatever decay the group sets); without it
    the groups are used as given.
    """
    if not isinstance(optimizer, Optimizer):
        optimizer = Optimizer.from_mapping(optimizer)
    kwargs = optimizer_kwargs(optimizer)
    groups = [dict(group) for group in groups] if groups else [{"params": list(model.parameters())}]
    excluded = no_decay_parameters(model, optimizer.no_decay)
    if excluded:
        split = []
        for group in groups:
            params = list(group["params"])
            decayed = [p for p in params if id(p) not in excluded]
            free = [p for p in params if id(p) in excluded]
            if decayed:
                split.append({**group, "params": decayed})
            if free:
                split.append({**group, "params": free, "weight_decay": 0.0})
        groups = split
    return torch.optim.SGD(groups, **kwargs)


def initialize(model: nn.Module, scheme: str | None) -> nn.Module:
    """Re-initialise ``model``'s weights by ``scheme`` (in place; returns ``model``).

    None or ``default``: the model's own initialisation (:mod:`acdc_bench.models`).
    ``kaiming_normal_fan_in``: STR's (``init: kaiming_normal``, ``mode: fan_in``,
    ``nonlinearity: relu``): every convolution and linear weight from N(0, 2 / fan_in), their
    biases zero (STR's fc is a 1x1 convolution without bias); normalisation layers untouched.
    ``tf-resnet``: the TensorFlow ResNet-50 of RigL's and Gale et al.'s codes
    (``resnet_model.py``): every convolution from TF's ``variance_scaling_initializer()`` (scale
    1, fan_in, truncated normal: N(0, s^2) cut at 2 s, s = sqrt(1 / fan_in) / 0.8796, so that the
    weights' standard deviation is sqrt(1 / fan_in)), the fc from N(0, 0.01^2) with a zero bias,
    every BatchNorm at scale 1 and shift 0 except the last of each residual block (scale 0).
    ``tf-mobilenet``: the TensorFlow MobileNetV1 of RigL's code (``mobilenetv1_model.py``): the
    stem, the pointwise convolutions and the fc from ``variance_scaling_initializer()`` as above
    (the fc's bias zero), the depthwise convolutions from Glorot uniform (``separable_conv2d``'s
    default; TF's fans of its (3, 3, C, 1) kernel sum to 9 C + 9, as PyTorch's of (C, 1, 3, 3)),
    every BatchNorm at scale 1 and shift 0.
    Call it right after the model is built, before a method attaches.
    """
    if scheme in (None, "", "default"):
        return model
    if scheme == "kaiming_normal_fan_in":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        return model
    if scheme == "tf-resnet":
        return _tf_resnet_init(model)
    if scheme == "tf-mobilenet":
        return _tf_mobilenet_init(model)
    raise ValueError(f"init scheme {scheme!r} is unknown; allowed: {', '.join(INIT_SCHEMES)}")


#: The standard deviation of N(0, 1) cut at +-2 (TF's truncated_normal keeps its stddev argument
#: for the uncut normal; variance_scaling divides by this so the cut weights have the asked spread).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _variance_scaling_(weight: torch.Tensor) -> None:
    """TF's ``variance_scaling_initializer()``: truncated normal whose cut weights have std sqrt(1 / fan_in)."""
    scale = (1.0 / weight[0].numel()) ** 0.5 / TRUNCATED_NORMAL_STD
    nn.init.trunc_normal_(weight, mean=0.0, std=scale, a=-2 * scale, b=2 * scale)


def _tf_mobilenet_init(model: nn.Module) -> nn.Module:
    from acdc_bench.models import MobileNetV1

    if not isinstance(model, MobileNetV1):
        raise ValueError("init 'tf-mobilenet' is the TensorFlow MobileNetV1's initialisation: this model is "
                         f"a {type(model).__name__}; use init: null or kaiming_normal_fan_in")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                _variance_scaling_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                continue
            else:
                continue
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _tf_resnet_init(model: nn.Module) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    blocks = [module for module in model.modules() if isinstance(module, (Bottleneck, BasicBlock))]
    if not blocks:
        raise ValueError("init 'tf-resnet' is the TensorFlow ResNet's initialisation: this model has no "
                         "torchvision ResNet blocks; use init: null or kaiming_normal_fan_in")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                _variance_scaling_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in blocks:
            nn.init.zeros_((block.bn3 if isinstance(block, Bottleneck) else block.bn2).weight)
    return model
