"""Per-method recipes: suites resolve each method's official recipe; the recipe functions apply it."""

import json
import math

import pytest
import torch
import yaml
from torch import nn

from acdc_bench.cli import main
from acdc_bench.config import ConfigError, load_suite, run_config
from acdc_bench.config.run import Optimizer
from acdc_bench.config.recipe import build_optimizer, initialize, no_decay_parameters


def plan_json(capsys, suite: str, method: str, sparsity: float, *extra: str) -> dict:
    assert main(["plan", "--suite", suite, "--method", method, "--sparsity", str(sparsity), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------ done-when checks (ImageNet ResNet50)


def test_rigl_plan_runs_on_rigls_recipe(capsys):
    report = plan_json(capsys, "imagenet-resnet50", "rigl", 0.9)
    recipe = report["recipe"]
    assert report["budget"]["mode"] == "paper"
    assert recipe["label_smoothing"] == 0.1
    assert recipe["optimizer"]["nesterov"] is True
    assert recipe["optimizer"]["weight_decay"] == 1e-4
    assert recipe["optimizer"]["lr"] == pytest.approx(1.6 * 256 / 4096)  # 1.6 at 4096, linear rule
    assert recipe["optimizer"]["no_decay"] == ["bias", "bn"]
    assert recipe["lr_schedule"] == {"name": "step", "warmup_epochs": 0, "milestones": [30, 70, 90], "gamma": 0.1,
                                     "per_step": True}
    assert recipe["source"] == "methods.rigl.recipe"
    options = report["method_options"]
    # 100 steps at batch 4096 = 409,600 examples between mask updates = 1600 steps at batch 256.
    assert options["update_interval"] * recipe["batch_size"] == 100 * 4096
    assert options["end_fraction"] == pytest.approx(25_000 / 32_000)
    assert report["epochs"] == 100 and report["suite_epochs"] == 100
    lrs = {row["epoch"]: row["lr"] for row in report["rows"]}
    assert (lrs[29], lrs[30], lrs[70], lrs[90]) == pytest.approx((0.1, 0.01, 0.001, 0.0001))


def test_str_plans_use_their_own_lambda_per_target(capsys):
    lams = {}
    for target in (0.8, 0.9, 0.95, 0.98):
        report = plan_json(capsys, "imagenet-resnet50", "str", target)
        options = report["method_options"]
        lams[target] = options["lam"]
        assert options["unofficial"] is (target != 0.9)
        assert report["recipe"]["init"] == "kaiming_normal_fan_in"
        assert report["recipe"]["amp"] == "none" and report["recipe"]["label_smoothing"] == 0.1
    assert len(set(lams.values())) == 4
    assert lams[0.9] == 2.251757813e-05  # the shipped official config (90.23%)
    assert lams[0.8] < lams[0.9] < lams[0.95] < lams[0.98]  # sparser needs more decay


@pytest.mark.parametrize("target, end_step", [(0.8, 100_000), (0.9, 76_000), (0.95, 68_000), (0.98, 100_000)])
def test_gmp_plans_end_pruning_at_the_per_target_step(capsys, target, end_step):
    report = plan_json(capsys, "imagenet-resnet50", "gmp", target)
    fraction = end_step / 128_000  # Gale et al.'s checkpoint names: end step of 128k
    assert report["method_options"]["end_fraction"] == pytest.approx(fraction)
    assert report["recipe"]["label_smoothing"] == (0.0 if target == 0.95 else 0.1)
    # Rows hold the mask in force at each epoch's middle step: at the target from the epoch after
    # the end step on, clearly below it 10 epochs before (the cubic ramp flattens near its end).
    end_epoch = fraction * report["train_steps"] / report["steps_per_epoch"]
    sparsities = [row["target_sparsity"] for row in report["rows"]]
    assert all(s == pytest.approx(target, abs=1e-3) for s in sparsities[math.ceil(end_epoch) + 1:])
    assert sparsities[math.floor(end_epoch) - 10] < target - 0.004
    assert sparsities[math.floor(0.3125 * report["epochs"]) - 1] == 0.0  # dense until step 40k of 128k


# ------------------------------------------------------------------ budgets and run configs


def test_matched_budget_keeps_the_suites_shared_recipe():
    suite = load_suite("imagenet-resnet50")
    paper = run_config(suite, "rigl", 0.9, budget={"mode": "paper"})
    matched = run_config(suite, "rigl", 0.9, budget={"mode": "matched"})
    assert paper.label_smoothing == 0.1 and paper.optimizer.nesterov is True
    assert matched.optimizer == Optimizer.from_mapping(suite.optimizer) and matched.label_smoothing == 0.0
    assert matched.epochs == 100 and matched.length.recipe_epochs is None
    assert "ignored" in matched.recipe_source
    assert matched.method_config.update_interval == 1600  # the spacing follows the batch either way
    assert paper.run_id != matched.run_id


def test_run_config_echoes_the_resolved_recipe_and_method_options():
    config = run_config(load_suite("imagenet-resnet50"), "str", 0.95)
    assert config.recipe()["optimizer"] == {"lr": 0.256, "momentum": 0.875, "nesterov": False,
                                             "weight_decay": 2.251757813e-05, "no_decay": []}
    for key in ("label_smoothing", "batch_size", "amp", "init"):
        assert config.recipe()[key] == getattr(config, key)
    assert config.method_options["s_init"] == -3200.0 and config.method_options["lam"] == 3.236e-05
    assert "targets" not in config.method_options
    # The echoes do not enter the run id.
    assert config.run_id == run_config(load_suite("imagenet-resnet50"), "str", 0.95).run_id


def test_fashion_mnist_run_ids_are_the_recorded_ones():
    """The recipe machinery adds keys to every run config; paper-budget runs keep their recorded ids."""
    from behaviour import COMMANDS, GOLDEN
    from helpers import SHORT

    recorded = set(json.loads(GOLDEN.read_text())["runs"])
    for command in COMMANDS:
        if command[command.index("--budget") + 1] != "paper":
            continue
        sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
        # the record's runs compute under portable numerics (tests/behaviour.py)
        config = run_config(load_suite("fashion-mnist", SHORT + sets + ["numerics=portable"]), command[1],
                            float(command[3]))
        assert config.run_id in recorded
        assert config.recipe_source == "suite" and config.init is None


def test_str_target_without_entry_is_an_error_unless_the_suite_opts_into_a_fallback():
    suite = load_suite("imagenet-resnet50")
    with pytest.raises(ConfigError) as error:
        run_config(suite, "str", 0.85)
    message = str(error.value)
    assert "methods.str" in message and "0.85" in message and "0.8, 0.9, 0.95, 0.98" in message
    assert "fallback" in message
    fallback = run_config(load_suite("imagenet-resnet50", ["methods.str.fallback=true"]), "str", 0.85)
    assert fallback.method_options["lam"] == 2.251757813e-05 and fallback.method_options["unofficial"] is True


def test_every_listed_target_of_the_imagenet_suites_has_its_str_entry():
    for name in ("imagenet-resnet50", "imagenet-mobilenetv1"):
        suite = load_suite(name)
        for target in suite.reproduce["sparsities"]:
            assert run_config(suite, "str", target).method_options["lam"] > 0


def test_recipe_keys_of_a_method_are_checked(tmp_path):
    data = yaml.safe_load(open(load_suite("fashion-mnist").path).read())

    def load(recipe):
        changed = dict(data, methods=dict(data["methods"], gmp=dict(data["methods"]["gmp"], recipe=recipe)))
        path = tmp_path / "mine.yaml"
        path.write_text(yaml.safe_dump(changed))
        return load_suite(path)

    suite = load({"label_smoothing": 0.1, "targets": {0.95: {"label_smoothing": 0.0}}})
    assert "recipe" not in suite.methods["gmp"]  # the method's own options only
    assert run_config(suite, "gmp", 0.9).label_smoothing == 0.1
    assert run_config(suite, "gmp", 0.95).label_smoothing == 0.0
    for recipe, words in [
        ({"labelsmoothing": 0.1}, ["methods.gmp.recipe", "'labelsmoothing'", "label_smoothing"]),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "no_decay": ["norm"]}}, ["no_decay", "bias, bn, depthwise"]),
        ({"init": "xavier"}, ["init 'xavier'", "kaiming_normal_fan_in"]),
        ({"lr_schedule": {"name": "step", "per_step": "yes"}}, ["per_step"]),
        ({"targets": {0.9: {"seed": 1}}}, ["targets[0.9]", "label_smoothing"]),
    ]:
        with pytest.raises(ConfigError) as error:
            load(recipe)
        for word in words:
            assert word in str(error.value), (recipe, str(error.value))


def test_recipe_epochs_set_the_length_and_the_milestones_reference():
    suite = load_suite("imagenet-resnet50", ["methods.gmp.recipe.epochs=102", "methods.rigl.recipe.epochs=102",
                                             "methods.rigl.epochs_multiplier=5"])
    config = run_config(suite, "gmp", 0.9)
    assert config.epochs == 102 and config.length.recipe_epochs == 102 and config.suite_epochs == 100
    assert config.lr_at(29) == pytest.approx(0.1) and config.lr_at(30) == pytest.approx(0.01)
    five_x = run_config(suite, "rigl", 0.9)
    assert five_x.epochs == 510 and five_x.variant == "5x"
    assert five_x.lr_at(149) == pytest.approx(0.1) and five_x.lr_at(150) == pytest.approx(0.01)
    assert run_config(load_suite("imagenet-resnet50"), "gmp", 0.9).length.recipe_epochs is None


# ------------------------------------------------------------------ the recipe functions


@pytest.mark.parametrize("suite, method", [("fashion-mnist", "acdc"), ("imagenet-resnet50", "acdc"),
                                           ("imagenet-resnet50", "rigl"), ("cifar100-wrn28-10", "gmp")])
def test_a_step_has_its_epochs_rate_unless_the_rate_moves_within_epochs(suite, method):
    """Stepped per epoch, or a per-step ``step`` schedule without warm-up (its milestones fall on
    epoch boundaries, RigL's ResNet-50): every step of an epoch has the epoch's rate."""
    config = run_config(load_suite(suite), method, 0.9)
    assert not config.lr_schedule.per_step or (config.lr_schedule.name == "step" and not config.lr_schedule.warmup_epochs)
    for epoch in range(config.epochs):
        assert config.lr_at(epoch, step=epoch * 100 + 37, steps_per_epoch=100) == config.lr_at(epoch)


def test_lr_at_per_step_follows_the_tf_schedules():
    rigl = run_config(load_suite("imagenet-mobilenetv1"), "rigl", 0.9)  # 8-epoch warm-up, 40/75/95
    per_epoch = 5005
    assert rigl.lr_at(0, step=0, steps_per_epoch=per_epoch) == 0.0
    assert rigl.lr_at(4, step=4 * per_epoch + 2502, steps_per_epoch=per_epoch) == pytest.approx(0.1 * 4.5 / 8, rel=1e-4)
    assert rigl.lr_at(39, step=40 * per_epoch - 1, steps_per_epoch=per_epoch) == pytest.approx(0.1)
    assert rigl.lr_at(40, step=40 * per_epoch, steps_per_epoch=per_epoch) == pytest.approx(0.01)
    assert rigl.lr_at(96, step=96 * per_epoch, steps_per_epoch=per_epoch) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        rigl.lr_at(1, step=10)
    acdc = run_config(load_suite("imagenet-resnet50"), "acdc", 0.9)  # not per step: the epoch's rate
    assert acdc.lr_at(7, step=7 * per_epoch + 3, steps_per_epoch=per_epoch) == acdc.lr_at(7)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, bias=True)
        self.depthwise = nn.Conv2d(4, 4, 3, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def test_build_optimizer_without_decay_for_bias_and_bn():
    model = _Tiny()
    plain = build_optimizer(model, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4})
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 1e-4
    optimizer = build_optimizer(model, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                                        "no_decay": ["bias", "bn"]})
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay == {id(model.conv.weight): 1e-4, id(model.depthwise.weight): 1e-4, id(model.fc.weight): 1e-4,
                     id(model.conv.bias): 0.0, id(model.fc.bias): 0.0, id(model.bn.weight): 0.0, id(model.bn.bias): 0.0}
    assert all(g["nesterov"] for g in optimizer.param_groups)
    # A method's groups keep their own settings; no_decay parameters in them get none.
    groups = [{"params": [model.conv.weight, model.conv.bias], "lr_scale": 2.0},
              {"params": [p for n, p in model.named_parameters() if not n.startswith("conv.")], "weight_decay": 5e-4}]
    split = build_optimizer(model, {"lr": 0.1, "weight_decay": 1e-4, "no_decay": ["bias", "bn", "depthwise"]}, groups)
    by_param = {id(p): g for g in split.param_groups for p in g["params"]}
    assert by_param[id(model.conv.bias)]["lr_scale"] == 2.0 and by_param[id(model.conv.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.conv.weight)]["weight_decay"] == 1e-4
    assert by_param[id(model.fc.weight)]["weight_decay"] == 5e-4
    assert by_param[id(model.depthwise.weight)]["weight_decay"] == 0.0
    assert sorted(map(id, model.parameters())) == sorted(by_param)
    with pytest.raises(ValueError, match="allowed: bias, bn, depthwise"):
        no_decay_parameters(model, ["norm"])


def test_initialize_kaiming_normal_fan_in():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 256, 3, bias=True), nn.BatchNorm2d(256), nn.Flatten(), nn.Linear(512, 300))
    bn_before = model[1].weight.clone()
    assert initialize(model, None) is model and initialize(model, "default") is model
    initialize(model, "kaiming_normal_fan_in")
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    assert model[3].weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    assert model[0].bias.abs().sum() == 0 and model[3].bias.abs().sum() == 0
    assert torch.equal(model[1].weight, bn_before)
    with pytest.raises(ValueError, match="allowed: default, kaiming_normal_fan_in"):
        initialize(model, "xavier")


def test_gmp_and_rigl_options_for_the_official_schedules():
    from acdc_bench.methods import get_method, make_config

    gmp = make_config(get_method("gmp"), {"targets": {0.9: {"end_fraction": 0.59375}}})
    assert gmp.resolve(0.9) == (0.3125, 0.59375, None) and gmp.resolve(0.8) == (0.3125, 0.78, None)
    with pytest.raises(ValueError, match="start_fraction, end_fraction, frequency, frequency_fraction, unofficial"):
        make_config(get_method("gmp"), {"targets": {0.9: {"end": 0.5}}})
    with pytest.raises(ValueError, match=r"targets\[0.9\]"):
        make_config(get_method("gmp"), {"targets": {0.9: {"end_fraction": 0.2}}})
    rigl = make_config(get_method("rigl"), {"update_interval_examples": 409_600})
    assert rigl.for_batch_size(4096).update_interval == 100 and rigl.for_batch_size(256).update_interval == 1600
    assert make_config(get_method("rigl"), {"update_interval": 7}).for_batch_size(256).update_interval == 7
    with pytest.raises(ValueError, match="update_interval_examples"):
        make_config(get_method("rigl"), {"update_interval_examples": 0})
