"""Model registry: parameter counts, FLOPs (conv + linear, 2 per MAC), shapes, errors."""

from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from acdc_bench.models import MODELS, ModelSpec, build_model, model_names, model_spec


@lru_cache(maxsize=None)
def cached_model(name: str) -> nn.Module:
    return build_model(name).eval()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(name: str) -> tuple[int, torch.Tensor, dict]:
    """Forward FLOPs of one example, the output, and the per-op counts."""
    spec = model_spec(name)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = cached_model(name)(torch.zeros(1, *spec.input_shape))
    ops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), out, ops


def test_registry_lists_all_models():
    assert model_names() == sorted(["lenet-300-100", "resnet50", "mobilenetv1", "wrn28-10"])
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec) and spec.description
        with pytest.raises(Exception):
            spec.num_classes = 3  # frozen


@pytest.mark.parametrize("name, expected, rel", [
    ("lenet-300-100", 266_610, 0.0),
    ("resnet50", 25_557_032, 0.0),
    ("mobilenetv1", 4_231_976, 0.01),
    ("wrn28-10", 36_546_980, 0.0),  # AC/DC's Wide_ResNet(28, 10, 0.3, 100)
])
def test_parameter_counts(name, expected, rel):
    assert num_params(cached_model(name)) == pytest.approx(expected, rel=rel)


def test_resnet50_forward_flops():
    flops, _, ops = forward_flops("resnet50")
    assert flops == pytest.approx(8.18e9, rel=0.005)
    assert set(ops) == {"aten.convolution", "aten.addmm"}


def test_mobilenetv1_multiply_adds():
    flops, _, ops = forward_flops("mobilenetv1")
    assert flops / 2 == pytest.approx(569e6, rel=0.01)
    assert set(ops) == {"aten.convolution", "aten.addmm"}


def test_lenet_flops_are_two_per_weight():
    flops, _, _ = forward_flops("lenet-300-100")
    assert flops == 2 * (784 * 300 + 300 * 100 + 100 * 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape(name):
    spec = model_spec(name)
    with torch.no_grad():
        out = cached_model(name)(torch.randn(1, *spec.input_shape))
    assert out.shape == (1, spec.num_classes)
    assert torch.isfinite(out).all()


def test_num_classes_override():
    model = build_model("lenet-300-100", num_classes=7)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_convs_followed_by_batchnorm_have_no_bias():
    for name in ("resnet50", "mobilenetv1"):
        convs = [m for m in cached_model(name).modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(conv.bias is None for conv in convs), name


def test_wrn_is_the_official_structure():
    model = cached_model("wrn28-10")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 12 * 2 + 3 and all(conv.bias is not None for conv in convs)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 12 and all(d.p == 0.3 for d in dropouts)
    assert model.bn1.momentum == 0.9
    assert [model.layer2[0].conv1.stride, model.layer2[0].conv2.stride] == [(1, 1), (2, 2)]


class _ReferenceWideBasic(nn.Module):
    """``wide_basic`` as published in meliketoy/wide-resnet.pytorch (and AC/DC's wide_resnet_cifar.py)."""

    def __init__(self, in_planes, planes, dropout_rate, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        shortcut = [nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)] \
            if stride != 1 or in_planes != planes else []
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x):
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class _ReferenceWideResNet(nn.Module):
    """``Wide_ResNet(depth, widen_factor, dropout_rate, num_classes)`` as published there."""

    def __init__(self, depth, widen_factor, dropout_rate, num_classes):
        super().__init__()
        n, k = (depth - 4) // 6, widen_factor
        stages = [16, 16 * k, 32 * k, 64 * k]
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, stages[0], kernel_size=3, stride=1, padding=1, bias=True)
        self.layer1 = self._wide_layer(stages[1], n, dropout_rate, stride=1)
        self.layer2 = self._wide_layer(stages[2], n, dropout_rate, stride=2)
        self.layer3 = self._wide_layer(stages[3], n, dropout_rate, stride=2)
        self.bn1 = nn.BatchNorm2d(stages[3], momentum=0.9)
        self.linear = nn.Linear(stages[3], num_classes)

    def _wide_layer(self, planes, num_blocks, dropout_rate, stride):
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(_ReferenceWideBasic(self.in_planes, planes, dropout_rate, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.linear(out.view(out.size(0), -1))


def test_wrn_matches_the_reference_definition_on_the_same_weights():
    torch.manual_seed(0)
    ours = build_model("wrn28-10")
    reference = _ReferenceWideResNet(28, 10, 0.3, 100)
    assert sum(p.numel() for p in reference.parameters()) == 36_546_980
    reference.load_state_dict(ours.state_dict())  # same names and shapes, strict
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours.eval(), reference.eval()
        assert torch.equal(ours(inputs), reference(inputs))
        ours.train(), reference.train()  # dropout draws in the same order: the same masks
        torch.manual_seed(1)
        out_ours = ours(inputs)
        torch.manual_seed(1)
        out_reference = reference(inputs)
    assert torch.equal(out_ours, out_reference)
    # BatchNorm running statistics moved the same way (final BN momentum 0.9).
    assert torch.equal(ours.bn1.running_mean, reference.bn1.running_mean)


@pytest.mark.parametrize("call", [build_model, model_spec])
def test_unknown_name_lists_allowed(call):
    with pytest.raises(ValueError) as info:
        call("resnet18")
    assert "resnet18" in str(info.value)
    for name in model_names():
        assert name in str(info.value)
