"""AC/DC: Alternating Compressed/DeCompressed training (Peste et al., NeurIPS 2021).

Faithful to the official configs (``configs/neurips/iht_*``), see docs/references.md:

- dense warm-up, then phases alternating compressed (sparse) / decompressed (dense),
  starting and ending compressed, then a longer final decompressed phase and a
  final compressed phase;
- each compressed phase starts with a one-shot global magnitude top-k to the target;
  during it the mask multiplies the weight gradients and is re-applied after every
  optimizer step;
- each decompressed phase sets all masks to ones (pruned weights restart from zero)
  and zeroes the SGD momentum buffers at its first step;
- the run yields the sparse model (end of training) and the dense model of the
  sparse-dense pair (end of the last decompressed phase).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from acdc_bench.methods.base import MaskedConfig, MaskedMethod, zero_momentum
from acdc_bench.methods.registry import register_method
from acdc_bench.methods.schedule import MaskChange, Schedule
from acdc_bench.core.sparsity import mask_overlap

#: Official schedules: (epochs, warm-up, phase length, final dense, final sparse).
PRESETS: dict[str, dict[str, int]] = {
    "imagenet-100": dict(schedule_epochs=100, warmup_epochs=10, phase_epochs=5, final_dense_epochs=10, final_sparse_epochs=15),
    "imagenet-150": dict(schedule_epochs=150, warmup_epochs=10, phase_epochs=5, final_dense_epochs=10, final_sparse_epochs=15),
    "imagenet-200": dict(schedule_epochs=200, warmup_epochs=10, phase_epochs=5, final_dense_epochs=10, final_sparse_epochs=15),
    "cifar100-200": dict(schedule_epochs=200, warmup_epochs=10, phase_epochs=20, final_dense_epochs=20, final_sparse_epochs=30),
    # configs/neurips/iht_cifar100_wideresnet_steplr_dense13_s*: 20-epoch compressed, 13-epoch decompressed phases
    "cifar100-dense13": dict(schedule_epochs=225, warmup_epochs=10, phase_epochs=20, dense_phase_epochs=13,
                             final_dense_epochs=13, final_sparse_epochs=50),
}


@dataclass
class AcdcConfig(MaskedConfig):
    """AC/DC options. Lengths are in epochs and written for ``schedule_epochs`` total epochs;
    a run with a different number of epochs scales them (the number of phases stays).

    ``dense_phase_epochs``: the length of an alternating decompressed phase where it differs from a
    compressed one (None: ``phase_epochs``; CIFAR-100 ``dense13``: 20 compressed, 13 decompressed).
    ``finetune_dense``: train the final compressed phase dense instead, so the run ends with the
    dense model of the sparse-dense pair fine-tuned densely to the end (the official ``*_ftdense``
    runs, which resume from the pair's last decompressed epoch); such a run promises a dense model.
    """

    preset: str | None = None
    schedule_epochs: int | None = None
    warmup_epochs: int = 10
    phase_epochs: int = 5
    final_dense_epochs: int = 10
    final_sparse_epochs: int = 15
    dense_phase_epochs: int | None = None
    finetune_dense: bool = False

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"AC/DC preset '{self.preset}' is unknown; allowed: {', '.join(PRESETS)}")
            for key, value in PRESETS[self.preset].items():
                setattr(self, key, value)


#: The lengths AcdcConfig defaults to: the official ImageNet schedule, written for 100 epochs.
PAPER_LENGTHS = {k: v for k, v in PRESETS["imagenet-100"].items() if k != "schedule_epochs"}
KEYWORDS = ("schedule_epochs", "warmup_epochs", "phase_epochs", "dense_phase_epochs", "final_dense_epochs",
            "final_sparse_epochs")


def acdc_phases(
    epochs: int,
    warmup_epochs: int,
    phase_epochs: int,
    final_dense_epochs: int,
    final_sparse_epochs: int,
    schedule_epochs: int | None = None,
    dense_phase_epochs: int | None = None,
) -> list[str]:
    """Phase (``dense``/``sparse``) of every epoch of an AC/DC run.

    The lengths are written for ``schedule_epochs`` (default: the run's own length, or 100 for the
    default lengths, the official ImageNet schedule) and scale to the run. Where the scaled schedule
    does not fit, the run keeps the schedule's proportions with fewer alternating phases
    (:func:`fitted_phases`); a run too short even for that is an error naming the keywords to set."""
    lengths = dict(warmup_epochs=warmup_epochs, phase_epochs=phase_epochs, final_dense_epochs=final_dense_epochs,
                   final_sparse_epochs=final_sparse_epochs)
    if min(lengths.values()) < 0 or phase_epochs < 1 or final_sparse_epochs < 1:
        raise ValueError(f"AC/DC schedule lengths must be >= 0 (phase and final sparse >= 1), got {list(lengths.values())}")
    if dense_phase_epochs is not None:
        if dense_phase_epochs < 1:
            raise ValueError(f"AC/DC dense_phase_epochs must be >= 1 (or null: phase_epochs), got {dense_phase_epochs}")
        if dense_phase_epochs != phase_epochs:
            lengths["dense_phase_epochs"] = dense_phase_epochs
    try:
        return _official_phases(epochs, schedule_epochs or epochs, **lengths)
    except ValueError as error:
        base = schedule_epochs or (100 if lengths == PAPER_LENGTHS else None)
        fitted = fitted_phases(epochs, base, **lengths) if base else None
        if fitted is None:
            raise ValueError(f"{error}, and a run of {epochs} epoch(s) is too short to keep its proportions (at "
                             f"least a compressed, a decompressed and a final compressed epoch). Give lengths that "
                             f"fit: sparsify(..., " + ", ".join(f"{k}=..." for k in KEYWORDS) + "), or in a suite "
                             + ", ".join(f"methods.acdc.{k}" for k in KEYWORDS)
                             + f", or methods.acdc.preset ({', '.join(PRESETS)})") from None
        return fitted


def fitted_phases(epochs: int, base_epochs: int, warmup_epochs: int, phase_epochs: int, final_dense_epochs: int,
                  final_sparse_epochs: int, dense_phase_epochs: int | None = None) -> list[str] | None:
    """The schedule written for ``base_epochs`` shrunk to ``epochs`` with its proportions: each length
    scaled (a phase at least 1 epoch, the final decompressed phase at least 1 where it has one), as
    many alternating phases as fit (an odd number: starting and ending compressed), the warm-up
    dropped before the alternation is; None when not even one compressed, one decompressed and the
    final compressed epoch fit."""
    scale = epochs / base_epochs
    between = dense_phase_epochs or phase_epochs
    alternating = base_epochs - warmup_epochs - final_dense_epochs - final_sparse_epochs
    n_phases = max(1, 2 * ((alternating + between) // (phase_epochs + between)) - 1)
    phase = max(1, round(phase_epochs * scale))
    phase_dense = max(1, round(between * scale))
    dense = max(1 if final_dense_epochs else 0, round(final_dense_epochs * scale))
    sparse = max(1, round(final_sparse_epochs * scale))
    for warmup in (round(warmup_epochs * scale), 0):
        n = n_phases
        while n >= 1 and warmup + _alternating(n, phase, phase_dense) + dense + sparse > epochs:
            n -= 2
        if n >= 1:
            return _layout(warmup, n, phase, dense, epochs - warmup - _alternating(n, phase, phase_dense) - dense,
                           phase_dense)
    return None


def _alternating(n_phases: int, phase: int, dense_phase: int) -> int:
    """Epochs of ``n_phases`` alternating phases starting and ending compressed."""
    return (n_phases + 1) // 2 * phase + n_phases // 2 * dense_phase


def _layout(warmup: int, n_phases: int, phase: int, final_dense: int, final_sparse: int,
            dense_phase: int | None = None) -> list[str]:
    """Dense warm-up, ``n_phases`` alternating phases starting compressed (compressed ``phase``
    epochs, decompressed ``dense_phase``, default the same), final dense, final sparse."""
    phases = ["dense"] * warmup
    for index in range(n_phases):
        phases += ["sparse"] * phase if index % 2 == 0 else ["dense"] * (dense_phase or phase)
    return phases + ["dense"] * final_dense + ["sparse"] * final_sparse


def _official_phases(epochs: int, base_epochs: int, *, warmup_epochs: int, phase_epochs: int,
                     final_dense_epochs: int, final_sparse_epochs: int,
                     dense_phase_epochs: int | None = None) -> list[str]:
    """The lengths, written for ``base_epochs``, scaled to ``epochs`` as the official configs scale
    them (every alternating phase kept); a ValueError where they do not fit."""
    between = dense_phase_epochs or phase_epochs
    alternating = base_epochs - warmup_epochs - final_dense_epochs - final_sparse_epochs
    if alternating < phase_epochs or (alternating + between) % (phase_epochs + between):
        what = (f"{phase_epochs}-epoch phases" if between == phase_epochs
                else f"{phase_epochs}-epoch compressed and {between}-epoch decompressed phases")
        raise ValueError(
            f"AC/DC schedule does not fit {base_epochs} epochs: after warm-up {warmup_epochs}, "
            f"final dense {final_dense_epochs} and final sparse {final_sparse_epochs}, the "
            f"{alternating} alternating epochs must be an odd number (>= 1) of {what} "
            f"(starting and ending compressed)"
        )
    n_phases = 2 * ((alternating + between) // (phase_epochs + between)) - 1
    if epochs != base_epochs:
        scale = epochs / base_epochs
        warmup_epochs = round(warmup_epochs * scale)
        phase_epochs = max(1, round(phase_epochs * scale))
        between = max(1, round(between * scale))
        final_dense_epochs = round(final_dense_epochs * scale)
        final_sparse_epochs = epochs - warmup_epochs - _alternating(n_phases, phase_epochs, between) - final_dense_epochs
        if final_sparse_epochs < 1:
            raise ValueError(f"AC/DC schedule written for {base_epochs} epochs cannot be scaled to {epochs} epochs")
    return _layout(warmup_epochs, n_phases, phase_epochs, final_dense_epochs, final_sparse_epochs, between)


@register_method("acdc")
class ACDC(MaskedMethod):
    """AC/DC with a parameterised phase schedule (see :data:`PRESETS`)."""
    display_name, color, marker = "AC/DC", "tab:red", "o"  # in tables, legends and figures

    Config: ClassVar[type] = AcdcConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        schedule = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name.endswith("epochs")}
        self.phases = acdc_phases(self.epochs, **schedule)
        if config.finetune_dense:  # the pair's dense model trained on where the final compressed phase was
            last_dense = max((e for e, p in enumerate(self.phases) if p == "dense"), default=-1)
            self.phases = self.phases[:last_dense + 1] + ["dense"] * (len(self.phases) - last_dense - 1)
        # A phase boundary is a change at the first step of its epoch: compressed to the target
        # (one-shot magnitude pruning), decompressed to no mask; the run starts dense.
        spe = self.steps_per_epoch
        boundaries = [epoch for epoch, phase in enumerate(self.phases)
                      if phase != (self.phases[epoch - 1] if epoch else "dense")]
        self.schedule = Schedule(self.total_steps, spe, changes=tuple(
            MaskChange(epoch * spe, self.target_sparsity if self.phases[epoch] == "sparse" else 0.0, self.phases[epoch])
            for epoch in boundaries))
        self.previous_sparse_masks = None
        self.last_overlap: float | None = None

    def on_epoch_start(self, epoch: int) -> None:
        change = self.schedule.change_at(epoch * self.steps_per_epoch)
        self.last_overlap = None
        if change is None:
            return
        if change.phase == "sparse":
            self.prune_by_magnitude(change.sparsity)
            kept = [m.clone() for m in self.masks.masks]
            if self.previous_sparse_masks is not None:
                self.last_overlap = mask_overlap(self.previous_sparse_masks, kept)
            self.previous_sparse_masks = kept
        else:
            self.masks.fill_ones()
            self.masking = False
            if self.optimizer is not None:
                zero_momentum(self.optimizer)

    def on_epoch_end(self, epoch: int) -> dict:
        return {"mask_overlap": self.last_overlap}

    def promised_sparsity(self) -> float:
        """A ``finetune_dense`` run ends dense; any other ends at its target (as the distribution lays it out)."""
        return 0.0 if self.config.finetune_dense else super().promised_sparsity()

    def dense_pair_epoch(self) -> int | None:
        last_dense = [e for e, p in enumerate(self.phases) if p == "dense"]
        return last_dense[-1] if last_dense else None

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["previous_sparse_masks"] = self.previous_sparse_masks
        state["last_overlap"] = self.last_overlap  # the epoch's metric, for a resume within the epoch
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.previous_sparse_masks = state.get("previous_sparse_masks")
        self.last_overlap = state.get("last_overlap")
