"""Sparse CPU kernels for masked linear layers, where they measure faster (optional: sparseprop).

A masked method's compressed step computes each layer densely with its masked weight. For
a large linear layer at a high sparsity on one CPU thread, sparseprop's sparse forward and
backward (IST-DASLab, the AC/DC authors' lab; ``pip install pybind11 wheel`` then
``pip install --no-build-isolation sparseprop``) is faster. Measured on this project's 2-core
AMD EPYC, the default suite's whole compressed step through this module, paired step by step
against dense-masked (``python benchmarks/profile_step.py acdc-sparse --pair --distribution
uniform --sparsity S``; README "Sparse kernels"): 0.84x at 2% density of the 784x300 layer,
0.955x at 5%, 1.05x at 7%; RigL's 95% ERK step (that layer 3.85% dense) 0.91x. With 2 threads
sparseprop is 2-6x slower, and the smaller layers were slower at every density.
:func:`eligible` is that rule, nothing more clever.

The layer keeps its dense ``weight`` parameter: the forward pass gathers the values at the
mask (``index_select`` with the mask's flat indices, whose backward scatters the gradient
back; ``masked_select`` cost more than the kernel saved), so the optimizer, the masks,
checkpoints and the FLOP meter see the same tensors as before, and the weight gradient is the
masked dense gradient up to float rounding (tested). Where sparseprop is not installed, or the
rule does not hold, layers run densely: ``kernels: dense`` in a suite (or
``sparsify(..., kernels="dense")``) turns the sparse kernels off.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import torch
from torch import nn

from acdc_bench.core import blas, sparse
from acdc_bench.core.sparsity import tensor_version

#: The rule measured on the default suite's model (see the module docstring).
MIN_WEIGHTS = 200_000
MAX_DENSITY = 0.05
MODES = ("auto", "dense")
#: What :class:`SparseKernels` runs: sparseprop where it measures faster (``auto``), nothing
#: (``dense``), or the fixed-order kernels of portable numerics (``portable``, :mod:`acdc_bench.core.sparse`).
BACKENDS = (*MODES, "portable")


@functools.lru_cache(maxsize=1)
def available() -> bool:
    try:
        from sparseprop.modules.functions import SparseLinearFunction  # noqa: F401
    except ImportError:
        return False
    return True


def eligible(module: nn.Module, density: float) -> bool:
    """Whether ``module`` at ``density`` runs faster on sparseprop than densely (the measured rule).

    One thread means torch's *and* sparseprop's: its OpenMP runtime takes ``OMP_NUM_THREADS`` when
    it starts (``reproduce --jobs`` sets it for its workers), not ``torch.set_num_threads``."""
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and weight is not None and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.numel() >= MIN_WEIGHTS and density <= MAX_DENSITY
            and torch.get_num_threads() == 1 and os.environ.get("OMP_NUM_THREADS") == "1" and available())


def _csr_structure(mask: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """((row pointers, column indices), flat indices) of ``mask``'s non-zeros, rows in order."""
    rows, columns = mask.nonzero(as_tuple=True)
    return (sparse.csr_indptr(rows, mask.shape[0]).int(), columns.int()), rows * mask.shape[1] + columns


def _sparse_linear_forward(module: nn.Linear, mask: torch.Tensor, structure, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != module.weight.dtype or not blas.fits(x, module.weight):
        return nn.functional.linear(x, module.weight, module.bias)  # torch's own product, or its error
    from sparseprop.modules.functions import SparseLinearFunction

    csr, flat = structure
    values = module.weight.view(-1).index_select(0, flat)  # row-major, as the CSR structure
    out = SparseLinearFunction.apply(x, values, csr, module.bias, module.out_features)
    # Its output can be a transposed view, which autograd forbids modifying in place (ReLU(inplace=True)).
    return out.clone(memory_format=torch.contiguous_format) if out._is_view() else out


def _ours(forward) -> bool:
    return isinstance(forward, functools.partial) and forward.func in (sparse.forward, _sparse_linear_forward)


class SparseKernels:
    """Runs the eligible layers of a mask set on sparse kernels while their masks are in force:
    sparseprop's (``auto``) or, under portable numerics, the fixed-order ones (``portable``)."""

    def __init__(self, modules: Sequence[nn.Module], mode: str = "auto"):
        if mode not in BACKENDS:
            raise ValueError(f"kernels '{mode}' is unknown; allowed: {', '.join(BACKENDS)}")
        self.modules = list(modules)
        self.mode = mode
        self._installed: list[tuple[torch.Tensor, int] | None] = [None] * len(self.modules)
        #: Per layer, the instance forward it had before a sparse one (the portable dense products').
        self._before: list[object | None] = [None] * len(self.modules)

    def _wanted(self, module: nn.Module, density: float) -> bool:
        if self.mode == "portable":
            return sparse.eligible(module, density)
        return self.mode == "auto" and eligible(module, density)

    @property
    def active(self) -> list[bool]:
        """Per layer: whether its forward pass runs on the sparse kernel now."""
        return [entry is not None for entry in self._installed]

    def sync(self, masks: Sequence[torch.Tensor], densities: Sequence[float], enabled: bool) -> None:
        """Before a step's forward pass: the sparse kernel on every eligible layer when ``enabled``
        (masks in force, no dense gradient wanted), its structure rebuilt when a mask changed."""
        for index, (module, mask, density) in enumerate(zip(self.modules, masks, densities)):
            wanted = enabled and self._wanted(module, density)
            installed = self._installed[index]
            if not wanted:
                if installed is not None:
                    if _ours(vars(module).get("forward")):  # a forward set by someone else since stays
                        del module.forward
                        if self._before[index] is not None:
                            module.forward = self._before[index]
                    self._installed[index] = self._before[index] = None
                continue
            if installed is not None and installed[0] is mask and installed[1] == tensor_version(mask):
                continue
            if installed is None:
                self._before[index] = vars(module).get("forward")
            if self.mode == "portable":
                module.forward = functools.partial(sparse.forward, module, sparse.Structure(mask))
            else:
                module.forward = functools.partial(_sparse_linear_forward, module, mask, _csr_structure(mask))
            self._installed[index] = (mask, tensor_version(mask))

    def remove(self) -> None:
        """Every layer back to its dense forward pass."""
        self.sync([None] * len(self.modules), [1.0] * len(self.modules), enabled=False)


