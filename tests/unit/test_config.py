"""Suites: validation with clear errors, overrides, run ids."""

import pytest
import yaml

from acdc_bench.cli import main
from acdc_bench.config import ConfigError, load_suite, run_config, suite_names


def write_suite(tmp_path, **changes):
    data = yaml.safe_load(open(load_suite("fashion-mnist")["_path"]).read())
    data.update(changes)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_suites_load():
    assert {"fashion-mnist", "imagenet-resnet50", "imagenet-mobilenetv1", "cifar100-wrn28-10"} <= set(suite_names())
    for name in suite_names():
        assert load_suite(name)["suite"] == name


def test_user_suite_file_works_the_same_way(tmp_path):
    path = write_suite(tmp_path, suite="mine", epochs=3)
    suite = load_suite(path)
    assert suite["suite"] == "mine" and suite["epochs"] == 3


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    path = write_suite(tmp_path, epoch=3)
    with pytest.raises(ConfigError) as error:
        load_suite(path)
    message = str(error.value)
    assert str(path) in message and "'epoch'" in message and "epochs" in message


@pytest.mark.parametrize("changes, words", [
    ({"model": "resnet-9000"}, ["model 'resnet-9000'", "lenet-300-100"]),
    ({"dataset": "mnist"}, ["dataset 'mnist'", "fashion-mnist"]),
    ({"methods": {"magic": {}}}, ["method 'magic'", "acdc"]),
    ({"methods": {"acdc": {"warmup": 2}}}, ["methods.acdc", "'warmup'", "warmup_epochs"]),
    ({"reproduce": {"methods": ["acdc"], "sparsities": [1.0]}}, ["sparsity 1.0", "[0, 1)"]),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "momentun": 0.9}}, ["momentun", "momentum"]),
])
def test_bad_values_are_clear_errors(tmp_path, changes, words):
    with pytest.raises(ConfigError) as error:
        load_suite(write_suite(tmp_path, **changes))
    for word in words:
        assert word in str(error.value)


def test_yaml_is_parsed_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("suite: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(path)


def test_overrides_and_their_errors():
    suite = load_suite("fashion-mnist", ["optimizer.lr=0.05", "methods.acdc.warmup_epochs=4"])
    assert suite["optimizer"]["lr"] == 0.05
    with pytest.raises(ConfigError, match="unknown key 'optimiser'"):
        load_suite("fashion-mnist", ["optimiser.lr=0.05"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_suite("fashion-mnist", ["optimizer.lr"])


def test_sparsity_out_of_range_on_the_command_line(capsys):
    assert main(["plan", "--suite", "fashion-mnist", "--method", "acdc", "--sparsity", "1.2"]) == 2
    assert "[0, 1)" in capsys.readouterr().err


def test_unknown_method_on_the_command_line(capsys):
    assert main(["plan", "--suite", "fashion-mnist", "--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_run_id_is_stable_and_changes_with_what_the_run_computes():
    suite = load_suite("fashion-mnist")
    a = run_config(suite, "acdc", 0.9, seed=0)
    assert a["run_id"] == run_config(load_suite("fashion-mnist"), "acdc", 0.9, seed=0)["run_id"]
    assert a["run_id"] != run_config(suite, "acdc", 0.9, seed=1)["run_id"]
    assert a["run_id"] != run_config(load_suite("fashion-mnist", ["optimizer.lr=0.2"]), "acdc", 0.9)["run_id"]
    # where the data live does not change the result
    assert a["run_id"] == run_config(load_suite("fashion-mnist", ["data_root=/elsewhere"]), "acdc", 0.9)["run_id"]
    assert a["run_id"].startswith("acdc-s0.9-seed0-e20-")
