"""acdc_bench: AC/DC (Peste et al., NeurIPS 2021) and the GMP, RigL and STR baselines under matched training-FLOP budgets.

The public names load on first use, so that ``import acdc_bench`` does not start torch: the
command line pins the math libraries' instruction set (:mod:`acdc_bench.numerics`) first.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "Sparsifier": "acdc_bench.api",
    "sparsify": "acdc_bench.api",
    "MaskedMethod": "acdc_bench.methods",
    "SparsityMethod": "acdc_bench.methods",
    "register_method": "acdc_bench.methods",
}

__all__ = ["MaskedMethod", "Sparsifier", "SparsityMethod", "register_method", "sparsify", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'acdc_bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
