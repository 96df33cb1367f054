"""The contract every sparsity method holds, as a check any method can run: ``check_method(name)``.

The built-in methods run it in the tests; a method of your own (a plugin) runs it the same way::

    from acdc_bench.testing import check_method
    check_method("my-static")           # raises MethodContractError naming the clause it broke

On a small MLP and a synthetic task, through the public ``sparsify(...).wrap(optimizer)`` path:

1. ``hooks``: the hooks run in the documented order, each step and epoch once, and a masked
   method's mask counts (what the FLOP meter and the sparsity report read) match its masks;
2. ``target``: the finished run holds what the method promises (``Sparsifier.finalize`` reports
   it); a method whose sparsity follows its options (``sparsity_options``, STR) must report the
   sparsity it reached beside the target;
3. ``resume``: ``state_dict`` after half the run, loaded into a fresh model, optimizer and
   sparsifier, ends exactly (bit for bit) where the uninterrupted run ends, FLOPs included;
4. ``finalize``: plain tensors holding exact zeros, as many as the reported sparsity says;
5. ``plan``: the training FLOPs planned from the method's schedule (``planned_training_flops_per_example``)
   equal the metered ones up to whole-weight rounding, so the hooks do what the schedule says
   (skipped, and said, for a method whose cost emerges from training: ``calibration_option``);
6. ``ranks``: two data-parallel ranks (DDP over gloo, each on its own data) hold the same weights
   and the same zeros at the end (skipped with ``ranks=1``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import tempfile

import torch
from torch import nn

#: Options that fit the check's short run (4 epochs of 8 steps) for the built-in methods.
SHORT_OPTIONS: dict[str, dict] = {
    "dense": {},
    "acdc": {"distribution": "uniform"},
    "gmp": {"distribution": "uniform", "start_fraction": 0.25, "end_fraction": 0.75, "frequency": 4},
    "rigl": {"distribution": "erk", "update_interval": 3},
    "set": {"distribution": "erk", "update_interval": 3},
    "str": {"s_init": -4.0, "lam": 0.01},
}
EPOCHS, STEPS_PER_EPOCH, BATCH = 4, 8, 32
HOOKS = ("on_epoch_start", "on_step_start", "before_optimizer_step", "after_optimizer_step",
         "step_training_flops", "on_epoch_end")


class MethodContractError(AssertionError):
    """A method broke a clause of the contract; the message names the method and the clause."""


@dataclasses.dataclass
class ContractReport:
    """What ``check_method`` checked: ``passed`` and ``skipped`` clauses (with why)."""

    method: str
    passed: list[str]
    skipped: dict[str, str]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _data(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A learnable task: labels from a random linear teacher."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(STEPS_PER_EPOCH * BATCH, 32, generator=generator)
    targets = (inputs @ torch.randn(32, 10, generator=generator)).argmax(1)
    return [(inputs[i:i + BATCH], targets[i:i + BATCH]) for i in range(0, len(inputs), BATCH)]


def _build(name: str, sparsity: float, options: dict, model: nn.Module | None = None, planning: bool = False):
    from acdc_bench.api import sparsify

    model = model if model is not None else _model()
    sparsifier = sparsify(model, name, sparsity=sparsity, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
                          batch_size=BATCH, kernels="dense", planning=planning, **options)
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    return model, sparsifier, optimizer


def _train(model, optimizer, data, epochs: int, trainer: nn.Module | None = None) -> None:
    trainer = trainer if trainer is not None else model
    for _ in range(epochs):
        for inputs, targets in data:
            optimizer.zero_grad()
            nn.functional.cross_entropy(trainer(inputs), targets).backward()
            optimizer.step()


def _fail(name: str, clause: str, message: str) -> MethodContractError:
    return MethodContractError(f"{name}: {clause}: {message}")


def check_method(name: str, *, sparsity: float = 0.9, options: dict | None = None, ranks: int = 2) -> ContractReport:
    """Check the registered method ``name`` against the contract (see the module docstring).

    ``options``: the method's options for a 4-epoch run of 8 steps (default: :data:`SHORT_OPTIONS`
    for a built-in method, none for another); ``ranks``: 2 to check data-parallel agreement, 1 to
    skip it. Returns a :class:`ContractReport`; raises :class:`MethodContractError` at the first
    clause broken."""
    from acdc_bench.methods import get_method

    method_cls = get_method(name)
    options = dict(SHORT_OPTIONS.get(name, {}) if options is None else options)
    passed: list[str] = []
    skipped: dict[str, str] = {}
    data = _data()

    # 1. hooks, in order
    model, sparsifier, optimizer = _build(name, sparsity, options)
    calls: list[tuple[str, int]] = []
    method = sparsifier.method
    for hook in HOOKS:
        original = getattr(method, hook)

        def recorder(*args, _hook=hook, _original=original, **kwargs):
            calls.append((_hook, int(args[0])))
            return _original(*args, **kwargs)

        setattr(method, hook, recorder)
    _train(model, optimizer, data, EPOCHS)
    expected = []
    for step in range(EPOCHS * STEPS_PER_EPOCH):
        epoch, first = divmod(step, STEPS_PER_EPOCH)
        if first == 0:
            expected.append(("on_epoch_start", epoch))
        expected += [("on_step_start", step), ("before_optimizer_step", step), ("after_optimizer_step", step),
                     ("step_training_flops", step)]
        if first == STEPS_PER_EPOCH - 1:
            expected.append(("on_epoch_end", epoch))
    if calls != expected:
        where = next((i for i, (a, b) in enumerate(zip(calls, expected)) if a != b), min(len(calls), len(expected)))
        raise _fail(name, "hooks", f"call {where} was {calls[where] if where < len(calls) else 'missing'}, "
                                   f"expected {expected[where] if where < len(expected) else 'none'}")
    for hook in HOOKS:
        delattr(method, hook)
    masks = getattr(method, "masks", None)
    if masks is not None:
        counted = [int(mask.sum()) for mask in masks.masks]
        if counted != masks.nonzeros:
            raise _fail(name, "hooks", f"the masks hold {counted} non-zeros, the counts the FLOP meter and the sparsity "
                                       f"report read say {masks.nonzeros}: install masks with self.masks.set(...), or "
                                       f"call self.masks.refresh_counts() after changing them")
    passed.append("hooks")

    # 2. target and 4. finalize (on a copy of the trained model: the resume check reuses it)
    reference_state = {k: v.clone() for k, v in model.state_dict().items()}
    reference_flops = sparsifier.training_flops
    planned_flops = _planned_training_flops(name, sparsity, options, method_cls)
    sparse_model = sparsifier.finalize(warn=False)
    report = sparsifier.final
    if method_cls.sparsity_options:
        if not (report and "reached" in report and "target" in report):
            raise _fail(name, "target", "finalize() does not report the sparsity reached beside the target")
    elif not report["within"]:
        raise _fail(name, "target", f"reached {report['reached']:.4f}, promised {report['promised']:.4f} "
                                    f"(+- {report['tolerance']:g}): {report.get('cause')}")
    passed.append("target")
    from acdc_bench.core.sparsity import prunable_layers

    layers = prunable_layers(sparse_model)
    if any(torch.nn.utils.parametrize.is_parametrized(module) for module in sparse_model.modules()):
        raise _fail(name, "finalize", "the finalized model still holds parametrizations")
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    total = sum(layer.weight.numel() for layer in layers)
    expected_zeros = report["reached"] * total
    # a grown connection that is still exactly zero is a zero the mask keeps: zeros >= the mask's
    if zeros < expected_zeros - 0.5:
        raise _fail(name, "finalize", f"{zeros} exact zeros in the prunable weights, the reported sparsity "
                                      f"{report['reached']:.4f} of {total} needs {expected_zeros:.0f}")
    passed.append("finalize")

    # 3. resume: half the run, saved, loaded into fresh objects, the other half
    first_model, first_sparsifier, first_optimizer = _build(name, sparsity, options)
    _train(first_model, first_optimizer, data, EPOCHS // 2)
    saved = {"model": first_model.state_dict(), "optimizer": first_optimizer.state_dict(),
             "sparsifier": first_sparsifier.state_dict()}
    resumed, resumed_sparsifier, resumed_optimizer = _build(name, sparsity, options)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    try:
        resumed_sparsifier.load_state_dict(saved["sparsifier"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _fail(name, "resume", f"load_state_dict of the state its state_dict saved raised {type(error).__name__}: "
                                    f"{error} (override both, each calling super())") from error
    _train(resumed, resumed_optimizer, data, EPOCHS - EPOCHS // 2)
    for key, value in resumed.state_dict().items():
        if not torch.equal(value, reference_state[key]):
            raise _fail(name, "resume", f"{key} differs from the uninterrupted run after a resume at epoch "
                                        f"{EPOCHS // 2} (state_dict/load_state_dict lose something)")
    if resumed_sparsifier.training_flops != reference_flops:
        raise _fail(name, "resume", f"training FLOPs {resumed_sparsifier.training_flops} after the resume, "
                                    f"{reference_flops} uninterrupted")
    passed.append("resume")

    # 5. planned FLOPs equal metered FLOPs
    if planned_flops is None:
        skipped["plan"] = (f"{name}'s cost emerges from training (calibration_option "
                           f"{method_cls.calibration_option!r}): nothing to plan")
    else:
        planned, bound = planned_flops
        if abs(planned - reference_flops) > bound:
            raise _fail(name, "plan", f"planned {planned:.6g} training FLOPs, metered {reference_flops} "
                                      f"(allowed difference {bound:.3g}, whole-weight rounding)")
        passed.append("plan")

    # 6. data-parallel ranks agree
    if ranks < 2:
        skipped["ranks"] = "ranks=1"
    elif not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        skipped["ranks"] = "torch.distributed with gloo is not available"
    else:
        _check_ranks(name, sparsity, options, ranks)
        passed.append("ranks")
    return ContractReport(name, passed, skipped)


def whole_weight_slack(flops) -> int:
    """Forward FLOPs per example by which a plan and the meter may differ: the plan lays a layer's
    density out as a fraction ``d``, the masks keep whole weights, and the meter counts
    ``f // n`` FLOPs per weight where the plan counts ``d * f``, so each layer is off by less than
    ``f // n + f % n`` (``f``: its dense forward FLOPs, ``n``: its weights)."""
    return sum(f // n + f % n for f, n in zip(flops.dense, flops.numels))


def _planned_training_flops(name: str, sparsity: float, options: dict, method_cls) -> tuple[float, float] | None:
    """(planned training FLOPs of the check's run, the rounding bound) from a fresh, untrained
    sparsifier; None for a method whose cost emerges from training."""
    if method_cls.calibration_option is not None:
        return None
    model, sparsifier, _ = _build(name, sparsity, options, planning=True)  # attached to be planned, as a Planner does
    model.train()
    model(_data()[0][0])  # the forward pre-hook measures the FLOPs, as the first training step does
    method = sparsifier.method
    try:
        planned = sum(method.planned_training_flops_per_example(epoch) * STEPS_PER_EPOCH * BATCH
                      for epoch in range(EPOCHS))
    except NotImplementedError as error:
        raise _fail(name, "plan", f"no plan ({error})") from None
    return planned, 3 * whole_weight_slack(method.flops) * EPOCHS * STEPS_PER_EPOCH * BATCH


def _start_method() -> str:
    """How the ranks start: forked from a fork server that imported torch and this module once (and
    forks them single-threaded), where the platform has one; else spawned, each importing torch again."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.set_forkserver_preload(["torch", __name__])  # read when the server first starts
    return "forkserver"


def _check_ranks(name: str, sparsity: float, options: dict, ranks: int) -> None:
    import torch.multiprocessing as mp

    from acdc_bench.methods import get_method

    module = get_method(name).__module__
    with tempfile.TemporaryDirectory(prefix="acdc-bench-contract-") as folder:
        files = [os.path.join(folder, f"rank{rank}.pt") for rank in range(ranks)]
        try:
            mp.start_processes(_rank_main, args=(ranks, folder, name, sparsity, options, module), nprocs=ranks,
                               join=True, start_method=_start_method())
        except mp.ProcessExitedException as error:
            # a rank killed by a signal while tearing down gloo, after both saved their state, says
            # nothing about the method; before that, it does
            if not all(os.path.exists(file) for file in files):
                main = getattr(sys.modules.get("__main__"), "__file__", None)
                if main is None:
                    raise
                raise RuntimeError(
                    f"check_method: a data-parallel rank ended before saving its state ({error}). The ranks "
                    f"start in new processes that import {main} first: a script that calls check_method "
                    f"at its top level must do so under `if __name__ == \"__main__\":`; otherwise the "
                    f"rank's own error is printed above (ranks=1 skips this clause)") from error
        states = [torch.load(file, weights_only=True) for file in files]
    for key, value in states[0].items():
        for rank, state in enumerate(states[1:], start=1):
            if not torch.equal(value, state[key]):
                raise _fail(name, "ranks", f"{key} differs between rank 0 and rank {rank} after data-parallel "
                                           f"training (a hook draws or decides something per rank)")


def _rank_main(rank: int, ranks: int, folder: str, name: str, sparsity: float, options: dict, module: str) -> None:
    """One data-parallel rank: its own data, gradients averaged by DDP over gloo."""
    torch.set_num_threads(1)
    importlib.import_module(module)  # registers a plugin method in this process too
    store = os.path.join(folder, "store")
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ranks)
    try:
        model, sparsifier, optimizer = _build(name, sparsity, options)
        trainer = nn.parallel.DistributedDataParallel(model)
        _train(model, optimizer, _data(seed=100 + rank), EPOCHS, trainer=trainer)
        finished = sparsifier.finalize(warn=False)
        path = os.path.join(folder, f"rank{rank}.pt")
        torch.save({key: value.detach().clone() for key, value in finished.state_dict().items()}, path + ".part")
        os.replace(path + ".part", path)  # whole or absent
        # both ranks done before either tears the group down (gloo aborts a peer whose partner left)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()

