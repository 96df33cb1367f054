"""SET: Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018).

As the RigL paper runs it (``google-research/rigl``'s ``SparseSETOptimizer``): RigL's masks,
schedule and magnitude drop, but the ``k`` dropped connections regrow at positions drawn
uniformly at random among the inactive ones, so no dense gradient is needed and an update
step costs what any step does (3 f_S). The draw is seeded by ``mask_seed`` and the step,
so every data-parallel rank grows the same connections. Unlike RigL's, SET's update step
trains as well: ``SparseSETOptimizerBase.apply_gradients`` applies the optimizer's update and
then, on an update iteration, the mask update (RigL replaces the update by the mask update).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from acdc_bench.baselines.rigl import RigL
from acdc_bench.methods.base import MaskedMethod
from acdc_bench.methods import register_method


@register_method("set")
class SET(RigL):
    """RigL with random growth."""
    display_name, color, marker = "SET", "tab:pink", "v"  # in tables, legends and figures

    dense_gradient: ClassVar[bool] = False

    def before_optimizer_step(self, step: int) -> bool:
        return MaskedMethod.before_optimizer_step(self, step)  # every step trains (the masked gradient)

    def after_optimizer_step(self, step: int) -> None:
        super().after_optimizer_step(step)
        if self.schedule.is_update(step):
            self.update_masks(step)  # after the weights moved: drop by their new magnitudes

    def grow_scores(self, layer, step: int) -> torch.Tensor:
        return torch.rand(layer.numel, generator=self.layer_generator(layer, step)).to(layer.weight.device)
