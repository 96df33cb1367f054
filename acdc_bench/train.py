"""The training loop of one run: data, model, method, FLOP meter, checkpoints, resume, results."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from acdc_bench import __version__
from acdc_bench.config import dump_yaml, lr_at_epoch
from acdc_bench.data import load_data
from acdc_bench.flops import TrainingFlopMeter, measure_layer_flops
from acdc_bench.io import (
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
)
from acdc_bench.methods import get_method, load_plugins, make_config
from acdc_bench.models import build_model
from acdc_bench.sparsity import prunable_layers, weight_sparsity

METRIC_COLUMNS = [
    "epoch", "phase", "lr", "train_loss", "train_top1", "test_loss", "top1",
    "sparsity", "training_flops", "mask_overlap", "wall_time_s",
]
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"


def _progress(iterable, total: int, description: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety; the per-epoch line is always printed
        return iterable
    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True, mininterval=1.0)


def distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return rank, world_size, local_rank


def pick_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def versions() -> dict:
    import torchvision

    return {
        "acdc_bench": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, amp_dtype, world_size: int) -> tuple[float, float]:
    """Top-1 (%) and mean cross-entropy over the test set, without gradients."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.int64)
    for inputs, targets in batches:
        with _autocast(device, amp_dtype):
            outputs = model(inputs)
        loss_sum += nn.functional.cross_entropy(outputs.float(), targets, reduction="sum").double()
        correct += (outputs.argmax(1) == targets).sum()
        count += targets.numel()
    if world_size > 1:
        for tensor in (correct, loss_sum, count):
            dist.all_reduce(tensor)
    model.train()
    n = max(1, int(count))
    return 100.0 * int(correct) / n, float(loss_sum) / n


def _autocast(device: torch.device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


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


def read_result(run_dir: Path) -> dict | None:
    import json

    path = run_dir / RESULT
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train(
    config: dict,
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    progress: bool = True,
    tracker=None,
    log=print,
) -> dict:
    """Train (or resume, or report) the run described by ``config``; returns its result dict."""
    out_dir = Path(out_dir)
    run_dir = out_dir / config["run_id"]
    finished = read_result(run_dir)
    if finished is not None:
        log(f"[{config['run_id']}] finished already: top-1 {finished['top1']:.2f}% "
            f"(sparsity {finished['actual_sparsity']:.4f}); not retraining")
        return finished

    load_plugins(config.get("plugins") or [])
    rank, world_size, local_rank = distributed_context()
    is_main = rank == 0
    device = pick_device(local_rank)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(config))

    seed = int(config["seed"])
    random.seed(seed)
    torch.manual_seed(seed)
    data = load_data(
        config["dataset"],
        root=data_root or config.get("data_root"),
        batch_size=config["batch_size"],
        seed=seed,
        num_workers=config.get("num_workers", 0),
        device=device,
        rank=rank,
        world_size=world_size,
        train_subset=config.get("train_subset"),
    )
    model = build_model(config["model"], data.num_classes).to(device)
    method_cls = get_method(config["method"])
    method_config = make_config(method_cls, config.get("method_config"))
    layers = prunable_layers(
        model, getattr(method_config, "include", ()) or (), getattr(method_config, "exclude", ()) or ()
    )
    flops = measure_layer_flops(model, layers, data.input_shape)
    if config.get("channels_last") and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = data.steps_per_epoch
    total_steps = int(config.get("train_steps") or int(config["epochs"]) * steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    method = method_cls(method_config, target_sparsity=float(config["sparsity"]), epochs=epochs,
                        steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    optimizer_options = config["optimizer"]
    kwargs = dict(
        lr=float(optimizer_options["lr"]),
        momentum=float(optimizer_options.get("momentum", 0.0)),
        nesterov=bool(optimizer_options.get("nesterov", False)),
        weight_decay=float(optimizer_options.get("weight_decay", 0.0)),
    )
    method.setup(model, layers, flops)
    groups = method.param_groups(model, kwargs) or [{"params": list(model.parameters())}]
    optimizer = torch.optim.SGD(groups, **kwargs)
    method.bind_optimizer(optimizer)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.get("amp", "none")) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=float(config.get("label_smoothing", 0.0)))
    meter = TrainingFlopMeter()

    state = {"epoch": 0, "rows": [], "wall_time_s": 0.0, "dense_pair": None}
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, map_location=device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        method.load_state_dict(checkpoint["method"])
        meter.load_state_dict(checkpoint["meter"])
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"], device)
        state = checkpoint["state"]
        if is_main:
            log(f"[{config['run_id']}] resuming from epoch {state['epoch']}/{epochs} ({checkpoint_path})")

    train_model = model
    if world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if config.get("compile"):
        train_model = torch.compile(train_model)

    if tracker is not None and is_main:
        tracker.start(run_dir, config, config["run_id"])
    started = time.perf_counter() - float(state["wall_time_s"])
    for epoch in range(int(state["epoch"]), epochs):
        lr = lr_at_epoch(dict(config, epochs=epochs), epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        method.on_epoch_start(epoch)
        train_model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        description = f"{config['method']} s={config['sparsity']:g} epoch {epoch + 1}/{epochs} [{method.phase(epoch)}]"
        batches = _progress(data.train_batches(epoch), steps_per_epoch, description, progress and is_main)
        for index, (inputs, targets) in enumerate(batches):
            step = epoch * steps_per_epoch + index
            if step >= total_steps:
                break
            method.on_step_start(step)
            if config.get("channels_last") and device.type == "cuda" and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp_dtype):
                outputs = train_model(inputs)
                loss = criterion(outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if method.before_optimizer_step(step):
                scaler.step(optimizer)
                scaler.update()
            method.after_optimizer_step(step)
            meter.add(method.step_training_flops(step), targets.shape[0] * world_size)
            loss_sum += loss.detach().double() * targets.shape[0]
            correct += (outputs.detach().argmax(1) == targets).sum()
            seen += targets.shape[0]
        extra = method.on_epoch_end(epoch)
        top1, test_loss = evaluate(model, data.test_batches(), device, amp_dtype, world_size)
        sparsity, _ = weight_sparsity(layers)
        row = {
            "epoch": epoch,
            "phase": method.phase(epoch),
            "lr": lr,
            "train_loss": float(loss_sum) / max(1, seen),
            "train_top1": 100.0 * int(correct) / max(1, seen),
            "test_loss": test_loss,
            "top1": top1,
            "sparsity": sparsity,
            "training_flops": meter.total,
            "mask_overlap": extra.get("mask_overlap"),
            "wall_time_s": time.perf_counter() - started,
        }
        state["rows"].append(row)
        if is_main:
            log(f"[{config['run_id']}] epoch {epoch + 1}/{epochs} {row['phase']:>6} lr {lr:.4g} "
                f"loss {row['train_loss']:.4f} top-1 {top1:.2f}% sparsity {sparsity:.4f} "
                f"train FLOPs {meter.total:.3e} ({row['wall_time_s']:.0f}s)")
            if tracker is not None:
                tracker.log_epoch(row)
        if epoch == method.dense_pair_epoch():
            state["dense_pair"] = {"epoch": epoch, "top1": top1}
            if is_main:
                atomic_torch_save(model.state_dict(), run_dir / "model_dense.pt")
        state["epoch"] = epoch + 1
        state["wall_time_s"] = time.perf_counter() - started
        if is_main:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "method": method.state_dict(),
                    "meter": meter.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": _rng_state(device),
                    "state": state,
                },
                checkpoint_path,
            )
            atomic_write_csv(run_dir / "metrics.csv", state["rows"], METRIC_COLUMNS)

    method.finalize()
    result = _result(config, model, method, layers, flops, meter, data, state, device, amp_dtype, world_size,
                     time.perf_counter() - started)
    if is_main:
        atomic_torch_save(model.state_dict(), run_dir / "model_final.pt")
        atomic_write_json(run_dir / RESULT, result)
        checkpoint_path.unlink(missing_ok=True)
        log(f"[{config['run_id']}] done: top-1 {result['top1']:.2f}% at sparsity {result['actual_sparsity']:.4f}, "
            f"training FLOPs x{result['training_flops_multiplier']:.3f} of dense -> {run_dir}")
        if tracker is not None:
            tracker.log_result(result, [run_dir / "metrics.csv"])
            tracker.finish()
    if world_size > 1:
        dist.barrier()
    return result


def _result(config, model, method, layers, flops, meter, data, state, device, amp_dtype, world_size, wall_time) -> dict:
    top1, _ = evaluate(model, data.test_batches(), device, amp_dtype, world_size)
    actual_sparsity, densities = weight_sparsity(layers)
    nonzeros = [round(densities[layer.name] * layer.numel) for layer in layers]
    inference_flops = flops.sparse_forward(nonzeros)
    dense_training_flops = 3 * flops.dense_forward * data.train_size * int(config.get("suite_epochs", config["epochs"]))
    budget = dict(config.get("budget") or {})
    reference = budget.get("reference_training_flops")
    budget["achieved_ratio"] = meter.total / reference if reference else None
    pair = state.get("dense_pair")
    return {
        "schema_version": 1,
        "run_id": config["run_id"],
        "suite": config["suite"],
        "dataset": config["dataset"],
        "model": config["model"],
        "method": config["method"],
        "variant": config.get("variant", ""),
        "distribution": (config.get("method_config") or {}).get("distribution", "dense" if config["method"] == "dense" else ""),
        "target_sparsity": float(config["sparsity"]),
        "actual_sparsity": actual_sparsity,
        "layer_densities": densities,
        "top1": top1,
        "top1_dense": pair["top1"] if pair else None,
        "dense_pair_epoch": pair["epoch"] if pair else None,
        "training_flops": meter.total,
        "dense_training_flops": dense_training_flops,
        "training_flops_multiplier": meter.total / dense_training_flops,
        "inference_flops": inference_flops,
        "dense_inference_flops": flops.dense_forward,
        "inference_flops_multiplier": inference_flops / flops.dense_forward,
        "epochs": int(config["epochs"]),
        "train_steps": config.get("train_steps"),
        "suite_epochs": int(config.get("suite_epochs", config["epochs"])),
        "seed": int(config["seed"]),
        "budget": budget,
        "steps": meter.steps,
        "examples_seen": meter.examples,
        "world_size": world_size,
        "wall_time_s": wall_time,
        "versions": versions(),
        "command": " ".join(sys.argv),
    }
