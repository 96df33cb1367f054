"""Float tolerances derived from the computation they check, never from one machine's output.

Two code paths that compute the same sum of ``n`` terms in another order (another vector width,
another blocking, a sparse kernel that skips the zeros) can differ by at most the sum of both
paths' rounding errors. For a recursive or blocked sum of ``n`` products in precision ``u``
(unit roundoff, half of ``torch.finfo(dtype).eps``) each path's error is at most
``gamma_n * sum |x_i y_i|`` with ``gamma_n = n u / (1 - n u)`` (Higham, *Accuracy and Stability
of Numerical Algorithms*, 2nd ed., eq. 3.5), so the two differ by at most ``2 gamma_n`` times the
sum of the magnitudes: :func:`reduction_bound`.
"""

from __future__ import annotations

import torch


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """Higham's gamma_n for ``n`` rounded operations in ``dtype``."""
    u = torch.finfo(dtype).eps / 2
    if n * u >= 1:
        raise ValueError(f"gamma_{n} is unbounded in {dtype}")
    return n * u / (1 - n * u)


def reduction_bound(magnitude: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Elementwise bound on the difference between two orders of a sum of ``n`` terms whose
    absolute values sum to ``magnitude`` (e.g. ``|x| @ |w|.T`` for ``x @ w.T``)."""
    return 2 * gamma(n, dtype) * magnitude


def assert_within(got: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """Every element of ``got`` within ``bound`` of ``expected``; the message names the worst one."""
    error = (got.double() - expected.double()).abs()
    slack = error - bound.double()
    if bool((slack > 0).any()):
        index = int(slack.flatten().argmax())
        raise AssertionError(f"{what}: {int((slack > 0).sum())} of {error.numel()} elements exceed the rounding "
                             f"bound; worst at flat index {index}: |difference| {float(error.flatten()[index]):.3g} "
                             f"> bound {float(bound.flatten()[index]):.3g}")
