"""Data throughput of the default suite's loader (Fashion-MNIST in memory) against the model's step.

Times one epoch of ``Data.train_batches`` at the suite's batch size; the table compares
the time per batch with the plain dense step of the default suite's model. Where the
Fashion-MNIST files are missing, a synthetic in-memory set of the same shape stands in
(same loader class, same cost; the table says so).
"""

from __future__ import annotations

import torch

from _harness import SHORT, WORKLOADS, record
from acdc_bench.data import DataError, TensorData, load_data


def default_suite_data(batch_size: int, seed: int = 0):
    try:
        return load_data("fashion-mnist", root=None, batch_size=batch_size, seed=seed), "fashion-mnist"
    except DataError:
        generator = torch.Generator().manual_seed(seed)
        train = torch.randn(60_000, 1, 28, 28, generator=generator)
        test = torch.randn(10_000, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (60_000,), generator=generator)
        return TensorData(train, labels, test, labels[:10_000], name="fashion-mnist", num_classes=10,
                          batch_size=batch_size, seed=seed), "synthetic (Fashion-MNIST not installed)"


def test_default_suite_loader(benchmark):
    spec = WORKLOADS["default-suite"]
    data, source = default_suite_data(spec.batch)
    batches = data.steps_per_epoch

    def epoch():
        seen = 0
        for inputs, _ in data.train_batches(0):
            seen += inputs.shape[0]
        return seen

    benchmark.group = f"data: default suite loader ({spec.label})"
    seen = benchmark.pedantic(epoch, rounds=2 if SHORT else 5, warmup_rounds=1)
    assert seen == data.train_size
    benchmark.extra_info.update(source=source, batches_per_epoch=batches)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        per_batch = stats.stats.min / batches
        benchmark.extra_info["images_per_s"] = data.train_size / stats.stats.min
        record(benchmark, "data", "default-suite", "loader", seconds_per_batch=per_batch,
               images_per_s=data.train_size / stats.stats.min, source=source)
