"""Time factorjax's t-product and t-SVD beside a NumPy and a plain complex-FFT JAX version.

Run from the repository root:

    python benchmarks/tproduct.py            # all sizes (a few minutes on 2 cores)
    python benchmarks/tproduct.py --quick    # a small subset

A size ``(n1, n2, k)`` means ``A`` of shape ``(n1, n2, k)`` and ``B`` of shape ``(n2, n1, k)``
for ``tprod(A, B)`` (a square-ish product), and ``A`` for ``tsvd(A)``; float32 throughout.

Peers, each checked against the NumPy result before it is timed:

- ``numpy``: ``numpy.fft.rfft`` with the tube axis moved first and made contiguous, so that every
  frequency slice is a C-contiguous matrix and the batched ``np.matmul`` (or ``np.linalg.svd``)
  runs in BLAS / LAPACK; then ``irfft``. The t-SVD takes real SVDs of the real slices (DC and,
  for even ``k``, Nyquist) and complex SVDs of the others, as the t-SVD of a real tensor needs.
- ``jax-fft``: the textbook JAX version, ``jnp.fft.fft`` over all ``k`` frequencies, a complex
  batched ``jnp.matmul``, ``ifft``, real part; for the t-SVD, ``fft`` over all ``k``, SVDs of the
  half spectrum (real SVDs for the real slices), the other half by conjugate symmetry, ``ifft``.
- ``factorjax``: ``jax.jit(factorjax.tubal.tprod)`` and ``jax.jit(factorjax.tubal.tsvd)``.

Timing: every function is compiled and run a few times first. Then rounds interleave the
implementations (factorjax, numpy, jax-fft, ..., reversed in every other round) so that a change
in machine load hits all of them alike. In a round each implementation runs as a block: a 0.3 s
pause (BLAS worker threads, numpy's OpenBLAS and the LAPACK that jax calls, spin up to about
0.2 s after a call; without the pause they steal a core from whatever runs next and slow it by up
to 10x), one untimed call, then enough timed calls back to back to last about 20 ms. A ratio is
the median over rounds of the ratio of two block times of the same round; the script never
relies on one absolute time, and it prints how many cores other processes kept busy while it
measured.

GFLOP/s: a t-product does ``k // 2 + 1`` complex ``n1 x n x n2`` slice products of ``8 n1 n n2``
real flops each (the count a complex matmul needs): ``useful = 8 n1 n n2 (k // 2 + 1)``.
``tprod`` reports ``useful / time`` of the whole t-product, and ``products`` that of factorjax's
slice products alone (its ``_spectral_matmul`` on precomputed operands, which executes fewer real
flops than ``useful``: one real matmul per real slice, three per complex one). Beside them, a
plain float32 square matmul with the same ``useful`` flop count (side ``(4 n1 n n2 (k//2+1))^(1/3)``
rounded), in ``jnp.matmul`` and ``np.matmul``: what this machine's matmuls reach at that size.

The script sets no JAX configuration and no XLA flags: it measures what a user gets.
"""

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from factorjax import tubal

SIZES = [
    (10, 200, 4),
    (32, 32, 8),
    (64, 64, 16),
    (128, 128, 16),
    (128, 128, 32),
    (256, 256, 16),
    (256, 256, 64),
]
QUICK_SIZES = [(10, 200, 4), (64, 64, 16), (128, 128, 32)]


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


def _np_to_fourier(A):
    """Half spectrum, frequency-major and C-contiguous: ``(k // 2 + 1, n1, n2)`` complex."""
    return np.fft.rfft(np.ascontiguousarray(np.moveaxis(A, -1, 0)), axis=0)


def _np_from_fourier(A_hat, k):
    return np.moveaxis(np.fft.irfft(A_hat, n=k, axis=0), 0, -1)


def np_tprod(A, B):
    k = A.shape[-1]
    return _np_from_fourier(np.matmul(_np_to_fourier(A), _np_to_fourier(B)), k)


def np_tsvd(A):
    k = A.shape[-1]
    a_hat = _np_to_fourier(A)
    real = [0, k // 2] if k % 2 == 0 and k > 1 else [0]
    cplx = [j for j in range(a_hat.shape[0]) if j not in real]
    u_r, s_r, vh_r = np.linalg.svd(a_hat[real].real, full_matrices=False)
    u_c, s_c, vh_c = np.linalg.svd(a_hat[cplx], full_matrices=False)
    u = np.empty(a_hat.shape[:1] + u_r.shape[1:], a_hat.dtype)
    s = np.empty(a_hat.shape[:1] + s_r.shape[1:], s_r.dtype)
    vh = np.empty(a_hat.shape[:1] + vh_r.shape[1:], a_hat.dtype)
    u[real], s[real], vh[real] = u_r, s_r, vh_r
    u[cplx], s[cplx], vh[cplx] = u_c, s_c, vh_c
    r = s.shape[-1]
    tubes = np.fft.irfft(s, n=k, axis=0)  # (k, r): the singular tubes
    S = np.zeros((r, r, k), tubes.dtype)
    S[np.arange(r), np.arange(r)] = tubes.T
    U = _np_from_fourier(u, k)
    V = _np_from_fourier(np.conj(np.swapaxes(vh, -1, -2)), k)
    return U, S, V


def jaxfft_tprod(A, B):
    a = jnp.fft.fft(jnp.moveaxis(A, -1, 0), axis=0)
    b = jnp.fft.fft(jnp.moveaxis(B, -1, 0), axis=0)
    return jnp.moveaxis(jnp.real(jnp.fft.ifft(jnp.matmul(a, b), axis=0)), 0, -1)


def jaxfft_tsvd(A):
    k = A.shape[-1]
    h = k // 2 + 1
    a_hat = jnp.fft.fft(jnp.moveaxis(A, -1, 0), axis=0)
    real = [0, k // 2] if k % 2 == 0 and k > 1 else [0]
    cplx = [j for j in range(h) if j not in real]
    u_r, s_r, vh_r = jnp.linalg.svd(jnp.real(a_hat[jnp.array(real)]), full_matrices=False)
    parts = {j: (u_r[i], s_r[i], vh_r[i]) for i, j in enumerate(real)}
    if cplx:
        u_c, s_c, vh_c = jnp.linalg.svd(a_hat[jnp.array(cplx)], full_matrices=False)
        parts.update({j: (u_c[i], s_c[i], vh_c[i]) for i, j in enumerate(cplx)})
    half = range(h)
    u = jnp.stack([parts[j][0].astype(a_hat.dtype) for j in half])
    s = jnp.stack([parts[j][1] for j in half])
    vh = jnp.stack([parts[j][2].astype(a_hat.dtype) for j in half])
    mirror = jnp.arange(k - h, 0, -1)  # slices h .. k-1 are conjugates of slices k-h .. 1
    u = jnp.concatenate([u, jnp.conj(u[mirror])])
    s = jnp.concatenate([s, s[mirror]])
    vh = jnp.concatenate([vh, jnp.conj(vh[mirror])])
    r = s.shape[-1]
    back = lambda x: jnp.moveaxis(jnp.real(jnp.fft.ifft(x, axis=0)), 0, -1)  # noqa: E731
    return (
        back(u),
        back(jnp.eye(r) * s[..., None].astype(a_hat.dtype)),
        back(jnp.conj(jnp.swapaxes(vh, -1, -2))),
    )


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _tsvd_error(USV, A, S_ref):
    """Relative errors of ``U * S * V^T`` against ``A`` and of ``S`` against NumPy's."""
    U, S, V = (np.asarray(x, np.float64) for x in USV)
    Vt = np.concatenate([V[:, :, :1], V[:, :, 1:][:, :, ::-1]], axis=2).transpose(1, 0, 2)
    recon = np_tprod(np_tprod(U, S), Vt)
    return max(_rel(recon, A), _rel(S, S_ref))


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def _busy_seconds():
    """(CPU seconds used by the whole machine, by this process), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        t = os.times()
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system
    except (OSError, ValueError, IndexError):
        return None


def _call(fn, args):
    out = fn(*args)
    if isinstance(out, tuple):
        for o in out:
            if not isinstance(o, np.ndarray):
                o.block_until_ready()
    elif not isinstance(out, np.ndarray):
        out.block_until_ready()
    return out


PAUSE_S = 0.3  # BLAS worker threads (numpy's OpenBLAS, jax's LAPACK) spin up to ~0.2 s after a call


def time_interleaved(fns, ref, budget_s, min_rounds, max_rounds):
    """Time ``name: (fn, args)`` in interleaved rounds, each implementation as a block.

    A block: a pause of ``PAUSE_S`` (so that threads still spinning after the previous block, such
    as OpenBLAS workers, go idle and do not steal a core from the next one), one untimed call
    (wakes the thread pools), then ``reps`` timed calls back to back (``reps`` makes a block last
    about 20 ms); the block's time is their mean. The order of the blocks reverses every other
    round. Returns, per name, the median block time and the median over rounds of the ratio of
    its block time to ``ref``'s in the same round; the number of rounds; and how many cores other
    processes kept busy meanwhile.
    """
    reps = {}
    for name, (fn, args) in fns.items():  # warm-up: compile, first-touch memory
        for _ in range(2):
            _call(fn, args)
        t0 = time.perf_counter()
        _call(fn, args)
        reps[name] = min(50, max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6))))
    times = {name: [] for name in fns}
    start, before = time.perf_counter(), _busy_seconds()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        order = list(fns) if rounds % 2 == 0 else list(fns)[::-1]
        for name in order:
            fn, args = fns[name]
            time.sleep(PAUSE_S)
            _call(fn, args)
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                _call(fn, args)
            times[name].append((time.perf_counter() - t0) / reps[name])
        rounds += 1
    wall, after = time.perf_counter() - start, _busy_seconds()
    other = None
    if before is not None and after is not None:
        other = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = {
        name: statistics.median(t / r for t, r in zip(v, times[ref], strict=True))
        for name, v in times.items()
    }
    return med, ratio, rounds, other


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _load(other):
    return "n/a" if other is None else f"{other:.2f} cores"


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return (
        f"{platform.platform()}; {cpu}; {cores} cores; Python {platform.python_version()}; "
        f"jax {jax.__version__}, jaxlib {_version('jaxlib')}, "
        f"numpy {np.__version__}; JAX devices: {', '.join(str(d) for d in jax.devices())}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small subset of sizes, fewer rounds")
    p.add_argument("--only", choices=("tprod", "tsvd"), help="time only one of the two")
    p.add_argument("--sizes", help="override the sizes: n1,n2,k;n1,n2,k;...")
    args = p.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split(",")) for s in args.sizes.split(";")]
    budget, min_rounds, max_rounds = (2.0, 5, 30) if args.quick else (8.0, 9, 60)
    print(f"machine: {machine()}")
    print(f"command: python {' '.join([os.path.relpath(__file__)] + (argv or sys.argv[1:]))}")
    print(
        f"float32; implementations timed in interleaved rounds (at least {min_rounds} a size); "
        "a ratio is the median of the per-round ratios\n"
    )
    rng = np.random.default_rng(0)
    fj_tprod, jf_tprod = jax.jit(tubal.tprod), jax.jit(jaxfft_tprod)
    fj_tsvd, jf_tsvd = jax.jit(tubal.tsvd), jax.jit(jaxfft_tsvd)
    ok = True

    if args.only in (None, "tprod"):
        print("t-product  C = A * B,  A (n1, n2, k), B (n2, n1, k): slice products n1 x n2 x n1")
        print("  useful flops = 8 n1 n2 n1 (k//2+1); GFLOP/s = useful flops / median time;")
        print("  'products': factorjax's slice products alone; 'matmul side': a square float32")
        print("  matmul with the same flop count, timed in the same rounds")
        head = (
            f"  {'size':>14} {'numpy/fj':>9} {'jaxfft/fj':>10} | {'GFLOP/s: fj':>11} "
            f"{'products':>8} {'numpy':>6} {'jaxfft':>6} | {'matmul side':>11} {'jnp':>5} "
            f"{'np':>5} | rounds other-load  max-rel-err"
        )
        print(head)
        for n1, n2, k in sizes:
            A = rng.standard_normal((n1, n2, k), dtype=np.float32)
            B = rng.standard_normal((n2, n1, k), dtype=np.float32)
            jA, jB = jnp.asarray(A), jnp.asarray(B)
            ref = np_tprod(A, B)
            err = max(
                _rel(fj_tprod(jA, jB), ref), _rel(jf_tprod(jA, jB), ref), _rel(np_tprod(A, B), ref)
            )
            if err > 1e-5:
                ok = False
                print(f"  {(n1, n2, k)!s:>14} MISMATCH against numpy: {err:.2e}")
                continue
            # factorjax's slice products alone, on precomputed operands
            rows_a = jax.jit(tubal._forward)(jA)
            rows_b = jax.jit(tubal._forward)(jB)
            products = jax.jit(tubal._spectral_matmul)
            f = k // 2 + 1
            useful = 8.0 * n1 * n2 * n1 * f
            side = max(8, round((useful / 2) ** (1 / 3)))  # 2 side^3 = useful
            M = rng.standard_normal((side, side), dtype=np.float32)
            jM = jnp.asarray(M)
            jmm = jax.jit(jnp.matmul)
            t, ratio, rounds, other = time_interleaved(
                {
                    "fj": (fj_tprod, (jA, jB)),
                    "numpy": (np_tprod, (A, B)),
                    "jaxfft": (jf_tprod, (jA, jB)),
                    "products": (products, (rows_a, rows_b)),
                    "jnp.matmul": (jmm, (jM, jM)),
                    "np.matmul": (np.matmul, (M, M)),
                },
                "fj",
                budget,
                min_rounds,
                max_rounds,
            )
            sq = 2.0 * side**3
            print(
                f"  {(n1, n2, k)!s:>14} {ratio['numpy']:8.2f}x {ratio['jaxfft']:9.2f}x"
                f" | {useful / t['fj'] / 1e9:11.1f} {useful / t['products'] / 1e9:8.1f}"
                f" {useful / t['numpy'] / 1e9:6.1f} {useful / t['jaxfft'] / 1e9:6.1f}"
                f" | {side:11d} {sq / t['jnp.matmul'] / 1e9:5.1f} {sq / t['np.matmul'] / 1e9:5.1f}"
                f" | {rounds:6d} {_load(other):>10}"
                f"  {err:.1e}",
                flush=True,
            )
        print()

    if args.only in (None, "tsvd"):
        print("t-SVD  A = U * S * V^T,  A (n1, n2, k)")
        print(f"  {'size':>14} {'numpy/fj':>9} {'jaxfft/fj':>10} | rounds other-load  max-rel-err")
        for n1, n2, k in sizes:
            A = rng.standard_normal((n1, n2, k), dtype=np.float32)
            jA = jnp.asarray(A)
            S_ref = np_tsvd(A)[1]
            err = max(
                _tsvd_error(fj_tsvd(jA), A, S_ref),
                _tsvd_error(jf_tsvd(jA), A, S_ref),
                _tsvd_error(np_tsvd(A), A, S_ref),
            )
            if err > 1e-4:
                ok = False
                print(f"  {(n1, n2, k)!s:>14} MISMATCH against numpy: {err:.2e}")
                continue
            t, ratio, rounds, other = time_interleaved(
                {"fj": (fj_tsvd, (jA,)), "numpy": (np_tsvd, (A,)), "jaxfft": (jf_tsvd, (jA,))},
                "fj",
                budget,
                5 if min_rounds > 5 else 3,
                max_rounds,
            )
            print(
                f"  {(n1, n2, k)!s:>14} {ratio['numpy']:8.2f}x {ratio['jaxfft']:9.2f}x"
                f" | {rounds:6d} {_load(other):>10}"
                f"  {err:.1e}",
                flush=True,
            )
        print()
    print(
        "ratios > 1: factorjax is faster. 'other-load': CPU cores that other processes kept "
        "busy during the timing (0 = quiet machine)."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
