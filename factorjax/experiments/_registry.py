"""The registry of named experiments that the ``factorjax`` command runs.

An experiment is a typed config (a frozen dataclass whose every field has a default), a
``--quick`` variant of it, a function that runs it into an output folder, and a function that
draws its figures from that folder. Modules that define experiments call `register` at import;
`factorjax.experiments` imports them all.
"""

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["Experiment", "experiments", "get", "register"]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named, runnable experiment.

    Fields:
        name: the name the command knows it by (lowercase, words joined by ``-``).
        summary: one line for ``factorjax list``.
        config: a frozen dataclass type; every field has a default, and its type is one of
            ``int``, ``float``, ``bool``, ``str``, ``typing.Literal[...]`` of strings,
            ``tuple[int, ...]``, ``tuple[float, ...]`` or ``int | None``/``float | None``. A
            field named ``float64`` (bool), if present, is applied by the command with
            ``jax.config.update("jax_enable_x64", ...)`` before anything is traced.
        quick: field overrides for ``--quick``: a small version that shows the effect in
            seconds to a few minutes on a laptop CPU.
        run: ``run(config, out_dir) -> None``; writes ``config.json``, ``runs.jsonl``,
            trajectories and figures into ``out_dir``, resuming what a previous call left.
        plot: ``plot(out_dir) -> list[Path]``; (re)draws the figures of a finished or partial
            run folder and returns the paths of the PNG files written.
    """

    name: str
    summary: str
    config: type
    quick: Mapping[str, Any]
    run: Callable[[Any, Path], None]
    plot: Callable[[Path], list[Path]]

    def __post_init__(self):
        if not (isinstance(self.config, type) and dataclasses.is_dataclass(self.config)):
            raise TypeError(f"`config` of {self.name!r} must be a dataclass type.")
        names = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(self.quick) - names)
        if unknown:
            raise ValueError(
                f"`quick` of {self.name!r} overrides unknown fields {unknown}; the config has "
                f"{sorted(names)}."
            )
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))

    def make_config(self, *, quick: bool = False, **overrides: Any) -> Any:
        """The default config, with the ``--quick`` overrides if asked, then ``overrides``."""
        return dataclasses.replace(self.config(), **{**(self.quick if quick else {}), **overrides})


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry (its name must be new)."""
    if experiment.name in _REGISTRY:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered.")
    _REGISTRY[experiment.name] = experiment
    return experiment


def experiments() -> Mapping[str, Experiment]:
    """All registered experiments, by name, in registration order."""
    return MappingProxyType(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment called ``name``; a `KeyError` lists the known names otherwise."""
    if name not in _REGISTRY:
        raise KeyError(
            f"no experiment named {name!r}; known experiments: {', '.join(_REGISTRY) or 'none'}."
        )
    return _REGISTRY[name]
