"""The attach API (``acdc_bench.sparsify``) in loops written outside the package."""

import json
import re

import pytest
import torch
from torch import nn

import acdc_bench
from helpers import ROOT, SHORT, needs_fashion

README = ROOT / "README.md"
SHIPPED = ["dense", "acdc", "gmp", "rigl", "str", "set"]
#: Per method: options for a 32-step run, and whether its FLOPs depend on the trajectory.
OPTIONS = {
    "dense": {},
    "acdc": {"schedule_epochs": 4, "warmup_epochs": 1, "phase_epochs": 1, "final_dense_epochs": 1,
             "final_sparse_epochs": 1, "distribution": "uniform"},
    "gmp": {"distribution": "uniform", "start_fraction": 0.25, "end_fraction": 0.75, "frequency": 4},
    "rigl": {"distribution": "erk", "update_interval": 3},
    "str": {"s_init": -4.0, "lam": 0.01},
    "set": {"distribution": "erk", "update_interval": 3},
}


def user_model(seed: int = 0) -> nn.Module:
    """The user's own LeNet-300-100: nothing from acdc_bench.models."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def user_data(steps: int = 8, batch: int = 256, seed: int = 1):
    """A learnable synthetic task: labels from a random linear teacher."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(steps * batch, 1, 28, 28, generator=generator)
    targets = (inputs.flatten(1) @ torch.randn(784, 10, generator=generator)).argmax(1)
    return [(inputs[i:i + batch], targets[i:i + batch]) for i in range(0, steps * batch, batch)]


def plain_loop(method: str, epochs: int = 4, *, optimizer_first: bool = False, **options):
    model, loader = user_model(), user_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer_first else None
    sparsifier = acdc_bench.sparsify(model, method, sparsity=0.9, epochs=epochs, steps_per_epoch=len(loader),
                                     batch_size=256, **{**OPTIONS[method], **options})
    optimizer = sparsifier.wrap(optimizer or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    phases = []
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
        phases.append(sparsifier.phase)
    model.eval()
    with torch.no_grad():  # an eval pass runs no hook
        model(loader[0][0])
    sparsity = sparsifier.sparsity
    sparsifier.finalize()
    return model, sparsifier, sparsity, phases


@pytest.mark.parametrize("method", SHIPPED)
def test_every_shipped_method_trains_in_a_plain_loop(method):
    model, sparsifier, sparsity, phases = plain_loop(method)
    assert sparsifier.step == 32 and sparsifier.meter.examples == 32 * 256
    dense_step = 3 * (784 * 300 + 300 * 100 + 100 * 10) * 2  # 3 x forward, 2 FLOPs a multiply-add
    if method == "dense":
        assert sparsity == 0.0 and sparsifier.training_flops == 32 * 256 * dense_step
    elif method == "str":  # STR ends where its lambda takes it: sparse, and cheaper than dense
        assert 0.3 < sparsity < 1.0 and sparsifier.training_flops < 32 * 256 * dense_step
    else:
        assert sparsity == pytest.approx(0.9, abs=2e-3)
        assert sparsifier.training_flops < 32 * 256 * dense_step
    if method == "acdc":
        assert phases == ["dense", "sparse", "dense", "sparse"]
    # finalize: plain tensors, exact zeros, no parametrization or hook left
    for module in model.modules():
        assert not hasattr(module, "parametrizations")
        assert not module._forward_pre_hooks
    zeros = sum(int((m.weight == 0).sum()) for m in model if isinstance(m, nn.Linear))
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    assert zeros / total == pytest.approx(sparsity, abs=1e-9)


@pytest.mark.parametrize("method", ["str", "rigl"])
def test_optimizer_built_before_or_after_sparsify_trains_the_same(method):
    before, *_ = plain_loop(method, epochs=2, optimizer_first=True)
    after, *_ = plain_loop(method, epochs=2)
    for a, b in zip(before.state_dict().values(), after.state_dict().values()):
        assert torch.equal(a, b)


def test_rigl_skips_the_optimizer_step_on_update_steps_and_set_needs_no_dense_gradient():
    _, rigl, *_ = plain_loop("rigl", epochs=1)
    _, set_, *_ = plain_loop("set", epochs=1)
    f_s = rigl.method.sparse_forward
    # 8 steps, updates every 3 until T_end = 6: at 0 and 3, each 2 f_S + f_D
    assert rigl.method.last_update["step"] == 3
    assert rigl.training_flops == 256 * (6 * 3 * f_s + 2 * (2 * f_s + rigl.method.flops.dense_forward))
    assert set_.training_flops == 256 * 8 * 3 * set_.method.sparse_forward
    assert set_.method.last_update["step"] == 3 and sum(set_.method.last_update["k"]) > 0


def test_resumed_loop_continues_exactly():
    """state_dict after 2 of 4 epochs, loaded into a fresh model, optimizer and sparsifier."""
    def build():
        model, loader = user_model(), user_data()
        sparsifier = acdc_bench.sparsify(model, "acdc", sparsity=0.9, epochs=4, steps_per_epoch=8, batch_size=256,
                                         **OPTIONS["acdc"])
        return model, loader, sparsifier, sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))

    def epochs(model, loader, optimizer, count):
        for _ in range(count):
            for inputs, targets in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(inputs), targets).backward()
                optimizer.step()

    model, loader, sparsifier, optimizer = build()
    epochs(model, loader, optimizer, 4)
    first, loader_b, half, optimizer_b = build()
    epochs(first, loader_b, optimizer_b, 2)
    saved = {"model": first.state_dict(), "optimizer": optimizer_b.state_dict(), "sparsifier": half.state_dict()}
    resumed, loader_c, sparsifier_c, optimizer_c = build()
    resumed.load_state_dict(saved["model"])
    optimizer_c.load_state_dict(saved["optimizer"])
    sparsifier_c.load_state_dict(saved["sparsifier"])
    epochs(resumed, loader_c, optimizer_c, 2)
    assert sparsifier_c.training_flops == sparsifier.training_flops
    for a, b in zip(resumed.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_loop(method: str, dtype, *, input_shape=None, stop: int | None = None, state: dict | None = None):
    """32 steps of ``method`` (sparse from step 0 where it can be) with each forward under CPU autocast;
    every training forward of every layer is checked against the layer's weights as they are (masks
    applied): the output must equal the same product computed outside autocast from those weights.
    ``stop``: return a checkpoint after that many steps; ``state``: start from such a checkpoint."""
    options = {**OPTIONS[method], **({"warmup_epochs": 0} if method == "acdc" else {})}
    model, loader = user_model(), user_data(batch=32)
    sparsifier = acdc_bench.sparsify(model, method, sparsity=0.9, epochs=4, steps_per_epoch=len(loader),
                                     batch_size=32, input_shape=input_shape, **options)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sparsifier.load_state_dict(state["sparsifier"])
    stale = []

    def check(module, inputs, output):
        if not module.training:  # the FLOP measurement's own forward, outside autocast
            return
        with torch.autocast("cpu", enabled=False):
            expected = nn.functional.linear(inputs[0].to(dtype), module.weight.to(dtype), module.bias.to(dtype))
        if not torch.equal(output, expected):
            stale.append((sparsifier.step, module))

    for module in model:
        if isinstance(module, nn.Linear):
            module.register_forward_hook(check)
    for step in range(sparsifier.step, 32):
        if step == stop:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "sparsifier": sparsifier.state_dict()}
        inputs, targets = loader[step % len(loader)]
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
    assert not stale, f"{len(stale)} forward(s) ran on weights other than the masked ones (first at step {stale[0][0]})"
    return model


@pytest.mark.parametrize("amp", sorted(AMP))
@pytest.mark.parametrize("method", SHIPPED)
def test_autocast_steps_run_on_the_masked_weights_and_resume_exactly(method, amp):
    """Under bf16 or fp16 autocast, every forward uses the weights with the masks in force, the
    first step's included (FLOPs measured from the first batch, or from input_shape), and a run
    resumed mid-epoch from a checkpoint ends bit for bit where the uninterrupted run ends."""
    dtype = AMP[amp]
    whole = amp_loop(method, dtype)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(),
                                                  amp_loop(method, dtype, input_shape=(1, 28, 28)).state_dict().values()))
    # mid-epoch (8 steps an epoch); 12 is a step where GMP prunes and RigL and SET update their masks
    for stop in {"bf16": (9, 12), "fp16": (12,)}[amp]:
        resumed = amp_loop(method, dtype, state=amp_loop(method, dtype, stop=stop))
        for (name, a), b in zip(resumed.state_dict().items(), whole.state_dict().values()):
            assert torch.equal(a, b), f"{name} differs after resuming at step {stop}"


@pytest.mark.parametrize("method", ["rigl", "acdc"])
def test_masks_follow_a_model_converted_after_sparsify(method, monkeypatch):
    """``sparsify`` then ``model.to(...)``: a dtype change trains on the masks as before, and every
    step's hooks first bring the masks onto their weights' devices (``MaskSet.follow_weights``,
    tested in tests/unit/core/test_sparsity.py; no second device here to move the model to)."""
    model, loader = user_model(), user_data()
    options = {**OPTIONS[method], **({"warmup_epochs": 0} if method == "acdc" else {})}
    sparsifier = acdc_bench.sparsify(model, method, sparsity=0.9, epochs=4, steps_per_epoch=len(loader),
                                     batch_size=256, **options)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    model.to(torch.float64)
    follows = []
    follow = type(sparsifier.method.masks).follow_weights
    monkeypatch.setattr(type(sparsifier.method.masks), "follow_weights", lambda self: (follows.append(1), follow(self)))
    for inputs, targets in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs.double()), targets).backward()
        optimizer.step()
    assert len(follows) == len(loader)
    masks = sparsifier.method.masks.masks
    assert all(layer.weight.dtype == torch.float64 for layer in sparsifier.layers)
    assert all(bool((layer.weight[~mask] == 0).all()) for layer, mask in zip(sparsifier.layers, masks))
    assert sparsifier.method.masks.sparsity() == pytest.approx(0.9, abs=2e-3)


def test_weights_loaded_over_the_masks_at_the_end_are_reported_as_they_are():
    """A checkpoint loaded over the trained model after its last step (the Trainer's
    load_best_model_at_end): the report gives the weights' own zeros and says why, never the masks'."""
    model, loader = user_model(), user_data()
    sparsifier = acdc_bench.sparsify(model, "gmp", sparsity=0.9, epochs=4, steps_per_epoch=len(loader),
                                     batch_size=256, **OPTIONS["gmp"])
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    early = None
    for epoch in range(4):
        for inputs, targets in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
        early = early or {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert sparsifier.target_report()["within"]
    model.load_state_dict(early)  # the first epoch's weights: dense, before GMP's ramp
    with pytest.warns(UserWarning, match="weights off the masks are non-zero"):
        sparsifier.finalize()
    final = sparsifier.final
    assert not final["within"] and final["reached"] == pytest.approx(sparsifier.sparsity) and final["reached"] < 0.5


def test_a_weight_replaced_after_sparsify_is_refused_before_the_step_runs():
    model, loader = user_model(), user_data()
    sparsifier = acdc_bench.sparsify(model, "rigl", sparsity=0.9, epochs=1, steps_per_epoch=len(loader),
                                     batch_size=256, **OPTIONS["rigl"])
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.load_state_dict(saved, assign=True)  # new Parameter objects: the masks act on the old ones
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    inputs, targets = loader[0]
    with pytest.raises(RuntimeError, match=r"weight of layer '1' was replaced after sparsify.*assign=True"):
        nn.functional.cross_entropy(model(inputs), targets).backward()
    assert sparsifier.step == 0 and all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("missing", ["batch_size", "flops"])
def test_a_step_that_cannot_be_metered_is_refused_before_it_changes_anything(missing):
    """No batch size, or FLOPs never measured (the loop calls a submodule): optimizer.step() raises
    before the update, the masks or the step count move."""
    model, loader = user_model(), user_data()
    sparsifier = acdc_bench.sparsify(model, "gmp", sparsity=0.9, epochs=4, steps_per_epoch=len(loader),
                                     batch_size=None if missing == "batch_size" else 256, **OPTIONS["gmp"])
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs, targets = loader[0]
    optimizer.zero_grad()
    if missing == "flops":  # the model's forward pre-hook never fires
        body = nn.Sequential(*model)
        nn.functional.cross_entropy(body(inputs), targets).backward()
        error = pytest.raises(RuntimeError, match="FLOPs are unknown; pass input_shape=")
        with pytest.warns(RuntimeWarning, match="did not run before its forward pass"), error:
            optimizer.step()
    else:
        nn.functional.cross_entropy(model(inputs), targets).backward()
        with pytest.raises(ValueError, match="batch_size is unknown"):
            optimizer.step()
    assert sparsifier.step == 0 and not optimizer.state
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())


def test_unknown_method_or_option_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown method 'rigl2'; allowed: .*rigl"):
        acdc_bench.sparsify(user_model(), "rigl2", sparsity=0.9, epochs=1, steps_per_epoch=1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['update_intervall'\].*allowed: .*update_interval"):
        acdc_bench.sparsify(user_model(), "rigl", sparsity=0.9, epochs=1, steps_per_epoch=1, update_intervall=3)
    with pytest.raises(ValueError, match="epochs= or total_steps="):
        acdc_bench.sparsify(user_model(), "gmp", sparsity=0.9, steps_per_epoch=1)
    with pytest.raises(ValueError, match=r"unknown method 'my-method'.*--plugin MODULE"):
        acdc_bench.sparsify(user_model(), "my-method", sparsity=0.9, epochs=1, steps_per_epoch=1)
    # a layer list given as one string would match its characters as names ("15": layers 1 and 5)
    for key in ("keep_dense", "include", "exclude"):
        with pytest.raises(ValueError, match=rf"{key} must be a list of layer names or patterns.*got '15'"):
            acdc_bench.sparsify(user_model(), "rigl", sparsity=0.9, epochs=1, steps_per_epoch=1,
                                **{"distribution": "erk", key: "15"})


def test_a_plugin_module_that_registers_nothing_is_said(tmp_path, monkeypatch):
    from acdc_bench.methods.registry import load_plugins

    (tmp_path / "user_plugin_without_decorator.py").write_text(
        "from acdc_bench.methods import MaskedMethod\n\nclass Mine(MaskedMethod):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match=r"'user_plugin_without_decorator' registered no method: decorate"):
        load_plugins(["user_plugin_without_decorator"])


def test_a_hook_that_returns_nothing_lets_the_optimizer_step_and_a_schedule_short_of_the_target_is_refused():
    from acdc_bench.methods import MaskChange, MaskedMethod, Schedule, register_method

    @register_method("api-returns-nothing")
    class ReturnsNothing(MaskedMethod):
        def __init__(self, config, **kwargs):
            super().__init__(config, **kwargs)
            self.schedule = Schedule(self.total_steps, self.steps_per_epoch,
                                     changes=(MaskChange(0, self.target_sparsity),))

        def on_step_start(self, step):
            if self.schedule.change_at(step) is not None:
                self.prune_by_magnitude(self.target_sparsity)

        def before_optimizer_step(self, step):
            super().before_optimizer_step(step)  # no return: the step still trains

    model, loader = user_model(), user_data()
    sparsifier = acdc_bench.sparsify(model, "api-returns-nothing", sparsity=0.9, epochs=1,
                                     steps_per_epoch=len(loader), batch_size=256, distribution="uniform")
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    inputs, targets = loader[0]
    nn.functional.cross_entropy(model(inputs), targets).backward()
    pruned = model[1].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model[1].weight, pruned) and bool((model[1].weight[pruned == 0] == 0).all())

    @register_method("api-prunes-too-late")
    class PrunesTooLate(ReturnsNothing):
        def __init__(self, config, **kwargs):
            super().__init__(config, **kwargs)
            self.schedule = Schedule(self.total_steps, self.steps_per_epoch,
                                     changes=(MaskChange(self.total_steps // 2, self.target_sparsity / 2),
                                              MaskChange(self.total_steps + 5, self.target_sparsity)))

    with pytest.raises(ValueError, match=r"api-prunes-too-late's schedule holds sparsity 0.45 at most within this "
                                         r"run's 8 step\(s\), not the target 0.9"):
        acdc_bench.sparsify(user_model(), "api-prunes-too-late", sparsity=0.9, epochs=1, steps_per_epoch=8,
                            batch_size=256, distribution="uniform")


def test_a_method_without_a_schedule_is_an_error_under_a_matched_budget_not_planned_dense():
    from acdc_bench.budget.plan import Planner
    from acdc_bench.config import load_suite, run_config
    from acdc_bench.methods import MaskedMethod, register_method

    @register_method("static-no-plan")
    class StaticNoPlan(MaskedMethod):
        pass

    config = run_config(load_suite("fashion-mnist"), "static-no-plan", 0.9)
    with pytest.raises(NotImplementedError, match="has no schedule to plan from.*--budget paper"):
        Planner(config).estimated_training_flops()


def _readme_example() -> str:
    text = README.read_text()
    section = text.split("## A method in your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_is_at_most_21_lines():
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 21
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    sparsifier = scope["sparsifier"]
    assert sparsifier.sparsity == pytest.approx(0.9, abs=2e-3) and sparsifier.training_flops > 0


@needs_fashion
@pytest.mark.parametrize("method", ["dense", "acdc", "gmp", "rigl", "set"])
def test_plain_loop_meters_what_acdc_bench_run_meters(tmp_path, method):
    """Same schedule (4 epochs of 8 full steps of 256): the user's loop on its own model and data
    meters the FLOPs the harness meters (methods whose cost does not depend on the weights)."""
    from acdc_bench.cli import main

    args = ["run", "--suite", "fashion-mnist", "--method", method, "--sparsity", "0.9", "--budget", "paper",
            "--out", str(tmp_path), "--no-progress"]
    overrides = [item for item in SHORT if not item.startswith("methods.acdc")] + ["train_subset=2048"]
    overrides += [f"methods.{method}.{k}={json.dumps(v)}" for k, v in OPTIONS[method].items()]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    result = json.loads(next(tmp_path.glob("*/result.json")).read_text())
    _, sparsifier, sparsity, _ = plain_loop(method)
    assert result["steps"] == sparsifier.step == 32
    assert result["training_flops"] == sparsifier.training_flops
    assert result["actual_sparsity"] == pytest.approx(sparsity, abs=1e-3)


@needs_fashion
def test_set_runs_from_the_command_line_matched_to_acdc(tmp_path):
    from acdc_bench.cli import main

    args = ["run", "--suite", "fashion-mnist", "--method", "set", "--sparsity", "0.9", "--out", str(tmp_path),
            "--no-progress", "--set", "methods.set.update_interval=3"]
    for item in SHORT:
        args += ["--set", item]
    assert main(args) == 0
    result = json.loads(next(tmp_path.glob("set-*/result.json")).read_text())
    assert result["method"] == "set" and result["budget"]["mode"] == "matched"
    assert result["actual_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert abs(result["budget"]["achieved_ratio"] - 1) <= 0.02  # SET's cost is planned exactly
