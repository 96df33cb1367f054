"""The sparsity core: prunable weights, boolean masks, layer distributions and magnitude top-k."""

from __future__ import annotations

import fnmatch
import math
import operator
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

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

    def current_weight(self) -> torch.Tensor | None:
        """The module's weight now (:func:`raw_weight`): :attr:`weight` unless something replaced it
        since, as ``load_state_dict(..., assign=True)`` does."""
        return raw_weight(self.module)


def raw_weight(module: nn.Module) -> torch.Tensor | None:
    """A module's weight as a method holds it: a parametrized module's raw parameter (STR's
    threshold acts on it), else ``module.weight`` (None where it has none)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return getattr(module, "weight", None)


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether a layer's module name is one of ``patterns`` or matches one (fnmatch, case-sensitive):
    how ``include``, ``exclude`` and ``keep_dense`` select layers."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The eager module inside ``torch.compile(model)`` (its ``_orig_mod``), else ``model``: layer
    names, FLOPs and masks are those of the eager module, whose names carry no ``_orig_mod.`` prefix.
    (A compiled module exists only once torch._dynamo is imported, so this imports nothing.)"""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    while eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        model = model._orig_mod
    return model


def prunable_layers(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[PrunableLayer]:
    """Conv and linear weights of ``model`` in module order; biases and BatchNorm never.
    A compiled model (``torch.compile``) gives the layers of the eager module inside it, by their
    eager names (:func:`unwrap_compiled`).

    ``include`` (if given) keeps only modules whose name matches one of the patterns
    (exact name or shell-style glob); ``exclude`` drops the matching ones. A Hugging Face
    transformer (a ``PreTrainedModel``) without ``include`` prunes the Linear layers of its
    blocks only (attention and MLP: :func:`transformer_block_layers`), as the BERT pruning
    literature does; embeddings, norms, the pooler and the LM or classifier head stay dense.
    """
    model = unwrap_compiled(model)
    if not include and _is_hf_transformer(model):
        include = transformer_block_layers(model)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        if include and not name_matches(name, include):
            continue
        if exclude and name_matches(name, exclude):
            continue
        weight = raw_weight(module)
        if isinstance(weight, nn.Parameter):
            layers.append(PrunableLayer(name, module, weight))
    if not layers:
        raise ValueError(
            f"no prunable conv/linear weights found in {type(model).__name__}{_unsupported_layers(model)} "
            f"(include={list(include)}, exclude={list(exclude)}); check the module names"
        )
    return layers


def _is_hf_transformer(model: nn.Module) -> bool:
    """A Hugging Face ``PreTrainedModel``, told by its class hierarchy (transformers is not imported)."""
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers")
               for cls in type(model).__mro__)


def transformer_block_layers(model: nn.Module) -> list[str]:
    """The names of the Linear layers inside a transformer's repeated blocks (the members of an
    ``nn.ModuleList``: ``encoder.layer.N``, ``layers.N``, ``h.N``): attention projections and the
    MLP. Heads, poolers and embeddings sit outside the blocks."""
    blocks = [name for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(name.startswith(f"{block}.") for block in blocks)]
    if not names:
        raise ValueError(f"{type(model).__name__}: no Linear layer inside a block (nn.ModuleList) of this "
                         f"transformer{_unsupported_layers(model)}; name the layers to prune with include=[...]")
    return names


def _unsupported_layers(model: nn.Module) -> str:
    """What a model holds in place of the layers this project prunes (GPT-2's transformers Conv1D)."""
    kinds = sorted({type(module).__name__ for module in model.modules()
                    if type(module).__name__ == "Conv1D" and not isinstance(module, nn.Conv1d)})
    return (f" (its {', '.join(kinds)} layers, a Linear with the weight stored transposed, are not prunable "
            f"here: only nn.Linear and nn.Conv1d/2d/3d are)") if kinds else ""


def check_names_exist(layers: Sequence[PrunableLayer], names: Sequence[str], what: str) -> None:
    """Raise if a pattern in ``names`` matches none of ``layers`` (a typo would silently do nothing)."""
    for pattern in names:
        if not any(name_matches(layer.name, [pattern]) for layer in layers):
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
    return [1.0 if name_matches(layer.name, keep_dense) else 1.0 - sparsity for layer in layers]


def erk_densities(
    layers: Sequence[PrunableLayer], sparsity: float, keep_dense: Sequence[str] = ()
) -> list[float]:
    """Erdos-Renyi-Kernel densities (RigL): density_l = eps * sum(shape_l) / prod(shape_l).

    One scale ``eps`` is solved so that the total number of non-zeros equals
    ``(1 - sparsity) * N``; a layer whose density would exceed 1 is made dense and
    the scale solved again over the remaining layers, until none exceeds 1.
    """
    check_names_exist(layers, keep_dense, "keep_dense")
    dense = {i for i, layer in enumerate(layers) if name_matches(layer.name, keep_dense)}
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
    return mask_from_scores(scores, prune, magnitudes=True).view_as(weight)


#: The selection passes run over 1/8 slices of the scores (at least 2^20 elements): few
#: enough parallel regions to stay fast on a busy machine, temporaries of 1/32 of the buffer.
_SLICES = 8
_SLICE_MIN = 1 << 20
#: Below this size ``torch.kthvalue`` (which copies its input) is as fast and its copies are small.
_SELECT_MIN = 1 << 16
#: Size of the strided sample that brackets the threshold.
_SAMPLE = 1 << 17


def _slice_size(n: int) -> int:
    return max(_SLICE_MIN, -(-n // _SLICES))


def _count(mask: torch.Tensor) -> int:
    """True entries of a slice-sized bool tensor (a uint8 sum: ~4x faster than ``bool.sum()`` on CPU)."""
    return int(mask.view(torch.uint8).sum(dtype=torch.int32))


def mask_from_scores(scores: torch.Tensor, prune: int, *, magnitudes: bool = False) -> torch.Tensor:
    """Keep all but the ``prune`` smallest scores; ties at the threshold are pruned in index order.

    ``~mask_from_scores(scores, k)`` is therefore the set ``torch.sort(scores, stable=True)
    .indices[:k]`` (``inf`` scores are chosen last): magnitude pruning and RigL's drop/grow
    selections both use it.

    ``magnitudes=True`` says the scores are ``abs()`` values (non-negative): a contiguous
    fp32 tensor of them then takes an exact selection that allocates no full-size
    temporary (:func:`_select_magnitude`) instead of ``torch.kthvalue`` (which copies the
    scores and allocates full-size int64 indices), with the same result.
    """
    keep = torch.ones_like(scores, dtype=torch.bool)
    if prune <= 0:
        return keep
    if prune >= scores.numel():
        return keep.fill_(False)
    if (magnitudes and scores.dtype == torch.float32 and scores.dim() == 1
            and scores.is_contiguous() and scores.numel() >= _SELECT_MIN):
        selected = _select_magnitude(scores, prune)
        if selected is not None:
            threshold, below, ties = selected
            torch.gt(scores, threshold, out=keep)
            if ties > prune - below:
                _keep_ties_after(scores, keep, threshold, prune - below)
            return keep
    threshold = torch.kthvalue(scores, prune).values
    torch.gt(scores, threshold, out=keep)
    # Entries equal to the threshold: prune just enough of them (first in index order).
    below = int((scores < threshold).sum())
    ties = (scores == threshold).nonzero().flatten()
    keep[ties[prune - below :]] = True
    return keep


def _select_magnitude(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int] | None:
    """The ``k``-th smallest of non-negative fp32 ``scores`` (1-based), exactly as ``kthvalue``.

    Returns (threshold as a 0-d fp32 tensor, count of scores below it, count equal to it),
    or None when the threshold is NaN (the caller then takes the ``kthvalue`` path).
    The fp32 bit patterns of non-negative floats, read as int32, sort like the floats
    (with NaN above +inf, as ``kthvalue`` sorts it), so the selection runs on an int32
    view: no copy of the scores. A strided sample brackets the threshold, one pass counts
    the scores below the bracket and gathers those inside it (a small fraction), and a
    ``kthvalue`` of the gathered ones gives the threshold; if the bracket misses, an exact
    two-pass radix selection over 16-bit digits does. Every temporary is slice-sized (1/8 of the scores).
    """
    bits = scores.view(torch.int32)
    found = _select_bracketed(bits, k)
    if found is None:
        found = _select_radix(bits, k)
    key, below, ties = found
    if key > 0x7F800000:  # NaN
        return None
    threshold = torch.tensor(key, dtype=torch.int32, device=scores.device).view(torch.float32)
    return threshold, below, ties


def _select_bracketed(bits: torch.Tensor, k: int) -> tuple[int, int, int] | None:
    n = bits.numel()
    stride = max(1, n // _SAMPLE)
    while math.gcd(stride, 2 * 3 * 5 * 7) != 1 and stride > 1:  # avoid aliasing with layer shapes
        stride += 1
    sample = bits[::stride].sort().values
    s = sample.numel()
    centre = (k - 0.5) / n * s
    q = k / n
    margin = 5.0 * math.sqrt(s * q * (1.0 - q)) + 16.0
    lo_index, hi_index = math.floor(centre - margin), math.ceil(centre + margin)
    lo = int(sample[lo_index]) if lo_index >= 0 else None
    hi = int(sample[hi_index]) if hi_index < s else None
    if lo is None and hi is None:
        return None
    budget = max(n // 16, 1 << 16)
    below, gathered, pieces = 0, 0, []
    step = _slice_size(bits.numel())
    for start in range(0, n, step):
        chunk = bits[start : start + step]
        if lo is None:
            inside = chunk <= hi
        else:
            inside = chunk >= lo
            below += chunk.numel() - _count(inside)
            if hi is not None:
                inside.logical_and_(chunk <= hi)
        piece = chunk[inside]
        gathered += piece.numel()
        if gathered > budget:
            return None
        pieces.append(piece)
    if not below < k <= below + gathered:
        return None
    candidates = torch.cat(pieces)
    key = torch.kthvalue(candidates, k - below).values
    return int(key), below + _count(candidates < key), _count(candidates == key)


def _select_radix(bits: torch.Tensor, k: int) -> tuple[int, int, int]:
    """Exact selection from two histograms of 16-bit digits (sign bit clear: high digit < 2^15)."""
    step = _slice_size(bits.numel())
    high = torch.zeros(1 << 15, dtype=torch.int64, device=bits.device)
    for start in range(0, bits.numel(), step):
        high += torch.bincount(bits[start : start + step] >> 16, minlength=1 << 15)
    cumulative = high.cumsum(0)
    digit = int(torch.searchsorted(cumulative, k))
    below = int(cumulative[digit - 1]) if digit else 0
    low = torch.zeros(1 << 16, dtype=torch.int64, device=bits.device)
    for start in range(0, bits.numel(), step):
        chunk = bits[start : start + step]
        inside = chunk[(chunk >> 16) == digit]
        if inside.numel():
            low += torch.bincount(inside & 0xFFFF, minlength=1 << 16)
    cumulative = low.cumsum(0)
    rest = int(torch.searchsorted(cumulative, k - below))
    below += int(cumulative[rest - 1]) if rest else 0
    return (digit << 16) | rest, below, int(low[rest])


def _keep_ties_after(scores: torch.Tensor, keep: torch.Tensor, threshold: torch.Tensor, skip: int) -> None:
    """Set ``keep`` at the scores equal to ``threshold``, except the first ``skip`` in index order."""
    step = _slice_size(scores.numel())
    seen = 0
    for start in range(0, scores.numel(), step):
        equal = scores[start : start + step] == threshold
        part = keep[start : start + step]
        if seen >= skip:
            part.logical_or_(equal)
            continue
        count = _count(equal)
        if seen + count > skip:
            part[equal.nonzero().flatten()[skip - seen :]] = True
        seen += count


def global_magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One magnitude threshold over all ``weights`` together: exactly ``round(sparsity*N)`` pruned.

    Fills one fp32 buffer with all magnitudes (the only full-size temporary: no
    per-layer copies, no copy or index buffer for the selection) and selects the
    threshold exactly (:func:`mask_from_scores`); the masks are views of one bool buffer.
    """
    sizes = [w.numel() for w in weights]
    device = weights[0].device if weights else torch.device("cpu")
    scores = torch.empty(sum(sizes), dtype=torch.float32, device=device)
    for w, part in zip(weights, torch.split(scores, sizes)):
        flat = w.detach().reshape(-1)
        if flat.dtype == torch.float32 and flat.device == device:
            torch.abs(flat, out=part)
        else:
            part.copy_(flat).abs_()  # abs is exact in any float format: same as abs-then-float
    prune = int(round(sparsity * scores.numel()))
    keep = mask_from_scores(scores, prune, magnitudes=True)
    return [m.view_as(w) for m, w in zip(torch.split(keep, sizes), weights)]


# --------------------------------------------------------------------------- masks

#: Mask sets up to this many weights also keep float copies of the masks as multipliers.
_FLOAT_FACTORS_MAX = 1 << 22


def tensor_version(tensor: torch.Tensor) -> int | None:
    """The tensor's version counter (it moves on every in-place change); None for an inference
    tensor, which keeps none: then only a replaced tensor can be seen."""
    try:
        return tensor._version
    except RuntimeError:
        return None


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
        self._factor_masks: list[torch.Tensor] = []
        self._factor_versions: list[int] | None = None
        self._factor_views: list[torch.Tensor] = []
        self._factor_copies = False

    @property
    def weights(self) -> list[nn.Parameter]:
        return [layer.weight for layer in self.layers]

    def follow_weights(self) -> None:
        """Each mask onto its weight's device: a model moved (``model.to("cuda")``) after its masks
        were made keeps training on them."""
        for index, (mask, weight) in enumerate(zip(self.masks, self.weights)):
            if mask.device != weight.device:
                self.masks[index] = mask.to(weight.device)

    def set(self, masks: Sequence[torch.Tensor]) -> None:
        """Install new masks (any bool/0-1 tensors shaped like the weights) and refresh counts."""
        masks = list(masks)
        if len(masks) != len(self.layers):
            raise ValueError(f"masks: {len(masks)} given for {len(self.layers)} layers (one per prunable weight, "
                             f"in the order of the method's layers)")
        for mask, layer in zip(masks, self.layers):
            if tuple(mask.shape) != layer.shape:
                raise ValueError(f"masks: the mask for layer '{layer.name}' has shape {tuple(mask.shape)}, its "
                                 f"weight {layer.shape}: give each mask its weight's shape")
        self.masks = [m.to(device=w.device, dtype=torch.bool) for m, w in zip(masks, self.weights)]
        self.refresh_counts()

    def fill_ones(self) -> None:
        for mask in self.masks:
            mask.fill_(True)
        self.refresh_counts()

    def refresh_counts(self) -> None:
        self.nonzeros = [int(c) for c in torch.stack([m.sum() for m in self.masks]).tolist()]

    def _factors(self) -> list[torch.Tensor]:
        """The masks as multipliers giving the same products as the bool masks, bit for bit.

        A float tensor times a bool tensor takes PyTorch's slow casting loop on CPU (~6x a
        same-dtype multiply). Large mask sets multiply as uint8 views of the masks (no
        copy, vectorised; at that size the multiply is memory-bound and as fast as a
        float one); small ones (at most ``_FLOAT_FACTORS_MAX`` weights, i.e. 16 MiB) as
        float copies in the weights' dtype, another ~1.7x faster on small tensors. The
        list is rebuilt when a mask is replaced or changed in place (its version counter
        moves, as under RigL's updates); uint8 views share the masks' storage anyway. (A
        mask written through ``.data`` or NumPy, which bypass the version counter, is not
        seen: replace it, or use ``set``.)
        """
        masks = self.masks
        versions = [tensor_version(m) for m in masks]
        cached = self._factor_masks
        if (len(cached) == len(masks) and all(map(operator.is_, cached, masks))
                and (versions == self._factor_versions or not self._factor_copies)):
            return self._factor_views
        copies = None not in versions and sum(m.numel() for m in masks) <= _FLOAT_FACTORS_MAX
        views = []
        for mask, layer in zip(masks, self.layers):
            if mask.dtype != torch.bool:
                views.append(mask)
            elif copies:
                views.append(mask.to(layer.weight.dtype))
            else:
                views.append(mask.view(torch.uint8))
        self._factor_masks, self._factor_versions = list(masks), versions
        self._factor_views, self._factor_copies = views, copies
        return views

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        torch._foreach_mul_(self.weights, self._factors())

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        grads, factors = [], []
        for layer, factor in zip(self.layers, self._factors()):
            grad = layer.weight.grad
            if grad is not None:
                grads.append(grad)
                factors.append(factor)
        if grads:
            torch._foreach_mul_(grads, factors)

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
        self.set([state[layer.name].clone() for layer in self.layers])  # a method may change them in place


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
    """Intersection over union of the kept positions of two mask sets (``previous`` on any device)."""
    pairs = [(a.to(b.device), b) for a, b in zip(previous, current)]
    inter = sum(int((a & b).sum()) for a, b in pairs)
    union = sum(int((a | b).sum()) for a, b in pairs)
    return inter / union if union else 1.0


# --------------------------------------------------------------------------- N:M patterns


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` -> ``(N, M)``: at most N non-zeros in every group of M consecutive input weights."""
    parts = str(pattern).strip().split(":")
    try:
        n, m = (int(part) for part in parts) if len(parts) == 2 else (0, 0)
    except ValueError:
        n, m = 0, 0
    if not 1 <= n < m:
        raise ValueError(f"pattern {pattern!r} must be 'N:M' with integers 1 <= N < M, e.g. '2:4' "
                         f"(at most N non-zeros in every M consecutive input weights)")
    return n, m


def check_pattern_target(pattern: str, target_sparsity: float) -> tuple[int, int]:
    """``(N, M)`` of ``pattern``, or a ValueError when ``target_sparsity`` is not the pattern's 1 - N/M."""
    n, m = parse_pattern(pattern)
    if abs(target_sparsity - (1.0 - n / m)) > 1e-6:
        raise ValueError(f"pattern '{pattern}' keeps {n} of every {m} weights, i.e. sparsity {1.0 - n / m:g}: "
                         f"run it at sparsity {1.0 - n / m:g}, not {target_sparsity:g}")
    return n, m


def nm_keep(sparsity: float, n: int, m: int) -> int:
    """Weights kept per group of ``m`` at ``sparsity`` under an N:M pattern.

    ``n`` at the pattern's own sparsity 1 - n/m; below it (a gradual schedule such as GMP's
    ramp) ``m - floor(sparsity m)``, never fewer than ``n``: the masks pass through
    (m-1):m, ... and reach n:m at the target, each at most as sparse as the schedule asks.
    """
    if sparsity > 1.0 - n / m + 1e-9:
        raise ValueError(f"an {n}:{m} pattern cannot be sparser than {1.0 - n / m:g}, got sparsity {sparsity:g}")
    return max(n, m - math.floor(sparsity * m + 1e-9))


def _nm_order(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` flattened in the order N:M groups are formed: a weight ``[out, in, *kernel]`` as
    ``[out, *kernel, in]`` (the input dimension last), then row-major. This is IST-DASLab/ACDC's
    ``MagnitudeNMPruner``: a conv weight permuted to ``(out, kh, kw, in)`` and cut into runs of M
    consecutive entries of the whole tensor. Where ``in`` is a multiple of M every group lies
    inside one ``(out, kh, kw)``; where it is not (a first conv's 3 input channels) the groups run on
    across kernel positions, so that the pattern still keeps exactly N of every M weights."""
    return tensor.movedim(1, -1).reshape(-1)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest magnitudes of every group of ``m`` consecutive weights
    in :func:`_nm_order` (input dimension last). Ties keep the lower index. When the weight's size is
    not a multiple of ``m`` the last group is shorter; it too keeps at most ``n`` (all of it when it
    holds ``n`` or fewer)."""
    if weight.dim() < 2:
        raise ValueError(f"an N:M mask needs a weight with an input dimension (2-D or more), got shape {tuple(weight.shape)}")
    moved = weight.detach().abs().float().movedim(1, -1)  # [out, *kernel, in]
    scores = moved.reshape(-1)
    pad = (-scores.numel()) % m
    if pad:  # padding sorts below every real magnitude: never kept ahead of a real weight
        scores = torch.nn.functional.pad(scores, (0, pad), value=-1.0)
    groups = scores.reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device).scatter_(1, order, True)
    return keep.reshape(-1)[:moved.numel()].reshape(moved.shape).movedim(-1, 1).contiguous()


def nm_group_nonzeros(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """Non-zeros of every group of ``m`` consecutive entries in :func:`_nm_order` (the last group may be shorter)."""
    flat = _nm_order(tensor.detach() != 0).to(torch.int32)
    pad = (-flat.numel()) % m
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(-1, m).sum(dim=1)


def nm_density(shape: Sequence[int], keep: int, m: int) -> float:
    """Density of an N:M mask keeping ``keep`` of every ``m`` weights of a weight of ``shape``."""
    total = math.prod(int(size) for size in shape)
    full, rest = divmod(total, m)
    return (full * keep + min(rest, keep)) / total


def nm_masks(layers: Sequence[PrunableLayer], pattern: str, sparsity: float, target_sparsity: float,
             keep_dense: Sequence[str] = ()) -> list[torch.Tensor]:
    """N:M magnitude masks of every layer at ``sparsity`` (:func:`nm_keep`); ``keep_dense`` layers all ones."""
    n, m = check_pattern_target(pattern, target_sparsity)
    keep = nm_keep(sparsity, n, m)
    check_names_exist(layers, keep_dense, "keep_dense")
    return [torch.ones_like(layer.weight, dtype=torch.bool) if keep >= m or name_matches(layer.name, keep_dense)
            else nm_mask(layer.weight, keep, m) for layer in layers]


def nm_densities(layers: Sequence[PrunableLayer], pattern: str, sparsity: float, target_sparsity: float,
                 keep_dense: Sequence[str] = ()) -> list[float]:
    """Per-layer densities of :func:`nm_masks` (exact: they do not depend on the weights)."""
    n, m = check_pattern_target(pattern, target_sparsity)
    keep = nm_keep(sparsity, n, m)
    check_names_exist(layers, keep_dense, "keep_dense")
    return [1.0 if name_matches(layer.name, keep_dense) else nm_density(layer.shape, keep, m) for layer in layers]
