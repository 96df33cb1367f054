"""GMP: gradual magnitude pruning (Zhu and Gupta 2017), as run on ImageNet by Gale et al. 2019.

Faithful to docs/references.md:

- the target sparsity at step t follows the cubic schedule
  ``s_t = s_f (1 - (1 - p)^3)`` with ``p = clip((t - t0) / (t1 - t0), 0, 1)``
  (``s_i = 0``): dense before ``t0``, the final target from ``t1`` on;
- between ``t0`` and ``t1`` the mask is recomputed from the current magnitudes every
  ``frequency`` steps (``t0``, ``t0 + f``, ...) and once more at ``t1`` exactly, so the
  final target is reached at ``t1`` whatever ``f``; no update after ``t1``;
- pruned weights get no gradient and stay zero (the mask multiplies the gradients
  and is re-applied after every optimizer step, :class:`MaskedMethod`);
- per-layer (``uniform``) magnitude top-k by default: Gale et al.'s standard runs
  prune every layer; ``global`` (one threshold) and ``keep_dense`` are supported.

Defaults are Gale et al.'s best ImageNet ResNet50 grid point scaled to the run:
pruning starts at step 40k of ~128k (``start_fraction`` 0.3125), the mask is updated
every 2000 of 128k steps, and it ends at 78% of training (``end_fraction``; the RigL
FLOP notebook models GMP as pruning from 31% to 78% of training).

Gale et al.'s best runs end pruning at a different step for each target (their checkpoint
names ``standard_threshold_<sparsity>_<begin>_<end>_<frequency>_<label smoothing>``: 100k
of 128k steps at 80% and 98%, 76k at 90%, 68k at 95%): ``targets: {0.9: {end_fraction:
0.59375}}`` overrides ``start_fraction``, ``end_fraction`` or ``frequency`` for one target;
a target without an entry uses the top-level values.

Gale et al.'s extended runs (RigL's "Pruning 1.5x") keep the first conv dense and the fc at 80%
sparsity whatever the target: ``layer_sparsity: {fc: 0.8}`` prunes the named layers to their own
sparsity and the other pruned layers to the one sparsity that brings all pruned layers together to
the target; each layer follows the cubic schedule to its own final sparsity. Their mask spacing is
a fraction of the run (2000, 1000 or 500 of 48k steps): ``frequency_fraction``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from acdc_bench.methods import MaskChange, MaskedConfig, MaskedMethod, Schedule, register_method, target_entry

#: Gale et al.'s ImageNet ResNet50 runs: ~128k steps (batch 1024, ~102 epochs), mask update every 2000.
GALE_TOTAL_STEPS = 128_000
GALE_FREQUENCY = 2_000


@dataclass
class GmpConfig(MaskedConfig):
    """GMP options: when pruning starts and ends (fractions of the run's steps) and how often."""

    distribution: str = "uniform"
    start_fraction: float = 40_000 / GALE_TOTAL_STEPS  # 0.3125
    end_fraction: float = 0.78
    #: Steps between mask updates; None: Gale's 2000 of 128k steps scaled to the run.
    frequency: int | None = None
    #: Per target sparsity: ``{0.9: {end_fraction: 0.59375}}`` (keys among TARGET_KEYS).
    targets: dict = dataclasses.field(default_factory=dict)
    #: Steps between mask updates as a fraction of the run's steps (used where ``frequency`` is null).
    frequency_fraction: float | None = None
    #: Layers pruned to a sparsity of their own (``{fc: 0.8}``, names as in ``keep_dense``); uniform only.
    layer_sparsity: dict = dataclasses.field(default_factory=dict)

    TARGET_KEYS: ClassVar[tuple[str, ...]] = ("start_fraction", "end_fraction", "frequency", "frequency_fraction",
                                              "unofficial")

    def validate(self) -> None:
        super().validate()
        for key, entry in (self.targets or {}).items():
            try:
                sparsity = float(key)
            except (TypeError, ValueError):
                raise ValueError(f"GMP targets: key {key!r} must be a target sparsity such as 0.9") from None
            if not 0.0 <= sparsity < 1.0:
                raise ValueError(f"GMP targets: sparsity {key!r} must be in [0, 1)")
            if not isinstance(entry, dict) or set(entry) - set(self.TARGET_KEYS):
                raise ValueError(f"GMP targets[{key!r}] must be a mapping with keys among "
                                 f"{', '.join(self.TARGET_KEYS)}, got {entry!r}")
        for sparsity in [None, *(float(k) for k in self.targets or {})]:
            start, end, frequency = self.resolve(sparsity)
            where = "" if sparsity is None else f" (targets[{sparsity:g}])"
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(
                    f"GMP needs 0 <= start_fraction < end_fraction <= 1, got "
                    f"start_fraction={start}, end_fraction={end}{where}"
                )
            if frequency is not None and (not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1):
                raise ValueError(f"GMP frequency must be a positive integer number of steps or null, got {frequency!r}{where}")
            fraction = self.frequency_fraction_for(sparsity)
            if fraction is not None and not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                                             and 0.0 < fraction <= 1.0):
                raise ValueError(f"GMP frequency_fraction must be a fraction of the run in (0, 1] or null, "
                                 f"got {fraction!r}{where}")
        if not isinstance(self.layer_sparsity, dict):
            raise ValueError(f"GMP layer_sparsity must map layer names to a sparsity, e.g. {{fc: 0.8}}, "
                             f"got {self.layer_sparsity!r}")
        for name, value in self.layer_sparsity.items():
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
                raise ValueError(f"GMP layer_sparsity[{name!r}] must be a sparsity in [0, 1), got {value!r}")
        if self.layer_sparsity and (self.distribution != "uniform" or self.pattern is not None):
            raise ValueError("GMP layer_sparsity applies to distribution 'uniform' without a pattern")

    def _entry(self, target_sparsity: float | None) -> dict:
        return {} if target_sparsity is None else target_entry(self.targets, target_sparsity) or {}

    def frequency_fraction_for(self, target_sparsity: float | None) -> float | None:
        """``frequency_fraction`` for ``target_sparsity``: its ``targets`` entry's, else the top level's."""
        return self._entry(target_sparsity).get("frequency_fraction", self.frequency_fraction)

    def resolve(self, target_sparsity: float | None) -> tuple[float, float, int | None]:
        """(start_fraction, end_fraction, frequency) for ``target_sparsity``: its ``targets`` entry, else the top level."""
        entry = self._entry(target_sparsity)
        return (float(entry.get("start_fraction", self.start_fraction)), float(entry.get("end_fraction", self.end_fraction)),
                entry.get("frequency", self.frequency))

    def options_for(self, target_sparsity: float) -> dict:
        """The options a run at ``target_sparsity`` uses (its ``targets`` entry applied)."""
        start, end, frequency = self.resolve(target_sparsity)
        options = {k: v for k, v in dataclasses.asdict(self).items() if k != "targets"}
        entry = self._entry(target_sparsity)
        options.update(start_fraction=start, end_fraction=end, frequency=frequency,
                       frequency_fraction=self.frequency_fraction_for(target_sparsity),
                       unofficial=bool(entry.get("unofficial", False)))
        return options


def cubic_sparsity(step: int, final_sparsity: float, start_step: int, end_step: int, initial_sparsity: float = 0.0) -> float:
    """Zhu and Gupta's schedule: s_f + (s_i - s_f) (1 - p)^3, p = clip((t - t0) / (t1 - t0), 0, 1)."""
    p = min(1.0, max(0.0, (step - start_step) / (end_step - start_step)))
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - p) ** 3


# Planning 'global' GMP: the sorted magnitudes of all prunable weights, kept for one set of weights
# (the budget solver re-plans the same untouched model many times). The key holds each weight's
# id, shape and in-place version counter, so trained or other weights are never served stale values.
_SORTED_MAGNITUDES: dict = {}


@register_method("gmp")
class GMP(MaskedMethod):
    """Gradual magnitude pruning with the cubic schedule, mask updated every ``frequency`` steps."""
    display_name, color, marker = "GMP", "tab:blue", "^"  # in tables, legends and figures

    Config: ClassVar[type] = GmpConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        total = self.total_steps
        start_fraction, end_fraction, frequency = config.resolve(self.target_sparsity)
        self.start_step = int(round(start_fraction * total))
        # t1 is the last step at the latest, so that the final target is always reached.
        self.end_step = max(self.start_step + 1, min(total - 1, int(round(end_fraction * total))))
        fraction = config.frequency_fraction_for(self.target_sparsity)
        self.frequency = int(frequency or max(1, round(total * (fraction or GALE_FREQUENCY / GALE_TOTAL_STEPS))))
        # Mask updates at t0, t0 + f, t0 + 2f, ... below t1, and at t1 itself; dense before t0.
        updates = [*range(self.start_step, self.end_step, self.frequency), self.end_step]
        self.schedule = Schedule(total, self.steps_per_epoch,
                                 changes=tuple(MaskChange(step, self.sparsity_at(step)) for step in updates))
        self._density_cache: dict[float, list[float]] = {}

    # ------------------------------------------------------------------ schedule
    def schedule_problem(self) -> str | None:
        """The pruning window must end inside the run: t0 < t1 <= the last step."""
        if self.config.layer_sparsity:
            try:
                self._final_layer_sparsities()
            except ValueError as error:
                return f"{error}: change methods.gmp.layer_sparsity or the target"
        if self.end_step <= self.total_steps - 1:
            return super().schedule_problem()
        start_fraction, end_fraction, _ = self.config.resolve(self.target_sparsity)
        return (f"GMP's pruning window, steps {self.start_step}..{self.end_step} (start_fraction {start_fraction:g}, "
                f"end_fraction {end_fraction:g} of the run), lies outside this run's {self.total_steps} step(s) "
                f"(0..{self.total_steps - 1}): the mask would never reach {self.target_sparsity:g}. Give the run "
                f"more steps (--epochs, --set epochs=, a smaller batch_size or a larger train_subset) or start "
                f"pruning earlier (methods.gmp.start_fraction, e.g. 0)")

    def sparsity_at(self, step: int) -> float:
        """The cubic schedule's target at ``step`` (continuous in ``step``)."""
        return cubic_sparsity(step, self.target_sparsity, self.start_step, self.end_step)

    # ------------------------------------------------------------------ hooks
    def on_step_start(self, step: int) -> None:
        change = self.schedule.change_at(step)
        if change is not None:
            self.prune_by_magnitude(change.sparsity)

    # ------------------------------------------------------------------ layer sparsities
    def distribution_densities(self, sparsity: float) -> list[float]:
        """With ``layer_sparsity``: each layer at its own final sparsity scaled by ``sparsity / target``
        (every layer follows the cubic schedule to its own end); the others as the distribution says."""
        if not self.config.layer_sparsity:
            return super().distribution_densities(sparsity)
        final = self._final_layer_sparsities()
        scale = sparsity / self.target_sparsity if self.target_sparsity > 0 else 0.0
        return [1.0 - s * scale for s in final]

    def _final_layer_sparsities(self) -> list[float]:
        from acdc_bench.core.sparsity import check_names_exist, name_matches

        check_names_exist(self.layers, list(self.config.layer_sparsity), "layer_sparsity")
        dense = [name_matches(layer.name, self.config.keep_dense) for layer in self.layers]
        fixed = [next((float(v) for k, v in self.config.layer_sparsity.items() if name_matches(layer.name, [k])), None)
                 for layer in self.layers]
        pruned = sum(layer.numel for layer, d in zip(self.layers, dense) if not d)
        rest = sum(layer.numel for layer, d, f in zip(self.layers, dense, fixed) if not d and f is None)
        held = sum(f * layer.numel for layer, d, f in zip(self.layers, dense, fixed) if not d and f is not None)
        needed = self.target_sparsity * pruned - held  # zeros the other pruned layers must hold
        if rest:
            others = needed / rest
            if not 0.0 <= others < 1.0:
                raise ValueError(f"GMP layer_sparsity {self.config.layer_sparsity} cannot meet the target "
                                 f"{self.target_sparsity:g}: the other layers would need sparsity {others:.4f}")
        elif abs(needed) > 1e-9 * pruned:
            raise ValueError(f"GMP layer_sparsity {self.config.layer_sparsity} cannot meet the target "
                             f"{self.target_sparsity:g}: it holds every pruned layer, and no other layer is left")
        else:
            others = 0.0
        return [0.0 if d else (f if f is not None else others) for d, f in zip(dense, fixed)]

    # ------------------------------------------------------------------ planning
    def densities_at(self, sparsity: float) -> list[float]:
        """Per-layer densities at ``sparsity`` with the configured distribution (``global``: one
        threshold over the sorted magnitudes, kept across re-plans of one untouched model)."""
        key = round(sparsity, 12)
        cached = self._density_cache.get(key)
        if cached is not None:
            return cached
        if sparsity <= 0.0:
            densities = [1.0] * len(self.layers)
        elif self.config.distribution == "global":
            densities = self._global_densities(sparsity)
        else:
            densities = self.distribution_densities(sparsity)
        self._density_cache[key] = densities
        return densities

    def _global_densities(self, sparsity: float) -> list[float]:
        """One threshold over all current magnitudes (the k-th of their cached sorted copy)."""
        weights = [layer.weight.detach() for layer in self.layers]
        key = tuple((id(w), w._version, tuple(w.shape)) for w in (layer.weight for layer in self.layers))
        everything = _SORTED_MAGNITUDES.get(key)
        if everything is None:
            everything = torch.cat([w.abs().flatten().float() for w in weights]).sort().values
            _SORTED_MAGNITUDES.clear()
            _SORTED_MAGNITUDES[key] = everything
        prune = int(round(sparsity * everything.numel()))
        if prune <= 0:
            return [1.0] * len(weights)
        threshold = everything[prune - 1]
        pruned = torch.stack([(w.abs().float() <= threshold).sum() for w in weights]).tolist()
        return [1.0 - n / w.numel() for n, w in zip(pruned, weights)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["schedule"] = {"start_step": self.start_step, "end_step": self.end_step, "frequency": self.frequency}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        saved = state.get("schedule")
        mine = {"start_step": self.start_step, "end_step": self.end_step, "frequency": self.frequency}
        if saved is not None and saved != mine:
            raise ValueError(f"GMP checkpoint was written for schedule {saved}, this run has {mine}")
