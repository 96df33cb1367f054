"""No run misses what it promises in silence; plan and run describe one run; --set is YAML 1.2."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import acdc_bench
from acdc_bench import numerics
from acdc_bench.budget.plan import plan
from acdc_bench.cli import main
from acdc_bench.config import ConfigError, apply_overrides, load_suite, run_config
from acdc_bench.report.results import load_runs
from helpers import SHORT, needs_fashion
from plan_check import assert_plan_matches_run

# --------------------------------------------------------------------------- --set values are YAML 1.2


@pytest.mark.parametrize("text, expected", [
    ("methods.acdc.pattern=2:4", "2:4"),  # YAML 1.1: the base-60 integer 124
    ("optimizer.lr=1e-4", 1e-4),          # YAML 1.1: the string '1e-4'
    ("optimizer.nesterov=true", True),
    ("optimizer.momentum=0.9", 0.9),
    ("methods.gmp.frequency=null", None),
    ("methods.gmp.frequency=on", "on"),   # YAML 1.1: True
])
def test_set_values_parse_as_yaml_1_2(text, expected):
    path, _ = text.split("=", 1)
    node = apply_overrides({"optimizer": {}, "methods": {}}, [text], "test")
    for part in path.split("."):
        node = node[part]
    assert node == expected and type(node) is type(expected)


def test_a_set_value_that_is_not_yaml_names_the_override():
    with pytest.raises(ConfigError, match=r"--set optimizer.lr=\[1: not valid YAML"):
        apply_overrides({"optimizer": {}}, ["optimizer.lr=[1"], "test")


def test_a_2_4_pattern_from_the_command_line_reaches_the_method():
    suite = load_suite("fashion-mnist-10", ["methods.acdc.pattern=2:4", "methods.acdc.distribution=uniform"])
    assert run_config(suite, "acdc", 0.5).method_config.pattern == "2:4"


# --------------------------------------------------------------------------- overrides win over recipes


def test_a_set_of_a_recipe_key_wins_over_the_methods_recipe():
    """GMP's ImageNet recipe sets batch_size 256; --set batch_size=32 is the user's, never dropped."""
    plain = run_config(load_suite("imagenet-resnet50"), "gmp", 0.9)
    assert plain.batch_size == 256
    config = run_config(load_suite("imagenet-resnet50", ["batch_size=32", "optimizer.lr=0.05"]), "gmp", 0.9)
    assert config.batch_size == 32 and config.optimizer.lr == 0.05
    assert config.optimizer.nesterov is True  # the rest of the recipe's optimizer stays
    assert "--set batch_size=32" in config.recipe_source
    assert config.run_id != plain.run_id


def test_set_epochs_and_epochs_give_plan_and_run_one_length():
    suite = load_suite("imagenet-resnet50", ["epochs=2"])
    by_set = run_config(suite, "gmp", 0.9)
    by_flag = run_config(load_suite("imagenet-resnet50"), "gmp", 0.9, epochs=2)
    assert by_set.epochs == by_flag.epochs == 2


# --------------------------------------------------------------------------- schedules that cannot reach the target


def test_a_gmp_window_outside_the_run_is_refused_before_training():
    model = nn.Sequential(nn.Linear(20, 10))
    with pytest.raises(ValueError, match=r"GMP's pruning window, steps 1\.\.2 .* outside this run's 2 step"):
        acdc_bench.sparsify(model, "gmp", sparsity=0.9, steps_per_epoch=1, epochs=2, input_shape=(20,))
    acdc_bench.sparsify(model, "gmp", sparsity=0.9, steps_per_epoch=1, epochs=2, input_shape=(20,),
                        start_fraction=0.0)  # pruning from step 0 fits


def test_plan_refuses_what_run_refuses(capsys):
    args = ["--suite", "imagenet-resnet50", "--method", "gmp", "--sparsity", "0.9", "--epochs", "2",
            "--set", "train_subset=64"]
    assert main(["plan", *args]) == 2
    assert "pruning window" in capsys.readouterr().err
    assert main(["plan", *args, "--set", "batch_size=32"]) == 0  # 4 steps: the window fits
    out = capsys.readouterr().out
    assert "epochs 2 (2 steps each)" in out and "(2 epochs)" in out


# --------------------------------------------------------------------------- a run that misses is not a result


def _str_config(tmp_path, tolerance=None):
    overrides = ["train_subset=512", "budget.mode=paper", "methods.str.targets={}", "methods.str.s_init=-5",
                 "methods.str.lam=5e-4"]
    if tolerance is not None:
        overrides.append(f"budget.calibration.sparsity_tolerance={tolerance}")
    return run_config(load_suite("fashion-mnist", overrides), "str", 0.9, epochs=1)


@needs_fashion
def test_a_run_that_misses_its_target_is_an_error_and_never_a_result(tmp_path, capsys, one_thread):
    from acdc_bench.run.loop import TargetMissed, train

    config = _str_config(tmp_path)
    with pytest.raises(TargetMissed, match=r"sparsity 0\.\d+ at the end of training, but str promises 0\.9000 .*"
                                           r"STR's sparsity follows lam and s_init"):
        train(config, tmp_path, progress=False, log=lambda *a: None)
    run_dir = tmp_path / config.run_id
    assert not (run_dir / "result.json").exists() and "STR's sparsity" in (run_dir / "failed.txt").read_text()
    runs = load_runs(tmp_path)
    assert runs["status"].tolist() == ["failed"] and "promises 0.9000" in runs["error"].iloc[0]
    # compare lists it as skipped and, with nothing else to compare, writes nothing
    assert main(["compare", "--runs", str(tmp_path), "--suite", "fashion-mnist", "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
    assert f"skipped {run_dir}: failed: " in capsys.readouterr().err
    # the same command again resumes from the last checkpoint and fails the same way
    with pytest.raises(TargetMissed):
        train(config, tmp_path, progress=False, log=lambda *a: None)


@needs_fashion
def test_a_finished_run_records_its_sparsity_check(tmp_path, one_thread):
    from acdc_bench.run.loop import train

    suite = load_suite("fashion-mnist", ["train_subset=512", "budget.mode=paper", *SHORT])
    config = run_config(suite, "acdc", 0.9)
    result = train(config, tmp_path, progress=False, log=lambda *a: None)
    check = result["sparsity_check"]
    assert check["within"] and check["target"] == 0.9 and check["tolerance"] == 1e-3
    assert abs(check["reached"] - 0.9) <= 1e-3 and result["numerics"]["mode"] == numerics.default_mode()


def test_finalize_in_a_users_loop_reports_and_warns_on_a_miss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10))
    sparsifier = acdc_bench.sparsify(model, "str", sparsity=0.9, steps_per_epoch=1, epochs=1, input_shape=(20,),
                                     s_init=-100.0, lam=1e-4)
    with pytest.warns(UserWarning, match=r"str: sparsity 0\.0000 at the end, the target is 0\.9000"):
        sparsifier.finalize()
    assert sparsifier.final["reached"] == 0.0 and not sparsifier.final["within"]
    model = nn.Sequential(nn.Linear(20, 10))
    sparsifier = acdc_bench.sparsify(model, "gmp", sparsity=0.9, steps_per_epoch=2, epochs=2, input_shape=(20,),
                                     batch_size=4)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(4):
        model(torch.randn(4, 20)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsifier.finalize()
    assert sparsifier.final["within"] and sparsifier.final["reached"] == pytest.approx(0.9, abs=1 / 200)


# --------------------------------------------------------------------------- plan and run agree


FASHION_METHODS = ("dense", "acdc", "gmp", "rigl", "set", "str")


@needs_fashion
@pytest.mark.parametrize("suite_name", ["fashion-mnist", "fashion-mnist-10"])
@pytest.mark.parametrize("method", FASHION_METHODS)
def test_plan_rows_match_a_short_runs_metrics(tmp_path, suite_name, method, one_thread):
    """Every method of the default suites, 4 epochs of one step (256 examples, batch 256): plan's
    per-epoch phase, lr, mask sparsity and training FLOPs against the run's metrics.csv."""
    from acdc_bench.run.loop import train

    overrides = [*SHORT, "train_subset=256", "budget.mode=paper", "methods.rigl.update_interval=1",
                 "methods.set.update_interval=1", "budget.calibration.sparsity_tolerance=0.95"]
    config = run_config(load_suite(suite_name, overrides), method, 0.9)
    train(config, tmp_path, progress=False, log=lambda *a: None)
    assert_plan_matches_run(config, tmp_path / config.run_id)
    report = plan(config)
    assert report["epochs"] == 4 and report["steps_per_epoch"] == 1


def test_plan_json_is_the_runs_length(capsys):
    assert main(["plan", "--suite", "imagenet-resnet50", "--method", "gmp", "--sparsity", "0.9", "--json",
                 "--set", "epochs=3"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 3
