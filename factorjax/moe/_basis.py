"""`BasisMoE`: the Mixture of Basis Experts (MoBE) of Chen et al., "MoBE: Mixture-of-Basis-
Experts for Compressing MoE-based LLMs" (arXiv 2508.05257).

Each expert's weight is a rank-``r`` product whose larger factor is a nonlinear mixture of
``m`` basis matrices shared by all experts of the layer:

    W_j = A_j act(sum_i softmax(alpha_j)_i B_i),
    A_j (d_out, r) per expert,  alpha_j (m,) per expert,  B_i (r, d_in) shared,

with ``act`` SiLU by default (the authors' code offers SiLU and tanh). Tokens are routed by a
top-k softmax router ``logits = x W_r``, ``W_r (d_in, E)``, and

    y = sum_{j in topk(x)} w_j(x) (W_j x + b_j).

The forward pass builds the experts' mixed bases ``C_j = act(sum_i softmax(alpha_j)_i B_i)``
``(E, r, d_in)`` once per call (they do not depend on the input: under ``jax.vmap`` over
examples they are built once), then for each token gathers the ``top_k`` selected ``C_j`` and
``A_j`` only: ``O(top_k r (d_in + d_out))`` per token. No ``(E, d_out, d_in)`` tensor is built.

`fit_basis` learns ``A, alpha, B`` from trained experts ``W_j`` by minimizing the
reconstruction error ``sum_j ||W_j - A_j act(sum_i softmax(alpha_j)_i B_i)||_F^2`` with Adam,
as the authors do (their Algorithm 1 and code): the targets are divided by their global
standard deviation, the experts are split into ``m`` contiguous groups, each group's stacked
experts ``[W_j; ...]`` are factored by a truncated SVD ``U_r S_r V_r^T``, expert ``j`` of group
``g`` starts with ``A_j`` its rows of ``U_r S_r``, basis ``g`` with ``B_g = V_r^T``, and
``alpha_j`` with logit 1 on its own group and 0 elsewhere; the iterate with the lowest loss is
kept. Here the whole loop is one jitted ``lax.scan`` and each expert's reconstruction is a
``jax.vmap`` over experts.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack
from factorjax._checks import check_positive_int, describe
from factorjax.moe._latent import (
    check_activation,
    check_expert_bias,
    check_expert_weights,
    check_input,
    check_router_weight,
    relative_errors,
    router_aux,
    standard_normals,
    uniform_router,
)
from factorjax.moe._routing import check_top_k, route

__all__ = ["BasisMoE", "BasisParams", "BasisReport", "basis_moe", "fit_basis", "mixed_bases"]


class BasisParams(NamedTuple):
    """The factors of a MoBE layer.

    Attributes:
        experts: ``A (E, d_out, r)``.
        mixing: the mixing logits ``alpha (E, m)``.
        bases: ``B (m, r, d_in)``.
    """

    experts: Array
    mixing: Array
    bases: Array


class BasisReport(NamedTuple):
    """What `fit_basis` reached (relative Frobenius errors ``||W_j - W_hat_j|| / ||W_j||``).

    Attributes:
        relative_error: per expert ``(E,)``, of the returned (best) factors.
        overall: ``||W - W_hat||_F / ||W||_F`` of the returned factors.
        trajectory: the per-expert relative error before each Adam step ``(steps, E)``.
        loss: the loss before each step ``(steps,)``: ``sum_j ||W_j - W_hat_j||^2 /
            sum_j ||W_j||^2`` (the overall relative error squared).
    """

    relative_error: Array
    overall: Array
    trajectory: Array
    loss: Array


def check_rank(rank: Any, in_features: int, out_features: int) -> int:
    rank = check_positive_int("rank", rank)
    if rank > min(in_features, out_features):
        raise ValueError(
            f"`rank` must be an int in [1, min(in_features, out_features)] = "
            f"[1, {min(in_features, out_features)}]; got {rank}."
        )
    return rank


def mixed_bases(
    mixing: ArrayLike, bases: ArrayLike, activation: Callable
) -> Float[Array, "num_experts rank in_features"]:
    """Each expert's ``C_j = act(sum_i softmax(alpha_j)_i B_i)`` from ``alpha (E, m)`` and
    ``B (m, r, d_in)``."""
    mixing, bases = jnp.asarray(mixing), jnp.asarray(bases)
    return activation(jnp.einsum("em,mri->eri", jax.nn.softmax(mixing, axis=-1), bases))


def _expert_weight(a: Array, alpha: Array, bases: Array, activation: Callable) -> Array:
    """One expert's ``W_j = A_j act(sum_i softmax(alpha_j)_i B_i)``."""
    return a @ activation(jnp.einsum("m,mri->ri", jax.nn.softmax(alpha), bases))


# jitted: an eager call compiles one program per layout instead of one per operation
@functools.partial(jax.jit, static_argnames=("top_k", "activation", "return_aux"))
def basis_moe(
    x: ArrayLike,
    router: ArrayLike,
    experts: ArrayLike,
    mixing: ArrayLike,
    bases: ArrayLike,
    bias: ArrayLike | None,
    *,
    top_k: int,
    activation: Callable,
    return_aux: bool = False,
) -> Any:
    """The MoBE forward pass (see the module docstring) on arrays.

    Arguments:
        x: inputs ``(..., d_in)``.
        router: ``W_r (d_in, E)``.
        experts, mixing, bases: ``A (E, d_out, r)``, ``alpha (E, m)``, ``B (m, r, d_in)``.
        bias: the experts' biases ``(E, d_out)`` or None.
        top_k: experts per token.
        activation: the basis activation.
        return_aux: also return the router's auxiliary losses (`router_aux`).

    Returns:
        ``y (..., d_out)``, or ``(y, aux)`` with ``return_aux``.
    """
    x, router, experts, mixing, bases = map(jnp.asarray, (x, router, experts, mixing, bases))
    logits = x @ router
    weights, idx = route(logits, top_k)
    w = jnp.take_along_axis(weights, idx, axis=-1)  # (..., k)
    c = mixed_bases(mixing, bases, activation)  # (E, r, d_in), independent of x
    u = jnp.einsum("...kri,...i->...kr", c[idx], x)
    h = jnp.einsum("...kor,...kr->...ko", experts[idx], u)
    if bias is not None:
        h = h + jnp.asarray(bias)[idx]
    y = jnp.einsum("...k,...ko->...o", w, h)
    return (y, router_aux(logits, idx)) if return_aux else y


def _svd_init(z: Array, num_bases: int, rank: int, key: PRNGKeyArray) -> BasisParams:
    """The authors' initialization (module docstring) from the scaled experts ``z``."""
    num_experts, d_out, d_in = z.shape
    groups = min(num_bases, num_experts)
    member = [e * groups // num_experts for e in range(num_experts)]
    a_rows, bases = [None] * num_experts, []
    for g in range(groups):
        members = [e for e in range(num_experts) if member[e] == g]
        u, s, vh = _lapack.svd(z[np.array(members)].reshape(-1, d_in), full_matrices=False)
        us = (u[:, :rank] * s[:rank]).reshape(len(members), d_out, rank)
        for i, e in enumerate(members):
            a_rows[e] = us[i]
        bases.append(vh[:rank])
    if num_bases > groups:  # more bases than experts: the extra ones start from all experts'
        # top right-singular vectors, perturbed (else they would stay equal to one another)
        vh = _lapack.svd(z.reshape(-1, d_in), full_matrices=False)[2][:rank]
        noise = jax.random.normal(key, (num_bases - groups, rank, d_in), z.dtype)
        bases += list(vh + noise * (0.1 / math.sqrt(d_in)))
    mixing = jax.nn.one_hot(jnp.array(member), num_bases, dtype=z.dtype)
    return BasisParams(jnp.stack(a_rows), mixing, jnp.stack(bases))


@functools.partial(jax.jit, static_argnames=("num_bases", "rank", "steps", "activation"))
def _fit_basis(w, learning_rate, key, *, num_bases, rank, steps, activation):
    scale = jnp.std(w)
    scale = jnp.where(scale > 0, scale, 1)
    z = w / scale
    ref = jnp.sum(z**2)
    ref = jnp.where(ref > 0, ref, 1)
    reconstruct = jax.vmap(_expert_weight, in_axes=(0, 0, None, None))

    def loss_fn(params):
        res = z - reconstruct(params.experts, params.mixing, params.bases, activation)
        return jnp.sum(res**2) / ref, res

    optimizer = optax.adam(learning_rate)
    params = _svd_init(z, num_bases, rank, key)

    def step(carry, _):
        params, opt_state, best, best_loss = carry
        (loss, res), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        per, _ = relative_errors(z, z - res)
        better = loss < best_loss
        best = jax.tree.map(lambda p, b: jnp.where(better, p, b), params, best)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, best, jnp.minimum(loss, best_loss)), (per, loss)

    carry = (params, optimizer.init(params), params, jnp.asarray(jnp.inf, w.dtype))
    (last, _, best, best_loss), (trajectory, losses) = jax.lax.scan(step, carry, None, length=steps)
    last_loss = loss_fn(last)[0]
    best = jax.tree.map(lambda p, b: jnp.where(last_loss < best_loss, p, b), last, best)
    per, total = relative_errors(z, z - loss_fn(best)[1])
    params = BasisParams(best.experts * scale, best.mixing, best.bases)
    return params, BasisReport(per, total, trajectory, losses)


def fit_basis(
    expert_weights: ArrayLike,
    num_bases: Any,
    rank: Any,
    *,
    steps: Any = 2000,
    learning_rate: Any = 0.01,
    activation: Any = jax.nn.silu,
    key: PRNGKeyArray | None = None,
) -> tuple[BasisParams, BasisReport]:
    """Fit MoBE factors to trained experts (module docstring): Adam on the reconstruction
    error from the authors' SVD initialization, in one jitted ``lax.scan``.

    Arguments:
        expert_weights: ``W (E, d_out, d_in)``.
        num_bases: the number ``m`` of shared bases.
        rank: the inner dimension ``r`` of ``A_j`` and ``B_i``, in ``[1, min(d_in, d_out)]``.
        steps: Adam steps (an int >= 1).
        learning_rate: Adam's learning rate (on targets scaled to unit standard deviation).
        activation: the basis activation (a callable; ``jax.nn.silu`` or ``jnp.tanh`` in the
            paper).
        key: a JAX PRNG key, used only when ``num_bases > E``: the bases beyond the ``E``
            groups start from all experts' top right-singular vectors plus a small random
            perturbation drawn from it (default: ``jax.random.key(0)``).

    Returns:
        ``(params, report)``: the `BasisParams` with the lowest loss met, and a `BasisReport`.

    Example:
        >>> w = jax.random.normal(jax.random.key(0), (4, 6, 8))
        >>> params, report = fit_basis(w, 2, 3, steps=200)
        >>> params.bases.shape
        (2, 3, 8)
    """
    w = check_expert_weights(expert_weights)
    _, d_out, d_in = w.shape
    num_bases = check_positive_int("num_bases", num_bases)
    rank = check_rank(rank, d_in, d_out)
    steps = check_positive_int("steps", steps)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float):
        raise TypeError(f"`learning_rate` must be a float; got {describe(learning_rate)}.")
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be > 0; got {learning_rate}.")
    activation = check_activation(activation, optional=False)
    return _fit_basis(
        w, jnp.asarray(learning_rate, w.dtype), jax.random.key(0) if key is None else key,
        num_bases=num_bases, rank=rank, steps=steps,
        activation=activation,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7))
def _init(key, d_in, d_out, num_experts, num_bases, rank, activation, dtype):
    # jitted: one compilation per layout instead of one per eager operation
    r, a, mixing, bases = standard_normals(
        key,
        [(d_in, num_experts), (num_experts, d_out, rank), (num_experts, num_bases),
         (num_bases, rank, d_in)],
        dtype,
    )  # fmt: skip
    c2 = jnp.mean(mixed_bases(mixing, bases, activation) ** 2)
    std = 1 / jnp.sqrt(d_in * rank * jnp.where(c2 > 0, c2, 1))
    return uniform_router(r, d_in), a * std, mixing, bases


class BasisMoE(eqx.Module):
    """A Mixture of Basis Experts layer (MoBE, Chen et al. 2025): ``E`` experts
    ``W_j = A_j act(sum_i softmax(alpha_j)_i B_i)`` over ``num_bases`` shared bases ``B_i``,
    mixed by a top-k softmax router (see the module docstring).

    Takes one input ``(in_features,)`` or a batch ``(..., in_features)``.

    Example:
        >>> import jax
        >>> from factorjax.moe import BasisMoE
        >>> layer = BasisMoE(16, 8, 4, 2, rank=4, key=jax.random.key(0))
        >>> layer(jax.numpy.ones((5, 16))).shape
        (5, 8)
    """

    router: Float[Array, "in_features num_experts"]
    experts: Float[Array, "num_experts out_features rank"]
    mixing: Float[Array, "num_experts num_bases"]
    bases: Float[Array, "num_bases rank in_features"]
    bias: Float[Array, "num_experts out_features"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    num_experts: int = eqx.field(static=True)
    num_bases: int = eqx.field(static=True)
    rank: int = eqx.field(static=True)
    top_k: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        num_bases: Any,
        *,
        rank: Any,
        activation: Any = jax.nn.silu,
        top_k: Any = 2,
        use_bias: bool = True,
        key: PRNGKeyArray,
        dtype: Any = None,
    ):
        """Arguments:
        in_features, out_features: the sizes of the input and of the output.
        num_experts: the number of experts ``E``.
        num_bases: the number ``m`` of bases shared by the experts.
        rank: the inner dimension ``r``, in ``[1, min(in_features, out_features)]``.
        activation: the basis activation (a callable; default SiLU).
        top_k: experts per token, in ``[1, num_experts]``.
        use_bias: a bias per expert ``(E, out_features)`` (zeros at init).
        key: a JAX PRNG key.
        dtype: the parameters' dtype (default: JAX's default float).

        Initialization: router ``U(-1/sqrt(d_in), 1/sqrt(d_in))``, bases and mixing logits
        ``N(0, 1)``, and ``A_j`` ``N(0, 1 / (d_in r mean(C^2)))`` with ``C`` the drawn mixed
        bases, so that the entries of each ``W_j`` have variance ``1/d_in`` (LeCun).
        """
        d_in = check_positive_int("in_features", in_features)
        d_out = check_positive_int("out_features", out_features)
        num_experts = check_positive_int("num_experts", num_experts)
        num_bases = check_positive_int("num_bases", num_bases)
        rank = check_rank(rank, d_in, d_out)
        top_k = check_top_k(top_k, num_experts)
        activation = check_activation(activation, optional=False)
        dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
        self.router, self.experts, self.mixing, self.bases = _init(
            key, d_in, d_out, num_experts, num_bases, rank, activation, dtype
        )
        self.bias = jnp.zeros((num_experts, d_out), dtype) if use_bias else None
        self.in_features, self.out_features = d_in, d_out
        self.num_experts, self.num_bases, self.rank, self.top_k = (
            num_experts, num_bases, rank, top_k,
        )  # fmt: skip
        self.activation = activation

    @classmethod
    def from_experts(
        cls,
        expert_weights: ArrayLike,
        router_weight: ArrayLike,
        num_bases: Any,
        rank: Any,
        *,
        bias: ArrayLike | None = None,
        top_k: Any = 2,
        activation: Any = jax.nn.silu,
        steps: Any = 2000,
        learning_rate: Any = 0.01,
        key: PRNGKeyArray | None = None,
    ) -> tuple["BasisMoE", BasisReport]:
        """Compress a trained mixture of linear experts into a MoBE layer (`fit_basis`).

        Arguments:
            expert_weights: ``W (E, d_out, d_in)``.
            router_weight: the router ``(d_in, E)``, kept as it is.
            num_bases, rank, steps, learning_rate, activation, key: as in `fit_basis`.
            bias: the experts' biases ``(E, d_out)`` (or one ``(d_out,)`` for all), or None.
            top_k: as in the constructor.

        Returns:
            ``(layer, report)`` with the `BasisReport` of the fit.
        """
        w = check_expert_weights(expert_weights)
        num_experts, d_out, d_in = w.shape
        router = check_router_weight(router_weight, d_in, num_experts).astype(w.dtype)
        bias = check_expert_bias(bias, num_experts, d_out, w.dtype)
        params, report = fit_basis(
            w, num_bases, rank, steps=steps, learning_rate=learning_rate,
            activation=activation, key=key,
        )  # fmt: skip
        layer = cls(
            d_in, d_out, num_experts, num_bases, rank=rank, activation=activation,
            top_k=top_k, use_bias=bias is not None, key=jax.random.key(0), dtype=w.dtype,
        )  # fmt: skip
        layer = eqx.tree_at(
            lambda m: (m.router, m.experts, m.mixing, m.bases), layer, (router, *params)
        )
        if bias is not None:
            layer = eqx.tree_at(lambda m: m.bias, layer, bias)
        return layer, report

    @property
    def params(self) -> BasisParams:
        """The factors as `BasisParams`."""
        return BasisParams(self.experts, self.mixing, self.bases)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(eqx.filter(self, eqx.is_array)))

    def expert_axes(self) -> list[int | None]:
        """The experts' axis of each array leaf, in ``jax.tree.leaves`` order: the router
        ``(d_in, E)`` has it at 1, ``A (E, d_out, r)``, ``alpha (E, m)`` and the biases
        ``(E, d_out)`` at 0, the shared bases none."""
        return [1, 0, 0, None] + ([0] if self.bias is not None else [])

    def expert_weights(self) -> Float[Array, "num_experts out_features in_features"]:
        """The explicit expert weights ``(E, out_features, in_features)``, for inspection and
        tests (the forward pass never builds them)."""
        return jnp.einsum(
            "eor,eri->eoi", self.experts, mixed_bases(self.mixing, self.bases, self.activation)
        )

    def __call__(self, x: ArrayLike, *, return_aux: bool = False) -> Any:
        """Arguments:
        x: one input ``(in_features,)`` or a batch ``(..., in_features)``.
        return_aux: also return ``{"load_balancing", "router_z"}`` (`router_aux`, over the
            tokens of this call).

        Returns:
            ``y (..., out_features)``, or ``(y, aux)``.
        """
        x = check_input(x, self.in_features)
        return basis_moe(
            x, self.router, self.experts, self.mixing, self.bases, self.bias, top_k=self.top_k,
            activation=self.activation, return_aux=return_aux,
        )  # fmt: skip
