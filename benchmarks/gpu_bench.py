"""ResNet50 training throughput (images/s) per sparse-training method, through the training loop's own step.

    python benchmarks/gpu_bench.py [--smoke] [--batch 128] [--steps 30] [--warmup 10]
                                   [--amp bf16|fp16|none] [--channels-last] [--compile]
                                   [--methods dense acdc ...] [--sparsity 0.9] [--json PATH]

Every registered method (``acdc_bench.methods.method_names()``: the built-ins, the
baselines and any plugin) is set up exactly as :func:`acdc_bench.run.loop.train` sets it up
for the ``imagenet-resnet50`` suite (its method options, schedule and optimizer), then
steps are timed through :func:`acdc_bench.run.loop.train_step`, the function the training
loop calls: ``on_step_start``, forward and loss under autocast, backward,
``before_optimizer_step``, the optimizer step, ``after_optimizer_step``, the method's
``step_training_flops`` into a :class:`~acdc_bench.core.flops.TrainingFlopMeter`, and the
loop's on-device loss/accuracy accumulation. Inputs are synthetic tensors already on
the device (no data loading), one GPU, no DDP.

Scenarios:

- ``dense``; ``acdc (compressed)``: after the one-shot pruning that starts a compressed
  phase (masks on gradients and weights); ``acdc (decompressed)``: a later dense phase
  (masks all ones, masking off);
- ``gmp (between updates)``: after a mid-schedule mask update, timing only the steps
  between updates (an update comes every few thousand steps);
- ``rigl (amortised)``: whole update intervals, each ``update_interval`` steps of which
  one is a drop/grow update (no optimizer step), so the figure includes the update's
  cost spread over its interval; the steps between updates are also reported;
- ``str`` and any other method: steady steps from the start of training (timed steps
  skip the steps at which a method's schedule changes or moves its masks).

Timing: ``--warmup`` untimed steps first (cuDNN autotuning, ``--compile``'s compilation,
allocator warm-up), ``torch.cuda.synchronize()`` before and after the timed steps.
With CUDA the timed steps run under ``torch.cuda.set_sync_debug_mode("warn")`` and the
number of host syncs they made is reported (``host_syncs``; expected 0 for every
scenario except fp16, whose GradScaler reads its inf check once per step).

``--smoke`` runs on the CPU with batch 2 at 64x64, 1 warm-up and 2 timed steps (RigL's
interval shortened to 2 steps), so CI exercises every code path in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

SUITE = "imagenet-resnet50"


@dataclass
class Scenario:
    label: str
    method: str
    kind: str  # steady | compressed | decompressed | between-updates | amortised


@dataclass
class Result:
    scenario: str
    method: str
    images_per_s: float
    ms_per_step: float
    steps_timed: int
    host_syncs: int | None = None
    ratio_to_dense: float | None = None
    extra: dict = field(default_factory=dict)


def scenarios_for(names: list[str]) -> list[Scenario]:
    """The scenarios of the registered ``names``, dense first."""
    ordered = sorted(names, key=lambda n: (n != "dense", n))
    out = []
    for name in ordered:
        if name == "acdc":
            out += [Scenario("acdc (compressed)", name, "compressed"), Scenario("acdc (decompressed)", name, "decompressed")]
        elif name == "gmp":
            out.append(Scenario("gmp (between updates)", name, "between-updates"))
        elif name == "rigl":
            out.append(Scenario("rigl (amortised)", name, "amortised"))
        else:
            out.append(Scenario(name, name, "steady"))
    return out


class Bench:
    """One method attached to a fresh ResNet50, set up as ``train()`` does, with synthetic data."""

    def __init__(self, scenario: Scenario, args, device: torch.device):
        from acdc_bench.config import recipe
        from acdc_bench.api import sparsify
        from acdc_bench.config import load_suite, run_config
        from acdc_bench.data import DATASETS
        from acdc_bench.models import build_model

        suite = load_suite(SUITE)
        self.config = run_config(suite, scenario.method, args.sparsity, seed=0)
        method_options = dataclasses.asdict(self.config.method_config)
        if args.smoke and scenario.method == "rigl":
            method_options["update_interval"] = 2  # an interval that fits a 2-step smoke run
            method_options["update_interval_examples"] = None
        self.device = device
        self.batch = args.batch
        self.resolution = args.resolution
        torch.manual_seed(0)
        model = build_model(self.config.model, 1000).to(device)
        self.channels_last = bool(args.channels_last) and device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # The schedule of the suite's run: ImageNet's steps per epoch at the suite's global batch.
        self.steps_per_epoch = math.ceil(DATASETS["imagenet"].train_size / self.config.batch_size)
        self.sparsifier = sparsify(model, scenario.method, sparsity=self.config.sparsity,
                                   epochs=self.config.epochs, steps_per_epoch=self.steps_per_epoch,
                                   batch_size=args.batch, input_shape=(3, args.resolution, args.resolution),
                                   **method_options)
        self.method = self.sparsifier.method
        self.optimizer = self.sparsifier.wrap(recipe.build_optimizer(model, self.config.optimizer))
        amp = args.amp if device.type == "cuda" else "none"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)
        self.meter = self.sparsifier.meter
        self.model = model
        self.train_model = torch.compile(model) if args.compile else model
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=generator).to(device)
        self.targets = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)

    # ------------------------------------------------------------------ schedule positions
    def start_epoch(self, epoch: int) -> None:
        """What the training loop does at an epoch start: the lr, then the method's hook."""
        lr = self.config.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.method.on_epoch_start(epoch)
        self.model.train()

    def is_update(self, step: int) -> bool:
        """Whether the method's schedule changes or moves its masks at ``step`` (an estimated schedule,
        STR's, changes nothing)."""
        schedule = self.method.schedule
        if schedule is None or schedule.estimated:
            return False
        return schedule.is_update(step) or schedule.change_at(step) is not None

    def steps_from(self, start: int, count: int, skip_updates: bool) -> list[int]:
        steps, step = [], start
        while len(steps) < count:
            if not (skip_updates and self.is_update(step)):
                steps.append(step)
            step += 1
        return steps

    # ------------------------------------------------------------------ stepping and timing
    def run(self, steps: list[int]) -> None:
        from acdc_bench.run.loop import train_step

        for step in steps:
            self.sparsifier.seek(step)
            loss, outputs = train_step(self.train_model, self.sparsifier, self.optimizer, self.scaler, self.criterion,
                                       self.inputs, self.targets, self.batch, self.amp_dtype, self.channels_last)
            self.loss_sum += loss.double() * self.targets.shape[0]  # as the loop accumulates, on the device
            self.correct += (outputs.argmax(1) == self.targets).sum()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, steps: list[int]) -> tuple[float, int | None]:
        """Seconds for ``steps`` (synchronized before and after) and the host syncs they made (CUDA)."""
        self.synchronize()
        syncs = None
        started = time.perf_counter()
        if self.device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    self.run(steps)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
        else:
            self.run(steps)
        self.synchronize()
        return time.perf_counter() - started, syncs


def _epoch_of_phase_change(method, epochs: int, phase: str, previous: str, after: int = 0) -> int | None:
    for epoch in range(max(1, after + 1), epochs):
        if method.phase(epoch) == phase and method.phase(epoch - 1) == previous:
            return epoch
    return None


def measure(scenario: Scenario, args, device: torch.device) -> Result:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bench = Bench(scenario, args, device)
    method, spe = bench.method, bench.steps_per_epoch
    epochs = method.epochs
    extra: dict = {}
    if scenario.kind in ("compressed", "decompressed"):
        sparse = _epoch_of_phase_change(method, epochs, "sparse", "dense")
        if sparse is None:
            raise RuntimeError(f"{scenario.method}: no compressed phase in its schedule")
        bench.start_epoch(sparse)  # the one-shot global magnitude pruning
        epoch = sparse
        if scenario.kind == "decompressed":
            epoch = _epoch_of_phase_change(method, epochs, "dense", "sparse", after=sparse)
            if epoch is None:
                raise RuntimeError(f"{scenario.method}: no decompressed phase after epoch {sparse}")
            bench.start_epoch(epoch)  # masks to ones, momentum zeroed
        extra["epoch"] = epoch
        first = epoch * spe
        warm = bench.steps_from(first, args.warmup, skip_updates=False)
        timed = bench.steps_from(warm[-1] + 1 if warm else first, args.steps, skip_updates=False)
    elif scenario.kind == "between-updates":
        updates = method.schedule.change_steps()
        update = updates[len(updates) // 2]
        bench.start_epoch(update // spe)
        extra["after_update_step"] = update
        extra["sparsity_in_force"] = method.schedule.in_force(update).sparsity
        warm = [update] + bench.steps_from(update + 1, max(0, args.warmup - 1), skip_updates=True)
        timed = bench.steps_from(warm[-1] + 1, args.steps, skip_updates=True)
    elif scenario.kind == "amortised":
        interval = int(method.config.update_interval)
        first_update = max(interval, (method.end_step // 2) // interval * interval)
        bench.start_epoch(first_update // spe)
        # Warm up through an update too (its kernels and buffers) unless the warm-up is tiny (smoke:
        # a RigL update sorts every layer, seconds on a CPU).
        warm = [first_update] if args.warmup > 1 else []
        warm += bench.steps_from(first_update + 1, args.warmup - len(warm), skip_updates=True)
        between = bench.steps_from((warm[-1] if warm else first_update) + 1, args.steps, skip_updates=True)
        bench.run(warm)
        seconds, _ = bench.timed(between)
        extra["between_updates_images_per_s"] = args.batch * len(between) / seconds
        # Whole intervals, each starting with its update step: the amortised cost.
        next_update = (between[-1] // interval + 1) * interval
        if not bench.is_update(next_update):
            raise RuntimeError(f"rigl: step {next_update} is not an update step (past T_end?)")
        intervals = max(1, round(args.steps / interval))
        warm, timed = [], list(range(next_update, next_update + intervals * interval))
        extra["update_interval"] = interval
        extra["updates_timed"] = sum(bench.is_update(s) for s in timed)
    else:
        bench.start_epoch(0)
        warm = bench.steps_from(0, args.warmup, skip_updates=True)
        timed = bench.steps_from(warm[-1] + 1 if warm else 0, args.steps, skip_updates=True)
    bench.run(warm)
    seconds, syncs = bench.timed(timed)
    if not math.isfinite(float(bench.loss_sum)):
        extra["warning"] = "non-finite loss"
    if scenario.kind == "amortised":
        per_normal = args.batch / extra["between_updates_images_per_s"]
        extra["update_step_ms_estimate"] = 1000 * (seconds - (len(timed) - extra["updates_timed"]) * per_normal) / max(1, extra["updates_timed"])
    # FLOPs the meter counted per image over every step run here (warm-up included): the accounting
    # of the same steps whose speed is reported
    extra["training_flops_per_image"] = bench.meter.total / max(1, bench.meter.examples)
    if device.type == "cuda":
        extra["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result = Result(scenario.label, scenario.method, args.batch * len(timed) / seconds,
                    1000 * seconds / len(timed), len(timed), syncs, extra=extra)
    del bench
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _measure_all(names: list[str], args, device: torch.device, skipped: list[dict]) -> tuple[list[Result], list[dict]]:
    results: list[Result] = []
    for scenario in scenarios_for(names):
        try:
            result = measure(scenario, args, device)
        except Exception as error:  # noqa: BLE001 - one broken method must not hide the others' numbers
            traceback.print_exc()
            skipped.append({"method": scenario.method, "scenario": scenario.label, "reason": f"{type(error).__name__}: {error}"})
            if device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
            continue
        results.append(result)
        print(f"  {result.scenario}: {result.images_per_s:.1f} images/s", flush=True)
    return results, skipped


def format_table(results: list[Result]) -> str:
    lines = [f"{'scenario':<24} {'images/s':>10} {'ms/step':>9} {'vs dense':>9} {'host syncs':>10}"]
    for r in results:
        ratio = f"{r.ratio_to_dense:.3f}" if r.ratio_to_dense is not None else "-"
        syncs = "-" if r.host_syncs is None else str(r.host_syncs)
        lines.append(f"{r.scenario:<24} {r.images_per_s:>10.1f} {r.ms_per_step:>9.2f} {ratio:>9} {syncs:>10}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_bench.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, batch 2 at 64x64, 1 warm-up and 2 timed steps")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 128; smoke 2)")
    parser.add_argument("--resolution", type=int, default=None, help="input height and width (default 224; smoke 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per scenario (default 30; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; smoke 1)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="bf16",
                        help="autocast dtype on CUDA (the ImageNet suites train with fp16, whose GradScaler "
                             "reads its inf check on the host every step)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    parser.add_argument("--methods", nargs="+", default=None, help="registered methods to time (default: all)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--device", default=None, help="default: cuda when available (smoke: cpu)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    from acdc_bench.methods import method_names
    from acdc_bench.run.distributed import configure_cuda, versions

    args = build_parser().parse_args(argv)
    smoke = args.smoke
    args.batch = args.batch or (2 if smoke else 128)
    args.resolution = args.resolution or (64 if smoke else 224)
    args.steps = args.steps or (2 if smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 10)
    device = torch.device(args.device or ("cpu" if smoke or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif not smoke:
        print("note: no CUDA device; timing on the CPU (use --smoke for a quick check)", file=sys.stderr)
    configure_cuda(device)

    registered = method_names()
    wanted = args.methods or registered
    unknown = [m for m in wanted if m not in registered]
    skipped = [{"method": m, "reason": "not registered"} for m in unknown]
    for entry in skipped:
        print(f"skipping {entry['method']}: {entry['reason']} (registered: {', '.join(registered)})", file=sys.stderr)
    names = [m for m in wanted if m in registered]
    if "dense" not in names:
        names.append("dense")  # the reference of every ratio

    info = versions()
    print(f"ResNet50 training throughput, batch {args.batch} at {args.resolution}x{args.resolution}, "
          f"amp {args.amp if device.type == 'cuda' else 'none'}, channels_last {args.channels_last}, "
          f"compile {args.compile}, {args.warmup} warm-up + {args.steps} timed steps; "
          f"device {info['device'] if device.type == 'cuda' else 'cpu'}, torch {info['torch']}", flush=True)
    threads = torch.get_num_threads()
    if smoke:
        # Smoke timings mean nothing; a 2-thread OpenMP pool on a busy 2-core CI machine makes
        # these tiny steps ten times slower, so one thread (restored afterwards).
        torch.set_num_threads(1)
    try:
        results, skipped = _measure_all(names, args, device, skipped)
    finally:
        torch.set_num_threads(threads)
    dense = next((r for r in results if r.method == "dense"), None)

    for r in results:
        r.ratio_to_dense = r.images_per_s / dense.images_per_s if dense else None
    print(format_table(results))
    if args.json:
        report = {
            "model": "resnet50",
            "suite": SUITE,
            "device": info["device"] if device.type == "cuda" else "cpu",
            "versions": info,
            "platform": platform.platform(),
            "batch": args.batch,
            "resolution": args.resolution,
            "amp": args.amp if device.type == "cuda" else "none",
            "channels_last": bool(args.channels_last),
            "compile": bool(args.compile),
            "warmup_steps": args.warmup,
            "steps": args.steps,
            "sparsity": args.sparsity,
            "smoke": smoke,
            "results": [dataclasses.asdict(r) for r in results],
            "skipped": skipped,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return 0 if results and not any("scenario" in s for s in skipped) else 1


if __name__ == "__main__":
    raise SystemExit(main())
