"""The baselines AC/DC is compared against, each one module written against the public method
interface (``acdc_bench.methods``): ``gmp`` (gradual magnitude pruning), ``rigl`` (RigL),
``str`` (soft threshold reparameterization).

Installed as ``acdc_bench.baselines`` (``package-dir`` in ``pyproject.toml``); the registry
imports each module by that name when a method is first looked up.
"""
