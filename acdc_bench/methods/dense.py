"""Dense training: no masks; the unit of every FLOP multiplier."""

from __future__ import annotations

from acdc_bench.methods.base import SparsityMethod
from acdc_bench.methods.registry import register_method


@register_method("dense")
class Dense(SparsityMethod):
    """Dense training: no masks; the reference for every FLOP multiplier."""
    display_name, color, marker = "Dense", "black", "*"  # in tables, legends and figures

    sparsity_tolerance = 0.0

    def planned_densities(self, epoch: int) -> list[float]:
        return [1.0] * len(self.layers)

    def dense_pair_epoch(self) -> int | None:
        return self.epochs - 1

    def promised_sparsity(self) -> float:
        """Dense training promises no sparsity, whatever target it is given."""
        return 0.0

    def final_sparsity(self) -> float:
        return 0.0
