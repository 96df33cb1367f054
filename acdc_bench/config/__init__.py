"""Suites and resolved runs: what a run computes, declared once.

- :mod:`acdc_bench.config.suite`: a suite file loaded into a typed :class:`Suite` (its keys, the
  user's ``--set`` overrides, validation), and :func:`run_config`, which resolves one run of it;
- :mod:`acdc_bench.config.run`: :class:`RunConfig`, one resolved run, frozen, and its id;
- :mod:`acdc_bench.config.cells`: a paper suite's cells (``reproduce.variants``);
- :mod:`acdc_bench.config.recipe`: a recipe's optimizer and initialisation, built on a model
  (imports torch; not re-exported here, so that reading a suite does not start torch).
"""

from acdc_bench.config.run import Budget, Length, LrSchedule, Optimizer, RunConfig
from acdc_bench.config.suite import (
    CALIBRATION_DEFAULTS,
    RECIPE_KEYS,
    SUITES_DIR,
    ConfigError,
    Suite,
    apply_overrides,
    cell_id,
    check_sparsity,
    dump_yaml,
    load_suite,
    method_options_config,
    run_budget,
    run_config,
    suite_names,
    suite_numerics,
    validate_method_recipe,
)

__all__ = [
    "Budget", "CALIBRATION_DEFAULTS", "ConfigError", "Length", "LrSchedule", "Optimizer", "RECIPE_KEYS", "RunConfig",
    "SUITES_DIR", "Suite", "apply_overrides", "cell_id", "check_sparsity", "dump_yaml", "load_suite",
    "method_options_config", "run_budget", "run_config", "suite_names", "suite_numerics", "validate_method_recipe",
]
