"""Running a whole suite: which runs, in what order, in this process or as Slurm jobs through submitit.

Runs are ordered so that every budget reference (AC/DC by default) and the dense
baseline finish before the runs whose budget is matched to them. Each run is its
own folder; a finished run is skipped and an interrupted one resumes, whether it
runs here or in a (requeued) cluster job. A matched run of an emergent-cost method
(STR) is a calibration chain (:mod:`acdc_bench.budget.calibrate`): once a run of the chain
finishes, the spec is resolved again and the chain's next run follows, until the
chain is accepted or has run ``budget.calibration.max_runs`` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from acdc_bench.config import Suite
from acdc_bench.config.cells import RunSpec
from acdc_bench.config.run import RunConfig
from acdc_bench.run.store import RunStore, store_at


def plan_runs(suite: Suite, methods=None, sparsities=None, seeds=None, budget=None, cells=None) -> list[list[RunSpec]]:
    """Waves of runs: wave 0 holds the dense runs and the budget references, wave 1 the rest.

    A suite with ``reproduce.variants`` runs its cells (``cells``: only those named); ``methods``
    keeps the cells of those methods (a method without a cell runs plain at the sparsities) and
    ``sparsities`` each cell's listed sparsities among those given. See :mod:`acdc_bench.config.cells`.
    """
    from acdc_bench.config import check_sparsity
    from acdc_bench.methods import get_method

    plan = suite.reproduce
    if plan.get("variants") is not None:
        return _plan_cells(suite, methods, sparsities, seeds, budget, cells)
    if cells:
        raise ValueError(f"--cells: suite {suite.name} has no reproduce.variants (its runs are reproduce.methods)")
    methods = methods or plan.get("methods") or ["dense", "acdc"]
    sparsities = [check_sparsity(s, "--sparsities") for s in (sparsities or plan.get("sparsities") or [0.9])]
    seeds = seeds or plan.get("seeds") or [0]
    budget = budget or suite.budget_mode
    reference = suite.reference
    for method in methods:
        get_method(method)  # a clear error for an unknown name before anything runs
    first, second = [], []
    for seed in seeds:
        if "dense" in methods:
            first.append(RunSpec("dense", 0.0, seed, budget))
        for sparsity in sparsities:
            for method in methods:
                if method == "dense":
                    continue
                wave = first if (method == reference or budget == "paper") else second
                wave.append(RunSpec(method, sparsity, seed, budget))
    return [wave for wave in (first, second) if wave]


def _plan_cells(suite: Suite, methods, sparsities, seeds, budget, names) -> list[list[RunSpec]]:
    """:func:`plan_runs` for a suite with ``reproduce.variants``: one run per cell, sparsity and seed."""
    from acdc_bench.config.cells import suite_cells, variant_length
    from acdc_bench.config import check_sparsity
    from acdc_bench.methods import get_method

    plan = suite.reproduce
    seeds = seeds or plan.get("seeds") or [0]
    budget = budget or suite.budget_mode
    reference = suite.reference
    cells = suite_cells(suite)
    if names:
        unknown = sorted(set(names) - {cell["cell"] for cell in cells})
        if unknown:
            raise ValueError(f"--cells: unknown cell(s) {unknown}; suite {suite.name} has: "
                             f"{', '.join(cell['cell'] for cell in cells)}")
        cells = [cell for cell in cells if cell["cell"] in names]
    given = [check_sparsity(s, "--sparsities") for s in sparsities] if sparsities else None
    if methods:
        for method in methods:
            get_method(method)  # a clear error for an unknown name before anything runs
        plain = [m for m in methods if m not in {cell["method"] for cell in cells}]
        cells = [cell for cell in cells if cell["method"] in methods]
        default = given or [check_sparsity(s, "--sparsities") for s in plan.get("sparsities") or [0.9]]
        cells += [{"cell": m, "method": m, "options": {}, "recipe": {}, "variant": None, "tag": "",
                   "sparsities": [0.0] if m == "dense" else default} for m in plain]
    if given is not None:
        cells = [dict(cell, sparsities=[s for s in cell["sparsities"] if any(abs(s - g) < 1e-9 for g in given)])
                 if cell["method"] != "dense" else cell for cell in cells]
        if not any(cell["sparsities"] for cell in cells if cell["method"] != "dense"):
            raise ValueError(f"--sparsities {' '.join(f'{g:g}' for g in given)}: no selected cell of suite "
                             f"{suite.name} runs at these; add a cell to reproduce.variants or name a method "
                             f"without a cell in --methods")
    if budget == "matched":  # every method gets the reference's FLOPs: a length variant repeats 1x
        cells = [cell for cell in cells if variant_length(cell["tag"]) == 1.0]
    first, second = [], []
    for seed in seeds:
        for cell in cells:
            for sparsity in cell["sparsities"]:
                spec = RunSpec(cell["method"], 0.0 if cell["method"] == "dense" else sparsity, seed, budget,
                               cell["cell"], cell["variant"], cell["options"] or None, cell["recipe"] or None)
                wave = first if (cell["method"] in ("dense", reference) or budget == "paper") else second
                wave.append(spec)
    first.sort(key=lambda spec: spec.method != "dense")  # dense first (stable: cell order otherwise)
    return [wave for wave in (first, second) if wave]


def _config(suite: Suite, spec: RunSpec, out: Path) -> "RunConfig":
    """The resolved config of ``spec`` (its cell's options and variant tag; its budget)."""
    from acdc_bench.budget.matching import spec_config

    return spec_config(suite, spec, store_at(out))


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _chain_note(config: "RunConfig") -> str:
    """' (budget calibration run i of at most n: ...)' for a run of a calibration chain, else ''."""
    from acdc_bench.budget.calibrate import describe

    note = describe(config.budget.as_dict(), config.train_steps)
    return f" ({note})" if note else ""


@dataclass(frozen=True)
class Launch:
    """How a suite's runs are launched: the runner, the runs side by side, the data, tracking,
    progress, and a Slurm job's resources (None: the suite's ``resources``, else the default).
    Read once from a command's options by :meth:`from_args`."""

    launcher: str = "local"  # local, slurm or submitit-local
    jobs: int = 1
    data_root: str | None = None
    wandb: bool = False
    progress: bool = True
    status_every: float = 30.0  # seconds between status lines (jobs > 1)
    slurm_partition: str | None = None
    gpus_per_node: int | None = None
    nodes: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    timeout_min: int | None = None

    @classmethod
    def from_args(cls, args) -> "Launch":
        """The options of a parsed command line (``--no-progress`` as ``progress``); those its
        command does not take keep their defaults. ``--jobs auto`` must be resolved first."""
        given = {key: value for key, value in vars(args).items() if value is not None}
        values = {item.name: given[item.name] for item in dataclasses.fields(cls) if item.name in given}
        if "no_progress" in given:
            values["progress"] = not given["no_progress"]
        return cls(**values)


def run_all(suite: Suite, waves: list[list[RunSpec]], out: Path, launch: Launch) -> int:
    """Run every unfinished run of ``waves``; returns how many runs this call trained (a calibration
    chain's further runs included)."""
    if launch.launcher != "local":
        return run_submitit(suite, waves, out, launch)
    if launch.jobs > 1:
        return run_parallel(suite, waves, out, launch)
    return run_local(suite, waves, out, launch)


# --------------------------------------------------------------------------- side by side on one machine


def one_thread_per_run(numerics: str) -> bool:
    """Under portable ``numerics`` a CPU run trains on 1 thread, whatever the machine's cores:
    a reduction split over another number of threads rounds differently, and `reproduce` and
    `verify` must give the shipped record's numbers on a 2-core and on a 64-core machine alike."""
    import torch

    return numerics == "portable" and not torch.cuda.is_available()


def _worker_start(threads: int) -> None:
    import signal

    import torch

    # Ctrl-C reaches every process of the terminal's group: the parent alone answers it, ending the
    # workers (:func:`run_parallel`), instead of each worker printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _run_spec(suite: Suite, config: dict, spec: RunSpec, out: Path, data_root: str | None) -> tuple[dict, int]:
    """In a worker process: one run (``config``: its ``config.yaml`` mapping, as it crosses the
    process boundary), or a calibration chain to its end; the last result and the number of runs
    trained."""
    from acdc_bench.budget.matching import run_chain
    from acdc_bench.run.loop import train

    store, first = store_at(out), RunConfig.from_dict(config)
    result, trained = None, 0
    for config in run_chain(lambda: _config(suite, spec, out), store, first=first):
        result = train(config, out, data_root=data_root, progress=False, log=lambda *_: None)
        trained += 1
    return (result if result is not None else store.result(first.run_id)), trained  # None: finished meanwhile


def _chain_runs(store: RunStore, config: "RunConfig") -> list[str] | None:
    """The started runs of a calibration chain's cell (its later runs have other ids); None if the
    cell is not a chain."""
    from acdc_bench.methods import get_method

    if not (config.budget.mode == "matched" and get_method(config.method).calibration_option):
        return None
    from acdc_bench.config.run import run_id_prefix

    prefix = run_id_prefix(config.method, config.sparsity, config.seed)
    return [run_id for run_id in store.run_ids(prefix) if store.started(run_id)]


def _started(out: Path | RunStore, config: "RunConfig") -> bool:
    store = store_at(out)
    runs = _chain_runs(store, config)
    return bool(runs) if runs is not None else store.started(config.run_id)


def _cell_progress(out: Path | RunStore, config: "RunConfig") -> str:
    """``epoch E/N`` of the cell's run under way: for a calibration chain (its later runs have
    other ids and lengths) the cell's most recently written run folder, named ``run k``."""
    store = store_at(out)
    runs = _chain_runs(store, config)
    if runs is None:
        return f"epoch {store.epochs_done(config.run_id)}/{config.epochs}"
    if not runs:
        return f"epoch 0/{config.epochs}"
    latest = max(runs, key=store.last_write)
    epochs = (store.config(latest) or {}).get("epochs", config.epochs)
    return f"run {len(runs)} epoch {store.epochs_done(latest)}/{epochs}"


def run_parallel(suite: Suite, waves: list[list[RunSpec]], out: Path, launch: Launch) -> int:
    """``--jobs N``: N runs side by side, each in its own process with cores / N threads (1 under
    portable numerics on a CPU: :func:`one_thread_per_run`)
    (``OMP_WAIT_POLICY=PASSIVE``: a spinning OpenMP pool slows the other processes 5-20x).

    Wave by wave (the dense runs and budget references first), each wave's runs longest first
    (planned steps); each run's config is resolved when its wave starts, a calibration chain runs
    to its end in one worker. A run computes
    exactly what it computes alone with the same number of threads. One status line every
    ``--status-every`` seconds (default 30) names what runs and how far each has got.
    """
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    jobs = int(launch.jobs)
    store = store_at(out)
    threads = 1 if one_thread_per_run(suite.numerics) else max(1, (os.cpu_count() or 1) // jobs)
    total = sum(len(wave) for wave in waves)
    environment = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # inherited by the workers, read before their torch starts
    started, done, trained = time.perf_counter(), 0, 0
    print(f"{total} runs of suite {suite.name}: {jobs} side by side, {threads} thread(s) each", flush=True)
    try:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_start,
                                 initargs=(threads,)) as pool, _ends_workers_on_interrupt(pool):
            for wave in waves:
                running = {}
                # Longest first (by planned steps): the short runs fill in beside the long ones,
                # instead of a long run starting last while the other workers sit idle.
                planned = [(spec, _config(suite, spec, out)) for spec in wave]
                planned.sort(key=lambda item: -(_steps(item[1]) or 0))
                for spec, config in planned:
                    if store.finished(config.run_id):
                        done += 1
                        print(f"[{done}/{total}] {config.run_id}: finished already", flush=True)
                        continue
                    future = pool.submit(_run_spec, suite, config.as_dict(), spec, out, launch.data_root)
                    running[future] = (spec, config)
                while running:
                    finished, _ = wait(running, timeout=launch.status_every, return_when=FIRST_COMPLETED)
                    for future in finished:
                        spec, config = running.pop(future)
                        result, runs = future.result()  # a failed run stops the reproduction with its error
                        done, trained = done + 1, trained + runs
                        print(f"[{done}/{total}] {spec.method} sparsity {spec.sparsity:g} seed {spec.seed}: top-1 "
                              f"{result['top1']:.2f}% at sparsity {result['actual_sparsity']:.4f} "
                              f"({format_duration(time.perf_counter() - started)} elapsed)", flush=True)
                    if running and not finished:
                        # A future handed to the pool's call queue already reports running(); a run
                        # has started once its folder holds its config.
                        active = [c for future, (_, c) in running.items()
                                  if future.running() and _started(out, c)]
                        status = ", ".join(f"{c.method} {c.sparsity:g} seed {c.seed} "
                                           f"{_cell_progress(out, c)}" for c in active)
                        print(f"[{done}/{total} done, {format_duration(time.perf_counter() - started)} elapsed] "
                              f"running: {status}; {len(running) - len(active)} queued", flush=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    print(f"all {total} runs of suite {suite.name} finished in {format_duration(time.perf_counter() - started)} -> {out}")
    return trained


@contextlib.contextmanager
def _ends_workers_on_interrupt(pool):
    """On Ctrl-C, end the pool's workers (they ignore SIGINT, :func:`_worker_start`) before the pool
    would wait for their runs to finish; a run ended so resumes from its last finished epoch."""
    try:
        yield
    except KeyboardInterrupt:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise


def _steps(config: "RunConfig") -> int | None:
    """Optimizer steps of a run (None for a dataset whose size the planner does not know)."""
    import math

    from acdc_bench.budget.plan import train_size

    try:
        return config.length.steps(math.ceil(train_size(config) / config.batch_size))
    except KeyError:
        return None


def run_local(suite: Suite, waves: list[list[RunSpec]], out: Path, launch: Launch) -> int:
    """Every run in this process, in order, with overall progress and an estimate of the time left.

    The estimate is the time per optimizer step so far times the steps still to train, from
    each run's planned length (a calibration chain's later runs are not known in advance).
    """
    from acdc_bench.budget.matching import run_chain
    from acdc_bench.run.tracking import Tracker
    from acdc_bench.run.loop import train

    import torch

    if one_thread_per_run(suite.numerics) and torch.get_num_threads() != 1:
        print(f"portable numerics: every run on 1 thread (a run's numbers depend on its thread count; "
              f"--jobs {min(8, os.cpu_count() or 1)} uses the other cores)", flush=True)
        torch.set_num_threads(1)
    specs = [spec for wave in waves for spec in wave]
    store = store_at(out)
    planned = [_config(suite, spec, out) for spec in specs]
    pending = [0 if store.finished(c.run_id) else _steps(c) for c in planned]
    chains = any(c.budget.calibration for c in planned)
    started = time.perf_counter()
    trained_time, trained_steps, trained = 0.0, 0, 0
    for index, spec in enumerate(specs, 1):
        # A matched run is resolved again when it is about to run, so that its budget is its
        # reference's measured FLOPs (``planned`` above, for the time-left estimate, may hold
        # estimates); any other run is what was planned.
        first = planned[index - 1]
        if first.budget.mode == "matched" and not store.finished(first.run_id):
            first = _config(suite, spec, out)
        remaining = len(specs) - index
        if store.finished(first.run_id):
            print(f"[{index}/{len(specs)}] {first.run_id}: finished already")
            continue
        for config in run_chain(lambda: _config(suite, spec, out), store, first=first):
            steps_left = [_steps(config)] + pending[index:]
            eta = ""
            if trained_steps and None not in steps_left:
                eta = f", about {format_duration(trained_time / trained_steps * sum(steps_left))} left"
                eta += " plus any further calibration runs" if chains else ""
            print(f"[{index}/{len(specs)}] {spec.method} sparsity {spec.sparsity:g} seed {spec.seed}{_chain_note(config)} "
                  f"({index - 1} done, {remaining + 1} to go, {format_duration(time.perf_counter() - started)} elapsed{eta})",
                  flush=True)
            run_started = time.perf_counter()
            tracker = Tracker(enabled=launch.wandb or bool(suite.wandb))
            train(config, out, data_root=launch.data_root, progress=launch.progress, tracker=tracker)
            trained_time += time.perf_counter() - run_started
            trained_steps, trained = trained_steps + (_steps(config) or 0), trained + 1
    print(f"all {len(specs)} runs of suite {suite.name} finished in {format_duration(time.perf_counter() - started)} -> {out}")
    return trained


class RunJob:
    """One run as a picklable submitit job; on preemption or timeout it requeues itself and resumes.
    It carries the run as its ``config.yaml`` mapping (:meth:`RunConfig.as_dict`), read back in the
    job once its plugins are loaded."""

    def __init__(self, config: "RunConfig | dict", out: str, data_root: str | None):
        self.config = dict(config) if isinstance(config, dict) else config.as_dict()
        self.out, self.data_root = out, data_root

    def __call__(self) -> dict:
        import os

        from acdc_bench.run.loop import train

        if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            import submitit

            # One task per GPU. Keep CUDA_VISIBLE_DEVICES as Slurm set it: train() picks GPU LOCAL_RANK
            # when the task sees the whole node, GPU 0 when Slurm binds one GPU per task. (export()'s
            # default would hide all but one GPU, and cuda:LOCAL_RANK would not exist for LOCAL_RANK > 0.)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if one_thread_per_run(self.config.get("numerics")):  # as a local run: N cores compute what 1 core does
            import torch

            torch.set_num_threads(1)
        return train(self.config, self.out, data_root=self.data_root, progress=False)

    def checkpoint(self, *args, **kwargs):
        import submitit

        # train() resumes from the run folder's last checkpoint: resubmitting the same job is enough.
        return submitit.helpers.DelayedSubmission(RunJob(self.config, self.out, self.data_root))


def slurm_parameters(suite: Suite, launch: Launch) -> dict:
    """The submitit parameters of one run's Slurm job, from the suite's ``resources`` and the options."""
    resources = dict(suite.resources)

    def option(name: str, default):  # the command line's value, even 0, else the suite's, else the default
        value = getattr(launch, name)  # a field of Launch
        return value if value is not None else resources.get(name, default)

    gpus = int(option("gpus_per_node", 1))
    parameters = dict(
        nodes=option("nodes", 1),
        tasks_per_node=int(option("tasks_per_node", max(1, gpus))),  # one task per GPU; 1 on a CPU partition
        cpus_per_task=int(option("cpus_per_task", 8)),
        timeout_min=option("timeout_min", 1440),
        slurm_signal_delay_s=120,
        name=f"acdc-{suite.name}",
    )
    if gpus > 0:  # a CPU partition gets no GPU request at all (Slurm rejects --gpus-per-node there)
        parameters["gpus_per_node"] = gpus
    if suite.numerics == "portable":
        # Pinned in the job script, before its Python (and torch) starts: a node of another CPU type
        # computes what this machine computes. (submitit-local jobs inherit this process's environment.)
        from acdc_bench.numerics import INDUCTOR_CACHE, INDUCTOR_CACHE_NAME, PORTABLE_ENV

        # the node's own inductor cache for portable processes, unless the job's environment names one
        cache = "${TMPDIR:-/tmp}/" + INDUCTOR_CACHE_NAME.format(user="${USER}")
        parameters["slurm_setup"] = [f"export {key}={value}" for key, value in PORTABLE_ENV.items()] + [
            f'export {INDUCTOR_CACHE}="${{{INDUCTOR_CACHE}:-{cache}}}"']
    if launch.slurm_partition or resources.get("partition"):
        parameters["slurm_partition"] = launch.slurm_partition or resources["partition"]
    return parameters


def _executor(suite: Suite, out: Path, launch: Launch):
    try:
        import submitit
    except ImportError as error:
        raise ValueError("--launcher slurm needs submitit: pip install 'acdc-bench[slurm]'") from error
    folder = out / "submitit" / "%j"
    if launch.launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=launch.timeout_min or 60)
        return executor
    executor = submitit.AutoExecutor(folder=folder)
    parameters = slurm_parameters(suite, launch)
    executor.update_parameters(**parameters)
    return executor


class SlurmError(ValueError):
    """Slurm refused a job or can never start it: a request the cluster cannot meet (a user's input)."""


#: squeue's pending reasons for a job that waits on a request the partition can never meet (not on
#: busy nodes): Slurm keeps such a job pending for ever.
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "ReqNodeNotAvail", "BadConstraints",
                "InvalidQOS", "InvalidAccount", "DependencyNeverSatisfied", "QOSMaxCpuPerJobLimit",
                "QOSMaxGRESPerJob", "QOSMaxNodePerJobLimit")

#: Seconds between two looks at the queue while the jobs of a wave run (a test may shorten it).
POLL_S = 10.0


class JobsFailed(RuntimeError):
    """Jobs of a wave failed (their runs raised, or Slurm killed them); the message names each job's logs."""


def _left_a_result(job, grace_s: float = 30.0) -> bool:
    """Whether every task of a job that has left Slurm's queue wrote its result pickle (waiting up to
    ``grace_s`` for a shared file system to show it). A job cancelled, killed or out of memory did not."""
    tasks = [job] if job.num_tasks == 1 else [job.task(k) for k in range(job.num_tasks)]
    deadline = time.monotonic() + grace_s
    while not all(task.paths.result_pickle.exists() for task in tasks):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _request(parameters: dict) -> str:
    """What a job asks of Slurm, in the words of the options that change it."""
    partition = parameters.get("slurm_partition")
    return (f"--nodes {parameters.get('nodes', 1)} --tasks-per-node {parameters.get('tasks_per_node', 1)} "
            f"--cpus-per-task {parameters.get('cpus_per_task')} --gpus-per-node {parameters.get('gpus_per_node', 0)}"
            f" --timeout-min {parameters.get('timeout_min')}"
            + (f" --slurm-partition {partition}" if partition else " (the default partition)"))


FIX = ("set --gpus-per-node (0 on a CPU partition), --tasks-per-node, --cpus-per-task, --timeout-min or "
       "--slurm-partition (or the suite's resources:) to what the partition has; `sinfo -o '%P %D %c %m %G %l'` "
       "lists its nodes, CPUs, memory, GPUs and time limit")


def _submit(executor, job: RunJob, run_id: str, request: str, launch: Launch):
    """Submit one job; an sbatch refusal is one clear line naming the request and the options to change."""
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # submitit prints sbatch's complaint: it goes into our line
            return executor.submit(job)
    except Exception as error:  # noqa: BLE001 - submitit raises FailedJobError(sbatch's stderr)
        if launch.launcher != "slurm" or type(error).__name__ != "FailedJobError":
            sys.stderr.write(said.getvalue())
            raise
        said = " ".join(line.removeprefix("sbatch: error: ") for line in str(error).strip().splitlines()[-2:])
        raise SlurmError(f"sbatch refused the job of {run_id}: {said}. It asked for "
                         f"{request}; {FIX}") from None


def _queue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` of the jobs still in Slurm's queue (squeue); a finished job is absent."""
    import subprocess

    listed = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r"], capture_output=True,
                            text=True, check=False)
    if listed.returncode != 0:  # squeue answers "Invalid job id" once every job has left the queue
        return {}
    queue = {}
    for line in listed.stdout.splitlines():
        job_id, state, reason = line.split("|", 2)
        queue[job_id.split("_")[0]] = (state, reason)
    return queue


def _watch_slurm(jobs: list, request: str, number: int) -> None:
    """Wait until every job of the wave has left Slurm's queue. A job that pends for a reason Slurm can
    never resolve (:data:`NEVER_STARTS`) is cancelled and raised as one line naming the options to
    change, never waited on for ever. A requeued job stays in the queue and is waited on."""
    import subprocess

    waiting = {job.job_id: run_id for run_id, job in jobs}
    while waiting:
        queue = _queue(list(waiting))
        for job_id, run_id in list(waiting.items()):
            if job_id not in queue:
                del waiting[job_id]
                continue
            state, reason = queue[job_id]
            if state == "PENDING" and reason.split(",")[0].split(":")[0] in NEVER_STARTS:
                subprocess.run(["scancel", *waiting], check=False)
                raise SlurmError(f"wave {number}: Slurm can never start job {job_id} of {run_id} (pending, reason "
                                 f"{reason}); it asked for {request}; {FIX}. "
                                 f"The wave's jobs were cancelled ({', '.join(waiting)})")
        if waiting:
            time.sleep(POLL_S)


def run_submitit(suite: Suite, waves: list[list[RunSpec]], out: Path, launch: Launch) -> int:
    """Each run as its own job; a wave is submitted once the wave before it (the budget references) is
    done. A calibration chain's next run is submitted once its last one finished: every chain of the
    wave goes one run per round, through the generator every runner walks
    (:func:`acdc_bench.budget.matching.run_chain`). Returns the number of jobs submitted."""
    from acdc_bench.budget.matching import run_chain

    executor = _executor(suite, out, launch)
    store = store_at(out)
    trained = 0
    for number, wave in enumerate(waves, 1):
        chains = []
        for spec in wave:
            first = _config(suite, spec, out)
            if store.finished(first.run_id):
                print(f"wave {number}: {first.run_id} finished already")
            else:
                chains.append(run_chain(lambda spec=spec: _config(suite, spec, out), store, first=first))
        while chains:
            round_ = [(chain, next(chain, None)) for chain in chains]
            chains = [chain for chain, config in round_ if config is not None]
            configs = [config for _, config in round_ if config is not None]
            if configs:
                _submit_and_wait(executor, suite, number, configs, out, launch, store)
                trained += len(configs)
    return trained


def _submit_and_wait(executor, suite: Suite, number: int, configs: list["RunConfig"], out: Path, launch: Launch,
                     store) -> None:
    """Submit one job per run config and wait for them all; every failure is named, with its logs."""
    slurm = launch.launcher == "slurm"
    request = _request(slurm_parameters(suite, launch)) if slurm else ""
    jobs = []
    for config in configs:
        job = _submit(executor, RunJob(config, str(out), launch.data_root), config.run_id, request, launch)
        print(f"wave {number}: submitted {config.run_id}{_chain_note(config)} as job {job.job_id}")
        jobs.append((config.run_id, job))
    if slurm and jobs:
        _watch_slurm(jobs, request, number)
    failed = []
    for run_id, job in jobs:
        if slurm and not _left_a_result(job):
            print(f"wave {number}: {run_id} (job {job.job_id}) FAILED: it left Slurm's queue without a result "
                  f"(cancelled, killed, or out of memory or time); see {job.paths.stderr}")
            failed.append(f"{run_id} (job {job.job_id}, logs in {job.paths.folder})")
            continue
        try:
            job.results()  # every task's result (a multi-GPU job has one task per GPU); waits through requeues
        except Exception as error:  # noqa: BLE001 - wait for the whole wave, then report every failure
            print(f"wave {number}: {run_id} (job {job.job_id}) FAILED: {error}")
            failed.append(f"{run_id} (job {job.job_id}, logs in {job.paths.folder})")
            continue
        if not store.finished(run_id):
            raise JobsFailed(f"wave {number}: the job of {run_id} succeeded but {out / run_id} has no result.json; "
                             f"the jobs must write to the same --out folder as this process")
        print(f"wave {number}: {run_id} (job {job.job_id}) finished")
    if failed:
        raise JobsFailed(f"wave {number}: {len(failed)} job(s) failed: " + "; ".join(failed) + "; a rerun of the "
                         "same command resumes each from its last checkpoint")
