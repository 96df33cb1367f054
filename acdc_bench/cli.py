"""The ``acdc-bench`` command line: run, plan, flops (and the reporting commands)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acdc_bench.config import ConfigError, load_suite, suite_names


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="fashion-mnist", help=f"shipped suite ({', '.join(suite_names())}) or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a suite field, e.g. --set optimizer.lr=0.1 (repeatable)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_suite_arguments(parser)
    parser.add_argument("--method", required=True,
                        help="registered method name (dense, acdc, gmp, rigl, str, ...); plan also takes 'all'")
    parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity in [0, 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="run length (default: the suite's)")
    parser.add_argument("--plugin", action="append", default=[], help="import this module to register a method")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acdc-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train one run (resumes or reports a run already there)")
    _add_run_arguments(run)
    run.add_argument("--out", default=None, help="output folder (default: runs/<suite>)")
    run.add_argument("--data-root", default=None, help="data folder (else the suite's data_root or $ACDC_BENCH_DATA)")
    run.add_argument("--budget", choices=["paper", "matched"], default=None, help="override the suite's budget mode")
    run.add_argument("--no-progress", action="store_true", help="no per-step progress bar")
    run.add_argument("--wandb", action="store_true", help="log to Weights & Biases (WANDB_MODE decides online/offline)")

    plan = commands.add_parser("plan", help="per-epoch phase, lr and sparsity, and the estimated training FLOPs")
    _add_run_arguments(plan)
    plan.add_argument("--budget", choices=["paper", "matched"], default=None)
    plan.add_argument("--out", default=None, help="run folders holding finished budget references (default: runs/<suite>)")
    plan.add_argument("--json", action="store_true")

    flops = commands.add_parser("flops", help="dense and sparse forward FLOPs of a model per layer")
    flops.add_argument("--model", default="resnet50")
    flops.add_argument("--distribution", choices=["global", "uniform", "erk"], default="erk")
    flops.add_argument("--sparsity", type=float, default=0.8)
    flops.add_argument("--keep-dense", nargs="*", default=[], help="layer names kept dense (uniform/erk)")
    flops.add_argument("--checkpoint", default=None, help="a trained model's state dict: measure its real non-zeros")
    flops.add_argument("--seed", type=int, default=0, help="initialisation seed for --distribution global")
    flops.add_argument("--json", action="store_true")
    return parser


def _suite(args) -> dict:
    """The suite with its plugins and the command line's ``--plugin`` modules imported."""
    from acdc_bench.methods import load_plugins

    suite = load_suite(args.suite, args.overrides)
    suite["plugins"] = list(suite.get("plugins") or []) + list(getattr(args, "plugin", []) or [])
    load_plugins(suite["plugins"])
    return suite


def _budgeted_config(args, suite: dict, out: Path | None) -> dict:
    from acdc_bench.budget import resolve_budget

    mode = getattr(args, "budget", None) or suite["budget"]["mode"]
    return resolve_budget(suite, args.method, args.sparsity, args.seed, mode, args.epochs, out)


def cmd_run(args) -> int:
    from acdc_bench.calibrate import describe
    from acdc_bench.train import train
    from acdc_bench.tracking import Tracker

    suite = _suite(args)
    out = Path(args.out) if args.out else Path("runs") / suite["suite"]
    config = _budgeted_config(args, suite, out)
    while True:  # a matched STR run is a calibration chain: each finished run may call for the next
        tracker = Tracker(enabled=args.wandb or bool(suite.get("wandb")))
        train(config, out, data_root=args.data_root, progress=not args.no_progress, tracker=tracker)
        following = _budgeted_config(args, suite, out)
        note = describe(following["budget"], following["train_steps"])
        if following["run_id"] == config["run_id"] or not note:
            return 0
        print(note, flush=True)
        config = following


def cmd_plan(args) -> int:
    from acdc_bench.calibrate import describe
    from acdc_bench.plan import plan

    suite = _suite(args)
    out = Path(args.out) if args.out else Path("runs") / suite["suite"]
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


def _plan_all(args, suite: dict, out: Path) -> int:
    """One line per method of the suite's reproduction: run length and estimated cost under the budget."""
    from acdc_bench.plan import plan

    reports = []
    for method in suite["reproduce"].get("methods") or ["dense", "acdc"]:
        args.method = method
        reports.append(plan(_budgeted_config(args, suite, out)))
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in reports], indent=2))
        return 0
    print(f"suite {suite['suite']}  sparsity {args.sparsity:g}  budget {args.budget or suite['budget']['mode']}")
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


def cmd_flops(args) -> int:
    import torch

    from acdc_bench.flops import inference_report, measure_layer_flops
    from acdc_bench.io import load_checkpoint
    from acdc_bench.models import build_model, model_spec
    from acdc_bench.sparsity import global_magnitude_masks, layer_densities, prunable_layers, weight_sparsity

    torch.manual_seed(args.seed)
    model = build_model(args.model)
    layers = prunable_layers(model)
    flops = measure_layer_flops(model, layers, model_spec(args.model).input_shape)
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
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


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "flops": cmd_flops}


def main(argv: list[str] | None = None) -> int:
    from acdc_bench import reporting_cli

    parser = build_parser()
    reporting_cli.add_commands(parser, COMMANDS)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"acdc-bench {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
