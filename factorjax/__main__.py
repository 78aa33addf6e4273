"""`python -m factorjax`: a short tour of the library, ending in an implicit-regularization run.

1. The t-product algebra: a t-SVD, its reconstruction error and the tubal rank.
2. The factorization pytrees: conversion from dense, truncation, apply without a dense weight.
3. Gradient descent on the symmetric tubal factorization ``X = U * U^T`` from random linear
   measurements of a tensor of tubal rank 2, with an overparametrized ``U`` (width ``R = n``),
   from a small and from a large random init. The small init recovers the tensor (implicit bias
   towards low tubal rank); the large one fits the measurements but not the tensor.

The full reproduction of Karnik et al. (ICML 2025) is the experiment runner's job; this is a
demonstration that runs in well under a minute on a laptop CPU.
"""

import time

import jax
import jax.numpy as jnp

from factorjax import LowRank, SymmetricTubalLowRank, TubalLowRank, linalg, tubal
from factorjax.dynamics import TubalSensing, train


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def tour_algebra(key) -> None:
    _section("t-product algebra")
    ka, kb = jax.random.split(key)
    A = tubal.tprod(jax.random.normal(ka, (30, 3, 8)), jax.random.normal(kb, (3, 20, 8)))
    U, S, V = tubal.tsvd(A)
    rec = tubal.tprod(tubal.tprod(U, S), tubal.ttranspose(V))
    print(f"A: {A.shape}, tubal rank {int(tubal.tubal_rank(A))} (built as (30,3,8) * (3,20,8))")
    rel = tubal.tnorm(A - rec) / tubal.tnorm(A)
    print(f"t-SVD reconstruction error ||A - U*S*V^T|| / ||A|| = {rel:.2e}")
    gram = tubal.tprod(tubal.ttranspose(U), U)
    print(f"orthogonality ||U^T*U - I|| = {tubal.tnorm(gram - tubal.tidentity(20, 8)):.2e}")
    print(
        f"norms: Frobenius {tubal.tnorm(A):.2f}, spectral {tubal.tspectral_norm(A):.2f}, "
        f"nuclear (mean over slices) {tubal.tnuclear_norm(A):.2f}"
    )


def tour_factorizations(key) -> None:
    _section("factorizations")
    kw, kx = jax.random.split(key)
    w = jax.random.normal(kw, (256, 128))
    for r in (8, 32, 128):
        lr = LowRank.from_dense(w, r)
        err = jnp.linalg.norm(w - lr.to_dense()) / jnp.linalg.norm(w)
        print(
            f"LowRank.from_dense(w, {r:3d}): {lr.num_params:6d} params "
            f"(dense {w.size}), relative error {err:.3f}"
        )
    lr = LowRank.from_dense(w, rtol=0.5)
    print(f"LowRank.from_dense(w, rtol=0.5) picks rank {lr.rank}")
    x = jax.random.normal(kx, (16, 128))
    y = jax.vmap(lr)(x)  # U (V^T x): never builds the 256 x 128 weight
    print(f"batched apply with jax.vmap: {x.shape} -> {y.shape}")
    T = TubalLowRank.init(64, 48, 16, 4, key=kw)
    print(
        f"TubalLowRank.init(64, 48, k=16, rank=4): shape {T.shape}, std of X "
        f"{jnp.std(T.to_dense()):.4f} (Glorot target {(2 / (64 * 16 + 48 * 16)) ** 0.5:.4f})"
    )


def tour_implicit_regularization(key) -> None:
    _section("implicit regularization: X = U * U^T from 140 measurements, n=10, k=4, rank 2")
    print("U is (10, 10, 4): the model can represent any PSD tensor, so only the init decides.")
    kp, ku = jax.random.split(key)
    problem = TubalSensing.make(10, 4, 2, 140, key=kp)  # N(0, 1/m) measurement tensors

    @jax.jit
    def run(alpha):
        model = SymmetricTubalLowRank.init(10, 4, 10, key=ku, init="small", alpha=alpha)
        return train(problem, model, steps=3000, log_every=1000, step_size=0.05, rank_rtol=1e-2)

    for alpha in (1e-3, 1.0):
        t0 = time.perf_counter()
        model, history = jax.block_until_ready(run(alpha))
        X = model.to_dense()
        print(
            f"alpha = {alpha:g}: train loss {history['train_loss'][-1]:.1e}, test error "
            f"||X - X*|| / ||X*|| = {history['test_error'][-1]:.1e} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        ranks = ", ".join(f"{v:.2f}" for v in linalg.tubal_stable_rank(X).tolist())
        print(
            f"    tubal rank (rtol 1e-2) {int(history['rank'][-1])}, "
            f"stable rank per Fourier slice [{ranks}]"
        )
        s = history["singular_values"][-1]
        top = ["[" + ", ".join(f"{v:.3f}" for v in row) + "]" for row in s[:, :4].tolist()]
        print(f"    top Fourier singular values per slice: {' '.join(top)}")


def main() -> None:
    print(f"factorjax demo on {jax.devices()[0].platform} (jax {jax.__version__})")
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    tour_algebra(k1)
    tour_factorizations(k2)
    tour_implicit_regularization(k3)


if __name__ == "__main__":
    main()
