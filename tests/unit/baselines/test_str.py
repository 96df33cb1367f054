"""STR (soft threshold reparameterization) pinned against hand-computed values and autograd.

Each method is driven through the same hook order as :func:`acdc_bench.run.loop.train`
(``on_step_start``, forward, backward, ``before_optimizer_step`` -> maybe step,
``after_optimizer_step``, ``step_training_flops``) on tiny models (``tests/helpers.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from acdc_bench.methods import make_config
from acdc_bench.core.sparsity import weight_sparsity
from acdc_bench.baselines.str import STR, SoftThreshold, soft_threshold

from helpers import attach, make_optimizer, tiny_mlp, train_step


def test_str_threshold_function_values():
    s = torch.tensor(math.log(0.2 / 0.8))  # sigmoid(s) = 0.2
    weight = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.2, 0.3])
    out = soft_threshold(weight, s)
    # sigmoid(s) and |w| - sigmoid(s): two float32 roundings of values up to max |w|
    atol = 2 * torch.finfo(torch.float32).eps * float(weight.abs().max())
    assert torch.allclose(out, torch.tensor([-0.3, 0.0, 0.0, 0.0, 0.0, 0.1]), rtol=0, atol=atol)
    assert int(torch.count_nonzero(out)) == 2


def test_str_gradients_match_hand_formula():
    torch.manual_seed(0)
    weight = torch.randn(40, requires_grad=True)
    module = SoftThreshold(-1.0)
    coefficients = torch.randn(40)
    (coefficients * module(weight)).sum().backward()
    threshold = torch.sigmoid(torch.tensor(-1.0))
    alive = (weight.detach().abs() > threshold).float()
    assert torch.allclose(weight.grad, coefficients * alive)
    expected_s = -(coefficients * torch.sign(weight.detach()) * alive).sum() * threshold * (1 - threshold)
    assert torch.allclose(module.s.grad, expected_s)


def test_str_threshold_function_equals_autograd_bit_for_bit():
    """The hand-written backward gives autograd's values exactly (forward, dW, ds), ties included."""
    generator = torch.Generator().manual_seed(3)
    for shape in [(300, 784), (10, 100), (8, 3, 3, 3)]:
        raw = torch.randn(shape, generator=generator) * 0.05
        s_value = torch.tensor(-3.5)
        raw.view(-1)[:5] = torch.sigmoid(s_value)  # |W| == sigmoid(s): an exact zero either way
        raw.view(-1)[5:9] = 0.0
        grad = torch.randn(shape, generator=generator)
        results = []
        for function in (soft_threshold, lambda w, s: torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(s))):
            weight, s = raw.clone().requires_grad_(), s_value.clone().requires_grad_()
            out = function(weight, s)
            out.backward(grad)
            results.append((out.detach(), weight.grad, s.grad))
        for mine, reference in zip(*results):
            assert torch.equal(mine, reference)
    assert float(results[0][2]) != 0.0


def test_str_forward_keeps_the_step_count_and_the_meter_uses_it():
    model = tiny_mlp()
    method = attach("str", {"s_init": math.log(0.1 / 0.9), "lam": 0.0}, model)
    for threshold in method.thresholds:
        threshold.nonzeros = None  # set-up's FLOP measurement ran a forward pass
    with torch.no_grad():
        model(torch.randn(2, 20))  # no autograd: an evaluation pass keeps no count
    assert all(t.nonzeros is None for t in method.thresholds)
    model(torch.randn(2, 20)).sum().backward()
    kept = torch.stack([t.nonzeros for t in method.thresholds])
    assert torch.equal(kept, method.effective_nonzeros())
    method.before_optimizer_step(0)
    assert all(t.nonzeros is None for t in method.thresholds)  # read once: the next step counts anew
    assert int(method.step_training_flops(0)) == 3 * 2 * int(kept.sum())


def test_str_setup_optimizer_groups_and_targets():
    model = tiny_mlp()
    options = {"s_init": -5.0, "lam": 1e-3, "targets": {0.9: {"s_init": -7.0, "lam": 2e-3}, "0.95": {"lam": 3e-3}}}
    method = attach("str", options, model, sparsity=0.9)
    assert (method.s_init, method.lam) == (-7.0, 2e-3)
    method.setup(model, method.layers, method.flops)  # idempotent: same thresholds, no second parametrization
    assert len(model[0].parametrizations["weight"]) == 1
    assert [float(t.s.detach()) for t in method.thresholds] == [-7.0, -7.0]
    assert model[0].parametrizations["weight"].original is method.layers[0].weight
    # decay_all (official): lam is every parameter's weight decay, the thresholds in the optimizer's groups
    groups = make_optimizer(method, model, weight_decay=1e-4).param_groups
    assert [g["weight_decay"] for g in groups] == [2e-3]
    assert sorted(map(id, groups[0]["params"])) == sorted(map(id, model.parameters()))
    # built before the thresholds existed, with an lr scheduler on it (the Trainer's): they join its
    # first group, so the scheduler still knows every group and steps
    early_model = tiny_mlp()
    early = torch.optim.SGD([{"params": [early_model[0].weight]}, {"params": [early_model[0].bias], "weight_decay": 0}],
                            lr=0.1, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(early, lambda step: 1.0 / (1 + step))
    joined = attach("str", options, early_model, sparsity=0.95)
    joined.bind_optimizer(early)
    assert [g["weight_decay"] for g in early.param_groups] == [3e-3, 3e-3]
    assert early.param_groups[0]["params"][1:] == [t.s for t in joined.thresholds]
    early.step()
    scheduler.step()
    assert [g["lr"] for g in early.param_groups] == [0.05, 0.05]
    # decay_all false: a group of their own, with weight decay lam; refused where a scheduler is built
    local_model = tiny_mlp()
    local_optimizer = torch.optim.SGD(local_model.parameters(), lr=0.1, weight_decay=1e-4)
    local = attach("str", dict(options, decay_all=False), local_model, sparsity=0.95)
    assert (local.s_init, local.lam) == (-5.0, 3e-3)
    local.bind_optimizer(local_optimizer)
    assert [g["weight_decay"] for g in local_optimizer.param_groups] == [1e-4, 3e-3]
    assert local_optimizer.param_groups[1]["params"] == [t.s for t in local.thresholds]
    scheduled_model = tiny_mlp()
    scheduled = torch.optim.SGD(scheduled_model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(scheduled, 10)
    with pytest.raises(ValueError, match=r"decay_all: false .* build the scheduler after sparsify\(...\).wrap"):
        attach("str", dict(options, decay_all=False), scheduled_model, sparsity=0.95).bind_optimizer(scheduled)
    default = attach("str", dict(options, fallback=True), tiny_mlp(), sparsity=0.8)
    assert (default.s_init, default.lam) == (-5.0, 1e-3)
    assert make_config(STR, {}).resolve(0.9) == (-3200.0, 2.251757813e-5)  # official ResNet50 config
    with pytest.raises(ValueError, match="targets"):
        make_config(STR, {"targets": {0.9: {"sinit": 1}}})
    assert method.phase(0) == "sparse"
    # Planning estimate: linear ramp from dense to 1 - target, at the middle of each epoch.
    assert method.planned_densities(0) == pytest.approx([1 - 0.9 * 0.05] * 2)
    assert method.planned_densities(9) == pytest.approx([1 - 0.9 * 0.95] * 2)


def test_str_flops_are_counted_on_device_from_the_step_weights():
    model = tiny_mlp()
    method = attach("str", {"s_init": math.log(0.1 / 0.9), "lam": 0.0}, model)  # threshold 0.1
    optimizer = make_optimizer(method, model, lr=0.5)
    raw = [layer.weight.detach().clone() for layer in method.layers]
    expected = 3 * 2 * sum(int((w.abs() > 0.1).sum()) for w in raw)
    stepped, flops = train_step(method, model, optimizer, 0)
    assert stepped and isinstance(flops, torch.Tensor)
    assert int(flops) == expected
    assert not torch.equal(method.layers[0].weight.detach(), raw[0])  # the step changed the weights


def test_str_nonzero_count_from_raw_weights_equals_the_effective_weights():
    model = tiny_mlp()
    method = attach("str", {"s_init": math.log(0.05 / 0.95), "lam": 0.0}, model)
    with torch.no_grad():
        for index, threshold in enumerate(method.thresholds):
            threshold.s.fill_(-3.0 + index)
        raw = method.layers[0].module.parametrizations["weight"].original
        raw[0, :4] = torch.sigmoid(method.thresholds[0].s)  # ties |W| == sigmoid(s) give exact zeros
        raw[1, :4] = 0.0
    expected = torch.stack([torch.count_nonzero(layer.module.weight) for layer in method.layers])
    assert torch.equal(method.effective_nonzeros(), expected)
    assert 0 < int(expected.sum()) < sum(layer.numel for layer in method.layers)
    method.finalize()
    assert torch.equal(method.effective_nonzeros(), expected)


def test_str_finalize_bakes_exact_zeros_and_checkpoints_reload():
    model = tiny_mlp()
    method = attach("str", {"s_init": math.log(0.15 / 0.85), "lam": 1e-3}, model)
    optimizer = make_optimizer(method, model)
    for step in range(5):
        train_step(method, model, optimizer, step)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("parametrizations.weight.0.s") for k in state)
    # Reload as the loop does on resume: build, setup (parametrize), then load_state_dict.
    clone = tiny_mlp(seed=9)
    resumed = attach("str", {"s_init": -1.0, "lam": 1e-3}, clone)
    clone.load_state_dict(state)
    x = torch.randn(7, 20)
    assert torch.equal(clone(x), model(x))
    assert [float(t.s.detach()) for t in resumed.thresholds] == [float(t.s.detach()) for t in method.thresholds]

    effective = [layer.module.weight.detach().clone() for layer in method.layers]
    sparsity_before, _ = weight_sparsity(method.layers)
    out_before = model(x)
    method.finalize()
    assert not any(hasattr(layer.module, "parametrizations") for layer in method.layers)
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for layer, expected in zip(method.layers, effective):
        assert type(layer.module.weight) is nn.Parameter and layer.module.weight is layer.weight
        assert torch.equal(layer.module.weight.detach(), expected)
    assert torch.equal(model(x), out_before)
    assert weight_sparsity(method.layers)[0] == sparsity_before > 0
    method.finalize()  # a second call is harmless
