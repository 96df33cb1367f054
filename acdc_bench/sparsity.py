"""The sparsity core: prunable weights, boolean masks, layer distributions and magnitude top-k."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

DISTRIBUTIONS = ("global", "uniform", "erk")


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable weight: the module that owns it, its qualified name and the parameter."""

    name: str
    module: nn.Module
    weight: nn.Parameter

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def numel(self) -> int:
        return self.weight.numel()


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def prunable_layers(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[PrunableLayer]:
    """Conv and linear weights of ``model`` in module order; biases and BatchNorm never.

    ``include`` (if given) keeps only modules whose name matches one of the patterns
    (exact name or shell-style glob); ``exclude`` drops the matching ones.
    """
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        if include and not _matches(name, include):
            continue
        if exclude and _matches(name, exclude):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            layers.append(PrunableLayer(name, module, weight))
    if not layers:
        raise ValueError(
            f"no prunable conv/linear weights found in {type(model).__name__} "
            f"(include={list(include)}, exclude={list(exclude)}); check the module names"
        )
    return layers


def check_names_exist(layers: Sequence[PrunableLayer], names: Sequence[str], what: str) -> None:
    """Raise if a pattern in ``names`` matches none of ``layers`` (a typo would silently do nothing)."""
    for pattern in names:
        if not any(_matches(layer.name, [pattern]) for layer in layers):
            allowed = ", ".join(layer.name for layer in layers[:8])
            raise ValueError(
                f"{what}: '{pattern}' matches no prunable layer; prunable layers are: {allowed}"
                + (", ..." if len(layers) > 8 else "")
            )


# --------------------------------------------------------------------------- distributions


def uniform_densities(
    layers: Sequence[PrunableLayer], sparsity: float, keep_dense: Sequence[str] = ()
) -> list[float]:
    """Every layer at ``1 - sparsity``, except the layers named in ``keep_dense`` (density 1)."""
    check_names_exist(layers, keep_dense, "keep_dense")
    return [1.0 if _matches(layer.name, keep_dense) else 1.0 - sparsity for layer in layers]


def erk_densities(
    layers: Sequence[PrunableLayer], sparsity: float, keep_dense: Sequence[str] = ()
) -> list[float]:
    """Erdos-Renyi-Kernel densities (RigL): density_l = eps * sum(shape_l) / prod(shape_l).

    One scale ``eps`` is solved so that the total number of non-zeros equals
    ``(1 - sparsity) * N``; a layer whose density would exceed 1 is made dense and
    the scale solved again over the remaining layers, until none exceeds 1.
    """
    check_names_exist(layers, keep_dense, "keep_dense")
    dense = {i for i, layer in enumerate(layers) if _matches(layer.name, keep_dense)}
    total = sum(layer.numel for layer in layers)
    target_nonzeros = (1.0 - sparsity) * total
    raw = [sum(layer.shape) / math.prod(layer.shape) for layer in layers]
    while True:
        dense_nonzeros = sum(layers[i].numel for i in dense)
        sparse_idx = [i for i in range(len(layers)) if i not in dense]
        budget = target_nonzeros - dense_nonzeros
        weighted = sum(raw[i] * layers[i].numel for i in sparse_idx)
        if not sparse_idx or weighted == 0:
            break
        eps = budget / weighted
        too_dense = {i for i in sparse_idx if eps * raw[i] > 1.0}
        if not too_dense:
            break
        dense |= too_dense
    densities = []
    for i in range(len(layers)):
        densities.append(1.0 if i in dense else max(0.0, min(1.0, eps * raw[i])))
    return densities


def layer_densities(
    distribution: str,
    layers: Sequence[PrunableLayer],
    sparsity: float,
    keep_dense: Sequence[str] = (),
) -> list[float]:
    """Per-layer target densities of a fixed distribution (``uniform`` or ``erk``)."""
    if distribution == "uniform":
        return uniform_densities(layers, sparsity, keep_dense)
    if distribution == "erk":
        return erk_densities(layers, sparsity, keep_dense)
    raise ValueError(
        f"distribution '{distribution}' has no fixed per-layer densities; "
        f"use 'uniform' or 'erk' (global densities come from the weights' magnitudes)"
    )


# --------------------------------------------------------------------------- top-k


def _prune_count(numel: int, density: float) -> int:
    return numel - int(round(density * numel))


def magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask keeping exactly ``round(density * numel)`` largest-magnitude entries."""
    scores = weight.detach().abs().flatten()
    prune = _prune_count(scores.numel(), density)
    return _mask_from_scores(scores, prune).view_as(weight)


def _mask_from_scores(scores: torch.Tensor, prune: int) -> torch.Tensor:
    """Keep all but the ``prune`` smallest scores; ties at the threshold are pruned in index order."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if prune <= 0:
        return keep
    if prune >= scores.numel():
        return ~keep
    threshold = torch.kthvalue(scores, prune).values
    torch.gt(scores, threshold, out=keep)
    # Entries equal to the threshold: prune just enough of them (first in index order).
    below = int((scores < threshold).sum())
    ties = (scores == threshold).nonzero().flatten()
    keep[ties[prune - below :]] = True
    return keep


def global_magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One magnitude threshold over all ``weights`` together: exactly ``round(sparsity*N)`` pruned.

    Uses one concatenated fp32 buffer of all magnitudes (the only full-size temporary)
    and one ``torch.kthvalue`` for the threshold.
    """
    sizes = [w.numel() for w in weights]
    scores = torch.cat([w.detach().abs().flatten().float() for w in weights])
    prune = int(round(sparsity * scores.numel()))
    keep = _mask_from_scores(scores, prune)
    return [m.view_as(w) for m, w in zip(torch.split(keep, sizes), weights)]


# --------------------------------------------------------------------------- masks


class MaskSet:
    """Boolean masks over prunable weights, with cached non-zero counts for FLOP accounting.

    Masks multiply the weight gradients before the optimizer step and are re-applied
    to the weights after it. ``nonzeros`` is refreshed only when the masks change
    (one host sync per mask update, none per training step).
    """

    def __init__(self, layers: Sequence[PrunableLayer]):
        self.layers = list(layers)
        self.masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in self.layers]
        self.nonzeros = [layer.numel for layer in self.layers]

    @property
    def weights(self) -> list[nn.Parameter]:
        return [layer.weight for layer in self.layers]

    def set(self, masks: Sequence[torch.Tensor]) -> None:
        """Install new masks (any bool/0-1 tensors shaped like the weights) and refresh counts."""
        self.masks = [m.to(device=w.device, dtype=torch.bool) for m, w in zip(masks, self.weights)]
        self.refresh_counts()

    def fill_ones(self) -> None:
        for mask in self.masks:
            mask.fill_(True)
        self.refresh_counts()

    def refresh_counts(self) -> None:
        self.nonzeros = [int(c) for c in torch.stack([m.sum() for m in self.masks]).tolist()]

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        torch._foreach_mul_(self.weights, self.masks)

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        grads = [w.grad for w in self.weights if w.grad is not None]
        masks = [m for w, m in zip(self.weights, self.masks) if w.grad is not None]
        if grads:
            torch._foreach_mul_(grads, masks)

    def densities(self) -> list[float]:
        return [n / layer.numel for n, layer in zip(self.nonzeros, self.layers)]

    def sparsity(self) -> float:
        total = sum(layer.numel for layer in self.layers)
        return 1.0 - sum(self.nonzeros) / total

    def state_dict(self) -> dict:
        return {layer.name: mask.clone() for layer, mask in zip(self.layers, self.masks)}

    def load_state_dict(self, state: dict) -> None:
        missing = [layer.name for layer in self.layers if layer.name not in state]
        if missing:
            raise KeyError(f"mask state lacks layers {missing[:5]}")
        self.set([state[layer.name] for layer in self.layers])


def weight_sparsity(layers: Sequence[PrunableLayer]) -> tuple[float, dict[str, float]]:
    """Zeros over all prunable weights, and each layer's density, measured from the weights.

    Reads ``module.weight`` (the effective weight, e.g. STR's thresholded one under a
    parametrization), not the raw parameter.
    """
    counts = torch.stack([torch.count_nonzero(layer.module.weight.detach()) for layer in layers]).tolist()
    total = sum(layer.numel for layer in layers)
    densities = {layer.name: int(n) / layer.numel for layer, n in zip(layers, counts)}
    return 1.0 - sum(counts) / total, densities


def mask_overlap(previous: Sequence[torch.Tensor], current: Sequence[torch.Tensor]) -> float:
    """Intersection over union of the kept positions of two mask sets."""
    inter = sum(int((a & b).sum()) for a, b in zip(previous, current))
    union = sum(int((a | b).sum()) for a, b in zip(previous, current))
    return inter / union if union else 1.0
