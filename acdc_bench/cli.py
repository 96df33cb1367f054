"""The ``acdc-bench`` command line: run, plan, flops, reproduce, compare, leaderboard."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from pathlib import Path

from acdc_bench import numerics
from acdc_bench.config import ConfigError, Suite, load_suite, suite_names, suite_numerics
from acdc_bench.core.io import staged
from acdc_bench.run.folder import RunLocked
from acdc_bench.run.launch import JobsFailed, Launch
from acdc_bench.run.store import RunStore


#: The suite every command uses unless told otherwise: three seeds on 2 CPU cores (its time: docs/results.md).
DEFAULT_SUITE = "fashion-mnist-10"


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default=DEFAULT_SUITE, help=f"shipped suite ({', '.join(suite_names())}) or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a suite field, e.g. --set optimizer.lr=0.1 (repeatable); the value is "
                             "YAML 1.2: --set methods.acdc.pattern=2:4 is the string '2:4', 1e-4 a float")
    parser.add_argument("--numerics", choices=numerics.MODES, default=None,
                        help="portable: ATen and oneDNN capped to AVX2, MKL on its one branch for every vendor, "
                             "identical results on Intel and AMD x86-64 CPUs "
                             "(default, also the suite's `numerics` key); native: the CPU's own instruction set, "
                             "faster where AVX-512/AMX pays, reproducible on that CPU type only")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_suite_arguments(parser)
    parser.add_argument("--method", required=True,
                        help="registered method name (dense, acdc, gmp, rigl, str, ...); plan also takes 'all'")
    parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity in [0, 1) (dense: ignored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order")
    parser.add_argument("--epochs", type=int, default=None,
                        help="run length (default: the suite's, or the method's recipe); with a matched budget only "
                             "for the budget reference and dense: use --budget paper or --set epochs=N")
    parser.add_argument("--plugin", action="append", default=[], help="import this module to register a method")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_run_arguments(parser)
    parser.add_argument("--out", default=None, help="output folder (default: runs/<suite>)")
    parser.add_argument("--data-root", default=None, help="data folder (else the suite's data_root or $ACDC_BENCH_DATA)")
    parser.add_argument("--budget", choices=["paper", "matched"], default=None,
                        help="paper: each method on its own recipe and length; matched: the length solved for the "
                             "reference's training FLOPs (default: the suite's budget.mode)")
    parser.add_argument("--no-progress", action="store_true", help="no per-step progress bar")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (WANDB_MODE decides online/offline)")


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    _add_run_arguments(parser)
    parser.add_argument("--budget", choices=["paper", "matched"], default=None,
                        help="the budget mode to plan under (default: the suite's budget.mode)")
    parser.add_argument("--out", default=None, help="run folders holding finished budget references (default: runs/<suite>)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _flops_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, choices=MODEL_CHOICES,
                        help="the model to measure; a --checkpoint's run names it (default: resnet50)")
    parser.add_argument("--distribution", choices=["global", "uniform", "erk"], default="erk",
                        help="how the sparsity is spread over the layers")
    parser.add_argument("--sparsity", type=float, default=0.8, help="overall sparsity in [0, 1)")
    parser.add_argument("--keep-dense", nargs="*", default=[], help="layer names kept dense (uniform/erk)")
    parser.add_argument("--checkpoint", default=None, help="a trained model's state dict: measure its real non-zeros")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --distribution global")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["fashion-mnist", "cifar100"], help="the data set to download")
    parser.add_argument("--root", default=None,
                        help="the folder to download into (default: the per-user cache, $ACDC_BENCH_DATA/<dataset> "
                             "or ~/.cache/acdc-bench/<dataset>)")


def _reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    _add_suite_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=None, help="default: the suite's reproduce.methods")
    parser.add_argument("--sparsities", nargs="+", type=float, default=None,
                        help="target sparsities (default: the suite's reproduce.sparsities)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the suite's reproduce.seeds)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="CELL",
                        help="only these cells of the suite's reproduce.variants (paper suites)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list every planned run (cost estimate, published reference) and train nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the listing as JSON")
    parser.add_argument("--budget", choices=["paper", "matched"], default=None,
                        help="override the suite's budget.mode for every run")
    parser.add_argument("--data-root", default=None, help="data folder (else the suite's data_root or $ACDC_BENCH_DATA)")
    parser.add_argument("--out", default=None, help="run folders (default: runs/<suite>)")
    parser.add_argument("--leaderboard-dir", default=None, help="default: leaderboards/ in the working directory")
    parser.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                        help="local: in this machine's processes (--jobs); slurm: one Slurm job per run through "
                             "submitit; submitit-local: the same jobs as local processes")
    parser.add_argument("--jobs", type=_jobs, default="auto",
                        help="local runs side by side, each with cores / jobs threads (1 under portable numerics on a CPU); auto (default): one per "
                             "core (at most 8) on a CPU machine, 1 with a GPU")
    parser.add_argument("--status-every", type=float, default=30, help="seconds between status lines (--jobs > 1)")
    parser.add_argument("--dense-step-seconds", type=_seconds, default=None, metavar="SECONDS",
                        help="how long to time the suite's dense step before the runs start, the rate of the "
                             "FLOP-ideal table (default 12; 0: not timed, the table takes the dense runs' own rate)")
    parser.add_argument("--slurm-partition", default=None, help="Slurm partition (default: the suite's resources.partition)")
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs per node of a Slurm job, 0 for a CPU partition (default: the suite's "
                             "resources.gpus_per_node, else 1)")
    parser.add_argument("--nodes", type=int, default=None, help="nodes per Slurm job (default: the suite's, else 1)")
    parser.add_argument("--tasks-per-node", type=int, default=None,
                        help="Slurm tasks per node (default: the suite's resources.tasks_per_node, else one per GPU, "
                             "1 with --gpus-per-node 0)")
    parser.add_argument("--cpus-per-task", type=int, default=None,
                        help="CPUs per Slurm task (default: the suite's resources.cpus_per_task, else 8)")
    parser.add_argument("--timeout-min", type=int, default=None,
                        help="a job's time limit in minutes; it requeues itself and resumes (default: the suite's, else 1440)")
    parser.add_argument("--plugin", action="append", default=[], help="import this module to register a method (repeatable)")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (WANDB_MODE decides online/offline)")
    parser.add_argument("--no-progress", action="store_true", help="no per-step progress bar")


def _seconds(value: str) -> float:
    """``--dense-step-seconds``: a number of seconds, 0 or more."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0.0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"--dense-step-seconds must be a number of seconds >= 0, got {value!r}")
    return seconds


def _jobs(value: str) -> int | str:
    """``--jobs``: a positive integer, or ``auto``. On the 2-core AMD EPYC machine of this project,
    two dense 4-epoch runs took 1.42x less wall time as 2 jobs x 1 thread than as 1 job x 2 threads
    (whole-process timing, 3 pairs A B; README "Performance")."""
    if value == "auto":  # resolved by resolve_jobs once numerics are pinned (it starts torch)
        return "auto"
    try:
        jobs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--jobs must be a positive integer or auto, got {value!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be a positive integer or auto, got {value!r}")
    return jobs


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    _add_suite_arguments(parser)
    parser.add_argument("--all", action="store_true",
                        help="re-run every run of the record (default: seed 0 of every cell in it)")
    parser.add_argument("--record", default=None,
                        help="the run record to hold the runs to, e.g. one a reproduction of your own wrote "
                             "(default: the suite's record shipped with the package, acdc_bench/records/"
                             "<suite>.runs.csv, a copy of leaderboards/<suite>.runs.csv as committed)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="train into DIR and keep it (default: a temporary folder, removed at the end)")
    parser.add_argument("--jobs", type=_jobs, default="auto", help="runs side by side (as reproduce --jobs)")
    parser.add_argument("--data-root", default=None, help="data folder (else the suite's data_root or $ACDC_BENCH_DATA)")
    parser.add_argument("--plugin", action="append", default=[], help="import this module to register a method")


def resolve_jobs(args) -> None:
    """``--jobs auto``: one per core (at most 8) on a CPU machine, 1 with a GPU."""
    import os

    if args.jobs == "auto":
        import torch

        args.jobs = 1 if torch.cuda.is_available() else max(1, min(8, os.cpu_count() or 1))


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default=DEFAULT_SUITE,
                        help="the suite whose runs to read (a run of another suite is listed as skipped)")
    parser.add_argument("--runs", nargs="+", default=None, help="run folders to read (default: runs/<suite>)")
    parser.add_argument("--out", default=None,
                        help="where every file goes (default: compare, the first --runs folder; leaderboard, "
                             "<first --runs folder>/leaderboard; the shipped leaderboards/ only when named)")
    parser.add_argument("--reference", default=None, help="published CSV (default: the shipped leaderboards/reference/published.csv)")


def _suite(args) -> Suite:
    """The suite with its plugins and the command line's ``--plugin`` modules imported (those
    first: a suite may name the methods they register)."""
    from acdc_bench.methods import load_plugins

    load_plugins(list(args.plugin))
    suite = load_suite(args.suite, args.overrides)
    suite = suite.replace(plugins=[*suite.plugins, *args.plugin])
    load_plugins(suite.plugins)
    return suite


def _budgeted_config(args, suite: Suite, out: Path | None):
    from acdc_bench.budget.matching import resolve_budget
    from acdc_bench.methods import get_method
    from acdc_bench.run.store import store_at

    get_method(args.method)  # an unknown name is said as such, before any budget is planned
    mode = args.budget or suite.budget_mode
    return resolve_budget(suite, args.method, args.sparsity, args.seed, mode, args.epochs, store_at(out))


def cmd_run(args) -> int:
    from acdc_bench.budget.calibrate import describe
    from acdc_bench.budget.matching import run_chain
    from acdc_bench.run.loop import train
    from acdc_bench.run.store import removed_if_left_empty, store_at
    from acdc_bench.run.tracking import Tracker

    suite = _suite(args)
    out = Path(args.out) if args.out else Path("runs") / suite.name
    store = store_at(out)
    first = _budgeted_config(args, suite, out)
    if store.finished(first.run_id):  # train() says so, and where
        train(first, out, data_root=args.data_root, progress=not args.no_progress)
        return 0
    # a matched STR run is a calibration chain: each finished run may call for the next
    chain = run_chain(lambda: _budgeted_config(args, suite, out), store, first=first)
    with removed_if_left_empty(out):
        for number, config in enumerate(chain):
            if number:
                print(describe(config.budget.as_dict(), config.train_steps), flush=True)
            tracker = Tracker(enabled=args.wandb or bool(suite.wandb))
            train(config, out, data_root=args.data_root, progress=not args.no_progress, tracker=tracker)
    return 0


def cmd_plan(args) -> int:
    from acdc_bench.budget.calibrate import describe
    from acdc_bench.budget.plan import plan

    suite = _suite(args)
    out = Path(args.out) if args.out else Path("runs") / suite.name
    if args.method == "all":
        return _plan_all(args, suite, out)
    report = plan(_budgeted_config(args, suite, out))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"suite {report['suite']}  method {report['method']}  sparsity {report['sparsity']:g}  "
          f"epochs {report['epochs']} ({report['steps_per_epoch']} steps each)")
    print(f"{'epoch':>5} {'phase':>6} {'sparsity':>9} {'lr':>10} {'fwd FLOPs x':>11}")
    for row in report["rows"]:
        print(f"{row['epoch']:>5} {row['phase']:>6} {row['target_sparsity']:>9.4f} {row['lr']:>10.6f} "
              f"{row['forward_flops_multiplier']:>11.4f}")
    print(f"estimated training FLOPs {report['estimated_training_flops']:.4g} = "
          f"{report['estimated_training_flops_multiplier']:.3f}x dense training ({report['suite_epochs']} epochs)")
    budget = report.get("budget") or {}
    if budget.get("mode") == "matched":
        print(f"budget matched to {budget.get('reference')} ({budget.get('reference_training_flops'):.4g} FLOPs, "
              f"{budget.get('reference_source')})")
    note = describe(budget, report["train_steps"])
    if note:
        print(f"{note}, estimated {budget['estimated_ratio']:.3f}x the budget"
              + (f" (Broyden step from run {budget['calibration']['previous_run']})"
                 if budget["calibration"]["previous_run"] else
                 " (the suite's recipe; the rows above are the planning ramp, the run measures its own cost)"))
    return 0


def _plan_all(args, suite: Suite, out: Path) -> int:
    """One line per method of the suite's reproduction: run length and estimated cost under the budget."""
    from acdc_bench.budget.plan import plan

    reports = []
    for method in suite.reproduce.get("methods") or ["dense", "acdc"]:
        args.method = method
        reports.append(plan(_budgeted_config(args, suite, out)))
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in reports], indent=2))
        return 0
    print(f"suite {suite.name}  sparsity {args.sparsity:g}  budget {args.budget or suite.budget_mode}")
    print(f"{'method':<8} {'epochs':>6} {'steps':>7} {'est. train FLOPs x':>18} {'vs budget':>9}  budget source")
    for r in reports:
        budget = r.get("budget") or {}
        # A calibrated (STR) run's estimate is the calibration model's, not the planning ramp's.
        estimate = budget.get("estimated_training_flops") or r["estimated_training_flops"]
        ratio = f"{estimate / budget['reference_training_flops']:.3f}" if budget.get("reference_training_flops") else "-"
        source = budget.get("reference_source") or budget.get("note") or "own recipe length"
        if budget.get("calibration"):
            calibration = budget["calibration"]
            source += (f"; calibration run {calibration['iteration'] + 1}/{calibration['max_runs']}, "
                       f"{calibration['option']}={calibration['value']:.4g}")
        print(f"{r['method']:<8} {r['epochs']:>6} {r['train_steps']:>7} {estimate / r['dense_training_flops']:>18.3f} "
              f"{ratio:>9}  {source}")
    return 0


def cmd_download(args) -> int:
    """Download a data set into the per-user cache (or ``--root``), each file checked before it is kept."""
    from acdc_bench.data import download_dataset

    folder = download_dataset(args.dataset, args.root)
    print(f"{args.dataset}: in {folder}")
    return 0


def cmd_flops(args) -> int:
    import torch

    from acdc_bench.core.flops import inference_report, measure_layer_flops
    from acdc_bench.core.io import load_checkpoint
    from acdc_bench.models import build_model, model_spec
    from acdc_bench.core.sparsity import global_magnitude_masks, layer_densities, prunable_layers, weight_sparsity

    name = args.model or (_run_model(Path(args.checkpoint)) if args.checkpoint else None) or "resnet50"
    torch.manual_seed(args.seed)
    model = build_model(name)
    layers = prunable_layers(model)
    flops = measure_layer_flops(model, layers, model_spec(name).input_shape)
    if args.checkpoint:
        try:
            state = load_checkpoint(args.checkpoint)
        except RuntimeError as error:
            raise ConfigError(f"--checkpoint {args.checkpoint}: {error.__cause__ or error}") from error
        try:
            model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise ConfigError(f"--checkpoint {args.checkpoint} does not hold the weights of {name} (--model "
                              f"{args.model or 'not given, ' + name + ' assumed'}): name the model it was trained "
                              f"as, --model {{{','.join(MODEL_CHOICES)}}}") from error
        _, measured = weight_sparsity(layers)
        densities = [measured[layer.name] for layer in layers]
    else:
        if not 0.0 <= args.sparsity < 1.0:
            raise ConfigError(f"--sparsity {args.sparsity} must be in [0, 1)")
        if args.distribution == "global":
            masks = global_magnitude_masks([layer.weight for layer in layers], args.sparsity)
            densities = [float(m.float().mean()) for m in masks]
        else:
            densities = layer_densities(args.distribution, layers, args.sparsity, args.keep_dense)
    report = inference_report(flops, densities, [layer.shape for layer in layers])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'layer':<28} {'shape':<22} {'density':>8} {'dense FLOPs':>13}")
    for layer in report["layers"]:
        print(f"{layer['name']:<28} {str(tuple(layer['shape'])):<22} {layer['density']:>8.4f} {layer['dense_forward_flops']:>13,}")
    print(f"dense forward FLOPs {report['dense_forward_flops']:.4g}; sparse {report['sparse_forward_flops']:.4g}; "
          f"inference multiplier {report['inference_flops_multiplier']:.4f}")
    return 0


def _run_model(checkpoint: Path) -> str | None:
    """The model a run folder's ``config.yaml`` names, for a checkpoint inside one (None: no such file,
    or one that does not parse)."""
    from acdc_bench.run.store import RunStore

    store, run_id = RunStore.locate(checkpoint.parent)
    try:
        config = store.config(run_id)
    except (OSError, ValueError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    return model if model in MODEL_CHOICES else None


def _suite_name(suite: str) -> str:
    from acdc_bench.config import load_suite

    return load_suite(suite).name


def _load(args, suite_name: str):
    """The finished runs of ``suite_name`` under ``--runs`` (default ``runs/<suite>``) and the
    published table. Every run folder left out is listed with its reason; nothing to compare is an
    error (before anything is written)."""
    from acdc_bench.report.results import load_reference, load_runs, select_runs

    roots = [Path(root) for root in (args.runs or [Path("runs") / suite_name])]
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise FileNotFoundError(f"no run folder {', '.join(missing)} (--runs names folders holding run folders)")
    runs = load_runs(*roots)
    skipped = []
    if not runs.empty:
        other = runs["suite"].notna() & (runs["suite"] != suite_name)
        skipped += [f"{row.run_dir}: a run of suite {row.suite}, not {suite_name} (compare it with --suite {row.suite})"
                    for row in runs[other].itertuples()]
        runs = runs[~other]
        skipped += [f"{row.run_dir}: {row.status}: {row.error}" for row in runs[runs["status"] != "finished"].itertuples()]
    runs, notices = select_runs(runs)
    notices += _import_plugins_of(runs)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    for line in notices:
        print(f"note: {line}", file=sys.stderr)
    if runs.empty or not (runs["status"] == "finished").any():
        raise ConfigError(f"nothing to compare: no finished run of suite {suite_name} in {', '.join(map(str, roots))}"
                          + (f" ({len(skipped)} run folder(s) skipped, listed above)" if skipped else "")
                          + "; nothing was written")
    return runs, load_reference(args.reference)


def _import_plugins_of(runs) -> list[str]:
    """Import the plugin modules the runs were made with, so that their methods' names, colours and
    markers show; one note per module that cannot be imported here (its methods show as their ids)."""
    from acdc_bench.methods import load_plugins

    modules = sorted({module for listed in (runs["plugins"] if "plugins" in runs else [])
                      if isinstance(listed, list) for module in listed})
    notes = []
    for module in modules:
        try:
            load_plugins([module])
        except ValueError as error:
            notes.append(f"{error}; its methods are shown by their ids")
    return notes


def report(suite_name: str, runs, reference, compare_dir: Path, leaderboard_dir: Path) -> None:
    """Print the comparison, write it, export the leaderboard and the plots."""
    from acdc_bench.report.compare import compare_table, format_compare, write_compare
    from acdc_bench.report.leaderboard import build_leaderboard, export_leaderboard
    from acdc_bench.report.plots import plot_all
    from acdc_bench.report.results import select_runs
    from acdc_bench.report.verify import export_run_record

    runs, notices = select_runs(runs)  # each seed of a cell once (a no-op after _load)
    for line in notices:
        print(f"note: {line}", file=sys.stderr)
    table = compare_table(runs, reference, suite=suite_name)
    print(format_compare(table))
    # every file or none: they are written aside and moved into place once all are written
    with staged(compare_dir, leaderboard_dir) as (compare_stage, leaderboard_stage):
        staged_files = write_compare(table, compare_stage)
        staged_files += export_leaderboard(build_leaderboard(runs, reference, suite_name),
                                           leaderboard_stage / f"{suite_name}.csv")
        staged_files += export_run_record(runs, leaderboard_stage / f"{suite_name}.csv")
        staged_files += plot_all(runs, reference, leaderboard_stage / "plots" / suite_name, suite_name)
        written = [_unstaged(path, (compare_stage, compare_dir), (leaderboard_stage, leaderboard_dir))
                   for path in staged_files]
    # the suite's figures are this report's: one an earlier report drew and this one did not (a
    # difference-to-AC/DC plot from runs since deleted) would pass for current, so it goes
    plots = leaderboard_dir / "plots" / suite_name
    for stale in sorted(set(plots.glob("*.png")) | set(plots.glob("*.svg")) if plots.is_dir() else ()):
        if stale not in written:
            stale.unlink()
            print(f"note: removed {stale}, a figure of an earlier report that this one does not draw", file=sys.stderr)
    unfinished = runs[runs["status"] != "finished"] if not runs.empty else runs
    for _, row in unfinished.iterrows():
        print(f"note: {row['run_dir']} is {row['status']}{': ' + str(row['error']) if row.get('error') else ''}")
    print("wrote: " + ", ".join(str(p) for p in written))


def _unstaged(path: Path, *pairs: tuple[Path, Path]) -> Path:
    """Where a file written into a staging folder (:func:`acdc_bench.core.io.staged`) ends up."""
    for stage, folder in pairs:
        if path.is_relative_to(stage):
            return folder / path.relative_to(stage)
    return path


def cmd_compare(args) -> int:
    from acdc_bench.report.compare import compare_table, format_compare, write_compare

    suite_name = _suite_name(args.suite)
    runs, reference = _load(args, suite_name)
    table = compare_table(runs, reference, suite=suite_name)
    print(format_compare(table))
    out = Path(args.out) if args.out else Path(args.runs[0] if args.runs else Path("runs") / suite_name)
    with staged(out) as (stage,):
        written = [_unstaged(path, (stage, out)) for path in write_compare(table, stage)]
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


def cmd_leaderboard(args) -> int:
    """Everything goes to ``--out`` (default: beside the runs read, ``<runs>/leaderboard/``): the
    shipped ``leaderboards/`` is written only when named."""
    suite_name = _suite_name(args.suite)
    runs, reference = _load(args, suite_name)
    first = Path(args.runs[0]) if args.runs else Path("runs") / suite_name
    out = Path(args.out) if args.out else first / "leaderboard"
    report(suite_name, runs, reference, out, out)
    return 0


def cmd_reproduce(args) -> int:
    from acdc_bench.run.launch import plan_runs, run_all
    from acdc_bench.run.store import removed_if_left_empty
    from acdc_bench.report.results import load_reference, load_runs

    suite = _suite(args)
    out = Path(args.out) if args.out else Path("runs") / suite.name
    runs = plan_runs(
        suite,
        methods=args.methods,
        sparsities=args.sparsities,
        seeds=args.seeds,
        budget=args.budget,
        cells=args.cells,
    )
    dry = args.dry_run
    if args.json and not dry:
        raise ConfigError("--json lists the plan: use it with --dry-run")
    if dry:  # before anything trains or writes: the plan only
        from acdc_bench.report.dryrun import dry_run, format_dry_run
        from acdc_bench.run.store import store_at

        listing = dry_run(suite, runs, store_at(out))
        print(json.dumps(listing, indent=2) if args.json else format_dry_run(listing))
        return 0
    resolve_jobs(args)
    launch = Launch.from_args(args)
    step = _dense_step(suite, launch, out, args.dense_step_seconds)
    started = time.perf_counter()
    with removed_if_left_empty(out):
        trained = run_all(suite, runs, out, launch)
    elapsed = time.perf_counter() - started
    if step is not None and out.is_dir():
        RunStore(out).write_dense_step(step)
    leaderboard_dir = Path(args.leaderboard_dir) if args.leaderboard_dir else Path("leaderboards")
    finished = load_runs(out)
    report(suite.name, finished, load_reference(), out, leaderboard_dir)
    print_timing(finished, (trained, elapsed), launch, step)
    return 0


def cmd_verify(args) -> int:
    """Re-run the record's seed-0 runs (``--all``: every run) and hold each to the record: the
    shipped one (``acdc_bench/records``), else ``--record``. Options under which a recorded run
    would get another id are refused before anything trains."""
    import tempfile

    from acdc_bench import __version__
    from acdc_bench.report.results import load_runs
    from acdc_bench.report.verify import (compare_with_record, format_outcomes, plan_against_record, read_record,
                                          shipped_record)
    from acdc_bench.run.launch import plan_runs, run_all

    suite = _suite(args)
    path = Path(args.record) if args.record else shipped_record(suite.name)
    record = read_record(path)
    print(f"verify: record {path} ({'given with --record' if args.record else f'shipped with acdc-bench {__version__}'})",
          flush=True)
    seeds = sorted({int(seed) for seed in record["seed"]}) if args.all else [0]
    record = record[record["seed"].astype(int).isin(seeds)]
    if record.empty:
        raise ConfigError(f"the record holds no run of seed(s) {seeds}: nothing to verify")
    methods = sorted(set(record["method"]))
    sparsities = sorted({float(value) for value in record.loc[record["method"] != "dense", "target_sparsity"]})
    waves = plan_runs(suite, methods=methods, sparsities=sparsities or None, seeds=seeds)
    waves, missing, unrecorded = plan_against_record(suite, waves, record)
    if missing:
        given = " ".join(f"--set {text}" for text in args.overrides or []) or "no --set"
        twin = next((run_id for run_id in unrecorded if run_id.rsplit("-", 2)[0] == missing[0].rsplit("-", 2)[0]), None)
        raise ConfigError(
            f"{len(missing)} of the {len(record)} recorded run(s) of seed(s) {seeds} would not be re-made under these "
            f"options (recorded {missing[0]}, planned {twin or 'no run of its method, target and seed'}): the record "
            f"{path} keeps no overrides, so run verify with the options it was made with (given: {given}), or give "
            f"--record a record made with these")
    print(f"verify: re-running {sum(len(w) for w in waves)} run(s) of {suite.name} (seeds {seeds}) under "
          f"{numerics.active()} numerics on {numerics.cpu_model()}", flush=True)
    resolve_jobs(args)
    recorded = set(record["run_id"])
    with tempfile.TemporaryDirectory(prefix="acdc-verify-") as scratch:
        out = Path(args.keep) if args.keep else Path(scratch)
        if args.keep and out.is_dir():
            before = load_runs(out)
            done = sorted(set(before.loc[before["status"] == "finished", "run_id"]) & recorded)
            if done:
                print(f"verify: {len(done)} of these run(s) finished in {out} already and are held to the record as "
                      f"they are, not re-run (a --keep folder of its own re-runs them)", flush=True)
        run_all(suite, waves, out, Launch(jobs=args.jobs, data_root=args.data_root, progress=False))
        runs = load_runs(out)
        others = runs[~runs["run_id"].isin(recorded)]
        if len(others):  # a --keep folder's other runs: not what this verify holds to the record
            print(f"verify: {len(others)} other run folder(s) in {out} left out", flush=True)
            runs = runs[runs["run_id"].isin(recorded)]
        for row in runs[runs["status"] != "finished"].itertuples():  # never held to the record in silence
            print(f"skipped {row.run_dir}: {row.status}: {row.error}", file=sys.stderr)
        outcomes = compare_with_record(record, runs)
    print(format_outcomes(outcomes, numerics.cpu_model(), numerics.active()))
    return 0 if outcomes and all(o["verdict"] == "identical" for o in outcomes) else 1


#: Beside a reproduction's run folders: its dense step as timed on this machine (reused by a later
#: invocation on the same CPU, numerics, threads and torch, so that its table does not move).
def _dense_step(suite: Suite, launch: Launch, out: Path, seconds: float | None = None) -> dict | None:
    """The dense step timed on this machine before the runs start (the FLOP-ideal table's rate), for
    at most ``seconds`` (None: :data:`acdc_bench.run.steptime.SECONDS`), for local runs on the CPU,
    or as an earlier invocation timed it into ``out``; None where the runs train elsewhere, it cannot
    be built here, or ``seconds`` is 0."""
    import torch

    from acdc_bench.run.launch import one_thread_per_run
    from acdc_bench.run.steptime import SECONDS, dense_step

    if launch.launcher != "local" or torch.cuda.is_available():
        return None
    here = {"suite": suite.name, "model": suite.model, "batch_size": suite.batch_size,
            "cpu": numerics.cpu_model(), "numerics": numerics.active(), "torch": str(torch.__version__),
            "threads": 1 if one_thread_per_run(suite.numerics) else torch.get_num_threads()}
    store = RunStore(out)
    recorded = store.dense_step()
    if recorded is not None and all(recorded.get(key) == value for key, value in here.items()) \
            and isinstance(recorded.get("rate"), (int, float)):
        print(f"dense step of {suite.name}: {recorded['seconds'] * 1e3:.2f} ms, {recorded['rate'] / 1e9:.1f} GFLOP/s "
              f"(timed on this CPU by an earlier invocation: {store.root / store.DENSE_STEP})", flush=True)
        return recorded
    if seconds == 0:
        print("dense step not timed (--dense-step-seconds 0); the FLOP-ideal table uses the dense runs' rate",
              flush=True)
        return None
    try:
        step = dense_step(suite, launch.data_root, seconds=SECONDS if seconds is None else seconds)
    except (OSError, RuntimeError, ValueError) as error:  # the runs will say so themselves
        print(f"dense step not timed ({error}); the FLOP-ideal table uses the dense runs' rate", flush=True)
        return None
    if step is None:
        print(f"dense step of {suite.name} not timed (a step this large takes seconds on a CPU); the FLOP-ideal "
              "table uses the dense runs' rate", flush=True)
        return None
    print(f"dense step of {suite.name}: {step['seconds'] * 1e3:.2f} ms (the fastest block among {step['steps']} "
          f"timed steps; median {step['median'] * 1e3:.2f} ms), "
          f"{step['rate'] / 1e9:.1f} GFLOP/s on {step['threads']} thread(s)", flush=True)
    return dict(here, **step)


def print_timing(runs, invocation: tuple[int, float] | None = None, launch: Launch | None = None,
                 step: dict | None = None) -> None:
    """The reproduction's calibration chains, its runs' time against the FLOP-ideal time, and what
    this invocation trained: ``invocation`` is (runs trained, elapsed seconds); ``step``, the
    timed dense step whose rate the FLOP-ideal times take (else the dense runs' rate)."""
    from acdc_bench.report.results import drop_superseded
    from acdc_bench.report.timing import calibration_summary, flop_ideal_table, format_flop_ideal
    from acdc_bench.run.launch import format_duration

    for line in calibration_summary(runs):
        print(line)
    print(format_flop_ideal(flop_ideal_table(runs, step["rate"] if step else None), step))
    kept = drop_superseded(runs)
    if len(kept) != len(runs):
        print(f"  (of these, {len(runs) - len(kept)} calibration run(s) were superseded by a later run of their chain)")
    if invocation is not None:
        trained, elapsed = invocation
        launch = launch or Launch()
        jobs = launch.jobs
        how = (f"as {launch.launcher} jobs" if launch.launcher != "local"
               else "in 1 job" if jobs == 1 else f"in {jobs} jobs side by side")
        now = (f"this invocation trained {trained} run(s) in {format_duration(elapsed)} elapsed, {how}" if trained
               else "this invocation trained nothing: every run had finished before")
        print(f"  (the wall column sums each run's own time, whenever it ran; {now})")


#: The subcommands: name -> (handler, its arguments, help).
COMMANDS = {
    "run": (cmd_run, _run_arguments, "train one run (resumes or reports a run already there)"),
    "plan": (cmd_plan, _plan_arguments, "per-epoch phase, lr and sparsity, and the estimated training FLOPs"),
    "flops": (cmd_flops, _flops_arguments, "dense and sparse forward FLOPs of a model per layer"),
    "download": (cmd_download, _download_arguments,
                 "download Fashion-MNIST or CIFAR-100 into the per-user cache, each file checked before it is kept"),
    "reproduce": (cmd_reproduce, _reproduce_arguments, "run a whole suite, then compare, export and plot"),
    "compare": (cmd_compare, _report_arguments, "per-sparsity table of every method against AC/DC and the published numbers"),
    "leaderboard": (cmd_leaderboard, _report_arguments, "export leaderboards/<suite>.csv (+ .md) and the plots"),
    "verify": (cmd_verify, _verify_arguments,
               "re-run seed 0 of every cell of the record shipped with the package (acdc_bench/records) and say, "
               "run by run, identical or different"),
}


#: A run of seconds on Fashion-MNIST that keeps the default suite's matched budget: every schedule,
#: AC/DC's (the budget reference) included, fits the 4 epochs. tests/integration/test_honest_reports.py runs it.
SMOKE_RUN = "acdc-bench run --method gmp --sparsity 0.9 --set train_subset=2000 --set epochs=4"

RUN_EXAMPLES = f"""example:
  {SMOKE_RUN}
      a smoke run of seconds on 2,000 Fashion-MNIST examples, its length matched to AC/DC's
      training FLOPs as in the full suite (--set values are YAML 1.2)
"""

EXAMPLES = f"""examples:
  {SMOKE_RUN}
      a smoke run of seconds on Fashion-MNIST, matched budget kept (--set values are YAML 1.2)
  acdc-bench plan --suite imagenet-resnet50 --method rigl --sparsity 0.9
      per-epoch phase, sparsity, lr and training FLOPs of the official RigL recipe, nothing trained
  acdc-bench reproduce --methods acdc gmp --seeds 0 1 2 && acdc-bench verify
      a reproduction with intervals and verdicts, then the shipped numbers checked on this machine
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; every option's default shown once: where its help does not say it
    already, and never as ``None``."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


#: ``acdc_bench.models.model_names()``, written out so that building the parser does not start torch
#: (the numerics are pinned after parsing); tests/integration/test_honest_reports.py holds the two equal.
MODEL_CHOICES = ("lenet-300-100", "mobilenetv1", "resnet50", "wrn28-10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acdc-bench", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=_HelpFormatter)
    subcommands = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_arguments, text) in COMMANDS.items():
        add_arguments(subcommands.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter,
                                             epilog=RUN_EXAMPLES if name == "run" else None))
    return parser


#: Commands that train: their process must compute under the run's numerics before torch starts.
TRAINING_COMMANDS = ("run", "reproduce", "verify")


def main(argv: list[str] | None = None) -> int:
    """The command line. Called without ``argv`` (the ``acdc-bench`` program) a training command
    pins its numerics before torch starts, re-executing itself if torch had started already;
    called in-process with ``argv`` under other numerics, it stops with the fix instead."""
    args = build_parser().parse_args(argv)
    try:
        _check_seeds(args)
        if getattr(args, "numerics", None):
            args.overrides = [*args.overrides, f"numerics={args.numerics}"]
        if args.command in TRAINING_COMMANDS:
            mode = suite_numerics(args.suite, args.overrides)
            numerics.ensure(mode, reexec=argv is None)
            if mode == "native":
                print(f"acdc-bench {args.command}: native numerics: the math libraries use this CPU's own "
                      f"instructions ({numerics.cpu_model()}); the numbers repeat on this CPU type only, and "
                      f"the runs get ids of their own", file=sys.stderr, flush=True)
        return COMMANDS[args.command][0](args)
    except (ConfigError, ValueError, FileNotFoundError, RunLocked, NotImplementedError) as error:
        # NotImplementedError: a method without a hook the command needs (planned_densities under a
        # matched budget); its message says which and what to do
        print(f"acdc-bench {args.command}: error: {error}", file=sys.stderr)
        return 2
    except JobsFailed as error:  # the runs' own failures, each named with its logs
        print(f"acdc-bench {args.command}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno not in USER_OS_ERRORS:
            raise  # not the user's situation: a bug keeps its traceback
        print(f"acdc-bench {args.command}: error: {error.filename or 'a file'}: {error.strerror} (a file or "
              f"folder this command reads or writes, e.g. --out: check the path and its permissions)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in ("run", "reproduce") or (args.command == "verify" and args.keep)
        print(f"acdc-bench {args.command}: interrupted"
              + ("; every finished epoch is kept: run the same command again to resume" if resumable else ""),
              file=sys.stderr)
        return 130


#: errno values of an ``OSError`` that is the user's situation (a path that cannot be written or
#: read as asked, a full disk), told in one line; any other ``OSError`` keeps its traceback.
USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EROFS,
                  errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


def _check_seeds(args) -> None:
    """A seed names its run (``...-seed1-...``): a negative one would read as another seed."""
    seeds = [args.seed] if getattr(args, "seed", None) is not None else list(getattr(args, "seeds", None) or [])
    negative = [seed for seed in seeds if seed < 0]
    if negative:
        option = "--seed" if hasattr(args, "seed") else "--seeds"
        raise ConfigError(f"{option} {negative[0]}: a seed is an integer >= 0 (0, 1, 2, ...)")


if __name__ == "__main__":
    raise SystemExit(main())
