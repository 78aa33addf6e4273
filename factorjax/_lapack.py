"""Matrix factorizations that cannot deadlock jax 0.10's CPU runtime.

jaxlib's CPU LAPACK kernels split a batch of matrices into tasks on the runtime's intra-op
thread pool and block until they finish. In jax 0.10 the runtime also runs independent
operations of one program concurrently on that pool, so when as many batched factorizations
run at once as the pool has threads (two on a 2-core machine: an ``eigh`` beside an ``svd`` in
a vmapped sweep), every thread blocks and the program hangs. jax 0.12 is not affected.

`svd`, `eigh` and `qr` here equal their ``jnp.linalg`` namesakes. On the CPU backend with jax
older than 0.12 they factor one matrix at a time (a ``lax.map`` over the batch, and
sequentially under ``jax.vmap``), so no kernel ever blocks on the pool; elsewhere they are the
``jnp.linalg`` functions themselves. The matrices of factorjax's metrics and factorizations are
small, and the loop costs a few microseconds per matrix. Derivatives (``jax.jvp``,
``jax.grad``) are computed as ``jnp.linalg`` computes them, batch at once.
"""

import functools

import jax
import jax.numpy as jnp

__all__ = ["eigh", "qr", "svd"]

_AFFECTED = jax.__version_info__ < (0, 12)


def _one_at_a_time(fn):
    """``fn`` on a stack ``(..., m, n)``, looping over the matrices where the runtime needs it."""

    def looped(x):
        lead = x.shape[:-2]
        flat = x.reshape(-1, *x.shape[-2:])
        out = jax.lax.map(fn, flat)
        return jax.tree.map(lambda o: o.reshape(*lead, *o.shape[1:]), out)

    sequential = jax.custom_jvp(jax.custom_batching.sequential_vmap(looped))
    # Derivatives are those of `fn` (custom_vmap alone has no reverse mode); the tangent
    # computation factors the batch at once, as jnp.linalg does.
    sequential.defjvp(lambda primals, tangents: jax.jvp(fn, primals, tangents))
    # Jitted so that an eager call compiles once per shape (the loop would otherwise be traced
    # and compiled again at every call); under an outer jit it is inlined.
    sequential = jax.jit(sequential)

    @functools.wraps(fn)
    def wrapper(x):
        if _AFFECTED and jax.default_backend() == "cpu":
            return sequential(x)
        return fn(x)

    return wrapper


# One wrapper per option set, built once: a fresh wrapper per call would make every eager call
# trace and compile anew (about a second per factorization on jax 0.10's CPU).
@functools.cache
def _svd(full_matrices: bool, compute_uv: bool):
    return _one_at_a_time(
        functools.partial(jnp.linalg.svd, full_matrices=full_matrices, compute_uv=compute_uv)
    )


@functools.cache
def _qr(mode: str):
    return _one_at_a_time(functools.partial(jnp.linalg.qr, mode=mode))


_eigh = _one_at_a_time(jnp.linalg.eigh)


def svd(x, *, full_matrices: bool = True, compute_uv: bool = True):
    """`jnp.linalg.svd` (see the module docstring)."""
    return _svd(bool(full_matrices), bool(compute_uv))(x)


def eigh(x):
    """`jnp.linalg.eigh` (see the module docstring)."""
    return _eigh(x)


def qr(x, *, mode: str = "reduced"):
    """`jnp.linalg.qr` (see the module docstring)."""
    return _qr(mode)(x)
