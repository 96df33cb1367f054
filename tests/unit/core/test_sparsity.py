"""The sparsity core: prunable weights, masks, distributions, exact top-k."""

import pytest
import torch
from torch import nn

from acdc_bench.models import build_model
from acdc_bench.core.sparsity import (
    MaskSet,
    erk_densities,
    global_magnitude_masks,
    magnitude_mask,
    mask_overlap,
    prunable_layers,
    uniform_densities,
    weight_sparsity,
)


def small_model():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )


def test_prunable_layers_are_conv_and_linear_weights_only():
    model = small_model()
    layers = prunable_layers(model)
    assert [layer.name for layer in layers] == ["0", "4"]
    assert all(layer.weight is layer.module.weight for layer in layers)
    assert [layer.name for layer in prunable_layers(model, exclude=["4"])] == ["0"]
    assert [layer.name for layer in prunable_layers(model, include=["4"])] == ["4"]
    with pytest.raises(ValueError, match="no prunable"):
        prunable_layers(model, include=["nothing"])


def test_magnitude_mask_keeps_exact_count_with_ties():
    weight = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -2.0, 3.0, 0.5])
    mask = magnitude_mask(weight, density=0.5)
    assert int(mask.sum()) == 4
    assert mask.tolist() == [False, False, False, False, True, True, True, True]
    tied = magnitude_mask(torch.zeros(10), density=0.3)
    assert int(tied.sum()) == 3


def test_global_masks_hit_the_exact_count_across_layers():
    torch.manual_seed(0)
    weights = [torch.randn(100, 30), torch.randn(7, 3, 3, 3) * 0.1, torch.zeros(50)]
    masks = global_magnitude_masks(weights, 0.9)
    total = sum(w.numel() for w in weights)
    assert sum(int(m.sum()) for m in masks) == total - round(0.9 * total)
    # one threshold: every kept magnitude is >= every pruned magnitude
    kept = torch.cat([w.abs()[m] for w, m in zip(weights, masks)])
    pruned = torch.cat([w.abs()[~m] for w, m in zip(weights, masks)])
    assert kept.min() >= pruned.max()
    assert int(masks[2].sum()) == 0


def test_erk_matches_rigl_on_resnet50():
    layers = prunable_layers(build_model("resnet50"))
    densities = erk_densities(layers, 0.8)
    by_name = dict(zip((layer.name for layer in layers), densities))
    assert by_name["conv1"] == pytest.approx(0.86, abs=0.005)
    assert by_name["fc"] == pytest.approx(0.15, abs=0.005)
    assert max(densities) <= 1.0
    kept = sum(d * layer.numel for d, layer in zip(densities, layers))
    total = sum(layer.numel for layer in layers)
    assert kept == pytest.approx(0.2 * total, rel=1e-9)


def test_erk_makes_layers_dense_and_resolves_when_density_would_exceed_one():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1000), nn.Linear(1000, 1000))
    layers = prunable_layers(model)
    densities = erk_densities(layers, 0.5)
    assert densities[0] == 1.0  # tiny layer would exceed 1 and is made dense
    kept = sum(d * layer.numel for d, layer in zip(densities, layers))
    assert kept == pytest.approx(0.5 * sum(layer.numel for layer in layers))


def test_uniform_keeps_named_layers_dense_and_rejects_unknown_names():
    layers = prunable_layers(small_model())
    assert uniform_densities(layers, 0.9, keep_dense=["0"]) == [1.0, pytest.approx(0.1)]
    with pytest.raises(ValueError, match="conv1.*matches no prunable layer"):
        uniform_densities(layers, 0.9, keep_dense=["conv1"])


def test_masks_apply_to_gradients_and_weights_through_an_optimizer_step():
    torch.manual_seed(0)
    model = small_model()
    layers = prunable_layers(model)
    masks = MaskSet(layers)
    masks.set(global_magnitude_masks([layer.weight for layer in layers], 0.7))
    masks.apply_to_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 28, 28)).sum().backward()
        masks.apply_to_grads()
        for layer, mask in zip(layers, masks.masks):
            assert torch.all(layer.weight.grad[~mask] == 0)
        optimizer.step()
        masks.apply_to_weights()
    sparsity, densities = weight_sparsity(layers)
    assert sparsity == pytest.approx(masks.sparsity())
    assert masks.nonzeros == [int(m.sum()) for m in masks.masks]
    state = masks.state_dict()
    fresh = MaskSet(layers)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.masks, masks.masks))
    # the loaded masks are copies: a method that changes its masks in place (RigL, SET) leaves the
    # checkpoint it was loaded from as it was
    fresh.masks[0].fill_(False)
    assert torch.equal(state[layers[0].name], masks.masks[0])


def test_masks_follow_their_weights_to_another_device():
    """A model moved after its masks were made (``model.to("cuda")`` keeps each Parameter and moves its
    data): ``follow_weights`` moves each mask to its weight's device and leaves the others as they are
    (the same tensors). The meta device stands in for a GPU; masks can move onto it, not off it."""
    model = small_model()
    layers = prunable_layers(model)
    masks = MaskSet(layers)
    masks.set([torch.rand(layer.shape) < 0.5 for layer in layers])
    first = masks.masks[0]
    last = layers[-1]
    moved = type(last)(last.name, last.module, nn.Parameter(last.weight.detach().to("meta")))
    masks.layers[-1] = moved
    masks.follow_weights()
    assert masks.masks[0] is first
    assert masks.masks[-1].device.type == "meta" and masks.masks[-1].shape == moved.weight.shape
    assert masks.masks[-1].dtype == torch.bool


def test_masks_of_the_wrong_shape_or_count_are_refused_naming_the_layer():
    layers = prunable_layers(small_model())
    masks = MaskSet(layers)
    with pytest.raises(ValueError, match=r"mask for layer '4' has shape \(27040,\), its weight \(10, 2704\)"):
        masks.set([torch.ones(layers[0].shape, dtype=torch.bool), torch.ones(layers[1].numel, dtype=torch.bool)])
    with pytest.raises(ValueError, match="1 given for 2 layers"):
        masks.set([torch.ones(layers[0].shape, dtype=torch.bool)])
    assert masks.nonzeros == [layer.numel for layer in layers]  # nothing installed


def test_mask_overlap_is_intersection_over_union():
    a = [torch.tensor([True, True, False, False])]
    b = [torch.tensor([True, False, True, False])]
    assert mask_overlap(a, b) == pytest.approx(1 / 3)
