"""FLOP accounting: per-layer dense forward FLOPs, sparse inference FLOPs and the training-FLOP meter.

Convention (docs/references.md, one for every method): only convolution and linear layers
count, a multiply-add is 2 FLOPs, backward = 2 x forward. A layer's sparse forward
FLOPs are its dense forward FLOPs times its density, so they are exact integers:
non-zeros x (dense FLOPs per weight).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from acdc_bench.core.sparsity import PrunableLayer


@dataclass(frozen=True)
class LayerFlops:
    """Dense forward FLOPs per example of each prunable layer, measured once from the model."""

    names: tuple[str, ...]
    numels: tuple[int, ...]
    dense: tuple[int, ...]  # forward FLOPs per example, per layer

    # The fields are frozen, so the derived values are computed once (cached_property writes the
    # instance __dict__ directly, which a frozen dataclass allows): methods read them every step.
    @functools.cached_property
    def dense_forward(self) -> int:
        return sum(self.dense)

    @functools.cached_property
    def per_weight(self) -> tuple[int, ...]:
        return tuple(f // n for f, n in zip(self.dense, self.numels))

    def dense_training_flops(self, examples_per_epoch: int, epochs: int) -> int:
        """Dense training of ``epochs`` epochs: the denominator of every training multiplier."""
        return 3 * self.dense_forward * examples_per_epoch * epochs

    def sparse_forward(self, nonzeros: Sequence[int]) -> int:
        """Forward FLOPs per example with ``nonzeros`` weights kept in each layer."""
        return sum(map(operator.mul, nonzeros, self.per_weight))

    def sparse_forward_from_densities(self, densities: Sequence[float]) -> float:
        return sum(d * f for d, f in zip(densities, self.dense))

    def sparse_forward_tensor(self, nonzeros: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`sparse_forward` for a device tensor of counts (no host sync)."""
        cache = self.__dict__.setdefault("_per_weight_tensors", {})
        per_weight = cache.get(nonzeros.device)
        if per_weight is None:
            per_weight = cache[nonzeros.device] = torch.tensor(self.per_weight, dtype=torch.int64,
                                                               device=nonzeros.device)
        return (nonzeros.to(torch.int64) * per_weight).sum()


def measure_layer_flops(
    model: nn.Module, layers: Sequence[PrunableLayer], input_shape: Sequence[int] | None = None, *,
    example: tuple[tuple, dict] | None = None, run: Callable[[], object] | None = None,
) -> LayerFlops:
    """Run one example through ``model`` under ``FlopCounterMode`` and read each layer's FLOPs: zeros of
    ``input_shape`` (one example's shape), or ``example``, the ``(args, kwargs)`` of a real call with a
    batch of one (a transformer's token ids, so that its FLOPs follow the real sequence length), or
    ``run()``, a computation on one example that calls ``model``'s submodules itself (a Lightning
    ``training_step``), run as ``model``'s forward so that the layers carry their names in it."""
    device = next(model.parameters()).device
    if example is None:
        example = ((), {}) if run is not None else ((torch.zeros(1, *input_shape, device=device),), {})
    args, kwargs = example
    was_training = model.training
    model.eval()
    if run is not None:
        model.forward = lambda: run()  # an instance attribute: the class's forward is untouched
    try:
        # Outside any autocast region the caller is in: autocast caches its low-precision copies of
        # the weights until the region ends, so a cast made here would hide the masks a method
        # applies in place before the step's own forward pass (the FLOPs do not depend on the dtype).
        with torch.no_grad(), torch.autocast(device.type, enabled=False), \
                FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    finally:
        if run is not None:
            del model.forward
        model.train(was_training)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    dense = []
    for layer in layers:
        key = f"{prefix}.{layer.name}" if layer.name else prefix
        per_op = counts.get(key)
        if per_op is None:
            raise RuntimeError(f"FlopCounterMode saw no FLOPs for layer '{layer.name}' ({key})")
        flops = int(sum(per_op.values()))
        if flops % layer.numel:
            raise RuntimeError(
                f"layer '{layer.name}': {flops} FLOPs is not a whole multiple of its "
                f"{layer.numel} weights; is the module called more than once per forward?"
            )
        dense.append(flops)
    return LayerFlops(
        names=tuple(layer.name for layer in layers),
        numels=tuple(layer.numel for layer in layers),
        dense=tuple(dense),
    )


def inference_report(flops: LayerFlops, densities: Sequence[float], shapes: Sequence[tuple]) -> dict:
    """The ``flops`` command's JSON: dense and sparse forward FLOPs and each layer's density."""
    sparse = flops.sparse_forward_from_densities(densities)
    return {
        "dense_forward_flops": flops.dense_forward,
        "sparse_forward_flops": sparse,
        "inference_flops_multiplier": sparse / flops.dense_forward,
        "layers": [
            {"name": name, "shape": list(shape), "density": density, "dense_forward_flops": dense}
            for name, shape, density, dense in zip(flops.names, shapes, densities, flops.dense)
        ],
    }


class TrainingFlopMeter:
    """Accumulates training FLOPs step by step, as the run goes.

    Each step adds (FLOPs per example of that step) x (examples in the step, all ranks).
    A per-example cost may be a Python int or a device tensor (methods whose density
    changes every step, such as STR, measure it on the device without a host sync).
    """

    def __init__(self) -> None:
        self._total: int | torch.Tensor = 0
        self.steps = 0
        self.examples = 0

    def add(self, flops_per_example: int | torch.Tensor, examples: int) -> None:
        total = self._total
        if (isinstance(total, torch.Tensor) and isinstance(flops_per_example, torch.Tensor)
                and total.dtype == flops_per_example.dtype == torch.int64
                and total.shape == flops_per_example.shape and total.device == flops_per_example.device
                and not (total.requires_grad or flops_per_example.requires_grad)):
            # One in-place kernel instead of a multiply and an add (the total is this meter's
            # own tensor, created by the expression below); int64 arithmetic: the same sum.
            total.add_(flops_per_example, alpha=examples)
        else:
            self._total = total + flops_per_example * examples
        self.steps += 1
        self.examples += examples

    @property
    def total(self) -> int:
        if isinstance(self._total, torch.Tensor):
            self._total = int(self._total.item())
        return int(self._total)

    def state_dict(self) -> dict:
        return {"total": self.total, "steps": self.steps, "examples": self.examples}

    def load_state_dict(self, state: dict) -> None:
        self._total = int(state["total"])
        self.steps = int(state["steps"])
        self.examples = int(state["examples"])


def rigl_training_flops_per_example(sparse_forward: float, dense_forward: float, update_interval: int) -> float:
    """RigL's amortised cost per example: (3 f_S dT + 2 f_S + f_D) / (dT + 1)."""
    dt = update_interval
    return (3 * sparse_forward * dt + 2 * sparse_forward + dense_forward) / (dt + 1)
