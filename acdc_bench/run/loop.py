"""The training loop of one run: build it, restore it, train epochs, record them, finish.

:func:`train` reads top to bottom; everything it calls sits beside it. The method is wired
to the model by :func:`acdc_bench.sparsify`, the same API a user's own loop uses; the run
folder's format is :mod:`acdc_bench.run.folder`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from acdc_bench import numerics
from acdc_bench.config import recipe
from acdc_bench.api import Sparsifier, sparsify
from acdc_bench.config import dump_yaml
from acdc_bench.core import blas
from acdc_bench.core.io import atomic_torch_save, load_checkpoint
from acdc_bench.core.sparsity import weight_sparsity
from acdc_bench.data import Data, epoch_seed, load_data
from acdc_bench.methods.registry import load_plugins
from acdc_bench.models import build_model
from acdc_bench.run import distributed, folder
from acdc_bench.run.store import RunStore, store_at
from acdc_bench.config.run import RunConfig, as_run_config

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Run:
    """Everything one run trains with, built once by :func:`build_run`."""

    config: RunConfig
    #: Where its folder is: every file of the run is read and written through it.
    store: RunStore
    rank: int
    world_size: int
    device: torch.device
    data: Data
    model: nn.Module
    train_model: nn.Module
    sparsifier: Sparsifier
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    amp_dtype: torch.dtype | None
    channels_last: bool
    kernels: str
    epochs: int
    total_steps: int
    state: dict = field(default_factory=lambda: {"epoch": 0, "rows": [], "wall_time_s": 0.0, "dense_pair": None})

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def run_dir(self) -> Path:
        """The run's folder (where messages point, and the tracker keeps its files)."""
        return self.store.folder(self.config.run_id)


def train(config: RunConfig | Mapping, out_dir: str | Path | RunStore, *, data_root: str | None = None,
          progress: bool = True, tracker=None, log=print) -> dict:
    """Train (or resume, or report) the run described by ``config`` (a
    :class:`~acdc_bench.config.run.RunConfig`, or a ``config.yaml`` mapping) in its folder of
    ``out_dir`` (a folder, or its :class:`~acdc_bench.run.store.RunStore`); returns its result dict."""
    config = as_run_config(config)
    store = store_at(out_dir)
    run_id = config.run_id
    finished = store.result(run_id)
    if finished is not None:
        log(f"[{config.run_id}] finished already: top-1 {finished['top1']:.2f}% "
            f"(sparsity {finished['actual_sparsity']:.4f}); not retraining")
        return finished
    numerics.ensure(config.numerics)  # torch has started: a clear error unless it computes so
    rank, world_size, local_rank = distributed.distributed_context()
    fresh = rank == 0 and not store.exists(run_id)
    with store.lock(run_id) if rank == 0 else contextlib.nullcontext():
        if store.finished(run_id):  # finished by another process meanwhile
            return train(config, store, data_root=data_root, progress=progress, tracker=tracker, log=log)
        try:
            check_resumable(config, store)
            run = build_run(config, store, data_root, rank, world_size, local_rank)
        except BaseException:
            if fresh:  # a run that never started leaves no folder behind (a missing data root, say)
                store.remove(run_id)
            raise
        if run.is_main:
            described = environment(run)
            store.write_config(run_id, dump_yaml(dict(config.as_dict(), environment=described)))
            if not described.get("sparse_products", "compiled").startswith("compiled"):
                log(f"[{config.run_id}] sparse products on {described['sparse_products']}")
        restore(run, log)
        if tracker is not None and run.is_main:
            tracker.start(run.run_dir, config.as_dict(), run_id)
        started = time.perf_counter() - float(run.state["wall_time_s"])
        for epoch in range(int(run.state["epoch"]), run.epochs):
            lr = set_epoch_lr(run, epoch)
            train_loss, train_top1 = train_epoch(run, epoch, progress and run.is_main)
            top1, test_loss, predictions, _ = evaluate(run.model, run.data.test_batches(shard=True), run.device,
                                                       run.amp_dtype, world_size)
            row = dataclasses.asdict(folder.MetricsRow(
                epoch=epoch, phase=run.sparsifier.method.phase(epoch), lr=lr,
                train_loss=train_loss, train_top1=train_top1, test_loss=test_loss, top1=top1,
                sparsity=run.sparsifier.sparsity, mask_sparsity=run.sparsifier.mask_sparsity,
                training_flops=run.sparsifier.training_flops,
                mask_overlap=run.sparsifier.epoch_metrics.get("mask_overlap"),
                wall_time_s=time.perf_counter() - started,
            ))
            record_epoch(run, row, predictions, tracker, log)
            run.state["epoch"] = epoch + 1
            run.state["wall_time_s"] = time.perf_counter() - started
            save_checkpoint(run)
        run.sparsifier.finalize(tolerance=config.budget.sparsity_tolerance, warn=False)
        check_target(run)
        result = finish(run, time.perf_counter() - started, tracker, log)
    if world_size > 1:
        distributed.dist.barrier()
    return result


# --------------------------------------------------------------------------- building and restoring


def check_resumable(config: RunConfig, store: RunStore) -> None:
    """A run folder made under one numerics mode never continues under another: its epochs so far
    were rounded one way, the rest would be rounded another, and the result would match neither."""
    if store.checkpoint_path(config.run_id) is None or not store.started(config.run_id):
        return
    try:
        before = store.config(config.run_id) or {}
    except folder.UnreadableConfig:
        return  # config.yaml is rewritten from this run's config below
    made = before.get("numerics") or "native"
    now = config.numerics or "native"
    if made != now:
        raise numerics.NumericsError(
            f"{store.folder(config.run_id)} was started under {made} numerics and cannot resume under {now}: its finished epochs "
            f"were computed with other float rounding. Resume it with --numerics {made}, or delete the folder "
            f"to start again")


def environment(run: Run) -> dict:
    """What the run's numbers depend on besides its config (``config.yaml``'s ``environment``,
    ``result.json``'s ``numerics``): numerics mode, CPU, instruction set, threads, versions."""
    info = numerics.describe(run.config.numerics or "native")
    info["world_size"] = run.world_size
    info["linear_products"] = "openblas" if run.config.numerics == "portable" and run.device.type == "cpu" else "torch"
    # sparseprop's kernels where they measure faster (auto), the fixed-order ones (portable), or none (dense)
    info["kernels"] = run.kernels
    if run.kernels == "portable":
        from acdc_bench.core import sparse

        info["sparse_products"] = sparse.implementation()  # compiled, or scipy and ATen (and why)
    return info


def build_run(config: RunConfig, out: str | Path | RunStore, data_root: str | None, rank: int, world_size: int,
              local_rank: int) -> Run:
    """Data, model, method (through :func:`sparsify`), optimizer, AMP: the run's objects; its folder
    is ``config.run_id`` in ``out`` (an output folder or its store), which building does not write."""
    load_plugins(list(config.plugins))
    device = distributed.pick_device(local_rank)
    distributed.configure_cuda(device)
    numerics.configure_device(config.numerics, device)
    # sparseprop is compiled for the build machine's CPU (-march=native): under portable numerics the
    # fixed-order kernels of acdc_bench.core.sparse run instead.
    kernels = ("portable" if config.kernels == "auto" else "dense") if config.numerics == "portable" else config.kernels
    seed = config.seed
    random.seed(seed)
    torch.manual_seed(seed)
    data = load_data(config.dataset, root=data_root or config.data_root, batch_size=config.batch_size,
                     seed=seed, num_workers=config.num_workers, device=device, rank=rank,
                     world_size=world_size, train_subset=config.train_subset)
    model = recipe.initialize(build_model(config.model, data.num_classes), config.init).to(device)
    channels_last = config.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    total_steps = config.length.steps(data.steps_per_epoch)
    sparsifier = sparsify(model, config.method, sparsity=config.sparsity,
                          steps_per_epoch=data.steps_per_epoch, total_steps=total_steps,
                          batch_size=data.batch_size, input_shape=data.input_shape,
                          kernels=kernels, **dataclasses.asdict(config.method_config))
    if config.numerics == "portable" and device.type == "cpu":
        blas.install(model)  # linear layers' products on the pinned OpenBLAS (acdc_bench.core.blas)
    optimizer = sparsifier.wrap(recipe.build_optimizer(model, config.optimizer))
    amp_dtype = AMP_DTYPES.get(config.amp) if device.type == "cuda" else None
    train_model = model
    if world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    return Run(config=config, store=store_at(out), rank=rank, world_size=world_size, device=device, data=data,
               model=model, train_model=train_model, sparsifier=sparsifier, optimizer=optimizer,
               scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
               criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
               amp_dtype=amp_dtype, channels_last=channels_last, kernels=kernels,
               epochs=sparsifier.method.epochs, total_steps=total_steps)


def restore(run: Run, log=print) -> None:
    """Continue from the run folder's checkpoint, if there is one."""
    path = run.store.checkpoint_path(run.run_id)
    if path is None:
        return
    checkpoint = load_checkpoint(path, map_location=run.device)
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.sparsifier.load_state_dict(checkpoint["sparsifier"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    _set_rng_state(checkpoint["rng"], run.device)
    run.state = checkpoint["state"]
    if run.is_main:
        log(f"[{run.config.run_id}] resuming from epoch {run.state['epoch']}/{run.epochs} ({path})")


def save_checkpoint(run: Run) -> None:
    if run.is_main:
        run.store.save_progress(run.run_id, {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "sparsifier": run.sparsifier.state_dict(), "scaler": run.scaler.state_dict(),
            "rng": _rng_state(run.device), "state": run.state,
        }, run.state["rows"])


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- one epoch


def set_epoch_lr(run: Run, epoch: int) -> float:
    """The epoch's learning rate, set on every parameter group (stepped once per epoch)."""
    lr = run.config.lr_at(epoch, epochs=run.epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_epoch(run: Run, epoch: int, progress: bool) -> tuple[float, float]:
    """This epoch's optimizer steps; its mean training loss and top-1 (%) over all ranks."""
    data, device = run.data, run.device
    if run.world_size > 1:
        # Dropout and augmentation drawn from torch's global RNG: a different stream on every
        # rank, fixed by (seed, epoch, rank) so that a resumed epoch repeats exactly. Method
        # hooks that need randomness use their own generators (RigL's mask_seed): masks stay equal.
        torch.manual_seed(epoch_seed(run.config.seed, epoch, run.rank, "train-rng"))
    per_step_lr = run.config.lr_schedule.per_step
    run.train_model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = torch.zeros((), device=device, dtype=torch.int64)
    description = (f"{run.config.method} s={run.config.sparsity:g} epoch {epoch + 1}/{run.epochs} "
                   f"[{run.sparsifier.method.phase(epoch)}]")
    batches = _progress(data.train_batches(epoch), data.steps_per_epoch, description, progress)
    for index, (inputs, targets) in enumerate(batches):
        step = epoch * data.steps_per_epoch + index
        if step >= run.total_steps:
            break
        if per_step_lr:
            lr = run.config.lr_at(epoch, step, data.steps_per_epoch, epochs=run.epochs)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
        # The global step covers positions [index * B, (index + 1) * B) of the epoch's permutation
        # padded to a multiple of the world size: count its real examples, so the FLOPs and examples
        # metered do not depend on the number of ranks.
        examples = min(data.batch_size, data.train_size - index * data.batch_size)
        loss, outputs = train_step(run.train_model, run.sparsifier, run.optimizer, run.scaler, run.criterion,
                                   inputs, targets, examples, run.amp_dtype, run.channels_last)
        loss_sum += loss.double() * targets.shape[0]
        correct += (outputs.argmax(1) == targets).sum()
        seen += targets.shape[0]
    if run.world_size > 1:
        distributed.broadcast_buffers(run.model)
        distributed.all_reduce(loss_sum, correct, seen)
    count = max(1, int(seen))
    return float(loss_sum) / count, 100.0 * int(correct) / count


def train_step(model: nn.Module, sparsifier: Sparsifier, optimizer, scaler, criterion, inputs: torch.Tensor,
               targets: torch.Tensor, examples: int, amp_dtype=None,
               channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step; the loss and outputs, detached, on the device.

    The method's hooks run inside: before the forward pass (the sparsifier's forward pre-hook)
    and in ``optimizer.step()`` (wrapped by :meth:`Sparsifier.wrap`). ``examples`` is the step's
    number of training examples over all ranks (for the FLOP meter). Nothing here reads a
    device value on the host; fp16's GradScaler reads its inf check once per step.
    ``benchmarks/gpu_bench.py`` times exactly this function.
    """
    sparsifier.step_examples(examples)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with _autocast(inputs.device, amp_dtype):
        outputs = model(inputs)
        loss = criterion(outputs, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    step = sparsifier.step
    scaler.step(optimizer)
    scaler.update()
    if sparsifier.step == step:  # the scaler skipped optimizer.step() (inf/NaN gradients)
        sparsifier.skipped_step()
    return loss.detach(), outputs.detach()


def _autocast(device: torch.device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _progress(iterable, total: int, description: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety; the per-epoch line is always printed
        return iterable
    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True, mininterval=1.0)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, amp_dtype, world_size: int
             ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Top-1 (%), mean cross-entropy, and this rank's predicted classes and labels over the test set.

    With ``world_size > 1`` pass this rank's share (``Data.test_batches(shard=True)``) and the
    unwrapped model (a DDP forward would run collectives per batch, and shards differ in
    length by one): the counts are summed over ranks, so each example is evaluated once.
    """
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.int64)
    predicted, labels = [], []
    for inputs, targets in batches:
        with _autocast(device, amp_dtype):
            outputs = model(inputs)
        loss_sum += nn.functional.cross_entropy(outputs.float(), targets, reduction="sum").double()
        classes = outputs.argmax(1)
        predicted.append(classes)
        labels.append(targets)
        correct += (classes == targets).sum()
        count += targets.numel()
    if world_size > 1:
        distributed.all_reduce(correct, loss_sum, count)
    model.train()
    n = max(1, int(count))
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return (100.0 * int(correct) / n, float(loss_sum) / n,
            torch.cat(predicted) if predicted else empty, torch.cat(labels) if labels else empty)


# --------------------------------------------------------------------------- recording


#: Debug hook: when set to a folder, every rank writes ``<folder>/rank<k>-epoch<e>.pt`` at the end
#: of every epoch and ``<folder>/rank<k>.pt`` at the end of the run (model state dict, the
#: method's state with its masks, the epoch's metrics), so that a test can check that all
#: data-parallel ranks hold identical weights and masks. Nothing is written when unset.
DUMP_RANK_STATE_ENV = "ACDC_BENCH_DUMP_RANK_STATE"


def _dump_rank_state(name: str, rank: int, payload: dict) -> None:
    dump = os.environ.get(DUMP_RANK_STATE_ENV)
    if dump:
        atomic_torch_save(payload, Path(dump) / f"rank{rank}{name}.pt")


def record_epoch(run: Run, row: dict, predictions: torch.Tensor, tracker, log) -> None:
    """The epoch's metrics row, log line and tracker entry; the dense model of the pair."""
    run.state["rows"].append(row)
    epoch = row["epoch"]
    _dump_rank_state(f"-epoch{epoch}", run.rank, {"model": run.model.state_dict(),
                                                   "method": run.sparsifier.method.state_dict(), "row": row})
    if run.is_main:
        log(f"[{run.config.run_id}] epoch {epoch + 1}/{run.epochs} {row['phase']:>6} lr {row['lr']:.4g} "
            f"loss {row['train_loss']:.4f} top-1 {row['top1']:.2f}% sparsity {row['sparsity']:.4f} "
            f"train FLOPs {row['training_flops']:.3e} ({row['wall_time_s']:.0f}s)")
        if tracker is not None:
            tracker.log_epoch(row)
    if epoch == run.sparsifier.method.dense_pair_epoch():
        run.state["dense_pair"] = {"epoch": epoch, "top1": row["top1"],
                                   "predictions": gather_predictions(run, predictions)}
        if run.is_main:
            run.store.write_dense_model(run.run_id, run.model.state_dict())


class TargetMissed(ValueError):
    """A run ended outside its target sparsity: it is not a result (no ``result.json``)."""


def check_target(run: Run) -> None:
    """A run that missed what its method promises is an error, never a result; except a calibration
    run with runs left in its chain, which is a step of the chain (its result says
    ``within_tolerance: false`` and a later run supersedes it)."""
    report = run.sparsifier.final
    if report["within"]:
        return
    calibration = run.config.budget.calibration
    if calibration and int(calibration["iteration"]) + 1 < int(calibration["max_runs"]):
        return
    message = (f"{run.config.run_id}: sparsity {report['reached']:.4f} at the end of training, but "
               f"{run.config.method} promises {report['promised']:.4f} (target {report['target']:g}, tolerance "
               f"{report['tolerance']:g}): {report['cause']}. Not written as a result; {folder.FAILED} in the run "
               f"folder says so")
    if run.is_main:
        run.store.write_failure(run.run_id, message)
    raise TargetMissed(message)


def gather_predictions(run: Run, classes: torch.Tensor) -> torch.Tensor | None:
    """One value per test example (a predicted class, a label), in dataset order, on rank 0
    (None on the others)."""
    indices = run.data.test_indices(shard=True)
    if run.world_size == 1:
        return classes.cpu()
    shares = [None] * run.world_size
    distributed.dist.all_gather_object(shares, (indices, classes.cpu()))
    if not run.is_main:
        return None
    full = torch.empty(run.data.test_size, dtype=torch.int64)
    for share_indices, share_classes in shares:
        full[share_indices] = share_classes
    return full


def finish(run: Run, wall_time: float, tracker, log) -> dict:
    """Evaluate the final model; write it, its predictions and, last, ``result.json``."""
    top1, _, classes, labels = evaluate(run.model, run.data.test_batches(shard=True), run.device, run.amp_dtype,
                                        run.world_size)
    predictions, targets = gather_predictions(run, classes), gather_predictions(run, labels)
    result = _result(run, top1, wall_time)
    _dump_rank_state("", run.rank, {"model": run.model.state_dict(), "method": run.sparsifier.method.state_dict(),
                                    "result": {k: result[k] for k in ("top1", "actual_sparsity", "training_flops")}})
    if run.is_main:
        pair = run.state.get("dense_pair") or {}
        run.store.finish(run.run_id, run.model.state_dict(), result,
                      {"targets": targets.numpy(), "final": predictions.numpy(),
                       "dense": pair["predictions"].numpy() if pair.get("predictions") is not None else None})
        log(f"[{run.config.run_id}] done: top-1 {result['top1']:.2f}% at sparsity {result['actual_sparsity']:.4f}, "
            f"training FLOPs x{result['training_flops_multiplier']:.3f} of dense -> {run.run_dir}")
        if tracker is not None:
            tracker.log_result(result, [run.store.metrics_path(run.run_id)])
            tracker.finish()
    return result


def _result(run: Run, top1: float, wall_time: float) -> dict:
    config, meter, flops = run.config, run.sparsifier.meter, run.sparsifier.method.flops
    layers = run.sparsifier.layers
    actual_sparsity, densities = weight_sparsity(layers)
    nonzeros = [round(densities[layer.name] * layer.numel) for layer in layers]
    inference_flops = flops.sparse_forward(nonzeros)
    dense_training_flops = flops.dense_training_flops(run.data.train_size, config.suite_epochs)
    budget = config.budget.as_dict()
    reference = budget.get("reference_training_flops")
    budget["achieved_ratio"] = meter.total / reference if reference else None
    if budget.get("calibration") and reference:
        calibration = budget["calibration"]
        budget["calibration"] = dict(calibration, within_tolerance=bool(
            abs(budget["achieved_ratio"] - 1.0) <= calibration["flops_tolerance"]
            and abs(actual_sparsity - config.sparsity) <= calibration["sparsity_tolerance"]))
    pair = run.state.get("dense_pair")
    final = run.sparsifier.final
    top1_best, best = folder.best_epoch(run.state["rows"], final["reached"], final["tolerance"])
    return dataclasses.asdict(folder.Result(
        schema_version=folder.RESULT_SCHEMA_VERSION,
        run_id=config.run_id,
        suite=config.suite,
        dataset=config.dataset,
        model=config.model,
        method=config.method,
        variant=config.variant,
        distribution=config.distribution,
        target_sparsity=config.sparsity,
        actual_sparsity=actual_sparsity,
        layer_densities=densities,
        top1=top1,
        top1_best=top1_best,
        best_epoch=best,
        top1_dense=pair["top1"] if pair else None,
        dense_pair_epoch=pair["epoch"] if pair else None,
        training_flops=meter.total,
        dense_training_flops=dense_training_flops,
        training_flops_multiplier=meter.total / dense_training_flops,
        inference_flops=inference_flops,
        dense_inference_flops=flops.dense_forward,
        inference_flops_multiplier=inference_flops / flops.dense_forward,
        epochs=config.epochs,
        train_steps=config.train_steps,
        suite_epochs=config.suite_epochs,
        seed=config.seed,
        budget=budget,
        steps=meter.steps,
        examples_seen=meter.examples,
        world_size=run.world_size,
        wall_time_s=wall_time,
        cell=config.cell,
        train_subset=config.train_subset,
        overrides=list(config.overrides),
        sparsity_check={k: v for k, v in run.sparsifier.final.items() if k != "cause"},
        versions=distributed.versions(),
        numerics=environment(run),
        command=" ".join(sys.argv),
    ))
