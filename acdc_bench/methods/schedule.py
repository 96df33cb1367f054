"""A method's schedule: when its masks change and to which sparsity, read by its hooks and by the planner.

A sparse-training method is an algorithm (how a mask is chosen: magnitude top-k, drop and grow,
a learned threshold) plus a schedule (at which steps the masks change, and to which sparsity).
The schedule is a small frozen object that a method builds once from its options and the run's
length (``self.schedule``). Its hooks ask it what to do at a step (GMP: ``change_at(step)``;
RigL: ``step in schedule.updates``), and the planner reads it to estimate the run's cost without
training (:meth:`acdc_bench.methods.SparsityMethod.planned_training_flops_per_example`), so a
method does not write its schedule a second time as a planning model.

Steps are the run's optimizer steps, counted from 0; an epoch holds ``steps_per_epoch`` of them
(the last one may be partial).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

PHASES = ("dense", "sparse")


@dataclass(frozen=True)
class MaskChange:
    """From ``step`` on, the masks hold ``sparsity`` of the prunable weights (in the method's layout
    over the layers); ``phase`` is what reports call that stretch (``dense``: no mask in force)."""

    step: int
    sparsity: float
    phase: str = "sparse"


@dataclass(frozen=True)
class Segment:
    """Steps ``begin..end-1`` under one mask sparsity; ``dense_gradient_steps`` of them are update
    steps whose backward pass computes the dense weight gradient (RigL's growth)."""

    begin: int
    end: int
    sparsity: float
    dense_gradient_steps: int = 0


@dataclass(frozen=True)
class Schedule:
    """When a run's masks change and to which sparsity.

    ``initial``: what is in force before the first change (default: dense). ``changes``: the steps
    at which the sparsity or the phase changes, in increasing order (GMP's mask updates, AC/DC's
    phase boundaries). ``updates``: steps at which the masks move connections and keep their
    sparsity (RigL's and SET's drop and grow, after the step's backward pass). ``dense_gradient``:
    an update step's backward pass computes the dense weight gradient and takes no optimizer
    update, so it costs ``2 f_S + f_D`` instead of ``3 f_S`` (RigL; not SET). ``estimated``: the
    schedule is a planning estimate that the hooks do not follow (STR's sparsity is learned).
    """

    total_steps: int
    steps_per_epoch: int
    initial: MaskChange = MaskChange(0, 0.0, "dense")
    changes: tuple[MaskChange, ...] = ()
    updates: range = range(0)
    dense_gradient: bool = False
    estimated: bool = False
    _steps: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _at: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"a schedule needs steps_per_epoch >= 1, got {self.steps_per_epoch}")
        changes = tuple(self.changes)
        steps = tuple(change.step for change in changes)
        if any(later <= earlier for earlier, later in zip(steps, steps[1:])) or (steps and steps[0] < 0):
            raise ValueError(f"a schedule's changes must be at increasing steps >= 0, got {list(steps)}")
        for change in (self.initial, *changes):
            if change.phase not in PHASES:
                raise ValueError(f"a schedule's phase must be one of {', '.join(PHASES)}, got {change.phase!r}")
            if not 0.0 <= change.sparsity <= 1.0:
                raise ValueError(f"a schedule's sparsity must be in [0, 1], got {change.sparsity!r} at step {change.step}")
        if not isinstance(self.updates, range) or self.updates.step < 1:
            raise ValueError(f"a schedule's updates must be an increasing range of steps, got {self.updates!r}")
        object.__setattr__(self, "changes", changes)
        object.__setattr__(self, "_steps", steps)
        object.__setattr__(self, "_at", {change.step: change for change in changes})

    # ------------------------------------------------------------------ what the hooks ask
    def change_at(self, step: int) -> MaskChange | None:
        """The change that takes effect at ``step`` (None: the masks keep their sparsity)."""
        return self._at.get(step)

    def in_force(self, step: int) -> MaskChange:
        """The sparsity and phase that the forward pass of ``step`` uses."""
        index = bisect.bisect_right(self._steps, step)
        return self.changes[index - 1] if index else self.initial

    def is_update(self, step: int) -> bool:
        """Whether the masks move connections at ``step`` (drop and grow)."""
        return step in self.updates

    def needs_dense_gradient(self, step: int) -> bool:
        """Whether ``step``'s backward pass must compute the dense weight gradient."""
        return self.dense_gradient and step in self.updates

    # ------------------------------------------------------------------ what the planner reads
    @property
    def epochs(self) -> int:
        """Epochs the run's steps span (the last may be partial)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def epoch_steps(self, epoch: int) -> range:
        """The steps of ``epoch``."""
        first = epoch * self.steps_per_epoch
        return range(first, min(self.total_steps, first + self.steps_per_epoch))

    def phase(self, epoch: int) -> str:
        """The phase in force at the last step of ``epoch``."""
        steps = self.epoch_steps(epoch)
        return self.in_force(steps[-1] if steps else steps.start).phase

    def middle(self, epoch: int) -> MaskChange:
        """What is in force at the middle step of ``epoch`` (the planner's per-epoch densities)."""
        steps = self.epoch_steps(epoch)
        return self.in_force((steps.start + steps.stop - 1) // 2 if steps else steps.start)

    def segments(self, first: int, stop: int) -> list[Segment]:
        """Steps ``first..stop-1`` split where the sparsity or phase changes, in order."""
        inside = self._steps[bisect.bisect_right(self._steps, first): bisect.bisect_left(self._steps, stop)]
        starts = [first, *inside]
        segments = []
        for begin, end in zip(starts, [*starts[1:], stop]):
            dense = self.updates_between(begin, end) if self.dense_gradient else 0
            segments.append(Segment(begin, end, self.in_force(begin).sparsity, dense))
        return segments

    def updates_between(self, begin: int, end: int) -> int:
        """How many update steps lie in ``begin..end-1``."""
        return bisect.bisect_left(self.updates, end) - bisect.bisect_left(self.updates, begin)

    def change_steps(self) -> list[int]:
        """The steps at which the sparsity or the phase changes."""
        return list(self._steps)
