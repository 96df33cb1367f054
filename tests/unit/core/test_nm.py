"""N:M masks (``pattern: "2:4"``): at most N non-zeros in every M consecutive input weights."""

import itertools

import pytest
import torch
from torch import nn

import acdc_bench
from acdc_bench.core.sparsity import (nm_density, nm_group_nonzeros, nm_keep, nm_mask, parse_pattern,
                                      prunable_layers)
from acdc_bench.methods import get_method, make_config


def test_hand_made_linear_weight():
    weight = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, -4.0, 0.0, 3.0],
                           [1.0, 1.0, 1.0, 1.0, -0.5, 0.5, 0.7, -0.6]])
    expected = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0],
                             [1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)  # ties: the lower index first
    assert torch.equal(nm_mask(weight, 2, 4), expected)
    assert nm_group_nonzeros(weight * nm_mask(weight, 2, 4), 4).tolist() == [2, 2, 2, 2]
    assert torch.equal(nm_mask(weight, 1, 4), torch.tensor([[0, 1, 0, 0, 1, 0, 0, 0],
                                                            [1, 0, 0, 0, 0, 0, 1, 0]], dtype=torch.bool))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2)])
@pytest.mark.parametrize("shape", [(16, 32), (8, 12, 3, 3), (6, 10), (4, 3, 7, 7), (5, 1, 3, 3)])
def test_every_group_keeps_at_most_n_and_exactly_n_where_it_can(n, m, shape):
    torch.manual_seed(0)
    weight = torch.randn(shape)
    mask = nm_mask(weight, n, m)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    counts = nm_group_nonzeros(mask, m)
    assert int(counts.max()) <= n
    total = weight.numel()
    sizes = [min(m, total - start) for start in range(0, total, m)]
    assert counts.tolist() == [min(n, size) for size in sizes]  # a full group keeps exactly n
    assert float(mask.float().mean()) == pytest.approx(nm_density(shape, n, m))


def test_conv_groups_run_over_input_channels_at_each_position():
    """[out, in, kh, kw]: the groups are the input channels at each (out, kh, kw), as MagnitudeNMPruner."""
    torch.manual_seed(1)
    weight = torch.randn(3, 8, 2, 2)
    mask = nm_mask(weight, 2, 4)
    for o, i0, y, x in itertools.product(range(3), (0, 4), range(2), range(2)):
        group = weight[o, i0:i0 + 4, y, x].abs()
        kept = set(torch.topk(group, 2).indices.tolist())
        assert {c for c in range(4) if mask[o, i0 + c, y, x]} == kept
    # a channels_last weight gives the same mask (logical order)
    assert torch.equal(nm_mask(weight.contiguous(memory_format=torch.channels_last), 2, 4), mask)


def test_a_first_conv_groups_across_kernel_positions_as_the_official_pruner():
    """conv1 of 3 input channels: MagnitudeNMPruner cuts the (out, kh, kw, in) tensor into runs of 4
    consecutive weights, so a group spans two kernel positions and 2:4 keeps exactly half."""
    weight = torch.zeros(1, 3, 1, 4)  # out 1, in 3, kh 1, kw 4: (kh, kw, in) order = 12 weights, 3 groups
    # magnitudes in (kw, in) order: position 0 (in 0..2), position 1 (in 0..2), ...
    by_position = [[9.0, 1.0, 2.0], [8.0, 7.0, 0.5], [0.1, 0.2, 6.0], [5.0, 0.3, 4.0]]
    for x, channels in enumerate(by_position):
        weight[0, :, 0, x] = torch.tensor(channels)
    mask = nm_mask(weight, 2, 4)
    # groups of 4 in (kw, in) order: [9, 1, 2 | 8] keeps 9 and 8; [7, 0.5 | 0.1, 0.2] keeps 7 and 0.5;
    # [6 | 5, 0.3, 4] keeps 6 and 5; as (in channel, kernel position):
    kept = {(c, x) for c in range(3) for x in range(4) if mask[0, c, 0, x]}
    assert kept == {(0, 0), (0, 1), (1, 1), (2, 1), (2, 2), (0, 3)}
    assert float(mask.float().mean()) == 0.5 == nm_density(weight.shape, 2, 4)
    conv1 = torch.randn(64, 3, 7, 7)  # ResNet50's conv1: 9,408 weights, density exactly 0.5
    assert float(nm_mask(conv1, 2, 4).float().mean()) == 0.5


def test_pattern_parsing_and_schedule_keep():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(" 1:8 ") == (1, 8)
    for bad in ("2-4", "4:4", "0:4", "a:b", "2:4:8"):
        with pytest.raises(ValueError, match="'N:M'"):
            parse_pattern(bad)
    assert [nm_keep(s, 2, 4) for s in (0.0, 0.2, 0.25, 0.3, 0.49, 0.5)] == [4, 4, 3, 3, 3, 2]
    with pytest.raises(ValueError, match="sparser than 0.5"):
        nm_keep(0.9, 2, 4)


def test_pattern_options_are_checked():
    for method, options, words in [
        ("acdc", {"pattern": "2:4"}, ["distribution 'uniform'", "'global'"]),
        ("gmp", {"pattern": "2:4", "distribution": "erk"}, ["distribution 'uniform'", "'erk'"]),
        ("rigl", {"pattern": "2:4", "distribution": "uniform"}, ["RigL and SET", "leave pattern unset"]),
        ("set", {"pattern": "2:4", "distribution": "uniform"}, ["RigL and SET"]),
        ("acdc", {"pattern": "2of4", "distribution": "uniform"}, ["'N:M'"]),
    ]:
        with pytest.raises(ValueError) as error:
            make_config(get_method(method), options)
        assert all(word in str(error.value) for word in words), (method, str(error.value))
    assert make_config(get_method("gmp"), {"pattern": "2:4"}).pattern == "2:4"  # GMP is uniform by default


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def run(method: str, sparsity: float, epochs: int, **options):
    model = tiny_model()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 4, 6, 6, generator=generator), torch.randint(0, 4, (4,), generator=generator))
               for _ in range(2)]
    sparsifier = acdc_bench.sparsify(model, method, sparsity=sparsity, epochs=epochs, steps_per_epoch=len(batches),
                                     batch_size=4, input_shape=(4, 6, 6), **options)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    per_epoch = []
    for _ in range(epochs):
        for inputs, targets in batches:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
        per_epoch.append((sparsifier.phase, [p.detach().clone() for p in (l.weight for l in sparsifier.layers)]))
    return model, sparsifier, per_epoch


ACDC_4 = {"schedule_epochs": 4, "warmup_epochs": 1, "phase_epochs": 1, "final_dense_epochs": 1,
          "final_sparse_epochs": 1, "distribution": "uniform", "pattern": "2:4"}


def test_acdc_with_pattern_2_4_ends_at_half_density_with_every_group_valid():
    model, sparsifier, per_epoch = run("acdc", 0.5, 4, **ACDC_4)
    assert [phase for phase, _ in per_epoch] == ["dense", "sparse", "dense", "sparse"]
    layers = prunable_layers(model)
    for phase, weights in per_epoch:
        if phase == "sparse":  # every compressed phase holds a 2:4 mask; the weights obey it
            for weight in weights:
                assert int(nm_group_nonzeros(weight, 4).max()) <= 2
    assert sparsifier.sparsity == pytest.approx(0.5)
    for layer in layers:
        assert int((layer.weight != 0).sum()) == layer.numel // 2
        assert nm_group_nonzeros(layer.weight, 4).tolist() == [2] * (layer.numel // 4)
    # FLOPs count the N/M density: the last step (compressed) costs 3 x half the dense forward FLOPs
    method = sparsifier.method
    assert method.step_training_flops(sparsifier.step - 1) == 3 * method.flops.dense_forward // 2
    assert method.planned_densities(3) == [0.5, 0.5, 0.5]  # planning agrees with the masks
    sparsifier.finalize()
    assert sparsifier.sparsity == pytest.approx(0.5)


def test_gmp_with_a_pattern_ramps_through_3_4_to_2_4():
    model, sparsifier, per_epoch = run("gmp", 0.5, 4, pattern="2:4", start_fraction=0.0, end_fraction=0.75,
                                       frequency=1)
    counts = [max(int(nm_group_nonzeros(w, 4).max()) for w in weights) for _, weights in per_epoch]
    assert counts[0] >= 3 and counts[-1] == 2 and counts == sorted(counts, reverse=True)
    assert sparsifier.sparsity == pytest.approx(0.5)


def test_an_input_dimension_not_a_multiple_of_m_still_keeps_n_of_every_m():
    """3 input channels (ResNet50's conv1): the groups run on across kernel positions, so the conv
    ends at density 0.5 as under the official pruner, and planning counts the same."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    sparsifier = acdc_bench.sparsify(model, "acdc", sparsity=0.5, epochs=4, steps_per_epoch=1, batch_size=1,
                                     input_shape=(3, 6, 6), **ACDC_4)
    sparsifier.method.on_epoch_start(1)
    first, last = sparsifier.layers
    assert nm_group_nonzeros(first.weight, 4).tolist() == [2] * (first.numel // 4)  # 216 weights: 54 groups
    assert sparsifier.method.distribution_densities(0.5) == pytest.approx([0.5, 0.5])
    assert sparsifier.method.masks.densities() == pytest.approx([0.5, 0.5])


def test_a_target_that_is_not_the_patterns_sparsity_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="sparsity 0.5, not 0.9"):  # before training: sparsify refuses it
        acdc_bench.sparsify(model, "acdc", sparsity=0.9, epochs=4, steps_per_epoch=1, batch_size=1,
                            input_shape=(4, 6, 6), **ACDC_4)
