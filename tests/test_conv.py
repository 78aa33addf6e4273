"""FactorizedConv (Equinox and NNX) over CP, Tucker and TT kernels.

References, written from the definitions (float64 NumPy on the exact float32 values the layer
sees): the dense kernel by explicit sums over the factors (CP: sum of outer products; Tucker:
the core times each factor, ``np.einsum`` letter by letter; TT: entry by entry, a product of
core slices); the convolution by its definition, ``y[b, o, p] = sum_{c, s} K[o, c, s]
xpad[b, c, p * stride + s * dilation]``, with the zero padding of SAME / SAME_LOWER computed
here from its definition (``out = ceil(n / stride)``, the total split low/high).

Tolerance (Higham 3.1, first order): each output is a sum of products of at most ``n`` terms
(``C_in prod(k)`` products of the input with a kernel entry, itself a sum over the rank
components of products of ``d + 3`` factor entries), in whatever order, so its error is at
most ``n eps32`` times the same computation on absolute values: the reference run on ``|x|``
and the kernel rebuilt from ``|factors|``.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import factorjax.nn as fnn
import factorjax.nnx as fnnx
from factorjax.factorizations import CP, LowRank, TensorTrain, Tucker
from factorjax.factorizations._conv_kernel import resolve_kernel_rank

EPS32 = float(np.finfo(np.float32).eps)
FORMATS = ("cp", "tucker", "tt")
ORDERS = ("dense", "sequence")
KEY = jax.random.key(0)


def f64(a):
    return np.asarray(a, np.float64)


# --- references ------------------------------------------------------------------------------


def naive_kernel(w, absolute=False) -> np.ndarray:
    """``(C_out, C_in, k...)`` by explicit sums over the factors (of ``|factors|`` if asked)."""
    f = (lambda a: np.abs(f64(a))) if absolute else f64
    if isinstance(w, CP):
        t = 0.0
        for r in range(w.rank):
            comp = f(w.weights)[r]
            for a in w.factors:
                comp = np.multiply.outer(comp, f(a)[:, r])
            t = t + comp
        return t
    if isinstance(w, Tucker):
        d = w.core.ndim
        core, modes = "abcdefgh"[:d], "mnopqrst"[:d]
        spec = ",".join([core] + [m + c for m, c in zip(modes, core, strict=True)])
        return np.einsum(f"{spec}->{modes}", f(w.core), *[f(a) for a in w.factors])
    assert isinstance(w, TensorTrain)
    shape = w.shape  # (C_out, k_1, ..., k_d, C_in)
    t = np.zeros(shape)
    for idx in np.ndindex(*shape):
        m = np.ones((1, 1))
        for c, i in zip(w.cores, idx, strict=True):
            m = m @ f(c)[:, i, :]
        t[idx] = m[0, 0]
    return np.moveaxis(t, -1, 1)


def explicit_pads(padding, sizes, ks, stride, dilation):
    if not isinstance(padding, str):
        return padding
    out = []
    for n, k, s, dl in zip(sizes, ks, stride, dilation, strict=True):
        if padding == "VALID":
            out.append((0, 0))
            continue
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * dl + 1 - n, 0)
        small = total // 2
        out.append((small, total - small) if padding == "SAME" else (total - small, small))
    return out


def naive_conv(x, kernel, stride, padding, dilation) -> np.ndarray:
    """``x (B, C_in, *S)``, ``kernel (C_out, C_in, *k)``: cross-correlation by definition."""
    x, kernel = f64(x), f64(kernel)
    sizes, ks = x.shape[2:], kernel.shape[2:]
    pads = explicit_pads(padding, sizes, ks, stride, dilation)
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    outs = [
        (n + lo + hi - dl * (k - 1) - 1) // s + 1
        for n, k, s, dl, (lo, hi) in zip(sizes, ks, stride, dilation, pads, strict=True)
    ]
    y = np.zeros((x.shape[0], kernel.shape[0], *outs))
    for off in np.ndindex(*ks):
        sl = tuple(
            slice(o * dl, o * dl + (n - 1) * s + 1, s)
            for o, dl, n, s in zip(off, dilation, outs, stride, strict=True)
        )
        y += np.einsum("oc,bc...->bo...", kernel[(slice(None), slice(None), *off)], xp[:, :, *sl])
    return y


def n_terms(w, c_in, ks) -> int:
    """The length of the longest chain of sums/products behind one output (see top)."""
    if isinstance(w, CP):
        paths = w.rank
    elif isinstance(w, Tucker):
        paths = math.prod(w.ranks)
    else:
        paths = math.prod(w.ranks)
    return c_in * math.prod(ks) + paths + len(ks) + 4


def check_output(layer, x, y):
    """``y`` equals the reference convolution (plus bias) within the derived bound."""
    st, pad, dil = layer.stride, layer.padding, layer.dilation
    xb = np.asarray(x)[None] if np.ndim(x) == layer.num_spatial_dims + 1 else np.asarray(x)
    want = naive_conv(xb, naive_kernel(layer.weight), st, pad, dil)
    bound = naive_conv(np.abs(xb), naive_kernel(layer.weight, True), st, pad, dil)
    if layer.bias is not None:
        b = f64(layer.bias).reshape(-1, *(1,) * layer.num_spatial_dims)
        want, bound = want + b, bound + np.abs(b)
    tol = n_terms(layer.weight, layer.in_channels, layer.kernel_size) * EPS32 * bound
    want = want if np.ndim(x) == layer.num_spatial_dims + 2 else want[0]
    tol = tol if np.ndim(x) == layer.num_spatial_dims + 2 else tol[0]
    assert y.shape == want.shape, (y.shape, want.shape)
    err = np.abs(f64(y) - want)
    assert np.all(err <= tol), (err.max(), (err / np.maximum(tol, 1e-300)).max())


# --- the cases: (d, C_in, C_out, kernel, stride, padding, dilation, input shape, ranks) -------

CASES = {
    "1d-same-stride": (1, 3, 4, 3, 2, "SAME", 1, (2, 3, 11), (3, (2, 3), (2, 2))),
    "1d-valid-dilated": (1, 3, 2, 3, 1, "VALID", 2, (3, 12), (2, (2, 2, 2), (2, 2))),
    "2d-explicit": (2, 3, 4, (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2), (2, 3, 7, 6),
                    (3, (3, 2, 2, 2), (2, 3, 2))),
    "2d-same-lower": (2, 2, 3, 3, 1, "same_lower", 1, (2, 6, 5), (2, (2, 2), (2, 2, 2))),
    "2d-int-pad": (2, 2, 3, 3, (1, 3), 1, (2, 1), (1, 2, 8, 9), (2, (3, 2, 3, 2), (2, 2, 2))),
    "3d-same": (3, 2, 3, (2, 3, 2), (1, 2, 1), "SAME", 1, (2, 2, 4, 5, 3),
                (2, (2, 2), (2, 2, 2, 2))),
}  # fmt: skip


def random_kernel(fmt, shape, rank, rng):
    """A kernel factorization of ``shape (C_out, C_in, k...)`` with standard normal factors."""
    normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    if fmt == "cp":
        return CP(normal(rank), tuple(normal(n, rank) for n in shape), 1)
    if fmt == "tucker":
        ranks = (*rank, *shape[2:]) if len(rank) == 2 else rank
        return Tucker(normal(*ranks), tuple(map(normal, shape, ranks)), 1)
    modes = (shape[0], *shape[2:], shape[1])
    bonds = (1, *rank, 1)
    return TensorTrain([normal(bonds[i], n, bonds[i + 1]) for i, n in enumerate(modes)])


def case_layer(name, fmt, rng, order="auto"):
    d, c_in, c_out, k, st, pad, dil, shape, ranks = CASES[name]
    ks = (k,) * d if isinstance(k, int) else k
    weight = random_kernel(fmt, (c_out, c_in, *ks), ranks[FORMATS.index(fmt)], rng)
    bias = rng.normal(size=c_out).astype(np.float32)
    layer = fnn.FactorizedConv.from_weight(
        weight, bias, stride=st, padding=pad, dilation=dil, order=order
    )
    return layer, jnp.asarray(rng.normal(size=shape), jnp.float32)


def call(layer, x):
    return eqx.filter_jit(lambda m, x: m(x))(layer, x)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_order_equals_naive_convolution(fmt, case, rng):
    layer, x = case_layer(case, fmt, rng)
    kernel = naive_kernel(layer.weight)
    assert (
        layer.dense_kernel().shape
        == kernel.shape
        == (layer.out_channels, layer.in_channels, *layer.kernel_size)
    )
    bound = n_terms(layer.weight, 0, ()) * EPS32 * naive_kernel(layer.weight, True)
    assert np.all(np.abs(f64(layer.dense_kernel()) - kernel) <= bound)
    for order in ORDERS:
        forced = fnn.FactorizedConv.from_weight(
            layer.weight, layer.bias, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, order=order,
        )  # fmt: skip
        assert forced.plan(x.shape).order == order
        check_output(forced, x, call(forced, x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_jit_vmap_and_batch_agree(fmt, rng):
    layer, x = case_layer("2d-explicit", fmt, rng)
    check_output(layer, x, layer(x))  # eager, planned for the batch
    check_output(layer, x, jax.vmap(layer)(x))  # planned for one example
    check_output(layer, x, call(layer, x))
    check_output(layer, x[0], call(layer, x[0]))


# every format's gradient compiles its own float64 programs: one in the default run
@pytest.mark.parametrize(
    "fmt", [f if f == "cp" else pytest.param(f, marks=pytest.mark.slow) for f in FORMATS]
)
def test_gradients(fmt, x64, rng):
    ranks = {"cp": 2, "tucker": (2, 2), "tt": (2, 2, 2)}[fmt]
    weight = jax.tree.map(
        lambda a: a.astype(jnp.float64), random_kernel(fmt, (3, 2, 2, 3), ranks, rng)
    )
    bias = jnp.asarray(rng.normal(size=3))
    x = jnp.asarray(rng.normal(size=(2, 2, 4, 5)))
    for order in ORDERS:

        def f(weight, bias, x, order=order):
            weight, bias, x = jax.tree.map(jnp.asarray, (weight, bias, x))
            conv = fnn.FactorizedConv.from_weight(
                weight, bias, stride=(1, 2), padding="SAME", order=order
            )
            return conv(x)

        check_grads(jax.jit(f), (weight, bias, x), order=1, modes=("fwd", "rev"))


# --- the planner -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_plan_flops_and_choice(fmt):
    c, k, r = 32, 3, 4
    layer = fnn.FactorizedConv(2, c, c, k, fmt, r, padding="SAME", key=jax.random.key(0))
    w = layer.weight
    for shape in [(8, c, 64, 64), (c, 5, 6), (2, c, 17, 9)]:
        plan = layer.plan(shape)
        b = shape[0] if len(shape) == 4 else 1
        p = math.prod(shape[-2:])  # SAME, stride 1: every step keeps the spatial size
        costs = {o.name: o for o in plan.candidates}
        # FLOPs counted step by step (a multiply-add is 2); "gemm": one large product each
        dense = costs["dense"]
        assert dense.gemm_flops == 2 * b * p * c * c * k * k
        assert dense.peak_bytes == 4 * c * c * k * k  # the rebuilt kernel
        recon = w.reconstruction_flops() if fmt != "tt" else dense.flops - dense.gemm_flops
        assert dense.flops == dense.gemm_flops + recon and recon > 0
        seq = costs["sequence"]
        if fmt == "cp":  # 1x1 to R, two depthwise passes, fold the weights, 1x1 to C_out
            assert seq.gemm_flops == 2 * b * p * (c * r + r * c)
            assert seq.flops == seq.gemm_flops + 2 * 2 * b * r * k * p + c * r
            assert seq.peak_bytes == 4 * b * r * p
        elif fmt == "tucker":  # 1x1 to R_in, the core conv, 1x1; the spatial factors merged
            assert w.ranks == (r, r, k, k)
            assert seq.gemm_flops == 2 * b * p * (c * r + r * r * k * k + r * c)
            assert seq.flops == seq.gemm_flops + 2 * (2 * r * r * k * k * k)
        else:  # 1x1 to the last bond, two bond-to-bond 1-D convs, 1x1
            a = w.ranks
            assert (
                seq.flops
                == seq.gemm_flops
                == 2 * b * p * (c * a[2] + a[2] * a[1] * k + a[1] * a[0] * k + a[0] * c)
            )

        # the choice is the cheapest under the documented cost model
        def score(o):
            return 4.0 * (o.flops - o.gemm_flops) + o.gemm_flops + 256.0 * o.peak_bytes

        assert plan.order == min(plan.candidates, key=score).name
        assert plan.candidates[0].name == plan.order and plan.batch == b
    # large spatial input at low rank: never rebuild the kernel
    assert layer.plan((8, c, 64, 64)).order == "sequence"
    assert layer.plan((8, c, 64, 64), order="dense").order == "dense"


def test_plan_strided_cp_takes_the_shrinking_pass_first():
    layer = fnn.FactorizedConv(
        2, 4, 4, (3, 3), "cp", 2, stride=(1, 4), padding="VALID", key=jax.random.key(0)
    )
    seq = {o.name: o for o in layer.plan((1, 4, 20, 41)).candidates}["sequence"]
    # dim 1 first: 20 x 10 after it, then 18 x 10; dim 0 first would pass over 18 x 41
    assert seq.flops - seq.gemm_flops == 2 * 2 * 3 * (20 * 10 + 18 * 10) + 4 * 2  # + fold


def test_plan_prefers_dense_at_full_rank_and_large_batch():
    c = 32
    layer = fnn.FactorizedConv(2, c, c, 3, "tucker", (c, c), padding=1, key=jax.random.key(0))
    assert layer.plan((16, c, 32, 32)).order == "dense"


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["he", "glorot", "std"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_init_targets_the_kernel_variance(fmt, init):
    c_in, c_out, k = 8, 6, 3
    std = 0.3 if init == "std" else None
    fan_in, fan_out = c_in * k * k, c_out * k * k
    target = {"he": 2 / fan_in, "glorot": 2 / (fan_in + fan_out), "std": 0.09}[init]

    def mean_square(key):
        layer = fnn.FactorizedConv(
            2, c_in, c_out, k, fmt, 4, init=init, std=std, use_bias=False, key=key
        )
        return jnp.mean(layer.dense_kernel() ** 2)

    keys = jax.random.split(jax.random.key(3), 128)
    ms = np.asarray(jax.jit(jax.vmap(mean_square))(keys), np.float64)
    # E[mean square] = target; the draws are independent, so the mean of 128 of them is within
    # 5 standard errors (estimated from the draws) but for a probability below 1e-6.
    sem = ms.std(ddof=1) / math.sqrt(ms.size)
    assert abs(ms.mean() - target) <= 5 * sem, (ms.mean(), target, sem)
    assert sem < 0.25 * target  # the check can tell a factor of 2 apart


@pytest.mark.parametrize("fmt", FORMATS)
def test_rank_specs(fmt):
    def num_params(rank):  # of the layer's kernel, from shapes only
        layer = jax.eval_shape(lambda: fnn.FactorizedConv(2, 8, 16, 3, fmt, rank, key=KEY))
        return sum(math.prod(a.shape) for a in jax.tree.leaves(layer.weight))

    for spec, fraction in [("same", 1.0), (0.3, 0.3)]:
        rank = resolve_kernel_rank(fmt, (16, 8, 3, 3), spec)
        budget = fraction * 16 * 8 * 3 * 3
        assert num_params(spec) == num_params(rank) <= budget
        assert num_params(rank + 1) > budget  # the largest rank that fits


def test_tuple_ranks():
    key = jax.random.key(0)

    def weight(rank, fmt="tucker", k=3):
        return jax.eval_shape(lambda: fnn.FactorizedConv(2, 8, 16, k, fmt, rank, key=key)).weight

    assert weight(5).ranks == (5, 5, 3, 3)
    assert weight((6, 4)).ranks == (6, 4, 3, 3)
    assert weight((6, 4, 2, 3)).ranks == (6, 4, 2, 3)
    tt = weight((4, 5, 6), "tt", (3, 2))
    assert tt.shape == (16, 3, 2, 8) and tt.ranks == (4, 5, 6)


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_from_dense_decompositions(rng):
    kernel = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    x = jnp.asarray(rng.normal(size=(2, 3, 6, 5)), jnp.float32)
    want = naive_conv(x, kernel, (1, 1), "SAME", (1, 1))
    tol = 1e-4 * np.abs(want).max()  # float32 SVDs: a few hundred eps of the kernel's norm
    for fmt in ("tucker", "tt"):  # exact at full rank
        layer = fnn.FactorizedConv.from_dense(
            kernel, np.ones((4, 1, 1)), fmt, padding="SAME", order="sequence"
        )
        np.testing.assert_allclose(layer(x), want + 1, atol=tol)
        assert isinstance(layer, fnn.FactorizedConv) and layer.bias.shape == (4,)
    # an exact rank-1 kernel: CP-ALS from the HOSVD start recovers it in one sweep
    a = [rng.normal(size=n) for n in (4, 3, 3, 2)]
    k1 = np.einsum("a,b,c,d->abcd", *a).astype(np.float32)
    layer = fnn.FactorizedConv2d.from_dense(k1, None, "cp", 1, padding="VALID")
    np.testing.assert_allclose(layer.dense_kernel(), k1, atol=1e-5 * np.abs(k1).max())
    small = fnn.FactorizedConv.from_dense(kernel, None, "tucker", 0.5)
    assert small.weight.num_params <= 0.5 * kernel.size
    low = fnn.FactorizedConv.from_dense(kernel, None, "cp", 3, n_iter=5)
    assert low.weight.rank == 3


# --- NNX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_nnx_parity(fmt, rng):
    layer, x = case_layer("2d-explicit", fmt, rng)
    kw = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
    twin = fnnx.FactorizedConv.from_weight(layer.weight, layer.bias, **kw)
    np.testing.assert_array_equal(twin(x), layer(x))
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(twin, x), call(layer, x))
    assert twin.plan(x.shape) == layer.plan(x.shape)
    params = nnx.state(twin, nnx.Param)
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(layer.weight)) + 1
    # the constructors draw the same factors from the same key
    e = fnn.FactorizedConv2d(3, 4, 3, fmt, 2, padding="SAME", key=nnx.Rngs(0).params())
    n = fnnx.FactorizedConv2d(3, 4, 3, fmt, 2, padding="SAME", rngs=nnx.Rngs(0))
    for a, b in zip(jax.tree.leaves(e.weight), jax.tree.leaves(n.factorization), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(n(x[:, :, :5]), e(x[:, :, :5]))
    np.testing.assert_array_equal(n.dense_kernel(), e.dense_kernel())


def test_nnx_from_dense_and_fixed_dims(rng):
    kernel = rng.normal(size=(2, 3, 3)).astype(np.float32)
    e = fnn.FactorizedConv1d.from_dense(kernel, np.ones(2), "tucker", padding="SAME")
    n = fnnx.FactorizedConv1d.from_dense(kernel, np.ones(2), "tucker", padding="SAME")
    assert type(n) is fnnx.FactorizedConv1d and n.num_spatial_dims == 1
    x = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
    np.testing.assert_array_equal(n(x), e(x))
    with pytest.raises(ValueError, match="2 spatial modes"):
        fnnx.FactorizedConv2d.from_weight(e.weight)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input():
    key = jax.random.key(0)
    conv = fnn.FactorizedConv2d(3, 4, 3, "cp", 2, key=key)
    with pytest.raises(ValueError, match=r"`format`.*'svd'"):
        fnn.FactorizedConv2d(3, 4, 3, "svd", 2, key=key)
    with pytest.raises(ValueError, match="`rank` 1e-05"):
        fnn.FactorizedConv2d(3, 4, 3, "cp", 1e-5, key=key)
    with pytest.raises(ValueError, match=r"`rank\[0\]`"):
        fnn.FactorizedConv2d(3, 4, 3, "tucker", (5, 2), key=key)
    with pytest.raises(ValueError, match="inner ranks"):
        fnn.FactorizedConv2d(3, 4, 3, "tt", (2, 2), key=key)
    with pytest.raises(TypeError, match="cp kernel must be an int"):
        fnn.FactorizedConv2d(3, 4, 3, "cp", (2, 2), key=key)
    with pytest.raises(ValueError, match=r"in_channels = 3.*\(5, 8, 8\)"):
        conv(jnp.ones((5, 8, 8)))
    with pytest.raises(ValueError, match=r"one example.*2 spatial"):
        conv(jnp.ones((3, 8)))
    with pytest.raises(ValueError, match=r"`padding`.*'FULL'"):
        fnn.FactorizedConv2d(3, 4, 3, "cp", 2, padding="FULL", key=key)
    with pytest.raises(ValueError, match=r"`padding\[1\]`"):
        fnn.FactorizedConv2d(3, 4, 3, "cp", 2, padding=(1, -1), key=key)
    with pytest.raises(ValueError, match="`stride`"):
        fnn.FactorizedConv2d(3, 4, 3, "cp", 2, stride=(1, 2, 3), key=key)
    with pytest.raises(ValueError, match="`kernel_size`"):
        fnn.FactorizedConv(2, 3, 4, (3,), "cp", 2, key=key)
    with pytest.raises(ValueError, match="`order`"):
        fnn.FactorizedConv2d(3, 4, 3, "cp", 2, order="fft", key=key)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv(jnp.ones((3, 2, 8)))
    with pytest.raises(TypeError, match="LowRank"):
        fnn.FactorizedConv.from_weight(LowRank.init(4, 3, 2, key=key))
    with pytest.raises(ValueError, match="2 spatial modes"):
        fnn.FactorizedConv2d.from_weight(CP.init((4, 3, 3), 2, key=key, init="std", std=1.0))
    with pytest.raises(ValueError, match="`bias`"):
        fnn.FactorizedConv.from_weight(conv.weight, jnp.ones(3))
    with pytest.raises(ValueError, match="`rank` is required"):
        fnn.FactorizedConv.from_dense(np.ones((4, 3, 3)), None, "cp")
