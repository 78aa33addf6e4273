"""The normal equations of a dense tubal measurement operator on t-symmetric tensors.

A symmetric factorization ``U * U^T`` only ever produces t-symmetric iterates, whose
``n * n * k`` entries hold ``n (n k + c) / 2`` free values (``c`` real Fourier slices, 1 or 2).
Restricted to them, the gradient's symmetric part is one small matrix-vector product with the
Gram matrix of the operator: see `TubalSensing.with_gram`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jaxtyping import Float

__all__ = ["SymmetricGram"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _tsym_orbits(n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The orbits of the t-transpose on the flat (row-major) entries of ``(n, n, k)``.

    ``(i, j, t)`` pairs with ``(j, i, -t mod k)``. Returns ``rep`` (one flat index per orbit,
    the smaller), ``partner`` (of each representative), ``orbit_of`` (the orbit of every flat
    index) and ``weight`` (1 on entries that are their own partner, 1/2 elsewhere).
    """
    flat = np.arange(n * n * k).reshape(n, n, k)
    partner = flat.transpose(1, 0, 2)[:, :, (-np.arange(k)) % k].ravel()
    flat = flat.ravel()
    rep = flat[flat <= partner]
    position = np.empty(flat.size, dtype=np.int64)
    position[rep] = np.arange(rep.size)
    orbit_of = position[np.minimum(flat, partner)]
    weight = np.where(flat == partner, 1.0, 0.5)
    return rep, partner[rep], orbit_of, weight


class SymmetricGram(eqx.Module):
    """The normal equations of a dense tubal operator, restricted to t-symmetric tensors.

    For t-symmetric ``X`` with free values ``c = X.flat[rep]``, ``A(X) = F c`` with ``F`` the
    operator with the columns of paired entries added, and the symmetric part of
    ``A*(A(X) - y)`` is ``w * (H c - b)[orbit_of]`` with ``H = F^T F``, ``b = F^T y`` and ``w``
    1 on self-paired entries, 1/2 elsewhere. Built by `TubalSensing.with_gram`.

    Fields:
        H: ``(N_s, N_s)``. b: ``(N_s,)``.
        rep, orbit_of, weight: the orbit structure (static, hashable wrappers of NumPy
            arrays).
    """

    H: Float[Array, "Ns Ns"]
    b: Float[Array, " Ns"]
    rep: "_Static" = eqx.field(static=True)
    orbit_of: "_Static" = eqx.field(static=True)
    weight: "_Static" = eqx.field(static=True)

    @classmethod
    def from_operator(cls, G: Array, y: Array, shape: tuple[int, int, int]) -> "SymmetricGram":
        n, _, k = shape
        rep, partner, orbit_of, weight = _tsym_orbits(n, k)
        paired = jnp.asarray(rep != partner, G.dtype)
        F = G[:, rep] + paired * G[:, partner]
        H = jnp.matmul(F.T, F, precision=_HIGHEST)
        b = jnp.matmul(y, F, precision=_HIGHEST)
        # eqx.Module hashes static fields: wrap the index arrays so equal problems compare
        # equal under jit (tuples hash; arrays do not).
        return cls(H=H, b=b, rep=_Static(rep), orbit_of=_Static(orbit_of), weight=_Static(weight))

    def symmetric_grad(self, X: Array) -> Array:
        """``sym(A*(A(X) - y))`` for t-symmetric ``X`` of shape ``(..., n, n, k)``."""
        shape = X.shape[-3:]
        flat = X.reshape(*X.shape[:-3], -1)
        c = flat[..., self.rep.value]
        v = jnp.matmul(c, self.H, precision=_HIGHEST) - self.b
        out = v[..., self.orbit_of.value] * jnp.asarray(self.weight.value, X.dtype)
        return out.reshape(*X.shape[:-3], *shape)


class _Static:
    """A hashable, comparable holder of a NumPy array, for static pytree fields."""

    __slots__ = ("_key", "value")

    def __init__(self, value: np.ndarray):
        self.value = np.asarray(value)
        self._key = (self.value.shape, self.value.dtype.str, self.value.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self._key == other._key
