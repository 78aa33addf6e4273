"""Flax NNX layers over the library's factorizations: the same names, arguments and outputs
as the Equinox layers of `factorjax.nn` (``rngs`` for ``key``, ``deterministic`` for
``inference``). Importing it needs Flax (``pip install factorjax[flax]``); ``import factorjax``
alone never imports Flax."""

from factorjax.nnx._linear import FactorizedLinear

__all__ = ["FactorizedLinear"]
