"""Sparse-training methods: the contract every method implements, the registry, dense and AC/DC.

The baselines (GMP, RigL, STR, SET) live in ``acdc_bench.baselines`` (the top-level
``baselines/`` folder of the repository) and use nothing but what this package exports.
"""

from acdc_bench.methods.base import (
    MaskedConfig,
    MaskedMethod,
    MethodConfig,
    NoConfig,
    SparsityMethod,
    same_target,
    target_entry,
    zero_momentum,
)
from acdc_bench.methods.schedule import MaskChange, Schedule
from acdc_bench.methods.registry import (
    find_method,
    get_method,
    load_plugins,
    make_config,
    method_names,
    register_method,
)

__all__ = [
    "MaskChange", "MaskedConfig", "MaskedMethod", "MethodConfig", "NoConfig", "Schedule", "SparsityMethod",
    "same_target", "target_entry", "zero_momentum",
    "find_method", "get_method", "load_plugins", "make_config", "method_names", "register_method",
]
