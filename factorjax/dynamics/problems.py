"""Recovery problems: low-rank sensing and completion of matrices and tubal tensors.

A problem is a pytree (a final `eqx.Module` under `AbstractProblem`) generated from a key:
its ground truth ``X*``, its observations ``y = A(X*) + noise``, and the linear measurement
operator ``A`` with its adjoint ``A*``, both explicit. Every problem minimises the squared
residual

    L(X) = 1/2 ||A(X) - y||^2,          grad L(X) = A*(A(X) - y),

with the factor ``1/2`` stated: ``grad`` is exact, not an autodiff approximation.

Batching. ``measure`` takes ``(..., *shape)`` and ``adjoint`` takes ``(..., m)``: runs that share
one problem instance are measured together, and a dense operator then acts as one matrix-matrix
product ``X.reshape(runs, -1) @ G.T``. A batch of problem instances comes from
``jax.vmap`` over keys (``make`` is traceable; its sizes are static), and is used under
``jax.vmap`` too.

Precision. The dense operators multiply with ``Precision.HIGHEST``: the residual of a run that
converges is many orders below ``y``, and the bfloat16 / tf32 passes that TPUs and recent GPUs
otherwise use for float32 would swamp it (and would make ``A*`` differ from the transpose of the
``A`` actually applied). No-op on CPU.

Example:
    >>> import jax
    >>> from factorjax.dynamics import TubalSensing
    >>> p = TubalSensing.make(10, 4, 2, 254, key=jax.random.key(0))
    >>> p.shape, p.rank, p.y.shape
    ((10, 10, 4), 2, (254,))
    >>> float(p.loss(p.ground_truth))
    0.0
    >>> batch = jax.vmap(lambda key: TubalSensing.make(10, 4, 2, 254, key=key))(
    ...     jax.random.split(jax.random.key(1), 3))
    >>> batch.G.shape
    (3, 254, 400)
"""

from factorjax.dynamics._completion import MatrixCompletion, TensorCompletion
from factorjax.dynamics._problem import AbstractProblem
from factorjax.dynamics._sensing import MatrixSensing, TubalSensing

__all__ = [
    "AbstractProblem",
    "MatrixCompletion",
    "MatrixSensing",
    "TensorCompletion",
    "TubalSensing",
]
