"""The ``factorjax`` command: list, run and plot the registered experiments.

``factorjax list [NAME]``, ``factorjax run NAME [--quick] [--out DIR] [--set KEY=VALUE ...]``
and ``factorjax plot DIR``. A user error (an unknown experiment or key, an ill-typed value, a
config its dataclass refuses, a missing run folder) prints ``factorjax: error: ...`` to stderr
and exits with status 2.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import factorjax.experiments  # noqa: F401  (registers the experiments)
from factorjax.dynamics.storage import ConfigMismatchError
from factorjax.experiments._registry import Experiment, experiments

__all__ = ["main", "parse_overrides"]

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class _UserError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


def _type_name(tp: Any) -> str:
    """How a field's type reads in messages: ``int``, ``tuple[int, ...]``, ``float | None``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is tuple:
        return f"tuple[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _parse_value(tp: Any, text: str) -> Any:
    """``text`` as a value of type ``tp``; a `ValueError` says what was expected otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and len(args) == 2:
            return None if text.strip().lower() == "none" else _parse_value(inner[0], text)
    elif origin is Literal:
        for choice in args:
            if text == str(choice):
                return choice
        raise ValueError(f"expected one of {', '.join(map(repr, args))}")
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not text.strip():
            raise ValueError(f"expected a non-empty comma-separated list of {_type_name(args[0])}")
        return tuple(_parse_value(args[0], part.strip()) for part in text.split(","))
    elif tp is bool:
        if text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
        raise ValueError(f"expected a bool ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})")
    elif tp is int:
        if re.fullmatch(r"[+-]?\d+", text.strip()):
            return int(text)
        raise ValueError("expected an integer such as 100 or -3")
    elif tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number such as 0.5 or 1e-7") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    elif tp is str:
        return text
    raise ValueError(f"fields of type {_type_name(tp)} cannot be set from the command line")


def parse_overrides(config_cls: type, items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings into typed field values of the dataclass ``config_cls``.

    Arguments:
        config_cls: a dataclass type; each value is parsed by its field's type annotation.
        items: strings ``KEY=VALUE``; a later item for the same key wins.

    Returns:
        The parsed values by field name. A `ValueError` names the offending item, what was
        given and what is allowed (the keys with their types, or the expected type).
    """
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.init}
    allowed = ", ".join(f"{name} ({_type_name(tp)})" for name, tp in fields.items())
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}; allowed keys: {allowed}")
        if key not in fields:
            raise ValueError(f"unknown key {key!r} in {item!r}; allowed keys: {allowed}")
        try:
            out[key] = _parse_value(fields[key], text)
        except ValueError as e:
            raise ValueError(
                f"bad value {text!r} for {key} ({_type_name(fields[key])}): {e}"
            ) from None
    return out


def _lookup(name: str) -> Experiment:
    if name not in experiments():
        known = ", ".join(experiments()) or "none"
        raise _UserError(f"no experiment named {name!r}; known experiments: {known}")
    return experiments()[name]


def _apply_float64(enabled: Any) -> None:
    import jax  # lazily: only once the config is known

    jax.config.update("jax_enable_x64", bool(enabled))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _apply_cpu_devices(count: int | None) -> None:
    """Present the host's cores as ``count`` XLA CPU devices (default: one per core), so that
    the runner's sweeps (`factorjax.dynamics.map_runs`) split their runs over all of them. A
    device count the user set (``XLA_FLAGS=--xla_force_host_platform_device_count``,
    ``JAX_NUM_CPU_DEVICES``) stands; so does a backend that is already running."""
    import jax  # lazily: before anything is traced

    if count is None:
        if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
            return
        if os.environ.get("JAX_NUM_CPU_DEVICES"):
            return
        count = _cpu_count()
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the CPU backend is already initialised (factorjax.cli.main in-process)
        pass


def _list(args: argparse.Namespace) -> None:
    if args.name is None:
        width = max((len(name) for name in experiments()), default=0)
        for name, experiment in experiments().items():
            print(f"{name:<{width}}  {experiment.summary}")
        return
    experiment = _lookup(args.name)
    print(f"{experiment.name}: {experiment.summary}")
    hints, default = typing.get_type_hints(experiment.config), experiment.config()
    for f in dataclasses.fields(experiment.config):
        line = f"  {f.name} ({_type_name(hints[f.name])}) = {getattr(default, f.name)!r}"
        if f.name in experiment.quick:
            line += f"  [--quick: {experiment.quick[f.name]!r}]"
        print(line)


def _run(args: argparse.Namespace) -> None:
    experiment = _lookup(args.name)
    try:
        overrides = parse_overrides(experiment.config, args.set)
        config = experiment.make_config(quick=args.quick, **overrides)
    except (ValueError, TypeError) as e:
        raise _UserError(f"{experiment.name}: {e}") from None
    if any(f.name == "float64" for f in dataclasses.fields(config)):
        _apply_float64(config.float64)
    _apply_cpu_devices(args.cpu_devices)
    out_dir = Path(args.out if args.out is not None else Path("runs") / experiment.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        experiment.run(config, out_dir)
    except ConfigMismatchError as e:
        raise _UserError(f"{e} Use another --out folder, or the stored config.") from None
    print(f"results in {out_dir.resolve()}")


def _plot(args: argparse.Namespace) -> None:
    run_dir = Path(args.dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise _UserError(f"{str(path)!r} not found; expected a run folder from `factorjax run`")
    try:
        stored = json.loads(path.read_text())
        name, config = stored["experiment"], stored.get("config", {})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise _UserError(f"{str(path)!r} is not a run config ({type(e).__name__}: {e})") from None
    experiment = _lookup(name)
    if isinstance(config, dict) and "float64" in config:
        _apply_float64(config["float64"])
    for png in experiment.plot(run_dir):
        print(png)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the experiments, or the config fields of one")
    p.add_argument("name", nargs="?", help="an experiment: show its config fields")
    p.set_defaults(func=_list)
    p = sub.add_parser("run", help="run an experiment into a folder")
    p.add_argument("name", help="the experiment (see `factorjax list`)")
    p.add_argument("--quick", action="store_true", help="the small, fast variant")
    p.add_argument("--out", help="the output folder (default: runs/NAME)")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (see `factorjax list NAME`); repeatable",
    )
    p.add_argument(
        "--cpu-devices",
        type=_positive_int,
        metavar="N",
        help="split the CPU into N devices that share the runs (default: one per core, unless "
        "XLA_FLAGS or JAX_NUM_CPU_DEVICES sets a count)",
    )
    p.set_defaults(func=_run)
    p = sub.add_parser("plot", help="(re)draw the figures of a run folder")
    p.add_argument("dir", help="a folder written by `factorjax run`")
    p.set_defaults(func=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``factorjax`` command.

    Arguments:
        argv: the arguments after the program name; ``sys.argv[1:]`` when `None`.

    Returns:
        The exit status: 0 on success, 2 on a user error (reported on stderr).
    """
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except _UserError as e:
        print(f"factorjax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
