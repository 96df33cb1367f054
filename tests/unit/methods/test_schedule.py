"""A method's schedule: one object that its hooks follow and that the planner counts FLOPs from."""

from __future__ import annotations

import pytest

from acdc_bench.methods import MaskChange, MaskedMethod, Schedule, register_method
from acdc_bench.testing import check_method
from helpers import attach, make_optimizer, tiny_mlp, train_step


def test_a_schedule_says_what_is_in_force_at_every_step():
    schedule = Schedule(25, 10, changes=(MaskChange(5, 0.5), MaskChange(12, 0.9), MaskChange(20, 0.0, "dense")),
                        updates=range(0, 20, 4), dense_gradient=True)
    assert schedule.epochs == 3 and list(schedule.epoch_steps(2)) == list(range(20, 25))
    assert [schedule.in_force(step).sparsity for step in (0, 4, 5, 11, 12, 19, 20, 24)] == \
        [0.0, 0.0, 0.5, 0.5, 0.9, 0.9, 0.0, 0.0]
    assert schedule.change_at(12) == MaskChange(12, 0.9) and schedule.change_at(13) is None
    assert [schedule.phase(epoch) for epoch in range(3)] == ["sparse", "sparse", "dense"]  # at each epoch's end
    assert schedule.middle(0).sparsity == 0.0 and schedule.middle(1).sparsity == 0.9  # steps 4 and 14
    assert [(s.begin, s.end, s.sparsity, s.dense_gradient_steps) for s in schedule.segments(0, 10)] == \
        [(0, 5, 0.0, 2), (5, 10, 0.5, 1)]  # updates at 0, 4 | 8
    assert schedule.updates_between(0, 20) == 5 and schedule.updates_between(1, 4) == 0
    assert schedule.needs_dense_gradient(8) and not schedule.needs_dense_gradient(9)
    assert not Schedule(25, 10, updates=range(0, 20, 4)).needs_dense_gradient(8)  # SET: updates, no dense gradient


@pytest.mark.parametrize("bad, words", [
    (dict(changes=(MaskChange(5, 0.5), MaskChange(5, 0.9))), "increasing steps"),
    (dict(changes=(MaskChange(3, 0.5, "compressed"),)), "phase must be one of dense, sparse"),
    (dict(changes=(MaskChange(3, 1.5),)), "sparsity must be in [0, 1]"),
    (dict(updates=range(10, 0, -1)), "increasing range"),
])
def test_a_malformed_schedule_is_refused_naming_what_is_wrong(bad, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Schedule(100, 10, **bad)


@pytest.mark.parametrize("name, options", [
    ("gmp", {"start_fraction": 0.2, "end_fraction": 0.6, "frequency": 7}),
    ("acdc", {"warmup_epochs": 1, "phase_epochs": 2, "final_dense_epochs": 1, "final_sparse_epochs": 2,
              "schedule_epochs": 10, "distribution": "uniform"}),
    ("rigl", {"update_interval": 7}),
    ("set", {"update_interval": 7}),
])
def test_the_hooks_do_what_the_schedule_says(name, options):
    """At every step: the masks hold the schedule's sparsity in force (whole weights: 0.9 of 600
    and of 300 are whole), masking is on exactly in its sparse phase, and the masks move (or
    RigL's step skips its optimizer update) exactly at its changes and updates."""
    model = tiny_mlp()
    method = attach(name, options, model, total_steps=100, steps_per_epoch=10)
    schedule = method.schedule
    assert not schedule.estimated
    optimizer = make_optimizer(method, model)
    for step in range(100):
        if step % 10 == 0:
            method.on_epoch_start(step // 10)
        before = [mask.clone() for mask in method.masks.masks]
        stepped, _ = train_step(method, model, optimizer, step)
        in_force = schedule.in_force(step)
        assert method.masking == (in_force.phase == "sparse"), step
        if method.masking:
            assert method.masks.sparsity() == pytest.approx(in_force.sparsity, abs=1 / 900), step
        moved = any(not (a == b).all() for a, b in zip(before, method.masks.masks))
        if moved:
            assert schedule.change_at(step) is not None or schedule.is_update(step), step
        # RigL's update step replaces the optimizer's update; SET's trains, then updates the masks
        assert stepped == (not (schedule.is_update(step) and name == "rigl")), step
        assert method.needs_dense_gradient(step) == schedule.needs_dense_gradient(step)
    assert method.schedule.dense_gradient == (name == "rigl")


@register_method("schedule-only")
class ScheduleOnly(MaskedMethod):
    """Dense for the first half of the run, then one-shot pruned; plans from nothing but its schedule."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.schedule = Schedule(self.total_steps, self.steps_per_epoch,
                                 changes=(MaskChange(self.total_steps // 2, self.target_sparsity),))

    def on_step_start(self, step):
        change = self.schedule.change_at(step)
        if change is not None:
            self.prune_by_magnitude(change.sparsity)


def test_a_method_that_declares_only_a_schedule_is_planned_from_it(one_thread):
    report = check_method("schedule-only", options={"distribution": "uniform"}, ranks=1)
    assert "plan" in report.passed and "target" in report.passed
    method = attach("schedule-only", {"distribution": "uniform"}, tiny_mlp(), total_steps=95, steps_per_epoch=10)
    assert [method.phase(epoch) for epoch in (3, 4, 9)] == ["dense", "sparse", "sparse"]
    dense = method.flops.sparse_forward_from_densities([1.0, 1.0])
    sparse = method.flops.sparse_forward_from_densities([0.1, 0.1])
    # Epoch 4 holds steps 40..49, the mask from step 47 on: 7 dense steps, then 3 at 10% of the weights.
    assert method.planned_training_flops_per_example(4) == pytest.approx(3 * (7 * dense + 3 * sparse) / 10)
    assert method.planned_training_flops_per_example(9) == pytest.approx(3 * sparse)  # the partial last epoch
