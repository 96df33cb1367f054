"""FLOP accounting against RigL's published figures, and ``plan`` against the official schedules."""

import json
import math

import pytest
import torch

from acdc_bench.methods.acdc import PRESETS, acdc_phases
from acdc_bench.cli import main
from acdc_bench.config import load_suite, run_config
from acdc_bench.core.flops import TrainingFlopMeter, measure_layer_flops, rigl_training_flops_per_example
from acdc_bench.models import build_model
from acdc_bench.budget.plan import plan
from acdc_bench.core.sparsity import prunable_layers


def flops_json(capsys, *args):
    assert main(["flops", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--distribution", "erk", "--sparsity", "0.8"], 0.414),
        (["--distribution", "uniform", "--keep-dense", "conv1", "--sparsity", "0.8"], 0.223),
        (["--distribution", "erk", "--sparsity", "0.9"], 0.242),
        (["--distribution", "uniform", "--keep-dense", "conv1", "--sparsity", "0.9"], 0.126),
    ],
)
def test_resnet50_inference_multipliers_match_rigl(capsys, args, expected):
    report = flops_json(capsys, "--model", "resnet50", *args)
    assert report["dense_forward_flops"] == pytest.approx(8.18e9, rel=0.001)
    assert report["inference_flops_multiplier"] == pytest.approx(expected, abs=0.005)
    assert {"name", "shape", "density", "dense_forward_flops"} <= set(report["layers"][0])


def test_flops_of_a_checkpoint_reads_real_nonzeros(tmp_path, capsys):
    model = build_model("lenet-300-100")
    with torch.no_grad():
        model[1].weight[:, :392] = 0  # half of the first layer
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    report = flops_json(capsys, "--model", "lenet-300-100", "--checkpoint", str(path))
    first = report["layers"][0]
    assert first["density"] == pytest.approx(0.5)
    assert report["sparse_forward_flops"] == report["dense_forward_flops"] - first["dense_forward_flops"] / 2


def test_sparse_forward_flops_are_exact_integers():
    model = build_model("resnet50")
    layers = prunable_layers(model)
    flops = measure_layer_flops(model, layers, (3, 224, 224))
    assert flops.sparse_forward([layer.numel for layer in layers]) == flops.dense_forward
    assert all(f == w * layer.numel for f, w, layer in zip(flops.dense, flops.per_weight, layers))


def test_meter_state_round_trip_and_rigl_formula():
    meter = TrainingFlopMeter()
    meter.add(10, 4)
    meter.add(torch.tensor(7), 2)
    assert meter.total == 54
    resumed = TrainingFlopMeter()
    resumed.load_state_dict(meter.state_dict())
    resumed.add(1, 1)
    assert (resumed.total, resumed.steps, resumed.examples) == (55, 3, 7)
    assert rigl_training_flops_per_example(1.0, 1.0, 100) == pytest.approx(3 * 100 / 101 + 3 / 101)


def phase_ranges(phases):
    ranges, start = [], 0
    for epoch in range(1, len(phases) + 1):
        if epoch == len(phases) or phases[epoch] != phases[start]:
            ranges.append((phases[start], start, epoch - 1))
            start = epoch
    return ranges


def test_official_imagenet_100_epoch_schedule():
    phases = acdc_phases(100, **PRESETS["imagenet-100"])
    ranges = phase_ranges(phases)
    assert ranges[0] == ("dense", 0, 9)
    assert ranges[1] == ("sparse", 10, 14)
    assert ranges[2] == ("dense", 15, 19)
    assert ranges[-3] == ("sparse", 70, 74)
    assert ranges[-2] == ("dense", 75, 84)
    assert ranges[-1] == ("sparse", 85, 99)
    assert phases.count("sparse") == 50


@pytest.mark.parametrize("preset, epochs, tail", [
    ("imagenet-150", 150, [("sparse", 120, 124), ("dense", 125, 134), ("sparse", 135, 149)]),
    ("imagenet-200", 200, [("sparse", 170, 174), ("dense", 175, 184), ("sparse", 185, 199)]),
    ("cifar100-200", 200, [("sparse", 130, 149), ("dense", 150, 169), ("sparse", 170, 199)]),
])
def test_official_extended_and_cifar_schedules(preset, epochs, tail):
    phases = acdc_phases(epochs, **PRESETS[preset])
    assert phase_ranges(phases)[-3:] == tail
    if preset == "cifar100-200":
        assert phase_ranges(phases)[:2] == [("dense", 0, 9), ("sparse", 10, 29)]
        assert phases.count("sparse") == 110


def test_schedule_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="odd number"):
        acdc_phases(100, warmup_epochs=10, phase_epochs=5, final_dense_epochs=10, final_sparse_epochs=20)


def test_lr_schedules_of_the_paper_suites():
    imagenet = run_config(load_suite("imagenet-resnet50"), "acdc", 0.9)
    assert [imagenet.lr_at(e) for e in range(5)] == pytest.approx([0.256 * (e + 1) / 5 for e in range(5)])
    for epoch in (5, 40, 99):
        expected = 0.256 * (1 + math.cos(math.pi * (epoch - 5) / 95)) / 2
        assert imagenet.lr_at(epoch) == pytest.approx(expected)
    cifar = run_config(load_suite("cifar100-wrn28-10"), "acdc", 0.9)
    expected = {0: 0.08, 75: 0.08, 76: 0.008, 115: 0.008, 116: 0.0008, 155: 0.0008, 156: 0.00008, 199: 0.00008}
    for epoch, lr in expected.items():
        assert cifar.lr_at(epoch) == pytest.approx(lr)


@pytest.mark.parametrize("suite, sparse_epochs", [
    ("imagenet-resnet50", 50), ("imagenet-mobilenetv1", 50), ("cifar100-wrn28-10", 110),
])
def test_plan_reproduces_official_phases_and_lr(suite, sparse_epochs):
    config = run_config(load_suite(suite), "acdc", 0.9)
    report = plan(config)
    rows = report["rows"]
    assert len(rows) == config.epochs
    assert sum(row["phase"] == "sparse" for row in rows) == sparse_epochs
    for row in rows:
        assert row["lr"] == pytest.approx(config.lr_at(row["epoch"]))
        assert row["target_sparsity"] == pytest.approx(0.9 if row["phase"] == "sparse" else 0.0, abs=1e-6)
    dense_share = 1 - sparse_epochs / config.epochs
    assert dense_share < report["estimated_training_flops_multiplier"] < dense_share + 0.25


def test_plan_command_prints_the_estimate(capsys):
    assert main(["plan", "--suite", "fashion-mnist", "--method", "acdc", "--sparsity", "0.9", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["phase"] for row in report["rows"]][:4] == ["dense", "dense", "sparse", "dense"]
    assert 0.5 < report["estimated_training_flops_multiplier"] < 0.6


def test_the_planner_copies_a_held_model_that_equals_a_fresh_one_weights_and_rng_alike():
    from acdc_bench.budget.plan import fresh_model

    for seed in (0, 1, 0):  # a held model comes back after another seed's, unchanged by its last user
        torch.manual_seed(seed)
        built = build_model("lenet-300-100", None)
        after_build = torch.get_rng_state()
        torch.manual_seed(seed + 100)  # whatever ran before
        copied = fresh_model("lenet-300-100", None, seed)
        assert torch.equal(torch.get_rng_state(), after_build)
        for (name, mine), theirs in zip(copied.state_dict().items(), built.state_dict().values()):
            assert torch.equal(mine, theirs), name
        with torch.no_grad():
            next(copied.parameters()).zero_()  # a planner's sparsify changes its own copy only
