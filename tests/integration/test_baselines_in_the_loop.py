"""The baselines through the real loop on a Fashion-MNIST subset, a resume, and a method written
outside the repository trained through the command line."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from acdc_bench.baselines.str import STR

from helpers import fashion_config, needs_fashion


@needs_fashion
@pytest.mark.parametrize("method, options, tolerance", [
    ("gmp", None, 1e-3),
    ("rigl", {"update_interval": 2}, 1e-3),
    ("str", {"s_init": -5.0, "lam": 5e-4}, None),
])
def test_training_loop_smoke(tmp_path, method, options, tolerance):
    from acdc_bench.run.loop import train

    config = fashion_config(method, 0.9, options)
    result = train(config, tmp_path, progress=False, log=lambda *a: None)
    saved = json.loads((tmp_path / config.run_id / "result.json").read_text())
    assert saved["method"] == method and saved["steps"] == 8
    assert 0.0 < saved["actual_sparsity"] < 1.0
    assert saved["training_flops"] > 0 and saved["training_flops_multiplier"] > 0
    if tolerance is not None:
        assert saved["actual_sparsity"] == pytest.approx(0.9, abs=tolerance)
        assert saved["training_flops_multiplier"] < 1.0
    if method == "str":
        model = torch.load(tmp_path / config.run_id / "model_final.pt")
        assert not any("parametrizations" in key for key in model)
    assert result["top1"] == saved["top1"]


@needs_fashion
def test_str_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    from acdc_bench.run.loop import train

    config = fashion_config("str", 0.9, {"s_init": -3.0, "lam": 5e-4}, epochs=2, subset=512)
    straight = train(config, tmp_path / "straight", progress=False, log=lambda *a: None)

    original = STR.on_epoch_end

    def crash(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated preemption")
        return original(self, epoch)

    monkeypatch.setattr(STR, "on_epoch_end", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False, log=lambda *a: None)
    assert (tmp_path / "resumed" / config.run_id / "checkpoint.pt").exists()
    monkeypatch.setattr(STR, "on_epoch_end", original)
    resumed = train(config, tmp_path / "resumed", progress=False, log=lambda *a: None)
    for key in ("top1", "actual_sparsity", "training_flops"):
        assert resumed[key] == straight[key]


PLUGIN = '''
"""A method written outside the repository: a random static mask at the target in every layer."""
from dataclasses import dataclass

import torch

from acdc_bench.methods import MethodConfig, SparsityMethod, register_method
from acdc_bench.core.sparsity import MaskSet


@dataclass
class Options(MethodConfig):
    mask_seed: int = 0


@register_method("METHOD_NAME")
class MyRandomStatic(SparsityMethod):
    Config = Options

    def setup(self, model, layers, flops):
        super().setup(model, layers, flops)
        generator = torch.Generator().manual_seed(self.config.mask_seed)
        self.masks = MaskSet(self.layers)
        self.masks.set([torch.rand(l.weight.shape, generator=generator) >= self.target_sparsity for l in self.layers])
        self.masks.apply_to_weights()

    def before_optimizer_step(self, step):
        self.masks.apply_to_grads()
        return True

    def after_optimizer_step(self, step):
        self.masks.apply_to_weights()

    def step_training_flops(self, step):
        return 3 * self.flops.sparse_forward(self.masks.nonzeros)

    def phase(self, epoch):
        return "sparse"

    def state_dict(self):
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state):
        self.masks.load_state_dict(state["masks"])
'''


def _run_plugin_through_cli(tmp_path, monkeypatch, name: str, preimport: bool) -> dict:
    import importlib

    from acdc_bench.cli import main

    module = f"my_static_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLUGIN).replace("METHOD_NAME", name))
    monkeypatch.syspath_prepend(str(tmp_path))
    if preimport:
        importlib.import_module(module)
    out = tmp_path / "runs"
    code = main(["run", "--suite", "fashion-mnist", "--method", name, "--plugin", module,
                 "--sparsity", "0.8", "--epochs", "1", "--budget", "paper", "--set", "train_subset=2000", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    results = list(out.glob("*/result.json"))
    assert len(results) == 1
    return json.loads(results[0].read_text())


@needs_fashion
def test_method_written_outside_the_repository(tmp_path, monkeypatch):
    """The module is importable and registers itself; the harness trains it and writes its result."""
    result = _run_plugin_through_cli(tmp_path, monkeypatch, "my-random-static", preimport=True)
    assert result["method"] == "my-random-static"
    assert result["actual_sparsity"] == pytest.approx(0.8, abs=0.01)
    assert result["steps"] == 8


@needs_fashion
def test_method_written_outside_the_repository_via_plugin_flag_alone(tmp_path, monkeypatch):
    result = _run_plugin_through_cli(tmp_path, monkeypatch, "my-random-static-cli", preimport=False)
    assert result["method"] == "my-random-static-cli"
