"""STR: Soft Threshold weight Reparameterization (Kusupati et al., ICML 2020).

Faithful to docs/references.md and the official code (``RAIVNLab/STR``, ``STRConv`` with
``sparse_function: sigmoid``):

- every prunable layer (all convs and the fc by default) holds one learnable scalar
  ``s``; its effective weight is ``sign(W) relu(|W| - sigmoid(s))``, recomputed at every
  forward pass (here a :mod:`torch.nn.utils.parametrize` parametrization of
  ``weight``, registered at set-up; the raw ``W`` stays the same ``nn.Parameter``);
- there is no explicit target: the weight decay ``lambda`` (``lam``) and the initial
  ``s`` (``s_init``) decide the final sparsity. Values per target sparsity go in
  ``targets: {sparsity: {s_init, lam, unofficial}}``; the run's target picks its entry
  (``unofficial: true`` marks a value that is not a published one). With a ``targets``
  table, a target missing from it is an error unless ``fallback: true`` (then the
  top-level ``s_init``/``lam`` are used); without a table they apply to every target;
- weight decay: the thresholds decay with ``lam``. The official code uses ``lam`` as
  the weight decay of *every* parameter (``--wd``; ``--st-decay`` and
  ``--no-bn-decay`` unset in the shipped configs), and the weights' decay is part of
  how STR reaches its sparsity, so that is the default here (``decay_all: true``);
  ``decay_all: false`` keeps the suite's ``optimizer.weight_decay`` for the other
  parameters and uses ``lam`` for the thresholds only;
- at the end (:meth:`finalize`) the parametrizations are removed, leaving plain
  weights holding exact zeros; the thresholds are dropped.

Training FLOPs per example: 3 x the sparse forward FLOPs of the effective weights of
each step, counted on the device (no host sync) before the optimizer step, i.e. from
the weights that step's forward pass used.

Matched budgets: STR's cost and final sparsity both emerge from the run length and
``lam``, so a matched STR run calibrates the two together by running
(``calibration_option = "lam"``, :mod:`acdc_bench.budget.calibrate`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from acdc_bench.methods import (
    MaskChange,
    MethodConfig,
    Schedule,
    SparsityMethod,
    make_config,
    register_method,
    same_target,
    target_entry,
)

#: Official ImageNet ResNet50 config (``configs/largescale/resnet50-str.yaml``, 90.23% sparse).
RESNET50_S_INIT = -3200.0
RESNET50_LAMBDA = 2.251757813e-5


def soft_threshold(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sign(W) relu(|W| - sigmoid(s)), differentiable in ``weight`` and ``s``."""
    return _SoftThresholdFunction.apply(weight, s)


class _SoftThresholdFunction(torch.autograd.Function):
    """sign(W) relu(|W| - t), t = sigmoid(s), with a hand-written backward.

    The same values as autograd through ``sign``, ``abs``, ``relu`` and ``sigmoid``, bit for bit
    (tested): dW = g sign(W)^2, i.e. g where |W| > t, 0 elsewhere, ds = sigmoid'(s) * -sum(g sign(W))
    over the same elements, reduced by the same ``sum``. It saves one tensor (the output) where
    autograd keeps three and skips two elementwise passes each way (STR's step on LeNet-300-100:
    README "Lean steps").
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(s)
        out = (weight.abs() - t).clamp_min_(0).mul_(weight.sign())
        ctx.save_for_backward(out, t)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, t = ctx.saved_tensors
        direction = out.sign()  # sign(W) where |W| > t, 0 elsewhere
        signed = grad * direction
        grad_weight = signed * direction if ctx.needs_input_grad[0] else None  # g where |W| > t, else 0
        grad_s = torch.ops.aten.sigmoid_backward(signed.sum().neg(), t) if ctx.needs_input_grad[1] else None
        return grad_weight, grad_s


class SoftThreshold(nn.Module):
    """The STR parametrization of one weight: holds the layer's learnable threshold ``s``.

    A forward pass under autograd (a training step's) keeps its output's non-zero count as a
    device tensor in ``nonzeros``, which the FLOP meter reads instead of recounting."""

    def __init__(self, s_init: float, device=None, dtype=None):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init), device=device, dtype=dtype))
        self.nonzeros: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = soft_threshold(weight, self.s)
        if torch.is_grad_enabled():
            self.nonzeros = torch.count_nonzero(out.detach())
        return out

    def extra_repr(self) -> str:
        return f"s={float(self.s.detach()):.4g}"


@dataclass
class StrConfig(MethodConfig):
    """STR options: ``s_init``/``lam``, or per target sparsity in ``targets`` (see :meth:`resolve`)."""

    s_init: float = RESNET50_S_INIT
    lam: float = RESNET50_LAMBDA
    #: Per target sparsity: ``{0.9: {s_init: ..., lam: ..., unofficial: false}}``.
    targets: dict = dataclasses.field(default_factory=dict)
    #: True: a target missing from a non-empty ``targets`` uses ``s_init``/``lam``; False: it is an error.
    fallback: bool = False
    #: True: ``lam`` is the weight decay of every parameter (official STR); False: of the thresholds only.
    decay_all: bool = True
    #: Planning estimate: density assumed to fall linearly from 1 to 1 - target between these fractions of the run.
    plan_ramp: list = dataclasses.field(default_factory=lambda: [0.0, 1.0])
    #: Matched budgets (acdc_bench.budget.calibrate): initial guess of the Jacobian of (log training FLOPs,
    #: logit final sparsity) with respect to (log steps, log lam). Default: measured on Fashion-MNIST
    #: LeNet-300-100 at the 90% target by finite differences of full runs (20 -> 40 epochs at
    #: lam 4e-3: sparsity 0.894 -> 0.946, FLOPs x1.13; lam 4e-3 -> 2e-3 at 40 epochs: sparsity
    #: 0.946 -> 0.815, FLOPs x2.2). Broyden's update corrects it from every run of the chain.
    calibration_jacobian: list = dataclasses.field(default_factory=lambda: [[0.17, -1.14], [1.05, 1.99]])
    include: list = dataclasses.field(default_factory=list)
    exclude: list = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        for key, value in (self.targets or {}).items():
            try:
                sparsity = float(key)
            except (TypeError, ValueError):
                raise ValueError(f"STR targets: key {key!r} must be a target sparsity such as 0.9") from None
            if not 0.0 <= sparsity < 1.0:
                raise ValueError(f"STR targets: sparsity {key!r} must be in [0, 1)")
            if not isinstance(value, dict) or set(value) - {"s_init", "lam", "unofficial"}:
                raise ValueError(f"STR targets[{key!r}] must be a mapping with keys s_init, lam and/or unofficial, "
                                 f"got {value!r}")
        if not self.lam >= 0:
            raise ValueError(f"STR lam (weight decay) must be >= 0, got {self.lam}")
        jacobian = self.calibration_jacobian
        if not (isinstance(jacobian, (list, tuple)) and len(jacobian) == 2
                and all(isinstance(row, (list, tuple)) and len(row) == 2 for row in jacobian)
                and all(isinstance(v, (int, float)) for row in jacobian for v in row)):
            raise ValueError(f"STR calibration_jacobian must be a 2x2 list of numbers, got {jacobian!r}")
        (a, b), (c, d) = jacobian
        if abs(a * d - b * c) < 1e-9:
            raise ValueError(f"STR calibration_jacobian {jacobian!r} is singular; give an invertible matrix")
        if len(self.plan_ramp) != 2 or not 0.0 <= self.plan_ramp[0] <= self.plan_ramp[1] <= 1.0:
            raise ValueError(f"STR plan_ramp must be [start, end] fractions with 0 <= start <= end <= 1, got {self.plan_ramp}")

    def _entry(self, target_sparsity: float) -> dict | None:
        return target_entry(self.targets, target_sparsity)

    def resolve(self, target_sparsity: float) -> tuple[float, float]:
        """(s_init, lam) for ``target_sparsity``: its ``targets`` entry (key within 1e-9); with no
        ``targets`` table, or with ``fallback: true``, the top-level values; else a ValueError."""
        entry = self._entry(target_sparsity)
        if entry is None and self.targets and not self.fallback:
            listed = ", ".join(f"{float(k):g}" for k in self.targets)
            raise ValueError(
                f"STR targets has no entry for target sparsity {target_sparsity:g} (listed: {listed}); add "
                f"targets: {{{target_sparsity:g}: {{s_init: ..., lam: ...}}}} (with unofficial: true if the values "
                f"are not published ones), or set fallback: true to use s_init/lam")
        entry = entry or {}
        return float(entry.get("s_init", self.s_init)), float(entry.get("lam", self.lam))

    def options_for(self, target_sparsity: float) -> dict:
        """The options a run at ``target_sparsity`` uses: its ``s_init``/``lam`` picked, ``unofficial``
        (True when the entry is marked so, or when the top-level values stand in for a missing one)."""
        s_init, lam = self.resolve(target_sparsity)
        entry = self._entry(target_sparsity)
        unofficial = bool(entry.get("unofficial", False)) if entry is not None else bool(self.targets)
        options = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("targets", "fallback")}
        options.update(s_init=s_init, lam=lam, unofficial=unofficial)
        return options


def _str_parametrization(module: nn.Module) -> SoftThreshold | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    found = [p for p in module.parametrizations["weight"] if isinstance(p, SoftThreshold)]
    if not found:
        raise ValueError(f"{type(module).__name__}.weight is already parametrized by something other than STR")
    return found[0]


@register_method("str")
class STR(SparsityMethod):
    """Soft threshold reparameterization with one learnable threshold per prunable layer."""
    display_name, color, marker = "STR", "tab:purple", "D"  # in tables, legends and figures

    Config: ClassVar[type] = StrConfig
    #: Under a matched budget the run length and lam are calibrated together (acdc_bench.budget.calibrate).
    calibration_option: ClassVar[str] = "lam"
    sparsity_options: ClassVar[tuple[str, ...]] = ("lam", "s_init", "targets")

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.s_init, self.lam = config.resolve(self.target_sparsity)
        self.schedule = self._planning_ramp()
        self.thresholds: list[SoftThreshold] = []
        self._step_nonzeros: torch.Tensor | None = None

    def miss_cause(self) -> str:
        return (f"STR's sparsity follows lam and s_init (here lam={self.lam:.4g}, s_init={self.s_init:g}), not the "
                f"target: set methods.str.targets[{self.target_sparsity:g}] to values that reach it in this run's "
                f"{self.total_steps} steps, or run under budget: matched, which calibrates lam by running")

    @classmethod
    def calibration_value(cls, config: StrConfig, target_sparsity: float) -> float:
        return config.resolve(target_sparsity)[1]

    @classmethod
    def with_calibration_value(cls, options: dict, target_sparsity: float, value: float) -> dict:
        """``options`` with ``targets[target_sparsity].lam = value`` (sInit unchanged)."""
        config = make_config(cls, options)
        s_init, _ = config.resolve(target_sparsity)
        targets = {key: entry for key, entry in (options.get("targets") or {}).items()
                   if not same_target(key, target_sparsity)}
        targets[float(target_sparsity)] = {"s_init": s_init, "lam": float(value)}
        return {**options, "targets": targets}

    @classmethod
    def calibration_jacobian(cls, config: StrConfig) -> list[list[float]]:
        return [list(map(float, row)) for row in config.calibration_jacobian]

    # ------------------------------------------------------------------ set-up
    adds_parameters = True

    def setup(self, model, layers, flops) -> None:
        """Register the STR parametrization on every prunable weight (once: a second call reuses it)."""
        super().setup(model, layers, flops)
        self.thresholds = []
        for layer in self.layers:
            existing = _str_parametrization(layer.module)
            if existing is None:
                weight = layer.module.weight
                existing = SoftThreshold(self.s_init, device=weight.device, dtype=weight.dtype)
                parametrize.register_parametrization(layer.module, "weight", existing)
            self.thresholds.append(existing)

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Put the thresholds under weight decay ``lam``.

        With ``decay_all`` (the official STR: ``lam`` is every parameter's weight decay) every group's
        weight decay becomes ``lam`` and the thresholds join the optimizer's groups: where it was
        built over the parametrized model they are in its groups already, else they join its first
        group. The groups stay as many as they were, so an lr scheduler built on the optimizer before
        (the Hugging Face Trainer's, or one from ``configure_optimizers``) steps them all. Without
        ``decay_all`` they move into a group of their own (``add_param_group``), which a scheduler
        built before cannot know: that is refused, naming the fix.
        """
        super().bind_optimizer(optimizer)
        thresholds = [t.s for t in self.thresholds]
        ids = {id(p) for p in thresholds}
        groups = optimizer.param_groups
        if self.config.decay_all:  # nothing moves: a state already loaded (a resumed Trainer's) stays
            for group in groups:
                group["weight_decay"] = self.lam
            present = {id(p) for group in groups for p in group["params"]}
            groups[0]["params"].extend(p for p in thresholds if id(p) not in present)
            return
        for group in groups:
            if any(id(p) in ids and optimizer.state.get(p) for p in group["params"]):
                raise ValueError("STR: bind the optimizer before its first step (its thresholds already have state)")
        if "initial_lr" in groups[0]:  # set by every torch lr scheduler built on this optimizer
            raise ValueError("STR with decay_all: false puts its thresholds in a parameter group of their own, which "
                             "the lr scheduler already built on this optimizer would not step: build the scheduler "
                             "after sparsify(...).wrap(optimizer), or use decay_all: true (the official STR)")
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        groups[:] = [g for g in groups if g["params"]]
        optimizer.add_param_group({"params": thresholds, "weight_decay": self.lam})

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def effective_nonzeros(self) -> torch.Tensor:
        """Non-zeros of each layer's effective weight, as an int64 device tensor (no host sync).

        sign(W) relu(|W| - sigmoid(s)) is non-zero exactly where |W| > sigmoid(s) (in floating
        point too: a > b implies a - b > 0), so the count reads the raw weights and skips
        recomputing the parametrization."""
        if not self.thresholds:  # finalized: plain weights
            return torch.stack([torch.count_nonzero(layer.module.weight) for layer in self.layers])
        return torch.stack([
            torch.count_nonzero(layer.module.parametrizations["weight"].original.abs() > torch.sigmoid(threshold.s))
            for layer, threshold in zip(self.layers, self.thresholds)
        ])

    def before_optimizer_step(self, step: int) -> bool:
        # The counts of this step's forward pass, kept by the parametrizations; recounted from the
        # weights (still those the forward pass used) when a layer has none.
        counts = [threshold.nonzeros for threshold in self.thresholds]
        for threshold in self.thresholds:
            threshold.nonzeros = None
        self._step_nonzeros = (torch.stack(counts) if self.thresholds and all(c is not None for c in counts)
                               else self.effective_nonzeros())
        return True

    def step_training_flops(self, step: int) -> torch.Tensor:
        nonzeros = self._step_nonzeros if self._step_nonzeros is not None else self.effective_nonzeros()
        self._step_nonzeros = None
        return 3 * self.flops.sparse_forward_tensor(nonzeros)

    # ------------------------------------------------------------------ planning
    def _planning_ramp(self) -> Schedule:
        """An estimate (STR's trajectory is learned, and its hooks do not read it): sparsity rising
        linearly from 0 to the target over ``plan_ramp`` of the run, the same in every layer, taken
        at the middle of each epoch and held through it. Under a matched budget the result reports
        the achieved ratio."""
        spe, total = self.steps_per_epoch, self.total_steps
        start, end = self.config.plan_ramp

        def sparsity(epoch: int) -> float:
            fraction = min(1.0, (epoch + 0.5) * spe / max(1, total))
            if fraction <= start:
                return 0.0
            if fraction >= end or end == start:
                return self.target_sparsity
            return self.target_sparsity * ((fraction - start) / (end - start))

        points = [MaskChange(epoch * spe, sparsity(epoch)) for epoch in range(max(1, -(-total // spe)))]
        return Schedule(total, spe, initial=points[0], changes=tuple(points[1:]), estimated=True)

    # ------------------------------------------------------------------ the result
    def finalize(self) -> None:
        """Bake the thresholds into plain weights holding exact zeros; the thresholds are dropped."""
        for layer in self.layers:
            if _str_parametrization(layer.module) is not None:
                parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=True)
        self.thresholds = []
