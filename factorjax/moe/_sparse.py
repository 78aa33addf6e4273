"""`SparseMoE`: the standard sparse top-k mixture of experts (Shazeer et al. 2017; GShard,
Lepikhin et al. 2021; Switch Transformer, Fedus et al. 2022), with dense or factorized experts.

A token ``x`` is routed by ``logits = x W_r`` (``W_r`` ``(d_in, E)``) to its ``top_k`` experts
(`route`: the softmax over the kept logits, weights ``p_j`` summing to 1), and

    ``y = sum_j p_j (W_{e_j} x + b_{e_j})``

where ``W_e`` is a dense ``(d_out, d_in)`` matrix or any matrix format of the library.

How the experts are applied (every path is exact up to rounding, jit-able, static shapes):

- ``capacity_factor=None`` (no token is ever dropped): with ``T`` tokens in the call, if
  ``T * top_k <= E`` each token's ``top_k`` experts are gathered and applied to it alone
  (``T * top_k`` expert applications: one example at a time, or under ``jax.vmap``);
  otherwise every expert is applied to the whole batch and the outputs are combined with the
  routing weights, which are zero outside each token's top-k (``E`` batched applications,
  ``E / top_k`` times the FLOPs of the sparse computation: meant for few experts; with many,
  give a capacity).
- ``capacity_factor=c`` (GShard / Switch dispatch): each expert takes at most
  ``C = min(T, ceil(c * T * top_k / E))`` tokens. The ``T * top_k`` assignments are queued
  slot-major, first come first served: every token's first choice in token order, then every
  token's second choice, and so on; an assignment whose position in its expert's queue is
  ``>= C`` is dropped and contributes nothing (not even the bias; the weights of the kept
  assignments are not renormalized: the residual connection around the layer carries a token
  whose assignments are all dropped, as in Switch). Tokens are gathered into an
  ``(E, C, d_in)`` buffer, each expert is applied to its ``C`` rows (``E * C ~ c T top_k``
  rows in all), and the outputs are gathered back.

Capacity and the auxiliary losses are computed over the tokens of one call: give the batch as
``(..., d_in)`` rather than vmapping the layer over examples.
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import as_real_array, check_positive_int, describe
from factorjax.factorizations._init import target_variance
from factorjax.factorizations._operator import AbstractOperator
from factorjax.factorizations._registry import FORMATS, make_operator
from factorjax.moe._routing import check_top_k, route

__all__ = ["EXPERT_FORMATS", "SparseMoE", "expert_capacity", "sparse_moe"]

EXPERT_FORMATS: tuple[str, ...] = ("dense", *FORMATS)

# Router init: N(0, ROUTER_SCALE / d_in), the Switch Transformer's choice (scale 0.1). Small,
# so that the gates start near uniform and training starts balanced; not zero, so that tokens
# start on different experts (zero logits tie, and every token would go to experts 0..k-1).
ROUTER_SCALE = 0.1

Experts = Float[Array, "num_experts out_features in_features"] | AbstractOperator


def check_capacity_factor(capacity_factor: Any) -> float | None:
    """Check ``capacity_factor``: None, or a finite float > 0."""
    if capacity_factor is None:
        return None
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, int | float):
        raise TypeError(
            f"`capacity_factor` must be None or a float > 0; got {describe(capacity_factor)}."
        )
    if not (math.isfinite(capacity_factor) and capacity_factor > 0):
        raise ValueError(f"`capacity_factor` must be None or a float > 0; got {capacity_factor}.")
    return float(capacity_factor)


def expert_capacity(capacity_factor: Any, tokens: int, top_k: int, num_experts: int) -> int:
    """``C = min(tokens, ceil(capacity_factor * tokens * top_k / num_experts))``, at least 1:
    the number of tokens an expert takes (an expert never gets more than ``tokens``)."""
    c = check_capacity_factor(capacity_factor)
    if c is None:
        return tokens
    return max(1, min(tokens, math.ceil(c * tokens * top_k / num_experts)))


def _apply_shared(experts: Experts, x: Array) -> Array:
    """Every expert on the same tokens: ``x`` ``(T, d_in)`` -> ``(E, T, d_out)``."""
    if eqx.is_array(experts):
        return jnp.einsum("eoi,ti->eto", experts, x)
    return jax.vmap(lambda op: op.apply(x))(experts)


def _apply_each(experts: Experts, xs: Array) -> Array:
    """Expert ``e`` on its own rows: ``xs`` ``(E, N, d_in)`` -> ``(E, N, d_out)``."""
    if eqx.is_array(experts):
        return jnp.einsum("eoi,eni->eno", experts, xs)
    return jax.vmap(lambda op, xe: op.apply(xe))(experts, xs)


def _apply_selected(experts: Experts, idx: Array, x: Array) -> Array:
    """Each token's own experts: ``idx`` ``(T, k)``, ``x`` ``(T, d_in)`` -> ``(T, k, d_out)``."""
    if eqx.is_array(experts):
        return jnp.einsum("tkoi,ti->tko", experts[idx], x)
    ops = jax.tree.map(lambda leaf: leaf[idx], experts)  # every leaf (T, k, ...)
    one = jax.vmap(lambda op, xt: op.apply(xt), in_axes=(0, None))  # over k
    return jax.vmap(one)(ops, x)  # over T


def sparse_moe(
    x: ArrayLike,
    router: ArrayLike,
    experts: ArrayLike | AbstractOperator,
    bias: ArrayLike | None = None,
    *,
    top_k: Any,
    capacity_factor: Any = None,
) -> tuple[Float[Array, "... out_features"], dict[str, Array]]:
    """The sparse top-k mixture ``y = sum_j p_j (W_{e_j} x + b_{e_j})`` (see the module
    docstring for the dispatch and the capacity rule).

    Arguments:
        x: the tokens ``(..., d_in)``.
        router: ``W_r`` ``(d_in, E)``; the logits are ``x W_r``.
        experts: the stacked expert weights: an array ``(E, d_out, d_in)``, or a matrix format
            whose every leaf has a leading expert axis ``E``.
        bias: per-expert biases ``(E, d_out)``, or None.
        top_k: experts per token, in ``[1, E]``.
        capacity_factor: None (no drops) or ``c > 0`` (capacity ``ceil(c T top_k / E)``).

    Returns:
        ``(y, aux)``: ``y`` ``(..., d_out)`` and the scalars
        ``aux["load_balancing"] = E sum_e f_e P_e`` (Switch Transformer, extended to top-k:
        ``f_e`` the fraction of the ``T top_k`` assignments that go to ``e``, counted before
        any drop; ``P_e`` the mean over tokens of the full softmax of the logits; it is 1 when
        both are uniform and only ``P`` carries a gradient), ``aux["router_z"]`` the mean of
        ``logsumexp(logits)^2`` (ST-MoE's z-loss), and ``aux["dropped_fraction"]`` the fraction
        of assignments dropped for capacity (0 without a capacity).
    """
    x = as_real_array("x", x, min_ndim=1)
    router = as_real_array("router", router)
    if router.ndim != 2 or router.shape[0] != x.shape[-1]:
        raise ValueError(
            f"`router` must be (d_in, E) with d_in = {x.shape[-1]} (the last axis of `x`); got "
            f"{describe(router)}."
        )
    num_experts = router.shape[1]
    if not isinstance(experts, AbstractOperator):
        experts = as_real_array("experts", experts)
        if experts.ndim != 3 or experts.shape[0] != num_experts or experts.shape[2] != x.shape[-1]:
            raise ValueError(
                f"`experts` must be (E, d_out, d_in) with E = {num_experts} and d_in = "
                f"{x.shape[-1]}; got {describe(experts)}."
            )
    if bias is not None:
        bias = as_real_array("bias", bias)
        if bias.ndim != 2 or bias.shape[0] != num_experts:
            raise ValueError(
                f"`bias` must be (E, d_out) with E = {num_experts}, or None; got {describe(bias)}."
            )
    top_k = check_top_k(top_k, num_experts)
    capacity_factor = check_capacity_factor(capacity_factor)
    lead = x.shape[:-1]
    tokens = max(1, math.prod(lead))
    xt = x.reshape(tokens, x.shape[-1]).astype(router.dtype)

    logits = xt @ router  # (T, E)
    weights, idx = route(logits, top_k)  # (T, E), (T, k)
    gates = jnp.take_along_axis(weights, idx, axis=-1)  # (T, k)
    assigned = jax.nn.one_hot(idx, num_experts, dtype=logits.dtype)  # (T, k, E)
    f = jnp.sum(assigned, axis=(0, 1)) / (tokens * top_k)
    p_mean = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
    aux = {
        "load_balancing": num_experts * jnp.sum(f * p_mean),
        "router_z": jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2),
        "dropped_fraction": jnp.zeros((), logits.dtype),
    }

    if capacity_factor is None and tokens * top_k <= num_experts:
        out = _apply_selected(experts, idx, xt)  # (T, k, d_out)
        if bias is not None:
            out = out + bias[idx]
        y = jnp.einsum("tk,tko->to", gates, out)
    elif capacity_factor is None:
        out = _apply_shared(experts, xt)  # (E, T, d_out)
        if bias is not None:
            out = out + bias[:, None, :]
        y = jnp.einsum("te,eto->to", weights, out)
    else:
        capacity = expert_capacity(capacity_factor, tokens, top_k, num_experts)
        # assignments slot-major: a = j * T + t
        expert_a = idx.T.reshape(-1)
        token_a = jnp.tile(jnp.arange(tokens), top_k)
        onehot = jax.nn.one_hot(expert_a, num_experts, dtype=jnp.int32)  # (kT, E)
        pos_a = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # queue position
        keep = pos_a < capacity
        # slot (e, c) holds token token_for[e, c]; empty slots read a row of zeros (index T)
        token_for = jnp.full((num_experts, capacity), tokens, dtype=jnp.int32)
        token_for = token_for.at[expert_a, jnp.where(keep, pos_a, capacity)].set(
            token_a.astype(jnp.int32), mode="drop"
        )
        x_pad = jnp.concatenate([xt, jnp.zeros((1, xt.shape[-1]), xt.dtype)], axis=0)
        out = _apply_each(experts, x_pad[token_for])  # (E, C, d_out)
        if bias is not None:
            out = out + bias[:, None, :]
        picked = out[expert_a, jnp.minimum(pos_a, capacity - 1)]  # (kT, d_out)
        scale = gates.T.reshape(-1) * keep.astype(gates.dtype)
        y = jnp.sum((scale[:, None] * picked).reshape(top_k, tokens, -1), axis=0)
        aux["dropped_fraction"] = 1.0 - jnp.mean(keep.astype(logits.dtype))
    return y.reshape(*lead, y.shape[-1]), aux


class SparseMoE(eqx.Module):
    """A sparse top-k mixture of ``num_experts`` linear experts, dense or factorized (see the
    module docstring for routing, dispatch and capacity).

    Takes tokens ``(..., in_features)`` (one example ``(in_features,)`` or any batch shape);
    capacity and the auxiliary losses are computed over the tokens of one call.

    Example:
        >>> import jax
        >>> from factorjax.moe import SparseMoE
        >>> moe = SparseMoE(16, 16, 8, top_k=2, expert_format="tt", expert_rank=2,
        ...                 key=jax.random.key(0))
        >>> y, aux = moe(jax.numpy.ones((4, 16)), return_aux=True)
        >>> y.shape, sorted(aux)
        ((4, 16), ['dropped_fraction', 'load_balancing', 'router_z'])
    """

    router: Float[Array, "in_features num_experts"]
    experts: Experts
    bias: Float[Array, "num_experts out_features"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    top_k: int = eqx.field(static=True)
    expert_format: str = eqx.field(static=True)
    capacity_factor: float | None = eqx.field(static=True)

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        *,
        top_k: Any = 2,
        expert_format: Any = "dense",
        expert_rank: Any = None,
        capacity_factor: Any = None,
        use_bias: bool = True,
        init: Any = "glorot",
        std: Any = None,
        alpha: Any = None,
        dtype: Any = None,
        key: PRNGKeyArray,
        **format_options,
    ):
        """Arguments:
        in_features, out_features: the sizes of a token and of the output.
        num_experts: ``E``.
        top_k: experts per token, in ``[1, E]``.
        expert_format: ``"dense"`` or a format of `factorjax.factorizations.FORMATS`.
        expert_rank: each factorized expert's rank, as `make_operator`'s ``rank`` (an int, a
            tuple, a fraction in ``(0, 1]`` of the dense parameter count, or ``"same"``, the
            default); must be None for dense experts.
        capacity_factor: None (no token dropped) or ``c > 0`` (see the module docstring).
        use_bias: a bias per expert ``(E, out_features)`` (zeros at init).
        init, std, alpha: the variance of each expert's (reconstructed) weight, as in
            `make_operator` (``"small"`` is for factorized experts only).
        dtype: the parameters' dtype (default: JAX's default float).
        key: a JAX PRNG key.
        **format_options: the format's options (``out_modes``, ``in_modes``, ``order``,
            ``depth``, ``shapes``), see `make_operator`.
        """
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        num_experts = check_positive_int("num_experts", num_experts)
        top_k = check_top_k(top_k, num_experts)
        capacity_factor = check_capacity_factor(capacity_factor)
        if expert_format not in EXPERT_FORMATS:
            allowed = ", ".join(repr(f) for f in EXPERT_FORMATS)
            raise ValueError(f"`expert_format` must be one of {allowed}; got {expert_format!r}.")
        k_router, k_experts = jax.random.split(key)
        if expert_format == "dense":
            if expert_rank is not None or format_options:
                given = "expert_rank" if expert_rank is not None else next(iter(format_options))
                raise ValueError(
                    f"`{given}` is only used with factorized experts; got expert_format='dense'."
                )
            var = target_variance(
                init, fan_in=in_features, fan_out=out_features, std=std, alpha=alpha
            )
            shape = (num_experts, out_features, in_features)
            dtype = jnp.result_type(float) if dtype is None else dtype
            experts = math.sqrt(var) * jax.random.normal(k_experts, shape, dtype)
        else:
            rank = "same" if expert_rank is None else expert_rank
            experts = eqx.filter_vmap(
                lambda k: make_operator(
                    expert_format, out_features, in_features, rank, key=k, init=init,
                    std=std, alpha=alpha, dtype=dtype, **format_options,
                )
            )(jax.random.split(k_experts, num_experts))  # fmt: skip
        dtype = jax.tree.leaves(experts)[0].dtype
        scale = math.sqrt(ROUTER_SCALE / in_features)
        self.router = scale * jax.random.normal(k_router, (in_features, num_experts), dtype)
        self.experts = experts
        self.bias = jnp.zeros((num_experts, out_features), dtype) if use_bias else None
        self.in_features, self.out_features = in_features, out_features
        self.top_k, self.expert_format = top_k, expert_format
        self.capacity_factor = capacity_factor

    @property
    def num_experts(self) -> int:
        """``E``."""
        return self.router.shape[1]

    @property
    def num_params(self) -> int:
        """The number of parameters (router, experts and biases)."""
        return sum(leaf.size for leaf in jax.tree.leaves(eqx.filter(self, eqx.is_array)))

    def expert_axes(self) -> list[int | None]:
        """The expert axis of each array leaf, in ``jax.tree.leaves(eqx.filter(self,
        eqx.is_array))`` order: 1 for the router ``(d_in, E)``, 0 for every expert leaf and
        the bias ``(E, d_out)``."""
        axes = jax.tree.map(lambda _: 0, eqx.filter(self, eqx.is_array))
        return jax.tree.leaves(eqx.tree_at(lambda m: m.router, axes, 1))

    def expert_matrices(self) -> Float[Array, "num_experts out_features in_features"]:
        """The experts' dense weights ``(E, out_features, in_features)``."""
        if eqx.is_array(self.experts):
            return self.experts
        return jax.vmap(lambda op: op.to_matrix())(self.experts)

    def __call__(
        self, x: ArrayLike, *, return_aux: bool = False
    ) -> Float[Array, "... out_features"] | tuple[Array, dict[str, Array]]:
        """Arguments:
        x: one token ``(in_features,)`` or a batch ``(..., in_features)``.
        return_aux: also return the auxiliary scalars (see `sparse_moe`).

        Returns:
            ``y`` ``(..., out_features)``, or ``(y, aux)`` with ``return_aux=True``.
        """
        x = as_real_array("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have in_features = {self.in_features} on its last axis; got "
                f"{describe(x)}."
            )
        y, aux = sparse_moe(
            x, self.router, self.experts, self.bias, top_k=self.top_k,
            capacity_factor=self.capacity_factor,
        )  # fmt: skip
        return (y, aux) if return_aux else y
