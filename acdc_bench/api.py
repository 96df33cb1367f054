"""Use any method in any training loop: ``acdc_bench.sparsify(model, "rigl", ...)``.

::

    sparsifier = acdc_bench.sparsify(model, "rigl", sparsity=0.9, epochs=E, steps_per_epoch=S, batch_size=B)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for epoch in range(E):
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimizer.step()
    sparsifier.finalize()

This module is the one place that wires a method to a model; the project's own training
loop, the planner and the benchmarks use it too. The method's hooks run at fixed points:

- ``sparsify``: the method is built from its validated options and attached
  (``setup``: masks, parametrizations); the model's conv/linear weights are found and their
  FLOPs measured (from ``input_shape``, else from the first training batch);
- ``wrap(optimizer)``: ``bind_optimizer`` (STR puts its thresholds in the optimizer's groups, or
  with ``decay_all: false`` in one of their own); from then on ``optimizer.step()`` runs the step's hooks;
- before the first *training* forward pass of a step (a forward pre-hook on the model that
  ignores ``model.eval()`` passes): ``on_epoch_start(epoch)`` at an epoch's first step, then
  ``on_step_start(step)``;
- ``optimizer.step()``: ``before_optimizer_step(step)`` (masks the gradients; RigL reads the
  dense gradient ``backward()`` left and returns False to skip the update), the optimizer's own
  step unless skipped, ``after_optimizer_step(step)`` (re-applies masks), the FLOP meter, and
  at an epoch's last step ``on_epoch_end(epoch)`` (its dict is :attr:`Sparsifier.epoch_metrics`).

Epochs are counted from the steps: step ``t`` belongs to epoch ``t // steps_per_epoch``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from acdc_bench.core.flops import LayerFlops, TrainingFlopMeter, measure_layer_flops
from acdc_bench.core.kernels import SparseKernels
from acdc_bench.core.sparsity import prunable_layers, unwrap_compiled, weight_sparsity
from acdc_bench.methods.base import MaskedMethod, SparsityMethod
from acdc_bench.methods.registry import get_method, make_config


#: How far a run whose method sets no tolerance of its own (STR) may end from its target: the
#: harness's default ``budget.calibration.sparsity_tolerance`` (0.5 points).
DEFAULT_SPARSITY_TOLERANCE = 0.005


class Sparsifier:
    """A method attached to a model: drives its hooks from the optimizer's steps; meters FLOPs.

    Build one with :func:`sparsify`.
    """

    def __init__(self, model: nn.Module, method: SparsityMethod, batch_size: int | None,
                 input_shape: Sequence[int] | None = None, kernels: str = "auto"):
        self.model = model
        #: The eager module (``model`` itself unless it was compiled): its layers, FLOPs and masks.
        self._eager = unwrap_compiled(model)
        self.method = method
        self.layers = method.layers
        self.batch_size = batch_size
        self.meter = TrainingFlopMeter()
        self.epoch_metrics: dict = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self._input_shape = tuple(input_shape) if input_shape is not None else None
        self._step = 0                # the global index of the step under way (or next)
        self._started_epoch = -1      # the last epoch whose on_epoch_start ran
        self._step_started = False    # on_step_start ran for self._step
        self._examples: int | None = None
        self._warned_late = False     # the forward pre-hook was found not to run (warned once)
        self._hook = None
        self._finalized = False
        #: Set by :meth:`finalize`: :meth:`target_report` at the end of training.
        self.final: dict | None = None
        #: Sparse kernels for masked layers where they measure faster (``kernels="dense"``: never).
        self.kernels = SparseKernels([layer.module for layer in self.layers], kernels) \
            if isinstance(method, MaskedMethod) else None

    # ------------------------------------------------------------------ what the loop reads
    @property
    def step(self) -> int:
        """Optimizer steps taken so far (skipped RigL update steps included)."""
        return self._step

    @property
    def epoch(self) -> int:
        return self._step // self.method.steps_per_epoch

    @property
    def training_flops(self) -> int:
        """Training FLOPs metered so far (all steps, ``batch_size`` examples each unless told otherwise)."""
        return self.meter.total

    @property
    def sparsity(self) -> float:
        """Actual sparsity over the prunable weights now (from the effective weights)."""
        return weight_sparsity(self.layers)[0]

    @property
    def mask_sparsity(self) -> float:
        """The sparsity the method holds in force: a masked method's masks while they are on (a weight
        that is zero on the mask, as a newly grown RigL weight is, counts as kept) and 0 while they
        are off (a dense phase); STR's exact zeros. :attr:`sparsity` counts exact zeros only (a
        weight that never receives a gradient, such as one fed by an always-black pixel, stays zero)."""
        return self.method.final_sparsity()

    @property
    def phase(self) -> str:
        """``dense`` or ``sparse``: the method's phase in the epoch of the step under way, or of
        the last step taken (so a per-epoch log line after an epoch names that epoch's phase)."""
        step = self._step if self._step_started or self._step == 0 else self._step - 1
        return self.method.phase(min(step // self.method.steps_per_epoch, self.method.epochs - 1))

    # ------------------------------------------------------------------ attaching
    def wrap(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Bind ``optimizer`` (built before or after :func:`sparsify`); returns it, its ``step`` hooked.

        Wrap before building an lr scheduler on it (schedulers wrap ``step`` themselves).
        """
        if self.optimizer is not None:
            raise RuntimeError("this sparsifier already wraps an optimizer; call sparsify() again for another run")
        self.method.bind_optimizer(optimizer)
        inner = optimizer.step

        def step(*args, **kwargs):
            return self._optimizer_step(inner, args, kwargs)

        # An lr scheduler built before marks the step it wrapped; ours calls that one, so it carries
        # the mark on (Lightning warns of an unwrapped step otherwise).
        if getattr(inner, "_wrapped_by_lr_sched", False):
            step._wrapped_by_lr_sched = True
        optimizer.step = step
        self.optimizer = optimizer
        # Kept out of torch.compile's graphs (the hooks are Python with side effects). Applied here,
        # not as a decorator: torch.compiler.disable imports torch._dynamo, about 1 s that a process
        # importing acdc_bench only to plan or report would pay.
        self._hook = self.model.register_forward_pre_hook(torch.compiler.disable(self._before_forward),
                                                          with_kwargs=True)
        return optimizer

    def seek(self, step: int) -> None:
        """Position the sparsifier at ``step`` without running the steps before it, its epoch's
        ``on_epoch_start`` taken as done (benchmarks time chosen steps of a schedule this way)."""
        self._step = int(step)
        self._started_epoch = self.epoch
        self._step_started = False

    def step_examples(self, examples: int) -> None:
        """The number of training examples in the next step (over all ranks), for the FLOP meter."""
        self._examples = int(examples)

    def add_examples(self, examples: int) -> None:
        """Add one batch's training examples (over all ranks) to the step under way: a loop that
        accumulates several batches a step, the last of an epoch perhaps shorter, calls it for each,
        and the meter counts their sum instead of ``batch_size``."""
        self._examples = (self._examples or 0) + int(examples)

    def _before_forward(self, module, args, kwargs) -> None:
        if not self._eager.training or self._finalized:
            return
        if self.method.flops is None:
            self._measure_flops(args, kwargs)
        self.start_step()

    def measure_flops(self, *args, **kwargs) -> None:
        """Measure the model's FLOPs now from a training batch's model inputs (cut to their first
        example), for a loop whose training forward does not call the model ``sparsify`` was given.
        Usually automatic."""
        self._measure_flops(args, kwargs)

    def measure_flops_of(self, run) -> None:
        """Measure the model's FLOPs now as those of ``run()``, a computation on one example that calls
        the model's submodules itself (a LightningModule without ``forward``, whose ``training_step``
        calls its layers): see :func:`acdc_bench.core.flops.measure_layer_flops`."""
        self.method.flops = measure_layer_flops(self._eager, self.layers, run=run)

    def _measure_flops(self, args: tuple, kwargs: dict) -> None:
        """FLOPs from ``input_shape``, else from the first example of the first training batch: every
        tensor argument cut to its first row (a transformer's ``input_ids=`` and ``attention_mask=``
        too, so its FLOPs follow the real sequence length)."""
        if self._input_shape is not None:
            self.method.flops = measure_layer_flops(self._eager, self.layers, self._input_shape)
            return

        def first(value):
            return value[:1] if isinstance(value, torch.Tensor) and value.dim() > 0 else value

        if not any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values())):
            raise ValueError("sparsify: the model's inputs hold no tensor; pass input_shape= (one example's "
                             "shape, e.g. (3, 224, 224)) to measure its FLOPs")
        example = (tuple(first(a) for a in args), {k: first(v) for k, v in kwargs.items()})
        self.method.flops = measure_layer_flops(self._eager, self.layers, example=example)

    def _follow_model(self) -> None:
        """The weights as the model holds them now: masks follow a model moved after :func:`sparsify`
        (``model.to("cuda")``); a weight replaced since (``load_state_dict(..., assign=True)``) is an
        error, since the masks and the method's state act on the one they were made for."""
        for layer in self.layers:
            if layer.current_weight() is not layer.weight:
                raise RuntimeError(
                    f"sparsify: the weight of layer '{layer.name}' was replaced after sparsify(...) (by "
                    "load_state_dict(..., assign=True) or a conversion that swaps parameters), so the method "
                    "would mask the old tensor and train the new one dense. Load or convert the model first, "
                    "then call sparsify and build the optimizer; or load without assign=True.")
        if isinstance(self.method, MaskedMethod):
            self.method.masks.follow_weights()

    def start_step(self) -> None:
        """Run the hooks due before this step's forward pass (idempotent within a step)."""
        if self._step_started:
            return
        self._follow_model()
        steps_per_epoch = self.method.steps_per_epoch
        epoch = self._step // steps_per_epoch
        if epoch > self._started_epoch:
            self.method.on_epoch_start(epoch)
            self._started_epoch = epoch
        self.method.on_step_start(self._step)
        if self.kernels is not None:
            method = self.method
            self.kernels.sync(method.masks.masks, method.masks.densities(),
                              method.masking and not method.needs_dense_gradient(self._step))
        self._step_started = True

    def _optimizer_step(self, inner, args, kwargs):
        if self._finalized:  # the optimizer trains on without the method (a second Trainer.train())
            return inner(*args, **kwargs)
        # A closure (Lightning's automatic optimization, ``optimizer.step(closure)``) computes the
        # loss and its gradients: it runs first, so that the method's hooks see this step's
        # gradients; the optimizer then steps without it (an optimizer that re-evaluates its
        # closure several times, such as LBFGS, is not supported).
        closure = kwargs.pop("closure", None) if "closure" in kwargs else (args[0] if args else None)
        if closure is not None:
            args = args[1:] if args and args[0] is closure else args
            with torch.enable_grad():
                loss = closure()
        if not self._step_started and not self._warned_late:
            self._warned_late = True
            warnings.warn(
                "sparsify: the step's hooks did not run before its forward pass (they run now, at "
                "optimizer.step()): the model's forward pre-hook never fired. Either the model was compiled "
                "(torch.compile) before sparsify(...).wrap() attached the hook, in this process, so the compiled "
                "code does not call it: attach first, or call torch._dynamo.reset() after wrap(); or the loop's "
                "training forward calls a submodule, not the model given to sparsify: call "
                "sparsifier.start_step() before each step's forward.", RuntimeWarning, stacklevel=3)
        self.start_step()
        self._check_countable()
        step = self._step
        result = None
        if self.method.before_optimizer_step(step) is not False:  # a hook that returns nothing steps
            result = inner(*args, **kwargs)
        self._end_step(step)
        return loss if closure is not None else result

    def skipped_step(self) -> None:
        """A step whose optimizer update did not run (``GradScaler`` found inf/NaN gradients):
        the method's hooks and the meter still count it, so the schedules stay on time."""
        self.start_step()
        self._check_countable()
        self.method.before_optimizer_step(self._step)
        self._end_step(self._step)

    def _check_countable(self) -> None:
        """Refuse a step whose FLOPs cannot be metered before any of it runs (the weights, masks and
        step count stay as they were)."""
        if self.method.flops is None:
            raise RuntimeError("sparsify: no training forward pass of the model ran before optimizer.step(), so "
                               "its FLOPs are unknown; pass input_shape= to sparsify (the hook that measures them "
                               "does not fire when the loop calls a submodule, or when the model was compiled "
                               "before wrap())")
        if self._examples is None and self.batch_size is None:
            raise ValueError("sparsify: batch_size is unknown; pass batch_size= or call step_examples(n) every step")

    def _end_step(self, step: int) -> None:
        method = self.method
        method.after_optimizer_step(step)
        examples = self._examples if self._examples is not None else self.batch_size
        self.meter.add(method.step_training_flops(step), examples)
        self._examples = None
        self._step = step + 1
        self._step_started = False
        if self._step % method.steps_per_epoch == 0 or self._step == method.total_steps:
            self.epoch_metrics = method.on_epoch_end(step // method.steps_per_epoch) or {}

    # ------------------------------------------------------------------ the end, and resuming
    def target_report(self, tolerance: float | None = None) -> dict:
        """The sparsity this run reached beside what its method promised: ``target``, ``promised``
        (the target as the distribution or N:M pattern lays it out), ``reached`` (the masks in force;
        STR: the exact zeros), ``tolerance`` (the method's own, else ``tolerance``, else
        :data:`DEFAULT_SPARSITY_TOLERANCE`), ``within``, and ``cause`` when it missed."""
        method = self.method
        promised, reached = method.promised_sparsity(), method.final_sparsity()
        allowed = method.sparsity_tolerance if method.sparsity_tolerance is not None else (
            DEFAULT_SPARSITY_TOLERANCE if tolerance is None else float(tolerance))
        within = abs(reached - promised) <= allowed
        cause = None if within else method.miss_cause()
        off = self._weights_off_the_masks()
        if off:  # the masks say one thing, the weights another: the weights are what the model is
            reached, within = weight_sparsity(self.layers)[0], False
            cause = (f"{off} weights off the masks are non-zero, so the model's weights changed after its last "
                     f"step (a checkpoint loaded over them, as the Trainer's load_best_model_at_end does); "
                     f"reached is the weights' own exact zeros")
        return {"target": float(method.target_sparsity), "promised": promised, "reached": reached,
                "tolerance": allowed, "within": within, "cause": cause}

    @torch.no_grad()
    def _weights_off_the_masks(self) -> int:
        """How many weights are non-zero where a mask in force says zero (0: none, or no masks in force)."""
        method = self.method
        if not isinstance(method, MaskedMethod) or not method.masking:
            return 0
        return sum(int(torch.count_nonzero(layer.weight[~mask.to(layer.weight.device)]))
                   for layer, mask in zip(self.layers, method.masks.masks))

    def finalize(self, *, tolerance: float | None = None, warn: bool = True) -> nn.Module:
        """Plain dense tensors holding exact zeros (STR bakes its thresholds); hooks removed.

        The sparsity reached beside the target is kept in :attr:`final` (:meth:`target_report` with
        ``tolerance``, taken while the masks are still in force); a run that missed its target warns
        (``warn=False``: the caller reports it)."""
        if not self._finalized:
            self.final = self.target_report(tolerance)
            if warn and not self.final["within"]:
                warnings.warn(f"{self.method.name}: sparsity {self.final['reached']:.4f} at the end, the target "
                              f"is {self.final['promised']:.4f} (+- {self.final['tolerance']:g}): "
                              f"{self.final['cause']}", stacklevel=2)
        self.method.finalize()
        if self.kernels is not None:
            self.kernels.remove()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._finalized = True
        return self.model

    def state_dict(self) -> dict:
        return {"method": self.method.state_dict(), "meter": self.meter.state_dict(), "step": self._step,
                "started_epoch": self._started_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where :meth:`state_dict` was taken (load the model and optimizer too, the
        model after :func:`sparsify`: it applies the method's starting masks to the weights it finds,
        so RigL's or SET's weights loaded before it would lose those grown since)."""
        self.method.load_state_dict(state["method"])
        self.meter.load_state_dict(state["meter"])
        self._step = int(state["step"])
        self._started_epoch = int(state["started_epoch"])
        self._step_started = False


def sparsify(
    model: nn.Module,
    method: str,
    *,
    sparsity: float,
    steps_per_epoch: int,
    epochs: int | None = None,
    total_steps: int | None = None,
    batch_size: int | None = None,
    input_shape: Sequence[int] | None = None,
    flops: LayerFlops | None = None,
    kernels: str = "auto",
    check_schedule: bool = True,
    planning: bool = False,
    **options: Any,
) -> Sparsifier:
    """Attach the registered method ``method`` to ``model`` and return its :class:`Sparsifier`.

    ``sparsity`` is the target (STR: the target its ``targets`` entry is tuned for); the run
    lasts ``epochs`` epochs of ``steps_per_epoch`` optimizer steps, or ``total_steps`` steps
    (the last epoch may then be partial). ``batch_size`` is the examples per step for the FLOP
    meter. ``input_shape`` is one example's shape (default: read from the first training
    batch); ``flops`` reuses a measurement. ``kernels``: ``auto`` runs masked layers on sparse
    kernels where they measure faster (:mod:`acdc_bench.core.kernels`; needs sparseprop), ``portable``
    on the fixed-order kernels of portable numerics by a density rule (:mod:`acdc_bench.core.sparse`),
    ``dense`` never. ``options`` are the method's own (its ``Config``
    fields, e.g. ``distribution``, ``update_interval``); an unknown one is an error naming them.
    A schedule that cannot reach its target in the run's steps is an error here, before training
    (``check_schedule=False``: a planner trying lengths). ``planning=True``: the model is attached
    only to be planned, never trained (the method may skip what only training needs; see
    :attr:`acdc_bench.methods.SparsityMethod.planning`).
    """
    method_cls = get_method(method)
    if method_cls.sparsity_options and not set(options) & set(method_cls.sparsity_options):
        names = ", ".join(f"{name}=" for name in method_cls.sparsity_options)
        raise ValueError(
            f"sparsify: {method}'s sparsity follows its options, not sparsity={sparsity!r}: give {names} "
            f"(e.g. the values a calibration found for your model and run length); the run's sparsity is then "
            f"reported beside the target by finalize() (Sparsifier.final)")
    config = make_config(method_cls, options, where="sparsify: ")
    if batch_size is not None:  # options in examples (RigL's spacing) become steps
        config = config.for_batch_size(int(batch_size))
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsify: sparsity {sparsity!r} must be in [0, 1) (e.g. 0.9 for 90%)")
    if steps_per_epoch < 1:
        raise ValueError(f"sparsify: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if total_steps is None:
        if epochs is None:
            raise ValueError("sparsify: give epochs= or total_steps= (the run's length drives the method's schedule)")
        total_steps = int(epochs) * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    eager = unwrap_compiled(model)  # a compiled model: the layers of the module inside it, by their own names
    layers = prunable_layers(eager, config.include or (), config.exclude or ())
    if flops is None and input_shape is not None:
        flops = measure_layer_flops(eager, layers, input_shape)
    instance = method_cls(config, target_sparsity=float(sparsity), epochs=epochs,
                          steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    instance.planning = bool(planning)
    instance.setup(eager, layers, flops)
    problem = instance.schedule_problem() if check_schedule else None
    if problem:
        raise ValueError(f"sparsify: {problem}")
    return Sparsifier(model, instance, batch_size, input_shape, kernels)
