"""RigL (and SET, its random-growth variant) pinned against hand-computed values and a
reference update.

Each method is driven through the same hook order as :func:`acdc_bench.run.loop.train`
(``on_step_start``, forward, backward, ``before_optimizer_step`` -> maybe step,
``after_optimizer_step``, ``step_training_flops``) on tiny models (``tests/helpers.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from acdc_bench.config import load_suite, run_config
from acdc_bench.core.flops import rigl_training_flops_per_example
from acdc_bench.methods import make_config
from acdc_bench.baselines.rigl import RigL, cosine_drop_fraction

from helpers import attach, make_optimizer, nonzeros, tiny_mlp, train_step


def test_rigl_cosine_drop_fraction_values():
    assert cosine_drop_fraction(0, 0.3, 1000) == pytest.approx(0.3)
    assert cosine_drop_fraction(250, 0.3, 1000) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))  # 0.256066
    assert cosine_drop_fraction(500, 0.3, 1000) == pytest.approx(0.15)
    assert cosine_drop_fraction(750, 0.3, 1000) == pytest.approx(0.15 * (1 - math.sqrt(0.5)))  # 0.043934
    assert cosine_drop_fraction(1000, 0.3, 1000) == 0.0
    assert cosine_drop_fraction(1200, 0.3, 1000) == 0.0


def test_rigl_update_steps():
    method = RigL(make_config(RigL, {"update_interval": 10}), target_sparsity=0.9, epochs=10,
                  steps_per_epoch=10, total_steps=100)
    assert method.end_step == 75
    # the official code's first update is at step 0 (last_mask_update_step starts at -dT)
    assert [s for s in range(100) if method.schedule.is_update(s)] == [0, 10, 20, 30, 40, 50, 60, 70]
    assert method.schedule.updates_between(0, 100) == 8 and method.schedule.updates_between(0, 1) == 1
    assert method.schedule.updates_between(1, 100) == 7
    assert method.schedule.updates_between(10, 20) == 1 and method.schedule.updates_between(11, 20) == 0
    assert method.schedule.updates_between(70, 80) == 1 and method.schedule.updates_between(71, 100) == 0
    later = RigL(make_config(RigL, {"update_interval": 10, "update_at_step_zero": False}), target_sparsity=0.9,
                 epochs=10, steps_per_epoch=10, total_steps=100)
    assert [s for s in range(100) if later.schedule.is_update(s)] == [10, 20, 30, 40, 50, 60, 70]
    assert later.schedule.updates_between(0, 100) == 7 and later.schedule.updates_between(0, 10) == 0


def test_rigl_initial_masks_are_random_exact_and_seeded():
    model = tiny_mlp()
    method = attach("rigl", {"distribution": "uniform"}, model, sparsity=0.9)
    assert method.masks.nonzeros == [60, 30]
    assert nonzeros(method.layers) == [60, 30]  # weights masked at set-up
    again = attach("rigl", {"distribution": "uniform"}, tiny_mlp(seed=5), sparsity=0.9)
    assert all(torch.equal(a, b) for a, b in zip(method.masks.masks, again.masks.masks))  # same on every rank
    other = attach("rigl", {"distribution": "uniform", "mask_seed": 1}, tiny_mlp(), sparsity=0.9)
    assert not torch.equal(method.masks.masks[0], other.masks.masks[0])
    keep = attach("rigl", {"distribution": "uniform", "keep_dense": ["0"]}, tiny_mlp(), sparsity=0.9)
    assert keep.masks.nonzeros == [600, 30]
    erk = attach("rigl", {}, tiny_mlp(), sparsity=0.9)
    # ERK: density ~ (n_in + n_out) / (n_in n_out): (50/600) : (40/300), total 90 non-zeros.
    assert erk.masks.nonzeros[0] / 600 == pytest.approx(erk.masks.nonzeros[1] / 300 * (50 / 600) / (40 / 300), rel=0.05)
    assert sum(erk.masks.nonzeros) == pytest.approx(90, abs=1)
    with pytest.raises(ValueError, match="global"):
        make_config(RigL, {"distribution": "global"})


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n, magnitudes", [(5000, False), (70_000, True)])
def test_rigl_selection_is_the_stable_sort_selection(seed, n, magnitudes):
    """RigL's drop/grow sets: ``~mask_from_scores`` on tie-heavy scores with excluded (inf) entries,
    on the kthvalue path and on the large non-negative fp32 path, equal the stable sort's first k."""
    from acdc_bench.core.sparsity import mask_from_scores

    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 20, (n,), generator=generator).float()  # many ties
    scores[torch.rand(n, generator=generator) < 0.4] = math.inf  # excluded entries
    scores[:7] = 0.0 if magnitudes else -0.0
    finite = int(torch.isfinite(scores).sum())
    for k in (1, 2, 17, finite // 2, finite):
        expected = torch.zeros(n, dtype=torch.bool)
        expected[torch.sort(scores, stable=True).indices[:k]] = True
        chosen = ~mask_from_scores(scores, k, magnitudes=magnitudes)
        assert torch.equal(chosen, expected), k
        assert int(chosen.sum()) == k


def test_rigl_drop_and_grow_by_hand():
    """10 weights, 5 active; k = floor(alpha_t x 5) = 2: drop the two smallest, grow the two largest grads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 2, bias=False))
    method = attach("rigl", {"distribution": "uniform", "alpha": 0.5, "update_interval": 10}, model,
                    sparsity=0.5, total_steps=1000, input_shape=(5,))
    optimizer = make_optimizer(method, model)
    weight = model[0].weight
    with torch.no_grad():
        weight.copy_(torch.tensor([[5.0, -4.0, 3.0, -2.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]]))
    method.masks.set([weight != 0])
    method._sparse_forward = None
    weight.grad = torch.tensor([[0.1, 0.2, 0.3, 0.4, 9.0], [0.5, 0.6, -7.0, 0.7, 0.8]])
    optimizer.state[weight]["momentum_buffer"] = torch.full_like(weight, 2.0)
    alpha_t = 0.25 * (1 + math.cos(math.pi * 10 / 750))
    assert math.floor(alpha_t * 5) == 2
    assert method.before_optimizer_step(10) is False  # update step: no optimizer step
    method.after_optimizer_step(10)
    assert method.last_update["k"] == [2]
    assert method.last_update["alpha_t"] == pytest.approx(alpha_t)
    # Dropped: |w| = 1 (position 4) and 2 (position 3); grown: position 4 (|g| = 9, just dropped) and 7 (|g| = 7).
    expected_mask = torch.tensor([[True, True, True, False, True], [False, False, True, False, False]])
    assert torch.equal(method.masks.masks[0], expected_mask)
    # Dropped and regrown: keeps its value and momentum; new connection: 0 and momentum 0; dropped: 0.
    assert weight[0, 4] == 1.0 and optimizer.state[weight]["momentum_buffer"][0, 4] == 2.0
    assert weight[1, 2] == 0.0 and optimizer.state[weight]["momentum_buffer"][1, 2] == 0.0
    assert weight[0, 3] == 0.0
    assert torch.equal(weight[0, :3], torch.tensor([5.0, -4.0, 3.0]))
    assert method.masks.nonzeros == [5] and int(expected_mask.sum()) == 5


def reference_rigl_update(drop_scores, grad, mask, k):
    """Independent reference: python sorts with (score, index) keys (drop scores: |w| plus RigL's noise)."""
    w, g, m = drop_scores.flatten().tolist(), grad.flatten().tolist(), mask.flatten().tolist()
    active = [i for i in range(len(w)) if m[i]]
    dropped = sorted(active, key=lambda i: (w[i], i))[:k]
    after = [m[i] and i not in set(dropped) for i in range(len(w))]
    candidates = [i for i in range(len(w)) if not after[i]]
    grown = sorted(candidates, key=lambda i: (-abs(g[i]), i))[:k]
    new = list(after)
    for i in grown:
        new[i] = True
    return torch.tensor(new).view_as(mask)


def test_rigl_updates_match_reference_keep_sparsity_and_skip_steps():
    model = tiny_mlp()
    method = attach("rigl", {"update_interval": 5}, model, sparsity=0.8, total_steps=60)
    optimizer = make_optimizer(method, model, weight_decay=1e-4)
    counts = list(method.masks.nonzeros)
    f_s = method.flops.sparse_forward(counts)
    f_d = method.flops.dense_forward
    updates = 0
    for step in range(60):
        before_weights = [l.weight.detach().clone() for l in method.layers]
        before_masks = [m.clone() for m in method.masks.masks]
        is_update = method.schedule.is_update(step)
        if is_update:
            # Reproduce the update from this step's raw gradient with the reference implementation.
            generator = torch.Generator().manual_seed(1000 + step)
            inputs = torch.randn(16, 20, generator=generator)
            targets = torch.randint(0, 10, (16,), generator=generator)
            probe = nn.functional.cross_entropy(model(inputs), targets)
            grads = torch.autograd.grad(probe, [l.weight for l in method.layers])
            alpha_t = cosine_drop_fraction(step, 0.3, 45)
            ks = [math.floor(alpha_t * n) for n in counts]
            scores = [method.drop_scores(layer, step) for layer in method.layers]
            assert all(torch.allclose(s, w.abs().flatten(), rtol=0, atol=1e-4) for s, w in zip(scores, before_weights))
            expected = [reference_rigl_update(d, g, m, k) for d, g, m, k in zip(scores, grads, before_masks, ks)]
        stepped, flops = train_step(method, model, optimizer, step)
        assert stepped is (not is_update)
        assert flops == (2 * f_s + f_d if is_update else 3 * f_s)
        assert method.masks.nonzeros == counts
        assert [int(m.sum()) for m in method.masks.masks] == counts  # per-layer sparsity constant
        assert all(int(torch.count_nonzero(l.weight[~m])) == 0 for l, m in zip(method.layers, method.masks.masks))
        if is_update:
            updates += 1
            assert method.last_update["k"] == ks
            assert all(torch.equal(m, e) for m, e in zip(method.masks.masks, expected))
            for w_before, m_before, layer, m_after in zip(before_weights, before_masks, method.layers, method.masks.masks):
                kept = m_before & m_after
                # No optimizer step: every weight active before and after is unchanged.
                assert torch.equal(layer.weight.detach()[kept], w_before[kept])
                grown = m_after & ~m_before
                assert int(torch.count_nonzero(layer.weight.detach()[grown])) == 0
                buffer = optimizer.state.get(layer.weight, {}).get("momentum_buffer")  # none before the first step
                assert buffer is None if step == 0 else int(torch.count_nonzero(buffer[grown])) == 0
        elif step > 0:
            assert not torch.equal(method.layers[0].weight.detach(), before_weights[0])
    assert updates == 9  # 0, 5, 10, ..., 40 (T_end = 45)


def test_rigl_update_is_the_same_for_channels_last_weights():
    """ImageNet suites train channels_last: the update must select and write in logical order."""
    def run(channels_last: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        method = attach("rigl", {"distribution": "uniform", "update_interval": 1}, model, sparsity=0.5,
                        total_steps=100, input_shape=(3, 6, 6))
        if channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(method, model)
        generator = torch.Generator().manual_seed(7)
        inputs = torch.randn(4, 3, 6, 6, generator=generator)
        for step in range(3):
            loss = model(inputs).square().mean()
            optimizer.zero_grad()
            loss.backward()
            if method.before_optimizer_step(step):
                optimizer.step()
            method.after_optimizer_step(step)
        return [m.clone() for m in method.masks.masks], [p.detach().clone() for p in model.parameters()]

    masks_a, params_a = run(False)
    masks_b, params_b = run(True)
    assert all(torch.equal(a, b) for a, b in zip(masks_a, masks_b))
    # The writes land in logical order: in both layouts every weight off the mask is zero (the
    # values on it differ by the convolution's rounding, which the layout changes).
    for masks, params in ((masks_a, params_a), (masks_b, params_b)):
        assert all(int(torch.count_nonzero(p[~m])) == 0 for m, p in zip(masks, params[:len(masks)]))
    assert int(masks_a[0].sum()) == 108


def test_rigl_drop_noise_is_seeded_the_same_on_every_rank_and_breaks_ties():
    """N(0, 1e-5) on the drop scores: drawn from (mask_seed, step, layer), so two ranks draw the same;
    with equal magnitudes it decides which weights go, where without it the lower index would."""
    ranks = [attach("rigl", {"distribution": "uniform"}, tiny_mlp(), sparsity=0.8) for _ in range(2)]
    layer_a, layer_b = ranks[0].layers[0], ranks[1].layers[0]
    noise = ranks[0].drop_scores(layer_a, 100) - layer_a.weight.detach().abs().flatten()
    assert torch.equal(ranks[0].drop_scores(layer_a, 100), ranks[1].drop_scores(layer_b, 100))
    assert not torch.equal(ranks[0].drop_scores(layer_a, 100), ranks[0].drop_scores(layer_a, 200))
    other_layer = ranks[0].drop_scores(ranks[0].layers[1], 100) - ranks[0].layers[1].weight.detach().abs().flatten()
    assert not torch.equal(noise[:other_layer.numel()], other_layer)
    # sample std of 1,200 draws: 1e-5 within 5 standard errors (1e-5 / sqrt(2 x 1199) each)
    assert float(noise.std()) == pytest.approx(1e-5, abs=5 * 1e-5 / math.sqrt(2 * (noise.numel() - 1)))
    quiet = attach("rigl", {"distribution": "uniform", "drop_noise_std": 0.0}, tiny_mlp(), sparsity=0.8)
    assert torch.equal(quiet.drop_scores(quiet.layers[0], 100), quiet.layers[0].weight.detach().abs().flatten())
    with pytest.raises(ValueError, match="drop_noise_std"):
        make_config(RigL, {"drop_noise_std": -1.0})


def test_rigl_flops_and_amortised_formula():
    model = tiny_mlp()
    method = attach("rigl", {"distribution": "uniform", "update_interval": 100, "end_fraction": 0.7125}, model,
                    sparsity=0.9, total_steps=4000, steps_per_epoch=200)
    assert method.end_step == 2850
    f_s, f_d = method.flops.sparse_forward(method.masks.nonzeros), method.flops.dense_forward
    assert f_s == 2 * (60 + 30) and f_d == 2 * 900
    assert method.step_training_flops(100) == 2 * f_s + f_d
    assert method.step_training_flops(101) == 3 * f_s
    assert method.step_training_flops(0) == 2 * f_s + f_d  # the official code updates at step 0 too
    assert method.step_training_flops(2800) == 2 * f_s + f_d
    assert method.step_training_flops(2900) == 3 * f_s  # after T_end
    # An epoch before T_end: the meter's exact mean; within 0.1% of the paper's amortised formula.
    planned = method.planned_training_flops_per_example(2)  # steps 400..599: updates at 400 and 500
    assert planned == pytest.approx((198 * 3 * f_s + 2 * (2 * f_s + f_d)) / 200)
    assert planned == pytest.approx(rigl_training_flops_per_example(f_s, f_d, 100), rel=1e-3)
    assert sum(method.step_training_flops(s) for s in range(400, 600)) / 200 == pytest.approx(planned)
    assert method.planned_training_flops_per_example(19) == pytest.approx(3 * f_s)  # after T_end
    # Epoch 14 (steps 2800..2999) straddles T_end: one update, at 2800.
    assert method.planned_training_flops_per_example(14) == pytest.approx((199 * 3 * f_s + 2 * f_s + f_d) / 200)
    assert method.planned_densities(0) == pytest.approx([0.1, 0.1])


def test_rigl_state_dict_round_trip():
    model = tiny_mlp()
    method = attach("rigl", {"update_interval": 5}, model, total_steps=60)
    optimizer = make_optimizer(method, model)
    for step in range(23):
        train_step(method, model, optimizer, step)
    state = method.state_dict()
    resumed = attach("rigl", {"update_interval": 5, "mask_seed": 3}, model, total_steps=60)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(resumed.masks.masks, method.masks.masks))
    assert resumed.sparse_forward == method.sparse_forward


@pytest.mark.parametrize("options, multiplier, expected, tolerance", [
    ({"distribution": "uniform", "keep_dense": ["conv1"]}, 1, 0.23, 0.01),
    ({"distribution": "uniform", "keep_dense": ["conv1"]}, 5, 1.14, 0.03),
    ({"distribution": "erk"}, 1, 0.42, 0.01),
    ({"distribution": "erk"}, 5, 2.09, 0.03),
])
def test_rigl_resnet50_plan_matches_published_training_cost(options, multiplier, expected, tolerance):
    from acdc_bench.budget.plan import plan

    suite = load_suite("imagenet-resnet50")
    suite = suite.replace(methods={**suite.methods, "rigl": dict(options, update_interval=100, epochs_multiplier=multiplier)})
    config = run_config(suite, "rigl", 0.8)
    assert config.epochs == 100 * multiplier and config.variant == f"{multiplier}x"
    report = plan(config)
    assert report["estimated_training_flops_multiplier"] == pytest.approx(expected, abs=tolerance)


def test_set_update_step_trains_then_updates_the_mask():
    """Official SET (google-research/rigl, SparseSETOptimizerBase.apply_gradients): the optimizer's
    update first, then the mask update on the weights it left; RigL's update step does not train."""
    model, twin = tiny_mlp(), tiny_mlp()
    method = attach("set", {"distribution": "uniform", "update_interval": 10}, model)
    reference = attach("set", {"distribution": "uniform", "update_interval": 10}, twin)
    optimizer, twin_optimizer = make_optimizer(method, model), make_optimizer(reference, twin)
    assert method.schedule.is_update(0)
    before = [m.clone() for m in method.masks.masks]
    # The twin takes the same step as a plain masked step (no mask update), to compare with.
    generator = torch.Generator().manual_seed(1000)
    inputs, targets = torch.randn(16, 20, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    twin_optimizer.zero_grad()
    nn.functional.cross_entropy(twin(inputs), targets).backward()
    reference.masks.apply_to_grads()
    twin_optimizer.step()
    reference.masks.apply_to_weights()
    stepped, _ = train_step(method, model, optimizer, 0)
    assert stepped
    for layer, twin_layer, old, new in zip(method.layers, reference.layers, before, method.masks.masks):
        kept = old & new
        assert torch.equal(layer.weight.detach()[kept], twin_layer.weight.detach()[kept])  # trained, then kept
        grown = new & ~old
        assert grown.any() and not layer.weight.detach()[grown].any()  # new connections start at zero
        buffer = optimizer.state[layer.weight]["momentum_buffer"]
        assert not buffer[grown].any()
    assert method.masks.nonzeros == [m.sum().item() for m in before]


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_a_plan_draws_no_mask_and_plans_what_training_would(method, monkeypatch):
    """Attached only to be planned (as the Planner attaches every run), RigL and SET keep each layer's
    non-zero count and skip the random draw of where they lie: every planned answer is the same."""
    from acdc_bench import sparsify
    from acdc_bench.baselines import rigl as rigl_module

    def plan(planning: bool):
        sparsifier = sparsify(tiny_mlp(), method, sparsity=0.9, epochs=4, steps_per_epoch=10, batch_size=8,
                              input_shape=(20,), planning=planning, update_interval=5)
        return sparsifier.method

    trained = plan(False)
    monkeypatch.setattr(rigl_module, "random_mask", lambda *args: pytest.fail("a plan drew random masks"))
    planned = plan(True)
    assert planned.planning and not trained.planning
    assert planned.masks.nonzeros == trained.masks.nonzeros
    for epoch in range(4):
        assert planned.planned_densities(epoch) == trained.planned_densities(epoch)
        assert planned.planned_training_flops_per_example(epoch) == trained.planned_training_flops_per_example(epoch)
