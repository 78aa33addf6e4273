"""Initialisation schemes shared by the formats.

Every format draws its factors i.i.d. normal with a per-factor standard deviation chosen so
that the *reconstructed* weight has the target variance. This module turns a scheme name into
that target.
"""

import math
from typing import Any

import jax.numpy as jnp

from factorjax._checks import check_choice, describe

SCHEMES = ("glorot", "he", "lecun", "std", "small")


def target_variance(scheme: Any, *, fan_in: int, fan_out: int, std: Any, alpha: Any) -> Any:
    """Variance of the entries of the reconstructed weight under a variance-targeted scheme.

    Arguments:
        scheme: ``"glorot"`` (``2 / (fan_in + fan_out)``), ``"he"`` (``2 / fan_in``),
            ``"lecun"`` (``1 / fan_in``) or ``"std"`` (``std ** 2``). ``"small"`` is not a
            variance target (the factors themselves are scaled) and is refused here.
        fan_in, fan_out: the fans of the operator the weight represents.
        std: the standard deviation for ``"std"``.
        alpha: must be ``None`` unless the scheme is ``"small"``.

    Returns:
        The target variance: a positive float, or a traced scalar when `std` is traced.
    """
    check_choice("init", scheme, SCHEMES)
    if scheme != "small" and alpha is not None:
        raise ValueError(f"`alpha` is only used with init='small'; got init={scheme!r}.")
    if scheme != "std" and std is not None:
        raise ValueError(f"`std` is only used with init='std'; got init={scheme!r}.")
    if scheme == "glorot":
        return 2.0 / (fan_in + fan_out)
    if scheme == "he":
        return 2.0 / fan_in
    if scheme == "lecun":
        return 1.0 / fan_in
    if scheme == "std":
        return positive_float("std", std) ** 2
    raise ValueError("init='small' sets the factor scale, not a target variance.")


def positive_float(name: str, value):
    """Check a positive scale argument (``std``, ``alpha``).

    A Python number must be finite and positive. A scalar JAX array is accepted as is, so that
    the scale can be traced (a sweep over init scales vmaps over it); its value is not checked.
    """
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"`{name}` must be a positive float scalar; got {describe(value)}.")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a positive float; got {describe(value)}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite float > 0; got {value}.")
    return float(value)


def small_std(alpha, width: int):
    """Entry std of the small-scale init of the implicit-regularization literature.

    Entries are ``N(0, alpha^2 / width)`` with ``width`` the inner (rank) dimension of the
    factor, as in Karnik et al. (ICML 2025) for tubal factorizations.
    """
    return positive_float("alpha", alpha) / math.sqrt(width)
