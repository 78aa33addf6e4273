"""How NNX layers hold the library's pytrees: every array leaf of a factorization is an
``nnx.Param``, so optimizers, ``nnx.state`` and checkpoints see the factors one by one."""

from typing import Any

import jax
from flax import nnx

__all__ = ["as_params", "dropout_key", "values"]


def _is_variable(v: Any) -> bool:
    return isinstance(v, nnx.Variable)


def as_params(tree: Any) -> Any:
    """``tree`` (a factorization, an array, or None) with each array leaf an ``nnx.Param``,
    marked as data so that NNX traverses it."""
    return nnx.data(jax.tree.map(nnx.Param, tree))


def values(tree: Any) -> Any:
    """The pytree of arrays behind `as_params`."""
    return jax.tree.map(lambda p: p[...], tree, is_leaf=_is_variable)


def dropout_key(rngs: Any, stored: Any, layer: str) -> jax.Array:
    """A key for dropout: from ``rngs`` given at call time (an ``nnx.Rngs``, a stream or a key),
    else from the ``rngs`` the layer kept at construction, as ``nnx.Dropout`` does."""
    rngs = stored if rngs is None else rngs
    if rngs is None:
        raise ValueError(
            f"{layer}: rank dropout in training mode (deterministic=False) needs `rngs`: pass "
            "rngs=nnx.Rngs(...) to the constructor or the call, or use model.eval()."
        )
    if isinstance(rngs, nnx.Rngs):
        return rngs.dropout()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    return rngs
