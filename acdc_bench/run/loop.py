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
from acdc_bench.data import epoch_seed, load_data
from acdc_bench.core.flops import TrainingFlopMeter, measure_layer_flops
from acdc_bench.core.io import (
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
)
from acdc_bench.methods import get_method, load_plugins, make_config
from acdc_bench.models import build_model
from acdc_bench.core.sparsity import prunable_layers, weight_sparsity

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
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise.

    Data parallelism: one run on ``WORLD_SIZE`` processes (``torchrun --nproc-per-node N``,
    or a multi-task Slurm job through submitit), DDP over NCCL (GPU) or gloo (CPU). The
    global batch and the learning rate are the suite's whatever N (each rank gets
    ``batch_size / N`` examples per step); only rank 0 writes the run folder.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            # Before the group exists, so NCCL's communicators (and barrier()) use this rank's GPU, not GPU 0.
            torch.cuda.set_device(_cuda_index(local_rank))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return rank, world_size, local_rank


#: Debug hook: when set to a folder, every rank writes ``<folder>/rank<k>-epoch<e>.pt`` at the end
#: of every epoch and ``<folder>/rank<k>.pt`` at the end of the run (model state dict, the
#: method's state with its masks, the epoch's metrics), so that a test can check that all
#: data-parallel ranks hold identical weights and masks. Nothing is written when unset.
DUMP_RANK_STATE_ENV = "ACDC_BENCH_DUMP_RANK_STATE"


def _dump_rank_state(name: str, rank: int, payload: dict) -> None:
    folder = os.environ.get(DUMP_RANK_STATE_ENV)
    if folder:
        atomic_torch_save(payload, Path(folder) / f"rank{rank}{name}.pt")


def _broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP broadcasts them at the start of every forward pass, so after the last training
    step of an epoch each rank holds the statistics of its own shard; evaluation (sharded,
    on the unwrapped model) and checkpoints need one model, the one DDP would use next.
    """
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def configure_cuda(device: torch.device) -> None:
    """Speed settings for CUDA training (also used by ``acdc_bench.gpu_bench``).

    cuDNN autotuning picks the fastest convolution algorithms for the run's fixed input
    shapes (the first steps pay for the search). Numerics stay PyTorch's defaults (cuDNN
    convolutions may use TF32, fp32 matmuls do not).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _cuda_index(local_rank: int) -> int:
    """This rank's GPU: ``local_rank`` when every task sees all of the node's GPUs, 0 when the
    scheduler binds one GPU per task (CUDA_VISIBLE_DEVICES holding just it)."""
    return local_rank % torch.cuda.device_count()


def pick_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        index = _cuda_index(local_rank)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
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
    """Top-1 (%) and mean cross-entropy over the test set, without gradients.

    With ``world_size > 1`` pass this rank's share (``Data.test_batches(shard=True)``) and the
    unwrapped model (a DDP forward would run collectives per batch, and shards differ in
    length by one): the counts are summed over ranks, so each example is evaluated once.
    """
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


def train_step(model: nn.Module, method, optimizer, scaler, criterion, meter: TrainingFlopMeter,
               inputs: torch.Tensor, targets: torch.Tensor, step: int, examples: int,
               amp_dtype=None, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step through the method's hooks; the loss and outputs, detached, on the device.

    ``examples`` is the step's number of training examples over all ranks (for the FLOP
    meter). Nothing here reads a device value on the host (no ``.item()``): with bf16 or
    fp32 a dense, AC/DC or GMP step between mask updates queues its kernels without a
    sync (fp16's GradScaler reads its inf check once per step). ``acdc_bench.gpu_bench``
    times exactly this function.
    """
    method.on_step_start(step)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with _autocast(inputs.device, amp_dtype):
        outputs = model(inputs)
        loss = criterion(outputs, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if method.before_optimizer_step(step):
        scaler.step(optimizer)
        scaler.update()
    method.after_optimizer_step(step)
    meter.add(method.step_training_flops(step), examples)
    return loss.detach(), outputs.detach()


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
    configure_cuda(device)
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
    channels_last = bool(config.get("channels_last")) and device.type == "cuda"
    if channels_last:
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
            model, device_ids=[device.index] if device.type == "cuda" else None
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
        if world_size > 1:
            # Dropout and augmentation drawn from torch's global RNG: a different stream on every
            # rank (the same one would give every shard the same dropout masks and crops), fixed
            # by (seed, epoch, rank) so that a resumed epoch repeats exactly. Everything before
            # (initialisation, method set-up) used the common seed; method hooks that need
            # randomness use their own generators (e.g. RigL's mask_seed), so masks stay equal.
            torch.manual_seed(epoch_seed(seed, epoch, rank, "train-rng"))
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
            # The global step covers positions [index * B, (index + 1) * B) of the epoch's
            # permutation padded to a multiple of the world size: count its real examples (the
            # padding repeats up to world_size - 1 examples in the last step), so the FLOPs and
            # examples metered do not depend on the number of ranks.
            examples = min(data.batch_size, data.train_size - index * data.batch_size)
            loss, outputs = train_step(train_model, method, optimizer, scaler, criterion, meter, inputs, targets,
                                       step, examples, amp_dtype, channels_last)
            loss_sum += loss.double() * targets.shape[0]
            correct += (outputs.argmax(1) == targets).sum()
            seen += targets.shape[0]
        extra = method.on_epoch_end(epoch)
        seen_tensor = torch.tensor(seen, device=device, dtype=torch.int64)
        if world_size > 1:
            _broadcast_buffers(model)
            for tensor in (loss_sum, correct, seen_tensor):  # train metrics over all ranks' shards
                dist.all_reduce(tensor)
        seen = int(seen_tensor)
        top1, test_loss = evaluate(model, data.test_batches(shard=True), device, amp_dtype, world_size)
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
        _dump_rank_state(f"-epoch{epoch}", rank, {"model": model.state_dict(), "method": method.state_dict(), "row": row})
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
    _dump_rank_state("", rank, {"model": model.state_dict(), "method": method.state_dict(),
                                "result": {k: result[k] for k in ("top1", "actual_sparsity", "training_flops")}})
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
    top1, _ = evaluate(model, data.test_batches(shard=True), device, amp_dtype, world_size)
    actual_sparsity, densities = weight_sparsity(layers)
    nonzeros = [round(densities[layer.name] * layer.numel) for layer in layers]
    inference_flops = flops.sparse_forward(nonzeros)
    dense_training_flops = flops.dense_training_flops(data.train_size, int(config.get("suite_epochs", config["epochs"])))
    budget = dict(config.get("budget") or {})
    reference = budget.get("reference_training_flops")
    budget["achieved_ratio"] = meter.total / reference if reference else None
    if budget.get("calibration") and reference:
        calibration = budget["calibration"]
        budget["calibration"] = dict(calibration, within_tolerance=bool(
            abs(budget["achieved_ratio"] - 1.0) <= calibration["flops_tolerance"]
            and abs(actual_sparsity - float(config["sparsity"])) <= calibration["sparsity_tolerance"]))
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
