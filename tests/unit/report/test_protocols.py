"""Apples to apples: a run is compared with a published number only on the same protocol, and the
official configurations each have a cell on their own recipe."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import yaml

from acdc_bench.budget.matching import spec_config
from acdc_bench.config.cells import suite_cells
from acdc_bench.config import ConfigError, load_suite, run_config
from acdc_bench.report.protocol import run_protocol
from acdc_bench.methods import get_method, make_config
from acdc_bench.methods.acdc import PRESETS, acdc_phases
from acdc_bench.report.compare import compare_table, format_compare, protocol_differences
from acdc_bench.report.results import load_reference, load_runs
from acdc_bench.run.launch import plan_runs
from run_folders import _write_seeds

WHERE = {"dataset": "imagenet", "model": "resnet50"}


def _runs(schedule: list[str]) -> list[tuple[str, int]]:
    return [(phase, len(list(group))) for phase, group in itertools.groupby(schedule)]


# --------------------------------------------------------------------------- protocols


def test_a_run_states_its_protocol_in_the_terms_of_the_published_table():
    suite = load_suite("imagenet-resnet50")
    assert run_protocol(run_config(suite, "rigl", 0.9)) == {
        "recipe": "rigl", "denominator": "all", "label_smoothing": 0.1, "length": 1.0, "batch_size": 256,
        "extrapolated": False}
    assert run_protocol(run_config(suite, "gmp", 0.95))["label_smoothing"] == 0.0  # Gale's grid point
    # STR at a target whose lambda its authors published no config for: never the published run's protocol
    assert run_protocol(run_config(suite, "str", 0.95))["extrapolated"] is True
    assert run_protocol(run_config(suite, "str", 0.9))["extrapolated"] is False
    assert run_protocol(run_config(suite, "acdc", 0.9))["recipe"] == "acdc"
    # a matched budget runs the suite's shared recipe: AC/DC's, whatever the method
    matched = run_protocol(run_config(suite, "rigl", 0.9, budget={"mode": "matched"}))
    assert (matched["recipe"], matched["label_smoothing"]) == ("acdc", 0.0)
    uniform = run_protocol(run_config(load_suite("imagenet-resnet50", ["methods.rigl.keep_dense=[conv1]",
                                                                       "methods.rigl.distribution=uniform"]),
                                      "rigl", 0.9))
    assert uniform["denominator"] == "pruned layers"
    assert run_protocol(run_config(suite, "dense", 0.0))["denominator"] == ""


def test_protocol_differences_name_each_field_that_differs_or_is_not_published():
    ours = {"recipe": "acdc", "denominator": "all", "label_smoothing": 0.0, "length": 1.0, "batch_size": 256}
    row = {"recipe": "rigl", "denominator": "all", "label_smoothing": 0.1, "length": 1.0, "batch_size": 4096.0}
    assert protocol_differences(ours, row) == ["recipe acdc here, rigl there", "label smoothing 0 here, 0.1 there"]
    assert protocol_differences({**ours, "recipe": "rigl", "label_smoothing": 0.1}, row) == []  # batch: not compared
    assert protocol_differences(ours, {"recipe": "", "denominator": "", "label_smoothing": math.nan,
                                       "length": math.nan}) == [
        "recipe not published", "sparsity over all here, not said there", "label smoothing not published",
        "length not published"]
    assert protocol_differences(None, row) == ["our run's protocol is unknown"]
    assert protocol_differences({**ours, "recipe": "rigl", "label_smoothing": 0.1, "extrapolated": True}, row) == [
        "method values extrapolated here (a suite entry marked unofficial), the published run's there"]


def test_a_row_of_another_protocol_is_shown_without_a_difference_or_a_verdict(tmp_path):
    """AC/DC's recipe has no label smoothing: RigL's dense row (0.1) is shown beside our dense run, not
    compared; the same dense run on RigL's recipe is compared with it."""
    _write_seeds(tmp_path / "acdc-recipe", "dense", {0: 76.0, 1: 76.4, 2: 76.2}, 0.0, **WHERE)
    reference = load_reference()
    row = compare_table(load_runs(tmp_path / "acdc-recipe"), reference).iloc[0]
    assert row["published_source"] == "rigl-readme" and row["published_top1"] == pytest.approx(76.8)
    assert row["published_protocol"] == ("other protocol: recipe acdc here, rigl there; "
                                         "label smoothing 0 here, 0.1 there")
    assert math.isnan(row["delta_vs_published"]) and row["delta_basis"] == ""
    assert row["published_inside_ci"] is pd_na()
    text = format_compare(compare_table(load_runs(tmp_path / "acdc-recipe"), reference))
    assert "other protocol" in text and "shown, not compared" in text
    # the same cell on RigL's recipe
    for run_dir in (tmp_path / "acdc-recipe").iterdir():
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["recipe"] = {"family": "rigl", "label_smoothing": 0.1, "batch_size": 256}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    row = compare_table(load_runs(tmp_path / "acdc-recipe"), reference).iloc[0]
    assert row["published_protocol"] == "" and row["delta_vs_published"] == pytest.approx(76.2 - 76.8)
    assert row["protocol_recipe"] == "rigl"


def test_among_rows_of_one_point_the_same_protocol_is_chosen(tmp_path):
    """RigL at 80% ERK 1x has a row with label smoothing (rigl-readme) and one without: a run without
    smoothing is compared with the second."""
    _write_seeds(tmp_path, "rigl", {0: 74.0, 1: 74.5}, 0.8, **WHERE)
    for run_dir in tmp_path.iterdir():
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["recipe"]["label_smoothing"] = 0.0
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        result = json.loads((run_dir / "result.json").read_text())
        result.update(variant="1x", distribution="erk")
        (run_dir / "result.json").write_text(json.dumps(result))
    row = compare_table(load_runs(tmp_path), load_reference()).iloc[0]
    assert (row["published_source"], row["published_top1"]) == ("rigl-readme-nolabelsmooth", 75.02)
    assert row["published_protocol"] == ""


def test_runs_without_a_recorded_recipe_family_are_never_compared(tmp_path):
    _write_seeds(tmp_path, "acdc", {0: 75.0}, 0.9, **WHERE)
    (run_dir,) = tmp_path.iterdir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    del config["recipe"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    row = compare_table(load_runs(tmp_path), load_reference()).iloc[0]
    assert row["published_protocol"].startswith("other protocol: recipe not recorded here, acdc there")


def test_every_compared_published_row_states_its_protocol():
    reference = load_reference()
    compared = reference[reference["status"] != "aggregator"]
    for source in ("acdc-readme", "rigl-readme", "rigl-readme-nolabelsmooth", "gale-sos", "str-readme"):
        rows = compared[compared["source_id"] == source]
        assert (rows["recipe"] != "").all(), source
        assert rows["label_smoothing"].notna().all(), source
    # a difference to a published number exists only with a recipe, smoothing and length said
    assert set(reference["denominator"]) <= {"all", "pruned layers", ""}


def test_a_bad_protocol_column_is_an_error_naming_the_line(tmp_path):
    text = load_reference_text().replace("acdc,all,0.0,1,256", "acdc,every,0.0,1,256", 1)
    path = tmp_path / "published.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"published.csv:\d+: denominator 'every'"):
        load_reference(path)
    path.write_text(load_reference_text().replace("acdc,all,0.0,1,256", "acdc,all,none,1,256", 1))
    with pytest.raises(ValueError, match=r"label_smoothing 'none' is not a number"):
        load_reference(path)


# --------------------------------------------------------------------------- cells


def test_a_cell_on_another_methods_recipe_runs_that_recipe():
    suite = load_suite("imagenet-resnet50")
    specs = {(s.cell, s.sparsity): s for wave in plan_runs(suite) for s in wave}
    dense_rigl = spec_config(suite, specs[("dense-rigl", 0.0)], None)
    assert dense_rigl.label_smoothing == 0.1 and dense_rigl.optimizer.nesterov is True
    assert dense_rigl.init == "tf-resnet" and dense_rigl.recipe_family == "rigl"
    assert dense_rigl.run_id != spec_config(suite, specs[("dense", 0.0)], None).run_id
    set_run = spec_config(suite, specs[("set", 0.9)], None)
    assert set_run.recipe_family == "rigl" and set_run.method_config.update_interval == 1600


def test_recipe_of_must_name_a_method_with_a_recipe():
    cell = json.dumps([{"cell": "d", "method": "dense", "recipe_of": "acdc"}])
    suite = load_suite("imagenet-resnet50", [f"reproduce.variants={cell}"])
    with pytest.raises(ConfigError, match=r"recipe_of 'acdc' names no method with a recipe; allowed: gmp, rigl, str"):
        suite_cells(suite)


def test_gmp_extended_points_follow_gales_checkpoints():
    """extended_threshold_0.91_12500_36000_2000_0.1 of 48k steps: conv1 dense, fc at 80%, the other layers
    at the sparsity bringing the pruned layers to 90%; its window, spacing and smoothing."""
    suite = load_suite("imagenet-resnet50")
    specs = {(s.cell, s.sparsity): s for wave in plan_runs(suite) for s in wave}
    config = spec_config(suite, specs[("gmp-1.5x", 0.95)], None)
    options = config.method_options
    assert (options["start_fraction"], options["end_fraction"]) == (pytest.approx(7500 / 48000), 0.75)
    assert options["frequency_fraction"] == pytest.approx(1000 / 48000, rel=1e-6)
    assert options["layer_sparsity"] == {"fc": 0.8} and options["keep_dense"] == ["conv1"]
    assert config.label_smoothing == 0.0 and config.epochs == 150 and config.init == "tf-resnet"
    assert spec_config(suite, specs[("gmp-1.5x", 0.9)], None).label_smoothing == 0.1


def test_gmp_layer_sparsity_holds_named_layers_and_solves_the_rest():
    from acdc_bench.models import build_model
    from helpers import attach, tiny_mlp

    # tiny_mlp: layer 0 (600 weights) dense, layer 2 (300) held at 50%: no other layer can carry the
    # rest of an 80% target
    with pytest.raises(ValueError, match="cannot meet the target"):
        attach("gmp", {"keep_dense": ["0"], "layer_sparsity": {"2": 0.5}}, tiny_mlp(), sparsity=0.8)
    method = attach("gmp", {"layer_sparsity": {"2": 0.5}}, tiny_mlp(), sparsity=0.8)
    # 900 pruned weights at 80% = 720 zeros; layer 2 holds 150, so layer 0 takes 570 of its 600
    assert method.distribution_densities(0.8) == pytest.approx([1 - 570 / 600, 0.5])
    assert method.distribution_densities(0.4) == pytest.approx([1 - 285 / 600, 0.75])  # each layer's own cubic ramp
    assert method.promised_sparsity() == pytest.approx(0.8)
    method.prune_by_magnitude(0.8)
    assert method.masks.nonzeros == [30, 150]
    with pytest.raises(ValueError, match="layer_sparsity applies to distribution 'uniform'"):
        make_config(get_method("gmp"), {"distribution": "global", "layer_sparsity": {"fc": 0.8}})
    # on ResNet50: Gale's 90% point (fc at 80%) puts the other pruned layers at 90.87%
    gmp = attach("gmp", {"keep_dense": ["conv1"], "layer_sparsity": {"fc": 0.8}}, build_model("resnet50"),
                 sparsity=0.9, input_shape=(3, 224, 224))
    layers = gmp.layers
    final = [1 - d for d in gmp.distribution_densities(0.9)]
    named = dict(zip((layer.name for layer in layers), final))
    assert (named["conv1"], named["fc"]) == (0.0, 0.8)
    pruned = [(s, layer.numel) for s, layer in zip(final, layers) if layer.name != "conv1"]
    assert sum(s * n for s, n in pruned) / sum(n for _, n in pruned) == pytest.approx(0.9)
    assert named["layer1.0.conv1"] == pytest.approx((0.9 * 25_493_504 - 0.8 * 2_048_000) / 23_445_504)


def test_gmp_frequency_fraction_spaces_the_updates_as_a_fraction_of_the_run():
    from helpers import attach, tiny_mlp

    method = attach("gmp", {"start_fraction": 0.25, "end_fraction": 0.75, "frequency_fraction": 0.05},
                    tiny_mlp(), sparsity=0.9, total_steps=400)
    assert method.frequency == 20 and method.schedule.change_steps()[:3] == [100, 120, 140]
    with pytest.raises(ValueError, match="frequency_fraction"):
        make_config(get_method("gmp"), {"frequency_fraction": 0.0})


def test_acdc_dense13_is_the_official_cifar_schedule():
    """iht_cifar100_wideresnet_steplr_dense13: pruner at 10, 43, 76, 109, 142, 175; recycler at 30, 63, 96,
    129, 162; 225 epochs, ending sparse 175-224."""
    phases = acdc_phases(225, **PRESETS["cifar100-dense13"])
    assert _runs(phases) == [("dense", 10)] + [("sparse", 20), ("dense", 13)] * 5 + [("sparse", 50)]
    starts = [e for e in range(1, 225) if phases[e] != phases[e - 1]]
    assert [e for e in starts if phases[e] == "sparse"] == [10, 43, 76, 109, 142, 175]
    assert [e for e in starts if phases[e] == "dense"] == [30, 63, 96, 129, 162]
    # equal phases unchanged: the 200-epoch CIFAR schedule and the 150-epoch ImageNet one
    assert _runs(acdc_phases(200, **PRESETS["cifar100-200"])) == (
        [("dense", 10)] + [("sparse", 20), ("dense", 20)] * 4 + [("sparse", 30)])
    assert _runs(acdc_phases(150, **PRESETS["imagenet-150"]))[-3:] == [("sparse", 5), ("dense", 10), ("sparse", 15)]
    with pytest.raises(ValueError, match="dense_phase_epochs must be >= 1"):
        acdc_phases(225, **{**PRESETS["cifar100-dense13"], "dense_phase_epochs": 0})


def test_acdc_finetune_dense_trains_the_pairs_dense_model_to_the_end():
    from helpers import attach, tiny_mlp

    plain = attach("acdc", {}, tiny_mlp(), sparsity=0.9, steps_per_epoch=1, total_steps=100)
    tuned = attach("acdc", {"finetune_dense": True}, tiny_mlp(), sparsity=0.9, steps_per_epoch=1, total_steps=100)
    assert tuned.phases[:85] == plain.phases[:85] and plain.phases[85:] == ["sparse"] * 15
    assert tuned.phases[84:] == ["dense"] * 16
    assert tuned.promised_sparsity() == 0.0 and plain.promised_sparsity() == pytest.approx(0.9)
    assert tuned.dense_pair_epoch() == 99


def test_tf_resnet_init_is_the_tensorflow_resnets():
    from acdc_bench.models import build_model
    from acdc_bench.config.recipe import TRUNCATED_NORMAL_STD, initialize

    torch.manual_seed(0)
    model = initialize(build_model("resnet50", num_classes=1000), "tf-resnet")
    conv = model.layer3[0].conv2.weight.detach()  # 256 x 256 x 3 x 3: fan_in 2304, 589,824 draws
    std = (1 / 2304) ** 0.5
    # sample std within 5 standard errors of sqrt(1 / fan_in) (the cut normal's kurtosis < 3)
    assert float(conv.std()) == pytest.approx(std, rel=5 * (2 / conv.numel()) ** 0.5)
    assert float(conv.abs().max()) <= 2 * std / TRUNCATED_NORMAL_STD * (1 + 1e-6)
    assert float(model.fc.weight.detach().std()) == pytest.approx(0.01, rel=5 * (2 / model.fc.weight.numel()) ** 0.5)
    assert int(torch.count_nonzero(model.fc.bias)) == 0
    assert all(int(torch.count_nonzero(block.bn3.weight)) == 0 for layer in (model.layer1, model.layer4)
               for block in layer)
    assert bool((model.bn1.weight == 1).all()) and bool((model.layer1[0].bn2.weight == 1).all())
    with pytest.raises(ValueError, match="no torchvision ResNet blocks"):
        initialize(build_model("mobilenetv1", num_classes=10), "tf-resnet")


def test_tf_mobilenet_init_is_rigls_tensorflow_mobilenet():
    from acdc_bench.models import build_model
    from acdc_bench.config.recipe import TRUNCATED_NORMAL_STD, initialize

    torch.manual_seed(0)
    model = initialize(build_model("mobilenetv1", num_classes=1000), "tf-mobilenet")
    convs = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    pointwise = next(conv.weight.detach() for conv in convs if conv.kernel_size == (1, 1) and conv.in_channels == 512)
    depthwise = next(conv for conv in convs if conv.groups == conv.in_channels == 512)
    # pointwise 512 -> 512: variance scaling, std sqrt(1 / 512) cut at 2 s (262,144 draws, 5 standard errors)
    std = (1 / 512) ** 0.5
    assert float(pointwise.std()) == pytest.approx(std, rel=5 * (2 / pointwise.numel()) ** 0.5)
    assert float(pointwise.abs().max()) <= 2 * std / TRUNCATED_NORMAL_STD * (1 + 1e-6)
    # depthwise (512, 1, 3, 3): Glorot uniform on fans 9 and 9 x 512, bound sqrt(6 / (9 + 4608))
    bound = (6 / (9 + 9 * 512)) ** 0.5
    weight = depthwise.weight.detach()
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.99 * bound
    # a uniform's sample std has relative standard error sqrt((kurtosis - 1) / 4n) = sqrt(0.2 / n)
    assert float(weight.std()) == pytest.approx(bound / 3 ** 0.5, rel=5 * (0.2 / weight.numel()) ** 0.5)
    fc = next(module for module in model.modules() if isinstance(module, torch.nn.Linear))
    assert float(fc.weight.detach().std()) == pytest.approx((1 / fc.in_features) ** 0.5, rel=5 * (2 / fc.weight.numel()) ** 0.5)
    assert int(torch.count_nonzero(fc.bias)) == 0
    with pytest.raises(ValueError, match="TensorFlow MobileNetV1"):
        initialize(build_model("resnet50", num_classes=10), "tf-mobilenet")


# --------------------------------------------------------------------------- helpers


def load_reference_text() -> str:
    from acdc_bench.report.results import DEFAULT_REFERENCE_PATH

    return DEFAULT_REFERENCE_PATH.read_text()


def pd_na():
    import pandas as pd

    return pd.NA
