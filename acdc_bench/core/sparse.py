"""Sparse masked linear layers under portable numerics: a fixed summation order, the same bits everywhere.

While a method's masks are in force and its step needs no dense weight gradient, a linear layer
whose mask keeps at most :data:`MAX_DENSITY` of its weights computes its three products on the
mask's non-zeros only (CSR structure of the mask, values read from the dense weight):

- output: row ``r`` of ``y^T`` is the sum, in CSR order, of ``w[r, c] * x^T[c]``;
- input gradient: the same with the transposed structure (``g^T`` through ``w^T``);
- weight gradient: at the mask's non-zeros only (a sampled product), the batch summed in 8 lanes
  ``b % 8`` in order of ``b``, then the lanes as ``((0+1)+(2+3))+((4+5)+(6+7))``; zero elsewhere,
  which is the masked dense gradient up to float rounding.

Each product is rounded before it is added, so the result does not depend on the compiler, its
vector width or the CPU. ``sparse_linear.c`` implements this; it is compiled at first use with the
system's C compiler (``cc``, or ``$CC``) into the user's cache. Without a compiler the same order
runs on scipy's CSR product (whose loop is that very ``y[r] += w * x[c]``) and ATen's element-wise
operations: slower, bit for bit the same (tested), and :func:`implementation` says which runs.

Which layer runs sparse follows from its type, dtype and mask density alone (:func:`eligible`),
never from a timing on the user's machine: the choice changes the bits.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from acdc_bench.core import blas
from acdc_bench.core.io import user_cache_root

#: The rule: a layer of at least this many weights whose mask keeps at most this fraction runs
#: sparse. Measured per layer of LeNet-300-100 at batch 256, one thread (docs/performance.md): the
#: 784x300 and 300x100 layers break even near 10-15% density; the 100x10 layer never does (the
#: fixed cost of a sparse call, about 0.2 ms, exceeds its whole dense product).
MIN_WEIGHTS = 20_000
MAX_DENSITY = 0.10
SOURCE = Path(__file__).with_name("sparse_linear.c")
FLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")
_X86_FLAGS = ("-mavx2",)  # wider vectors along the batch; the order of every sum stays the source's


def _flags() -> tuple[str, ...]:
    """The compiler flags: AVX2 vectors on an x86 CPU that has AVX2 (torch asks the CPU itself,
    whatever ATen's capability is capped to); the plain loops elsewhere, which give the same bits."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    has_avx2 = getattr(torch.cpu, "_is_avx2_supported", lambda: True)  # torch >= 2.1 has it
    return FLAGS + (_X86_FLAGS if x86 and has_avx2() else ())


def _last_line(error: BaseException) -> str:
    """The last non-empty line of a failed compile's output (or of the error itself)."""
    detail = getattr(error, "stderr", None) or ""
    if isinstance(detail, bytes):  # subprocess.TimeoutExpired keeps bytes even under text=True
        detail = detail.decode(errors="replace")
    lines = (detail.strip() or str(error).strip() or type(error).__name__).splitlines()
    return lines[-1]


@functools.lru_cache(maxsize=1)
def _compiled() -> tuple[ctypes.CDLL | None, str]:
    """(the compiled kernels, what runs): compiled once per source and flag set, then reused."""
    flags = _flags()
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    try:
        target = user_cache_root() / "kernels" / f"sparse_linear-{platform.machine()}-{digest}.so"
    except RuntimeError as error:  # no home directory to expand ~ into, and no XDG_CACHE_HOME
        return None, f"scipy and ATen (no cache folder for the compiled kernels: {error}; set XDG_CACHE_HOME)"
    if not target.exists():
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            return None, "scipy and ATen (no C compiler found: set CC or install gcc for the faster kernels)"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                built = Path(scratch) / target.name
                subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], check=True, capture_output=True,
                               text=True, timeout=120)
                os.replace(built, target)  # atomic: two processes compiling at once both end with one file
        except (OSError, subprocess.SubprocessError) as error:
            return None, f"scipy and ATen (compiling {SOURCE.name} failed: {_last_line(error)})"
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:  # a cache folder mounted noexec, a damaged file: the same bits without it
        return None, f"scipy and ATen (loading {target} failed: {_last_line(error)}; delete it to build it again)"
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    library.csr_rows.argtypes = [int64, pointer, pointer, pointer, pointer, pointer, int64, pointer]
    library.sampled_dots.argtypes = [int64, pointer, pointer, pointer, pointer, pointer, int64, pointer]
    library.transpose.argtypes = [int64, int64, pointer, pointer]
    return library, f"compiled kernels ({target})"


def implementation() -> str:
    """What computes the sparse products in this process (compiled kernels, or scipy and ATen and why)."""
    return _compiled()[1]


def eligible(module: nn.Module, density: float) -> bool:
    """Whether ``module`` at mask ``density`` runs sparse under portable numerics (the rule above)."""
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Linear) and weight is not None and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.numel() >= MIN_WEIGHTS and density <= MAX_DENSITY)


class Structure:
    """A mask's non-zeros in CSR order (rows of the weight) and in the transposed CSR order."""

    def __init__(self, mask: torch.Tensor):
        out_features, in_features = mask.shape
        self.shape = (out_features, in_features)
        rows, columns = mask.nonzero(as_tuple=True)
        self.rows, self.columns = rows.contiguous(), columns.contiguous()
        self.flat = rows * in_features + columns
        self.indptr = csr_indptr(rows, out_features)
        t_columns, t_rows = mask.t().nonzero(as_tuple=True)  # (input feature, output feature), rows of w^T
        self.t_rows = t_rows.contiguous()
        self.t_flat = t_rows * in_features + t_columns
        self.t_indptr = csr_indptr(t_columns, in_features)


def csr_indptr(rows: torch.Tensor, count: int) -> torch.Tensor:
    """CSR row pointers (int64, ``count + 1``) of non-zeros whose row indices, in order, are ``rows``."""
    indptr = torch.zeros(count + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(rows, minlength=count).cumsum(0)
    return indptr


def _pointer(tensor: torch.Tensor) -> int:
    return tensor.data_ptr()


def transpose(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix.t()`` as a contiguous tensor (a 2-D float32 CPU tensor; an exact copy, in tiles)."""
    library = _compiled()[0]
    matrix = matrix.contiguous()
    if library is None:
        return matrix.t().contiguous()
    rows, columns = matrix.shape
    out = torch.empty(columns, rows, dtype=torch.float32)
    library.transpose(rows, columns, _pointer(matrix), _pointer(out))
    return out


def csr_rows(indptr: torch.Tensor, columns: torch.Tensor, flat: torch.Tensor, weight: torch.Tensor,
             x_t: torch.Tensor, rows: int) -> torch.Tensor:
    """``y^T`` (rows x batch): each row the in-order sum of ``weight.flatten()[flat[k]] * x_t[columns[k]]``."""
    library = _compiled()[0]
    batch = x_t.shape[1]
    weight = weight.detach().contiguous()
    if library is None:
        import scipy.sparse

        values = weight.reshape(-1).index_select(0, flat)
        matrix = scipy.sparse.csr_matrix((values.numpy(), columns.numpy(), indptr.numpy()), shape=(rows, x_t.shape[0]))
        return torch.from_numpy(matrix @ x_t.numpy())
    out = torch.empty(rows, batch, dtype=torch.float32)
    library.csr_rows(rows, _pointer(indptr), _pointer(columns), _pointer(flat), _pointer(weight), _pointer(x_t),
                     batch, _pointer(out))
    return out


def sampled_dots(rows: torch.Tensor, columns: torch.Tensor, flat: torch.Tensor, g_t: torch.Tensor,
                 x_t: torch.Tensor, numel: int) -> torch.Tensor:
    """A flat gradient of ``numel`` zeros holding ``sum_b g_t[rows[k], b] * x_t[columns[k], b]`` at
    ``flat[k]`` for every k, each sum in the lane order above."""
    library = _compiled()[0]
    batch = x_t.shape[1]
    grad = torch.zeros(numel, dtype=torch.float32)
    if library is None:
        products = g_t.index_select(0, rows) * x_t.index_select(0, columns)
        full = batch // 8 * 8
        lanes = torch.zeros(len(rows), 8, dtype=torch.float32)
        for start in range(0, full, 8):
            lanes = lanes + products[:, start:start + 8]
        if full < batch:
            lanes[:, :batch - full] = lanes[:, :batch - full] + products[:, full:]
        lane = lanes.unbind(1)
        grad[flat] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))
        return grad
    library.sampled_dots(len(rows), _pointer(rows), _pointer(columns), _pointer(flat), _pointer(g_t), _pointer(x_t),
                         batch, _pointer(grad))
    return grad


class _SparseLinear(torch.autograd.Function):
    """``y = x (w * mask)^T`` and its gradients on the mask's non-zeros, computed on transposed
    batches (one row per feature: the kernels' loops run along the batch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, structure: Structure) -> torch.Tensor:
        x_t = transpose(x)
        ctx.save_for_backward(x_t, weight)
        ctx.structure = structure
        return transpose(csr_rows(structure.indptr, structure.columns, structure.flat, weight, x_t, structure.shape[0]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x_t, weight = ctx.saved_tensors
        structure = ctx.structure
        g_t = transpose(grad)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = transpose(csr_rows(structure.t_indptr, structure.t_rows, structure.t_flat, weight, g_t,
                                        structure.shape[1]))
        if ctx.needs_input_grad[1]:
            grad_weight = sampled_dots(structure.rows, structure.columns, structure.flat, g_t, x_t,
                                       weight.numel()).view_as(weight)
        return grad_x, grad_weight, None


@torch.compiler.disable
def forward(module: nn.Linear, structure: Structure, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with the mask's structure: a batch (..., in) in, (..., out) out (another
    dtype or device than the layer's float32 CPU weight, or a batch of another width: torch's product
    of the masked weight, which raises torch's own error for a width that does not fit)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not blas.fits(x, module.weight):
        return nn.functional.linear(x, module.weight, module.bias)
    # In and out of the transposed layout inside: element-wise layers after this one (ReLU and its
    # backward) run several times slower on a transposed view than the tiled copies cost.
    y = _SparseLinear.apply(x.reshape(-1, x.shape[-1]), module.weight, structure)
    if module.bias is not None:
        y = y + module.bias
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], module.out_features)  # no view: as blas.linear
