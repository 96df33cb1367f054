"""Suites: validation with clear errors, overrides, run ids."""

import pytest
import yaml

from acdc_bench.cli import main
from acdc_bench.config import ConfigError, dump_yaml, load_suite, run_config, suite_names


def write_suite(tmp_path, **changes):
    data = yaml.safe_load(open(load_suite("fashion-mnist").path).read())
    data.update(changes)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_suites_load():
    assert {"fashion-mnist", "imagenet-resnet50", "imagenet-mobilenetv1", "cifar100-wrn28-10"} <= set(suite_names())
    for name in suite_names():
        assert load_suite(name).name == name


def test_user_suite_file_works_the_same_way(tmp_path):
    path = write_suite(tmp_path, suite="mine", epochs=3)
    suite = load_suite(path)
    assert suite.name == "mine" and suite.epochs == 3


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
    ({"optimizer": {"name": "adam", "lr": 0.1}}, ["optimizer.name must be 'sgd'"]),
    ({"optimizer": {"lr": -1}}, ["optimizer.lr must be a positive number"]),
    ({"optimizer": {"lr": 0.1, "no_decay": ["bn", "embeddings"]}}, ["optimizer.no_decay must be a list of bias, bn"]),
    ({"lr_schedule": {"name": "linear"}}, ["lr_schedule.name 'linear' is unknown", "cosine"]),
    ({"lr_schedule": {"name": "cosine", "per_step": "yes"}}, ["lr_schedule.per_step must be true or false"]),
    ({"amp": "fp8"}, ["amp 'fp8' is unknown", "bf16"]),
    ({"label_smoothing": 1.0}, ["label_smoothing must be a number in [0, 1), got 1.0"]),
    ({"init": "xavier"}, ["init 'xavier' is unknown", "tf-resnet"]),
    ({"batch_size": 0}, ["batch_size must be a positive integer, got 0"]),
    ({"methods": {"rigl": {"recipe": {"epochs": 2.5}}}}, ["methods.rigl.recipe", "epochs must be a positive integer"]),
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
    assert suite.optimizer["lr"] == 0.05
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
    assert a.run_id == run_config(load_suite("fashion-mnist"), "acdc", 0.9, seed=0).run_id
    assert a.run_id != run_config(suite, "acdc", 0.9, seed=1).run_id
    assert a.run_id != run_config(load_suite("fashion-mnist", ["optimizer.lr=0.2"]), "acdc", 0.9).run_id
    # where the data live does not change the result
    assert a.run_id == run_config(load_suite("fashion-mnist", ["data_root=/elsewhere"]), "acdc", 0.9).run_id
    assert a.run_id.startswith("acdc-s0.9-seed0-e20-")
    # one place spells the readable part, and reads a run's seed back from it
    from acdc_bench.config.run import run_id_prefix, run_id_seed

    assert a.run_id.startswith(run_id_prefix("acdc", 0.9, 0)) and run_id_seed(a.run_id, "acdc", 0.9) == 0
    assert run_id_seed(a.run_id, "acdc", 0.95) is None and run_id_seed(a.run_id, "gmp", 0.9) is None
    assert run_id_seed("acdc-s0.9-seedx-e20-0", "acdc", 0.9) is None


# ------------------------------------------------------------------ the resolved run


def test_a_run_config_is_frozen_and_reads_back_from_its_config_yaml_with_the_same_id():
    import dataclasses

    from acdc_bench.config.run import RunConfig

    for suite, method, sparsity in [("fashion-mnist", "gmp", 0.9), ("imagenet-resnet50", "rigl", 0.8),
                                    ("imagenet-resnet50", "str", 0.95), ("cifar100-wrn28-10", "acdc", 0.5)]:
        config = run_config(load_suite(suite), method, sparsity)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 1
        written = yaml.safe_load(dump_yaml(config.as_dict()))  # what config.yaml holds
        again = RunConfig.from_dict(written)
        assert again == config and again.run_id == config.run_id == written["run_id"]
    edited = dict(written, seed=1)  # an edited config.yaml no longer describes its id
    with pytest.raises(ValueError, match="is not the id of what it describes"):
        RunConfig.from_dict(edited)


def test_the_fields_declare_their_checks_and_a_run_config_holds_to_them():
    """The checks a suite's recipe keys get are declared on the RunConfig fields that hold them, so
    a RunConfig built any other way (``dataclasses.replace``, a ``config.yaml`` edited by hand)
    is held to the same checks with the same messages."""
    import dataclasses
    import re

    from acdc_bench.config.run import Length, LrSchedule, Optimizer, check_fields

    config = run_config(load_suite("fashion-mnist"), "gmp", 0.9)
    for change, words in [({"amp": "fp8"}, "amp 'fp8' is unknown"), ({"batch_size": -2}, "batch_size must be"),
                          ({"label_smoothing": -0.1}, "label_smoothing must be a number in [0, 1)")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            dataclasses.replace(config, **change)
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        dataclasses.replace(config.length, epochs=0)
    with pytest.raises(ValueError, match="optimizer.lr must be a positive number"):
        Optimizer.from_mapping({"lr": "fast"})  # the message, not float()'s
    with pytest.raises(ValueError, match="lr_schedule: unknown key"):
        LrSchedule.from_mapping({"name": "cosine", "warmup": 5})
    check_fields(Length, {"epochs": 3})  # a good value passes


def test_the_run_id_hashes_only_what_differs_from_the_defaults():
    """A field or method option added later with a default leaves every earlier id as it was: the
    id of a run is the id of the same run with the new field at its default."""
    import dataclasses

    from acdc_bench.config.run import Budget

    config = run_config(load_suite("fashion-mnist"), "rigl", 0.9)
    identity = config.identity()
    assert "label_smoothing" not in identity and "amp" not in identity and "init" not in identity
    assert "budget_mode" not in identity and "data_root" not in identity and "kernels" not in identity
    assert identity["optimizer"] == {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001}  # name sgd, no nesterov
    assert identity["method_config"] == {"update_interval": 75}  # the suite's; every other option at its default
    # a default written out, or a field that does not change results, keeps the id
    assert dataclasses.replace(config, label_smoothing=0.0, data_root="/elsewhere", kernels="dense").run_id == config.run_id
    assert dataclasses.replace(config, label_smoothing=0.1).run_id != config.run_id
    matched = dataclasses.replace(config, budget=Budget(mode="matched"))
    assert matched.identity()["budget_mode"] == "matched" and matched.run_id != config.run_id
    # the budget's bookkeeping is not what the run computes
    assert dataclasses.replace(config, budget=Budget(reference_training_flops=1e12, note="x")).run_id == config.run_id


def test_the_planned_runs_are_each_resolved_once(monkeypatch):
    """Planning a suite resolves each run's config from the suite once: a paper run once, a matched run
    once (then refined to its solved length), not again per step of the budget code."""
    from collections import Counter

    from acdc_bench.budget import matching
    from acdc_bench.budget.matching import spec_config
    from acdc_bench.run.launch import plan_runs

    calls = Counter()
    resolve = matching.run_config

    def counting(suite, method, sparsity, seed=0, **options):
        budget = options.get("budget") or {}
        calls[(method, float(sparsity), seed, budget.get("mode", "paper"))] += 1
        return resolve(suite, method, sparsity, seed, **options)

    monkeypatch.setattr(matching, "run_config", counting)
    suite = load_suite("fashion-mnist-10")
    for budget in ("paper", "matched"):
        calls.clear()
        specs = [spec for wave in plan_runs(suite, budget=budget) for spec in wave]
        configs = [spec_config(suite, spec) for spec in specs]
        assert len({c.run_id for c in configs}) == len(specs)
        reference = suite.reference
        own = {key: n for key, n in calls.items() if not (budget == "matched" and key[0] == reference)}
        assert sorted(own.values()) == [1] * len(own) and len(own) == sum(s.method != reference or budget == "paper"
                                                                          for s in specs)


def test_a_run_field_a_suite_key_gives_is_declared_as_one_key_with_one_default():
    """A field that a suite key of the same name gives (``_from_suite``) is a Suite key with the
    field's default (REQUIRED where the field has none; numerics: the machine's default mode): the
    run config, config.yaml and the suite's validation are all derived from the two declarations."""
    import dataclasses

    from acdc_bench.config.run import RunConfig, suite_fields
    from acdc_bench.config.suite import REQUIRED, Suite

    keys = Suite.keys()
    names = [item.name for item in suite_fields(RunConfig)]
    assert {"dataset", "batch_size", "amp", "channels_last", "kernels", "resources"} <= set(names)
    for item in suite_fields(RunConfig):
        assert item.name in keys, f"RunConfig.{item.name} is given by a suite key, but Suite declares no such key"
        if item.default is not dataclasses.MISSING:
            assert keys[item.name] == item.default or (isinstance(item.default, tuple)
                                                       and keys[item.name] == list(item.default)), item.name
        elif item.default_factory is not dataclasses.MISSING:
            assert keys[item.name] == item.default_factory(), item.name
        else:
            assert keys[item.name] is REQUIRED or item.name == "numerics", item.name
    config = run_config(load_suite("fashion-mnist", ["channels_last=true", "num_workers=2"]), "acdc", 0.9)
    written = config.as_dict()
    assert written["channels_last"] is True and written["num_workers"] == 2
    assert type(config).from_dict(written) == config
