"""Model registry: parameter counts, FLOPs (conv + linear, 2 per MAC), shapes, errors."""

from functools import lru_cache

import pytest
import torch
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
    ("wrn28-10", 36_500_000, 0.005),
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
    for name in ("resnet50", "mobilenetv1", "wrn28-10"):
        convs = [m for m in cached_model(name).modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(conv.bias is None for conv in convs), name


def test_wrn_has_dropout_between_convs():
    dropouts = [m for m in cached_model("wrn28-10").modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 12 and all(d.p == 0.3 for d in dropouts)


@pytest.mark.parametrize("call", [build_model, model_spec])
def test_unknown_name_lists_allowed(call):
    with pytest.raises(ValueError) as info:
        call("resnet18")
    assert "resnet18" in str(info.value)
    for name in model_names():
        assert name in str(info.value)
