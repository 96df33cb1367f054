"""``reproduce --dry-run``: every planned run with its cost, its protocol and the published row it
will be compared with, and every published row no run is compared with, and why. Nothing is
trained or written."""

from __future__ import annotations

import math

from acdc_bench.budget.matching import spec_config
from acdc_bench.config.cells import length_key, suite_cells
from acdc_bench.config import Suite


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def dry_run(suite: Suite, waves, store=None, reference=None) -> dict:
    """Every planned run with its estimated cost and published reference; nothing is trained or written.

    ``store``: the runs already there (a :class:`acdc_bench.run.store.RunStore`, or None), which a
    matched budget reads and the listing marks ``finished``. ``reference``: the published table
    (default: the shipped ``published.csv``). Per-layer FLOPs are measured once per model and
    layer set (:func:`acdc_bench.budget.plan._layer_flops`).
    """
    from acdc_bench.budget.plan import plan
    from acdc_bench.report.protocol import run_protocol
    from acdc_bench.report.compare import match_published, protocol_differences, protocol_summary
    from acdc_bench.report.results import load_reference

    reference = load_reference() if reference is None else reference
    cells = {cell["cell"]: cell for cell in suite_cells(suite)}
    rows, matched, places, other, protocols = [], set(), set(), {}, {}
    for number, wave in enumerate(waves):
        for spec in wave:
            config = spec_config(suite, spec, store)
            report = plan(config)
            # A calibrated (STR, matched) run's estimate is the calibration model's, not the planning ramp's.
            estimate = config.budget.estimated_training_flops or report["estimated_training_flops"]
            distribution = config.distribution
            protocol = run_protocol(config)
            protocols.setdefault(_point(config.dataset, config.model, config.method, config.sparsity,
                                        config.variant), []).append(protocol)
            match = match_published(reference, dataset=config.dataset, model=config.model,
                                    method=config.method, target_sparsity=config.sparsity,
                                    variant=config.variant, distribution=distribution, protocol=protocol)
            places.add((config.dataset, config.model))
            published = None
            if match is not None:
                differences = protocol_differences(protocol, match)
                if differences:
                    other.setdefault(match.name, "; ".join(differences))
                else:
                    matched.add(match.name)
                published = {"source_id": str(match["source_id"]), "top1": float(match["top1"]),
                             "status": str(match["status"]), "selection": str(match.get("selection", "unknown")),
                             "variant": _text(match["variant"]),
                             "distribution": _text(match["distribution"]),
                             "other_protocol": "; ".join(differences)}
                reported = match.get("reported_sparsity")
                if reported is not None and not (isinstance(reported, float) and math.isnan(reported)):
                    published["reported_sparsity"] = float(reported)
            cell = cells.get(spec.cell)
            rows.append({
                "wave": number,
                "cell": spec.cell or spec.method,
                "method": config.method,
                "variant": config.variant,
                "distribution": distribution,
                "sparsity": config.sparsity,
                "seed": config.seed,
                "epochs": int(report["epochs"]),
                "train_steps": int(report["train_steps"]),
                "budget": config.budget.mode,
                "run_id": config.run_id,
                "finished": store is not None and store.finished(config.run_id),
                "estimated_training_flops": float(estimate),
                "estimated_training_flops_multiplier": float(estimate) / float(report["dense_training_flops"]),
                "protocol": protocol_summary(protocol),
                "recipe": resolved_recipe(config),
                "published": published,
                "expected_published": cell["published"] if cell else None,
            })
    return {
        "suite": suite.name,
        "runs": rows,
        "unmatched_published": _unmatched(reference, places, matched, other,
                                          {row["method"] for row in rows}, protocols),
        "planned": len(rows),
        "with_published": sum(row["published"] is not None and not row["published"]["other_protocol"]
                              for row in rows),
        "estimated_training_flops_multiplier_total": sum(row["estimated_training_flops_multiplier"] for row in rows),
    }


def resolved_recipe(config) -> dict:
    """What a planned run will train with: its recipe resolved (the suite's keys, the method's recipe, the
    cell's and the target's keys and the user's ``--set`` applied) and its method options at its target."""
    plain = config.as_dict()
    return {"source": config.recipe_source, "family": config.recipe_family,
            **{key: plain[key] for key in ("optimizer", "lr_schedule", "label_smoothing", "batch_size", "epochs",
                                           "amp", "method_options")},
            "init": plain["init"] or "default"}


def recipe_text(recipe: dict) -> str:
    """One line for a resolved recipe: ``sgd lr 0.1 m 0.9 nesterov wd 0.0001 (not bias, bn); step x0.1 at
    [30, 70, 90], per step; ls 0.1; init tf-resnet; batch 256; 100 ep; fp32``."""
    optimizer, schedule = recipe["optimizer"], recipe["lr_schedule"]
    text = f"{optimizer['name']} lr {optimizer['lr']:g} m {optimizer['momentum']:g}"
    text += " nesterov" if optimizer.get("nesterov") else ""
    text += f" wd {optimizer['weight_decay']:g}"
    if optimizer.get("no_decay"):
        text += f" (not {', '.join(optimizer['no_decay'])})"
    shape = schedule["name"]
    if schedule.get("milestones"):
        shape += f" x{schedule['gamma']:g} at {list(schedule['milestones'])}"
    if schedule.get("warmup_epochs"):
        shape += f", {schedule['warmup_epochs']}-ep warm-up"
    if schedule.get("per_step"):
        shape += ", per step"
    precision = {"none": "fp32"}.get(recipe["amp"], recipe["amp"])
    text += (f"; {shape}; ls {recipe['label_smoothing']:g}; init {recipe['init']}; batch {recipe['batch_size']}; "
             f"{recipe['epochs']} ep; {precision}")
    options = recipe.get("method_options") or {}
    if options.get("unofficial"):
        picked = ", ".join(f"{key} {options[key]:g}" for key in ("lam", "s_init") if isinstance(options.get(key), float))
        text += f"; EXTRAPOLATED method values{' (' + picked + ')' if picked else ''}"
    return text


def _point(dataset: str, model: str, method: str, sparsity: float, variant: str) -> tuple:
    """A published row's or a planned run's place: names as published, the length word of the variant."""
    from acdc_bench.report.compare import display_name, name_key

    return (name_key(display_name("dataset", dataset)), name_key(display_name("model", model)),
            name_key(display_name("method", method)), round(float(sparsity), 6), length_key(variant))


def _unmatched(reference, places: set, matched: set, other: dict, methods: set, protocols: dict) -> list[dict]:
    """The published rows of the suite's data sets and models that no planned run is compared with, and why."""
    from acdc_bench.report.compare import display_name, name_key, protocol_differences

    keys = {(name_key(display_name("dataset", d)), name_key(display_name("model", m))) for d, m in places}
    ours = {name_key(display_name("method", method)) for method in methods}

    def point(row) -> tuple:
        return _point(row["dataset"], row["model"], row["method"], row["target_sparsity"], _text(row["variant"]))

    chosen = {point(reference.loc[index]): reference.loc[index, "source_id"] for index in matched}
    unmatched = []
    for index, row in reference.iterrows():
        if index in matched or (name_key(row["dataset"]), name_key(row["model"])) not in keys:
            continue
        no_sparsity = isinstance(row["target_sparsity"], float) and math.isnan(row["target_sparsity"])
        instead = None if no_sparsity else chosen.get(point(row))
        if instead:
            differences = min((protocol_differences(protocol, row) for protocol in protocols.get(point(row), [])),
                              key=len, default=[])
            instead = f"{instead} instead" + (f" (this row's protocol differs: {'; '.join(differences)})"
                                              if differences else "")
        why = ("an aggregator value tied to no checkpoint: listed, never compared" if row["status"] == "aggregator"
               else f"shown beside a planned run, not compared: other protocol: {other[index]}" if index in other
               else f"the planned run at this point is compared with {instead}" if instead
               else "the source gives no sparsity" if no_sparsity
               else "not reproduced here: the suite does not run this method"
               if name_key(row["method"]) not in ours
               else "no planned run of this method, sparsity and variant")
        unmatched.append({"source_id": row["source_id"], "method": row["method"], "variant": _text(row["variant"]),
                          "distribution": _text(row["distribution"]), "target_sparsity": row["target_sparsity"],
                          "top1": float(row["top1"]), "selection": row.get("selection", "unknown"), "why": why})
    return unmatched


def format_dry_run(report: dict) -> str:
    """The dry run as an aligned text table, one line per planned run."""
    header = ["cell", "method", "variant", "distribution", "sparsity", "seed", "epochs", "est. train FLOPs x",
              "protocol", "published (source_id, top-1)", "recipe"]
    lines = []
    for row in report["runs"]:
        published = row["published"]
        text = "-"
        if published:
            text = f"{published['source_id']} {published['top1']:.2f} ({published['status']}, {published['selection']} epoch)"
            if published.get("reported_sparsity") and abs(published["reported_sparsity"] - row["sparsity"]) > 1e-6:
                text += f", reported sparsity {published['reported_sparsity']:g}"
            if published.get("other_protocol"):
                text += f": OTHER PROTOCOL, not compared ({published['other_protocol']})"
        lines.append([row["cell"], row["method"], row["variant"] or "-", row["distribution"] or "-",
                      f"{row['sparsity']:g}", str(row["seed"]), str(row["epochs"]),
                      f"{row['estimated_training_flops_multiplier']:.3f}", row.get("protocol") or "-",
                      text + (" [finished]" if row["finished"] else ""), recipe_text(row["recipe"])])
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header] + lines]
    table.insert(1, "  ".join("-" * width for width in widths))
    title = (f"suite {report['suite']}: {report['planned']} planned runs, {report['with_published']} compared "
             f"with a published number of the same protocol; estimated training FLOPs {report['estimated_training_flops_multiplier_total']:.2f}x "
             f"one dense run in all (--dry-run: nothing trained, no run folder written)")
    unmatched = [f"  {u['source_id']} {u['method']} {u['variant'] or '-'} {u['distribution'] or '-'} "
                 f"{'-' if math.isnan(u['target_sparsity']) else format(u['target_sparsity'], 'g')}: top-1 {u['top1']:.2f} ({u['selection']} epoch): {u['why']}"
                 for u in report.get("unmatched_published", [])]
    if unmatched:
        unmatched.insert(0, f"published rows no planned run is compared with ({len(unmatched)}):")
    return "\n".join([title, *table, *unmatched])
