"""Equinox layers over the library's factorizations (thin wrappers: the pytree does the work).

`factorjax.nnx` has the same layers, with the same names and arguments, for Flax NNX.
"""

from factorjax.nn._linear import FactorizedLinear

__all__ = ["FactorizedLinear"]
