"""acdc_bench: AC/DC (Peste et al., NeurIPS 2021) and the GMP, RigL and STR baselines under matched training-FLOP budgets."""

__version__ = "0.1.0"

from acdc_bench.api import Sparsifier, sparsify  # noqa: E402
from acdc_bench.methods import MaskedMethod, SparsityMethod, register_method  # noqa: E402

__all__ = ["MaskedMethod", "Sparsifier", "SparsityMethod", "register_method", "sparsify", "__version__"]
