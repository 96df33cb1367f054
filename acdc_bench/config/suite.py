"""Suites: loading and validating suite YAML files, command-line overrides, run configs and run ids."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acdc_bench import numerics
from acdc_bench.config.run import (
    Budget,
    Length,
    LrSchedule,
    Optimizer,
    RunConfig,
    as_declared,
    check_fields,
    default_variant,
    field_default,
    suite_fields,
)

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"

BUDGET_MODES = ("paper", "matched")
BUDGET_KEYS = {"mode", "reference", "calibration"}
#: Matched budgets of emergent-cost methods (STR, see acdc_bench.budget.calibrate): at most ``max_runs``
#: runs per cell; a run is accepted when its sparsity is within ``sparsity_tolerance`` of the target
#: (and its training FLOPs within plan.MATCH_TOLERANCE of the budget). 0.5 pp rather than the 2 pp
#: an STR run is usually allowed: at a 95% target, 2 pp under is 40% more non-zeros than the target.
CALIBRATION_DEFAULTS = {"max_runs": 5, "sparsity_tolerance": 0.005, "start": {}}

#: A method's ``recipe:`` (``methods.<name>.recipe``): the suite keys it may override for that method
#: (each replaces the suite's key whole), plus ``targets: {sparsity: {key: value}}`` for one target.
RECIPE_KEYS = ("optimizer", "lr_schedule", "label_smoothing", "batch_size", "amp", "epochs", "init")

class ConfigError(ValueError):
    """A suite or override that cannot be used; the message names the file, key and allowed values."""


REQUIRED = object()


def _key(default: Any = REQUIRED, *, key: str | None = None, result: bool = True) -> Any:
    """A top-level key of a suite file, declared once: its default (REQUIRED: the file must give it),
    its name in the file when the attribute's differs (``key``), and whether it changes what a run
    computes (``result=False``: left out of the cell id, :func:`cell_id`)."""
    metadata = {"key": key, "result": result}
    if default is REQUIRED:
        return field(metadata=metadata)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _loaded(default: Any) -> Any:
    """What loading a suite file adds (not a key of the file)."""
    return field(default_factory=lambda: copy.deepcopy(default), metadata={"key": None, "loaded": True})


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A suite file, loaded once (:func:`load_suite`): its keys with their defaults, the user's
    ``--set`` overrides applied once, validated once. Treat it as read-only: :meth:`for_cell`
    and :meth:`replace` give changed copies."""

    name: str = _key(None, key="suite", result=False)
    description: str = _key("", result=False)
    dataset: str = _key()
    data_root: str | None = _key(None, result=False)
    num_workers: int = _key(0, result=False)
    train_subset: int | None = _key(None)
    model: str = _key()
    epochs: int = _key()
    batch_size: int = _key()
    optimizer: dict = _key()
    lr_schedule: dict = _key()
    label_smoothing: float = _key(0.0)
    amp: str = _key("none")
    init: str | None = _key(None)
    #: The code whose recipe the suite's keys are (``acdc``, ``rigl``); a method's ``recipe.family`` wins.
    recipe_family: str | None = _key(None, result=False)
    channels_last: bool = _key(False)
    compile: bool = _key(False)
    kernels: str = _key("auto", result=False)
    numerics: str | None = _key(None)
    budget: dict = _key({"mode": "paper", "reference": "acdc"}, result=False)
    reproduce: dict = _key({"methods": ["dense", "acdc"], "sparsities": [0.9], "seeds": [0]}, result=False)
    #: ``methods.<name>``: each method's own options (its ``recipe:`` is in :attr:`recipes`).
    methods: dict = _key({}, result=False)
    plugins: list = _key([], result=False)
    wandb: Any = _key(False, result=False)
    resources: dict = _key({}, result=False)
    # ---- what loading adds
    #: The file it was loaded from.
    path: str = _loaded("")
    #: ``methods.<name>.recipe`` of each method that has one.
    recipes: dict = _loaded({})
    #: The ``--set`` overrides applied, in order (a recipe key's wins over a method's recipe).
    overrides: tuple = _loaded(())
    #: :func:`budget_inputs` of the file as written (a cell id tells another budget apart by it).
    written_budget_inputs: dict | None = _loaded(None)

    @classmethod
    def keys(cls) -> dict[str, Any]:
        """Every top-level key of a suite file with its default (REQUIRED: the file must give it)."""
        out = {}
        for item in dataclasses.fields(cls):
            if item.metadata.get("loaded"):
                continue
            default = field_default(item)
            out[item.metadata.get("key") or item.name] = REQUIRED if default is dataclasses.MISSING else default
        return out

    @classmethod
    def non_result_keys(cls) -> set[str]:
        """The file's keys that do not change what a run computes (left out of its cell id)."""
        return {item.metadata.get("key") or item.name for item in dataclasses.fields(cls)
                if not item.metadata.get("loaded") and not item.metadata.get("result", True)}

    @classmethod
    def from_keys(cls, data: Mapping, **loaded) -> "Suite":
        """The suite of the file keys ``data`` (every key of :meth:`keys`) and what loading adds."""
        names = {item.metadata.get("key") or item.name: item.name for item in dataclasses.fields(cls)
                 if not item.metadata.get("loaded")}
        return cls(**{names[key]: copy.deepcopy(value) for key, value in data.items()}, **loaded)

    def as_keys(self) -> dict[str, Any]:
        """The suite as the keys of a file (``suite``, ``methods`` without recipes, ...), copied."""
        return {item.metadata.get("key") or item.name: copy.deepcopy(getattr(self, item.name))
                for item in dataclasses.fields(self) if not item.metadata.get("loaded")}

    def replace(self, **changes) -> "Suite":
        return dataclasses.replace(self, **changes)

    @property
    def where(self) -> str:
        """How errors name the suite: its file, else its name."""
        return self.path or self.name

    @property
    def budget_mode(self) -> str:
        return self.budget["mode"]

    @property
    def reference(self) -> str:
        """The method whose training FLOPs a matched budget gives every other method."""
        return self.budget.get("reference", "acdc")

    @property
    def calibration(self) -> dict:
        """``budget.calibration`` with its defaults filled in."""
        return {**CALIBRATION_DEFAULTS, **(self.budget.get("calibration") or {})}

    def method_options(self, method: str) -> dict:
        """``methods.<method>``: the method's own options (a copy; {} when the suite sets none)."""
        return copy.deepcopy(self.methods.get(method) or {})

    def method_recipe(self, method: str) -> dict | None:
        """The ``recipe:`` of ``methods.<method>`` (None: the method runs the suite's recipe)."""
        return self.recipes.get(method)

    def for_cell(self, method: str, options: Mapping | None = None, recipe: Mapping | None = None) -> "Suite":
        """The suite as one run of a cell sees it: the cell's ``options`` and ``recipe`` keys over the method's."""
        if not options and not recipe:
            return self
        methods = {**self.methods, method: {**self.method_options(method), **copy.deepcopy(dict(options or {}))}}
        recipes = dict(self.recipes)
        if recipe:
            recipes[method] = {**(self.method_recipe(method) or {}), **copy.deepcopy(dict(recipe))}
        return self.replace(methods=methods, recipes=recipes)


#: Every top-level key of a suite file, with its default (REQUIRED: the file must give it).
SUITE_DEFAULTS: dict[str, Any] = Suite.keys()


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_suite_path(suite: str | Path) -> Path:
    """A shipped suite by name, or a user's suite file by path."""
    path = Path(suite)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    shipped = SUITES_DIR / f"{suite}.yaml"
    if shipped.exists():
        return shipped
    raise ConfigError(
        f"suite '{suite}' is neither a shipped suite ({', '.join(suite_names())}) nor an existing YAML file"
    )


def parse_yaml(text: str, where: str) -> Any:
    """YAML 1.2 (core schema), safely: ``2:4`` is a string and ``1e-4`` a float, as a reader of
    today's YAML expects (PyYAML's YAML 1.1 reads ``2:4`` as the base-60 integer 124 and
    ``1e-4`` as a string)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from error


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value (e.g. optimizer.lr=0.1)")
    key, raw = text.split("=", 1)
    value = parse_yaml(raw, f"--set {text}") if raw.strip() else None
    return key.strip().split("."), value


def apply_overrides(keys: dict, overrides: list[str], where: str) -> dict:
    """A copy of a suite file's ``keys`` with ``key.path=value`` overrides applied; a key that the
    suite schema lacks is an error."""
    suite = copy.deepcopy(keys)
    for text in overrides or []:
        path, value = _parse_override(text)
        if path[0] not in SUITE_DEFAULTS:
            raise ConfigError(f"{where}: --set {text}: unknown key '{path[0]}'; allowed: {', '.join(SUITE_DEFAULTS)}")
        node = suite
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: --set {text}: '{part}' is not a mapping")
            node = child
        node[path[-1]] = value
    return suite


def suite_numerics(suite: str | Path, overrides: list[str] | None = None) -> str:
    """The numerics mode a suite (with ``overrides``) runs under, read without importing torch."""
    path = resolve_suite_path(suite)
    raw = parse_yaml(path.read_text(), str(path))
    raw = apply_overrides(raw if isinstance(raw, dict) else {}, overrides or [], str(path))
    return numerics.check_mode(raw.get("numerics") or numerics.default_mode())


def load_suite(suite: str | Path, overrides: list[str] | None = None) -> Suite:
    """Load a suite file (a shipped suite's name, or a path), apply ``overrides`` (``key.path=value``)
    once and validate it once: the :class:`Suite` every command below the command line reads."""
    path = resolve_suite_path(suite)
    where = str(path)
    raw = parse_yaml(path.read_text(), where)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite file must be a YAML mapping of keys to values")
    unknown = sorted(set(raw) - set(SUITE_DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(SUITE_DEFAULTS)}")
    data = {**Suite.keys(), **raw}
    as_written = copy.deepcopy(data)
    written_recipes = _split_recipes(as_written, where)
    data = apply_overrides(data, overrides or [], where)
    if data["suite"] is None:
        data["suite"] = path.stem
    if data.get("numerics") is None:
        data["numerics"] = numerics.default_mode()
    recipes = _split_recipes(data, where)
    validate_suite(data, recipes, where)
    data["plugins"] = list(data.get("plugins") or [])
    return Suite.from_keys(data, path=where, recipes=recipes, overrides=tuple(overrides or ()),
                           written_budget_inputs=_budget_inputs(as_written, written_recipes))


def _split_recipes(data: dict, where: str) -> dict:
    """Take each ``methods.<name>.recipe`` out of ``data`` and return them by method name:
    ``methods.<name>`` then holds the method's own options only (what every consumer builds the
    method's config from)."""
    methods = data.get("methods") or {}
    _require(isinstance(methods, dict), where, "methods must be a mapping of method name to its options")
    recipes = {}
    for name, options in methods.items():
        if isinstance(options, dict) and "recipe" in options:
            recipes[name] = options.pop("recipe")
    return recipes


def _start_point(point) -> bool:
    """A shipped calibration point: ``{steps: <positive int>, value: <positive number>}``."""
    return (isinstance(point, dict) and set(point) == {"steps", "value"} and isinstance(point["steps"], int)
            and not isinstance(point["steps"], bool) and point["steps"] > 0
            and isinstance(point["value"], (int, float)) and point["value"] > 0)


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}")


def check_sparsity(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) < 1.0
    _require(ok, where, f"sparsity {value!r} must be a number in [0, 1) (e.g. 0.9 for 90%)")
    return float(value)


def validate_recipe(data: dict, where: str) -> None:
    """Check the keys of a suite (or of a suite with a method's recipe applied) that a run takes with
    the checks the fields of :class:`~acdc_bench.config.run.RunConfig` and its parts declare."""
    try:
        check_fields(Length, {"epochs": data["epochs"]})
        check_fields(RunConfig, {item.name: data[item.name] for item in suite_fields(RunConfig) if item.name in data})
        Optimizer.from_mapping(data["optimizer"])
        LrSchedule.from_mapping(data["lr_schedule"])
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def apply_recipe(config: dict, recipe: dict | None, sparsity: float) -> dict:
    """``config`` with a method's ``recipe`` keys (and those of its ``targets`` entry for ``sparsity``)."""
    config = dict(config)
    if not recipe:
        return config
    for key in RECIPE_KEYS:
        if key in recipe:
            config[key] = copy.deepcopy(recipe[key])
    from acdc_bench.methods import target_entry

    entry = target_entry(recipe.get("targets"), sparsity) or {}
    for name in RECIPE_KEYS:
        if name in entry:
            config[name] = copy.deepcopy(entry[name])
    return config


def validate_method_recipe(data: dict, recipe: Any, here: str) -> None:
    """Check a method's ``recipe:`` (its keys, ``family`` and ``targets``) over the suite ``data``;
    errors start with ``here`` (where the recipe is written)."""
    _require(isinstance(recipe, dict), here, "must be a mapping of recipe keys to values")
    allowed = (*RECIPE_KEYS, "family", "targets")
    bad = sorted(set(recipe) - set(allowed))
    _require(recipe.get("family") is None or isinstance(recipe["family"], str), here,
             f"family must be the name of the recipe's code (e.g. rigl), got {recipe.get('family')!r}")
    _require(not bad, here, f"unknown key(s) {bad}; allowed: {', '.join(allowed)}")
    targets = recipe.get("targets") or {}
    _require(isinstance(targets, dict), here, "targets must be a mapping of target sparsity to recipe keys")
    for key, entry in targets.items():
        check_sparsity(key, f"{here}.targets")
        _require(isinstance(entry, dict) and not set(entry) - set(RECIPE_KEYS), f"{here}.targets[{key!r}]",
                 f"must be a mapping with keys among {', '.join(RECIPE_KEYS)}, got {entry!r}")
        validate_recipe(apply_recipe(data, recipe, float(key)), f"{here}.targets[{key!r}]")
    validate_recipe(apply_recipe(data, recipe, -1.0), here)


def validate_suite(data: dict, recipes: dict, where: str) -> None:
    """Check every key of a suite file (``data``, its method recipes ``recipes`` taken out); the
    error names the file, the key and the allowed values."""
    from acdc_bench.data import DATASETS
    from acdc_bench.methods import get_method, load_plugins, make_config, method_names
    from acdc_bench.models import model_names

    for key, default in SUITE_DEFAULTS.items():
        _require(data.get(key) is not REQUIRED, where, f"key '{key}' is required")
    _require(data["dataset"] in DATASETS, where, f"dataset '{data['dataset']}' is unknown; allowed: {', '.join(DATASETS)}")
    _require(data.get("recipe_family") is None or isinstance(data["recipe_family"], str), where,
             f"recipe_family must be the name of the code whose recipe the suite's keys are (e.g. acdc), "
             f"got {data.get('recipe_family')!r}")
    from acdc_bench.core.kernels import MODES as KERNEL_MODES

    _require(data.get("kernels", "auto") in KERNEL_MODES, where,
             f"kernels '{data.get('kernels')}' is unknown; allowed: {', '.join(KERNEL_MODES)} "
             f"(auto: sparse kernels where they measure faster, acdc_bench.core.kernels)")
    _require(data.get("numerics") in numerics.MODES, where,
             f"numerics {data.get('numerics')!r} is unknown; allowed: {', '.join(numerics.MODES)} (portable: "
             f"identical results on Intel and AMD x86-64 CPUs with AVX2; native: the CPU's own instruction set)")
    _require(data["model"] in model_names(), where, f"model '{data['model']}' is unknown; allowed: {', '.join(model_names())}")
    validate_recipe(data, where)
    budget = data["budget"]
    _require(isinstance(budget, dict) and budget.get("mode") in BUDGET_MODES, where,
             f"budget.mode must be one of {', '.join(BUDGET_MODES)}, got {budget!r}")
    bad = sorted(set(budget) - BUDGET_KEYS)
    _require(not bad, where, f"budget: unknown key(s) {bad}; allowed: {', '.join(sorted(BUDGET_KEYS))}")
    calibration = budget.get("calibration") or {}
    _require(isinstance(calibration, dict) and not set(calibration) - set(CALIBRATION_DEFAULTS), where,
             f"budget.calibration must be a mapping with keys {', '.join(CALIBRATION_DEFAULTS)}, got {calibration!r}")
    max_runs = calibration.get("max_runs", CALIBRATION_DEFAULTS["max_runs"])
    _require(isinstance(max_runs, int) and not isinstance(max_runs, bool) and max_runs >= 1, where,
             f"budget.calibration.max_runs must be an integer >= 1, got {max_runs!r}")
    tolerance = calibration.get("sparsity_tolerance", CALIBRATION_DEFAULTS["sparsity_tolerance"])
    _require(isinstance(tolerance, (int, float)) and 0 < tolerance < 1, where,
             f"budget.calibration.sparsity_tolerance must be a number in (0, 1), got {tolerance!r}")
    start = calibration.get("start") or {}
    _require(isinstance(start, dict), where, "budget.calibration.start must map method -> sparsity -> "
                                             "{steps, value, seeds: {seed: {steps, value}}}")
    when = start.get("when") or {}
    _require(isinstance(when, dict) and not set(when) - {"epochs", "batch_size", "train_subset", "dataset", "model"},
             where, f"budget.calibration.start.when may hold epochs, batch_size, train_subset, dataset, model; got {when!r}")
    for name, cells in start.items():
        if name == "when":
            continue
        for key, entry in (cells or {}).items():
            seeds = entry.get("seeds") if isinstance(entry, dict) else None
            _require(seeds is None or isinstance(seeds, dict), where,
                     f"budget.calibration.start.{name}.{key}.seeds must map seed -> {{steps, value}}, got {seeds!r}")
            own = {k: v for k, v in entry.items() if k != "seeds"} if isinstance(entry, dict) else entry
            _require(_start_point(own), where, f"budget.calibration.start.{name}.{key} must be {{steps: <positive "
                                               f"int>, value: <positive number>}} (and optionally seeds: {{seed: "
                                               f"{{steps, value}}}}), got {entry!r}")
            for seed, point in (seeds or {}).items():
                _require(_start_point(point), where, f"budget.calibration.start.{name}.{key}.seeds.{seed} must be "
                                                     f"{{steps: <positive int>, value: <positive number>}}, got {point!r}")
            _require(all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds or {}),
                     where, f"budget.calibration.start.{name}.{key}.seeds: seeds must be integers >= 0, "
                            f"got {sorted(map(str, seeds or {}))}")
            check_sparsity(key, f"{where}: budget.calibration.start.{name}")
    load_plugins(data.get("plugins") or [])
    methods = data["methods"] or {}
    _require(isinstance(methods, dict), where, "methods must be a mapping of method name to its options")
    for name, options in methods.items():
        _require(name in method_names(), where, f"methods: method '{name}' is unknown; allowed: {', '.join(method_names())}")
        options = {k: v for k, v in (options or {}).items() if k != "recipe"}
        try:
            make_config(get_method(name), options)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{where}: methods.{name}: {error}") from error
        recipe = recipes.get(name)
        if recipe is not None:
            validate_method_recipe(data, recipe, f"{where}: methods.{name}.recipe")
    reproduce = data["reproduce"]
    _require(isinstance(reproduce, dict), where, "reproduce must be a mapping with methods, sparsities, seeds")
    bad = sorted(set(reproduce) - {"methods", "sparsities", "seeds", "variants"})
    _require(not bad, where, f"reproduce: unknown key(s) {bad}; allowed: methods, sparsities, seeds, variants")
    for name in reproduce.get("methods", []):
        _require(name in method_names(), where, f"reproduce.methods: method '{name}' is unknown; allowed: {', '.join(method_names())}")
    for value in reproduce.get("sparsities", []):
        check_sparsity(value, f"{where}: reproduce.sparsities")


# --------------------------------------------------------------------------- runs


def run_config(
    suite: Suite,
    method: str,
    sparsity: float,
    seed: int = 0,
    epochs: int | None = None,
    budget: dict | Budget | None = None,
    train_steps: int | None = None,
    method_options: dict | None = None,
    variant: str | None = None,
) -> RunConfig:
    """The resolved configuration of one run (:class:`~acdc_bench.config.run.RunConfig`; what
    ``config.yaml`` holds).

    ``method_options`` replaces the suite's ``methods.<method>`` options (budget calibration);
    ``variant`` is a paper-suite cell's tag (None: the method's own, ``1x`` for RigL, else '').

    The recipe: under a ``paper`` budget a method with a ``recipe:`` runs on it (its keys, and
    those of its ``targets`` entry for ``sparsity``, replace the suite's); under a ``matched``
    budget every method runs on the suite's shared recipe and any ``recipe:`` is ignored
    (``recipe_source`` says which). A matched budget then refines the run once
    (:meth:`RunConfig.refined`) to its solved length.
    """
    from acdc_bench.methods import get_method

    where = suite.where
    get_method(method)  # an unknown method: an error naming the registered ones
    sparsity = check_sparsity(sparsity, f"{where}: --sparsity")
    if method == "dense":
        sparsity = 0.0
    options = method_options if method_options is not None else suite.method_options(method)

    config = {key: value for key, value in suite.as_keys().items() if key not in ("methods", "reproduce")}
    budget = run_budget(suite, budget if budget is not None else {"mode": "paper", "reference_training_flops": None})
    recipe = suite.method_recipe(method)
    family = suite.recipe_family or ""
    if recipe and budget.mode == "paper":
        config = apply_recipe(config, recipe, sparsity)
        source = f"methods.{method}.recipe"
        family = recipe.get("family") or family
        overrides = [text for text in suite.overrides
                     if text.split("=", 1)[0].strip().split(".")[0] in RECIPE_KEYS]
        if overrides:  # the user's --set of a recipe key is never dropped: it wins over the recipe
            config = apply_overrides(config, overrides, where)
            validate_recipe(config, f"{where}: methods.{method}.recipe with {' '.join(overrides)}")
            source += " with --set " + ", ".join(overrides)
    elif recipe:
        source = f"suite (budget {budget.mode}: methods.{method}.recipe ignored, one shared recipe)"
    else:
        source = "suite"
    batch_size = int(config["batch_size"])
    method_config = method_options_config(suite, method, options, batch_size)
    length = int(config["epochs"])  # the recipe's length (the suite's unless the recipe sets epochs)
    # The dense reference of every training multiplier: the suite's length, or an explicit
    # --epochs (a shorter or longer suite); a matched budget or a method's own multiplier
    # (RigL 5x) changes the run's length but not its reference.
    suite_epochs = int(epochs) if epochs is not None and not train_steps else int(suite.epochs)
    recipe_epochs = length if epochs is None and length != suite.epochs else None  # step milestones' length
    multiplier = method_config.epochs_multiplier
    own_variant = default_variant(method_config)
    if epochs is None:
        epochs = max(1, round(length * (multiplier or 1)))
    if int(epochs) <= 0:
        raise ConfigError(f"{where}: --epochs must be positive, got {epochs}")
    try:
        method_config.options_for(sparsity)
    except ValueError as error:
        raise ConfigError(f"{where}: methods.{method}: {error}") from error
    tagged = variant if variant is not None and variant != own_variant else None
    given = {item.name: as_declared(item, config.get(item.name)) for item in suite_fields(RunConfig)}
    return RunConfig(
        **given, suite=config["suite"], method=method, sparsity=sparsity, seed=int(seed),
        length=Length(epochs=int(epochs), suite_epochs=suite_epochs, train_steps=int(train_steps) if train_steps else None,
                      recipe_epochs=recipe_epochs),
        optimizer=Optimizer.from_mapping(config["optimizer"]), lr_schedule=LrSchedule.from_mapping(config["lr_schedule"]),
        method_config=method_config, variant=tagged if tagged is not None else own_variant, budget=budget,
        recipe_family=family, recipe_source=source, suite_recipe_family=config.get("recipe_family"),
        overrides=suite.overrides,
        cell=cell_id(suite, method, sparsity, budget.mode, int(epochs) if budget.mode != "matched" else None, tagged),
    )



def method_options_config(suite: Suite, method: str, options: dict, batch_size: int):
    """The method's ``Config`` from ``options`` (a ``methods.<method>`` mapping; ``recipe``
    aside), at ``batch_size``; a bad option is a ConfigError naming the suite and the method."""
    from acdc_bench.methods import get_method, make_config

    options = {key: value for key, value in (options or {}).items() if key != "recipe"}
    try:
        return make_config(get_method(method), options).for_batch_size(int(batch_size))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{suite.where}: methods.{method}: {error}") from error


def run_budget(suite: Suite, budget: dict | Budget) -> Budget:
    """``budget`` as a :class:`Budget`, with the suite's sparsity tolerance for methods without
    one of their own (STR) unless it says its own."""
    if isinstance(budget, Budget):
        return budget
    budget = dict(budget)
    budget.setdefault("sparsity_tolerance", float(suite.calibration["sparsity_tolerance"]))
    return Budget.from_mapping(budget)


def _budget_inputs(keys: Mapping, recipes: Mapping) -> dict:
    """What sets a matched run's budget beyond the suite keys its cell hashes anyway: the suite's
    length (the reference's length and the unit of every multiplier) and the reference method's
    options and recipe (``keys``: a suite file's keys, ``recipes``: its method recipes)."""
    budget, methods = keys.get("budget"), keys.get("methods")
    reference = budget.get("reference", "acdc") if isinstance(budget, dict) else None
    options = methods.get(reference) if isinstance(methods, dict) else None
    return {"epochs": keys.get("epochs"), "reference_options": options, "reference_recipe": recipes.get(reference)}


def budget_inputs(suite: Suite) -> dict:
    """:func:`_budget_inputs` of a loaded suite."""
    return _budget_inputs(suite.as_keys(), suite.recipes)


def cell_id(suite: Suite, method: str, sparsity: float, budget_mode: str, epochs: int | None,
            variant: str | None = None) -> str:
    """What a run of one table row was asked to compute, every seed alike: the suite's keys that
    change results (overrides applied), the method with its options and recipe, the target, the
    budget mode and an explicit length. A matched run's solved length and a calibrated option
    are answers to these inputs, not inputs, so the seeds of one cell share it (``compare`` and
    the leaderboards group runs by it). What sets a matched run's budget (:func:`budget_inputs`:
    the suite's length, the reference's options and recipe) is an input too: where ``--set``
    changes it from what the suite file says, the cell is another one; as the file says, it adds
    nothing to the hash."""
    inputs = {key: value for key, value in suite.as_keys().items() if key not in Suite.non_result_keys()}
    inputs.update(method=method, sparsity=round(float(sparsity), 9), budget_mode=budget_mode, epochs=epochs,
                  options=suite.method_options(method), recipe=suite.method_recipe(method),
                  reference=suite.budget.get("reference") if budget_mode == "matched" else None)
    if budget_mode == "matched" and suite.written_budget_inputs not in (None, budget_inputs(suite)):
        inputs["budget_inputs"] = budget_inputs(suite)
    if inputs.get("numerics") == "portable":
        inputs["numerics"] = numerics.PORTABLE_ID  # what fixes its bits (another scheme: another run)
    if variant:
        inputs["variant"] = variant
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{method}-s{float(sparsity):g}-{digest}"


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)
