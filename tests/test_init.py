"""Tests of the init schemes of every format: the variance of the *reconstructed* weight.

For ``"glorot"`` (``2 / (fan_in + fan_out)``), ``"he"`` (``2 / fan_in``), ``"lecun"``
(``1 / fan_in``) and ``"std"`` (``std^2``), the entries of ``to_dense()`` have mean 0 and the
target variance. Products of Gaussian factors are heavy-tailed, and the entries of one draw share
factors (their squares are correlated), so the standard error is not ``sigma^2 sqrt(2 / N)``:
the test draws ``B`` independent modules (``jax.vmap`` of ``init`` over ``B`` keys: the stacked
batch pattern of the runner), takes the mean square of the entries of each one, and compares the
mean of those ``B`` independent values with the target within ``Z = 5`` of their *empirical*
standard errors (a false alarm has probability ~6e-7 under the normal approximation; the seeds are
fixed, so a run is reproducible). The test also asserts that ``Z`` standard errors are below 30% of
the target, so that it can tell the schemes apart (they differ by a factor of at least 1.5 for
the fans chosen here).

For ``"small"`` the factor entries are i.i.d. ``N(0, alpha^2 / width)``; their mean square over
``N`` entries has standard error ``sigma^2 sqrt(2 / N)`` exactly.
"""

import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorjax import DeepLowRank, LowRank, SymmetricTubalLowRank, TubalLowRank

# Statistics over many random draws of every format: run with the slow tests.
pytestmark = pytest.mark.slow

Z = 5.0  # standard errors allowed
B = 256  # independent draws per check


def keys_for(seed):
    return jax.random.split(jax.random.key(seed), B)


def assert_mean_within(values, target, *, power=0.3):
    """``values`` (B,) are independent estimates of ``target``: their mean is within Z empirical
    standard errors of it, and Z standard errors are a small fraction of it."""
    values = np.asarray(values, np.float64)
    mean = values.mean()
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert Z * se <= power * target, (Z * se, target)  # the check can tell the schemes apart
    assert abs(mean - target) <= Z * se, (mean, target, se)


# ---------------------------------------------------------------------------------------------
# Formats: how to draw a stack of modules, their fans, and the entries whose variance is targeted
# ---------------------------------------------------------------------------------------------

# LowRank: W (d_out, d_in) = U V^T, fans d_in and d_out
LR = dict(d_out=48, d_in=16, rank=8)
# DeepLowRank of depth 3, uneven widths
DEEP = dict(d_out=24, d_in=12, widths=(10, 6))
# TubalLowRank: X (n1, n2, k) = U * V^T, as an operator (n2 k) -> (n1 k)
TUB = dict(n1=6, n2=3, k=5, rank=4)
# SymmetricTubalLowRank: X (n, n, k) = U * U^T, fans n k
SYM = dict(n=5, k=4, rank=3)


def draw(cls, sizes, seed, **kwargs):
    return jax.vmap(lambda key: cls.init(**sizes, key=key, **kwargs))(keys_for(seed))


def offdiagonal(x):
    """Entries X[i, j, t] with i != j of a stack (B, n, n, k): (B, n (n - 1) k)."""
    n = x.shape[1]
    mask = ~np.eye(n, dtype=bool)
    return np.asarray(x)[:, mask, :].reshape(x.shape[0], -1)


FORMATS = {
    "lowrank": (LowRank, LR, LR["d_in"], LR["d_out"], lambda x: np.asarray(x).reshape(B, -1)),
    "deep": (
        DeepLowRank,
        DEEP,
        DEEP["d_in"],
        DEEP["d_out"],
        lambda x: np.asarray(x).reshape(B, -1),
    ),
    "tubal": (
        TubalLowRank,
        TUB,
        TUB["n2"] * TUB["k"],
        TUB["n1"] * TUB["k"],
        lambda x: np.asarray(x).reshape(B, -1),
    ),
    "symmetric": (
        SymmetricTubalLowRank,
        SYM,
        SYM["n"] * SYM["k"],
        SYM["n"] * SYM["k"],
        offdiagonal,
    ),
}


def target(scheme, fan_in, fan_out, std):
    return {
        "glorot": 2.0 / (fan_in + fan_out),
        "he": 2.0 / fan_in,
        "lecun": 1.0 / fan_in,
        "std": None if std is None else std**2,
    }[scheme]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("scheme", ["glorot", "he", "lecun", "std"])
def test_reconstructed_variance(fmt, scheme):
    cls, sizes, fan_in, fan_out, entries = FORMATS[fmt]
    std = 0.37 if scheme == "std" else None
    kwargs = {"init": scheme} | ({"std": std} if std is not None else {})
    stacked = draw(cls, sizes, seed=zlib.crc32(f"{fmt}-{scheme}".encode()), **kwargs)
    dense = eqx.filter_vmap(lambda m: m.to_dense())(stacked)
    assert dense.dtype == jnp.float32
    values = entries(dense)
    mean_square = np.mean(values.astype(np.float64) ** 2, axis=1)  # one estimate per draw
    assert_mean_within(mean_square, target(scheme, fan_in, fan_out, std))
    # the entries are centred: the per-draw means average to 0 within Z standard errors
    means = values.astype(np.float64).mean(axis=1)
    assert abs(means.mean()) <= Z * means.std(ddof=1) / np.sqrt(B)


def test_default_scheme_is_glorot():
    stacked = jax.vmap(lambda key: LowRank.init(LR["d_out"], LR["d_in"], LR["rank"], key=key))(
        keys_for(11)
    )
    dense = np.asarray(eqx.filter_vmap(lambda m: m.to_dense())(stacked), np.float64)
    assert_mean_within(np.mean(dense.reshape(B, -1) ** 2, axis=1), 2.0 / (LR["d_in"] + LR["d_out"]))


def test_symmetric_diagonal_mean():
    """X[i, i, 0] = sum_{l, t} U[i, l, t]^2 has mean R k s^2 with s^2 = sqrt(var / (R k))."""
    stacked = draw(SymmetricTubalLowRank, SYM, seed=12, init="he")
    dense = np.asarray(eqx.filter_vmap(lambda m: m.to_dense())(stacked), np.float64)
    R, k, n = SYM["rank"], SYM["k"], SYM["n"]
    var = 2.0 / (n * k)
    diag = np.stack([dense[:, i, i, 0] for i in range(n)], axis=1).mean(axis=1)
    assert_mean_within(diag, np.sqrt(R * k * var))


# ---------------------------------------------------------------------------------------------
# init="small": factor entries N(0, alpha^2 / width)
# ---------------------------------------------------------------------------------------------


def assert_entry_variance(factor, sigma2):
    x = np.asarray(factor, np.float64).ravel()
    se = sigma2 * np.sqrt(2.0 / x.size)  # exact for i.i.d. normal entries
    assert Z * se <= 0.1 * sigma2
    assert abs(np.mean(x**2) - sigma2) <= Z * se, (np.mean(x**2), sigma2)


ALPHA = 0.03


def test_small_lowrank():
    m = draw(LowRank, LR, seed=21, init="small", alpha=ALPHA)
    for f in (m.u, m.v):
        assert_entry_variance(f, ALPHA**2 / LR["rank"])


def test_small_deep_uses_input_width_of_each_factor():
    m = draw(DeepLowRank, DEEP, seed=22, init="small", alpha=ALPHA)
    dims = [DEEP["d_in"], *DEEP["widths"], DEEP["d_out"]]
    assert len(m.factors) == 3
    for i, f in enumerate(m.factors):
        assert f.shape == (B, dims[i + 1], dims[i])
        assert_entry_variance(f, ALPHA**2 / dims[i])


def test_small_tubal():
    m = draw(TubalLowRank, TUB, seed=23, init="small", alpha=ALPHA)
    for f in (m.u, m.v):
        assert_entry_variance(f, ALPHA**2 / TUB["rank"])
    s = draw(SymmetricTubalLowRank, SYM, seed=24, init="small", alpha=ALPHA)
    assert_entry_variance(s.u, ALPHA**2 / SYM["rank"])


# ---------------------------------------------------------------------------------------------
# Shapes, dtype, determinism
# ---------------------------------------------------------------------------------------------


def test_init_shapes_dtype_and_keys():
    key = jax.random.key(0)
    L = LowRank.init(4, 3, 2, key=key)
    assert L.u.shape == (4, 2) and L.v.shape == (3, 2) and L.u.dtype == jnp.float32
    np.testing.assert_array_equal(LowRank.init(4, 3, 2, key=key).u, L.u)  # deterministic
    assert not np.array_equal(LowRank.init(4, 3, 2, key=jax.random.key(1)).u, L.u)
    assert not np.array_equal(L.u[:3], L.v)  # the two factors use different subkeys
    # NumPy integers are valid sizes, and a legacy uint32 key works too
    assert LowRank.init(np.int64(4), np.int32(3), np.int64(2), key=key).shape == (4, 3)
    assert LowRank.init(4, 3, 2, key=jax.random.PRNGKey(0)).shape == (4, 3)
    # shapes and dtypes without drawing (no PRNG compilation)
    shape = lambda f: jax.eval_shape(f)  # noqa: E731
    assert shape(lambda: LowRank.init(6, 4, 3, key=key, dtype=jnp.float16)).u.dtype == jnp.float16
    D = shape(lambda: DeepLowRank.init(6, 4, (5, 3, 7), key=key))
    assert [f.shape for f in D.factors] == [(5, 4), (3, 5), (7, 3), (6, 7)]
    assert [f.shape for f in shape(lambda: DeepLowRank.init(6, 4, [], key=key)).factors] == [(6, 4)]
    T = shape(lambda: TubalLowRank.init(4, 3, 5, 2, key=key))
    assert T.u.shape == (4, 2, 5) and T.v.shape == (3, 2, 5) and T.u.dtype == jnp.float32
    assert shape(lambda: SymmetricTubalLowRank.init(4, 5, 2, key=key)).u.shape == (4, 2, 5)


# ---------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------

KEY = jax.random.key(0)
# each format with valid sizes, as keyword arguments
SIZES = {
    LowRank: dict(d_out=4, d_in=3, rank=2),
    DeepLowRank: dict(d_out=4, d_in=3, widths=(2,)),
    TubalLowRank: dict(n1=4, n2=3, k=5, rank=2),
    SymmetricTubalLowRank: dict(n=4, k=5, rank=2),
}
CLASSES = list(SIZES)


def make(cls, **kwargs):
    return cls.init(**(SIZES[cls] | kwargs), key=KEY)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_bad_scheme_arguments(cls):
    with pytest.raises(ValueError, match=r"`init` must be one of .*'xavier'"):
        make(cls, init="xavier")
    for scheme in ("glorot", "he", "lecun", "small"):
        with pytest.raises(ValueError, match="`std` is only used with init='std'"):
            make(cls, init=scheme, std=0.1, **({"alpha": 0.1} if scheme == "small" else {}))
    for scheme in ("glorot", "he", "lecun", "std"):
        with pytest.raises(ValueError, match="`alpha` is only used with init='small'"):
            make(cls, init=scheme, alpha=0.1, **({"std": 0.1} if scheme == "std" else {}))
    with pytest.raises(TypeError, match=r"`alpha`.*None"):
        make(cls, init="small")
    for bad in (-0.1, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`alpha` must be a finite float > 0"):
            make(cls, init="small", alpha=bad)
    with pytest.raises(TypeError, match="`alpha`"):
        make(cls, init="small", alpha="0.1")
    with pytest.raises(TypeError, match=r"`std`.*None"):
        make(cls, init="std")
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="`std` must be a finite float > 0"):
            make(cls, init="std", std=bad)
    # an int scale is a valid float
    assert make(cls, init="std", std=1).shape == make(cls, init="small", alpha=1).shape


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_bad_sizes(cls):
    for name, value in SIZES[cls].items():
        if name == "widths":
            continue
        for bad in (float(value), str(value), True, None):
            with pytest.raises(TypeError, match=f"`{name}` must be a Python int"):
                make(cls, **{name: bad})
        for bad in (0, -1):
            with pytest.raises(ValueError, match=f"`{name}` must be an int >= 1"):
                make(cls, **{name: bad})


def test_bad_widths():
    with pytest.raises(TypeError, match=r"`widths` must be a sequence.*\(h,\) \* \(depth - 1\)"):
        DeepLowRank.init(4, 3, 2, key=KEY)
    with pytest.raises(TypeError, match="`widths` must be a sequence"):
        DeepLowRank.init(4, 3, None, key=KEY)
    with pytest.raises(ValueError, match=r"`widths\[1\]` must be an int >= 1; got 0"):
        DeepLowRank.init(4, 3, (2, 0), key=KEY)
    with pytest.raises(TypeError, match=r"`widths\[0\]` must be a Python int"):
        DeepLowRank.init(4, 3, (2.0,), key=KEY)


# --------------------------------------------------------------------------------------------
# Traced scales: a sweep over init scales runs as one vmapped program
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda key, s: SymmetricTubalLowRank.init(6, 4, 5, key=key, init="small", alpha=s),
        lambda key, s: LowRank.init(7, 5, 3, key=key, init="std", std=s),
        lambda key, s: DeepLowRank.init(7, 5, (4, 3), key=key, init="small", alpha=s),
        lambda key, s: TubalLowRank.init(4, 3, 5, 2, key=key, init="std", std=s),
    ],
)
def test_init_scale_can_be_vmapped(make):
    """vmap over (key, scale) gives the same factors as one eager init per (key, scale)."""
    scales = [1e-3, 0.5, 2.0]
    keys = jax.random.split(jax.random.key(3), len(scales))
    batched = jax.jit(jax.vmap(make))(keys, jnp.asarray(scales))
    for i, s in enumerate(scales):
        single = make(keys[i], s)
        for leaf_b, leaf_s in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            # Same draws, same scale: equal up to one rounding of the scale product (float32).
            np.testing.assert_allclose(leaf_b[i], leaf_s, rtol=4 * np.finfo(np.float32).eps)
