"""The baselines AC/DC is compared against, each one module written against the public method interface.

Importing this package registers ``gmp`` (gradual magnitude pruning), ``rigl`` (RigL)
and ``str`` (soft threshold reparameterization).
"""

from baselines import gmp, rigl  # noqa: F401  (registration side effects)
from baselines import str as soft_threshold  # noqa: F401
