"""Mixtures of experts over the library's factorizations (Equinox layers and pure functions).

- `MultilinearMoE`: the multilinear MoE (μMoE; CP or tensor-ring form, any hierarchy depth):
  thousands of experts whose weight tensor is never built.
- `LatentMoE`: experts ``W_e = B_e P`` through one shared latent projection (MoLE), and the
  conversion of a trained MoE into that form (`fit_latent`).
- `BasisMoE`: experts ``W_j = A_j act(sum_i softmax(alpha_j)_i B_i)`` over bases shared in the
  layer (MoBE), and the fit of given experts (`fit_basis`).
- `SparseMoE`: the standard sparse top-k MoE with load-balancing loss, whose experts may be any
  matrix format of the library: the baseline.
- Gates (`gate`: softmax, entmax-1.5, sparsemax, top-k), top-k routing (`route`), and
  expert-parallel sharding (`shard_experts`, `expert_mesh`).

The Equinox layers are also `factorjax.nn.<name>`; their Flax NNX twins are
`factorjax.nnx.<name>`, with the same arguments (``rngs`` for ``key``).
"""

from factorjax.moe import _basis, _gates, _latent, _multilinear, _routing, _sharding, _sparse
from factorjax.moe._basis import *  # noqa: F403
from factorjax.moe._gates import *  # noqa: F403
from factorjax.moe._latent import *  # noqa: F403
from factorjax.moe._multilinear import *  # noqa: F403
from factorjax.moe._routing import *  # noqa: F403
from factorjax.moe._sharding import *  # noqa: F403
from factorjax.moe._sparse import *  # noqa: F403

__all__ = [
    *_basis.__all__,
    *_gates.__all__,
    *_latent.__all__,
    *_multilinear.__all__,
    *_routing.__all__,
    *_sharding.__all__,
    *_sparse.__all__,
]
