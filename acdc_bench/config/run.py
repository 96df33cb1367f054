"""One resolved run: :class:`RunConfig`, frozen and typed, and its id.

:func:`acdc_bench.config.run_config` builds it once from a suite (the recipe a method runs on,
its options with the per-target entry picked, its length); a matched budget refines it once
(:meth:`RunConfig.refined`: its solved length and budget). Everything downstream (the planner,
the runners, the training loop, the dry run) reads its fields; nothing resolves it again.

``config.yaml`` holds :meth:`RunConfig.as_dict` (flat keys, as a reader of a run folder
expects); :meth:`RunConfig.from_dict` reads it back, so a run crosses a process boundary (a
worker process, a Slurm job) as the mapping it is written as.

The run id hashes the fields that change what a run computes and that differ from their
defaults (:meth:`RunConfig.identity`), the method's options included: a field or option added
later with a default leaves every earlier id as it was. Fields marked ``id=False`` (where the
data lives, how the run is tracked, the budget's bookkeeping) never enter it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from acdc_bench import numerics


def _outside_id(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A field that does not change what a run computes: left out of the run id."""
    return field(default=default, metadata={"id": False}, **kwargs)


# --------------------------------------------------------------------------- declared checks

#: ``optimizer.no_decay`` categories (:func:`acdc_bench.config.recipe.no_decay_parameters`).
NO_DECAY_CATEGORIES = ("bias", "bn", "depthwise")
#: ``init`` schemes (:func:`acdc_bench.config.recipe.initialize`; null or "default": the model's own initialisation).
INIT_SCHEMES = ("default", "kaiming_normal_fan_in", "tf-resnet", "tf-mobilenet")
LR_SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("none", "bf16", "fp16")


def _checked(check, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A field whose values ``check(value)`` vets: it returns None, or what is wrong (the message)."""
    return field(default=default, metadata={"check": check}, **kwargs)


def _from_suite(default: Any = dataclasses.MISSING, *, check=None, outside_id: bool = False, **kwargs) -> Any:
    """A field that the suite key of the same name gives as it is, and that ``config.yaml`` holds
    under that name: declared here and as a :class:`~acdc_bench.config.suite.Suite` key, nothing else
    (:func:`~acdc_bench.config.suite.run_config`, :meth:`RunConfig.as_dict` and
    :meth:`RunConfig.from_dict` read the declaration). ``check`` vets its values (the suite's too,
    when it is loaded); ``outside_id``: it does not change what a run computes."""
    metadata = {"suite": True, "check": check} if check is not None else {"suite": True}
    if outside_id:
        metadata["id"] = False
    return field(default=default, metadata=metadata, **kwargs)


def suite_fields(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` (:class:`RunConfig`) that a suite key of the same name gives (:func:`_from_suite`)."""
    return [item for item in dataclasses.fields(cls) if item.metadata.get("suite")]


def field_default(item: dataclasses.Field) -> Any:
    """The default of the dataclass field ``item`` (a fresh one where it has a factory), else MISSING."""
    if item.default is not dataclasses.MISSING:
        return item.default
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def as_declared(item: dataclasses.Field, value: Any) -> Any:
    """``value`` (a suite key's, or a ``config.yaml`` entry's) as the field ``item`` declares it:
    None is the field's default where it has one; ``int``, ``float``, ``bool``, tuple and mapping
    fields are converted to their type; anything else is kept as it is."""
    if value is None:
        default = field_default(item)
        return None if default is dataclasses.MISSING else default
    kind = str(item.type)
    if kind in ("bool", "int", "float"):
        return {"bool": bool, "int": int, "float": float}[kind](value)
    if kind.startswith("tuple"):
        return tuple(value)
    if kind == "Mapping":
        return dict(value)
    return value


def check_fields(cls, values: Mapping) -> None:
    """Raise ValueError with the message of the first field of ``cls`` whose declared check
    ``values`` fails; a field missing from ``values`` is checked at its default (None if it has none)."""
    for item in dataclasses.fields(cls):
        check = item.metadata.get("check")
        if check is None:
            continue
        value = values[item.name] if item.name in values else (
            None if item.default is dataclasses.MISSING else item.default)
        problem = check(value)
        if problem:
            raise ValueError(problem)


def _check_self(instance) -> None:
    check_fields(type(instance), {item.name: getattr(instance, item.name) for item in dataclasses.fields(instance)})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(name: str):
    def check(value):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return f"{name} must be a positive integer, got {value!r}"
    return check


def _one_of(message: str, allowed: tuple):
    def check(value):
        if value not in allowed:
            return message.format(value=value)
    return check


def _check_keys(values: Any, allowed: set, what: str) -> dict:
    if not isinstance(values, Mapping):
        raise ValueError(f"{what} must be a mapping")
    bad = sorted(set(values) - allowed)
    if bad:
        raise ValueError(f"{what}: unknown key(s) {bad}; allowed: {', '.join(sorted(allowed))}")
    return dict(values)


def _non_default(value: Any) -> Any:
    """The id-relevant part of ``value``: a dataclass as its id fields that differ from their
    defaults (recursively), anything else as is (tuples as lists, as JSON writes them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for item in dataclasses.fields(value):
            if not item.metadata.get("id", True):
                continue
            current = getattr(value, item.name)
            default = field_default(item)
            if default is dataclasses.MISSING or not _same(current, default):
                out[item.name] = _non_default(current)
        return out
    if isinstance(value, (list, tuple)):
        return [_non_default(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _non_default(item) for key, item in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    return json.dumps(_plain(a), sort_keys=True, default=str) == json.dumps(_plain(b), sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    """``value`` as YAML/JSON writes it: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Optimizer:
    """A recipe's ``optimizer`` (SGD, the papers' optimizer)."""

    lr: float = _checked(lambda v: None if _number(v) and v > 0 else "optimizer.lr must be a positive number")
    name: str = _checked(lambda v: None if v == "sgd" else "optimizer.name must be 'sgd' (the papers' optimizer)", "sgd")
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    #: Parameters without weight decay (:func:`acdc_bench.config.recipe.no_decay_parameters`).
    no_decay: tuple[str, ...] = _checked(
        lambda v: None if isinstance(v or [], (list, tuple)) and not set(v or []) - set(NO_DECAY_CATEGORIES)
        else f"optimizer.no_decay must be a list of {', '.join(NO_DECAY_CATEGORIES)}, got {(v or [])!r}", ())

    def __post_init__(self) -> None:
        _check_self(self)

    @classmethod
    def from_mapping(cls, values: Mapping) -> "Optimizer":
        """The ``optimizer`` mapping of a recipe; ValueError naming a key or value that is wrong."""
        values = _check_keys(values, {item.name for item in dataclasses.fields(cls)}, "optimizer")
        check_fields(cls, values)
        return cls(lr=float(values["lr"]), name=values.get("name", "sgd") or "sgd",
                   momentum=float(values.get("momentum", 0.0) or 0.0), nesterov=bool(values.get("nesterov", False)),
                   weight_decay=float(values.get("weight_decay", 0.0) or 0.0),
                   no_decay=tuple(values.get("no_decay") or ()))


@dataclass(frozen=True)
class LrSchedule:
    """A recipe's ``lr_schedule``: its shape, warm-up and (``step``) milestones and decay."""

    name: str = _checked(_one_of("lr_schedule.name {value!r} is unknown; allowed: " + ", ".join(LR_SCHEDULES),
                                 LR_SCHEDULES))
    warmup_epochs: int = 0
    #: Epochs at which ``step`` multiplies the rate by ``gamma``, written for the recipe's length.
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    #: Recompute the rate every step from the fractional epoch (the TF codes of RigL and Gale et al.).
    per_step: bool = _checked(lambda v: None if isinstance(v, bool)
                              else f"lr_schedule.per_step must be true or false, got {v!r}", False)

    def __post_init__(self) -> None:
        _check_self(self)

    @classmethod
    def from_mapping(cls, values: Mapping) -> "LrSchedule":
        """The ``lr_schedule`` mapping of a recipe; ValueError naming a key or value that is wrong."""
        values = _check_keys(values, {item.name for item in dataclasses.fields(cls)}, "lr_schedule")
        check_fields(cls, values)
        return cls(name=values["name"], warmup_epochs=values.get("warmup_epochs", 0) or 0,
                   milestones=tuple(values.get("milestones") or ()), gamma=float(values.get("gamma", 0.1)),
                   per_step=bool(values.get("per_step", False)))

    def lr_at(self, base: float, epochs: int, reference_epochs: int, epoch: int, step: int | None = None,
              steps_per_epoch: int | None = None) -> float:
        """Learning rate of ``epoch`` (from 0) of a run of ``epochs`` epochs whose milestones are
        written for ``reference_epochs``; of the global ``step`` when ``per_step`` is set.

        Per epoch (the official codes): linear warm-up ``lr (e+1)/W`` for ``e < W``, then
        ``cosine``: ``lr (1 + cos(pi (e-W)/(E-W))) / 2``; ``step``: ``lr gamma^(milestones
        passed)``, milestones scaled with the run's length and rounded; ``constant``: ``lr``.
        Per step, from the fractional epoch ``t = step / steps_per_epoch``: warm-up ``lr t / W``
        (0 at step 0, as the TF codes), the same shapes at ``t``, milestones scaled unrounded.
        """
        if step is None or not self.per_step:
            warmup = int(self.warmup_epochs or 0)
            if epoch < warmup:
                return base * (epoch + 1) / warmup
            if self.name == "cosine":
                return base * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup))) / 2
            if self.name == "step":
                scale = epochs / reference_epochs
                milestones = [round(m * scale) for m in self.milestones]
                return base * float(self.gamma) ** sum(epoch >= m for m in milestones)
            return base
        if not steps_per_epoch:
            raise ValueError("lr_at: a per-step schedule (lr_schedule.per_step: true) needs steps_per_epoch")
        t = step / steps_per_epoch
        warmup = float(self.warmup_epochs or 0)
        if t < warmup:
            return base * t / warmup
        if self.name == "cosine":
            return base * (1 + math.cos(math.pi * (t - warmup) / max(1e-12, epochs - warmup))) / 2
        if self.name == "step":
            scale = epochs / reference_epochs
            return base * float(self.gamma) ** sum(t >= m * scale for m in self.milestones)
        return base


@dataclass(frozen=True)
class Length:
    """How long a run trains, and the lengths its multipliers and milestones are relative to."""

    #: Passes over the training set (the last may be partial when ``train_steps`` is set).
    epochs: int = _checked(_positive_int("epochs"))
    #: The dense reference of every training multiplier: the suite's length (or an explicit ``--epochs``).
    suite_epochs: int
    #: Optimizer steps, when a matched budget solved them (None: ``epochs`` whole epochs).
    train_steps: int | None = None
    #: The length a method recipe's step milestones are written for, when it is not the suite's.
    recipe_epochs: int | None = None

    def __post_init__(self) -> None:
        _check_self(self)

    def steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the run at ``steps_per_epoch`` steps per epoch."""
        return int(self.train_steps or self.epochs * steps_per_epoch)

    @property
    def tag(self) -> str:
        """The length as a run id shows it: ``st<steps>`` or ``e<epochs>``."""
        return f"st{self.train_steps}" if self.train_steps else f"e{self.epochs}"

    @property
    def milestone_epochs(self) -> int:
        """The length a ``step`` schedule's milestones are written for."""
        return self.recipe_epochs or self.suite_epochs


@dataclass(frozen=True)
class Budget:
    """The training-FLOP budget a run trains under (:mod:`acdc_bench.budget.matching`); only
    ``mode`` changes what it computes, the rest records how its length was found."""

    mode: str = "paper"
    reference_training_flops: float | None = None
    #: How far a method without a tolerance of its own (STR) may end from its target.
    sparsity_tolerance: float = 0.005
    note: str | None = None
    reference: str | None = None
    reference_source: str | None = None
    estimated_training_flops: float | None = None
    estimated_ratio: float | None = None
    #: A calibration chain's step (option, value, iteration, tolerances, previous run).
    calibration: Mapping | None = None

    #: Always written (``result.json`` readers expect them); the others when they are set.
    ALWAYS = ("mode", "reference_training_flops", "sparsity_tolerance")

    def as_dict(self) -> dict:
        return {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)
                if item.name in self.ALWAYS or getattr(self, item.name) is not None}

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> "Budget":
        return cls(**_check_keys(values or {}, {item.name for item in dataclasses.fields(cls)}, "budget"))


def run_id_prefix(method: str, sparsity: float, seed: int) -> str:
    """The readable start of a run id, ``<method>-s<sparsity>-seed<seed>-``: every run of one method,
    target and seed (a calibration chain's runs among them) has it; the id's length tag and hash follow."""
    return f"{method}-s{float(sparsity):g}-seed{int(seed)}-"


def run_id_seed(run_id: str, method: str, sparsity: float) -> int | None:
    """The seed in ``run_id`` when it is a run of ``method`` at ``sparsity`` (:func:`run_id_prefix`), else None."""
    head = f"{method}-s{float(sparsity):g}-seed"
    if not run_id.startswith(head):
        return None
    digits, dash, _ = run_id[len(head):].partition("-")
    return int(digits) if dash and digits.isdigit() else None


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One run, resolved: what it computes (hashed into :attr:`run_id`) and where and how it runs."""

    suite: str
    dataset: str = _from_suite()
    model: str = _from_suite()
    method: str
    sparsity: float
    seed: int
    length: Length
    batch_size: int = _from_suite(check=_positive_int("batch_size"))
    optimizer: Optimizer
    lr_schedule: LrSchedule
    #: The method's options (its ``Config``), resolved for this run's batch size.
    method_config: Any
    numerics: str = _from_suite()
    label_smoothing: float = _from_suite(0.0, check=lambda v: None if _number(v) and 0.0 <= v < 1.0
                                         else f"label_smoothing must be a number in [0, 1), got {v!r}")
    amp: str = _from_suite("none", check=_one_of("amp '{value}' is unknown; allowed: " + ", ".join(AMP_MODES),
                                                 AMP_MODES))
    init: str | None = _from_suite(None, check=_one_of("init {value!r} is unknown; allowed: " + ", ".join(INIT_SCHEMES)
                                                       + " (or null: the model's own)", (None, *INIT_SCHEMES)))
    train_subset: int | None = _from_suite(None)
    channels_last: bool = _from_suite(False)
    compile: bool = _from_suite(False)
    #: The run's variant tag (``2x``, ``5x uniform``; '' for the method's standard run).
    variant: str = ""
    budget: Budget = field(default_factory=Budget)
    # ---- outside the run id
    description: str = _from_suite("", outside_id=True)
    data_root: str | None = _from_suite(None, outside_id=True)
    num_workers: int = _from_suite(0, outside_id=True)
    kernels: str = _from_suite("auto", outside_id=True)
    plugins: tuple[str, ...] = _from_suite((), outside_id=True)
    wandb: Any = _from_suite(False, outside_id=True)
    resources: Mapping = _from_suite(outside_id=True, default_factory=dict)
    #: The code whose recipe the run trains on (``rigl``, ``acdc``; '' when not said).
    recipe_family: str = _outside_id("")
    #: Where the recipe came from (``suite``, ``methods.rigl.recipe``, with any ``--set``).
    recipe_source: str = _outside_id("suite")
    #: The suite family's own ``recipe_family`` key (echoed in ``config.yaml``).
    suite_recipe_family: str | None = _outside_id(None)
    overrides: tuple[str, ...] = _outside_id(())
    #: What the run's table row asked for, every seed alike (:func:`acdc_bench.config.cell_id`).
    cell: str | None = _outside_id(None)

    def __post_init__(self) -> None:
        _check_self(self)

    # ------------------------------------------------------------------ derived

    @property
    def epochs(self) -> int:
        return self.length.epochs

    @property
    def train_steps(self) -> int | None:
        return self.length.train_steps

    @property
    def suite_epochs(self) -> int:
        return self.length.suite_epochs

    @property
    def method_options(self) -> dict:
        """The method's options at this run's target, its per-target entry picked."""
        return self.method_config.options_for(self.sparsity)

    @property
    def distribution(self) -> str:
        """The distribution a run records in ``result.json``."""
        return self.method_config.distribution

    def identity(self) -> dict:
        """What the run id hashes: every field that changes what the run computes, where it
        differs from its default; the method's options likewise against its ``Config``'s
        defaults; the budget's mode only."""
        identity = _non_default(self)  # method_config (a dataclass) against its own defaults too
        identity.pop("budget", None)
        if self.budget.mode != Budget.mode:
            identity["budget_mode"] = self.budget.mode
        if identity.get("numerics") == "portable":
            identity["numerics"] = numerics.PORTABLE_ID  # what fixes its bits (another scheme: another run)
        return identity

    @functools.cached_property
    def run_id(self) -> str:
        """Readable prefix plus a hash of :meth:`identity`."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{run_id_prefix(self.method, self.sparsity, self.seed)}{self.length.tag}-{digest}"

    def lr_at(self, epoch: int, step: int | None = None, steps_per_epoch: int | None = None,
              epochs: int | None = None) -> float:
        """The learning rate at ``epoch`` (and ``step``, per-step schedules) of this run, or of a
        run ``epochs`` long on the same recipe (a planner trying lengths)."""
        return self.lr_schedule.lr_at(float(self.optimizer.lr), epochs or self.epochs, self.length.milestone_epochs,
                                      epoch, step, steps_per_epoch)

    def refined(self, *, train_steps: int, steps_per_epoch: int, budget: Budget,
                method_config: Any = None) -> "RunConfig":
        """This run at a budget's solved length, ``train_steps`` optimizer steps (the last epoch
        may be partial), and, calibrating, the method's next options."""
        length = dataclasses.replace(self.length, epochs=math.ceil(train_steps / steps_per_epoch),
                                     train_steps=int(train_steps), recipe_epochs=None)
        changes: dict[str, Any] = {"length": length, "budget": budget}
        if method_config is not None:
            changes["method_config"] = method_config
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ config.yaml

    def recipe(self) -> dict:
        """The recipe the run resolves to, every field filled in (``config.yaml``'s ``recipe``)."""
        optimizer = _plain(self.optimizer)
        optimizer.pop("name")
        return {"optimizer": optimizer, "lr_schedule": _plain(self.lr_schedule),
                "label_smoothing": float(self.label_smoothing), "batch_size": int(self.batch_size), "amp": self.amp,
                "epochs": int(self.epochs), "init": self.init, "source": self.recipe_source,
                "family": self.recipe_family}

    def as_dict(self) -> dict:
        """What ``config.yaml`` holds: the suite's keys as the run resolved them (every
        :func:`_from_suite` field under its name; the recipe and its length at the top level), the
        method's options (``method_config``; ``method_options`` at this target), the recipe echo, the id."""
        out = {"suite": self.suite, **{item.name: _plain(getattr(self, item.name)) for item in suite_fields(self)}}
        out.update({
            "epochs": self.epochs, "suite_epochs": self.suite_epochs, "train_steps": self.train_steps,
            "optimizer": _plain(self.optimizer), "lr_schedule": _plain(self.lr_schedule),
            "recipe_family": self.suite_recipe_family, "budget": self.budget.as_dict(),
        })
        if self.length.recipe_epochs is not None:
            out["recipe_epochs"] = self.length.recipe_epochs
        out.update({
            "variant": self.variant, "method": self.method, "method_config": dataclasses.asdict(self.method_config),
            "method_options": self.method_options, "sparsity": self.sparsity, "seed": self.seed,
            "recipe": self.recipe(), "overrides": list(self.overrides), "cell": self.cell, "run_id": self.run_id,
        })
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "RunConfig":
        """The run a ``config.yaml`` mapping (:meth:`as_dict`) describes; its plugins are loaded
        first, so a plugin method's options are read back as its own ``Config``."""
        from acdc_bench.methods import get_method, load_plugins, make_config

        data = dict(data)
        load_plugins(data.get("plugins") or [])
        recipe = data.get("recipe") or {}
        given = {item.name: as_declared(item, data[item.name] if field_default(item) is dataclasses.MISSING
                                        else data.get(item.name))
                 for item in suite_fields(cls) if item.name != "numerics"}  # numerics: below
        config = cls(
            **given, suite=data["suite"], method=data["method"], sparsity=float(data["sparsity"]),
            seed=int(data["seed"]), numerics=data.get("numerics") or "native",
            length=Length(epochs=int(data["epochs"]), suite_epochs=int(data.get("suite_epochs") or data["epochs"]),
                          train_steps=data.get("train_steps"), recipe_epochs=data.get("recipe_epochs")),
            optimizer=Optimizer.from_mapping(data["optimizer"]), lr_schedule=LrSchedule.from_mapping(data["lr_schedule"]),
            method_config=make_config(get_method(data["method"]), data.get("method_config")),
            variant=data.get("variant", "") or "", budget=Budget.from_mapping(data.get("budget")),
            recipe_family=recipe.get("family") or "", recipe_source=recipe.get("source", "suite"),
            suite_recipe_family=data.get("recipe_family"), overrides=tuple(data.get("overrides") or ()),
            cell=data.get("cell"),
        )
        if data.get("run_id") is not None and data["run_id"] != config.run_id:
            raise ValueError(f"config run_id {data['run_id']!r} is not the id of what it describes ({config.run_id}): "
                             f"the mapping was edited, or written under another id scheme")
        return config


def default_variant(method_config) -> str:
    """The variant tag a run of these method options records without a cell's own tag: its
    length multiplier (RigL's ``1x``, ``5x``), else ''."""
    multiplier = method_config.epochs_multiplier
    return f"{multiplier:g}x" if multiplier is not None else ""


def as_run_config(config: "RunConfig | Mapping") -> RunConfig:
    """``config`` as a :class:`RunConfig` (a ``config.yaml`` mapping is read back)."""
    return config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
