"""`LatentMoE`: the Mixture of Latent Experts (MoLE / MoLAE) of Liu et al., "Beyond Standard
MoE: Mixture of Latent Experts for Resource-Efficient Language Models" (arXiv 2503.23100).

Every expert of a MoLE layer factors through one latent space shared by all experts of the
layer: expert ``e``'s weight is

    W_e = B_e P,    P (latent_dim, d_in) shared,    B_e (d_out, latent_dim) expert-specific,

which is the paper's form ``W^i = A^i B`` (its shared "latent mapping" ``B`` is ``P`` here, its
expert-specific transformation ``A^i`` is ``B_e``; the paper's latent width equals the expert's
output width, any ``1 <= latent_dim <= d_in`` is allowed here). Tokens are routed by a top-k
softmax router ``logits = x W_r``, ``W_r (d_in, E)``:

    y = sum_{e in topk(x)} w_e(x) f_e(x),    f_e(x) = act(B_e (P x) + b_e),

with ``act`` the identity unless ``activation`` is given. The shared projection ``P x`` is
computed once per token, then only the ``top_k`` selected small maps ``B_e`` are gathered and
applied, ``O(latent_dim d_in + top_k d_out latent_dim)`` per token; no ``(E, d_out, d_in)``
tensor is ever built.

`fit_latent` converts trained experts ``W_e`` into this form in two phases:

1. The shared basis from the stacked experts ``S = [W_1; ...; W_E]`` ``(E d_out, d_in)``:
   ``P`` is its top-``latent_dim`` right-singular subspace (orthonormal rows) and
   ``B_e = W_e P^T``. Because ``[B_1; ...; B_E] P`` ranges over all matrices of rank at most
   ``latent_dim``, this is the Eckart-Young optimum of ``sum_e ||W_e - B_e P||_F^2``: the total
   squared error is the tail ``sum_{k > latent_dim} sigma_k(S)^2``, and it is exact when the
   experts share a ``latent_dim``-dimensional row space. ``method="randomized"`` finds the
   subspace with a randomized range finder instead (Halko, Martinsson and Tropp, 2011), one
   pass over ``S`` with a sketch of ``latent_dim + oversample`` columns, for very large stacks.
2. Refinement by alternating least squares: ``B_e = W_e P^T`` (the exact minimizer for an
   orthonormal ``P``), then ``P`` the exact least-squares minimizer given the ``B_e``,
   re-orthonormalized (which leaves its row space, hence the best ``B_e``, unchanged). A sweep
   is one step of subspace iteration on ``S^T S``, so the error never increases; the best
   iterate is kept. After an exact SVD the refinement only polishes rounding; after a
   randomized phase 1 it converges to the Eckart-Young optimum.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack
from factorjax._checks import as_real_array, check_choice, check_positive_int, describe
from factorjax.moe._routing import check_top_k, route

__all__ = ["LatentMoE", "LatentReport", "fit_latent", "latent_moe"]

METHODS = ("svd", "randomized")


# --- shared helpers (also used by the basis experts) -------------------------------------------


def router_aux(logits: Array, indices: Array) -> dict[str, Array]:
    """The router's auxiliary losses over every token of ``logits (..., E)``:
    ``"load_balancing"`` (Switch Transformer) ``E * sum_e f_e p_e``, with ``f_e`` the fraction
    of the ``top_k``-per-token assignments ``indices (..., top_k)`` that went to ``e`` (so that
    ``sum_e f_e = 1``; 1 for a perfectly balanced router) and ``p_e`` the mean softmax
    probability of ``e``; and ``"router_z"`` (ST-MoE) the mean of ``logsumexp(logits)^2``."""
    num_experts = logits.shape[-1]
    z = logits.reshape(-1, num_experts)
    idx = indices.reshape(z.shape[0], -1)
    f = jnp.sum(jax.nn.one_hot(idx, num_experts, dtype=z.dtype), axis=(0, 1)) / idx.size
    p = jnp.mean(jax.nn.softmax(z, axis=-1), axis=0)
    return {
        "load_balancing": num_experts * jnp.sum(f * p),
        "router_z": jnp.mean(jax.nn.logsumexp(z, axis=-1) ** 2),
    }


def check_input(x: ArrayLike, in_features: int) -> Array:
    x = as_real_array("x", x, min_ndim=1)
    if x.shape[-1] != in_features:
        raise ValueError(
            f"`x` must have in_features = {in_features} on its last axis; got {describe(x)}."
        )
    return x


def check_activation(activation: Any, name: str = "activation", *, optional: bool = True):
    if (activation is None and optional) or callable(activation):
        return activation
    allowed = "None or a callable" if optional else "a callable"
    raise TypeError(f"`{name}` must be {allowed}; got {describe(activation)}.")


def check_expert_weights(expert_weights: Any) -> Array:
    w = as_real_array("expert_weights", expert_weights)
    if w.ndim != 3 or 0 in w.shape:
        raise ValueError(
            "`expert_weights` must have shape (num_experts, out_features, in_features) with "
            f"nonzero sizes; got {describe(w)}."
        )
    return w


def check_router_weight(router_weight: Any, in_features: int, num_experts: int) -> Array:
    r = as_real_array("router_weight", router_weight)
    if r.shape != (in_features, num_experts):
        raise ValueError(
            f"`router_weight` must have shape (in_features, num_experts) = ({in_features}, "
            f"{num_experts}); got {describe(r)}."
        )
    return r


def check_expert_bias(bias: Any, num_experts: int, out_features: int, dtype: Any) -> Any:
    """None, or the experts' biases ``(E, d_out)`` (a shared ``(d_out,)`` is broadcast)."""
    if bias is None:
        return None
    b = as_real_array("bias", bias)
    if b.shape == (out_features,):
        b = jnp.broadcast_to(b, (num_experts, out_features))
    if b.shape != (num_experts, out_features):
        raise ValueError(
            f"`bias` must have shape (num_experts, out_features) = ({num_experts}, "
            f"{out_features}) or (out_features,) = ({out_features},); got {describe(b)}."
        )
    return b.astype(dtype)


def relative_errors(w: Array, w_hat: Array) -> tuple[Array, Array]:
    """``||W_e - W_hat_e||_F / ||W_e||_F`` per expert (the absolute error where ``W_e = 0``),
    and the overall ``||W - W_hat||_F / ||W||_F``."""
    err = jnp.sum((w - w_hat) ** 2, axis=(1, 2))
    ref = jnp.sum(w**2, axis=(1, 2))
    per = jnp.sqrt(err / jnp.where(ref > 0, ref, 1))
    total = jnp.sqrt(jnp.sum(err) / jnp.where(jnp.sum(ref) > 0, jnp.sum(ref), 1))
    return per, total


# --- the forward pass ---------------------------------------------------------------------------


# jitted: an eager call compiles one program per layout instead of one per operation
@functools.partial(jax.jit, static_argnames=("top_k", "activation", "return_aux"))
def latent_moe(
    x: ArrayLike,
    router: ArrayLike,
    projection: ArrayLike,
    experts: ArrayLike,
    bias: ArrayLike | None,
    *,
    top_k: int,
    activation: Callable | None = None,
    return_aux: bool = False,
) -> Any:
    """The MoLE forward pass (see the module docstring) on arrays.

    Arguments:
        x: inputs ``(..., d_in)``.
        router: ``W_r (d_in, E)``.
        projection: the shared ``P (latent_dim, d_in)``.
        experts: the expert maps ``B (E, d_out, latent_dim)``.
        bias: the experts' biases ``(E, d_out)`` or None.
        top_k: experts per token.
        activation: applied to each expert's output before mixing (None: identity).
        return_aux: also return the router's auxiliary losses (`router_aux`).

    Returns:
        ``y (..., d_out)``, or ``(y, aux)`` with ``return_aux``.
    """
    x, router, projection, experts = map(jnp.asarray, (x, router, projection, experts))
    logits = x @ router
    weights, idx = route(logits, top_k)
    w = jnp.take_along_axis(weights, idx, axis=-1)  # (..., k)
    z = x @ projection.T  # the shared projection, once per token
    h = jnp.einsum("...kol,...l->...ko", experts[idx], z)
    if bias is not None:
        h = h + jnp.asarray(bias)[idx]
    if activation is not None:
        h = activation(h)
    y = jnp.einsum("...k,...ko->...o", w, h)
    return (y, router_aux(logits, idx)) if return_aux else y


# --- the two-phase conversion -------------------------------------------------------------------


class LatentReport(NamedTuple):
    """What `fit_latent` reached: relative Frobenius errors ``||W_e - B_e P|| / ||W_e||``.

    Attributes:
        relative_error: per expert ``(E,)``, after refinement.
        overall: ``||W - W_hat||_F / ||W||_F`` over all experts, after refinement.
        phase1_relative_error, phase1_overall: the same after phase 1 (before refinement).
        trajectory: the overall error after phase 1 and after each sweep of the refinement
            ``(refine_steps + 1,)`` (non-increasing up to rounding; the best is kept).
    """

    relative_error: Array
    overall: Array
    phase1_relative_error: Array
    phase1_overall: Array
    trajectory: Array


def _reconstruct(projection: Array, experts: Array) -> Array:
    return jnp.einsum("eol,li->eoi", experts, projection)


@functools.partial(jax.jit, static_argnames=("latent_dim", "refine_steps", "method", "sketch"))
def _fit_latent(w, key, *, latent_dim, refine_steps, method, sketch):
    num_experts, d_out, d_in = w.shape
    stack = w.reshape(num_experts * d_out, d_in)
    if method == "svd":
        projection = _lapack.svd(stack, full_matrices=False)[2][:latent_dim]
    else:  # randomized range finder of the row space, then the SVD of the small projection
        omega = jax.random.normal(key, (num_experts * d_out, sketch), w.dtype)
        q = _lapack.qr(stack.T @ omega)[0]  # (d_in, sketch), orthonormal columns
        vh = _lapack.svd(stack @ q, full_matrices=False)[2][:latent_dim]
        projection = vh @ q.T
    experts = jnp.einsum("eoi,li->eol", w, projection)
    per1, total1 = relative_errors(w, _reconstruct(projection, experts))

    def sweep(carry, _):
        proj, best_proj, best_err = carry
        b = jnp.einsum("eoi,li->eol", w, proj)
        # least squares for P given B: (B^T B)^{-1} B^T S, whose row space is that of B^T S
        q = _lapack.qr(jnp.einsum("eol,eoi->il", b, w))[0]  # (d_in, latent_dim)
        proj = q.T
        _, err = relative_errors(w, _reconstruct(proj, jnp.einsum("eoi,li->eol", w, proj)))
        better = err < best_err
        best_proj = jnp.where(better, proj, best_proj)
        return (proj, best_proj, jnp.minimum(err, best_err)), err

    (_, projection, _), errs = jax.lax.scan(
        sweep, (projection, projection, total1), None, length=refine_steps
    )
    experts = jnp.einsum("eoi,li->eol", w, projection)
    per, total = relative_errors(w, _reconstruct(projection, experts))
    trajectory = jnp.concatenate([total1[None], errs])
    return projection, experts, LatentReport(per, total, per1, total1, trajectory)


def fit_latent(
    expert_weights: ArrayLike,
    latent_dim: Any,
    *,
    refine_steps: Any = 2,
    method: Any = "svd",
    oversample: Any = 8,
    key: PRNGKeyArray | None = None,
) -> tuple[Array, Array, LatentReport]:
    """Factor experts ``W_e`` as ``B_e P`` with one shared ``P`` (the two-phase conversion of
    the module docstring). Jitted; shapes and options are static.

    Arguments:
        expert_weights: ``W (E, d_out, d_in)``.
        latent_dim: the width of the shared latent space, in ``[1, min(d_in, E d_out)]``.
        refine_steps: sweeps of alternating least squares after phase 1 (an int >= 0).
        method: phase 1 by the exact SVD of the stacked experts (``"svd"``) or by a randomized
            range finder (``"randomized"``, needs ``key``).
        oversample: the randomized sketch's extra columns.
        key: a JAX PRNG key, for ``method="randomized"``.

    Returns:
        ``(projection (latent_dim, d_in), experts (E, d_out, latent_dim), report)``; the rows
        of ``projection`` are orthonormal.

    Example:
        >>> w = jax.random.normal(jax.random.key(0), (4, 8, 16))
        >>> p, b, report = fit_latent(w, 16)
        >>> bool(report.overall < 1e-5)
        True
    """
    w = check_expert_weights(expert_weights)
    num_experts, d_out, d_in = w.shape
    max_latent = min(d_in, num_experts * d_out)
    latent_dim = check_positive_int("latent_dim", latent_dim)
    if latent_dim > max_latent:
        raise ValueError(
            f"`latent_dim` must be an int in [1, min(in_features, num_experts * out_features)] "
            f"= [1, {max_latent}] for `expert_weights` of shape {tuple(w.shape)}; got "
            f"{latent_dim}."
        )
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int | np.integer):
        raise TypeError(f"`refine_steps` must be a Python int; got {describe(refine_steps)}.")
    if refine_steps < 0:
        raise ValueError(f"`refine_steps` must be an int >= 0; got {refine_steps}.")
    method = check_choice("method", method, METHODS)
    sketch = min(latent_dim + check_positive_int("oversample", oversample), max_latent)
    sketch = sketch if method == "randomized" else 0  # static: no recompiling for nothing
    if method == "randomized" and key is None:
        raise ValueError("`key` is required for method='randomized'; pass key=...")
    key = jax.random.key(0) if key is None else key
    return _fit_latent(
        w, key, latent_dim=latent_dim, refine_steps=int(refine_steps), method=method,
        sketch=sketch,
    )  # fmt: skip


# --- the layer ----------------------------------------------------------------------------------


def standard_normals(key: PRNGKeyArray, shapes: list[tuple[int, ...]], dtype: Any) -> list[Array]:
    """Independent ``N(0, 1)`` arrays of the given shapes from one draw (one random-bits
    program compiles several times faster than one per array on CPU)."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    offsets = np.cumsum([0, *sizes])
    return [
        flat[a:b].reshape(shape)
        for a, b, shape in zip(offsets[:-1], offsets[1:], shapes, strict=True)
    ]


def uniform_router(n: Array, in_features: int) -> Array:
    """``U(-1/sqrt(d_in), 1/sqrt(d_in))`` entries (as ``eqx.nn.Linear``) from ``N(0, 1)``
    ones ``n``: ``2 Phi(n) - 1`` is uniform on ``(-1, 1)``."""
    return (2 * jax.scipy.special.ndtr(n) - 1) / math.sqrt(in_features)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _init(key, d_in, d_out, num_experts, latent_dim, dtype):
    # jitted: one compilation per layout instead of one per eager operation
    r, p, b = standard_normals(
        key, [(d_in, num_experts), (latent_dim, d_in), (num_experts, d_out, latent_dim)], dtype
    )
    return uniform_router(r, d_in), p / math.sqrt(d_in), b / math.sqrt(latent_dim)


class LatentMoE(eqx.Module):
    """A Mixture of Latent Experts layer (MoLE, Liu et al. 2025): ``E`` experts
    ``W_e = B_e P`` sharing the projection ``P`` into a ``latent_dim``-dimensional space, mixed
    by a top-k softmax router (see the module docstring).

    Takes one input ``(in_features,)`` or a batch ``(..., in_features)``.

    Example:
        >>> import jax
        >>> from factorjax.moe import LatentMoE
        >>> layer = LatentMoE(16, 8, 4, 6, key=jax.random.key(0))
        >>> layer(jax.numpy.ones((5, 16))).shape
        (5, 8)
    """

    router: Float[Array, "in_features num_experts"]
    projection: Float[Array, "latent_dim in_features"]
    experts: Float[Array, "num_experts out_features latent_dim"]
    bias: Float[Array, "num_experts out_features"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    num_experts: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    top_k: int = eqx.field(static=True)
    activation: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        in_features: Any,
        out_features: Any,
        num_experts: Any,
        latent_dim: Any,
        *,
        top_k: Any = 2,
        use_bias: bool = True,
        activation: Any = None,
        key: PRNGKeyArray,
        dtype: Any = None,
    ):
        """Arguments:
        in_features, out_features: the sizes of the input and of the output.
        num_experts: the number of experts ``E``.
        latent_dim: the width of the shared latent space, in ``[1, in_features]``.
        top_k: experts per token, in ``[1, num_experts]``.
        use_bias: a bias per expert ``(E, out_features)`` (zeros at init).
        activation: applied to each expert's output before mixing (None: linear experts).
        key: a JAX PRNG key.
        dtype: the parameters' dtype (default: JAX's default float).

        Initialization: router ``U(-1/sqrt(d_in), 1/sqrt(d_in))`` (as ``eqx.nn.Linear``),
        ``P`` ``N(0, 1/d_in)`` and ``B_e`` ``N(0, 1/latent_dim)``, so that the entries of each
        ``W_e = B_e P`` have variance ``1/d_in`` (LeCun).
        """
        d_in = check_positive_int("in_features", in_features)
        d_out = check_positive_int("out_features", out_features)
        num_experts = check_positive_int("num_experts", num_experts)
        latent_dim = check_positive_int("latent_dim", latent_dim)
        if latent_dim > d_in:
            raise ValueError(
                f"`latent_dim` must be an int in [1, in_features] = [1, {d_in}] (the shared "
                f"projection maps the input into it); got {latent_dim}."
            )
        top_k = check_top_k(top_k, num_experts)
        activation = check_activation(activation)
        dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
        self.router, self.projection, self.experts = _init(
            key, d_in, d_out, num_experts, latent_dim, dtype
        )
        self.bias = jnp.zeros((num_experts, d_out), dtype) if use_bias else None
        self.in_features, self.out_features = d_in, d_out
        self.num_experts, self.latent_dim, self.top_k = num_experts, latent_dim, top_k
        self.activation = activation

    @classmethod
    def from_experts(
        cls,
        expert_weights: ArrayLike,
        router_weight: ArrayLike,
        latent_dim: Any,
        *,
        bias: ArrayLike | None = None,
        top_k: Any = 2,
        activation: Any = None,
        refine_steps: Any = 2,
        method: Any = "svd",
        oversample: Any = 8,
        key: PRNGKeyArray | None = None,
    ) -> tuple["LatentMoE", LatentReport]:
        """Convert a trained mixture of linear experts into a MoLE layer (`fit_latent`).

        Arguments:
            expert_weights: ``W (E, d_out, d_in)``.
            router_weight: the router ``(d_in, E)``, kept as it is.
            latent_dim, refine_steps, method, oversample, key: as in `fit_latent`.
            bias: the experts' biases ``(E, d_out)`` (or one ``(d_out,)`` for all), or None.
            top_k, activation: as in the constructor.

        Returns:
            ``(layer, report)`` with the `LatentReport` of the factorization.
        """
        w = check_expert_weights(expert_weights)
        num_experts, d_out, d_in = w.shape
        router = check_router_weight(router_weight, d_in, num_experts).astype(w.dtype)
        bias = check_expert_bias(bias, num_experts, d_out, w.dtype)
        projection, experts, report = fit_latent(
            w, latent_dim, refine_steps=refine_steps, method=method, oversample=oversample,
            key=key,
        )  # fmt: skip
        layer = cls(
            d_in, d_out, num_experts, projection.shape[0], top_k=top_k, activation=activation,
            use_bias=bias is not None, key=jax.random.key(0), dtype=w.dtype,
        )  # fmt: skip
        layer = eqx.tree_at(lambda m: (m.router, m.projection, m.experts), layer,
                            (router, projection, experts))  # fmt: skip
        if bias is not None:
            layer = eqx.tree_at(lambda m: m.bias, layer, bias)
        return layer, report

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(eqx.filter(self, eqx.is_array)))

    def expert_axes(self) -> list[int | None]:
        """The experts' axis of each array leaf, in ``jax.tree.leaves`` order: the router
        ``(d_in, E)`` has it at 1, the shared projection none, the expert maps
        ``(E, d_out, latent_dim)`` and the biases ``(E, d_out)`` at 0."""
        return [1, None, 0] + ([0] if self.bias is not None else [])

    def expert_weights(self) -> Float[Array, "num_experts out_features in_features"]:
        """The explicit expert weights ``W_e = B_e P`` ``(E, out_features, in_features)``, for
        inspection and tests (the forward pass never builds them)."""
        return _reconstruct(self.projection, self.experts)

    def __call__(self, x: ArrayLike, *, return_aux: bool = False) -> Any:
        """Arguments:
        x: one input ``(in_features,)`` or a batch ``(..., in_features)``.
        return_aux: also return ``{"load_balancing", "router_z"}`` (`router_aux`, over the
            tokens of this call).

        Returns:
            ``y (..., out_features)``, or ``(y, aux)``.
        """
        x = check_input(x, self.in_features)
        return latent_moe(
            x, self.router, self.projection, self.experts, self.bias, top_k=self.top_k,
            activation=self.activation, return_aux=return_aux,
        )  # fmt: skip
