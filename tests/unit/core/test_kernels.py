"""Sparse kernels for masked linear layers (acdc_bench.core.kernels): the rule, and equality to
the masked dense computation where sparseprop is installed."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import acdc_bench
from acdc_bench.core import kernels
from acdc_bench.core.sparsity import magnitude_mask
from tolerance import assert_within, reduction_bound

needs_sparseprop = pytest.mark.skipif(not kernels.available(), reason="sparseprop is not installed (nox installs it)")


@contextlib.contextmanager
def threads(n: int):
    """n torch threads, and OMP_NUM_THREADS=n (what sparseprop's OpenMP runtime reads)."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


def test_rule_picks_only_large_linear_layers_at_high_sparsity_on_one_thread(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: True)
    big, small = nn.Linear(784, 300), nn.Linear(300, 100)
    with threads(1):
        assert kernels.eligible(big, 0.05)
        assert not kernels.eligible(big, 0.07)  # measured: 1.05x the dense-masked step at 7%
        assert not kernels.eligible(small, 0.05)  # measured: slower on the small layers
        assert not kernels.eligible(nn.Conv2d(64, 64, 3), 0.05)
        assert not kernels.eligible(big.double(), 0.05)
    with threads(2):
        assert not kernels.eligible(nn.Linear(784, 300), 0.05)  # measured: 2.3x slower with 2 threads
    with threads(1):
        os.environ.pop("OMP_NUM_THREADS")  # torch on 1 thread, sparseprop's OpenMP on every core
        assert not kernels.eligible(nn.Linear(784, 300), 0.05)
    monkeypatch.setattr(kernels, "available", lambda: False)
    with threads(1):
        assert not kernels.eligible(nn.Linear(784, 300), 0.05)
    with pytest.raises(ValueError, match="kernels 'csr' is unknown; allowed: auto, dense"):
        kernels.SparseKernels([big], "csr")


def _linear_bounds(x, weight, bias, grad):
    """Rounding bounds of a linear layer's forward and backward (output, input grad, weight grad,
    bias grad): each is a sum over one axis, of the products' magnitudes (tolerance.py)."""
    x, weight, grad = x.detach().abs(), weight.detach().abs(), grad.abs()
    batch, inputs = x.shape
    outputs = weight.shape[0]
    return (reduction_bound(x @ weight.T + bias.detach().abs(), inputs + 1),
            reduction_bound(grad @ weight, outputs),
            reduction_bound(grad.T @ x, batch),
            reduction_bound(grad.sum(0), batch))


@needs_sparseprop
def test_sparse_layer_equals_masked_dense_and_is_removed_again():
    torch.manual_seed(0)
    layer = nn.Linear(784, 300)
    mask = magnitude_mask(layer.weight.detach(), 0.05)
    with torch.no_grad():
        layer.weight.mul_(mask)
        layer.weight[mask.nonzero()[0][0], mask.nonzero()[0][1]] = 0.0  # a zero inside the mask keeps its gradient
    x = torch.randn(256, 784, requires_grad=True)
    grad = torch.randn(256, 300)
    reference = F.linear(x, layer.weight, layer.bias)
    reference.backward(grad)
    expected = (reference.detach(), x.grad.clone(), layer.weight.grad * mask, layer.bias.grad.clone())
    x.grad, layer.weight.grad, layer.bias.grad = None, None, None
    sparse = kernels.SparseKernels([layer])
    with threads(1):
        sparse.sync([mask], [0.05], enabled=True)
        assert sparse.active == [True] and "forward" in vars(layer)
        out = layer(x)
        out.backward(grad)
    got = (out.detach(), x.grad, layer.weight.grad, layer.bias.grad)
    names = ("output", "input gradient", "weight gradient", "bias gradient")
    for a, b, bound, name in zip(got, expected, _linear_bounds(x, layer.weight, layer.bias, grad), names):
        assert_within(a, b, bound, name)
    assert torch.equal(layer.weight.grad[~mask], torch.zeros(int((~mask).sum())))
    sparse.sync([mask], [0.05], enabled=False)
    assert sparse.active == [False] and "forward" not in vars(layer)


def _acdc_model(kernel_mode: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(inplace=True), nn.Linear(300, 10))
    sparsifier = acdc_bench.sparsify(model, "acdc", sparsity=0.95, epochs=4, steps_per_epoch=3, batch_size=32,
                                     input_shape=(1, 28, 28), kernels=kernel_mode, distribution="uniform",
                                     schedule_epochs=4, warmup_epochs=1, phase_epochs=1, final_dense_epochs=1,
                                     final_sparse_epochs=1)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    return model, sparsifier, optimizer


@needs_sparseprop
def test_acdc_run_on_sparse_kernels_equals_the_dense_run_within_float_tolerance():
    """The two runs in lockstep through the AC/DC schedule: at every step the 784x300 layer's output
    on sparse kernels is the dense-masked output within its rounding bound, and the masks agree.
    Both runs then continue from the dense run's weights and momenta, so rounding never compounds
    (the gradients' bounds are held by the test above)."""
    generator = torch.Generator().manual_seed(1)
    active, dense_active = [], []
    with threads(1):
        dense, dense_sparsifier, dense_optimizer = _acdc_model("dense")
        model, sparsifier, optimizer = _acdc_model("auto")
        outputs = {}
        hooks = [net[1].register_forward_hook(lambda m, i, o, key=key: outputs.update({key: (i[0], o.detach())}))
                 for key, net in (("dense", dense), ("sparse", model))]
        for step in range(12):
            x, y = torch.randn(32, 1, 28, 28, generator=generator), torch.randint(0, 10, (32,), generator=generator)
            for net, opt in ((dense, dense_optimizer), (model, optimizer)):
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
            active.append(sparsifier.kernels.active[0])
            dense_active.append(dense_sparsifier.kernels.active[0])
            layer_input, expected = outputs["dense"]
            weight, bias = dense[1].weight.detach(), dense[1].bias.detach()
            bound = reduction_bound(layer_input.detach().abs() @ weight.abs().T + bias.abs(), weight.shape[1] + 1)
            assert_within(outputs["sparse"][1], expected, bound, f"step {step}: output of the 784x300 layer")
            dense_optimizer.step()
            optimizer.step()
            assert all(torch.equal(a, b) for a, b in zip(sparsifier.method.masks.masks,
                                                         dense_sparsifier.method.masks.masks)), step
            with torch.no_grad():
                for a, b in zip(model.parameters(), dense.parameters()):
                    a.copy_(b)
                    if b in dense_optimizer.state:
                        optimizer.state[a]["momentum_buffer"].copy_(dense_optimizer.state[b]["momentum_buffer"])
        for hook in hooks:
            hook.remove()
    # Epochs: dense, sparse, dense, sparse (3 steps each): the 784x300 layer at 5% density runs sparse
    # in the compressed epochs only; the 300x10 layer never (too small).
    assert active == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3
    assert dense_active == [False] * 12
    sparsifier.finalize()
    assert sparsifier.kernels.active == [False, False]


@needs_sparseprop
def test_rigl_update_steps_get_the_dense_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    sparsifier = acdc_bench.sparsify(model, "rigl", sparsity=0.95, epochs=2, steps_per_epoch=4, batch_size=8,
                                     input_shape=(784,), distribution="uniform", update_interval=2)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    seen = []
    with threads(1):
        for step in range(6):
            loss = model(torch.randn(8, 784)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            seen.append((step, sparsifier.kernels.active[0], int((model[0].weight.grad != 0).sum())))
            optimizer.step()
    for step, active, nonzero_grads in seen:
        update = sparsifier.method.schedule.is_update(step)
        assert active is (not update)
        if update:  # RigL grows where the dense gradient is largest: it must be dense
            assert nonzero_grads > 0.05 * 784 * 300 * 2
