"""Factorizing existing models: `from_linear`, `from_conv`, `from_embedding` and `factorize`, in
Equinox (`factorjax.nn`) and Flax NNX (`factorjax.nnx`).

References are written from the definitions in the tests: the relative error is recomputed from
the factors in float64 and checked against the Eckart-Young bound for truncated SVDs, parameter
counts from the shapes, and a layer's output error from its outputs on the basis vectors (for a
linear map ``x -> W x + b`` those outputs are the columns of ``W`` plus ``b``, so the output
error is exactly ``||W - W_hat||_F``).
"""

import dataclasses
import math
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import factorjax.nn as fnn
import factorjax.nnx as fnnx
from factorjax.factorizations import LowRank, Tucker
from factorjax.nn import _conv as nn_conv
from factorjax.nn import _embedding as nn_embedding
from factorjax.nn._report import Reports, format_table
from factorjax.nnx import _conv as nnx_conv
from factorjax.nnx import _embedding as nnx_embedding
from factorjax.nnx._factorize import ChannelsLastConv

EPS = float(jnp.finfo(jnp.float32).eps)
# An exact factorization (full-rank SVD, exact TT-SVD, HOSVD) reconstructs W to a backward
# error of a small multiple of eps ||W||: the multiple grows like the size (a few dozen here),
# and outputs inherit it times ||x||. 64 covers the sizes of these tests.
EXACT = 64 * EPS


def _written(*modules) -> bool:
    return all(
        "Placeholder: being written" not in pathlib.Path(m.__file__).read_text() for m in modules
    )


needs_conv = pytest.mark.skipif(
    not _written(nn_conv, nnx_conv), reason="FactorizedConv is still a placeholder"
)
needs_embedding = pytest.mark.skipif(
    not _written(nn_embedding, nnx_embedding), reason="FactorizedEmbedding is still a placeholder"
)


def f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def rel(a, b) -> float:
    """``||a - b||_F / ||b||_F`` in float64."""
    return float(np.linalg.norm(f64(a) - f64(b)) / np.linalg.norm(f64(b)))


def svd_tail(w, r: int) -> float:
    """Eckart-Young: the relative Frobenius error of the best rank-``r`` approximation."""
    s = np.linalg.svd(f64(w), compute_uv=False)
    return float(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2)))


def get(obj, path: str):
    """The layer at a dotted path, navigated by hand (getattr, int index, dict key)."""
    for part in path.split(".") if path else ():
        if part.isdigit():
            obj = obj[int(part)]
        elif isinstance(obj, dict):
            obj = obj[part]
        else:
            obj = getattr(obj, part)
    return obj


# --- one Equinox linear layer -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["lowrank", "deep_lowrank", "tt", "tucker", "tensor_ring"])
def test_from_linear_exact_keeps_outputs_and_bias(fmt):
    dense = eqx.nn.Linear(16, 12, key=jax.random.key(0))
    layer = fnn.from_linear(dense, fmt)
    assert isinstance(layer, fnn.FactorizedLinear) and layer.format == fmt
    np.testing.assert_array_equal(layer.bias, dense.bias)
    x = jax.random.normal(jax.random.key(1), (16,))
    tol = EXACT * np.linalg.norm(dense.weight) * np.linalg.norm(x)
    np.testing.assert_allclose(layer(x), dense(x), rtol=0, atol=tol)


def test_from_linear_truncated_report_matches_definitions():
    d_out, d_in, r = 12, 16, 3
    dense = eqx.nn.Linear(d_in, d_out, key=jax.random.key(0))
    new, reports = fnn.factorize(dense, format="lowrank", rank=r)
    (rep,) = reports
    assert isinstance(new.weight, LowRank) and new.weight.rank == r
    w_hat = f64(new.weight.u) @ f64(new.weight.v).T  # from the factors, by definition
    assert rep.path == "" and rep.layer == "Linear" and rep.format == "lowrank" and rep.rank == r
    # The reported error is ||W - W_hat|| / ||W||, and the truncated SVD attains Eckart-Young
    # (float32 factors: both agree to float32 rounding of W_hat, ~1e-7 relative).
    assert rep.error == pytest.approx(rel(w_hat, dense.weight), abs=1e-5)
    assert rep.error == pytest.approx(svd_tail(dense.weight, r), abs=1e-5)
    assert rep.params_before == d_out * d_in + d_out
    assert rep.params_after == r * (d_out + d_in) + d_out
    assert rep.flops_before == 2 * d_out * d_in
    assert rep.flops_after == 2 * r * (d_out + d_in)  # x -> V^T x -> U (V^T x)
    assert rep.compression == pytest.approx(rep.params_before / rep.params_after)
    # Outputs on the basis vectors e_j are W e_j + b: their error is exactly ||W - W_hat||_F.
    eye = jnp.eye(d_in)
    y, y_hat = jax.vmap(dense)(eye) - dense.bias, jax.vmap(new)(eye) - dense.bias
    assert rel(y_hat, y) == pytest.approx(rep.error, abs=1e-5)


def test_from_linear_tt_options_and_naive_cores():
    dense = eqx.nn.Linear(16, 12, key=jax.random.key(0))
    layer = fnn.from_linear(dense, "tt", out_modes=(3, 4), in_modes=(4, 4))
    g1, g2 = (f64(c) for c in layer.weight.cores)
    w = np.einsum("aoir,rpjb->opij", g1, g2).reshape(12, 16)  # W[(o,p),(i,j)], row-major
    assert rel(w, dense.weight) < EXACT * 10


def test_from_linear_bad_input():
    with pytest.raises(TypeError, match=r"eqx.nn.Linear; got LayerNorm"):
        fnn.from_linear(eqx.nn.LayerNorm(4))
    scalar = eqx.nn.Linear("scalar", 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"in_features='scalar'.*no matrix"):
        fnn.from_linear(scalar)
    dense = eqx.nn.Linear(8, 8, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`format` must be one of"):
        fnn.from_linear(dense, "svd")
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 8\]; got 9"):
        fnn.from_linear(dense, rank=9)


# --- whole Equinox and NNX models -------------------------------------------------------------


class EqxNet(eqx.Module):
    seq: eqx.nn.Sequential
    blocks: list
    norm: eqx.nn.LayerNorm
    heads: dict

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.seq = eqx.nn.Sequential([eqx.nn.Linear(6, 8, key=k[0]), eqx.nn.Lambda(jnp.tanh)])
        self.blocks = [eqx.nn.Linear(8, 8, key=k[1]), eqx.nn.Linear(8, 8, key=k[2])]
        self.norm = eqx.nn.LayerNorm(8)
        self.heads = {"label": eqx.nn.Linear(8, 3, key=k[3]), "reg": eqx.nn.Linear(8, 1, key=k[4])}

    def __call__(self, x):
        h = self.seq(x)
        for b in self.blocks:
            h = jax.nn.relu(b(h))
        h = self.norm(h)
        return jnp.concatenate([self.heads["label"](h), self.heads["reg"](h)])


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.seq = nnx.Sequential(nnx.Linear(6, 8, rngs=rngs), jnp.tanh)
        self.blocks = nnx.List([nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)])
        self.norm = nnx.LayerNorm(8, epsilon=1e-5, rngs=rngs)  # eqx.nn.LayerNorm's eps
        self.heads = nnx.Dict(label=nnx.Linear(8, 3, rngs=rngs), reg=nnx.Linear(8, 1, rngs=rngs))

    def __call__(self, x):
        h = self.seq(x)
        for b in self.blocks:
            h = jax.nn.relu(b(h))
        h = self.norm(h)
        return jnp.concatenate([self.heads["label"](h), self.heads["reg"](h)], axis=-1)


PATHS = ["blocks.0", "blocks.1", "heads.label", "heads.reg", "seq.layers.0"]


def nnx_like(eqx_net) -> NnxNet:
    """An `NnxNet` with the weights of an `EqxNet` (NNX kernels are ``W^T``)."""
    net = NnxNet(nnx.Rngs(0))
    for p in PATHS:
        src, dst = get(eqx_net, p), get(net, p)
        dst.kernel[...] = src.weight.T
        dst.bias[...] = src.bias
    return net


def test_factorize_equinox_model_exact_and_paths():
    net = EqxNet(jax.random.key(0))
    new, reports = fnn.factorize(net)
    assert [r.path for r in reports] == PATHS
    for p in PATHS:
        assert isinstance(get(new, p), fnn.FactorizedLinear)
        assert isinstance(get(net, p), eqx.nn.Linear)  # the input model is not changed
    assert isinstance(new.norm, eqx.nn.LayerNorm)
    x = jax.random.normal(jax.random.key(1), (4, 6))
    np.testing.assert_allclose(jax.vmap(new)(x), jax.vmap(net)(x), atol=EXACT * 8 * 4)
    # The table: a header, one row per layer, a total of the parameter counts.
    lines = str(reports).splitlines()
    assert len(lines) == len(PATHS) + 2 and str(reports) == format_table(reports)
    before = sum(get(net, p).weight.size + get(net, p).bias.size for p in PATHS)
    assert lines[-1].split()[:2] == ["total", f"{before:,}"]


def test_factorize_where_config_and_errors():
    net = EqxNet(jax.random.key(0))
    _, reports = fnn.factorize(net, "blocks.*", rank=2)
    assert [r.path for r in reports] == ["blocks.0", "blocks.1"]
    _, reports = fnn.factorize(net, lambda p, layer: layer.out_features < 8, rank=1)
    assert [r.path for r in reports] == ["heads.label", "heads.reg"]

    def config(path, layer):
        return {"format": "tt", "rank": 2} if path == "blocks.1" else None

    new, reports = fnn.factorize(net, "blocks.*", rank=3, config=config)
    assert [(r.format, r.rank) for r in reports] == [("lowrank", 3), ("tt", (2, 2))]
    assert new.blocks[1].format == "tt"

    with pytest.raises(
        ValueError, match=r"selects no layer.*'blocks.0', 'blocks.1', 'heads.label'"
    ):
        fnn.factorize(net, "decoder.*")
    with pytest.raises(TypeError, match=r"'norm' selects a LayerNorm.*eqx.nn.Linear"):
        fnn.factorize(net, "norm")
    with pytest.raises(TypeError, match=r"`where` must be None.*got int"):
        fnn.factorize(net, 3)
    with pytest.raises(ValueError, match=r"layer 'blocks.0' \(Linear\): `rank` 0.01 asks"):
        fnn.factorize(net, "blocks.0", rank=0.01)
    with pytest.raises(ValueError, match=r"layer 'heads.label' \(Linear\): the product of `out_"):
        fnn.factorize(net, "heads.label", "tt", out_modes=(2, 2), in_modes=(2, 4))
    with pytest.raises(TypeError, match=r"`config` must return a dict"):
        fnn.factorize(net, config=lambda p, layer: 5)


@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_model_same_paths_reports_and_outputs_as_equinox():
    eqx_net = EqxNet(jax.random.key(0))
    net = nnx_like(eqx_net)
    x = jax.random.normal(jax.random.key(1), (4, 6))
    np.testing.assert_allclose(net(x), jax.vmap(eqx_net)(x), atol=1e-6)
    eqx_new, eqx_reports = fnn.factorize(eqx_net, rank=1)
    new, reports = fnnx.factorize(net, rank=1)
    assert [r.path for r in reports] == PATHS
    for a, b in zip(reports, eqx_reports, strict=True):  # the same decomposition
        assert (a.format, a.rank, a.params_before, a.params_after) == (
            b.format, b.rank, b.params_before, b.params_after,
        )  # fmt: skip
        assert (a.flops_before, a.flops_after) == (b.flops_before, b.flops_after)
        assert a.error == pytest.approx(b.error, abs=1e-6)
    for p, r in zip(PATHS, reports, strict=True):
        assert isinstance(get(new, p), fnnx.FactorizedLinear)
        assert isinstance(get(net, p), nnx.Linear)  # inplace=False: a copy
        params = jax.tree.leaves(nnx.state(get(new, p), nnx.Param))
        assert sum(a.size for a in params) == r.params_after
    # The same factors in both frameworks give the same outputs (rank 1: far from dense).
    np.testing.assert_allclose(new(x), jax.vmap(eqx_new)(x), atol=1e-5)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(new, x), new(x), atol=1e-6)
    assert rel(new(x), net(x)) > 1e-2


def test_nnx_from_linear_transposes_the_kernel():
    dense = nnx.Linear(16, 12, rngs=nnx.Rngs(0))
    layer, (rep,) = fnnx.factorize(dense, rank=3)
    w = f64(dense.kernel[...]).T  # (d_out, d_in)
    assert rep.error == pytest.approx(svd_tail(w, 3), abs=1e-5)
    eye = jnp.eye(16)
    assert rel(layer(eye) - dense.bias[...], dense(eye) - dense.bias[...]) == pytest.approx(
        rep.error, abs=1e-5
    )
    x = jnp.ones((2, 5, 16))  # leading batch axes, as nnx.Linear
    exact = fnnx.from_linear(dense)
    np.testing.assert_allclose(exact(x), dense(x), atol=EXACT * np.linalg.norm(w) * 4)
    with pytest.raises(TypeError, match=r"nnx.Linear; got Embed"):
        fnnx.from_linear(nnx.Embed(3, 4, rngs=nnx.Rngs(0)))
    lora = nnx.LoRALinear(4, 4, lora_rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"LoRALinear cannot be factorized"):
        fnnx.from_linear(lora)


def test_nnx_inplace_tied_layers_and_errors():
    net = NnxNet(nnx.Rngs(0))
    net.tied = net.blocks[0]  # the same layer at a second path
    new, reports = fnnx.factorize(net, "blocks.*", rank=2, inplace=True)
    assert new is net and [r.path for r in reports] == ["blocks.0", "blocks.1"]
    assert isinstance(net.blocks[0], fnnx.FactorizedLinear) and net.tied is net.blocks[0]
    fresh = NnxNet(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"selects no layer.*'heads.reg', 'seq.layers.0'"):
        fnnx.factorize(fresh, "decoder")
    with pytest.raises(TypeError, match=r"'norm' selects a LayerNorm.*nnx.Linear"):
        fnnx.factorize(fresh, "norm")
    with pytest.raises(ValueError, match=r"layer 'heads.reg' \(Linear\): `rank` 0.1 asks"):
        fnnx.factorize(fresh, "heads.reg", rank=0.1)
    with pytest.raises(TypeError, match=r"nnx.Module.*got EqxNet"):
        fnnx.factorize(EqxNet(jax.random.key(0)))
    assert isinstance(fresh.heads["reg"], nnx.Linear)  # a failed call changes nothing


# --- convolutions ---------------------------------------------------------------------------


def naive_tucker(w: Tucker) -> np.ndarray:
    """The Tucker kernel ``core x_1 U_1 ... x_n U_n`` by explicit einsum, mode by mode."""
    t = f64(w.core)
    for mode, u in enumerate(w.factors):
        t = np.moveaxis(np.tensordot(f64(u), t, axes=(1, mode)), 0, mode)
    return t


@needs_conv
def test_eqx_conv_exact_truncated_and_refused():
    dense = eqx.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 9, 9))
    exact = fnn.from_conv(dense)
    assert isinstance(exact, fnn.FactorizedConv) and exact.stride == (2, 2)
    tol = EXACT * np.linalg.norm(dense.weight) * np.linalg.norm(x)
    np.testing.assert_allclose(exact(x), dense(x), atol=tol)
    # A 3x3 input, no padding: one output position, a linear map of the 36 input entries with
    # matrix K.reshape(6, 36). On the basis inputs the output error is ||K - K_hat||_F.
    valid = eqx.nn.Conv2d(4, 6, 3, key=jax.random.key(2))
    new, (rep,) = fnn.factorize(valid, format="tucker", rank=(3, 2))
    assert rep.layer == "Conv2d" and rep.rank == (3, 2, 3, 3)
    k_hat = naive_tucker(new.weight)
    assert rep.error == pytest.approx(rel(k_hat, valid.weight), abs=1e-5)
    eye = jnp.eye(36).reshape(36, 4, 3, 3)
    y, y_hat = (jax.vmap(m)(eye)[..., 0, 0] - valid.bias[:, 0, 0] for m in (valid, new))
    assert rel(y_hat, y) == pytest.approx(rep.error, abs=1e-5)
    assert rep.params_before == 6 * 4 * 9 + 6
    assert rep.params_after == 3 * 2 * 9 + 6 * 3 + 4 * 2 + 9 + 9 + 6  # core, factors, bias
    assert rep.flops_before == 2 * 6 * 4 * 9
    grouped = eqx.nn.Conv2d(4, 4, 3, groups=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"'convs.1' \(Conv2d\): a grouped convolution"):
        fnn.factorize({"convs": [valid, grouped]}, "convs.*")
    _, reports = fnn.factorize({"convs": [valid, grouped]})  # None skips what cannot convert
    assert [r.path for r in reports] == ["convs.0"]


@needs_conv
@pytest.mark.parametrize("fmt", ["tt", "tucker"])
@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_eqx_conv1d_and_3d(fmt):
    for conv, x in (
        (eqx.nn.Conv1d(3, 4, 3, padding="SAME", key=jax.random.key(0)), jnp.ones((3, 7))),
        (eqx.nn.Conv3d(2, 3, 2, dilation=2, key=jax.random.key(0)), jnp.ones((2, 5, 5, 5))),
    ):
        new = fnn.from_conv(conv, fmt)
        np.testing.assert_allclose(new(x), conv(x), atol=EXACT * np.linalg.norm(conv.weight) * 4)


@needs_conv
@pytest.mark.parametrize(
    ("kw", "x_shape"),
    [
        ({"strides": 2, "padding": "SAME"}, (9, 9, 4)),
        ({"padding": "VALID", "kernel_dilation": 2}, (2, 3, 9, 9, 4)),
        ({"padding": ((1, 0), (2, 1)), "use_bias": False}, (1, 6, 7, 4)),
    ],
)
@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_conv_channels_last(kw, x_shape):
    dense = nnx.Conv(4, 5, (3, 3), rngs=nnx.Rngs(0), **kw)
    x = jax.random.normal(jax.random.key(1), x_shape)
    new, (rep,) = fnnx.factorize(dense)
    assert isinstance(new, ChannelsLastConv) and isinstance(new, fnnx.FactorizedConv)
    k = jnp.transpose(dense.kernel[...], (3, 2, 0, 1))  # (C_out, C_in, kh, kw)
    assert rep.error < EXACT and rep.params_before == k.size + (0 if dense.bias is None else 5)
    tol = EXACT * np.linalg.norm(k) * np.linalg.norm(x)
    np.testing.assert_allclose(new(x), dense(x), atol=tol)


@needs_conv
@pytest.mark.slow  # compile-heavy: over 5 s on 2 cores (the default run's budget)
def test_nnx_conv_causal_and_refused():
    dense = nnx.Conv(3, 4, 3, padding="CAUSAL", kernel_dilation=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 10, 3))
    tol = EXACT * np.linalg.norm(dense.kernel[...]) * np.linalg.norm(x)
    np.testing.assert_allclose(fnnx.from_conv(dense)(x), dense(x), atol=tol)
    for kw, msg in (
        ({"feature_group_count": 2}, r"feature_group_count=2"),
        ({"padding": "CIRCULAR"}, r"padding='CIRCULAR'"),
        ({"input_dilation": 2}, r"input_dilation=2"),
    ):
        bad = nnx.Conv(4, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
        with pytest.raises(ValueError, match=msg):
            fnnx.from_conv(bad)


# --- embeddings -----------------------------------------------------------------------------


@needs_embedding
def test_eqx_and_nnx_embedding():
    dense = eqx.nn.Embedding(40, 12, key=jax.random.key(0))
    idx = jnp.arange(40)
    exact = fnn.from_embedding(dense)
    rows = jax.vmap(dense)(idx)
    np.testing.assert_allclose(exact(idx), rows, atol=EXACT * np.linalg.norm(dense.weight))
    new, (rep,) = fnn.factorize({"emb": dense}, rank=4)
    assert rep.path == "emb" and rep.layer == "Embedding" and rep.rank == 4
    # All the rows are the table: the lookup error is the table's error, Eckart-Young's.
    assert rel(new["emb"](idx), rows) == pytest.approx(rep.error, abs=1e-5)
    assert rep.error == pytest.approx(svd_tail(dense.weight, 4), abs=1e-5)
    assert (rep.params_before, rep.params_after) == (40 * 12, 4 * (40 + 12))
    assert rep.flops_before == 0 and rep.flops_after >= 2 * 4 * 12  # one row: U[i] V^T
    tt = fnn.from_embedding(dense, "tt", out_modes=(5, 8), in_modes=(3, 4))
    assert tt.format == "tt" and rel(tt(idx), rows) < EXACT * 10

    embed = nnx.Embed(40, 12, rngs=nnx.Rngs(0))
    embed.embedding[...] = dense.weight
    layer, (nrep,) = fnnx.factorize(embed, rank=4)
    assert isinstance(layer, fnnx.FactorizedEmbedding) and nrep.layer == "Embed"
    assert nrep.error == pytest.approx(rep.error, abs=1e-6)
    ids = jnp.array([[0, 39], [7, 3]])
    np.testing.assert_allclose(layer(ids), new["emb"](ids), atol=1e-6)
    with pytest.raises(TypeError, match=r"nnx.Embed; got Linear"):
        fnnx.from_embedding(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_report_table_formats_every_field():
    rep = fnn.LayerReport("a.0", "Linear", "tt", (2, 3), 1000, 250, 0.125, 2000, 500)
    assert rep.compression == 4.0
    (header, row) = str(rep).splitlines()
    assert header.split()[:4] == ["path", "layer", "format", "rank"]
    assert row.split() == ["a.0", "Linear", "tt", "(2,", "3)", "1,000", "250", "4.00",
                           "1.250e-01", "2,000", "500"]  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.path = "b"


def test_math_of_the_table_total():
    reps = Reports(
        [fnn.LayerReport(f"l.{i}", "Linear", "lowrank", 2, 100, 40, 0.5, 200, 80) for i in range(3)]
    )
    assert str(reps).splitlines()[-1].split() == ["total", "300", "120", "2.50", "600", "240"]
    assert math.isclose(sum(r.compression for r in reps) / 3, 2.5)
