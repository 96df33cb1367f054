"""Devices and data parallelism: torchrun's environment, DDP's process group, rank-0 buffers.

One run on ``WORLD_SIZE`` processes (``torchrun --nproc-per-node N``, or a multi-task Slurm
job through submitit), DDP over NCCL (GPU) or gloo (CPU). The global batch and the learning
rate are the suite's whatever N (each rank gets ``batch_size / N`` examples per step); only
rank 0 writes the run folder.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.distributed as dist
from torch import nn

from acdc_bench import __version__


def distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
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


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP broadcasts them at the start of every forward pass, so after the last training
    step of an epoch each rank holds the statistics of its own shard; evaluation (sharded,
    on the unwrapped model) and checkpoints need one model, the one DDP would use next.
    """
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def all_reduce(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        dist.all_reduce(tensor)


def configure_cuda(device: torch.device) -> None:
    """Speed settings for CUDA training (also used by ``benchmarks/gpu_bench.py``).

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
