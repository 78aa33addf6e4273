"""Named experiments, run by the ``factorjax`` command (``factorjax list``)."""

from factorjax.experiments._registry import Experiment, experiments, get, register

__all__ = ["Experiment", "experiments", "get", "register"]

# Modules that register experiments.
from factorjax.experiments import (
    compare_families,  # noqa: F401
    cp_tensor,  # noqa: F401
    deep_matrix,  # noqa: F401
    digits,  # noqa: F401
    moe_specialization,  # noqa: F401
    norms_2x2,  # noqa: F401
    saxe_dynamics,  # noqa: F401
    tubal_implicit_reg,  # noqa: F401
)
