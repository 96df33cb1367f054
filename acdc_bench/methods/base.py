"""The method contract: :class:`SparsityMethod` (every hook the loop calls) and :class:`MaskedMethod`.

A sparse-training method is a small class. Registered with ``@register_method("name")``,
it runs in the project's loop and in any user's loop through :func:`acdc_bench.sparsify`
(the one place that calls these hooks; :mod:`acdc_bench.api`). The hooks, in call order:

    setup(model, layers, flops)      attach to the model (masks, parametrizations); flops may
                                     still be None (measured at the first training batch)
    bind_optimizer(optimizer)        the user's optimizer, built before or after setup
    on_epoch_start(epoch)            before an epoch's first training forward pass
    on_step_start(step)              before each step's training forward pass
    before_optimizer_step(step)      after backward: mask gradients; return False to skip the step
                                     (anything else, None included, lets the optimizer step)
    after_optimizer_step(step)       after the optimizer step (re-apply masks)
    step_training_flops(step)        training FLOPs per example of the step just taken
    on_epoch_end(epoch) -> dict      after an epoch's last step: extra metrics (mask overlap)
    finalize()                       at the end: plain dense tensors holding exact zeros

plus its ``schedule`` (:class:`~acdc_bench.methods.schedule.Schedule`: when the masks change and
to which sparsity), built once in ``__init__``: its hooks read it, and the planner derives
``phase(epoch)``, ``planned_densities(epoch)`` and ``planned_training_flops_per_example(epoch)``
from it without training (a method with no schedule has no plan: ``budget: matched`` refuses it
rather than plan it as dense); ``densities_at(sparsity)``, how a sparsity is laid out over the
layers; ``dense_pair_epoch()`` for the sparse-dense pair; ``state_dict``/``load_state_dict`` so
that a run resumes exactly; and, for methods whose cost emerges from training (STR),
``calibration_option`` with three classmethods.
A user's package registers its own methods the same way (imported through a suite's
``plugins`` list, ``--plugin``, or the ``acdc_bench.methods`` entry-point group).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from acdc_bench.core.flops import LayerFlops
from acdc_bench.core.sparsity import (
    DISTRIBUTIONS,
    MaskSet,
    PrunableLayer,
    check_names_exist,
    global_magnitude_masks,
    layer_densities,
    magnitude_mask,
)
from acdc_bench.methods.schedule import Schedule

def same_target(key: Any, sparsity: float) -> bool:
    """Whether the key of a per-target table (``targets: {0.9: ...}``) names ``sparsity`` (within 1e-9)."""
    return abs(float(key) - sparsity) <= 1e-9


def target_entry(targets: Mapping | None, sparsity: float) -> Any:
    """The entry of a per-target table (a method's ``targets:``, a recipe's, a calibration start
    point's) for ``sparsity``, or None where it has none."""
    return next((entry for key, entry in (targets or {}).items() if same_target(key, sparsity)), None)


class MethodConfig:
    """Base of every method's options: subclass it as a dataclass (``Config`` on the method class).

    It declares every optional feature the harness reads from a method's options, each with the
    value that means "this method has none"; a method overrides what it has (as a dataclass field
    or a method). The harness reads nothing else, so a new feature is added here first.
    """

    #: Layers to prune (fnmatch patterns of module names; empty: every prunable layer) and to leave out.
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    #: ``"N:M"`` semi-structured masks (:class:`MaskedConfig`); None: unstructured.
    pattern: str | None = None
    #: How the sparsity is laid out over the layers (``global``, ``uniform``, ``erk``), as a run
    #: records it in ``result.json`` and the published tables are matched on; '' for a method that
    #: has no layout to choose (STR learns its own).
    distribution: str = ""
    #: A length variant of the recipe (RigL 2x, 5x): the run trains this many times the recipe's
    #: epochs and records the variant ``"<x>x"``. None: the recipe's length, no variant.
    epochs_multiplier: float | None = None

    def validate(self) -> None:
        """Raise ValueError naming the bad option and the allowed values (after the options are filled)."""

    def for_batch_size(self, batch_size: int) -> "MethodConfig":
        """These options at ``batch_size`` (RigL: an update interval given in examples becomes steps)."""
        return self

    def options_for(self, target_sparsity: float) -> dict:
        """The options a run at ``target_sparsity`` uses, a per-target entry (``targets:``) picked."""
        return dataclasses.asdict(self)


@dataclass
class NoConfig(MethodConfig):
    pass


class SparsityMethod:
    """Base class of every method. Override only the hooks you need."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = NoConfig
    #: How reports show the method: its name in tables and legends (None: the registered name),
    #: its colour in every figure (a Matplotlib colour) and the marker of its published points.
    #: None picks a colour or marker from the name, the same on every run.
    display_name: ClassVar[str | None] = None
    color: ClassVar[str | None] = None
    marker: ClassVar[str | None] = None
    #: Methods whose cost and final sparsity emerge from training (STR) name the float option that
    #: sets how sparse a run ends (larger = sparser; STR: ``lam``). Under a matched budget the run
    #: length and this option are then calibrated together by running (:mod:`acdc_bench.budget.calibrate`),
    #: starting from the Jacobian guess ``calibration_jacobian(config)``. None (GMP, RigL, AC/DC):
    #: the planner's estimate from ``planned_densities`` is exact enough to solve the length alone.
    calibration_option: ClassVar[str | None] = None
    #: How far a finished run's sparsity may fall from :meth:`promised_sparsity` (a fraction of the
    #: prunable weights). None: the method does not hold its target by construction (STR's follows
    #: ``lam`` and ``s_init``), so the run is held to the suite's ``budget.calibration.sparsity_tolerance``.
    sparsity_tolerance: ClassVar[float | None] = None
    #: The options that set how sparse a run ends when the target does not (STR: ``lam``, ``s_init``
    #: or a ``targets`` entry). :func:`acdc_bench.sparsify` refuses a call that gives none of them:
    #: the defaults are tuned for one recipe, and ``sparsity=`` alone would be a promise not kept.
    sparsity_options: ClassVar[tuple[str, ...]] = ()
    #: True when :meth:`setup` adds parameters to the model (STR's thresholds): a framework that builds
    #: its optimizer, or loads a checkpoint, before the method is attached must let them exist first
    #: (the Hugging Face callback sets them up when the Trainer is made).
    adds_parameters: ClassVar[bool] = False
    #: True when the method is attached only to plan a run (:class:`acdc_bench.budget.plan.Planner`,
    #: ``sparsify(..., planning=True)``): nothing trains it, so :meth:`setup` may skip what only
    #: training needs (RigL's random mask positions) as long as every ``planned_*`` answer is the
    #: one a training attachment gives (the contract's ``plan`` clause plans this way).
    planning: bool = False

    def __init__(
        self,
        config: Any,
        *,
        target_sparsity: float,
        epochs: int,
        steps_per_epoch: int,
        total_steps: int | None = None,
    ):
        self.config = config
        self.target_sparsity = target_sparsity
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        #: Optimizer steps of the whole run (the last epoch may be partial under a matched budget).
        self.total_steps = total_steps or epochs * steps_per_epoch
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.layers: list[PrunableLayer] = []
        self.flops: LayerFlops | None = None
        #: When the masks change and to which sparsity (a subclass builds it in ``__init__``); None:
        #: the method has no schedule to plan from (``planned_densities`` then raises).
        self.schedule: Schedule | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, model: nn.Module, layers: Sequence[PrunableLayer], flops: LayerFlops | None) -> None:
        """Attach to the model (a method may add parameters here: STR's thresholds)."""
        self.model, self.layers, self.flops = model, list(layers), flops

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer that trains the model, before its first step and before a checkpoint is
        loaded; a method that adds parameters puts them in it here (``add_param_group``)."""
        self.optimizer = optimizer

    # ------------------------------------------------------------------ hooks
    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_step_start(self, step: int) -> None:
        pass

    def before_optimizer_step(self, step: int) -> bool:
        return True

    def after_optimizer_step(self, step: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> dict:
        return {}

    def step_training_flops(self, step: int) -> int | torch.Tensor:
        """Training FLOPs per example of the step just taken: 3 x forward FLOPs in force."""
        return 3 * self.flops.dense_forward

    # ------------------------------------------------------------------ planning (from the schedule)
    def phase(self, epoch: int) -> str:
        """``dense`` or ``sparse``: the schedule's phase at the end of ``epoch`` (no schedule: dense)."""
        return self.schedule.phase(epoch) if self.schedule is not None else "dense"

    def densities_at(self, sparsity: float) -> list[float]:
        """Per-layer densities of masks at ``sparsity`` as the method lays them out (planning); the
        base: every layer at ``1 - sparsity``."""
        return [1.0 - sparsity] * len(self.layers)

    def _planning_schedule(self) -> Schedule:
        if self.schedule is None:
            raise NotImplementedError(
                f"method '{self.name}' has no schedule to plan from: build self.schedule "
                f"(acdc_bench.methods.schedule.Schedule) in __init__, or implement planned_densities(epoch) "
                f"(and, if its cost is not 3 x the forward FLOPs of those densities, "
                f"planned_training_flops_per_example), or run it with --budget paper")
        return self.schedule

    def planned_densities(self, epoch: int) -> list[float]:
        """Per-layer densities in force at the middle step of ``epoch`` (used by ``plan`` and
        ``budget: matched``). A method without a schedule has none: it would otherwise be planned as
        dense and matched to a wrong run length."""
        return self.densities_at(self._planning_schedule().middle(epoch).sparsity)

    def planned_training_flops_per_example(self, epoch: int) -> float:
        """Estimated training FLOPs per example in ``epoch``, the mean over its steps: 3 x the forward
        FLOPs of the masks in force, ``2 f_S + f_D`` on a step that reads the dense gradient.
        A method without a schedule that overrides ``planned_densities``: 3 x their forward FLOPs."""
        if self.schedule is None:
            return 3 * self.flops.sparse_forward_from_densities(self.planned_densities(epoch))
        schedule = self.schedule
        steps = schedule.epoch_steps(epoch)
        if not steps:
            return 3 * self._forward_flops_at(schedule.in_force(steps.start).sparsity)
        segments = schedule.segments(steps.start, steps.stop)
        if not any(segment.dense_gradient_steps for segment in segments):
            if len(segments) == 1:
                return 3 * self._forward_flops_at(segments[0].sparsity)
            total = 0.0
            for segment in segments:
                total += (segment.end - segment.begin) * self._forward_flops_at(segment.sparsity)
            return 3 * total / len(steps)
        dense = self.flops.dense_forward
        total = 0.0
        for segment in segments:
            f_s, updates = self._forward_flops_at(segment.sparsity), segment.dense_gradient_steps
            total += (segment.end - segment.begin - updates) * 3 * f_s + updates * (2 * f_s + dense)
        return total / len(steps)

    def _forward_flops_at(self, sparsity: float) -> float:
        return self.flops.sparse_forward_from_densities(self.densities_at(sparsity))

    def dense_pair_epoch(self) -> int | None:
        """Epoch at whose end the dense model of a sparse-dense pair is saved (None: no pair)."""
        return None

    @classmethod
    def calibration_value(cls, config: Any, target_sparsity: float) -> float:
        """The value of ``calibration_option`` a run at ``target_sparsity`` uses."""
        return float(getattr(config, cls.calibration_option))

    @classmethod
    def with_calibration_value(cls, options: dict, target_sparsity: float, value: float) -> dict:
        """The method's suite options with ``calibration_option`` set to ``value`` for ``target_sparsity``."""
        return {**options, cls.calibration_option: float(value)}

    @classmethod
    def calibration_jacobian(cls, config: Any) -> list[list[float]]:
        """Initial guess of d(log FLOPs, logit sparsity) / d(log steps, log option) (rows, columns)."""
        raise NotImplementedError(f"{cls.__name__} sets calibration_option but not calibration_jacobian")

    def finalize(self) -> None:
        """Turn the trained model into plain dense tensors holding exact zeros (STR bakes here)."""

    # ------------------------------------------------------------------ what a run promises
    def promised_sparsity(self) -> float:
        """The sparsity a finished run must hold (the target; an N:M pattern's own, for instance)."""
        return float(self.target_sparsity)

    def final_sparsity(self) -> float:
        """The sparsity in force at the end of training: exact zeros of the effective weights."""
        from acdc_bench.core.sparsity import weight_sparsity

        return weight_sparsity(self.layers)[0]

    def schedule_problem(self) -> str | None:
        """Why this run's schedule cannot reach its target in ``total_steps``, found before training
        (None: it can). The message names the options to change."""
        return None

    def miss_cause(self) -> str:
        """What decides this method's final sparsity, for the error of a run that missed it."""
        return f"{self.name}'s schedule did not reach its target in this run's {self.total_steps} steps"

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class MaskedConfig(MethodConfig):
    """Options shared by the mask-based methods."""

    distribution: str = "global"
    keep_dense: list[str] = dataclasses.field(default_factory=list)
    include: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)
    #: ``"N:M"`` (e.g. ``"2:4"``): at most N non-zeros in every group of M consecutive input weights
    #: of each pruned layer, chosen by magnitude (:func:`acdc_bench.core.sparsity.nm_mask`); the run's
    #: target sparsity is then 1 - N/M. None: unstructured masks.
    pattern: str | None = None

    def validate(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution '{self.distribution}' is unknown; allowed: {', '.join(DISTRIBUTIONS)}"
            )
        if self.distribution == "global" and self.keep_dense:
            raise ValueError("keep_dense applies to 'uniform' or 'erk'; with 'global' use exclude")
        if self.pattern is not None:
            from acdc_bench.core.sparsity import parse_pattern

            parse_pattern(self.pattern)
            # Masks that grow connections anywhere (RigL, SET: their config has update_interval) are
            # never built by prune_by_magnitude, so they could not keep the pattern.
            if "update_interval" in {field.name for field in dataclasses.fields(self)}:
                raise ValueError(f"pattern '{self.pattern}' applies to magnitude-pruned masks (acdc, gmp, a "
                                 f"MaskedMethod that prunes with prune_by_magnitude); RigL and SET grow "
                                 f"connections anywhere: leave pattern unset")
            if self.distribution != "uniform":
                raise ValueError(f"pattern '{self.pattern}' gives every pruned layer the density N/M: use "
                                 f"distribution 'uniform' (keep_dense names the layers left dense), not "
                                 f"'{self.distribution}'")


class MaskedMethod(SparsityMethod):
    """A method whose sparsity is a boolean mask per prunable weight.

    While ``masking`` is on, the mask multiplies the gradients before the optimizer
    step and is re-applied to the weights after it; training FLOPs per example are
    3 x the forward FLOPs of the masks in force. While it is on, eligible layers may run
    sparse kernels (:mod:`acdc_bench.core.kernels`), whose weight gradient is zero off the
    mask: a step that reads the dense gradient says so in :meth:`needs_dense_gradient`.
    """

    Config: ClassVar[type] = MaskedConfig
    #: Per-layer top-k rounds each layer's kept count to a whole weight: far below 0.1 points.
    sparsity_tolerance: ClassVar[float | None] = 1e-3

    def setup(self, model, layers, flops) -> None:
        super().setup(model, layers, flops)
        check_names_exist(self.layers, self.config.keep_dense, "keep_dense")
        self.masks = MaskSet(self.layers)
        self.masking = False
        self._densities_by_sparsity: dict[float, list[float]] = {}

    def prune_by_magnitude(self, sparsity: float) -> None:
        """Masks from the current magnitudes with the configured distribution (or N:M ``pattern``); weights re-masked."""
        weights = [layer.weight for layer in self.layers]
        if self.config.pattern is not None:
            from acdc_bench.core.sparsity import nm_masks

            masks = nm_masks(self.layers, self.config.pattern, sparsity, self.target_sparsity, self.config.keep_dense)
        elif self.config.distribution == "global":
            masks = global_magnitude_masks(weights, sparsity)
        else:
            masks = [magnitude_mask(w, d) for w, d in zip(weights, self.distribution_densities(sparsity))]
        self.masks.set(masks)
        self.masks.apply_to_weights()
        self.masking = True

    def distribution_densities(self, sparsity: float) -> list[float]:
        """Expected per-layer densities at ``sparsity``; for ``global``, from the current magnitudes."""
        if self.config.pattern is not None:
            from acdc_bench.core.sparsity import nm_densities

            return nm_densities(self.layers, self.config.pattern, sparsity, self.target_sparsity, self.config.keep_dense)
        if self.config.distribution == "global":
            masks = global_magnitude_masks([layer.weight for layer in self.layers], sparsity)
            return [float(m.float().mean()) for m in masks]
        return layer_densities(self.config.distribution, self.layers, sparsity, self.config.keep_dense)

    def promised_sparsity(self) -> float:
        """The target as the distribution (or N:M pattern) lays it out over the layers: ``keep_dense``
        layers and an N:M group that cannot reach the target make it lower."""
        densities = self.distribution_densities(self.target_sparsity)
        total = sum(layer.numel for layer in self.layers)
        return 1.0 - sum(d * layer.numel for d, layer in zip(densities, self.layers)) / total

    def schedule_problem(self) -> str | None:
        """An N:M ``pattern`` that cannot reach the target (2:4 keeps half: it cannot reach 0.9), or
        a schedule (not an estimate) whose masks never reach the target within the run's steps."""
        pattern = self.config.pattern
        if pattern is not None:
            from acdc_bench.core.sparsity import check_pattern_target

            try:
                check_pattern_target(pattern, self.target_sparsity)
            except ValueError as error:
                return f"{error} (methods.{self.name}.pattern, or sparsify's pattern=)"
        schedule = self.schedule
        if schedule is None or schedule.estimated:
            return None
        within = [change for change in (schedule.initial, *schedule.changes) if change.step < self.total_steps]
        highest = max(change.sparsity for change in within)
        if highest < self.target_sparsity - 1e-9:
            changes = [(change.step, change.sparsity) for change in schedule.changes]
            return (f"{self.name}'s schedule holds sparsity {highest:g} at most within this run's {self.total_steps} "
                    f"step(s), not the target {self.target_sparsity:g} (its changes, (step, sparsity): "
                    f"{changes[:4]}{' ...' if len(changes) > 4 else ''}): a change to the target must come "
                    f"before step {self.total_steps}")
        return None

    def final_sparsity(self) -> float:
        """The masks' sparsity while they are in force (a weight that is zero on the mask, as a grown
        one is, still counts as kept); 0 while none is (a dense phase)."""
        return self.masks.sparsity() if self.masking else 0.0

    def needs_dense_gradient(self, step: int) -> bool:
        """Whether ``step``'s backward pass must give the dense weight gradient (the schedule says:
        RigL's growth reads it on update steps); otherwise layers may run sparse kernels
        (:mod:`acdc_bench.core.kernels`)."""
        return self.schedule is not None and self.schedule.needs_dense_gradient(step)

    def before_optimizer_step(self, step: int) -> bool:
        if self.masking:
            self.masks.apply_to_grads()
        return True

    def after_optimizer_step(self, step: int) -> None:
        if self.masking:
            self.masks.apply_to_weights()

    def step_training_flops(self, step: int) -> int:
        return 3 * self.flops.sparse_forward(self.masks.nonzeros)

    def phase(self, epoch: int) -> str:
        """The schedule's phase at the end of ``epoch`` (no schedule: sparse)."""
        return self.schedule.phase(epoch) if self.schedule is not None else "sparse"

    def densities_at(self, sparsity: float) -> list[float]:
        """Per-layer densities of masks at ``sparsity`` laid out by the distribution (or N:M pattern),
        kept per sparsity (``global`` reads the magnitudes at the first call); dense at 0."""
        if sparsity <= 0.0:
            return [1.0] * len(self.layers)
        key = round(sparsity, 12)
        if key not in self._densities_by_sparsity:
            self._densities_by_sparsity[key] = self.distribution_densities(sparsity)
        return self._densities_by_sparsity[key]

    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict(), "masking": self.masking}

    def load_state_dict(self, state: dict) -> None:
        self.masks.load_state_dict(state["masks"])
        self.masking = bool(state["masking"])


def zero_momentum(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor] | None = None) -> None:
    """Zero the SGD momentum buffers of ``params`` (all parameters when None)."""
    wanted = None if params is None else {id(p) for p in params}
    for group in optimizer.param_groups:
        for param in group["params"]:
            if wanted is not None and id(param) not in wanted:
                continue
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.zero_()
