"""`MultilinearMoE`: the Multilinear Mixture of Experts (μMoE) layer of Oldfield et al.,
"Multilinear Mixture of Experts: Scalable Expert Specialization through Factorization"
(NeurIPS 2024, arXiv 2402.12550).

A μMoE layer holds ``E = E_1 ... E_L`` linear experts ``W[n_1, ..., n_L] (d_out, d_in + 1)`` (the
last input column is the bias, the input being ``z = [x, 1]``) as one factorized tensor
``W (E_1, ..., E_L, d_out, d_in + 1)``, and computes the soft mixture

    y = sum_{n_1..n_L} a_1[n_1] ... a_L[n_L] W[n_1, ..., n_L] z,

with one gate ``a_l = gate(norm(x G_l))`` per level of the hierarchy. The factorization lets
the mixture be contracted with the gates and the input first, so that the layer costs about as
much as one factorized linear layer whatever the number of experts; the weight tensor is never
built (only `MultilinearMoE.expert_weights` builds it, for inspection and tests).

- CP (``format="cp"``), factors ``U_l (E_l, R)``, ``U_in (d_in + 1, R)``, ``U_out (d_out, R)``:
  ``W[n.., o, i] = sum_r U_1[n_1, r] ... U_L[n_L, r] U_out[o, r] U_in[i, r]`` and
  ``y = ((a_1 U_1) * ... * (a_L U_L) * (z U_in)) U_out^T`` (products along the rank axis),
  ``O(R (d_in + d_out + E_1 + ... + E_L))`` per example.
- Tensor ring (``format="tr"``), cores ``G_l (R, E_l, R)``, ``G_in (R, d_in + 1, R)``,
  ``G_out (R, d_out, R)``: ``W[n.., o, i] = trace(G_out[:, o, :] G_1[:, n_1, :] ... G_L[:, n_L, :]
  G_in[:, i, :])`` and ``y_o = trace(G_out[:, o, :] A_1 ... A_L B)`` with
  ``A_l = sum_n a_l[n] G_l[:, n, :]``, ``B = sum_i z_i G_in[:, i, :]``,
  ``O(R^2 (d_in + d_out + E_1 + ... + E_L) + L R^3)`` per example.

Choices that follow the authors' code (github.com/james-oldfield/muMoE, ``MuMoE.py``):

- The gate is 1.5-entmax by default (``act=entmax15`` there); softmax, sparsemax and top-k are
  offered (`factorjax.moe.gate`).
- The gate matrices ``G_l (d_in, E_l)`` start at zero, so every expert starts with the same
  weight ``1 / E_l``.
- The gate normalizes the *logits* ``x G_l``, not the input: the code's default is a batch norm
  without affine parameters over the batch (``normalization='bn'``), its other option a layer
  norm without parameters over the experts' axis (``'ln'``). A batch norm needs batch
  statistics and running averages, which a layer that maps one example at a time cannot hold,
  so ``normalize=True`` here is the layer-norm option: ``(v - mean(v)) / sqrt(var(v) + 1e-5)``
  over the ``E_l`` logits ``v`` of each example. ``normalize=False`` feeds the logits as they
  are. The layer norm fixes the logits' scale (their mean square is about 1): with ``E_l = 2``
  they are ``(+1, -1)`` whatever the input (up to the 1e-5), where a sparse gate (entmax15,
  sparsemax) sits at its threshold and picks (almost) one expert of that level outright; use
  ``normalize=False`` or softmax for two-way levels.
  At the zero init the logits are all 0 and the layer norm's slope is ``1 / sqrt(1e-5)``.
- The bias is folded into the input mode (``use_bias=True``: ``z = [x, 1]``).
- Initialization (``init="mumoe"``): the first level's expert factor (CP) has entries
  ``N(1, 1)``, the first level's ring core (TR) has diagonal slices ``G_1[:, n, :]`` with
  diagonal entries ``N(1, 1)``; the further levels are ones (CP) or identity slices (TR), so
  that at init every expert is a random perturbation of one shared linear map; the input
  factor / core is ``U(-1/sqrt(d_in), 1/sqrt(d_in))``, the output factor ``U(-1/sqrt(R),
  1/sqrt(R))`` (CP) and the output core ``U(-1/R, 1/R)`` (TR, ``1/sqrt(R R)`` there). The
  entries of each expert's weight then have mean 0 and variance ``2 / (9 d_in)``: for CP,
  ``E[W^2] = sum_r E[U_1^2] E[U_in^2] E[U_out^2] = R * 2 * 1/(3 d_in) * 1/(3 R)`` (the
  factors are independent, the input and output ones centred, and a later level's ones add a
  factor 1); for TR, ``W = sum_{a,c} D[a] B[a, c] C[c, a]`` with ``D`` the diagonal of the
  expert slice, so ``E[W^2] = R^2 * 2 * 1/(3 d_in) * 1/(3 R^2)``. ``init="lecun"`` keeps the
  expert factors and draws the input factor ``N(0, 1/d_in)`` and the output factor
  ``N(0, 1/(2 R))`` (CP) or ``N(0, 1/(2 R^2))`` (TR): by the same sums the expert weights have
  variance ``1 / d_in``. (The code's 2-level version stops at two levels; any depth works here.)
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax._checks import as_real_array, check_choice, check_positive_int, describe
from factorjax.moe._gates import check_gate, gate

__all__ = ["MOE_FORMATS", "MOE_INITS", "MultilinearMoE"]

MOE_FORMATS = ("cp", "tr")
MOE_INITS = ("mumoe", "lecun")
_LN_EPS = 1e-5


def check_levels(levels: Any, num_experts: int) -> tuple[int, ...]:
    """``levels`` (None or a tuple of positive ints with product ``num_experts``) as a tuple."""
    if levels is None:
        return (num_experts,)
    if not isinstance(levels, tuple | list) or not levels:
        raise TypeError(
            f"`levels` must be None or a non-empty tuple of ints (the experts per level); got "
            f"{describe(levels)}."
        )
    levels = tuple(check_positive_int("levels", n) for n in levels)
    if math.prod(levels) != num_experts:
        raise ValueError(
            f"`levels` must multiply to num_experts = {num_experts}; got {levels} (product "
            f"{math.prod(levels)})."
        )
    return levels


def _layer_norm(v: Array) -> Array:
    mean = jnp.mean(v, axis=-1, keepdims=True)
    var = jnp.mean((v - mean) ** 2, axis=-1, keepdims=True)
    return (v - mean) / jnp.sqrt(var + _LN_EPS)


class MultilinearMoE(eqx.Module):
    """The Multilinear Mixture of Experts layer (μMoE, Oldfield et al., NeurIPS 2024): a soft
    mixture of ``num_experts`` linear experts held as one CP or tensor-ring factorization, with
    an optional hierarchy of gates (``levels``); see the module docstring for the formulas, the
    cost and the choices taken from the authors' code.

    Takes one input ``(in_features,)`` or a batch ``(..., in_features)``.

    Example:
        >>> import jax
        >>> from factorjax.moe import MultilinearMoE
        >>> layer = MultilinearMoE(16, 8, 64, 4, levels=(8, 8), key=jax.random.key(0))
        >>> layer(jax.numpy.ones((5, 16))).shape
        (5, 8)
    """

    gate_weights: tuple[Array, ...]
    expert_factors: tuple[Array, ...]
    in_factor: Array
    out_factor: Array
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    levels: tuple[int, ...] = eqx.field(static=True)
    rank: int = eqx.field(static=True)
    format: str = eqx.field(static=True)
    gate: str = eqx.field(static=True)
    top_k: int | None = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    normalize: bool = eqx.field(static=True)

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        rank: Any,
        *,
        format: Any = "cp",
        levels: Any = None,
        gate: Any = "entmax15",
        top_k: Any = None,
        use_bias: Any = True,
        normalize: Any = True,
        init: Any = "mumoe",
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        """Arguments:
        in_features, out_features: the sizes of the input and of the output.
        num_experts: the number of experts ``E`` (the product of ``levels``).
        rank: the CP rank, or the (common) ring rank of the tensor ring.
        format: ``"cp"`` or ``"tr"`` (tensor ring).
        levels: None (one gate over ``num_experts``) or the experts per level
            ``(E_1, ..., E_L)`` of a hierarchical μMoE, with ``E_1 ... E_L = num_experts``.
        gate: ``"entmax15"`` (the authors' default), ``"softmax"``, ``"sparsemax"`` or
            ``"topk"``; applied at each level.
        top_k: the experts kept per level by ``gate="topk"``.
        use_bias: fold a bias into the input mode (``z = [x, 1]``).
        normalize: layer-normalize the gate logits over the experts' axis (see the module
            docstring: the authors' code normalizes the logits, by default with a batch norm).
        init: ``"mumoe"`` (the authors' init; expert weights of variance ``2 / (9 d_in)``) or
            ``"lecun"`` (variance ``1 / d_in``).
        dtype: the parameters' dtype (default: JAX's default float).
        key: a JAX PRNG key.
        """
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        num_experts = check_positive_int("num_experts", num_experts)
        rank = check_positive_int("rank", rank)
        format = check_choice("format", format, MOE_FORMATS)
        levels = check_levels(levels, num_experts)
        gate, top_k = check_gate(gate, top_k, levels)
        init = check_choice("init", init, MOE_INITS)
        for name, flag in (("use_bias", use_bias), ("normalize", normalize)):
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}` must be a bool; got {describe(flag)}.")
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
        d_z = in_features + int(use_bias)
        r = rank
        k_exp, k_io = jax.random.split(key)
        # the first level random around 1, the later ones exactly 1 (the authors' init)
        first = 1 + jax.random.normal(k_exp, (levels[0], r), dtype)
        if format == "cp":
            experts = [first] + [jnp.ones((n, r), dtype) for n in levels[1:]]
            in_shape, out_shape, out_fan = (d_z, r), (out_features, r), r
        else:
            eye = jnp.eye(r, dtype=dtype)
            experts = [jnp.einsum("na,ab->anb", first, eye)]
            experts += [jnp.broadcast_to(eye[:, None, :], (r, n, r)) for n in levels[1:]]
            in_shape, out_shape, out_fan = (r, d_z, r), (r, out_features, r), r * r
        # the input and output factors in one draw (one random kernel fewer to compile)
        n_in, n_out = math.prod(in_shape), math.prod(out_shape)
        if init == "mumoe":  # U(-1/sqrt(fan), 1/sqrt(fan))
            u = jax.random.uniform(k_io, (n_in + n_out,), dtype, -1, 1)
            s_in, s_out = 1 / math.sqrt(in_features), 1 / math.sqrt(out_fan)
        else:  # N(0, 1/d_in) and N(0, 1/(2 fan))
            u = jax.random.normal(k_io, (n_in + n_out,), dtype)
            s_in, s_out = 1 / math.sqrt(in_features), 1 / math.sqrt(2 * out_fan)
        u_in = s_in * u[:n_in].reshape(in_shape)
        u_out = s_out * u[n_in:].reshape(out_shape)
        self.gate_weights = tuple(jnp.zeros((in_features, n), dtype) for n in levels)
        self.expert_factors = tuple(experts)
        self.in_factor, self.out_factor = u_in, u_out
        self.in_features, self.out_features, self.levels = in_features, out_features, levels
        self.rank, self.format, self.gate, self.top_k = rank, format, gate, top_k
        self.use_bias, self.normalize = use_bias, normalize

    @property
    def num_experts(self) -> int:
        return math.prod(self.levels)

    @property
    def num_params(self) -> int:
        return sum(math.prod(a.shape) for a in jax.tree.leaves(self))

    def expert_axes(self) -> list[int | None]:
        """The experts' axis of each array leaf, in ``jax.tree.leaves`` order: the gate
        matrices ``(d_in, E_l)`` have it at 1, the expert factors at 0 (CP, ``(E_l, R)``) or 1
        (TR, ``(R, E_l, R)``); the input and output factors have none."""
        axis = 0 if self.format == "cp" else 1
        n = len(self.levels)
        return [1] * n + [axis] * n + [None, None]

    def _check_input(self, x: ArrayLike) -> Array:
        x = as_real_array("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have in_features = {self.in_features} on its last axis; got "
                f"{describe(x)}."
            )
        return x

    def _gates(self, x: Array) -> tuple[Array, ...]:
        out = []
        for g in self.gate_weights:
            v = x @ g
            out.append(gate(_layer_norm(v) if self.normalize else v, self.gate, top_k=self.top_k))
        return tuple(out)

    def gates(self, x: ArrayLike) -> tuple[Array, ...]:
        """The gate vectors ``(a_1, ..., a_L)`` of an input ``(..., in_features)``, each
        ``(..., E_l)`` on the simplex."""
        return self._gates(self._check_input(x))

    def __call__(self, x: ArrayLike) -> Float[Array, "... out_features"]:
        """Arguments:
        x: one input ``(in_features,)``, or a batch ``(..., in_features)``.

        Returns:
            ``sum_n a_1[n_1] ... a_L[n_L] W[n] [x, 1]`` of shape ``(..., out_features)``,
            contracted through the factors (the expert weights are never built).
        """
        x = self._check_input(x)
        gates = self._gates(x)
        if self.format == "cp":
            u_in = self.in_factor
            h = x @ u_in[: self.in_features]
            if self.use_bias:
                h = h + u_in[-1]
            for a, u in zip(gates, self.expert_factors, strict=True):
                h = h * (a @ u)
            return h @ self.out_factor.T
        g_in = self.in_factor
        m = jnp.einsum("...i,aic->...ac", x, g_in[:, : self.in_features])
        if self.use_bias:
            m = m + g_in[:, -1]
        for a, g in reversed(tuple(zip(gates, self.expert_factors, strict=True))):
            m = jnp.einsum("...n,anb->...ab", a, g) @ m
        return jnp.einsum("coa,...ac->...o", self.out_factor, m)

    def expert_weights(self) -> Array:
        """The explicit expert weights ``(E_1, ..., E_L, out_features, in_features + 1)``
        (``in_features`` without a bias): for inspection and tests only, the forward pass never
        builds them."""
        n = len(self.levels)
        idx = "".join(chr(ord("A") + j) for j in range(n))
        if self.format == "cp":
            spec = ",".join(f"{c}r" for c in idx) + f",or,ir->{idx}oi"
            return jnp.einsum(spec, *self.expert_factors, self.out_factor, self.in_factor)
        t = self.expert_factors[0]  # (a, n_1, b)
        for j, g in enumerate(self.expert_factors[1:], start=1):
            t = jnp.einsum(f"a{idx[:j]}b,b{idx[j]}c->a{idx[: j + 1]}c", t, g)
        t = jnp.einsum(f"a{idx}b,bic->a{idx}ic", t, self.in_factor)
        return jnp.einsum(f"a{idx}ic,coa->{idx}oi", t, self.out_factor)
