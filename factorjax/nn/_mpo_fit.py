"""Fitting the cores of a `factorjax.nn.SharedMPOStack` to dense weights.

The stack's layers are TT-matrices (MPOs) that share their core at position ``center``;
`fit_cores` finds the shared core and every layer's auxiliary cores by gauge-aligned TT-SVDs
then alternating least squares. `factorjax.nn.SharedMPOStack.from_dense` checks the arguments
and builds the stack.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jaxtyping import Float

from factorjax import _lapack
from factorjax.factorizations.tensor_train import _tt_svd_fixed
from factorjax.factorizations.tt_matrix import _interleave


def insert_center(aux_l: Sequence[Array], shared: Array, center: int) -> tuple:
    """One layer's ``d`` cores: its ``d - 1`` auxiliary cores with ``shared`` at ``center``."""
    return (*aux_l[:center], shared, *aux_l[center:])


class SharedMPOReport(NamedTuple):
    """How `SharedMPOStack.from_dense` fitted the weights (relative Frobenius errors).

    Fields:
        errors: ``||W_l - W'_l||_F / ||W_l||_F`` of every layer, ``(L,)``.
        history: the error of the whole stack ``||W - W'||_F / ||W||_F`` after the gauge
            alignment (entry 0) and after each sweep, ``(sweeps + 1,)``; non-increasing in
            exact arithmetic (every step solves a least-squares problem exactly).
        unshared_errors: the errors of each layer's own TT-SVD at the same ranks, ``(L,)``.
            TT-SVD is within ``sqrt(d - 1)`` of the best TT of those ranks (Oseledets 2011,
            Cor. 2.4) and sharing only adds constraints, so ``errors_l >= unshared_errors_l /
            sqrt(d - 1)``.
    """

    errors: Float[Array, " L"]
    history: Float[Array, " sweeps_plus_1"]
    unshared_errors: Float[Array, " L"]


def fit_cores(
    w: Array, out_modes: tuple, in_modes: tuple, center: int, ranks: tuple, sweeps: int
) -> tuple[Array, tuple[Array, ...], SharedMPOReport]:
    """A shared core and auxiliary cores fitted to ``L`` dense weights (least squares).

    1. TT-SVD of every layer at the given ranks (its own TT-matrix, in its own gauge).
    2. The shared core starts as layer 0's TT-SVD core ``c`` with its ``(r_{c-1} o_c i_c,
       r_c)`` unfolding orthonormalized. Every layer is gauge-aligned to it: find ``X, Q``
       with ``X C_l = C_0 Q`` (``C_l`` the layer's own centre; ``Q`` is the smallest
       eigenvector of a ``r_c^2``-sized PSD matrix, ``X`` eliminated), move ``Q`` into the
       layer's core ``c + 1`` and refit its core ``c - 1`` by least squares (a centre at an end
       only needs the refit of its neighbour). If the layers truly share a centre ``C`` (each
       a generic TT of those ranks), ``C_l = P_l C Q_l`` with invertible gauges, so this
       recovers every layer exactly, to rounding.
    3. ``sweeps`` sweeps of alternating least squares on ``sum_l ||W_l - W'_l||_F^2``: every
       auxiliary core of every layer in chain order, its other cores fixed, then the shared
       core with all auxiliary cores fixed (one stacked least-squares problem over the
       layers, ``(L r_{c-1} r_c) x (r_{c-1} r_c)``, from per-layer QRs, no normal equations).

    Each step of 3 minimizes the error exactly over its block, so the final error is at most
    ``report.history[0]``, the error after step 2 (layer 0's centre kept, every layer fitted
    to it). Its cost is dominated by the alignment, ``O(r_c^6)`` per layer: meant for centre
    bond ranks up to a few dozen.

    Arguments (checked by the caller):
        w: ``(L, d_out, d_in)``.
        out_modes, in_modes: the tensorization; center: the shared core's index; ranks: the
            inner TT ranks; sweeps: the number of ALS sweeps.

    Returns:
        ``(shared, aux, report)``: the shared core ``(r_{c-1}, o_c, i_c, r_c)``, the ``d - 1``
        auxiliary cores ``(L, r_{k-1}, o_k, i_k, r_k)`` in chain order, and the report.
    """
    num_layers, d = w.shape[0], len(out_modes)
    modes = tuple(o * i for o, i in zip(out_modes, in_modes, strict=True))
    axes = [0, *(1 + ax for ax in _interleave(d))]
    t = w.reshape(num_layers, *out_modes, *in_modes).transpose(axes).reshape(num_layers, *modes)
    shared, aux, history, errors, unshared = _fit(t, ranks, center, sweeps)
    shared = shared.reshape(shared.shape[0], out_modes[center], in_modes[center], -1)
    pos = [k for k in range(d) if k != center]
    aux = tuple(
        a.reshape(num_layers, a.shape[1], out_modes[k], in_modes[k], a.shape[-1])
        for a, k in zip(aux, pos, strict=True)
    )
    return shared, aux, SharedMPOReport(errors, history, unshared)


def _left(cores, k: int) -> Array:
    """Cores ``0 .. k-1`` contracted: ``(n_1 ... n_{k-1}, r_{k-1})`` (row-major)."""
    m = jnp.ones((1, 1), cores[0].dtype)
    for g in cores[:k]:
        m = (m @ g.reshape(g.shape[0], -1)).reshape(-1, g.shape[-1])
    return m


def _right(cores, k: int) -> Array:
    """Cores ``k+1 .. d`` contracted: ``(r_k, n_{k+1} ... n_d)`` (row-major)."""
    m = jnp.ones((1, 1), cores[0].dtype)
    for g in reversed(cores[k + 1 :]):
        m = (g.reshape(-1, g.shape[-1]) @ m).reshape(g.shape[0], -1)
    return m


def _pinv(a: Array) -> Array:
    """Moore-Penrose pseudo-inverse from an SVD (singular values below ``max(m, n) eps s_1``
    are treated as zero)."""
    u, s, vh = _lapack.svd(a, full_matrices=False)
    keep = s > s[0] * max(a.shape) * jnp.finfo(a.dtype).eps
    return (vh.T * jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)) @ u.T


def _solve_core(cores, t: Array, k: int) -> Array:
    """The least-squares core ``k`` given the others: ``L^+ T_(k) R^+``."""
    left, right = _left(cores, k), _right(cores, k)
    tk = t.reshape(left.shape[0], t.shape[k], right.shape[1])
    return jnp.einsum("aN,NnM,Mb->anb", _pinv(left), tk, _pinv(right))


def _residual(cores, t: Array) -> Array:
    return jnp.sum((t - _left(cores, len(cores)).reshape(t.shape)) ** 2)


def _align(cores, c0: Array, t: Array, center: int) -> tuple:
    """One layer's TT-SVD cores moved onto the shared centre ``c0`` (step 2 of
    `fit_cores`)."""
    d, (a, n, b) = len(cores), c0.shape
    cl, cores = cores[center], list(cores)
    cores[center] = c0
    if center < d - 1 and (center == 0 or b >= n * a):  # the right neighbour absorbs all
        cores[center + 1] = _solve_core(cores, t, center + 1)
        return tuple(cores)
    if center < d - 1 and a < n * b:  # Q: C_0 Q has its rows in the row space of C_l
        _, s, vh = _lapack.svd(cl.reshape(a, n * b), full_matrices=False)
        v = vh.T * (s > s[0] * n * b * jnp.finfo(s.dtype).eps)  # (n b, a)
        z = jnp.einsum("anp,nbj->ajpb", c0, v.reshape(n, b, a)).reshape(a * a, b * b)
        _, vecs = _lapack.eigh(jnp.eye(b * b, dtype=z.dtype) - z.T @ z)
        q = vecs[:, 0].reshape(b, b)
        cores[center + 1] = jnp.einsum("pb,bnc->pnc", q, cores[center + 1])
    cores[center - 1] = _solve_core(cores, t, center - 1)
    return tuple(cores)


def _center_lstsq(aux, shared, t, center: int) -> Array:
    """The shared core minimizing ``sum_l ||T_l - L_l C R_l||^2``: with ``L_l = U_l R_l`` and
    ``R_l^T = P_l S_l`` (QRs), the stacked problem ``kron(R_l, S_l) vec C_n = vec(U_l^T T_l
    P_l)_n``."""

    def blocks(aux_l, t_l):
        cores = insert_center(aux_l, shared, center)
        u, r = _lapack.qr(_left(cores, center))
        p, s = _lapack.qr(_right(cores, center).T)
        proj = jnp.einsum("Na,NnM,Mb->abn", u, t_l.reshape(u.shape[0], -1, p.shape[0]), p)
        return jnp.kron(r, s), proj.reshape(-1, proj.shape[-1])

    design, rhs = jax.vmap(blocks)(aux, t)
    a, n, b = shared.shape
    sol = _pinv(design.reshape(-1, a * b)) @ rhs.reshape(-1, n)
    return sol.reshape(a, b, n).transpose(0, 2, 1)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fit(t: Array, ranks: tuple, center: int, sweeps: int):
    d = t.ndim - 1
    pos = [k for k in range(d) if k != center]
    norms = jnp.sum(t.reshape(t.shape[0], -1) ** 2, axis=1)
    tt = jax.vmap(lambda x: _tt_svd_fixed(x, ranks))(t)
    unshared = jax.vmap(_residual)(tt, t)
    a, n, b = tt[center].shape[1:]
    c0 = _lapack.qr(tt[center][0].reshape(a * n, b))[0].reshape(a, n, b)
    cores = jax.vmap(lambda cs, x: _align(cs, c0, x, center))(tt, t)
    aux = tuple(cores[k] for k in pos)

    def per_layer_error(aux, shared):
        return jax.vmap(lambda al, x: _residual(insert_center(al, shared, center), x))(aux, t)

    def sweep(state, _):
        aux, shared = state
        for j, k in enumerate(pos):
            solve = functools.partial(_solve_core, k=k)
            new = jax.vmap(lambda al, x, solve=solve: solve(insert_center(al, shared, center), x))(
                aux, t
            )
            aux = (*aux[:j], new, *aux[j + 1 :])
        shared = _center_lstsq(aux, shared, t, center)
        return (aux, shared), jnp.sum(per_layer_error(aux, shared))

    total = jnp.sum(norms)
    err0 = jnp.sum(per_layer_error(aux, c0))
    (aux, shared), errs = jax.lax.scan(sweep, (aux, c0), None, length=sweeps)
    history = jnp.sqrt(jnp.concatenate([err0[None], errs]) / total)
    errors = jnp.sqrt(per_layer_error(aux, shared) / norms)
    return shared, aux, history, errors, jnp.sqrt(unshared / norms)
