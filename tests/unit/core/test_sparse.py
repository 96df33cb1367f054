"""Sparse masked linear layers of portable numerics (acdc_bench.core.sparse): one summation order,
so the compiled kernels and the no-compiler path agree bit for bit; the masked dense values up to
rounding; the rule by type, size and density; the run records which path it took."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from acdc_bench.core import sparse
from acdc_bench.core.kernels import SparseKernels
from helpers import ROOT
from tolerance import assert_within, reduction_bound


def _layer(out_features: int, in_features: int, density: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    mask = torch.rand(out_features, in_features, generator=generator) < density
    mask[0] = False  # an empty row: its output is the bias alone
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer, mask


def _products(layer, structure, x, grad):
    x = x.clone().requires_grad_()
    layer.weight.grad = None
    y = sparse.forward(layer, structure, x)
    y.backward(grad)
    return y.detach(), x.grad, layer.weight.grad.clone()


@pytest.mark.parametrize("batch", [256, 37])  # a batch that is not a multiple of the 8 lanes
def test_compiled_kernels_and_the_no_compiler_path_give_the_same_bits(monkeypatch, batch):
    if not sparse.implementation().startswith("compiled"):
        pytest.skip(f"no compiled kernels on this machine: {sparse.implementation()}")
    layer, mask = _layer(60, 90, 0.1)
    structure = sparse.Structure(mask)
    x, grad = torch.randn(batch, 90), torch.randn(batch, 60)
    compiled = _products(layer, structure, x, grad)
    monkeypatch.setattr(sparse, "_compiled", lambda: (None, "scipy and ATen (test)"))
    fallback = _products(layer, structure, x, grad)
    for a, b, what in zip(compiled, fallback, ("output", "input gradient", "weight gradient")):
        assert torch.equal(a, b), what


@pytest.mark.parametrize("shape", [(256, 784), (37, 90), (90, 37), (8, 8), (1, 5), (5, 1), (17, 23)])
def test_the_compiled_transpose_is_an_exact_copy_at_every_edge(shape):
    if not sparse.implementation().startswith("compiled"):
        pytest.skip(f"no compiled kernels on this machine: {sparse.implementation()}")
    x = torch.randn(*shape)
    assert torch.equal(sparse.transpose(x), x.t().contiguous())
    assert torch.equal(sparse.transpose(x.t()), x)  # a non-contiguous input is read as its values


def test_a_layer_on_a_2d_batch_gives_no_view_so_an_in_place_relu_adds_no_copies():
    from acdc_bench.core import blas

    layer, mask = _layer(60, 90, 0.1)
    for y in (sparse.forward(layer, sparse.Structure(mask), torch.randn(16, 90)),
              blas.linear(torch.randn(16, 90), layer.weight, layer.bias)):
        assert not y._is_view()
        y.relu_()
        assert type(y.grad_fn).__name__ == "ReluBackward0"  # not CopySlices around a view's in-place op
    y = sparse.forward(layer, sparse.Structure(mask), torch.randn(2, 8, 90))  # a 3-D batch keeps its shape
    assert y.shape == (2, 8, 60)


def test_the_products_are_the_masked_dense_ones_up_to_rounding():
    layer, mask = _layer(50, 120, 0.08, seed=1)
    x, grad = torch.randn(64, 120), torch.randn(64, 50)
    y, grad_x, grad_w = _products(layer, sparse.Structure(mask), x, grad)
    w = layer.weight.detach()
    assert_within(y, x @ w.T + layer.bias.detach(),
                  reduction_bound(x.abs() @ w.abs().T, 121) + torch.finfo().eps * y.abs(), "output")
    assert_within(grad_x, grad @ w, reduction_bound(grad.abs() @ w.abs(), 50), "input gradient")
    dense = (grad.T @ x) * mask
    assert_within(grad_w, dense, reduction_bound(grad.abs().T @ x.abs(), 64), "weight gradient")
    assert torch.equal(grad_w[~mask], torch.zeros(int((~mask).sum())))


def test_the_rule_is_type_size_and_density():
    big, small = nn.Linear(784, 300), nn.Linear(100, 10)
    assert sparse.eligible(big, sparse.MAX_DENSITY) and not sparse.eligible(big, sparse.MAX_DENSITY + 0.01)
    assert not sparse.eligible(small, 0.01)  # below MIN_WEIGHTS
    assert not sparse.eligible(nn.Conv2d(64, 64, 3), 0.01)
    assert not sparse.eligible(big.double(), 0.01)


def test_sparse_kernels_come_and_go_and_leave_the_portable_dense_forward_in_place():
    from acdc_bench.core import blas

    layer, mask = _layer(300, 100, 0.05)
    blas.install(layer)
    dense_forward = vars(layer)["forward"]
    kernels = SparseKernels([layer], "portable")
    kernels.sync([mask], [float(mask.float().mean())], enabled=True)
    assert kernels.active == [True] and vars(layer)["forward"].func is sparse.forward
    kernels.sync([mask], [float(mask.float().mean())], enabled=False)  # a step that wants the dense gradient
    assert kernels.active == [False] and vars(layer)["forward"] is dense_forward


def test_without_a_compiler_the_run_says_which_path_it_takes(tmp_path):
    code = ("from acdc_bench.core import sparse\nprint(sparse.implementation())")
    environment = {"PATH": str(tmp_path), "CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("scipy and ATen (compiling sparse_linear.c failed"), done.stdout


def test_the_kernels_built_without_avx2_give_the_same_bits(tmp_path):
    """The vector paths (AVX2 intrinsics on x86) against the plain C loops a build without them runs
    (as on another architecture): the sums' order is the source's, so the bits agree."""
    import ctypes
    import platform
    import shutil

    compiler = shutil.which("cc") or shutil.which("gcc")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the AVX2 build is x86's")
    if not sparse.implementation().startswith("compiled") or not compiler:
        pytest.skip(f"no compiled kernels to compare: {sparse.implementation()}")
    plain = tmp_path / "plain.so"
    subprocess.run([compiler, *sparse.FLAGS, str(sparse.SOURCE), "-o", str(plain)], check=True, timeout=120)
    libraries = [sparse._compiled()[0], ctypes.CDLL(str(plain))]
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    libraries[1].csr_rows.argtypes = [int64, pointer, pointer, pointer, pointer, pointer, int64, pointer]
    libraries[1].sampled_dots.argtypes = [int64, pointer, pointer, pointer, pointer, pointer, int64, pointer]
    libraries[1].transpose.argtypes = [int64, int64, pointer, pointer]
    generator = torch.Generator().manual_seed(3)
    for batch in (256, 37, 5):
        mask = torch.rand(60, 90, generator=generator) < 0.1
        structure = sparse.Structure(mask)
        w, x, g = (torch.randn(*shape, generator=generator) for shape in ((60, 90), (batch, 90), (batch, 60)))
        results = []
        for library in libraries:
            x_t, g_t, y_t = torch.empty(90, batch), torch.empty(60, batch), torch.empty(60, batch)
            grad = torch.zeros(60 * 90)
            library.transpose(batch, 90, x.data_ptr(), x_t.data_ptr())
            library.transpose(batch, 60, g.data_ptr(), g_t.data_ptr())
            library.csr_rows(60, structure.indptr.data_ptr(), structure.columns.data_ptr(), structure.flat.data_ptr(),
                             w.data_ptr(), x_t.data_ptr(), batch, y_t.data_ptr())
            library.sampled_dots(len(structure.rows), structure.rows.data_ptr(), structure.columns.data_ptr(),
                                 structure.flat.data_ptr(), g_t.data_ptr(), x_t.data_ptr(), batch, grad.data_ptr())
            results.append((x_t, y_t, grad))
        for a, b, what in zip(*results, ("transpose", "output", "weight gradient")):
            assert torch.equal(a, b), f"{what}, batch {batch}"



def test_a_batch_of_another_width_gets_torchs_own_error_and_nothing_is_read_past_it():
    layer, mask = _layer(60, 90, 0.1)
    structure = sparse.Structure(mask)
    for width in (50, 120):  # narrower: the kernels would read past the batch; wider: use part of it
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            sparse.forward(layer, structure, torch.randn(4, width))


@pytest.mark.parametrize("compiled", [True, False])
def test_the_products_are_float32_whatever_the_default_dtype(monkeypatch, compiled):
    if compiled and not sparse.implementation().startswith("compiled"):
        pytest.skip(f"no compiled kernels on this machine: {sparse.implementation()}")
    if not compiled:
        monkeypatch.setattr(sparse, "_compiled", lambda: (None, "scipy and ATen (test)"))
    layer, mask = _layer(60, 90, 0.1)
    structure = sparse.Structure(mask)
    x, grad = torch.randn(37, 90), torch.randn(37, 60)
    expected = _products(layer, structure, x, grad)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        under_float64 = _products(layer, structure, x, grad)
    finally:
        torch.set_default_dtype(default)
    for a, b, what in zip(expected, under_float64, ("output", "input gradient", "weight gradient")):
        assert b.dtype == torch.float32 and torch.equal(a, b), what


def test_kernels_that_do_not_load_leave_the_same_bits_to_scipy_and_aten(monkeypatch):
    """A cache folder mounted noexec or a damaged library: the run goes on without them, saying why."""
    import ctypes

    if not sparse.implementation().startswith("compiled"):
        pytest.skip(f"no compiled kernels on this machine: {sparse.implementation()}")
    layer, mask = _layer(60, 90, 0.1)
    structure = sparse.Structure(mask)
    x, grad = torch.randn(37, 90), torch.randn(37, 60)
    compiled = _products(layer, structure, x, grad)

    def refuse(path, *args, **kwargs):
        raise OSError(f"{path}: failed to map segment from shared object")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    sparse._compiled.cache_clear()
    try:
        said = sparse.implementation()
        fallback = _products(layer, structure, x, grad)
    finally:
        monkeypatch.undo()
        sparse._compiled.cache_clear()
    assert said.startswith("scipy and ATen (loading ") and "failed to map segment" in said and "delete it" in said
    for a, b, what in zip(compiled, fallback, ("output", "input gradient", "weight gradient")):
        assert torch.equal(a, b), what
    assert sparse.implementation().startswith("compiled")


def test_a_failed_compile_is_named_by_its_last_line():
    quiet = subprocess.CalledProcessError(1, ["cc"], stderr=" \n")  # a compiler that printed nothing
    assert sparse._last_line(quiet) == str(quiet)
    slow = subprocess.TimeoutExpired(["cc"], 120, stderr=b"sparse_linear.c:1: error: stopped\n")  # bytes, always
    assert sparse._last_line(slow) == "sparse_linear.c:1: error: stopped"


def test_avx2_vectors_only_where_the_cpu_has_avx2(monkeypatch):
    import platform

    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: False)
    assert "-mavx2" not in sparse._flags() and set(sparse.FLAGS) <= set(sparse._flags())
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    assert ("-mavx2" in sparse._flags()) == (platform.machine().lower() in ("x86_64", "amd64"))


def test_masks_without_a_version_counter_and_a_forward_set_by_the_user():
    """Masks made under inference_mode keep no version counter: the kernels still run them; a
    forward the user set while the kernels ran is the user's to keep when the kernels go."""
    layer, mask = _layer(300, 100, 0.05)
    with torch.inference_mode():
        frozen = mask.clone()
    kernels = SparseKernels([layer], "portable")
    density = float(mask.float().mean())
    for _ in range(2):  # the second sync finds the same mask and rebuilds nothing
        kernels.sync([frozen], [density], enabled=True)
    assert kernels.active == [True]

    def mine(x):
        return x

    layer.forward = mine
    kernels.remove()
    assert kernels.active == [False] and vars(layer)["forward"] is mine


def test_sparseprops_forward_gives_torchs_error_for_a_batch_of_another_width():
    from acdc_bench.core import kernels

    layer, mask = _layer(300, 100, 0.05)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        kernels._sparse_linear_forward(layer, mask, kernels._csr_structure(mask), torch.randn(4, 50))
