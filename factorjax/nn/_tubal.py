"""`TubalLinear`: the t-product layer of tensor neural networks, features are tubes."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jaxtyping import Float, PRNGKeyArray

from factorjax import tubal
from factorjax._checks import as_real_array, check_positive_int, check_rank, describe
from factorjax.factorizations._init import target_variance
from factorjax.factorizations.tubal_lowrank import TubalLowRank

__all__ = ["TubalLinear", "tubal_linear"]


def check_tubal_weight(weight: Any) -> Array | TubalLowRank:
    """A dense weight ``(out, in, k)`` as a real array, or a `TubalLowRank` as is."""
    if isinstance(weight, TubalLowRank):
        return weight
    weight = as_real_array("weight", weight)
    if weight.ndim != 3:
        raise ValueError(
            "`weight` must be a tensor (out_features, in_features, tube_size) or a "
            f"TubalLowRank; got {describe(weight)}."
        )
    return weight


def tubal_linear(weight: Array | TubalLowRank, bias: Array | None, x: Array) -> Array:
    """``W * x + b`` for ``x (..., in_features, k)``: the t-product over the tube axis.

    A dense ``W (out, in, k)`` is one t-product of ``W`` with the inputs as the columns of a
    t-matrix ``(in, N, k)``. A `TubalLowRank` ``W = U * V^T`` is applied factor by factor,
    ``U * (V^T * x)``, in the Fourier domain (one transform of ``x`` and one back): it costs
    ``O(N R (in + out) k)`` per frequency pass instead of ``O(N in out k)``, and ``W`` is
    never built.
    """
    shape = weight.shape
    out_features, in_features, k = shape
    lead = x.shape[:-2]
    n = math.prod(lead)
    cols = jnp.moveaxis(x.reshape(n, in_features, k).astype(weight.dtype), 0, 1)  # (in, N, k)
    if isinstance(weight, TubalLowRank):
        # spectral rows (k, ..., n1, n2), see `factorjax.tubal`
        vt = tubal._forward(tubal.ttranspose(weight.v))  # (k, R, in)
        z = tubal._spectral_matmul(vt, tubal._forward(cols))  # (k, R, N)
        y = tubal._inverse(tubal._spectral_matmul(tubal._forward(weight.u), z))
    else:
        y = tubal.tprod(weight, cols)  # (out, N, k)
    y = jnp.moveaxis(y, 1, 0).reshape(*lead, out_features, k)
    return y if bias is None else y + bias


def init_weight(
    out_features: int,
    in_features: int,
    k: int,
    rank: int | None,
    *,
    key: PRNGKeyArray,
    init: Any,
    std: Any,
    alpha: Any,
    dtype: Any,
) -> Array | TubalLowRank:
    """A random weight whose entries have the variance of ``init`` with the fans of the
    t-product: ``fan_in = in_features k``, ``fan_out = out_features k``."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    if rank is not None:
        return TubalLowRank.init(
            out_features, in_features, k, rank, key=key, init=init, std=std, alpha=alpha,
            dtype=dtype,
        )  # fmt: skip
    if init == "small":
        raise ValueError(
            "init='small' scales the factors of a factorized weight: give an int `rank`, or "
            "use init='glorot', 'he', 'lecun' or 'std' for a dense TubalLinear."
        )
    var = target_variance(
        init, fan_in=in_features * k, fan_out=out_features * k, std=std, alpha=alpha
    )
    return jnp.sqrt(var) * jax.random.normal(key, (out_features, in_features, k), dtype)


class TubalLinear(eqx.Module):
    """``y = W * x + b``, the t-product layer of tensor neural networks (Newman, Horesh, Avron
    and Kilmer, "Stable tensor neural networks", 2018): each feature is a tube of length
    ``k``, ``x (in_features, k)``, ``W (out_features, in_features, k)``,
    ``y[i] = sum_j circconv(W[i, j], x[j]) + b[i]`` with a bias tube ``b (out_features, k)``.

    With ``rank=R`` the weight is a `TubalLowRank` ``W = U * V^T`` of tubal rank at most ``R``,
    applied factor by factor in the Fourier domain without building ``W``.

    Init: the t-product is the matrix product ``bcirc(W) vec(x)`` with the
    ``(out_features k) x (in_features k)`` block-circulant ``bcirc(W)``: each output entry
    sums ``in_features k`` products, so for inputs of unit variance
    ``Var(y) = in_features k Var(W)``. The schemes use those fans, ``fan_in = in_features k``
    and ``fan_out = out_features k`` (``"lecun"``: ``Var(W) = 1 / (in_features k)``, outputs
    of unit variance; ``"glorot"``: ``2 / ((in_features + out_features) k)``), and target the
    reconstructed ``W`` in the low-rank case too. The bias starts at zero.

    Like ``eqx.nn.Linear`` it takes one example ``(in_features, k)``; it also takes a batch
    ``(..., in_features, k)`` (one t-product for the whole batch), or batch with ``jax.vmap``.

    Example:
        >>> import jax
        >>> from factorjax.nn import TubalLinear
        >>> layer = TubalLinear(16, 8, 4, key=jax.random.key(0))
        >>> layer(jax.numpy.ones((16, 4))).shape
        (8, 4)
        >>> TubalLinear(16, 8, 4, rank=2, key=jax.random.key(0)).weight.rank
        2
    """

    weight: Float[Array, "out_features in_features k"] | TubalLowRank
    bias: Float[Array, "out_features k"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    tube_size: int = eqx.field(static=True)
    rank: int | None = eqx.field(static=True)

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        tube_size: Any,
        rank: Any = None,
        *,
        use_bias: bool = True,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        """Arguments:
        in_features, out_features: the number of input and output tubes.
        tube_size: the length ``k`` of every tube (the last axis of inputs and outputs).
        rank: ``None`` (a dense weight) or an int in ``[1, min(out_features, in_features)]``:
            the width ``R`` of the factors of a `TubalLowRank` weight.
        use_bias: add a bias tube per output (zeros at init).
        init, std, alpha: the variance of the (reconstructed) weight, with the fans above:
            ``"glorot"``, ``"he"``, ``"lecun"``, ``"std"`` with ``std``; ``"small"`` with
            ``alpha`` (factors ``N(0, alpha^2 / R)``, low-rank weights only).
        dtype: the parameters' dtype (default: JAX's default float).
        key: a JAX PRNG key.
        """
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        tube_size = check_positive_int("tube_size", tube_size)
        if rank is not None:
            rank = check_rank("rank", rank, min(out_features, in_features))
        self.weight = init_weight(
            out_features, in_features, tube_size, rank, key=key, init=init, std=std,
            alpha=alpha, dtype=dtype,
        )  # fmt: skip
        self.bias = jnp.zeros((out_features, tube_size), self.weight.dtype) if use_bias else None
        self.in_features, self.out_features, self.tube_size = in_features, out_features, tube_size
        self.rank = rank

    @classmethod
    def from_weight(cls, weight: Any, bias: Any = None) -> "TubalLinear":
        """The layer holding a given weight: a dense ``(out_features, in_features, k)`` array
        or a `TubalLowRank`, and a bias ``(out_features, k)`` or None."""
        weight = check_tubal_weight(weight)
        out_features, in_features, k = weight.shape
        if bias is not None:
            bias = as_real_array("bias", bias)
            if bias.shape != (out_features, k):
                raise ValueError(
                    f"`bias` must have shape (out_features, k) = ({out_features}, {k}); got "
                    f"{describe(bias)}."
                )
        rank = weight.rank if isinstance(weight, TubalLowRank) else None
        self = object.__new__(cls)
        for name, value in (
            ("weight", weight), ("bias", bias), ("in_features", in_features),
            ("out_features", out_features), ("tube_size", k), ("rank", rank),
        ):  # fmt: skip
            object.__setattr__(self, name, value)
        return self

    def __call__(
        self, x: Any, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*batch out_features k"]:
        """Arguments:
        x: one input ``(in_features, tube_size)``, or a batch ``(..., in_features,
            tube_size)``.
        key: ignored; for compatibility with ``eqx.nn.Linear``.

        Returns:
            ``(..., out_features, tube_size)``.
        """
        del key
        x = check_input(x, self.in_features, self.tube_size)
        return tubal_linear(self.weight, self.bias, x)


def check_input(x: Any, in_features: int, tube_size: int) -> Array:
    """``x`` as a real array ``(..., in_features, tube_size)``, or a clear error."""
    x = as_real_array("x", x)
    if x.ndim < 2 or x.shape[-2:] != (in_features, tube_size):
        raise ValueError(
            f"`x` must be (in_features, tube_size) = ({in_features}, {tube_size}), or a batch "
            f"(..., {in_features}, {tube_size}), the tube axis last; got {describe(x)}."
        )
    return x
