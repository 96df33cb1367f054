"""Training throughput of every paper suite's model under each method's own recipe, on one GPU.

    python benchmarks/gpu_suites.py OUT_DIR [--smoke] [--steps 200] [--warmup 20]
                                    [--suites ...] [--methods ...] [--sparsity 0.9]
                                    [--no-bench-gpu] [--time-budget 450]

One prepared script for a GPU session (about 6 minutes on one H100/H200, under 8):

1. ``nox -s bench_gpu -- --json OUT_DIR/bench_gpu.json`` in a subprocess (ResNet50, every
   registered method, the scenarios of ``benchmarks/gpu_bench.py``). The session runs on this
   interpreter's environment (``ACDC_BENCH_VENV``); where nox is missing, or this environment's
   torch is not the noxfile's pin (the session would reinstall torch), or the session fails, the
   command it runs, ``python benchmarks/gpu_bench.py --json ...``, runs directly instead, and
   the JSON says which ran and why.
2. For each paper suite (``imagenet-resnet50``, ``imagenet-mobilenetv1``, ``cifar100-wrn28-10``)
   and each method (``dense``, ``acdc``, ``gmp``, ``rigl``, ``str``): the run config
   ``acdc-bench run`` would train (budget paper: the method's own recipe, i.e. its batch size,
   AMP, optimizer, init and label smoothing; the suite's ``channels_last``), the real model,
   synthetic device tensors of the real input shape, ``--warmup`` untimed and ``--steps`` timed
   steps through :func:`acdc_bench.api.sparsify` and :func:`acdc_bench.run.loop.train_step`,
   at a representative point of the method's schedule:

   - ``dense``: epoch 0; ``str``: from the start of training;
   - ``acdc``: the first compressed epoch, after its one-shot pruning;
   - ``gmp``: after the schedule's middle mask update (the steps between updates);
   - ``rigl``: steps between updates in the middle of its update window, plus a few update
     steps (drop/grow on the dense gradient, no optimizer step) timed alone; images/s is
     amortised over its interval of ``update_interval`` steps, one of them an update.
3. ``OUT_DIR/gpu_suites.json`` and ``OUT_DIR/gpu_suites.md``: the GPU's name, images/s, ms/step,
   method/dense ratio within each suite, metered training FLOPs per image (and its ratio to
   dense), peak memory; the bench_gpu table beside them; and ``checks``: RigL and AC/DC on a small
   MLP sparsified on the CPU, then moved to the device, train with their masks following it.

A cell that fails is reported under ``skipped`` (with its error) and the others still run;
past ``--time-budget`` seconds the remaining cells are skipped. Exit status 0 when every cell
ran. ``--smoke``: the CPU, batch 2, 32x32 inputs for the ImageNet models, 1 warm-up and 2 timed
steps (RigL: 1 update step), and bench_gpu as ``python benchmarks/gpu_bench.py --smoke --methods
dense --steps 1 --warmup 0`` (no nox): every path in a CI-sized run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_bench import Bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("imagenet-resnet50", "imagenet-mobilenetv1", "cifar100-wrn28-10")
METHODS = ("dense", "acdc", "gmp", "rigl", "str")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- one (suite, method) cell


class Cell:
    """One method attached to a fresh model of the suite, set up as ``train()`` sets it up."""

    def __init__(self, suite_name: str, method: str, args, device: torch.device):
        from acdc_bench.config import recipe
        from acdc_bench.api import sparsify
        from acdc_bench.config import load_suite, run_config
        from acdc_bench.data import DATASETS
        from acdc_bench.models import build_model

        self.config = config = run_config(load_suite(suite_name), method, args.sparsity, seed=0)
        dataset = DATASETS[config.dataset]
        self.device = device
        self.batch = 2 if args.smoke else config.batch_size
        shape = tuple(dataset.input_shape)
        if args.smoke and shape[-1] > 32:
            shape = (shape[0], 32, 32)
        self.shape = shape
        torch.manual_seed(0)
        model = recipe.initialize(build_model(config.model, dataset.num_classes), config.init).to(device)
        self.channels_last = config.channels_last and device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # The schedule of the real run: the dataset's steps per epoch at the recipe's batch size.
        self.steps_per_epoch = math.ceil(dataset.train_size / config.batch_size)
        self.sparsifier = sparsify(model, method, sparsity=config.sparsity, epochs=config.epochs,
                                   steps_per_epoch=self.steps_per_epoch, batch_size=self.batch, input_shape=shape,
                                   **dataclasses.asdict(config.method_config))
        self.method = self.sparsifier.method
        self.optimizer = self.sparsifier.wrap(recipe.build_optimizer(model, config.optimizer))
        self.amp = config.amp if device.type == "cuda" else "none"
        self.amp_dtype = AMP_DTYPES.get(self.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.model = model
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(self.batch, *shape, generator=generator).to(device)
        self.targets = torch.randint(0, dataset.num_classes, (self.batch,), generator=generator).to(device)

    # The schedule positions exactly as the GPU throughput benchmark takes them (same attributes).
    start_epoch = Bench.start_epoch
    is_update = Bench.is_update
    steps_from = Bench.steps_from

    def run(self, steps: list[int]) -> None:
        from acdc_bench.run.loop import train_step

        for step in steps:
            self.sparsifier.seek(step)
            train_step(self.model, self.sparsifier, self.optimizer, self.scaler, self.criterion, self.inputs,
                       self.targets, self.batch, self.amp_dtype, self.channels_last)

    def timed(self, steps: list[int]) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        self.run(steps)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started


def _first_compressed_epoch(method) -> int:
    for epoch in range(1, method.epochs):
        if method.phase(epoch) == "sparse" and method.phase(epoch - 1) == "dense":
            return epoch
    raise RuntimeError(f"{method.name}: no compressed phase in its schedule")


def measure(suite_name: str, method_name: str, args, device: torch.device) -> dict:
    """images/s of one method on one suite's model at a representative point of its schedule."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cell = Cell(suite_name, method_name, args, device)
    method, spe = cell.method, cell.steps_per_epoch
    extra: dict = {}
    scenario = "steady"
    if method_name == "acdc":
        epoch = _first_compressed_epoch(method)
        cell.start_epoch(epoch)  # the one-shot magnitude pruning
        scenario, extra["epoch"] = "compressed phase", epoch
        first = epoch * spe
    elif method_name == "gmp":
        updates = method.schedule.change_steps()
        update = updates[len(updates) // 2]
        cell.start_epoch(update // spe)
        cell.run([update])  # the mask update
        scenario, extra["after_update_step"] = "between updates", update
        extra["sparsity_in_force"] = method.schedule.in_force(update).sparsity
        first = update + 1
    elif method_name == "rigl":
        interval = int(method.config.update_interval)
        first_update = max(interval, (method.end_step // 2) // interval * interval)
        cell.start_epoch(first_update // spe)
        scenario, extra["update_interval"] = "amortised over its update interval", interval
        first = first_update + 1
    else:
        cell.start_epoch(0)
        first = 0
    warm = cell.steps_from(first, args.warmup, skip_updates=True)
    timed = cell.steps_from(warm[-1] + 1 if warm else first, args.steps, skip_updates=True)
    cell.run(warm)
    seconds = cell.timed(timed)
    per_step = seconds / len(timed)
    if method_name == "rigl":
        updates = [u for u in (first_update + k * interval for k in range(1 if args.smoke else 3)) if cell.is_update(u)]
        if not updates:
            raise RuntimeError(f"rigl: no update step at {first_update} (past T_end?)")
        update_s = sum(cell.timed([u]) for u in updates) / len(updates)
        extra.update(between_updates_images_per_s=cell.batch / per_step, update_step_ms=1000 * update_s,
                     updates_timed=len(updates))
        per_step = ((interval - 1) * per_step + update_s) / interval
    meter = cell.sparsifier.meter
    row = {
        "suite": suite_name, "model": cell.config.model, "method": method_name, "scenario": scenario,
        "batch": cell.batch, "input_shape": list(cell.shape), "amp": cell.amp, "channels_last": cell.channels_last,
        "recipe": cell.config.recipe_source, "images_per_s": cell.batch / per_step,
        "ms_per_step": 1000 * per_step, "steps_timed": len(timed), "warmup_steps": len(warm),
        "training_flops_per_image": meter.total / max(1, meter.examples), "extra": extra,
    }
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del cell
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- nox -s bench_gpu


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


def _nox_command() -> list[str] | None:
    if importlib.util.find_spec("nox") is not None:
        return [sys.executable, "-m", "nox"]
    found = shutil.which("nox")
    return [found] if found else None


def _torch_matches_noxfile() -> tuple[bool, str]:
    pinned = re.search(r'"torch":\s*"([^"]+)"', (ROOT / "noxfile.py").read_text())
    ours = torch.__version__.split("+")[0]
    if pinned and pinned.group(1) != ours:
        return False, f"this environment has torch {ours}, the noxfile pins {pinned.group(1)} (the session would reinstall torch)"
    return True, ""


def run_bench_gpu(out: Path, args, seconds_left: float) -> dict:
    """``nox -s bench_gpu`` (or, where it cannot run, the gpu_bench command it runs) into OUT/bench_gpu.json."""
    json_path = out / "bench_gpu.json"
    direct = [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--json", str(json_path)]
    attempts: list[tuple[str, list[str]]] = []
    notes = []
    if args.smoke:
        attempts.append(("python benchmarks/gpu_bench.py --smoke (smoke: no nox)",
                         direct + ["--smoke", "--methods", "dense", "--steps", "1", "--warmup", "0"]))
    else:
        nox = _nox_command()
        matches, why = _torch_matches_noxfile()
        if nox is None:
            notes.append("nox is not installed")
        elif not matches:
            notes.append(why)
        else:
            attempts.append(("nox -s bench_gpu", nox + ["-f", str(ROOT / "noxfile.py"), "-s", "bench_gpu", "--",
                                                        "--json", str(json_path)]))
        attempts.append(("python benchmarks/gpu_bench.py", direct))
    env = dict(os.environ, ACDC_BENCH_VENV=sys.prefix, PYTHONUNBUFFERED="1")
    # The session's set-up installs the Fashion-MNIST Debian package when the data are missing and it
    # runs as root; the benchmark needs no data: a data root keeps it from touching the machine.
    env.setdefault("ACDC_BENCH_DATA", str(out))
    report = {"notes": notes, "attempts": []}
    for label, command in attempts:
        started = time.perf_counter()
        timeout = max(30.0, min(args.bench_gpu_timeout, seconds_left - (time.perf_counter() - started)))
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as error:
            returncode = None
            output = ((error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes)
                      else (error.stdout or "")) + f"\n(timed out after {timeout:.0f} s)"
        seconds = time.perf_counter() - started
        report["attempts"].append({"command": label, "argv": command, "returncode": returncode,
                                   "seconds": seconds, "output_tail": _tail(output)})
        seconds_left -= seconds
        if returncode == 0 and json_path.exists():
            report.update(command=label, returncode=0, seconds=seconds, json=str(json_path),
                          results=json.loads(json_path.read_text()).get("results", []))
            return report
    report.update(command=attempts[-1][0] if attempts else None, returncode=report["attempts"][-1]["returncode"]
                  if report["attempts"] else None, results=[])
    return report


# --------------------------------------------------------------------------- report


def moved_after_sparsify(method: str, device: torch.device) -> dict:
    """A check the CPU cannot make: a small MLP sparsified on the CPU, then moved with ``model.to(device)``,
    trains 12 steps there; its masks must have followed it and every weight off its mask be zero."""
    from torch import nn

    from acdc_bench import sparsify

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    sparsifier = sparsify(model, method, sparsity=0.9, epochs=3, steps_per_epoch=4, batch_size=32,
                          **({"update_interval": 2} if method == "rigl" else {"schedule_epochs": 3, "warmup_epochs": 0,
                                                                               "phase_epochs": 1,
                                                                               "final_dense_epochs": 0,
                                                                               "final_sparse_epochs": 1}))
    optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    model.to(device)
    try:
        for _ in range(12):
            optimizer.zero_grad()
            inputs = torch.randn(32, 64, device=device)
            nn.functional.cross_entropy(model(inputs), inputs[:, :10].argmax(1)).backward()
            optimizer.step()
    except RuntimeError as error:
        return {"method": method, "passed": False, "error": f"{type(error).__name__}: {error}"}
    masks = sparsifier.method.masks.masks
    on = sorted({mask.device.type for mask in masks})
    masked = all(bool((layer.weight[~mask] == 0).all()) for layer, mask in zip(sparsifier.layers, masks))
    return {"method": method, "passed": on == [device.type] and masked, "masks_on": on, "masked": masked}


def device_info(device: torch.device) -> dict:
    import platform

    info = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "name": platform.processor() or platform.machine() or "cpu"}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(name=properties.name, memory_gib=properties.total_memory / 2**30,
                    capability=f"{properties.major}.{properties.minor}")
    return info


def markdown(report: dict) -> str:
    device = report["device"]
    lines = ["# Paper-suite training throughput", "",
             f"device: {device['name']} ({device['type']}, torch {device['torch']}, CUDA {device['cuda']}); "
             f"{report['warmup']} warm-up + {report['steps']} timed steps per cell, synthetic inputs on the device"
             + ("; SMOKE run (CPU, tiny shapes: the numbers mean nothing)" if report["smoke"] else ""), "",
             "| suite | method | scenario | batch | amp | channels_last | images/s | ms/step | vs dense "
             "| train FLOPs/image vs dense | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ratio = f"{r['ratio_to_dense']:.3f}" if r.get("ratio_to_dense") is not None else "-"
        flops = f"{r['flops_ratio_to_dense']:.3f}" if r.get("flops_ratio_to_dense") is not None else "-"
        memory = f"{r['max_memory_gib']:.1f}" if r.get("max_memory_gib") is not None else "-"
        lines.append(f"| {r['suite']} | {r['method']} | {r['scenario']} | {r['batch']} | {r['amp']} | "
                     f"{r['channels_last']} | {r['images_per_s']:.1f} | {r['ms_per_step']:.2f} | {ratio} | {flops} | "
                     f"{memory} |")
    for entry in report["skipped"]:
        lines.append(f"\nskipped: {entry['suite']} {entry['method']}: {entry['reason']}")
    bench = report["bench_gpu"]
    lines += ["", f"## `nox -s bench_gpu` (ResNet50; ran: {bench.get('command')}, exit {bench.get('returncode')})", ""]
    lines += [f"note: {note}" for note in bench.get("notes", [])]
    if bench.get("results"):
        lines += ["| scenario | images/s | ms/step | vs dense |", "|---|---|---|---|"]
        for r in bench["results"]:
            ratio = f"{r['ratio_to_dense']:.3f}" if r.get("ratio_to_dense") is not None else "-"
            lines.append(f"| {r['scenario']} | {r['images_per_s']:.1f} | {r['ms_per_step']:.2f} | {ratio} |")
    else:
        lines.append("no results (see bench_gpu.attempts in gpu_suites.json)")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_suites.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for gpu_suites.json, gpu_suites.md and bench_gpu.json")
    parser.add_argument("--smoke", action="store_true", help="CPU, batch 2, tiny shapes, 1 warm-up + 2 timed steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per cell (default 200; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20; smoke 1)")
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--no-bench-gpu", action="store_true", help="skip the nox -s bench_gpu subprocess")
    parser.add_argument("--bench-gpu-timeout", type=float, default=240, help="seconds (default 240)")
    parser.add_argument("--time-budget", type=float, default=450,
                        help="seconds for the whole script; cells left when it is spent are skipped (default 450)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from acdc_bench.run.distributed import configure_cuda

    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    args.steps = args.steps or (2 if args.smoke else 200)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 20)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif not args.smoke:
        print("note: no CUDA device; timing on the CPU (--smoke for a quick check)", file=sys.stderr)
    configure_cuda(device)
    info = device_info(device)
    print(f"device {info['name']}; torch {info['torch']}", flush=True)
    bench = {"command": None, "returncode": None, "notes": ["--no-bench-gpu"], "results": []}
    if not args.no_bench_gpu:
        print("nox -s bench_gpu ...", flush=True)
        bench = run_bench_gpu(out, args, args.time_budget)
        print(f"  {bench['command']}: exit {bench['returncode']}", flush=True)
    threads = torch.get_num_threads()
    if args.smoke:
        torch.set_num_threads(1)  # tiny steps on a busy CI machine: one thread (restored below)
    results, skipped = [], []
    try:
        for suite in args.suites:
            for method in args.methods:
                if time.perf_counter() - started > args.time_budget:
                    skipped.append({"suite": suite, "method": method, "reason": f"time budget {args.time_budget:.0f} s spent"})
                    continue
                try:
                    row = measure(suite, method, args, device)
                except Exception as error:  # noqa: BLE001 - one failing cell must not hide the others
                    import traceback

                    traceback.print_exc()
                    skipped.append({"suite": suite, "method": method, "reason": f"{type(error).__name__}: {error}"})
                    if device.type == "cuda":
                        gc.collect()
                        torch.cuda.empty_cache()
                    continue
                results.append(row)
                print(f"  {suite} {method}: {row['images_per_s']:.1f} images/s", flush=True)
    finally:
        torch.set_num_threads(threads)
    checks = [moved_after_sparsify(method, device) for method in ("rigl", "acdc")]
    print(f"  masks follow a model moved after sparsify: {checks}", flush=True)
    for row in results:
        dense = next((r for r in results if r["suite"] == row["suite"] and r["method"] == "dense"), None)
        row["ratio_to_dense"] = row["images_per_s"] / dense["images_per_s"] if dense else None
        row["flops_ratio_to_dense"] = (row["training_flops_per_image"] / dense["training_flops_per_image"]
                                       if dense else None)
    report = {"device": info, "smoke": args.smoke, "steps": args.steps, "warmup": args.warmup,
              "sparsity": args.sparsity, "seconds": time.perf_counter() - started, "results": results,
              "skipped": skipped, "bench_gpu": bench, "checks": checks}
    (out / "gpu_suites.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_suites.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'gpu_suites.json'} and {out / 'gpu_suites.md'} in {report['seconds']:.0f} s")
    passed = all(check["passed"] for check in checks)
    return 0 if results and not skipped and passed and (args.no_bench_gpu or bench.get("returncode") == 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
