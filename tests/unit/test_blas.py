"""Portable linear products: numpy's OpenBLAS on the pinned core type, the same values as torch's
up to float rounding, torch's own product where the rule says so (acdc_bench.core.blas)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from acdc_bench import numerics
from acdc_bench.core import blas
from helpers import ROOT
from tolerance import reduction_bound

portable = pytest.mark.skipif(numerics.active() != "portable", reason="the test process runs native numerics")


def _bound(a: torch.Tensor, b: torch.Tensor, dim_a: int, dim_b: int) -> torch.Tensor:
    """Two orders of the sums of the product contracting ``a``'s ``dim_a`` with ``b``'s ``dim_b``."""
    magnitude = torch.tensordot(a.abs().double(), b.abs().double(), dims=([dim_a], [dim_b]))
    return reduction_bound(magnitude, a.shape[dim_a])


@portable
def test_the_process_runs_numpys_openblas_on_the_pinned_core():
    found = numerics.openblas()
    assert found["library"] == numerics.OPENBLAS and numerics.openblas_problem() is None
    assert (found["core"], found["threads"]) == (numerics.PORTABLE_ENV["OPENBLAS_CORETYPE"], 1)


@pytest.mark.parametrize("shape", [(32, 50), (4, 8, 50)])
@pytest.mark.parametrize("bias", [True, False])
def test_products_and_gradients_are_numpys_and_agree_with_torch(shape, bias):
    torch.manual_seed(0)
    layer = nn.Linear(50, 7, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape[:-1], 7)
    reference = layer(x)
    reference.backward(grad)
    expected = [x.grad.clone(), layer.weight.grad.clone()]
    x.grad = None
    layer.zero_grad()
    assert blas.install(layer) == 1
    out = layer(x)
    out.backward(grad)
    flat_x, flat_grad = x.detach().reshape(-1, 50), grad.reshape(-1, 7)
    # The portable path's own bits: numpy's products, the bias added by ATen afterwards.
    product = torch.from_numpy(flat_x.numpy() @ layer.weight.detach().numpy().T)
    assert torch.equal(out.detach().reshape(-1, 7), product + layer.bias.detach() if bias else product)
    assert torch.equal(x.grad.reshape(-1, 50), torch.from_numpy(flat_grad.numpy() @ layer.weight.detach().numpy()))
    assert torch.equal(layer.weight.grad, torch.from_numpy(flat_grad.numpy().T @ flat_x.numpy()))
    # torch's product up to the rounding of the sums (the bias once more for the output).
    w = layer.weight.detach()
    # (plus one rounding of the bias's addition: its result's half ulp, u |y|)
    tolerance = _bound(flat_x, w, 1, 1) + (torch.finfo(torch.float32).eps * reference.detach().reshape(-1, 7).abs() if bias else 0)
    assert ((out.detach().reshape(-1, 7) - reference.detach().reshape(-1, 7)).abs() <= tolerance).all()
    assert ((x.grad - expected[0]).reshape(-1, 50).abs() <= _bound(flat_grad, w, 1, 0)).all()
    assert ((layer.weight.grad - expected[1]).abs() <= _bound(flat_grad, flat_x, 0, 0)).all()
    blas.remove(layer)
    assert "forward" not in vars(layer)


def test_torch_computes_where_the_rule_says_so():
    layer = nn.Linear(20, 5)
    blas.install(layer)
    x = torch.randn(3, 20)
    with FlopCounterMode(display=False) as counter:  # a dispatch mode sees torch's aten product
        layer(x)
    assert counter.get_total_flops() == 2 * 3 * 20 * 5
    assert not blas.applies(x.double(), layer.weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not blas.applies(x, layer.weight) and layer(x).dtype == torch.bfloat16


def test_a_parametrized_weight_trains_through_the_portable_path():
    """STR's soft threshold is a parametrization: its gradient reaches the original weight."""
    class Halve(nn.Module):
        def forward(self, weight):
            return weight * 0.5

    layer = nn.Linear(6, 4)
    parametrize.register_parametrization(layer, "weight", Halve())
    assert blas.install(layer) == 1
    x = torch.randn(5, 6)
    layer(x).sum().backward()
    original = layer.parametrizations["weight"].original
    assert torch.equal(original.grad, torch.from_numpy(np.ones((5, 4), np.float32).T @ x.numpy()) * 0.5)


@portable
def test_numpy_on_another_core_type_refuses_portable_numerics_with_the_reason():
    """A wrapper that imported numpy before the pins were set (here: on another core type)."""
    environment = dict(os.environ, OPENBLAS_CORETYPE="Sandybridge")
    code = ("import os, numpy\nos.environ['OPENBLAS_CORETYPE'] = 'Haswell'\n"
            "from acdc_bench import numerics\nprint(numerics.active())\n"
            "try:\n    numerics.ensure('portable')\nexcept numerics.NumericsError as error:\n    print(error)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    mode, message = done.stdout.splitlines()[:2]
    assert mode == "native"
    assert "core type Sandybridge with 1 thread(s), not Haswell with 1" in message and "--numerics native" in message


def _twins(in_features: int = 30, out_features: int = 20):
    """A layer on the portable path and its copy on torch's own."""
    torch.manual_seed(0)
    portable = nn.Linear(in_features, out_features)
    plain = nn.Linear(in_features, out_features)
    plain.load_state_dict(portable.state_dict())
    assert blas.install(portable) == 1
    return portable, plain


def test_second_order_gradients_follow_the_products():
    """backward(create_graph=True) gives gradients that are differentiable themselves: a Hessian-vector
    product and a gradient penalty as torch's own layer gives them (up to the rounding of their sums)."""
    portable, plain = _twins()
    x, v = torch.randn(8, 30), torch.randn(8, 30)
    _, hvp = torch.autograd.functional.hvp(lambda x: portable(x).pow(2).sum(), x, v)
    weight = portable.weight.detach().double()
    expected = 2 * (v.double() @ weight.T) @ weight  # the Hessian of sum(y^2) in x is 2 W^T W
    magnitude = 2 * (v.double().abs() @ weight.abs().T) @ weight.abs()
    assert hvp.abs().sum() > 0
    assert bool(((hvp.double() - expected).abs() <= reduction_bound(magnitude, 30 + 20)).all())
    for layer in (portable, plain):  # a gradient penalty: d/dW of |d sum(y) / dx|^2
        x = torch.randn(8, 30, requires_grad=True)
        (grad,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
        grad.pow(2).sum().backward()
    column_sums = portable.weight.detach().double().sum(0)
    bound = reduction_bound(portable.weight.detach().double().abs().sum(0).expand(20, 30), 20 * 8)
    for layer in (portable, plain):
        expected = (2 * 8 * column_sums).expand(20, 30)  # 8 examples, each with gradient W^T 1
        assert bool(((layer.weight.grad.double() - expected).abs() <= 8 * bound).all())


# torch's forward-mode AD loads a TorchScript helper of its own, which warns of TorchScript's deprecation
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_vmap_and_forward_mode_take_torchs_product():
    """functorch transforms and forward-mode AD cannot see through a numpy product: torch's own runs."""
    from torch.func import functional_call, grad, jvp, vmap

    portable, _ = _twins()
    params = {name: p.detach() for name, p in portable.named_parameters()}
    x = torch.randn(5, 30)
    per_example = vmap(grad(lambda p, x: functional_call(portable, p, (x,)).sum()), in_dims=(None, 0))(params, x)
    for index in range(5):  # the weight gradient of sum(W x + b) is 1 x^T: exact
        assert torch.equal(per_example["weight"][index], torch.ones(20, 1) * x[index])
    tangent = torch.randn(5, 30)
    _, derivative = jvp(portable, (x,), (tangent,))
    magnitude = tangent.double().abs() @ portable.weight.detach().double().abs().T
    assert bool(((derivative.double() - tangent.double() @ portable.weight.detach().double().T).abs()
                 <= reduction_bound(magnitude, 30)).all())


def test_what_does_not_fit_gets_torchs_own_error():
    portable, _ = _twins()
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        portable(torch.randn(4, 31))
    with pytest.raises(RuntimeError):  # a float64 bias on a float32 layer, as F.linear refuses it
        blas.linear(torch.randn(4, 30), portable.weight, portable.bias.detach().double())
