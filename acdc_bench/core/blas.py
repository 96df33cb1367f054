"""Portable dense products: linear layers' matrix products on OpenBLAS's Haswell kernels, one thread.

Under portable numerics (:mod:`acdc_bench.numerics`) a CPU run must compute the same bits on
Intel and AMD CPUs. torch's own products run on MKL, whose only vendor-independent code path
(``MKL_CBWR=COMPATIBLE``) is SSE2 and about 2.5x slower than its AVX2 path, which MKL runs on
Intel CPUs only. OpenBLAS, as numpy's PyPI wheels ship it (the ``scipy-openblas`` build with
``DYNAMIC_ARCH``), picks its kernels by a *core type* that the environment can fix:
``OPENBLAS_CORETYPE=Haswell`` runs the same AVX2/FMA single-precision GEMM kernels with the same
blocking on every x86-64 CPU that has AVX2 and FMA (OpenBLAS's Zen core type uses those very
kernels), and ``OPENBLAS_NUM_THREADS=1`` fixes how the work is split (two threads give other
bits). Both are read once, when numpy loads the library, so :mod:`acdc_bench.numerics` pins them
before numpy or torch is imported.

:func:`install` gives every ``nn.Linear`` of a model a forward pass whose three products (output,
input gradient, weight gradient) are ``numpy.matmul`` calls on the tensors' own memory; the bias
and its gradient stay on ATen (pinned to AVX2). A layer falls back to ``F.linear`` where the
portable path does not apply: off the CPU, another dtype than float32, under autocast, or under
a ``torch_dispatch`` mode such as ``FlopCounterMode`` (which counts the aten product it sees). The
path is chosen by these rules alone, never by a timing, so it is the same on every machine.
:func:`acdc_bench.numerics.openblas_problem` says why a process cannot run it (numpy built on
another BLAS, another core type); portable numerics are then refused with that reason.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn import functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode


class _Linear(torch.autograd.Function):
    """``x @ weight.T`` and its two gradients through numpy's OpenBLAS (2-D float32 CPU tensors)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.from_numpy(x.detach().numpy() @ weight.detach().numpy().T)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # backward(create_graph=True): gradients that are differentiable themselves
            grad_x = grad.matmul(weight) if ctx.needs_input_grad[0] else None
            grad_weight = grad.t().matmul(x) if ctx.needs_input_grad[1] else None
            return grad_x, grad_weight
        grad = grad.contiguous().numpy()
        grad_x = torch.from_numpy(grad @ weight.detach().numpy()) if ctx.needs_input_grad[0] else None
        grad_weight = torch.from_numpy(grad.T @ x.detach().numpy()) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x`` is a batch of ``weight``'s input width (else torch's own product raises its error)."""
    return x.dim() > 0 and x.shape[-1] == weight.shape[-1]


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``linear(x, weight)`` takes the portable path (the rule of the module docstring;
    besides: a batch of the weight's width, else torch says what does not fit, and no functorch
    transform such as ``vmap`` and no forward-mode AD, which a numpy product cannot follow)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and weight.dim() == 2
            and fits(x, weight)
            and not torch.is_autocast_enabled("cpu") and _get_current_dispatch_mode() is None
            and not torch._C._are_functorch_transforms_active() and forward_ad._current_level < 0)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with its products on the portable path where it applies. Second-order gradients
    (``backward(create_graph=True)``) are torch's products of the saved tensors: right, not pinned."""
    if not applies(x, weight) or (bias is not None and bias.dtype != x.dtype):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = _Linear.apply(flat, weight.contiguous())
    if bias is not None:
        out = out + bias
    # Not a view where the shape stays: an in-place op after the layer (ReLU(inplace=True)) on a
    # view would make autograd copy the gradient through CopySlices and AsStridedBackward.
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.shape[0])


@torch.compiler.disable  # dynamo would trace numpy's product into torch's own (MKL's) product
def _forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, module.weight, module.bias)


def install(model: nn.Module) -> int:
    """Give every ``nn.Linear`` of ``model`` (parametrized ones included) the portable forward pass,
    as an instance attribute (the class is untouched; ``remove`` undoes it). Returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward \
                and "forward" not in vars(module):
            module.forward = functools.partial(_forward, module)
            count += 1
    return count


def remove(model: nn.Module) -> None:
    for module in model.modules():
        forward = vars(module).get("forward")
        if isinstance(forward, functools.partial) and forward.func is _forward:
            del module.forward
