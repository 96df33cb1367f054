"""Training-FLOP budgets: ``paper`` (each method's own recipe length) or ``matched`` to a reference run.

Under ``budget: matched`` a method's run length (in optimizer steps; with it its lr,
pruning and update schedules) is solved so that its estimated training FLOPs equal
the reference's: the finished reference run's measured FLOPs when it exists in the
output folder, else the reference's own estimate. The run records the budget it ran
under, and its result the achieved ratio of measured FLOPs to that budget.

Methods whose cost and final sparsity emerge from training (``calibration_option``
set: STR) are calibrated by running instead (:mod:`acdc_bench.budget.calibrate`): the
config returned is the chain's next run, or its accepted (or last) finished run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from acdc_bench.config import ConfigError, Suite, method_options_config, run_budget, run_config
from acdc_bench.config.cells import RunSpec
from acdc_bench.config.run import RunConfig

def run_chain(resolve: Callable[[], RunConfig], store, first: RunConfig | None = None) -> Iterator[RunConfig]:
    """The runs one planned run takes, in order, for the caller to train: ``resolve()``'s config
    (``first`` in its place, resolved once by the caller) while it has not finished in ``store``. A
    plain run is one run, resolved once. A calibration chain (a matched STR run: its budget holds a
    ``calibration``) is resolved again after each of its runs, and goes on to the next run until one
    is accepted or ``max_runs`` are spent. Every runner (the ``run`` command, the local, parallel
    and cluster ones) walks a chain through this one generator."""
    config = first if first is not None else resolve()
    while not store.finished(config.run_id):
        yield config
        if not store.finished(config.run_id):
            raise RuntimeError(f"run {config.run_id} was handed out to train but has not finished; train each "
                               f"run the chain gives before asking for the next")
        if not config.budget.calibration:
            return
        config = resolve()


#: Methods that always run their own length: the dense baseline is the unit of every multiplier.
UNMATCHED = {"dense"}


def reference_training_flops(suite: Suite, sparsity: float, seed: int, store) -> tuple[float, str]:
    """The budget: a finished reference run's measured FLOPs (read through ``store``, a
    :class:`acdc_bench.run.store.RunStore` or None), else the reference's estimate."""
    from acdc_bench.budget.plan import Planner

    reference = suite.reference
    config = run_config(suite, reference, sparsity, seed, budget={"mode": "paper", "reference_training_flops": None})
    if store is not None:
        finished = store.result(config.run_id)
        if finished is not None:
            return float(finished["training_flops"]), f"measured by run {config.run_id}"
    try:
        estimate = Planner(config).estimated_training_flops()
    except ValueError as error:  # the reference's own schedule does not fit this run
        raise ConfigError(f"{reference} is this suite's budget reference (budget.reference) and its run cannot be "
                          f"planned, so no matched run can: {error}") from error
    return estimate, f"estimated for {reference} (run {config.run_id} not found)"


def resolve_budget(
    suite: Suite,
    method: str,
    sparsity: float,
    seed: int,
    mode: str,
    epochs: int | None = None,
    store=None,
    warm_start: bool = True,
    variant: str | None = None,
) -> RunConfig:
    """The run config of ``method`` under the budget ``mode`` (``paper`` or ``matched``).

    ``store``: the runs already there (a :class:`acdc_bench.run.store.RunStore`, or None: none),
    whose finished reference and calibration runs a matched budget reads. ``warm_start=False``
    keeps a calibration chain from starting at another seed's accepted run. ``variant``: a
    paper-suite cell's tag. The run is resolved once from the suite; a matched budget refines
    it once, to its solved length (and a calibration chain, to each run's option value)."""
    from acdc_bench.budget.plan import Planner, solve_matched_steps

    reference = suite.reference
    if mode == "matched" and epochs is not None and method not in UNMATCHED and method != reference:
        raise ConfigError(
            f"--epochs {epochs} with a matched budget: a matched {method} run's length is solved from "
            f"{reference}'s training FLOPs, so --epochs would be ignored. Train {epochs} epoch(s) of {method}'s "
            f"own schedule with --budget paper, or shorten the whole suite with --set epochs={epochs} (the "
            f"budget then matches the shorter {reference} run)")
    if mode == "paper" or method in UNMATCHED or method == reference or epochs is not None:
        note = None if mode == "paper" else ("explicit --epochs" if epochs is not None else f"{method} runs its own length")
        return run_config(suite, method, sparsity, seed, epochs=epochs, variant=variant,
                          budget={"mode": "paper", "reference_training_flops": None, "note": note})
    budget_flops, source = reference_training_flops(suite, sparsity, seed, store)
    # The shared recipe (batch size included) a matched run trains on, not the method's own.
    base = run_config(suite, method, sparsity, seed, budget={"mode": "matched"}, variant=variant)
    planner = Planner(base)
    steps, estimate = solve_matched_steps(planner, budget_flops)
    budget = {
        "mode": "matched",
        "reference": reference,
        "reference_training_flops": budget_flops,
        "reference_source": source,
        "estimated_training_flops": estimate,
        "estimated_ratio": estimate / budget_flops,
    }
    if planner.method_cls.calibration_option:
        return _calibrated(suite, base, budget, planner, steps, store, warm_start)
    return base.refined(train_steps=steps, steps_per_epoch=planner.steps_per_epoch, budget=run_budget(suite, budget))


def _accepted_elsewhere(suite: Suite, base: RunConfig, store) -> RunConfig | None:
    """The accepted run of another seed's calibration chain (lowest seed first) in ``store``, if any
    (``base``: this seed's run resolved from the suite).

    Only chains that started from the recipe count (each is re-derived with ``warm_start=False``),
    so the answer does not depend on the order in which warm-started chains ran.
    """
    from acdc_bench.config.run import run_id_seed

    method, sparsity, seed = base.method, base.sparsity, base.seed
    found = (run_id_seed(name, method, sparsity) for name in store.run_ids())
    seeds = sorted({other for other in found if other is not None} - {int(seed)})
    for other in seeds:
        config = resolve_budget(suite, method, sparsity, other, "matched", store=store, warm_start=False,
                                variant=base.variant)
        result = store.result(config.run_id)
        if result and ((result.get("budget") or {}).get("calibration") or {}).get("within_tolerance"):
            return config
    return None


#: The suite fields a shipped calibration point was derived under (``budget.calibration.start.when``).
START_CONTEXT = ("epochs", "batch_size", "train_subset", "dataset", "model")


def _shipped_start(settings: dict, method: str, sparsity: float, seed: int, suite: Suite) -> tuple[int, float] | None:
    """(steps, option value) of ``budget.calibration.start.<method>.<sparsity>``, if the suite has it
    and the run's suite still has the fields it was derived under (``when``): a ``--set epochs=4``
    or a ``train_subset`` makes another budget, where the shipped point would be far off.

    The entry's ``seeds: {seed: {steps, value}}`` holds the accepted points of further seeds'
    chains (STR's final sparsity at one point differs between seeds by several times the
    tolerance); a seed not listed starts at the entry's own ``steps`` and ``value``."""
    start = settings.get("start") or {}
    when = start.get("when") or {}
    keys = suite.as_keys()
    if any(keys.get(key) != value for key, value in when.items()):
        return None
    from acdc_bench.methods import target_entry

    entry = target_entry(start.get(method), sparsity)
    if entry is None:
        return None
    entry = {int(k): v for k, v in (entry.get("seeds") or {}).items()}.get(int(seed), entry)
    return int(entry["steps"]), float(entry["value"])


def _calibrated(suite: Suite, base: RunConfig, budget: dict, planner, steps: int, store,
                warm_start: bool = True) -> RunConfig:
    """The calibration chain of an emergent-cost method, re-derived from the runs in ``store``.

    Run 0 is the suite's recipe at the planner's length ``steps`` or, when another seed's
    chain has been accepted and this seed's recipe run was never started, that accepted
    run's (steps, option value); each finished run that misses the tolerances proposes the
    next. Returns the first run not finished yet, else the accepted run, else the last of
    ``max_runs``. Each is ``base`` (the run resolved from the suite under a matched budget)
    refined to its length and option value.
    """
    from acdc_bench.budget.calibrate import Observation, next_point, within_tolerance
    from acdc_bench.methods import make_config
    from acdc_bench.budget.plan import MATCH_TOLERANCE

    method, sparsity, seed = base.method, base.sparsity, base.seed
    settings = suite.calibration
    method_cls = planner.method_cls
    options = suite.method_options(method)
    method_config = make_config(method_cls, options)
    jacobian = method_cls.calibration_jacobian(method_config)
    value = method_cls.calibration_value(method_config, sparsity)
    if not value > 0:
        raise ValueError(f"methods.{method}: a matched budget calibrates {method_cls.calibration_option} on a log "
                         f"scale, so it must be positive at sparsity {sparsity:g} (got {value}); set it, or use "
                         f"--budget paper")
    budget_flops = budget["reference_training_flops"]
    observations: list[Observation] = []
    estimate = budget["estimated_training_flops"]
    started_from = None

    def config_at(steps: int, run_options: dict, budget: dict) -> RunConfig:
        return base.refined(train_steps=steps, steps_per_epoch=planner.steps_per_epoch, budget=run_budget(suite, budget),
                            method_config=method_options_config(suite, method, run_options, base.batch_size))

    shipped = _shipped_start(settings, method, sparsity, seed, suite)
    if shipped is not None:  # the suite ships this cell's calibrated point: the chain starts there
        steps, value = shipped
        estimate, started_from = budget_flops, "suite budget.calibration.start"
    elif warm_start and store is not None and store.run_ids():
        recipe = config_at(steps, options, {"mode": "matched"})
        donor = None if store.exists(recipe.run_id) else _accepted_elsewhere(suite, base, store)
        if donor is not None:
            steps, value = donor.train_steps, donor.budget.calibration["value"]
            estimate, started_from = budget_flops, donor.run_id
    for iteration in range(settings["max_runs"]):
        step_budget = dict(budget, estimated_training_flops=estimate, estimated_ratio=estimate / budget_flops)
        step_budget["calibration"] = {
            "option": method_cls.calibration_option,
            "value": value,
            "iteration": iteration,
            "max_runs": settings["max_runs"],
            "sparsity_tolerance": settings["sparsity_tolerance"],
            "flops_tolerance": MATCH_TOLERANCE,
            "previous_run": observations[-1].run_id if observations else None,
            "started_from": started_from,
        }
        recipe_point = iteration == 0 and started_from is None
        run_options = options if recipe_point else method_cls.with_calibration_value(options, sparsity, value)
        config = config_at(steps, run_options, step_budget)
        result = store.result(config.run_id) if store is not None else None
        if result is None:
            return config
        try:
            measured = float(result["training_flops"]), float(result["actual_sparsity"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the result of run {config.run_id} in {store.root} has no usable training_flops and "
                             f"actual_sparsity, so the {method} budget calibration cannot go on; delete that run "
                             f"folder to run it again") from None
        observation = Observation(steps, value, *measured, config.run_id)
        if within_tolerance(observation, budget_flops, sparsity, MATCH_TOLERANCE, settings["sparsity_tolerance"]):
            return config
        observations.append(observation)
        if iteration + 1 < settings["max_runs"]:
            steps, value, estimate = next_point(observations, budget_flops, sparsity, jacobian,
                                                min_steps=planner.steps_per_epoch)
    return config


def spec_config(suite: Suite, spec: RunSpec, store=None) -> RunConfig:
    """The run config of one :class:`RunSpec` under its budget (``store``:
    the runs already there, a :class:`acdc_bench.run.store.RunStore` or None).

    A spec without a cell (a plain ``reproduce.methods`` run) gets exactly what
    :func:`acdc_bench.budget.matching.resolve_budget` gives; a cell's run gets its options and
    recipe keys, and its variant tag.
    """
    return resolve_budget(suite.for_cell(spec.method, spec.options, spec.recipe), spec.method, spec.sparsity,
                          spec.seed, spec.budget, None, store, variant=spec.variant)
