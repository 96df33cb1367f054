"""Matched training-FLOP budgets: the planner's solve (GMP, RigL) and the calibration chain (STR)."""

import json
import math
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from acdc_bench.budget.matching import resolve_budget
from acdc_bench.run.store import RunStore
from acdc_bench.budget.calibrate import MAX_LOG_STEP, Observation, broyden_jacobian, next_point, residual
from acdc_bench.config import ConfigError, load_suite, run_config

#: The chain tests start from STR's recipe, not from the calibrated point the suite ships.
RECIPE_START = ["budget.calibration.start={}"]
from acdc_bench.methods import get_method, make_config
from acdc_bench.report.results import drop_superseded, load_runs

from helpers import SHORT, needs_fashion



def write_result(out: Path, config, **values) -> None:
    """A finished run's result.json: a valid one (``acdc_bench.run.folder.validate_result``) built
    from ``config``, with ``values`` (what the budget code reads) on top."""
    folder = out / config.run_id
    folder.mkdir(parents=True, exist_ok=True)
    budget = {"reference_training_flops": None, "achieved_ratio": None, **config.budget.as_dict(),
              **values.pop("budget", {})}
    result = {"schema_version": 1, "run_id": config.run_id, "suite": config.suite, "dataset": config.dataset,
              "model": config.model, "method": config.method, "variant": config.variant,
              "distribution": "", "target_sparsity": config.sparsity, "actual_sparsity": config.sparsity,
              "layer_densities": {}, "top1": 80.0, "top1_dense": None, "training_flops": None,
              "dense_training_flops": None, "training_flops_multiplier": None, "inference_flops": None,
              "dense_inference_flops": None, "inference_flops_multiplier": None, "epochs": config.epochs,
              "seed": config.seed, "budget": budget, "wall_time_s": 1.0, "versions": {}}
    result.update(values)
    (folder / "result.json").write_text(json.dumps(result))


# =========================================================================== Broyden steps


class Synthetic:
    """A made-up method response, linear in (log steps, log knob) plus a curvature in log steps:
    r(x) = r_start + J (x - x_start) + c (x0 - x0_start)^2."""

    def __init__(self, jacobian, start, start_residual, curvature=0.0):
        self.jacobian, self.curvature = jacobian, curvature
        self.start = (math.log(start[0]), math.log(start[1]))
        self.start_residual = start_residual

    def observe(self, steps: int, knob: float, budget: float, target: float) -> Observation:
        dx = (math.log(steps) - self.start[0], math.log(knob) - self.start[1])
        r = [self.start_residual[i] + sum(self.jacobian[i][j] * dx[j] for j in range(2)) + self.curvature * dx[0] ** 2
             for i in range(2)]
        logit = r[1] + math.log(target / (1 - target))
        return Observation(steps, knob, budget * math.exp(r[0]), 1 / (1 + math.exp(-logit)))


def test_residual_is_zero_on_target_and_signed():
    obs = Observation(100, 1e-3, training_flops=2.0, sparsity=0.9)
    assert residual(obs, 2.0, 0.9) == pytest.approx((0.0, 0.0))
    over, sparser = residual(Observation(100, 1e-3, 4.0, 0.95), 2.0, 0.9)
    assert over == pytest.approx(math.log(2)) and sparser > 0


def test_exact_jacobian_lands_in_one_step():
    true = [[0.2, -1.1], [1.0, 2.0]]
    system = Synthetic(true, start=(4700, 4e-3), start_residual=(-0.66, -0.06))
    budget, target = 1e12, 0.9
    first = system.observe(4700, 4e-3, budget, target)
    steps, knob, predicted = next_point([first], budget, target, true)
    landed = system.observe(steps, knob, budget, target)
    assert landed.training_flops == pytest.approx(budget, rel=2e-4)  # steps are rounded to whole steps
    assert landed.sparsity == pytest.approx(target, abs=1e-4)
    assert predicted == pytest.approx(budget, rel=1e-9)


def test_broyden_corrects_a_wrong_guess_within_a_few_runs():
    true = [[0.3, -0.8], [1.4, 2.6]]
    guess = [[0.17, -1.14], [1.05, 1.99]]
    system = Synthetic(true, start=(4700, 5e-3), start_residual=(-0.9, -0.3), curvature=0.3)
    budget, target = 1e12, 0.95
    observations = [system.observe(4700, 5e-3, budget, target)]
    for _ in range(5):
        last = observations[-1]
        if abs(last.training_flops / budget - 1) <= 0.02 and abs(last.sparsity - target) <= 0.02:
            break
        steps, knob, _ = next_point(observations, budget, target, guess)
        observations.append(system.observe(steps, knob, budget, target))
    last = observations[-1]
    assert abs(last.training_flops / budget - 1) <= 0.02 and abs(last.sparsity - target) <= 0.02
    assert len(observations) <= 5


def test_broyden_update_satisfies_the_secant_condition():
    a = Observation(1000, 1e-3, 1.0, 0.8)
    b = Observation(2000, 2e-3, 3.0, 0.95)
    jacobian = broyden_jacobian([a, b], 2.0, 0.9, [[1.0, 0.0], [0.0, 1.0]])
    dx = [b.x[i] - a.x[i] for i in range(2)]
    dr = [residual(b, 2.0, 0.9)[i] - residual(a, 2.0, 0.9)[i] for i in range(2)]
    for i in range(2):
        assert jacobian[i][0] * dx[0] + jacobian[i][1] * dx[1] == pytest.approx(dr[i])


def test_a_step_moves_each_coordinate_at_most_a_factor_three():
    far = Observation(1000, 1e-3, training_flops=1e-6, sparsity=0.1)  # wildly off
    steps, knob, _ = next_point([far], 1.0, 0.9, [[1.0, 0.0], [0.0, 1.0]])
    assert steps == pytest.approx(3000, abs=1) and knob == pytest.approx(3e-3)
    assert math.log(3) == pytest.approx(MAX_LOG_STEP)


def test_singular_jacobian_is_a_clear_error():
    with pytest.raises(ValueError, match="singular"):
        next_point([Observation(10, 1.0, 1.0, 0.5)], 2.0, 0.9, [[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match="calibration_jacobian"):
        make_config(get_method("str"), {"calibration_jacobian": [[1.0, 2.0], [2.0, 4.0]]})
    with pytest.raises(ValueError, match="2x2"):
        make_config(get_method("str"), {"calibration_jacobian": [1.0, 2.0]})


# =========================================================================== the chain, from run folders


def test_str_calibration_value_round_trip():
    cls = get_method("str")
    options = {"s_init": -100.0, "lam": 1e-3, "targets": {0.9: {"s_init": -50.0, "lam": 4e-3}, 0.95: {"lam": 6e-3}}}
    assert cls.calibration_value(make_config(cls, options), 0.9) == 4e-3
    changed = cls.with_calibration_value(options, 0.9, 2.5e-3)
    config = make_config(cls, changed)
    assert config.resolve(0.9) == (-50.0, 2.5e-3)  # lam changed, sInit kept
    assert config.resolve(0.95) == (-100.0, 6e-3)  # other targets untouched
    assert options["targets"][0.9]["lam"] == 4e-3  # the suite's options are not modified


def test_budget_calibration_settings_are_validated():
    with pytest.raises(ConfigError, match="max_runs"):
        load_suite("fashion-mnist", ["budget.calibration.max_runs=0"])
    with pytest.raises(ConfigError, match="budget.calibration"):
        load_suite("fashion-mnist", ["budget.calibration.tolerance=0.1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_suite("fashion-mnist", ["budget.referense=gmp"])


def test_str_chain_is_rederived_from_the_finished_runs(tmp_path):
    suite = load_suite("fashion-mnist", RECIPE_START + ["budget.calibration.max_runs=3"])
    acdc = run_config(suite, "acdc", 0.9, 0, budget={"mode": "paper", "reference_training_flops": None})
    budget = 1.0e12
    write_result(tmp_path, acdc, training_flops=budget, actual_sparsity=0.9)

    first = resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    calibration = first.budget.calibration
    assert calibration["iteration"] == 0 and calibration["previous_run"] is None
    assert calibration["option"] == "lam" and calibration["value"] == 0.004  # the suite's recipe
    assert first.budget.reference_training_flops == budget
    assert resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path)).run_id == first.run_id

    # STR spent half the budget and ended a little under the target: the next run is longer, lam smaller.
    write_result(tmp_path, first, training_flops=0.5 * budget, actual_sparsity=0.89)
    second = resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    calibration = second.budget.calibration
    assert calibration["iteration"] == 1 and calibration["previous_run"] == first.run_id
    assert second.train_steps > first.train_steps and calibration["value"] < 0.004
    assert second.epochs == math.ceil(second.train_steps / 235)  # 60,000 / 256 steps an epoch
    expected_steps, expected_lam, expected_flops = next_point(
        [Observation(first.train_steps, 0.004, 0.5 * budget, 0.89)], budget, 0.9,
        get_method("str").calibration_jacobian(make_config(get_method("str"), suite.methods["str"])),
        min_steps=235)
    assert (second.train_steps, calibration["value"]) == (expected_steps, pytest.approx(expected_lam))
    assert second.budget.estimated_training_flops == pytest.approx(expected_flops)
    assert second.method_config.targets[0.9]["lam"] == pytest.approx(expected_lam)

    # Within both tolerances: the chain stops at that run (the same config is returned again).
    write_result(tmp_path, second, training_flops=1.015 * budget, actual_sparsity=0.885)
    assert resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path)).run_id != second.run_id  # 1.5 pp off
    write_result(tmp_path, second, training_flops=1.015 * budget, actual_sparsity=0.896)
    assert resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path)).run_id == second.run_id


def test_str_chain_stops_after_max_runs(tmp_path):
    suite = load_suite("fashion-mnist", RECIPE_START + ["budget.calibration.max_runs=2"])
    acdc = run_config(suite, "acdc", 0.95, 0, budget={"mode": "paper", "reference_training_flops": None})
    write_result(tmp_path, acdc, training_flops=1e12, actual_sparsity=0.95)
    first = resolve_budget(suite, "str", 0.95, 0, "matched", store=RunStore(tmp_path))
    write_result(tmp_path, first, training_flops=0.4e12, actual_sparsity=0.94)
    second = resolve_budget(suite, "str", 0.95, 0, "matched", store=RunStore(tmp_path))
    write_result(tmp_path, second, training_flops=0.9e12, actual_sparsity=0.99)  # still off
    assert resolve_budget(suite, "str", 0.95, 0, "matched", store=RunStore(tmp_path)).run_id == second.run_id


def test_gmp_and_rigl_are_not_calibrated():
    suite = load_suite("fashion-mnist", RECIPE_START)
    for method in ("gmp", "rigl"):
        config = resolve_budget(suite, method, 0.9, 0, "matched", store=None)
        assert config.budget.calibration is None
        assert config.budget.estimated_ratio == pytest.approx(1.0, abs=0.02)


def test_drop_superseded_keeps_the_last_run_of_each_chain():
    rows = [
        {"run_id": "str-0", "method": "str", "budget_calibration_iteration": 0, "seed": 0},
        {"run_id": "str-1", "method": "str", "budget_calibration_iteration": 1, "seed": 0},
        {"run_id": "str-seed1", "method": "str", "budget_calibration_iteration": 0, "seed": 1},
        {"run_id": "str-95", "method": "str", "budget_calibration_iteration": 0, "seed": 0, "target_sparsity": 0.95},
        {"run_id": "gmp", "method": "gmp", "budget_calibration_iteration": None, "seed": 0},
        {"run_id": "str-2-running", "method": "str", "budget_calibration_iteration": 2, "seed": 0, "status": "incomplete"},
    ]
    runs = pd.DataFrame([{"suite": "s", "target_sparsity": 0.9, "budget_mode": "matched", "status": "finished", **row}
                         for row in rows])
    kept = drop_superseded(runs)["run_id"].tolist()
    assert kept == ["str-1", "str-seed1", "str-95", "gmp", "str-2-running"]


# =========================================================================== real runs


@needs_fashion
def test_matched_runs_measure_within_two_percent_of_the_acdc_run(tmp_path, one_thread):
    """GMP and RigL through the real loop: the solved length spends the AC/DC run's measured FLOPs."""
    from acdc_bench.run.loop import train

    suite = load_suite("fashion-mnist", RECIPE_START + SHORT + ["methods.rigl.update_interval=2"])
    quiet = dict(progress=False, log=lambda *a: None)
    acdc = resolve_budget(suite, "acdc", 0.9, 0, "matched", store=RunStore(tmp_path))
    acdc_result = train(acdc, tmp_path, **quiet)
    for method in ("gmp", "rigl"):
        config = resolve_budget(suite, method, 0.9, 0, "matched", store=RunStore(tmp_path))
        assert config.budget.reference_training_flops == acdc_result["training_flops"]
        assert config.budget.reference_source == f"measured by run {acdc.run_id}"
        result = train(config, tmp_path, **quiet)
        assert result["budget"]["mode"] == "matched"
        assert result["budget"]["achieved_ratio"] == pytest.approx(result["training_flops"] / acdc_result["training_flops"])
        assert abs(result["budget"]["achieved_ratio"] - 1) <= 0.02, (method, result["budget"])


@needs_fashion
def test_reproduce_runs_the_str_chain_and_reports_its_last_run(tmp_path, one_thread):
    """A two-run chain through run_local; the comparison table holds only the chain's last run."""
    from acdc_bench.report.compare import compare_table, format_compare_markdown
    from acdc_bench.run.launch import Launch, plan_runs, run_local
    from acdc_bench.report.results import load_runs

    # 4 epochs of STR do not reach 90%: the sparsity check is opened, the chain then runs on the FLOPs
    suite = load_suite("fashion-mnist", RECIPE_START + SHORT + ["budget.calibration.max_runs=2",
                                                               "budget.calibration.sparsity_tolerance=0.95"])
    waves = plan_runs(suite, methods=["acdc", "str"], sparsities=[0.9], seeds=[0])
    args = Launch(progress=False)
    run_local(suite, waves, tmp_path, args)
    runs = load_runs(tmp_path)
    chain = runs[runs["method"] == "str"].sort_values("budget_calibration_iteration")
    assert chain["budget_calibration_iteration"].tolist() == [0, 1]  # 4 epochs of STR do not hit 90%
    assert chain["budget_calibration_previous_run"].iloc[1] == chain["run_id"].iloc[0]
    assert chain["train_steps"].iloc[1] != chain["train_steps"].iloc[0]
    assert chain["budget_calibration_within_tolerance"].notna().all()
    table = compare_table(runs, None)
    assert table.loc[table["method"] == "str", "run_ids"].tolist() == [chain["run_id"].iloc[1]]
    note = table.loc[table["method"] == "str", "calibration"].iloc[0]
    within = bool(chain["budget_calibration_within_tolerance"].iloc[1])
    assert note.startswith("seed 0: lam=") and "run 2 of at most 2" in note
    assert ("not accepted" in note) == (not within)
    assert table.loc[table["method"] == "acdc", "calibration"].tolist() == [""]
    assert "## Budget calibration" in format_compare_markdown(table)
    # A second invocation finds the whole chain finished and trains nothing.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/result.json")}
    run_local(suite, waves, tmp_path, args)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/result.json")} == before


@needs_fashion
def test_a_chain_whose_last_run_misses_the_target_is_an_error(tmp_path, one_thread):
    """A calibration run with runs left is a step of its chain; the last one allowed must hit the target."""
    from acdc_bench.run.launch import Launch, plan_runs, run_local
    from acdc_bench.run.loop import TargetMissed

    suite = load_suite("fashion-mnist", RECIPE_START + SHORT + ["budget.calibration.max_runs=1"])
    waves = plan_runs(suite, methods=["acdc", "str"], sparsities=[0.9], seeds=[0])
    with pytest.raises(TargetMissed, match="str promises 0.9000"):
        run_local(suite, waves, tmp_path, Launch(progress=False))
    runs = load_runs(tmp_path).set_index("method")
    assert runs.loc["acdc", "status"] == "finished" and runs.loc["str", "status"] == "failed"


def test_a_corrupt_chain_result_is_a_clear_error(tmp_path):
    suite = load_suite("fashion-mnist", RECIPE_START)
    acdc = run_config(suite, "acdc", 0.9, 0, budget={"mode": "paper", "reference_training_flops": None})
    write_result(tmp_path, acdc, training_flops=1e12, actual_sparsity=0.9)
    first = resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    write_result(tmp_path, first, top1=80.0)  # no training_flops
    with pytest.raises(ValueError, match="delete that run folder"):
        resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))


class InlineExecutor:
    """A stand-in for a submitit executor: runs each job in this process when it is submitted."""

    def __init__(self, run: bool = True):
        self.run, self.submitted = run, []

    def submit(self, job):
        self.submitted.append(job.config["run_id"])
        outcome = job() if self.run else None

        class Job:
            job_id = str(len(self.submitted))
            paths = Namespace(folder="inline")

            def results(self):
                return [outcome]

        return Job()


@needs_fashion
def test_cluster_launcher_runs_the_str_chain_wave_by_wave(tmp_path, one_thread, monkeypatch):
    from acdc_bench.run import launch

    suite = load_suite("fashion-mnist", RECIPE_START + SHORT + ["budget.calibration.max_runs=2",
                                                               "budget.calibration.sparsity_tolerance=0.95"])
    waves = launch.plan_runs(suite, methods=["acdc", "str"], sparsities=[0.9], seeds=[0])
    executor = InlineExecutor()
    monkeypatch.setattr(launch, "_executor", lambda *a: executor)
    launch.run_submitit(suite, waves, tmp_path, launch.Launch())
    assert executor.submitted[0].startswith("acdc-") and len(executor.submitted) == 3  # AC/DC, then 2 STR runs
    assert all((tmp_path / run_id / "result.json").exists() for run_id in executor.submitted)


def test_cluster_launcher_stops_when_a_job_writes_no_result(tmp_path, monkeypatch):
    from acdc_bench.run import launch

    suite = load_suite("fashion-mnist", RECIPE_START + SHORT)
    monkeypatch.setattr(launch, "_executor", lambda *a: InlineExecutor(run=False))
    with pytest.raises(RuntimeError, match="no result.json"):
        launch.run_submitit(suite, launch.plan_runs(suite, methods=["acdc"], sparsities=[0.9], seeds=[0]), tmp_path,
                            launch.Launch())


def test_a_zero_calibration_option_is_a_clear_error():
    suite = load_suite("fashion-mnist", RECIPE_START + ["methods.str.targets={}", "methods.str.lam=0"])
    with pytest.raises(ValueError, match="must be positive"):
        resolve_budget(suite, "str", 0.9, 0, "matched", store=None)


def _finished_acdc_runs(tmp_path, suite, budget=1.0e12):
    for seed in (0, 1):
        acdc = run_config(suite, "acdc", 0.9, seed, budget={"mode": "paper", "reference_training_flops": None})
        write_result(tmp_path, acdc, training_flops=budget, actual_sparsity=0.9)


def _accepted_seed_zero_chain(tmp_path, suite, budget=1.0e12):
    """Seed 0's chain in ``tmp_path``: run 0 (the recipe) missed, run 1 was accepted; returns run 1's config."""
    _finished_acdc_runs(tmp_path, suite, budget)
    first = resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    write_result(tmp_path, first, training_flops=0.5 * budget, actual_sparsity=0.89,
                 budget={"calibration": {"within_tolerance": False}})
    second = resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    write_result(tmp_path, second, training_flops=1.01 * budget, actual_sparsity=0.899,
                 budget={"calibration": {"within_tolerance": True}})
    return second


def test_another_seed_starts_at_the_accepted_run_of_the_first(tmp_path):
    suite = load_suite("fashion-mnist", RECIPE_START)
    accepted = _accepted_seed_zero_chain(tmp_path, suite)
    seed1 = resolve_budget(suite, "str", 0.9, 1, "matched", store=RunStore(tmp_path))
    calibration = seed1.budget.calibration
    assert calibration["iteration"] == 0 and calibration["started_from"] == accepted.run_id
    assert seed1.train_steps == accepted.train_steps
    assert calibration["value"] == accepted.budget.calibration["value"]
    assert seed1.method_config.targets[0.9]["lam"] == calibration["value"]
    assert seed1.seed == 1 and seed1.run_id != accepted.run_id
    # Without warm starts (or for seed 0 itself) the chain is the recipe's.
    cold = resolve_budget(suite, "str", 0.9, 1, "matched", store=RunStore(tmp_path), warm_start=False)
    assert cold.budget.calibration["started_from"] is None and cold.train_steps != accepted.train_steps
    assert resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path)).run_id == accepted.run_id


def test_a_chain_begun_from_the_recipe_is_continued(tmp_path):
    """Seed 1's recipe run started before seed 0's chain was accepted: seed 1 keeps its own chain."""
    suite = load_suite("fashion-mnist", RECIPE_START)
    _finished_acdc_runs(tmp_path, suite)
    cold = resolve_budget(suite, "str", 0.9, 1, "matched", store=RunStore(tmp_path), warm_start=False)
    (tmp_path / cold.run_id).mkdir(parents=True)  # started (interrupted), not finished
    _accepted_seed_zero_chain(tmp_path, suite)
    assert resolve_budget(suite, "str", 0.9, 1, "matched", store=RunStore(tmp_path)).run_id == cold.run_id


def test_a_chain_starts_at_the_calibrated_point_the_suite_ships(tmp_path):
    """fashion-mnist ships STR's calibrated (steps, lambda): run 1 is there; accepted if within tolerance."""
    suite = load_suite("fashion-mnist")
    acdc = run_config(suite, "acdc", 0.9, 0, budget={"mode": "paper", "reference_training_flops": None})
    write_result(tmp_path, acdc, training_flops=1.0e12, actual_sparsity=0.9)
    first = resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    calibration = first.budget.calibration
    shipped = suite.budget["calibration"]["start"]["str"][0.9]  # seed 0's: the target's own point
    assert (first.train_steps, calibration["value"]) == (shipped["steps"], shipped["value"])
    assert calibration["started_from"] == "suite budget.calibration.start" and calibration["iteration"] == 0
    assert first.method_config.targets[0.9]["lam"] == shipped["value"]
    write_result(tmp_path, first, training_flops=1.01e12, actual_sparsity=0.9003)  # within 2% and 0.5 pp
    again = resolve_budget(suite, "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    assert again.run_id == first.run_id  # accepted: no second run
    # another length, another budget: the shipped point does not apply, the recipe starts the chain
    short = resolve_budget(load_suite("fashion-mnist", SHORT), "str", 0.9, 0, "matched", store=RunStore(tmp_path))
    assert short.budget.calibration["started_from"] is None and short.budget.calibration["value"] == 0.004
    with pytest.raises(ConfigError, match="budget.calibration.start.str.0.9 must be"):
        load_suite("fashion-mnist", ["budget.calibration.start={str: {0.9: {steps: 0, value: 1}}}"])


def test_a_seed_of_its_own_starts_at_its_own_shipped_point(tmp_path):
    """``start.<method>.<sparsity>.seeds`` holds further seeds' accepted points; other seeds take the
    target's own point."""
    shipped = ("budget.calibration.start={when: {epochs: 20}, str: {0.9: {steps: 11390, value: 0.00263, "
               "seeds: {1: {steps: 10000, value: 0.0031}}}}}")
    suite = load_suite("fashion-mnist", [shipped])
    for seed in (0, 1, 2):
        acdc = run_config(suite, "acdc", 0.9, seed, budget={"mode": "paper", "reference_training_flops": None})
        write_result(tmp_path, acdc, training_flops=1.0e12, actual_sparsity=0.9)
    points = {}
    for seed in (0, 1, 2):
        config = resolve_budget(suite, "str", 0.9, seed, "matched", store=RunStore(tmp_path))
        calibration = config.budget.calibration
        assert calibration["started_from"] == "suite budget.calibration.start" and calibration["iteration"] == 0
        points[seed] = (config.train_steps, calibration["value"], config.method_config.targets[0.9]["lam"])
    assert points == {0: (11390, 0.00263, 0.00263), 1: (10000, 0.0031, 0.0031), 2: (11390, 0.00263, 0.00263)}
    # the seed's own point is accepted like the target's: no second run
    seed1 = resolve_budget(suite, "str", 0.9, 1, "matched", store=RunStore(tmp_path))
    write_result(tmp_path, seed1, training_flops=0.99e12, actual_sparsity=0.8970)
    assert resolve_budget(suite, "str", 0.9, 1, "matched", store=RunStore(tmp_path)).run_id == seed1.run_id
    for bad, message in [("{1: {steps: 10000}}", r"start.str.0.9.seeds.1 must be"),
                         ("{-1: {steps: 10000, value: 0.003}}", "seeds must be integers >= 0"),
                         ("[1, 2]", r"start.str.0.9.seeds must map seed")]:
        with pytest.raises(ConfigError, match=message):
            load_suite("fashion-mnist", [f"budget.calibration.start={{str: {{0.9: {{steps: 1, value: 1, seeds: {bad}}}}}}}"])


def test_two_chains_of_one_cell_keep_the_last_finished_end(tmp_path, caplog):
    """A suite's shipped start changed after a chain ran: the folder holds the old chain (iterations
    0-1) and the new one (iteration 0, finished later). The tables use the new chain's run, once."""
    import os

    rows = [("old-0", 0, None, 100), ("old-1", 1, "old-0", 200), ("new-0", 0, None, 300),
            ("other-seed", 0, None, 50)]
    records = []
    for run_id, iteration, previous, finished_at in rows:
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "result.json").write_text("{}")
        os.utime(tmp_path / run_id / "result.json", (finished_at, finished_at))
        records.append({"suite": "s", "method": "str", "target_sparsity": 0.9, "budget_mode": "matched",
                        "status": "finished", "seed": 2 if run_id == "other-seed" else 1, "run_id": run_id,
                        "run_dir": str(tmp_path / run_id), "budget_calibration_iteration": iteration,
                        "budget_calibration_previous_run": previous})
    runs = pd.DataFrame(records)
    with caplog.at_level("WARNING"):
        assert drop_superseded(runs)["run_id"].tolist() == ["new-0", "other-seed"]
    assert "2 calibration chains of str 0.9 seed 1" in caplog.text and "using new-0" in caplog.text
    # the old chain finished last (copied back, say): its end wins, never both
    os.utime(tmp_path / "old-1" / "result.json", (400, 400))
    assert drop_superseded(runs)["run_id"].tolist() == ["old-1", "other-seed"]
    # chains of two cells (matched to two suite lengths, say) are two chains: each keeps its end
    runs["cell"] = ["str-s0.9-a", "str-s0.9-a", "str-s0.9-b", "str-s0.9-a"]
    assert drop_superseded(runs)["run_id"].tolist() == ["old-1", "new-0", "other-seed"]


def test_run_chain_yields_each_unfinished_run_once_and_refuses_to_skip_one(tmp_path):
    """A plain run is one run, resolved once; a calibration chain goes on while resolving gives a new
    run; a run handed out but not trained is an error, never an endless loop."""
    from acdc_bench.budget.matching import run_chain

    store = RunStore(tmp_path)
    finished: set[str] = set()
    store.finished = lambda run_id: run_id in finished  # what a trained run leaves

    def run(run_id, calibration=None):  # what run_chain reads of a RunConfig
        return SimpleNamespace(run_id=run_id, budget=SimpleNamespace(calibration=calibration))

    chain = iter(["a", "b", "b"])  # the resolver's answers: run a, then its chain's next run b, then b again
    last = {"id": None}
    asked = []

    def resolve():
        last["id"] = next(chain, last["id"])
        asked.append(last["id"])
        return run(last["id"], calibration={"iteration": 0})

    trained = []
    for config in run_chain(resolve, store):
        trained.append(config.run_id)
        finished.add(config.run_id)
    assert trained == ["a", "b"] and asked == ["a", "b", "b"]
    asked.clear()
    plain = run("p")
    assert [c.run_id for c in run_chain(lambda: asked.append("p") or plain, store) if not finished.add("p")] == ["p"]
    assert asked == ["p"]  # a plain run is not resolved again once trained
    finished.clear()
    with pytest.raises(RuntimeError, match="run c was handed out to train but has not finished"):
        for _ in run_chain(lambda: run("c"), store):
            pass
    finished.add("d")
    assert list(run_chain(lambda: run("d"), store)) == []


def test_the_run_store_reads_what_the_run_folders_hold(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert store.run_ids() == [] and store.result("x") is None and not store.exists("x")
    (tmp_path / "runs" / "b-run").mkdir(parents=True)
    (tmp_path / "runs" / "a-run").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("not a run")
    assert store.run_ids() == ["a-run", "b-run"] and store.exists("a-run") and not store.finished("a-run")
    assert store.folder("a-run") == tmp_path / "runs" / "a-run"
    (tmp_path / "runs" / "a-run" / "result.json").write_text("{broken")
    from acdc_bench.run.folder import CorruptResult

    with pytest.raises(CorruptResult):
        store.result("a-run")
