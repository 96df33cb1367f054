"""acdc_bench: AC/DC (Peste et al., NeurIPS 2021) and the GMP, RigL and STR baselines under matched training-FLOP budgets."""

__version__ = "0.1.0"
