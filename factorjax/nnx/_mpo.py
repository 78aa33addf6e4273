"""`SharedMPOStack` for Flax NNX: the Equinox stack's cores, held as ``nnx.Param``s."""

from typing import Any

from flax import nnx
from jax import Array

from factorjax.factorizations.tt_matrix import TTMatrix
from factorjax.nn import _mpo as eqx_mpo
from factorjax.nnx._params import as_params, values

__all__ = ["SharedMPOStack"]


class SharedMPOStack(nnx.Module):
    """``L`` linear layers whose TT-matrix weights share the central core (MPOBERT); the same
    arguments, cores and outputs as `factorjax.nn.SharedMPOStack`, with ``rngs`` instead of
    ``key``. The shared core is one ``nnx.Param`` (its gradient sums over the layers), each
    stacked auxiliary core and the biases are ``nnx.Param``s.

    Example:
        >>> from flax import nnx
        >>> from factorjax.nnx import SharedMPOStack
        >>> s = SharedMPOStack(6, 64, 64, 8, rngs=nnx.Rngs(0))
        >>> s(jax.numpy.ones((32, 64))).shape          # doctest: +SKIP
        (32, 64)
    """

    def __init__(
        self,
        num_layers: Any,
        in_features: Any,
        out_features: Any,
        rank: Any,
        *,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """Arguments: as `factorjax.nn.SharedMPOStack` (``out_modes``, ``in_modes``,
        ``tensor_order``, ``center``, ``use_bias``, ``init``, ``std``, ``activation``,
        ``order``, ``dtype``), with ``rngs`` (its ``params`` stream draws the cores)."""
        stack = eqx_mpo.SharedMPOStack(
            num_layers, in_features, out_features, rank, key=rngs.params(), **kwargs
        )
        self._adopt(stack)

    def _adopt(self, stack: eqx_mpo.SharedMPOStack):
        self.shared = nnx.Param(stack.shared)
        self.aux = as_params(stack.aux)
        self.bias = as_params(stack.bias)
        self.num_layers, self.center = stack.num_layers, stack.center
        self.in_features, self.out_features = stack.in_features, stack.out_features
        self.activation, self.order = stack.activation, stack.order

    @classmethod
    def from_equinox(cls, stack: Any) -> "SharedMPOStack":
        """The NNX stack holding the arrays of an Equinox `factorjax.nn.SharedMPOStack`."""
        if not isinstance(stack, eqx_mpo.SharedMPOStack):
            raise TypeError(
                f"`stack` must be a factorjax.nn.SharedMPOStack; got {type(stack).__name__}."
            )
        # NNX objects are set up by their metaclass: construct a rank-1 stack of the same
        # layout (a cheap draw), then adopt the given cores (as FactorizedLinear does).
        w = stack.layer_weight(0)
        self = cls(stack.num_layers, stack.in_features, stack.out_features, 1,
                   out_modes=w.out_modes, in_modes=w.in_modes, center=stack.center,
                   use_bias=False, rngs=nnx.Rngs(0))  # fmt: skip
        self._adopt(stack)
        return self

    @classmethod
    def from_cores(cls, shared: Any, aux: Any, bias: Any = None, **kwargs) -> "SharedMPOStack":
        """The stack with given cores, as `factorjax.nn.SharedMPOStack.from_cores`."""
        return cls.from_equinox(eqx_mpo.SharedMPOStack.from_cores(shared, aux, bias, **kwargs))

    @classmethod
    def from_dense(cls, weights: Any, rank: Any, **kwargs) -> tuple["SharedMPOStack", Any]:
        """A stack fitted to dense weights ``(L, d_out, d_in)``, as
        `factorjax.nn.SharedMPOStack.from_dense`; returns ``(stack, report)``."""
        stack, report = eqx_mpo.SharedMPOStack.from_dense(weights, rank, **kwargs)
        return cls.from_equinox(stack), report

    @property
    def equinox(self) -> eqx_mpo.SharedMPOStack:
        """The stack as a `factorjax.nn.SharedMPOStack` of plain arrays (no checks rerun)."""
        stack = object.__new__(eqx_mpo.SharedMPOStack)
        for name, value in (
            ("shared", self.shared[...]), ("aux", tuple(values(self.aux))),
            ("bias", None if self.bias is None else self.bias[...]),
            ("num_layers", self.num_layers), ("in_features", self.in_features),
            ("out_features", self.out_features), ("center", self.center),
            ("activation", self.activation), ("order", self.order),
        ):  # fmt: skip
            object.__setattr__(stack, name, value)
        return stack

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.equinox.ranks

    @property
    def num_params(self) -> int:
        return self.equinox.num_params

    @property
    def num_params_unshared(self) -> int:
        return self.equinox.num_params_unshared

    @property
    def num_params_dense(self) -> int:
        return self.equinox.num_params_dense

    def layer_weight(self, layer: Any) -> TTMatrix:
        """The `TTMatrix` of one layer (plain arrays)."""
        return self.equinox.layer_weight(layer)

    def to_dense(self) -> Array:
        """Every layer's dense weight, ``(L, d_out, d_in)``."""
        return self.equinox.to_dense()

    def apply_layer(self, layer: Any, x: Any) -> Array:
        """``W_l x + b_l`` (no activation)."""
        return self.equinox.apply_layer(layer, x)

    def __call__(self, x: Any) -> Array:
        """All layers in sequence, as `factorjax.nn.SharedMPOStack.__call__`."""
        return self.equinox(x)
