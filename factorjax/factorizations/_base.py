"""The abstract base of every factorization format."""

import abc
import math

import equinox as eqx
import jax
from jax import Array


class AbstractFactorization(eqx.Module):
    """A factorized array: a pytree of factors that reconstructs a dense weight.

    Every format is a final subclass. It offers:

    - ``init(*shape, rank, *, key, init=..., dtype=...)`` (a classmethod): random factors whose
      reconstructed weight has the target variance, or the small-scale init ``init="small"``.
    - ``from_dense(w, rank=None, *, rtol=None)`` (a classmethod): the best-known decomposition of
      a dense array.
    - [`to_dense`][factorjax.factorizations.AbstractFactorization.to_dense],
      [`shape`][factorjax.factorizations.AbstractFactorization.shape],
      [`rank`][factorjax.factorizations.AbstractFactorization.rank],
      [`num_params`][factorjax.factorizations.AbstractFactorization.num_params],
      [`truncate`][factorjax.factorizations.AbstractFactorization.truncate].
    - ``__call__(x)``: apply the operator to one unbatched input without building the dense
      weight when that is cheaper; batch with ``jax.vmap``.
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Shape of the reconstructed dense array."""

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """The format's rank (for matrices: an upper bound on the matrix rank)."""

    @abc.abstractmethod
    def to_dense(self) -> Array:
        """Reconstruct the dense array (in the cheapest contraction order)."""

    @abc.abstractmethod
    def truncate(self, rank: int) -> "AbstractFactorization":
        """The best approximation of lower rank, computed from the factors."""

    @abc.abstractmethod
    def __call__(self, x: Array) -> Array:
        """Apply the represented operator to one input."""

    @property
    def num_params(self) -> int:
        """Number of scalar parameters held by the factors."""
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(self) if eqx.is_array(leaf))

    @property
    def dtype(self):
        """The floating dtype of the factors."""
        return jax.tree.leaves(self)[0].dtype
