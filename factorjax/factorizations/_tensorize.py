"""Tensorizing a matrix dimension into modes, and the variance of a reconstructed weight.

A weight ``(d_out, d_in)`` is tensorized as ``out_modes + in_modes`` with
``prod(out_modes) = d_out`` and ``prod(in_modes) = d_in``, row-major: entry ``(o, i)`` of the
matrix is entry ``(o_1, ..., o_d, i_1, ..., i_d)`` of the tensor where ``o`` has the row-major
multi-index ``(o_1, ..., o_d)``.
"""

import math
from typing import Any

import numpy as np

from factorjax._checks import check_positive_int

__all__ = ["balanced_modes", "check_modes", "factor_std", "matrix_to_tensor", "tensor_to_matrix"]


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def balanced_modes(n: Any, order: Any) -> tuple[int, ...]:
    """The most balanced factorization of ``n`` into ``order`` integer modes.

    Among all ways of writing ``n`` as a product of ``order`` integers >= 1, the one whose
    largest mode is smallest (ties: the one closest to equal, by the sum of squares), sorted so
    that the largest modes sit in the middle, as TT layers prefer (their ranks peak there).

    Arguments:
        n: the dimension (an int >= 1).
        order: the number of modes (an int >= 1).

    Returns:
        A tuple of ``order`` ints whose product is ``n``, e.g. ``balanced_modes(768, 3)`` is
        ``(8, 12, 8)``. A prime ``n`` cannot be balanced: ``(1, ..., n, ..., 1)``.
    """
    n = check_positive_int("n", n)
    order = check_positive_int("order", order)
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    best: tuple | None = None

    def search(rest: int, left: int, lo: int, acc: list[int]):
        nonlocal best
        if left == 1:
            if rest >= lo:
                cand = [*acc, rest]
                key = (max(cand), sum(c * c for c in cand))
                if best is None or key < best[0]:
                    best = (key, cand)
            return
        for d in divisors:
            if d < lo or d**left > rest:
                if d**left > rest:
                    break
                continue
            if rest % d == 0:
                search(rest // d, left - 1, d, [*acc, d])

    search(n, order, 1, [])
    modes = sorted(best[1])  # ascending
    # Largest in the middle: alternate small ones to the two ends.
    left, right = [], []
    for i, m in enumerate(modes):
        (left if i % 2 == 0 else right).append(m)
    return tuple(left + right[::-1])


def check_modes(name: str, modes: Any, dim: int) -> tuple[int, ...]:
    """Check that ``modes`` is a non-empty tuple of ints >= 1 whose product is ``dim``."""
    if isinstance(modes, (int, np.integer)) or not hasattr(modes, "__iter__"):
        raise TypeError(f"`{name}` must be a tuple of ints; got {modes!r}.")
    modes = tuple(modes)
    if not modes or any(
        isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in modes
    ):
        raise ValueError(f"`{name}` must be a non-empty tuple of ints >= 1; got {modes!r}.")
    modes = tuple(int(m) for m in modes)
    if math.prod(modes) != dim:
        raise ValueError(
            f"the product of `{name}` must be {dim}; got {modes!r} (product {math.prod(modes)})."
        )
    return modes


def matrix_to_tensor(w, out_modes: tuple[int, ...], in_modes: tuple[int, ...]):
    """``(d_out, d_in)`` to the tensor ``out_modes + in_modes`` (row-major)."""
    return w.reshape(*out_modes, *in_modes)


def tensor_to_matrix(t, n_out: int):
    """The tensor ``out_modes + in_modes`` to ``(prod(out_modes), prod(in_modes))``."""
    return t.reshape(math.prod(t.shape[:n_out]), math.prod(t.shape[n_out:]))


def factor_std(variance: Any, terms: int, factors: int) -> Any:
    """Entry std of each factor so that a reconstruction that sums ``terms`` products of
    ``factors`` independent zero-mean entries has entries of variance ``variance``:
    ``Var = terms * s^(2 factors)``, so ``s = (variance / terms)^(1 / (2 factors))``.

    (For a tensor train, ``terms`` is the product of the inner TT ranks: dividing by it, not by
    its square, is what keeps the reconstructed variance on target.)
    """
    return (variance / terms) ** (0.5 / factors)
