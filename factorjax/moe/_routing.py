"""Top-k routing of a sparse mixture of experts (Shazeer et al. 2017; Switch; GShard).

`route` keeps each token's ``top_k`` largest router logits and takes the softmax over them:
the weights are zero outside the kept experts and sum to 1 over them. The choice of experts is
piecewise constant in the logits (no gradient flows through it); the weights are
differentiable in the kept logits.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, Int

from factorjax._checks import as_real_array, describe

__all__ = ["check_top_k", "route"]


def check_top_k(top_k: Any, num_experts: int) -> int:
    """Check ``top_k``: a Python int in ``[1, num_experts]``."""
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer):
        raise TypeError(f"`top_k` must be a Python int; got {describe(top_k)}.")
    if not 1 <= top_k <= num_experts:
        raise ValueError(
            f"`top_k` must be an int in [1, {num_experts}] (the number of experts); got {top_k}."
        )
    return int(top_k)


def route(
    logits: ArrayLike, top_k: Any
) -> tuple[Float[Array, "... experts"], Int[Array, "... top_k"]]:
    """The top-k softmax routing of ``logits`` ``(..., E)``.

    Arguments:
        logits: router logits, experts on the last axis (any batch shape).
        top_k: the number of experts each token is sent to, in ``[1, E]``.

    Returns:
        ``(weights, indices)``: ``weights`` ``(..., E)`` with ``top_k`` nonzeros per token,
        the softmax over the kept logits (summing to 1); ``indices`` ``(..., top_k)`` the kept
        experts, largest logit first (ties go to the lower index, as in `jax.lax.top_k`).

    Example:
        >>> w, i = route(jnp.array([0.0, 2.0, 1.0]), 2)
        >>> i
        Array([1, 2], dtype=int32)
    """
    z = as_real_array("logits", logits, min_ndim=1)
    top_k = check_top_k(top_k, z.shape[-1])
    kept, indices = jax.lax.top_k(z, top_k)
    probs = jax.nn.softmax(kept, axis=-1)
    onehot = jax.nn.one_hot(indices, z.shape[-1], dtype=z.dtype)  # (..., k, E)
    return jnp.einsum("...k,...ke->...e", probs, onehot), indices
