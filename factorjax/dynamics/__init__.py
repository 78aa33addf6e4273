"""Experiments on factorizations: recovery problems, the training loop, sweeps, run storage.

The experiment runner (sweeps over seeds and scales as one compiled program, sharding over
devices and hosts, the `factorjax` command) builds on these; see the project's issue tracker.
"""

from factorjax.dynamics.metrics import metrics, reference_bases, top_subspace
from factorjax.dynamics.nuclear import min_nuclear_norm
from factorjax.dynamics.optim import group_rmsprop
from factorjax.dynamics.problems import (
    AbstractProblem,
    MatrixCompletion,
    MatrixSensing,
    TensorCompletion,
    TubalSensing,
)
from factorjax.dynamics.storage import (
    ConfigMismatchError,
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
    run_id,
    save_npz_atomic,
)
from factorjax.dynamics.sweep import run_sweep
from factorjax.dynamics.train import TrainState, advance, train

__all__ = [
    "AbstractProblem",
    "ConfigMismatchError",
    "MatrixCompletion",
    "MatrixSensing",
    "RunStore",
    "TensorCompletion",
    "TrainState",
    "TubalSensing",
    "advance",
    "atomic_write_bytes",
    "atomic_write_json",
    "group_rmsprop",
    "metrics",
    "min_nuclear_norm",
    "reference_bases",
    "run_id",
    "run_sweep",
    "save_npz_atomic",
    "top_subspace",
    "train",
]
