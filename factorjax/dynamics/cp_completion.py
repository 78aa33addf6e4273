"""CP tensor completion: observed entries of a low-CP-rank tensor, fitted by a wide CP model.

The problem of Razin, Maman and Cohen, "Implicit Regularization in Tensor Factorization"
(ICML 2021): a ground truth ``X* = sum_{r<R*} a_1r ∘ ... ∘ a_dr`` of order ``d`` (every mode of
size ``n``, factor entries i.i.d. N(0, 1), then scaled to unit Frobenius norm), of which ``m``
distinct entries are observed. A model is a tuple of ``d`` factor matrices ``A_k`` ``(n, R)``
(``R`` components, no separate weights), ``X = sum_r A_1[:, r] ∘ ... ∘ A_d[:, r]``, fitted by

    L(A) = 1/m sum_{i in Omega} (X_i - X*_i)^2

(the mean squared error over the observed entries). `CPCompletion.loss_and_grad` computes the
loss and its exact gradient with dense matrix products: the modes are split into a left and a
right group, ``X`` unfolds to ``KR(left) @ KR(right)^T`` (Khatri-Rao products), and with ``G``
the masked residual unfolded the same way, the gradient of the left factors comes from
``G @ KR(right)`` and that of the right factors from ``G^T @ KR(left)``: three matrix products
``(n^(d/2), n^(d/2), R)`` per step, with no scatter.

Example:
    >>> import jax
    >>> from factorjax.dynamics.cp_completion import CPCompletion, init_factors
    >>> p = CPCompletion.make(4, 10, 5, 2000, key=jax.random.key(0))
    >>> A = init_factors(4, 10, 1000, 5e-3, key=jax.random.key(1))
    >>> loss, grads, X = p.loss_and_grad(A)
    >>> [g.shape for g in grads]
    [(10, 1000), (10, 1000), (10, 1000), (10, 1000)]
"""

import math
import string
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jaxtyping import Float, Int, PRNGKeyArray

from factorjax._checks import check_positive_int, describe
from factorjax.dynamics._completion import _draw_indices
from factorjax.factorizations.cp import khatri_rao

__all__ = ["CPCompletion", "component_norms", "cp_dense", "init_factors"]

Factors = tuple[Float[Array, "n R"], ...]


def _split(order: int) -> int:
    return (order + 1) // 2


def cp_dense(factors: Factors) -> Array:
    """The tensor ``sum_r A_1[:, r] ∘ ... ∘ A_d[:, r]`` of factor matrices ``(n_k, R)``.

    Arguments:
        factors: ``d >= 2`` factor matrices with a common number of columns.

    Returns:
        The dense tensor ``(n_1, ..., n_d)``.
    """
    s = _split(len(factors))
    left, right = khatri_rao(factors[:s]), khatri_rao(factors[s:])
    hi = jax.lax.Precision.HIGHEST
    return jnp.matmul(left, right.T, precision=hi).reshape([f.shape[0] for f in factors])


def component_norms(factors: Factors) -> Float[Array, " R"]:
    """The Frobenius norm of each rank-one component: the product of its factor columns' norms.

    Arguments:
        factors: factor matrices ``(n_k, R)``.

    Returns:
        ``(R,)``: ``prod_k ||A_k[:, r]||``.
    """
    return math.prod(jnp.linalg.norm(f, axis=0) for f in factors)


def init_factors(order: Any, n: Any, components: Any, std: Any, *, key: PRNGKeyArray) -> Factors:
    """Factor matrices with i.i.d. N(0, std^2) entries.

    Arguments:
        order: the number of modes ``d >= 2``.
        n: the size of every mode.
        components: the number of columns ``R``.
        std: the standard deviation (a float or a traced scalar).
        key: a JAX PRNG key.

    Returns:
        A tuple of ``d`` arrays ``(n, components)``.
    """
    order, n, components = _check_sizes(order=order, n=n, components=components)
    z = jax.random.normal(key, (order, n, components))
    return tuple(std * z[k] for k in range(order))


def _check_sizes(**sizes: Any) -> list[int]:
    out = [check_positive_int(name, v) for name, v in sizes.items()]
    if "order" in sizes and out[0] < 2:
        raise ValueError(f"`order` must be an int >= 2; got {describe(sizes['order'])}.")
    return out


class CPCompletion(eqx.Module):
    """Completion of an order-``d`` tensor of CP rank ``R*`` from ``m`` observed entries.

    Fields:
        truth_factors: the ground truth's factors ``(n, R*)``, scaled so that ``||X*|| = 1``.
        ground_truth: ``X*``, ``(n,) * d``.
        mask: 1 at the observed entries, 0 elsewhere, ``(n,) * d``.
        idx: the observed flat (row-major) indices, distinct and sorted, ``(m,)``.
        y: the observed values ``X*.flat[idx]``, ``(m,)``.
    """

    truth_factors: Factors
    ground_truth: Array
    mask: Array
    idx: Int[Array, " m"]
    y: Float[Array, " m"]

    @classmethod
    def make(
        cls, order: Any, n: Any, rank: Any, m: Any, *, key: PRNGKeyArray, dtype: Any = None
    ) -> "CPCompletion":
        """Draw a problem (traceable; the sizes are static).

        Arguments:
            order: the number of modes ``d >= 2``.
            n: the size of every mode.
            rank: the CP rank ``R*`` of the ground truth.
            m: the number of observed entries, ``1 <= m <= n^d``.
            key: a JAX PRNG key (independent subkeys for the factors and the entries).
            dtype: floating dtype (default: JAX's default float).

        Returns:
            A `CPCompletion`.
        """
        order, n, rank, m = _check_sizes(order=order, n=n, rank=rank, m=m)
        total = n**order
        if m > total:
            raise ValueError(f"`m` must be at most n^order = {total}; got m = {m}.")
        dtype = jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
        k_f, k_idx = jax.random.split(key)
        z = jax.random.normal(k_f, (order, n, rank), dtype)
        raw = tuple(z[k] for k in range(order))
        scale = jnp.linalg.norm(cp_dense(raw)) ** (-1.0 / order)
        factors = tuple(f * scale for f in raw)
        truth = cp_dense(factors)
        idx = _draw_indices(k_idx, total, m)
        mask = jnp.zeros(total, dtype).at[idx].set(1).reshape(truth.shape)
        return cls(factors, truth, mask, idx, truth.reshape(-1)[idx])

    @property
    def order(self) -> int:
        return self.ground_truth.ndim

    @property
    def m(self) -> int:
        return self.idx.shape[0]

    def strengths(self) -> Float[Array, " r"]:
        """The norms of the ground truth's rank-one components."""
        return component_norms(self.truth_factors)

    def loss(self, factors: Factors) -> Float[Array, ""]:
        """``1/m sum_{i in Omega} (X_i - X*_i)^2``, by gathering the observed entries."""
        pred = cp_dense(factors).reshape(-1)[self.idx]
        return jnp.mean(jnp.square(pred - self.y))

    def error(self, factors: Factors) -> Float[Array, ""]:
        """The relative reconstruction error ``||X - X*|| / ||X*||`` over all entries."""
        truth = self.ground_truth
        return jnp.linalg.norm(cp_dense(factors) - truth) / jnp.linalg.norm(truth)

    def loss_and_grad(self, factors: Factors) -> tuple[Array, Factors, Array]:
        """The loss, its exact gradient in the factors, and the dense ``X`` (for metrics).

        Arguments:
            factors: ``d`` factor matrices ``(n, R)``.

        Returns:
            ``(loss, grads, X)``: the scalar loss, a tuple of ``d`` gradients shaped like the
            factors, and the model's tensor ``X``.
        """
        d = len(factors)
        if d != self.order:
            raise ValueError(f"`factors` must hold {self.order} matrices; got {d}.")
        s = _split(d)
        hi = jax.lax.Precision.HIGHEST
        left, right = khatri_rao(factors[:s]), khatri_rao(factors[s:])
        x = jnp.matmul(left, right.T, precision=hi)
        res = self.mask.reshape(x.shape) * (x - self.ground_truth.reshape(x.shape))
        loss = jnp.sum(jnp.square(res)) / self.m
        g = (2.0 / self.m) * res
        g_left = jnp.matmul(g, right, precision=hi)  # dL/dKR(left)  (n^s, R)
        g_right = jnp.matmul(g.T, left, precision=hi)  # dL/dKR(right) (n^(d-s), R)
        grads = _kr_backward(g_left, factors[:s]) + _kr_backward(g_right, factors[s:])
        return loss, grads, x.reshape(self.ground_truth.shape)

    def grad(self, factors: Factors) -> Factors:
        """The gradient of `loss` in the factors (see `loss_and_grad`)."""
        return self.loss_and_grad(factors)[1]


def _kr_backward(g: Array, mats: Factors) -> Factors:
    """Gradients of ``<g, KR(mats)>`` in each of ``mats`` (``g`` is ``(prod n_k, R)``)."""
    if len(mats) == 1:
        return (g,)
    letters = string.ascii_lowercase[: len(mats)]
    gt = g.reshape(*[m.shape[0] for m in mats], g.shape[-1])
    out = []
    for k in range(len(mats)):
        others = [f"{c}z" for j, c in enumerate(letters) if j != k]
        spec = f"{letters}z," + ",".join(others) + f"->{letters[k]}z"
        ops = [mats[j] for j in range(len(mats)) if j != k]
        out.append(jnp.einsum(spec, gt, *ops, precision=jax.lax.Precision.HIGHEST))
    return tuple(out)
