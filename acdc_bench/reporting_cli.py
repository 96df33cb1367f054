"""Reporting commands of ``acdc-bench``: reproduce a suite, compare methods, export leaderboards and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def add_commands(parser: argparse.ArgumentParser, commands: dict) -> None:
    """Register the reporting subcommands on ``parser`` and their handlers in ``commands``."""
    from acdc_bench.cli import _add_suite_arguments

    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    reproduce = subparsers.add_parser("reproduce", help="run a whole suite, then compare, export and plot")
    _add_suite_arguments(reproduce)
    reproduce.add_argument("--methods", nargs="+", default=None, help="default: the suite's reproduce.methods")
    reproduce.add_argument("--sparsities", nargs="+", type=float, default=None)
    reproduce.add_argument("--seeds", nargs="+", type=int, default=None)
    reproduce.add_argument("--budget", choices=["paper", "matched"], default=None)
    reproduce.add_argument("--data-root", default=None)
    reproduce.add_argument("--out", default=None, help="run folders (default: runs/<suite>)")
    reproduce.add_argument("--leaderboard-dir", default=None, help="default: the repository's leaderboards/")
    reproduce.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local")
    reproduce.add_argument("--slurm-partition", default=None)
    reproduce.add_argument("--gpus-per-node", type=int, default=None)
    reproduce.add_argument("--nodes", type=int, default=None)
    reproduce.add_argument("--timeout-min", type=int, default=None)
    reproduce.add_argument("--plugin", action="append", default=[])
    reproduce.add_argument("--wandb", action="store_true")
    reproduce.add_argument("--no-progress", action="store_true")
    commands["reproduce"] = cmd_reproduce

    for name, handler, text in (
        ("compare", cmd_compare, "per-sparsity table of every method against AC/DC and the published numbers"),
        ("leaderboard", cmd_leaderboard, "export leaderboards/<suite>.csv (+ .md) and the plots"),
    ):
        sub = subparsers.add_parser(name, help=text)
        sub.add_argument("--suite", default="fashion-mnist")
        sub.add_argument("--runs", nargs="+", default=None, help="run folders to read (default: runs/<suite>)")
        sub.add_argument("--out", default=None, help="where to write (default: the run folder / leaderboards/)")
        sub.add_argument("--reference", default=None, help="published CSV (default: leaderboards/reference/published.csv)")
        commands[name] = handler


def _suite_name(suite: str) -> str:
    from acdc_bench.config import load_suite

    return load_suite(suite)["suite"]


def _load(args, suite_name: str):
    from acdc_bench.results import load_reference, load_runs

    roots = args.runs or [Path("runs") / suite_name]
    runs = load_runs(*roots)
    if not runs.empty and "suite" in runs:
        runs = runs[runs["suite"].isna() | (runs["suite"] == suite_name)]
    return runs, load_reference(args.reference)


def report(suite_name: str, runs, reference, compare_dir: Path, leaderboard_dir: Path) -> None:
    """Print the comparison, write it, export the leaderboard and the plots."""
    from acdc_bench.compare import compare_table, format_compare, write_compare
    from acdc_bench.leaderboard import build_leaderboard, export_leaderboard
    from acdc_bench.plots import plot_all

    table = compare_table(runs, reference, suite=suite_name)
    print(format_compare(table))
    written = write_compare(table, compare_dir)
    written += export_leaderboard(build_leaderboard(runs, reference, suite_name), leaderboard_dir / f"{suite_name}.csv")
    written += plot_all(runs, reference, leaderboard_dir / "plots" / suite_name, suite_name)
    unfinished = runs[runs["status"] != "finished"] if not runs.empty else runs
    for _, row in unfinished.iterrows():
        print(f"note: {row['run_dir']} is {row['status']}{': ' + str(row['error']) if row.get('error') else ''}")
    print("wrote: " + ", ".join(str(p) for p in written))


def cmd_compare(args) -> int:
    from acdc_bench.compare import compare_table, format_compare, write_compare

    suite_name = _suite_name(args.suite)
    runs, reference = _load(args, suite_name)
    table = compare_table(runs, reference, suite=suite_name)
    print(format_compare(table))
    out = Path(args.out) if args.out else Path(args.runs[0] if args.runs else Path("runs") / suite_name)
    print("wrote: " + ", ".join(str(p) for p in write_compare(table, out)))
    return 0


def cmd_leaderboard(args) -> int:
    suite_name = _suite_name(args.suite)
    runs, reference = _load(args, suite_name)
    out = Path(args.out) if args.out else REPO_ROOT / "leaderboards"
    compare_dir = Path(args.runs[0]) if args.runs else Path("runs") / suite_name
    report(suite_name, runs, reference, compare_dir, out)
    return 0


def cmd_reproduce(args) -> int:
    from acdc_bench.cli import _suite
    from acdc_bench.launch import plan_runs, run_all
    from acdc_bench.results import load_reference, load_runs

    suite = _suite(args)
    out = Path(args.out) if args.out else Path("runs") / suite["suite"]
    runs = plan_runs(
        suite,
        methods=args.methods,
        sparsities=args.sparsities,
        seeds=args.seeds,
        budget=args.budget,
    )
    run_all(suite, runs, out, args)
    leaderboard_dir = Path(args.leaderboard_dir) if args.leaderboard_dir else REPO_ROOT / "leaderboards"
    report(suite["suite"], load_runs(out), load_reference(), out, leaderboard_dir)
    return 0
