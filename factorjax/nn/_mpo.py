"""`SharedMPOStack`: ``L`` linear layers whose TT-matrix (MPO) weights share one central core.

The scheme of MPOBERT (Liu, Gao, Zhao, Wen et al., ACL 2021; "Scaling Pre-trained Language
Models to Deeper via Parameter-efficient Architecture", 2023): every weight is an MPO
``W_l = G^l_1 ... G^l_{c-1} C G^l_{c+1} ... G^l_d``; the large central core ``C`` is shared by
all layers, the small auxiliary cores ``G^l_k`` are the layer's own. The stack is one pytree:
the auxiliary cores of all layers are stacked along a leading layer axis and the layers run as
one ``lax.scan``; the gradient of ``C`` is the sum of its gradients through every layer.
`SharedMPOStack.from_dense` fits a stack to ``L`` given dense weights (gauge-aligned TT-SVDs,
then alternating least squares).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jaxtyping import Float, PRNGKeyArray

from factorjax import _lapack
from factorjax._checks import as_real_array, check_choice, check_positive_int, describe
from factorjax.factorizations._init import target_variance
from factorjax.factorizations._tensorize import factor_std
from factorjax.factorizations.tensor_train import _resolve_ranks
from factorjax.factorizations.tt_matrix import TTMatrix, _resolve_modes
from factorjax.nn._mpo_fit import SharedMPOReport, fit_cores, insert_center

__all__ = ["SharedMPOReport", "SharedMPOStack"]

INITS = ("glorot", "he", "lecun", "std")


def check_layout(out_features, in_features, out_modes, in_modes, tensor_order, center, rank):
    """The modes, the centre index and the inner TT ranks of a stack (validated)."""
    out_modes, in_modes = _resolve_modes(out_features, in_features, out_modes, in_modes,
                                         tensor_order)  # fmt: skip
    d = len(out_modes)
    if d < 2:
        raise ValueError(
            f"a shared MPO needs at least 2 cores (a shared centre and an auxiliary core); got "
            f"tensor_order / modes of length {d}."
        )
    center = d // 2 if center is None else center
    if isinstance(center, bool) or not isinstance(center, (int, np.integer)):
        raise TypeError(f"`center` must be an int (the index of the shared core); got "
                        f"{describe(center)}.")  # fmt: skip
    if not 0 <= center < d:
        raise ValueError(f"`center` must be an int in [0, {d - 1}] (one of the {d} cores); got "
                         f"{center}.")  # fmt: skip
    ranks = _resolve_ranks(rank, [o * i for o, i in zip(out_modes, in_modes, strict=True)])
    return out_modes, in_modes, int(center), ranks


def check_activation(activation: Any) -> Callable | None:
    if activation is not None and not callable(activation):
        raise TypeError(f"`activation` must be None or a callable; got {describe(activation)}.")
    return activation


def layer_cores(shared: Array, aux: Sequence[Array], center: int, layer: Any) -> tuple:
    """The ``d`` cores of one layer: its auxiliary cores with the shared core at ``center``."""
    return insert_center([a[layer] for a in aux], shared, center)


def forward(shared, aux, bias, x, *, center: int, activation, order: str) -> Array:
    """``x -> act(W_1 x + b_1) -> ... -> W_L h + b_L`` (no activation after the last layer),
    the first ``L - 1`` layers in one ``lax.scan`` over the stacked auxiliary cores."""

    def layer(h, params):
        aux_l, b_l = params
        y = TTMatrix(insert_center(aux_l, shared, center)).apply(h, order=order)
        return y if b_l is None else y + b_l

    num_layers = aux[0].shape[0]
    if num_layers > 1:
        act = (lambda y: y) if activation is None else activation
        head = (tuple(a[:-1] for a in aux), None if bias is None else bias[:-1])
        x, _ = jax.lax.scan(lambda h, p: (act(layer(h, p)), None), x, head)
    return layer(x, (tuple(a[-1] for a in aux), None if bias is None else bias[-1]))


def _semi_orthogonal(key, rows: int, cols: int, dtype) -> Array:
    """A Haar-random ``(rows, cols)`` matrix with orthonormal columns (or rows, if wide)."""
    g = jax.random.normal(key, (max(rows, cols), min(rows, cols)), dtype)
    q, r = _lapack.qr(g)
    q = q * jnp.where(jnp.diag(r) < 0, -1, 1).astype(dtype)
    return q if rows >= cols else q.T


def init_cores(key, num_layers, out_modes, in_modes, ranks, center, var, dtype):
    """Random cores: every entry of every layer's ``W_l`` has variance ``var``.

    All cores have entry std ``s = (var / (r_1 ... r_{d-1}))^(1 / 2d)``: each entry of ``W_l``
    sums ``r_1 ... r_{d-1}`` products of ``d`` independent zero-mean entries, as for one
    TT-matrix. The auxiliary cores are i.i.d. normal. The shared core is a Haar-random scaled
    isometry: its unfolding ``M`` of shape ``(r_{c-1} o_c r_c, i_c)`` has ``M^T M = rows s^2 I``
    (``M M^T = cols s^2 I`` if wide), entries of mean square ``s^2`` (so the entry variance of
    ``W_l`` is on target). Why: averaging over the auxiliary cores with ``C`` fixed,
    ``E[W_l^T W_l | C] = (prod_{k != c} o_k s^2) (prod of the ranks not at the centre's bonds)
    I ⊗ M^T M ⊗ I``; with ``M^T M ∝ I`` this is ``d_out var I``, so for any input ``h`` set by
    the earlier layers ``E[|W_l h|^2 | C, h] = d_out var |h|^2`` exactly, as for independently
    drawn layers. A Gaussian ``C`` instead multiplies every layer by the same random
    ``I ⊗ M^T M ⊗ I``: one draw reused ``L`` times, whose distortion compounds with depth.
    """
    d, dtype = len(out_modes), jnp.result_type(float) if dtype is None else dtype
    full = [1, *ranks, 1]
    shapes = [(full[k], out_modes[k], in_modes[k], full[k + 1]) for k in range(d)]
    s = factor_std(var, math.prod(ranks), d)
    k_aux, k_c = jax.random.split(key)
    keys = jax.random.split(k_aux, d - 1)
    aux_shapes = shapes[:center] + shapes[center + 1 :]
    aux = tuple(
        s * jax.random.normal(k, (num_layers, *shp), dtype)
        for k, shp in zip(keys, aux_shapes, strict=True)
    )
    r0, o, i, r1 = shapes[center]
    rows = r0 * o * r1
    m = s * math.sqrt(max(rows, i)) * _semi_orthogonal(k_c, rows, i, dtype)
    shared = m.reshape(r0, o, r1, i).transpose(0, 1, 3, 2)
    return shared, aux


class SharedMPOStack(eqx.Module):
    """``L`` linear layers ``y = W_l x + b_l`` whose TT-matrix weights share the central core
    (MPOBERT), applied in sequence with an optional activation between layers.

    ``W_l`` has cores ``(r_{k-1}, out_k, in_k, r_k)`` (as `TTMatrix`); core ``center`` is the
    one ``shared`` array, the others are ``aux`` (each ``(L, r_{k-1}, out_k, in_k, r_k)``, in
    chain order, the centre left out). Takes one input ``(in_features,)`` or a batch
    ``(..., in_features)`` (then the planner sees the batch size); batch with ``jax.vmap``.

    Example:
        >>> import jax
        >>> from factorjax.nn import SharedMPOStack
        >>> s = SharedMPOStack(6, 64, 64, 8, key=jax.random.key(0))
        >>> s.shared.shape, [a.shape for a in s.aux]
        ((8, 4, 4, 8), [(6, 1, 4, 4, 8), (6, 8, 4, 4, 1)])
        >>> s(jax.numpy.ones(64)).shape, s.num_params < s.num_params_unshared
        ((64,), True)
    """

    shared: Float[Array, "r0 o i r1"]
    aux: tuple[Float[Array, "L _r0 _o _i _r1"], ...]
    bias: Float[Array, "L out_features"] | None
    num_layers: int = eqx.field(static=True)
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    center: int = eqx.field(static=True)
    activation: Callable | None = eqx.field(static=True)
    order: str = eqx.field(static=True)

    def __init__(
        self,
        num_layers: Any,
        in_features: Any,
        out_features: Any,
        rank: Any,
        *,
        out_modes: Any = None,
        in_modes: Any = None,
        tensor_order: Any = None,
        center: Any = None,
        use_bias: bool = True,
        init: Any = "glorot",
        std: Any = None,
        activation: Any = None,
        order: Any = "auto",
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        """Arguments:
        num_layers: ``L >= 1``; with ``L > 1`` the layers chain, so ``in_features`` must
            equal ``out_features``.
        in_features, out_features: the sizes of the input and of the output of every layer.
        rank: an int (a cap on every inner TT rank, clipped to what the modes allow) or the
            tuple of the ``d - 1`` inner ranks (validated).
        out_modes, in_modes, tensor_order: the tensorization, as `TTMatrix.init`
            (``tensor_order`` is the number of cores ``d >= 2``, default 3).
        center: the index of the shared core (default ``d // 2``, the middle core).
        use_bias: a bias per layer (zeros at init).
        init, std: the variance of every layer's reconstructed weight: ``"glorot"``,
            ``"he"``, ``"lecun"``, or ``"std"`` with ``std``; see `init_cores` for the
            shared core's scaled-isometry draw that keeps the signal stable with depth.
        activation: ``None`` (identity: the stack is linear) or a function applied after
            every layer but the last (e.g. ``jax.nn.relu``, with ``init="he"``).
        order: the contraction order, ``"auto"`` (planned) or a `TTMatrix` candidate's name.
        dtype: the parameters' dtype (default: JAX's default float).
        key: a JAX PRNG key.
        """
        num_layers = check_positive_int("num_layers", num_layers)
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        _check_chain(num_layers, in_features, out_features)
        out_modes, in_modes, center, ranks = check_layout(
            out_features, in_features, out_modes, in_modes, tensor_order, center, rank
        )
        check_choice("init", init, INITS)
        var = target_variance(init, fan_in=in_features, fan_out=out_features, std=std,
                              alpha=None)  # fmt: skip
        shared, aux = init_cores(key, num_layers, out_modes, in_modes, ranks, center, var, dtype)
        bias = jnp.zeros((num_layers, out_features), shared.dtype) if use_bias else None
        _fill(self, shared, aux, bias, center, check_activation(activation), order)

    @classmethod
    def from_cores(
        cls,
        shared: Any,
        aux: Sequence[Any],
        bias: Any = None,
        *,
        center: Any,
        activation: Any = None,
        order: Any = "auto",
    ) -> "SharedMPOStack":
        """The stack with given cores.

        Arguments:
            shared: the shared core ``(r_{c-1}, o_c, i_c, r_c)``.
            aux: the ``d - 1`` auxiliary cores in chain order (the centre left out), each
                ``(L, r_{k-1}, o_k, i_k, r_k)``.
            bias: ``None`` or the biases ``(L, d_out)``.
            center: the index of the shared core in the chain, in ``[0, d - 1]``.
            activation, order: as in the constructor.

        Returns:
            A `SharedMPOStack`.
        """
        shared = as_real_array("shared", shared)
        if isinstance(aux, (str, bytes)) or not isinstance(aux, Sequence) or len(aux) == 0:
            raise TypeError(f"`aux` must be a non-empty sequence of arrays; got {describe(aux)}.")
        aux = tuple(as_real_array(f"aux[{k}]", a) for k, a in enumerate(aux))
        for k, a in enumerate(aux):
            if a.ndim != 5 or a.shape[0] != aux[0].shape[0]:
                raise ValueError(
                    f"`aux[{k}]` must be a stack (L, r_(k-1), out_k, in_k, r_k) with the same L "
                    f"= {aux[0].shape[0] if aux[0].ndim else '?'} as aux[0]; got {describe(a)}."
                )
        d = len(aux) + 1
        if isinstance(center, bool) or not isinstance(center, (int, np.integer)):
            raise TypeError(f"`center` must be an int; got {describe(center)}.")
        if not 0 <= center < d:
            raise ValueError(f"`center` must be an int in [0, {d - 1}]; got {center}.")
        if shared.ndim != 4:
            raise ValueError(f"`shared` must be a core (r, o, i, r'); got {describe(shared)}.")
        w0 = TTMatrix(layer_cores(shared, aux, int(center), 0))  # checks the chain
        num_layers, (d_out, d_in) = aux[0].shape[0], w0.shape
        _check_chain(num_layers, d_in, d_out)
        if bias is not None:
            bias = as_real_array("bias", bias)
            if bias.shape != (num_layers, d_out):
                raise ValueError(
                    f"`bias` must have shape ({num_layers}, {d_out}); got {describe(bias)}."
                )
        self = object.__new__(cls)
        _fill(self, shared, aux, bias, int(center), check_activation(activation), order)
        return self

    @classmethod
    def from_dense(
        cls,
        weights: Any,
        rank: Any,
        *,
        biases: Any = None,
        out_modes: Any = None,
        in_modes: Any = None,
        tensor_order: Any = None,
        center: Any = None,
        sweeps: Any = 10,
        activation: Any = None,
        order: Any = "auto",
    ) -> tuple["SharedMPOStack", SharedMPOReport]:
        """A stack sharing one central core fitted to ``L`` dense weights (least squares:
        gauge-aligned TT-SVDs, then ``sweeps`` sweeps of alternating least squares; the
        algorithm is `factorjax.nn._mpo_fit.fit_cores`'s).

        Arguments:
            weights: real ``(L, d_out, d_in)``; ``d_in == d_out`` when ``L > 1``.
            rank: an int cap on every inner TT rank (clipped) or the tuple of the inner ranks.
            biases: ``None`` (no biases) or ``(L, d_out)``.
            out_modes, in_modes, tensor_order, center: the layout, as in `SharedMPOStack`.
            sweeps: the number of ALS sweeps (an int >= 0).
            activation, order: as in `SharedMPOStack`.

        Returns:
            ``(stack, report)``: the `SharedMPOStack` and a `SharedMPOReport`.

        Example:
            >>> w = jax.random.normal(jax.random.key(0), (4, 64, 64)) / 8
            >>> stack, report = SharedMPOStack.from_dense(w, 8)
            >>> report.errors.shape, stack.num_layers
            ((4,), 4)
        """
        w = as_real_array("weights", weights)
        if w.ndim != 3:
            raise ValueError(f"`weights` must be a stack (L, d_out, d_in); got {describe(w)}.")
        num_layers, d_out, d_in = w.shape
        _check_chain(num_layers, d_in, d_out)
        out_modes, in_modes, center, ranks = check_layout(
            d_out, d_in, out_modes, in_modes, tensor_order, center, rank
        )
        if isinstance(sweeps, bool) or not isinstance(sweeps, (int, np.integer)) or sweeps < 0:
            raise ValueError(f"`sweeps` must be an int >= 0; got {sweeps!r}.")
        shared, aux, report = fit_cores(w, out_modes, in_modes, center, ranks, int(sweeps))
        stack = cls.from_cores(shared, aux, biases, center=center, activation=activation,
                               order=order)  # fmt: skip
        return stack, report

    @property
    def ranks(self) -> tuple[int, ...]:
        """The inner TT ranks ``(r_1, ..., r_{d-1})`` (the same for every layer)."""
        return TTMatrix(layer_cores(self.shared, self.aux, self.center, 0)).ranks

    def layer_weight(self, layer: Any) -> TTMatrix:
        """The `TTMatrix` of layer ``layer`` (an int in ``[-L, L)``, or a traced integer):
        its auxiliary cores with the shared core."""
        return TTMatrix(layer_cores(self.shared, self.aux, self.center, self._index(layer)))

    def to_dense(self) -> Float[Array, "L out_features in_features"]:
        """Every layer's dense weight, ``(L, d_out, d_in)``."""
        return jax.vmap(lambda a: TTMatrix(insert_center(a, self.shared, self.center)).to_matrix())(
            self.aux
        )

    def apply_layer(self, layer: Any, x: Any) -> Float[Array, "... out_features"]:
        """``W_l x + b_l`` (no activation) for one input ``(in_features,)`` or a batch."""
        x = self._check_x(x)
        y = self.layer_weight(layer).apply(x, order=self.order)
        return y if self.bias is None else y + self.bias[self._index(layer)]

    def __call__(self, x: Any) -> Float[Array, "... out_features"]:
        """All ``L`` layers in sequence (the activation between them, none after the last)."""
        x = self._check_x(x)
        return forward(self.shared, self.aux, self.bias, x, center=self.center,
                       activation=self.activation, order=self.order)  # fmt: skip

    @property
    def num_params(self) -> int:
        """Parameters held: the shared core once, the auxiliary cores and biases of each layer."""
        return sum(a.size for a in jax.tree.leaves((self.shared, self.aux, self.bias)))

    @property
    def num_params_unshared(self) -> int:
        """Parameters of ``L`` separate TT-matrices of the same ranks (and the same biases)."""
        return self.num_params + (self.num_layers - 1) * self.shared.size

    @property
    def num_params_dense(self) -> int:
        """Parameters of ``L`` dense layers (and the same biases)."""
        biases = 0 if self.bias is None else self.bias.size
        return self.num_layers * self.in_features * self.out_features + biases

    def _index(self, layer: Any) -> Any:
        n = self.num_layers
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if not -n <= layer < n:
                raise ValueError(f"`layer` must be an int in [{-n}, {n - 1}]; got {layer}.")
            return int(layer) % n
        if (
            hasattr(layer, "dtype")
            and getattr(layer, "shape", None) == ()
            and jnp.issubdtype(layer.dtype, jnp.integer)
        ):
            return layer
        raise TypeError(f"`layer` must be an int or an integer scalar; got {describe(layer)}.")

    def _check_x(self, x: Any) -> Array:
        x = as_real_array("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"`x` must have in_features = {self.in_features} on its last axis; "
                             f"got {describe(x)}.")  # fmt: skip
        return x


def _check_chain(num_layers: int, in_features: int, out_features: int):
    if num_layers > 1 and in_features != out_features:
        raise ValueError(
            f"the layers of a stack chain (each one's output is the next one's input), so "
            f"`in_features` must equal `out_features` when num_layers > 1; got "
            f"num_layers={num_layers}, in_features={in_features}, out_features={out_features}."
        )


def _fill(self, shared, aux, bias, center, activation, order):
    """Set the fields (for `__init__` and `from_cores`), checking ``order`` on layer 0."""
    w0 = TTMatrix(layer_cores(shared, aux, center, 0))
    order = order if order == "auto" else w0.plan(1, order).order
    for name, value in (
        ("shared", shared), ("aux", tuple(aux)), ("bias", bias),
        ("num_layers", int(aux[0].shape[0])), ("in_features", w0.in_features),
        ("out_features", w0.out_features), ("center", center), ("activation", activation),
        ("order", order),
    ):  # fmt: skip
        object.__setattr__(self, name, value)
