"""Shared pieces of the benchmarks: workloads, one training step through the loop's hooks, results.

Every step benchmark runs exactly what :func:`acdc_bench.run.loop.train` runs per step, in
the same order::

    method.on_step_start(step)
    outputs = model(inputs); loss = criterion(outputs, targets)
    optimizer.zero_grad(set_to_none=True); loss.backward()
    if method.before_optimizer_step(step): optimizer.step()
    method.after_optimizer_step(step)
    meter.add(method.step_training_flops(step), batch)

and compares it with the plain dense PyTorch step (forward, backward, ``optimizer.step``,
no method, no meter) on the same model, batch and optimizer. The time spent in the
method's hooks and the meter is also clocked inside every step, so the harness's own
cost is known even when other processes make whole-step times noisy.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from acdc_bench.api import sparsify
from acdc_bench.config import Suite, load_suite
from acdc_bench.data import DATASETS
from acdc_bench.core.flops import LayerFlops, TrainingFlopMeter, measure_layer_flops
from acdc_bench.methods import get_method, make_config, method_names
from acdc_bench.models import build_model
from acdc_bench.core.sparsity import prunable_layers

SHORT = os.environ.get("ACDC_BENCH_SHORT", "") not in ("", "0")
SPARSITY = 0.9
#: Training-set sizes, for the schedules' steps per epoch (where AC/DC phases and GMP/RigL updates fall).


@functools.lru_cache(maxsize=None)
def _suite(name: str) -> Suite:
    return load_suite(name)


@dataclass(frozen=True)
class Workload:
    key: str
    suite: str
    batch: int
    resolution: int | None  # None: the suite's model's own input size
    rounds: int  # timed steps (one step per round)
    warmup: int

    @property
    def spec(self) -> Suite:
        return _suite(self.suite)

    def input_shape(self) -> tuple[int, ...]:
        shape = {"lenet-300-100": (1, 28, 28), "resnet50": (3, 224, 224)}[self.spec.model]
        if self.resolution is not None:
            shape = (shape[0], self.resolution, self.resolution)
        return shape

    @property
    def label(self) -> str:
        shape = "x".join(str(d) for d in self.input_shape())
        return f"{self.spec.model}, batch {self.batch}, {shape}"


def workloads(short: bool = SHORT) -> list[Workload]:
    """The default suite's model and batch (LeNet-300-100, 256, 28x28) and ResNet50 (32, 224x224).

    Short mode (``ACDC_BENCH_SHORT=1``, ``nox -s bench -- --short``) shrinks ResNet50 to
    batch 2 at 64x64 and takes fewer rounds, for CI. (Override the rounds with
    ``ACDC_BENCH_ROUNDS=default-suite:N,resnet50:M``.)
    """
    default = _suite("fashion-mnist")
    if short:
        return [
            Workload("default-suite", "fashion-mnist", default.batch_size, None, rounds=30, warmup=5),
            Workload("resnet50", "imagenet-resnet50", 2, 64, rounds=1, warmup=1),
        ]
    return [
        Workload("default-suite", "fashion-mnist", default.batch_size, None, rounds=200, warmup=20),
        Workload("resnet50", "imagenet-resnet50", 32, None, rounds=5, warmup=1),
    ]


def _with_rounds(items: list[Workload]) -> list[Workload]:
    import dataclasses

    overrides = dict(part.split(":") for part in os.environ.get("ACDC_BENCH_ROUNDS", "").split(",") if ":" in part)
    return [dataclasses.replace(w, rounds=int(overrides[w.key])) if w.key in overrides else w for w in items]


WORKLOADS = {w.key: w for w in _with_rounds(workloads())}


def use_short_workloads() -> None:
    """Switch this process to the short workloads (the dict is updated in place)."""
    global SHORT
    SHORT = True
    WORKLOADS.update({w.key: w for w in _with_rounds(workloads(short=True))})

#: Scenario -> the registered method it runs (None: the plain PyTorch step, the reference).
SCENARIOS: dict[str, str | None] = {
    "torch-dense": None,
    "dense": "dense",
    "acdc-compressed": "acdc",
    "acdc-decompressed": "acdc",
    "gmp": "gmp",
    "rigl": "rigl",
    "rigl-update": "rigl",
    "str": "str",
}
REFERENCE = "torch-dense"

#: The issue's targets: scenario -> largest step-time ratio to the plain dense step, per workload.
STEP_TARGETS = {
    "default-suite": {"acdc-compressed": 1.10, "acdc-decompressed": 1.10, "gmp": 1.10},
    "resnet50": {"acdc-compressed": 1.03, "acdc-decompressed": 1.03, "gmp": 1.03, "rigl-amortised": 1.10},
}
TOPK_TARGET = 1.5  # x one torch.kthvalue over the same magnitudes
TOPK_MEMORY_TARGET = 1.0  # extra full-size fp32 buffers (slice-sized temporaries aside)
METER_TARGET = 0.001  # fraction of a step


def method_available(name: str | None) -> bool:
    return name is None or name in method_names()


# --------------------------------------------------------------------------- results


@dataclass
class Record:
    """One benchmark's figures, kept for the ratio table at the end of the session."""

    group: str  # "step", "meter", "topk", "data"
    workload: str
    scenario: str
    min: float
    median: float
    rounds: int
    extra_info: dict
    hooks_median: float | None = None
    paired: list[float] | None = None  # per-round ratios to a dense step timed right before
    reference_median: float | None = None  # median of those dense steps
    values: dict = field(default_factory=dict)


RESULTS: dict[tuple[str, str, str], Record] = {}


def record(benchmark, group: str, workload: str, scenario: str, hooks: list[float] | None = None,
           reference: list[float] | None = None, **values) -> Record | None:
    """Store a finished benchmark's figures (None when benchmarks are disabled: a smoke run).

    ``reference``: the dense steps timed before each timed round (same length as the rounds).
    """
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    stats = stats.stats
    paired = [t / r for t, r in zip(stats.data, reference)] if reference else None
    entry = Record(group, workload, scenario, stats.min, stats.median, stats.rounds, benchmark.extra_info,
                   statistics.median(hooks) if hooks else None, paired,
                   statistics.median(reference) if reference else None, values)
    if paired:
        benchmark.extra_info["paired_ratio_median"] = statistics.median(paired)
        benchmark.extra_info["dense_step_median_s"] = entry.reference_median
    if hooks:
        benchmark.extra_info["hooks_median_s"] = entry.hooks_median
    RESULTS[(group, workload, scenario)] = entry
    return entry


def reference_step(workload: str) -> Record | None:
    return RESULTS.get(("step", workload, REFERENCE))


# --------------------------------------------------------------------------- one training step

_FLOPS: dict[tuple[str, tuple], LayerFlops] = {}


def _layer_flops(model: nn.Module, layers, model_name: str, input_shape: tuple) -> LayerFlops:
    key = (model_name, input_shape, tuple(layer.name for layer in layers))
    if key not in _FLOPS:
        _FLOPS[key] = measure_layer_flops(model, layers, input_shape)
    return _FLOPS[key]


class Stepper:
    """A model, batch, optimizer and (optionally) a method positioned at the scenario's step.

    ``paired=True`` also builds a plain dense model of the same architecture, batch and
    optimizer: :meth:`time_reference` (the benchmark's untimed set-up of each round) times
    one plain dense step on it right before each timed method step, so that every round
    gives a ratio measured under the same machine load (against the mean of the dense
    steps just before and just after it).
    """

    def __init__(self, workload: Workload, scenario: str, seed: int = 0, paired: bool = False):
        spec = workload.spec
        self.reference = Stepper(workload, REFERENCE, seed) if paired and SCENARIOS[scenario] is not None else None
        self.reference_times: list[float] = []
        torch.manual_seed(seed)
        self.workload, self.scenario = workload, scenario
        self.batch = workload.batch
        input_shape = workload.input_shape()
        num_classes = 10 if spec.model == "lenet-300-100" else 1000
        self.model = build_model(spec.model, num_classes)
        self.model.train()
        self.inputs = torch.randn(workload.batch, *input_shape)
        self.targets = torch.randint(0, num_classes, (workload.batch,))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(spec.label_smoothing))
        options = spec.optimizer
        kwargs = dict(lr=float(options["lr"]), momentum=float(options.get("momentum", 0.0)),
                      nesterov=bool(options.get("nesterov", False)),
                      weight_decay=float(options.get("weight_decay", 0.0)))
        self.meter = TrainingFlopMeter()
        self.hook_times: list[float] = []
        self.meter_times: list[float] = []  # the meter's share of hook_times
        method_name = SCENARIOS[scenario]
        self.method = None
        self.step_index = 0
        if method_name is None:
            self.optimizer = torch.optim.SGD(self.model.parameters(), **kwargs)
            return
        # Wired by acdc_bench.sparsify, as in any training loop; method_step below then drives the
        # hooks one by one, in the order the Sparsifier runs them, to clock them separately.
        options = spec.method_options(method_name)
        config = make_config(get_method(method_name), options)
        layers = prunable_layers(self.model, getattr(config, "include", ()) or (), getattr(config, "exclude", ()) or ())
        steps_per_epoch = math.ceil(DATASETS[spec.dataset].train_size / int(spec.batch_size))
        sparsifier = sparsify(self.model, method_name, sparsity=SPARSITY, epochs=int(spec.epochs),
                              steps_per_epoch=steps_per_epoch, batch_size=self.batch,
                              flops=_layer_flops(self.model, layers, spec.model, input_shape), **options)
        self.method = sparsifier.method
        self.optimizer = torch.optim.SGD(self.model.parameters(), **kwargs)
        self.method.bind_optimizer(self.optimizer)
        self.step_index = POSITIONS[scenario](self.method)

    # ------------------------------------------------------------------ steps
    def plain_step(self) -> None:
        """The reference: the plain dense PyTorch step."""
        outputs = self.model(self.inputs)
        loss = self.criterion(outputs, self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def method_step(self) -> None:
        """One step through the training loop's hooks, clocking the hooks and the meter."""
        method, step, clock = self.method, self.step_index, time.perf_counter
        start = clock()
        method.on_step_start(step)
        hooks = clock() - start
        outputs = self.model(self.inputs)
        loss = self.criterion(outputs, self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        start = clock()
        take_step = method.before_optimizer_step(step)
        hooks += clock() - start
        if take_step:
            self.optimizer.step()
        start = clock()
        method.after_optimizer_step(step)
        metering = clock()
        self.meter.add(method.step_training_flops(step), self.batch)
        end = clock()
        self.meter_times.append(end - metering)
        self.hook_times.append(hooks + end - start)

    @property
    def step(self) -> Callable[[], None]:
        return self.plain_step if self.method is None else self.method_step

    def time_reference(self) -> None:
        """One plain dense step on the reference model, timed (a benchmark round's set-up)."""
        start = time.perf_counter()
        self.reference.plain_step()
        self.reference_times.append(time.perf_counter() - start)

    def measured_hook_times(self, skip: int) -> list[float]:
        """Hook times of the timed steps (the first ``skip`` calls were warm-up)."""
        return self.hook_times[skip:] or self.hook_times

    def measured_reference_times(self, skip: int) -> list[float]:
        """Per timed round, the mean of the dense steps timed right before and right after it
        (the next round's set-up, or one last :meth:`time_reference` after the benchmark):
        a load that drifts during a round, or an order effect, cancels out."""
        times = self.reference_times[skip:]
        return [(a + b) / 2 for a, b in zip(times, times[1:])]

    def meter_step(self) -> None:
        """What the FLOP meter costs per step: the method's per-step FLOPs and ``meter.add``."""
        self.meter.add(self.method.step_training_flops(self.step_index), self.batch)


# --------------------------------------------------------------------------- scenario positions


def _acdc_epoch(method, phase: str) -> int:
    """First epoch of the first ``phase`` (sparse/dense) phase that follows the other kind."""
    phases = method.phases
    for epoch in range(1, len(phases)):
        if phases[epoch] == phase and phases[epoch - 1] != phase and (phase == "sparse" or "sparse" in phases[:epoch]):
            return epoch
    raise RuntimeError(f"AC/DC schedule {phases} has no {phase} phase after a change")


def _enter_epoch(method, epoch: int) -> int:
    for e in range(epoch + 1):  # the phase changes (pruning, fill_ones, momentum reset) happen here
        method.on_epoch_start(e)
    return epoch * method.steps_per_epoch + 1


def _gmp_between_updates(method) -> int:
    updates = method.schedule.change_steps()
    update = updates[len(updates) // 2]
    method.on_epoch_start(update // method.steps_per_epoch)
    method.on_step_start(update)  # the mask update; the benchmark times the steps after it
    step = update + 1
    assert method.schedule.change_at(step) is None
    return step


def _rigl_step(update: bool):
    def position(method) -> int:
        interval = method.config.update_interval
        step = interval * max(1, (method.end_step // interval) // 2)
        if not update:
            step += 1
        assert method.schedule.is_update(step) == update
        return step

    return position


def _middle(method) -> int:
    epoch = method.epochs // 2
    method.on_epoch_start(epoch)
    return epoch * method.steps_per_epoch + 1


POSITIONS: dict[str, Callable] = {
    "dense": _middle,
    "acdc-compressed": lambda m: _enter_epoch(m, _acdc_epoch(m, "sparse")),
    "acdc-decompressed": lambda m: _enter_epoch(m, _acdc_epoch(m, "dense")),
    "gmp": _gmp_between_updates,
    "rigl": _rigl_step(update=False),
    "rigl-update": _rigl_step(update=True),
    "str": _middle,
}


@contextlib.contextmanager
def count_flop_counter_passes():
    """Counts ``FlopCounterMode`` entries inside the block (the meter must need none per step)."""
    from torch.utils import flop_counter

    original = flop_counter.FlopCounterMode.__enter__
    passes = [0]

    def counting(self, *args, **kwargs):
        passes[0] += 1
        return original(self, *args, **kwargs)

    flop_counter.FlopCounterMode.__enter__ = counting
    try:
        yield passes
    finally:
        flop_counter.FlopCounterMode.__enter__ = original


# --------------------------------------------------------------------------- the ratio table


def machine() -> dict:
    """Where the figures come from: CPU model, cores, torch threads and versions."""
    import platform

    from acdc_bench.numerics import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _row(group, workload, what, value, target=None, kind="ratio", **extra) -> dict:
    if SHORT and group == "step" and workload == "resnet50":
        target = None  # the shrunk ResNet50 step is not the workload
    met = None if target is None or value is None else value <= target
    return {"group": group, "workload": workload, "what": what, "value": value, "kind": kind,
            "target": target, "met": met, **extra}


def summary_rows() -> list[dict]:
    """The ratios of this benchmark run's results (and ``extra_info`` filled in for the saved JSON)."""
    rows = []
    for workload in WORKLOADS:
        ref = reference_step(workload)
        steps = {s: RESULTS.get(("step", workload, s)) for s in SCENARIOS if s != REFERENCE}
        if ref is not None:
            rows.append(_row("step", workload, REFERENCE, 1.0, kind="ratio", seconds=ref.min,
                             label=WORKLOADS[workload].label))
        figures = {}
        for scenario, rec in steps.items():
            if rec is None:
                continue
            dense = rec.reference_median or (ref.median if ref else None)
            paired = statistics.median(rec.paired) if rec.paired else None
            of_minima = rec.min / ref.min if ref else None
            hooks = rec.hooks_median / dense if dense and rec.hooks_median is not None else None
            figures[scenario] = (paired, of_minima, hooks)
            rec.extra_info["ratio_vs_dense"] = paired if paired is not None else of_minima
            rec.extra_info["ratio_of_minima_vs_dense"] = of_minima
            rec.extra_info["hooks_fraction_of_dense"] = hooks
            rows.append(_row("step", workload, scenario, paired if paired is not None else of_minima,
                             STEP_TARGETS[workload].get(scenario), seconds=rec.median, ratio_of_minima=of_minima,
                             hooks_fraction=hooks))
        if "rigl" in figures and "rigl-update" in figures:
            interval = steps["rigl-update"].values["update_interval"]

            def amortise(i):
                a, b = figures["rigl"][i], figures["rigl-update"][i]
                return None if a is None or b is None else ((interval - 1) * a + b) / interval

            amortised = amortise(0) if figures["rigl"][0] is not None else amortise(1)
            steps["rigl-update"].extra_info["rigl_amortised_ratio_vs_dense"] = amortised
            rows.append(_row("step", workload, f"rigl-amortised (dT={interval})", amortised,
                             STEP_TARGETS[workload].get("rigl-amortised"), ratio_of_minima=amortise(1),
                             hooks_fraction=amortise(2)))
        for scenario in SCENARIOS:
            rec = RESULTS.get(("meter", workload, scenario))
            if rec is None:
                continue
            fraction = rec.min / ref.min if ref else None
            rec.extra_info["fraction_of_dense_step"] = fraction
            in_step = None
            stepped = steps.get(scenario)
            if stepped is not None and stepped.values.get("meter_in_step_median") is not None:
                dense = stepped.reference_median or (ref.median if ref else None)
                in_step = stepped.values["meter_in_step_median"] / dense if dense else None
            rec.extra_info["in_step_fraction_of_dense_step"] = in_step
            rows.append(_row("meter", workload, scenario, fraction, METER_TARGET, kind="fraction", seconds=rec.min,
                             in_step_fraction=in_step))
        data = RESULTS.get(("data", workload, "loader"))
        if data is not None:
            per_batch = data.values["seconds_per_batch"]
            fraction = per_batch / ref.min if ref else None
            data.extra_info["batch_time_vs_dense_step"] = fraction
            rows.append(_row("data", workload, "loader batch / dense step", fraction, kind="ratio",
                             seconds=per_batch, images_per_s=data.values["images_per_s"],
                             step_images_per_s=WORKLOADS[workload].batch / ref.min if ref else None,
                             source=data.values["source"]))
    kth, topk = RESULTS.get(("topk", "resnet50", "kthvalue")), RESULTS.get(("topk", "resnet50", "global"))
    if topk is not None:
        ratio = topk.min / kth.min if kth else None
        topk.extra_info["ratio_vs_kthvalue"] = ratio
        rows.append(_row("topk", "resnet50", "global top-k / one kthvalue", ratio, TOPK_TARGET,
                         seconds=topk.min, kthvalue_seconds=kth.min if kth else None,
                         elements=topk.values["elements"]))
        full = topk.values.get("full_size_fp32_buffers")
        if full is not None:
            rows.append(_row("topk", "resnet50", "global top-k full-size fp32 temporaries", full, TOPK_MEMORY_TARGET,
                             kind="buffers", peak_buffers=topk.values.get("extra_fp32_buffers"),
                             kthvalue_buffers=kth.values.get("extra_fp32_buffers") if kth else None))
    return rows


def _format(row: dict) -> str:
    value = row["value"]
    if value is None:
        return "n/a (no reference measured)"
    if row["kind"] == "fraction":
        return f"{100 * value:.4f}%"
    if row["kind"] == "buffers":
        return f"{value:g}"
    return f"{value:.3f}x"


def _target(row: dict) -> str:
    target = row["target"]
    if target is None:
        return "-"
    text = f"<= {100 * target:g}%" if row["kind"] == "fraction" else f"<= {target:g}"
    return f"{text} ({'met' if row['met'] else 'MISSED'})" if row["met"] is not None else text


def markdown_table(rows: list[dict]) -> str:
    """The ratio table, in Markdown (for the README's performance section)."""
    lines = ["| workload | measured | ratio | ratio of minima | harness (hooks+meter) | target |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        what = row["what"]
        if row["group"] == "meter":
            what = f"FLOP meter per step ({what})"
        elif row["group"] == "step":
            what = f"step: {what}" + (f" ({row['seconds'] * 1e3:.1f} ms)" if row["what"] == REFERENCE else "")
        elif row["group"] == "data":
            what = (f"{what}: {row['images_per_s']:,.0f} img/s vs step {row['step_images_per_s'] or 0:,.0f} img/s"
                    f" ({row['source']})")
        elif row["group"] == "topk" and row["kind"] == "buffers":
            kth = row.get("kthvalue_buffers")
            what = (f"{what} (peak memory beyond weights and masks: {row['peak_buffers']:.2f} fp32 buffers"
                    + (f"; one kthvalue alone: {kth:.2f}" if kth is not None else "") + ")")
        elif row["group"] == "topk":
            what = f"{what} ({row['elements'] / 1e6:.1f}M weights, {row['seconds'] * 1e3:.0f} ms)"
        hooks = row.get("hooks_fraction")
        hooks_text = f"{100 * hooks:.2f}% of a dense step" if hooks is not None else "-"
        if row.get("in_step_fraction") is not None:
            hooks_text = f"inside real steps (cold caches): {100 * row['in_step_fraction']:.4f}%"
        minima = row.get("ratio_of_minima")
        minima_text = f"{minima:.3f}x" if minima is not None else "-"
        workload = WORKLOADS[row["workload"]].label if row["workload"] in WORKLOADS else row["workload"]
        lines.append(f"| {workload} | {what} | {_format(row)} | {minima_text} | {hooks_text} | {_target(row)} |")
    return "\n".join(lines)
