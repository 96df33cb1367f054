"""Shared by the test modules (the one place for them): the repository's root, the Fashion-MNIST skip
mark, a short AC/DC suite, and the drivers that run a method's hooks by hand on a tiny model."""

from pathlib import Path

import pytest
import torch
from torch import nn

from acdc_bench.api import sparsify
from acdc_bench.config import load_suite, run_config
from acdc_bench.data import DATASETS, user_cache

#: The repository (tests/ is one folder below it) and the tests' support folder.
ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
FASHION = Path("/usr/share/datasets/fashion-mnist")
#: The data is there: the Debian package's folder, or the per-user cache ($ACDC_BENCH_DATA or the XDG
#: cache) holding every file (a download that failed leaves the cache folder without them).
needs_fashion = pytest.mark.skipif(
    not any(DATASETS["fashion-mnist"].is_present(folder) for folder in (FASHION, user_cache("fashion-mnist"))
            if folder.is_dir()),
    reason="Fashion-MNIST not on disk (the tests download nothing: run ./nox -s reproduce once, or "
           "apt-get install dataset-fashion-mnist)")
#: --set overrides for a short AC/DC on 2,000 examples: dense 0, sparse 1, dense 2, sparse 3
#: (4 epochs of 8 steps, 1-epoch phases).
SHORT = ["train_subset=2000", "epochs=4", "methods.acdc.schedule_epochs=4", "methods.acdc.warmup_epochs=1",
         "methods.acdc.phase_epochs=1", "methods.acdc.final_dense_epochs=1", "methods.acdc.final_sparse_epochs=1"]


# --------------------------------------------------------------------------- driving a method by hand


def tiny_mlp(seed: int = 0) -> nn.Module:
    """20 -> 30 -> 10: 600 + 300 prunable weights (0.9 of each is a whole number)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


def attach(name: str, options: dict, model: nn.Module, *, sparsity: float = 0.9, total_steps: int = 100,
           steps_per_epoch: int = 10, input_shape=(20,)):
    """The method object of ``acdc_bench.sparsify`` (these tests drive its hooks one by one)."""
    return sparsify(model, name, sparsity=sparsity, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                    input_shape=input_shape, **options).method


def make_optimizer(method, model, lr=0.05, momentum=0.9, weight_decay=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    method.bind_optimizer(optimizer)
    return optimizer


def train_step(method, model, optimizer, step, seed=None):
    """One step in the hook order of ``acdc_bench.api``; returns (stepped, flops per example)."""
    generator = torch.Generator().manual_seed(1000 + step if seed is None else seed)
    inputs = torch.randn(16, 20, generator=generator)
    targets = torch.randint(0, 10, (16,), generator=generator)
    method.on_step_start(step)
    loss = nn.functional.cross_entropy(model(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    stepped = method.before_optimizer_step(step)
    if stepped:
        optimizer.step()
    method.after_optimizer_step(step)
    return stepped, method.step_training_flops(step)


def nonzeros(model_layers) -> list[int]:
    return [int(torch.count_nonzero(layer.module.weight.detach())) for layer in model_layers]


def fashion_config(method: str, sparsity: float, options: dict | None = None, epochs: int = 2,
                   subset: int = 1024) -> dict:
    # STR's sparsity follows lam and s_init, which these short runs do not tune for the target: its
    # end-of-run check is opened here (tests/unit/methods/test_targets.py holds it).
    opened = ["budget.calibration.sparsity_tolerance=0.95"] if method == "str" else []
    suite = load_suite("fashion-mnist", [f"train_subset={subset}", "budget.mode=paper", *opened])
    if options is not None:
        suite = suite.replace(methods={**suite.methods, method: options})
    return run_config(suite, method, sparsity, epochs=epochs)
