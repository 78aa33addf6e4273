"""Pieces every experiment module uses: the float64 check, reading a run folder, and pyplot on
the non-interactive backend."""

from pathlib import Path

import jax

from factorjax.dynamics import RunStore

__all__ = ["pyplot", "read_run", "require_float64"]


def require_float64(float64: bool) -> None:
    """Refuse a ``float64=True`` config when float64 is off: the library never turns it on
    itself; the ``factorjax`` command does, before anything is traced."""
    if float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "`float64=True` needs jax_enable_x64 set before anything is traced: run through "
            "the `factorjax` command, or call jax.config.update('jax_enable_x64', True) first."
        )


def read_run(out_dir: Path) -> tuple[RunStore, dict]:
    """The `RunStore` of a run folder and its stored config; `FileNotFoundError` if there is
    none."""
    store = RunStore(out_dir)
    stored = store.read_config()
    if stored is None:
        raise FileNotFoundError(f"no config.json in {out_dir}: not a run folder.")
    return store, stored


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (figures are written to files, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
