"""RigL: Rigging the Lottery (Evci et al., ICML 2020).

Faithful to docs/references.md and the official code (``google-research/rigl``):

- random initial masks with fixed per-layer densities, ERK (all layers sparse, the
  default) or uniform (``keep_dense``, e.g. ``conv1``: RigL keeps the first layer
  dense); drawn from a ``torch.Generator`` seeded with ``mask_seed``, so every
  data-parallel rank draws the same masks; the weights are masked at set-up;
- every ``update_interval`` (dT) steps while ``step < T_end`` (``end_fraction`` of the
  run), from step 0 on as the official code does (``update_at_step_zero``), per layer: drop
  the ``k = floor(alpha_t n_active)`` active weights of smallest magnitude plus N(0, 1e-5)
  noise (``drop_noise_std``; the noise is drawn from a generator seeded by ``mask_seed``, the
  step and the layer's name, so every rank draws the same), then grow ``k`` positions that are inactive after
  the drop with the largest magnitude of the dense gradient of the current batch
  (the raw ``.grad`` before masking), ``alpha_t = alpha/2 (1 + cos(pi t / T_end))``;
- a new connection (inactive before the update) starts at 0 with its momentum reset
  to 0; a weight dropped and regrown in the same update keeps its value and momentum
  (the official code re-initialises only ``old mask == 0 and new mask == 1``);
- the optimizer step is skipped on an update step; per-layer non-zeros never change;
- ties (equal magnitudes or gradients) are broken by position, lower index first (what a
  stable sort gives, and TF's ``top_k``), so the masks are the same on every rank given
  the same weights and all-reduced gradients; the k entries are selected without sorting,
  by the selection magnitude pruning uses (:func:`acdc_bench.core.sparsity.mask_from_scores`);
- ``epochs_multiplier`` (1x, 2x, 5x) scales the number of steps, the lr schedule and
  T_end (through the harness: :func:`acdc_bench.config.run_config`); dT stays fixed.

Training FLOPs per example (RigL's appendix): ``3 f_S`` on a normal step and
``2 f_S + f_D`` on an update step (dense gradient, no weight update), which amortises
to ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)`` before T_end.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from acdc_bench.methods import MaskChange, MaskedConfig, MaskedMethod, Schedule, register_method
from acdc_bench.core.sparsity import layer_densities, mask_from_scores


@dataclass
class RiglConfig(MaskedConfig):
    """RigL options (paper defaults: ERK, dT = 100, alpha = 0.3 cosine-annealed, T_end = 75%)."""

    distribution: str = "erk"
    update_interval: int = 100
    alpha: float = 0.3
    end_fraction: float = 0.75
    mask_seed: int = 0
    #: Training-length variant: 1x, 2x, 5x of the suite's epochs (steps, lr schedule and T_end scale).
    epochs_multiplier: float = 1
    #: Examples between mask updates (official ImageNet: 100 steps x batch 4096 = 409,600). When set,
    #: the harness (acdc_bench.config.run_config) resolves ``update_interval`` from it for the run's
    #: batch size (:meth:`for_batch_size`), so the spacing in examples is the official one at any batch.
    update_interval_examples: int | None = None
    #: The official code's first update is at step 0 (``last_update_step`` starts at -dT).
    update_at_step_zero: bool = True
    #: Standard deviation of the normal noise added to the drop scores (official: 1e-5); 0: none.
    drop_noise_std: float = 1e-5

    def validate(self) -> None:
        super().validate()
        if self.distribution == "global":
            raise ValueError("RigL needs fixed per-layer densities: distribution 'erk' or 'uniform', not 'global'")
        if not isinstance(self.update_interval, int) or self.update_interval < 1:
            raise ValueError(f"RigL update_interval must be a positive integer, got {self.update_interval!r}")
        if self.update_interval_examples is not None and (
                not isinstance(self.update_interval_examples, int) or isinstance(self.update_interval_examples, bool)
                or self.update_interval_examples < 1):
            raise ValueError(f"RigL update_interval_examples must be a positive integer number of examples or null, "
                             f"got {self.update_interval_examples!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"RigL alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.end_fraction <= 1.0:
            raise ValueError(f"RigL end_fraction must be in [0, 1], got {self.end_fraction}")
        if not self.epochs_multiplier > 0:
            raise ValueError(f"RigL epochs_multiplier must be positive, got {self.epochs_multiplier}")
        if not (isinstance(self.drop_noise_std, (int, float)) and not isinstance(self.drop_noise_std, bool)
                and self.drop_noise_std >= 0):
            raise ValueError(f"RigL drop_noise_std must be a number >= 0, got {self.drop_noise_std!r}")

    def for_batch_size(self, batch_size: int) -> "RiglConfig":
        """This config with ``update_interval`` = ``update_interval_examples`` / ``batch_size`` steps
        (rounded, at least 1); unchanged when ``update_interval_examples`` is null."""
        if self.update_interval_examples is None:
            return self
        steps = max(1, round(self.update_interval_examples / batch_size))
        return dataclasses.replace(self, update_interval=int(steps))


def cosine_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """alpha_t = alpha / 2 (1 + cos(pi t / T_end)); 0 from T_end on."""
    if step >= end_step:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / end_step))


def random_mask(shape: torch.Size, nonzeros: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask of ``shape`` with exactly ``nonzeros`` True positions drawn uniformly (on CPU)."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:nonzeros]] = True
    return mask.view(shape)


def leading_mask(shape: torch.Size, nonzeros: int) -> torch.Tensor:
    """Boolean mask of ``shape`` whose first ``nonzeros`` positions are True: the non-zero count of
    :func:`random_mask` without its draw, for a method attached only to be planned."""
    mask = torch.zeros(math.prod(shape), dtype=torch.bool)
    mask[:nonzeros] = True
    return mask.view(shape)


@register_method("rigl")
class RigL(MaskedMethod):
    """RigL with drop/grow mask updates every ``update_interval`` steps until ``end_fraction``."""
    display_name, color, marker = "RigL", "tab:green", "s"  # in tables, legends and figures

    Config: ClassVar[type] = RiglConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.end_step = int(round(config.end_fraction * self.total_steps))
        # Sparse from the start (random masks at set-up); drop and grow every dT steps before T_end,
        # from step 0 on as the official code does (update_at_step_zero), else from step dT.
        interval = config.update_interval
        self.schedule = Schedule(self.total_steps, self.steps_per_epoch,
                                 initial=MaskChange(0, self.target_sparsity, "sparse"),
                                 updates=range(0 if config.update_at_step_zero else interval, self.end_step, interval),
                                 dense_gradient=self.dense_gradient)
        self.last_update: dict | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, model, layers, flops) -> None:
        super().setup(model, layers, flops)
        self.densities = layer_densities(self.config.distribution, self.layers, self.target_sparsity,
                                         self.config.keep_dense)
        generator = torch.Generator().manual_seed(int(self.config.mask_seed))
        masks = []
        for layer, density in zip(self.layers, self.densities):
            keep = int(round(density * layer.numel))
            # planning reads the masks' non-zero counts only: where they lie is not drawn
            masks.append(leading_mask(layer.weight.shape, keep) if self.planning
                         else random_mask(layer.weight.shape, keep, generator))
        self.masks.set(masks)
        self.masks.apply_to_weights()
        self.masking = True
        self._sparse_forward = None

    @property
    def sparse_forward(self) -> int:
        """Forward FLOPs of the masks (per-layer non-zeros never change: computed once)."""
        if self._sparse_forward is None:
            self._sparse_forward = self.flops.sparse_forward(self.masks.nonzeros)
        return self._sparse_forward

    # ------------------------------------------------------------------ schedule
    def drop_fraction(self, step: int) -> float:
        return cosine_drop_fraction(step, self.config.alpha, self.end_step)

    # ------------------------------------------------------------------ hooks
    def before_optimizer_step(self, step: int) -> bool:
        if self.schedule.is_update(step):
            self.update_masks(step)
            return False
        return super().before_optimizer_step(step)

    #: Growth reads the dense gradient of the update step's batch (RigL): that step then costs
    #: 2 f_S + f_D instead of 3 f_S. A subclass whose :meth:`grow_scores` does not (SET) sets False.
    dense_gradient: ClassVar[bool] = True

    def layer_generator(self, layer, step: int, purpose: str = "") -> torch.Generator:
        """A CPU generator seeded by ``mask_seed``, the step and the layer's name (and ``purpose``):
        every data-parallel rank draws the same numbers."""
        name = f"{layer.name}/{purpose}" if purpose else layer.name
        seed = hash((int(self.config.mask_seed), step, zlib.crc32(name.encode()))) % 2**63
        return torch.Generator().manual_seed(seed)

    def drop_scores(self, layer, step: int) -> torch.Tensor:
        """Flat scores of one layer's weights, |w| plus N(0, drop_noise_std^2) noise drawn the same on
        every rank (seeded by ``mask_seed``, the step and the layer's name): the k active weights of
        smallest score are dropped."""
        scores = layer.weight.detach().reshape(-1).abs()
        if not self.config.drop_noise_std:
            return scores
        noise = torch.randn(layer.numel, generator=self.layer_generator(layer, step, "drop"))
        return scores.float() + (noise * self.config.drop_noise_std).to(scores.device)

    def grow_scores(self, layer, step: int) -> torch.Tensor:
        """Flat scores: the k positions inactive after the drop with the largest grow (RigL: |dense grad|)."""
        return torch.nan_to_num(layer.weight.grad.detach().reshape(-1).float().abs(), nan=0.0,
                                posinf=torch.finfo(torch.float32).max)

    @torch.no_grad()
    def update_masks(self, step: int) -> None:
        """Drop the active weights of smallest drop score and grow where the grow score is largest."""
        alpha_t = self.drop_fraction(step)
        counts = []
        for index, layer in enumerate(self.layers):
            weight = layer.weight
            n_active = self.masks.nonzeros[index]
            k = int(math.floor(alpha_t * n_active))
            if (self.dense_gradient and weight.grad is None) or k == 0 or n_active == layer.numel:
                counts.append(0)
                continue
            mask = self.masks.masks[index]
            # Scores in logical (row-major) order: reshape copies a channels_last tensor, so the
            # selection is done on flat copies and written back with full-shape boolean masks.
            old = mask.reshape(-1)
            # Drop: the k active weights of smallest score (ties: lower index first).
            drop = self.drop_scores(layer, step)
            after_drop = old & mask_from_scores(drop.masked_fill(~old, math.inf), k,
                                                magnitudes=not self.config.drop_noise_std)
            # Grow: the k positions inactive after the drop with the largest score (ties: lower index first).
            grow = self.grow_scores(layer, step)
            new = after_drop | ~mask_from_scores(grow.neg().masked_fill(after_drop, math.inf), k)
            new = new.view(weight.shape)
            new_connections = new & ~mask
            removed = mask & ~new
            weight.detach().masked_fill_(new_connections | removed, 0.0)
            if self.optimizer is not None:
                buffer = self.optimizer.state.get(weight, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer.masked_fill_(new_connections, 0.0)
            mask.copy_(new)
            counts.append(k)
        # Per-layer non-zeros are unchanged by construction: no recount (no host sync).
        self.last_update = {"step": step, "alpha_t": alpha_t, "k": counts}

    # ------------------------------------------------------------------ FLOPs and planning
    def step_training_flops(self, step: int) -> int:
        """2 f_S + f_D on an update step (dense gradient, no weight update), else 3 f_S."""
        if self.schedule.needs_dense_gradient(step):
            return 2 * self.sparse_forward + self.flops.dense_forward
        return 3 * self.sparse_forward

    # ------------------------------------------------------------------ state
    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._sparse_forward = None
