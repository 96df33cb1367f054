"""Planning without training: per-epoch phases, lr and sparsity, estimated training FLOPs, matched budgets."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

from acdc_bench.core.flops import measure_layer_flops
from acdc_bench.methods import get_method
from acdc_bench.models import build_model, model_spec
from acdc_bench.core.sparsity import prunable_layers
from acdc_bench.config.run import RunConfig, as_run_config

MATCH_TOLERANCE = 0.02

#: Per-layer FLOPs depend on the architecture and the layers only, not on the weights: measured
#: once per (model, layers) and process (budget matching plans many runs of one model).
_FLOPS: dict = {}


def _layer_flops(model, model_name: str, layers):
    key = (model_name, tuple((layer.name, tuple(layer.shape)) for layer in layers))
    if key not in _FLOPS:
        _FLOPS[key] = measure_layer_flops(model, layers, model_spec(model_name).input_shape)
    return _FLOPS[key]


@functools.lru_cache(maxsize=3)
def _initialised(model_name: str, num_classes: int | None, seed: int):
    """A freshly initialised model and the RNG state its initialisation left, per process: planning
    every run of a suite copies it (0.06 s for ResNet50 on a 2-core AMD EPYC) instead of drawing
    the same weights again (0.22 s). Three held: a suite's three seeds."""
    import torch

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes)
    return model, torch.get_rng_state()


def fresh_model(model_name: str, num_classes: int | None, seed: int):
    """What ``torch.manual_seed(seed); build_model(model_name, num_classes)`` gives, weights and
    global RNG state alike, from the cache of :func:`_initialised`."""
    import torch

    model, rng_state = _initialised(model_name, num_classes, seed)
    torch.set_rng_state(rng_state)
    return copy.deepcopy(model)


def train_size(config: RunConfig) -> int:
    from acdc_bench.data import DATASETS

    size = DATASETS[config.dataset].train_size
    return min(size, config.train_subset) if config.train_subset else size


class Planner:
    """A method attached to a freshly initialised model of the run's architecture (no data, no training).

    The model, its prunable layers and their FLOPs are measured once; :meth:`for_length`
    re-plans the same method for another run length cheaply (used by budget matching).
    ``config``: a :class:`~acdc_bench.config.run.RunConfig` (or a ``config.yaml`` mapping).
    """

    def __init__(self, config: RunConfig, num_classes: int | None = None):
        self.config = config = as_run_config(config)
        # The model's registered class count (the real data's); a data set on disk with fewer
        # classes (a test's small ImageFolder) gives a smaller classifier: pass its count.
        self.model = fresh_model(config.model, num_classes, config.seed)
        self.method_cls = get_method(config.method)
        self.method_config = config.method_config
        self.layers = prunable_layers(
            self.model, self.method_config.include or (), self.method_config.exclude or ()
        )
        self.flops = _layer_flops(self.model, config.model, self.layers)
        self.train_size = train_size(config)
        self.steps_per_epoch = math.ceil(self.train_size / config.batch_size)
        self.for_length(config.length.steps(self.steps_per_epoch))

    def for_length(self, total_steps: int) -> "Planner":
        """Re-plan for a run of ``total_steps`` optimizer steps (the last epoch may be partial)."""
        from acdc_bench.api import sparsify

        self.total_steps = int(total_steps)
        self.method = sparsify(self.model, self.config.method, sparsity=self.config.sparsity,
                               steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                               batch_size=self.config.batch_size, flops=self.flops, check_schedule=False, planning=True,
                               **dataclasses.asdict(self.method_config)).method
        self.epochs_count = self.method.epochs  # the length in epochs, as sparsify counts it (the last may be partial)
        return self

    @property
    def dense_training_flops(self) -> int:
        """Dense training of the suite's own length: the denominator of every training multiplier."""
        return self.flops.dense_training_flops(self.train_size, self.config.suite_epochs)

    def epoch_examples(self, epoch: int) -> int:
        steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
        return self.train_size if steps == self.steps_per_epoch else steps * self.config.batch_size

    def epochs(self) -> list[dict]:
        rows = []
        total = self.flops.dense_forward
        for epoch in range(self.epochs_count):
            densities = self.method.planned_densities(epoch)
            kept = sum(d * layer.numel for d, layer in zip(densities, self.layers))
            per_example = self.method.planned_training_flops_per_example(epoch)
            rows.append({
                "epoch": epoch,
                "phase": self.method.phase(epoch),
                "target_sparsity": 1.0 - kept / sum(layer.numel for layer in self.layers),
                "lr": self.config.lr_at(epoch, epochs=self.epochs_count),
                "forward_flops_multiplier": self.flops.sparse_forward_from_densities(densities) / total,
                "training_flops": per_example * self.epoch_examples(epoch),
            })
        return rows

    def estimated_training_flops(self) -> float:
        return sum(row["training_flops"] for row in self.epochs())


def plan(config: RunConfig, num_classes: int | None = None) -> dict:
    """The ``plan`` command's data for one run configuration (``num_classes``: see :class:`Planner`)."""
    planner = Planner(config, num_classes)
    config = planner.config
    problem = planner.method.schedule_problem()
    if problem:  # what `run` would refuse before training, plan refuses too
        raise ValueError(f"{config.run_id}: {problem}")
    rows = planner.epochs()
    total = sum(row["training_flops"] for row in rows)
    return {
        "suite": config.suite,
        "method": config.method,
        "sparsity": config.sparsity,
        "epochs": planner.epochs_count,
        "train_steps": planner.total_steps,
        "suite_epochs": config.suite_epochs,
        "steps_per_epoch": planner.steps_per_epoch,
        "dense_forward_flops": planner.flops.dense_forward,
        "estimated_training_flops": total,
        "dense_training_flops": planner.dense_training_flops,
        "estimated_training_flops_multiplier": total / planner.dense_training_flops,
        "budget": config.budget.as_dict(),
        "recipe": config.recipe(),
        "method_options": config.method_options,
        "rows": rows,
    }


def solve_matched_steps(planner: Planner, reference_training_flops: float) -> tuple[int, float]:
    """Number of training steps whose estimated FLOPs come closest to ``reference_training_flops``.

    The estimated cost grows with the run length, so a bisection over whole steps
    (the lr, pruning and update schedules all stretch with the length) finds it.
    """
    def cost(steps: int) -> float:
        return planner.for_length(steps).estimated_training_flops()

    low, high = 1, planner.steps_per_epoch * max(1, planner.config.suite_epochs)
    limit = 50 * high
    while cost(high) < reference_training_flops and high < limit:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if cost(middle) < reference_training_flops:
            low = middle
        else:
            high = middle
    best = min((low, high), key=lambda steps: abs(cost(steps) - reference_training_flops))
    return best, cost(best)
