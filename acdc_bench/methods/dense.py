"""Dense training: no masks; the unit of every FLOP multiplier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from acdc_bench.methods.base import MethodConfig, SparsityMethod
from acdc_bench.methods.registry import register_method
from acdc_bench.methods.schedule import Schedule


@dataclass
class DenseConfig(MethodConfig):
    """Dense training has no options; its runs record the distribution ``dense``."""

    distribution = "dense"  # not an option: what a dense run records


@register_method("dense")
class Dense(SparsityMethod):
    """Dense training: no masks; the reference for every FLOP multiplier."""
    display_name, color, marker = "Dense", "black", "*"  # in tables, legends and figures

    Config: ClassVar[type] = DenseConfig

    sparsity_tolerance = 0.0

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.schedule = Schedule(self.total_steps, self.steps_per_epoch)  # dense throughout

    def dense_pair_epoch(self) -> int | None:
        return self.epochs - 1

    def promised_sparsity(self) -> float:
        """Dense training promises no sparsity, whatever target it is given."""
        return 0.0

    def final_sparsity(self) -> float:
        return 0.0
