"""A sweep's output folder that survives being killed at any moment, SIGKILL included.

Layout of ``out_dir``::

    config.json                  the resolved config (any JSON-able dict)
    runs.jsonl                   one JSON line per finished run
    trajectories/<run_id>.npz    arrays of metrics over steps, one file per run
    checkpoints/<name>.npz       in-progress sweep state

Guarantees, for a single writer process:

- Every file but ``runs.jsonl`` is written to a hidden temporary file in the same directory,
  flushed and fsynced, then moved onto its name with ``os.replace`` (atomic on POSIX) and the
  directory fsynced: a reader sees the old file or the new one, never a part of one. A killed
  writer may leave a hidden ``.<name>.*.tmp*`` file behind; nothing reads those.
- A run's trajectory is on disk before its line is appended to ``runs.jsonl``, so every line
  names a complete trajectory. The line is appended by one ``os.write`` on an ``O_APPEND`` file
  then fsynced. A line torn by a kill (no trailing newline, or invalid JSON at the very end of
  the file) is ignored by :meth:`RunStore.finished` and cut off before the next append, so the
  run it belonged to counts as unfinished and is redone.
- A run id is recorded at most once: a finished run is never redone.

JSON has no NaN or infinity, and a diverged run's metrics are often non-finite. Records and
configs store a non-finite float as one of the strings ``"nan"``, ``"inf"`` and ``"-inf"``, and
reading them back (:meth:`RunStore.finished`, :meth:`RunStore.read_config`) turns these three
strings back into floats. To keep that exact, those three strings are refused as string values
on write. NumPy scalars and arrays (and anything with ``__array__``, such as JAX arrays) are
stored as Python numbers and nested lists; tuples come back as lists.
"""

import copy
import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ConfigMismatchError",
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "run_id",
    "save_npz_atomic",
]

PathLike = str | os.PathLike

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MAX_ID_LEN = 120
_HASH_LEN = 12
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.+-]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.=+~-]+")


class ConfigMismatchError(ValueError):
    """A run folder holds results of a different config than the one given."""


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (a no-op where unsupported)."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write, suffix: str = ".tmp") -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync it, rename it onto ``path``."""
    path = Path(path)
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old content or the new, never a part.

    The bytes go to a temporary file in the same directory, which is fsynced and renamed onto
    ``path`` with ``os.replace``; the directory is then fsynced. The directory must exist.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON, encoded as described in the module docstring."""
    _write_encoded_json(path, _encode(obj))


def _write_encoded_json(path: PathLike, encoded: Any) -> None:
    text = json.dumps(encoded, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def save_npz_atomic(path: PathLike, /, **arrays: Any) -> Path:
    """Atomically write ``arrays`` as an uncompressed ``.npz`` file (readable with ``np.load``).

    As with ``np.savez``, ``.npz`` is appended to a ``path`` that does not end with it.
    Object arrays are refused (they would need pickle to load).

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    converted = {}
    for name, value in arrays.items():
        a = np.asanyarray(value)
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype object; only numeric arrays are saved")
        converted[name] = a

    def write(f):
        # What np.savez does, without its reserved keyword names (``file``, ``allow_pickle``).
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in converted.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)

    _atomic_write(path, write, suffix=".tmp.npz")
    return path


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- JSON encoding


def _builtin(obj: Any, where: str) -> Any:
    """NumPy (and ``__array__``) values to Python ones, tuples to lists; floats left as they are."""
    if isinstance(obj, np.generic):  # before float and str: np.float64 and np.str_ subclass them
        return _builtin(obj.item(), where)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, np.str_):
                k = str(k)
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _builtin(v, f"{where}.{k}")
        return out
    if isinstance(obj, list | tuple):
        return [_builtin(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        a = np.asarray(obj)
        if a.dtype.hasobject or a.dtype.kind not in "biufU":
            raise TypeError(f"{where}: cannot store an array of dtype {a.dtype} as JSON")
        return _builtin(a.tolist(), where)
    raise TypeError(f"{where}: cannot store a value of type {type(obj).__name__} as JSON")


def _encode_nonfinite(obj: Any, where: str) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, str) and obj in _NONFINITE:
        raise ValueError(
            f"{where}: the string {obj!r} is reserved for non-finite floats; "
            f"store float({obj!r}) or another string"
        )
    if isinstance(obj, dict):
        return {k: _encode_nonfinite(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_encode_nonfinite(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def _encode(obj: Any, where: str = "value") -> Any:
    """A JSON-able copy of ``obj``: NumPy to Python, non-finite floats to reserved strings."""
    return _encode_nonfinite(_builtin(obj, where), where)


def _decode(obj: Any) -> Any:
    """Inverse of :func:`_encode` on what ``json.loads`` returns."""
    if isinstance(obj, str):
        return _NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- run ids


def run_id(settings: dict) -> str:
    """A stable, filesystem-safe id for a run, from its settings.

    The readable form is ``key=value`` pairs in sorted key order joined by ``_``, with floats
    written by ``repr`` (shortest round-tripping form), e.g.
    ``run_id({"width": 100, "seed": 3, "alpha": 1e-7}) == "alpha=1e-07_seed=3_width=100"``.
    NumPy scalars count as the Python numbers they hold.

    When the readable form would not be unique or safe (a key or string value with characters
    outside ``[A-Za-z0-9_.+-]``, a string value that reads as a number, bool or None, a list or
    dict value) or is longer than 120 characters, a ``~`` and 12 hex digits of the SHA-256 of the
    settings' canonical JSON are appended (the readable part sanitized and shortened to fit).
    ``~`` appears in no readable form, so the two kinds of id never collide. The id depends only
    on the settings, not on the process, platform or Python version.
    """
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict, got {type(settings).__name__}")
    plain = _builtin(settings, "settings")
    parts = []
    needs_hash = False
    for key in sorted(plain):
        value = plain[key]
        if not _SAFE_KEY.fullmatch(key):
            needs_hash = True
        if isinstance(value, float):
            text = repr(value)
        elif value is None or isinstance(value, bool | int):
            text = str(value)
        elif isinstance(value, str):
            text = value
            if not _SAFE_VALUE.fullmatch(value) or _reads_as_non_string(value):
                needs_hash = True
        else:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"))
            needs_hash = True
        parts.append(f"{key}={text}")
    readable = re.sub(r"[^A-Za-z0-9_.=+-]", "-", "_".join(parts)) or "run"
    if not needs_hash and len(readable) <= _MAX_ID_LEN:
        return readable
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_LEN]
    return f"{readable[: _MAX_ID_LEN - _HASH_LEN - 1]}~{digest}"


def _reads_as_non_string(s: str) -> bool:
    if s in ("True", "False", "None"):
        return True
    try:
        float(s)
    except ValueError:
        return False
    return True


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{what} must be a non-empty string of characters [A-Za-z0-9_.=+~-] "
            f"(not '.' or '..'), got {name!r}"
        )
    return name


# --------------------------------------------------------------------------- the store


class RunStore:
    """A sweep's output folder: config, finished runs, trajectories and checkpoints.

    One process writes a folder at a time. Start it again with the same config after a kill and
    :meth:`finished` tells which runs are done; :meth:`record` refuses to record one twice.

    Example:
        >>> store = RunStore(out_dir)                                     # doctest: +SKIP
        >>> store.write_config(cfg, volatile=("started", "versions"))      # doctest: +SKIP
        >>> done = store.finished()                                        # doctest: +SKIP
        >>> for settings in grid:                                          # doctest: +SKIP
        ...     rid = run_id(settings)
        ...     if rid not in done:
        ...         store.record(rid, {**settings, "status": "ok"}, {"loss": losses})
    """

    def __init__(self, out_dir: PathLike):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.out_dir / "config.json"
        self.runs_path = self.out_dir / "runs.jsonl"
        self.trajectory_dir = self.out_dir / "trajectories"
        self.checkpoint_dir = self.out_dir / "checkpoints"
        # Parsed runs.jsonl: records, the end offset of the last good line, and the file's
        # (size, mtime, inode) when parsed, so a single writer need not re-read the file.
        self._records: dict[str, dict] = {}
        self._good_end = 0
        self._stamp: tuple | None = None

    def __repr__(self) -> str:
        return f"RunStore({str(self.out_dir)!r})"

    # ---- config

    def read_config(self) -> dict | None:
        """The stored config (non-finite floats decoded), or None if there is none yet."""
        try:
            text = self.config_path.read_text()
        except FileNotFoundError:
            return None
        return _decode(self._parse_config(text))

    def _parse_config(self, text: str) -> dict:
        try:
            stored = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.config_path} is not valid JSON: {e}") from None
        if not isinstance(stored, dict):
            raise ValueError(f"{self.config_path} does not hold a JSON object")
        return stored

    def write_config(self, cfg: dict, *, volatile: Iterable[str] = ()) -> None:
        """Write ``config.json``, or check that the one already there describes the same sweep.

        Arguments:
            cfg: the resolved config; any JSON-able dict (NumPy values allowed).
            volatile: keys that may differ between a start and a resume (timestamps, versions,
                devices): top-level keys, or dotted paths into nested dicts.

        Raises:
            ValueError: if ``config.json`` exists and differs from ``cfg`` outside ``volatile``;
                the message names the differing keys. The existing file is then left as it is.
                If it matches, it is also left as it is (it keeps the first start's volatile
                values).
        """
        if not isinstance(cfg, dict):
            raise TypeError(f"cfg must be a dict, got {type(cfg).__name__}")
        if isinstance(volatile, str):
            raise TypeError("volatile must be a sequence of keys, not a single string")
        new = _encode(cfg, "cfg")
        try:
            text = self.config_path.read_text()
        except FileNotFoundError:
            _write_encoded_json(self.config_path, new)
            return
        stored = self._parse_config(text)
        ignored = set(volatile)
        diffs = [d for d in _diff(stored, new, "") if not _is_volatile(d[0], ignored)]
        if diffs:
            shown = "; ".join(
                f"{key}: stored {_short(a)}, given {_short(b)}" for key, a, b in diffs[:10]
            )
            more = f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else ""
            raise ConfigMismatchError(
                f"{self.out_dir} holds a different sweep: its config.json differs at keys "
                f"{[d[0] for d in diffs]} ({shown}{more}). Resuming with a changed config is "
                "refused; use a new output folder, or list keys that may change in `volatile`."
            )

    # ---- runs

    def finished(self) -> dict[str, dict]:
        """The finished runs, ``{run_id: record}`` in the order recorded.

        Each record is as given to :meth:`record` plus its ``run_id`` and ``trajectory`` (the
        npz path relative to the folder, or None), non-finite floats decoded. A torn last line
        is ignored.

        Raises:
            ValueError: if a line before the last is not a JSON object with a string
                ``run_id``, or a run id appears twice.
        """
        self._refresh()
        return copy.deepcopy(self._records)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.runs_path)
        except FileNotFoundError:
            self._records, self._good_end, self._stamp = {}, 0, None
            return
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return
        data = self.runs_path.read_bytes()
        self._records, self._good_end = self._parse_runs(data)
        self._stamp = stamp

    def _parse_runs(self, data: bytes) -> tuple[dict[str, dict], int]:
        records: dict[str, dict] = {}
        good_end = 0
        pos = 0
        lineno = 0
        while pos < len(data):
            lineno += 1
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            line = data[pos:end]
            if nl < 0:  # no trailing newline: torn by a kill, whatever it holds
                break
            if line.strip() == b"":
                pos = end
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if data[end:].strip() == b"":  # the last line: torn
                    break
                raise ValueError(
                    f"{self.runs_path}, line {lineno}: invalid JSON in the middle of the file "
                    f"({e}); the file is corrupt beyond a torn last line, repair it by hand"
                ) from None
            if not isinstance(rec, dict) or not isinstance(rec.get("run_id"), str):
                raise ValueError(
                    f"{self.runs_path}, line {lineno}: not a JSON object with a string 'run_id'"
                )
            rid = rec["run_id"]
            if rid in records:
                raise ValueError(
                    f"{self.runs_path}, line {lineno}: run {rid!r} is recorded twice "
                    "(two processes wrote this folder?)"
                )
            records[rid] = _decode(rec)
            pos = good_end = end
        return records, good_end

    def record(
        self,
        run_id: str,
        record: dict,
        trajectory: dict[str, Any] | None = None,
    ) -> None:
        """Record a finished run: its trajectory npz first, then one line in ``runs.jsonl``.

        Arguments:
            run_id: the run's id, e.g. from :func:`run_id`; characters ``[A-Za-z0-9_.=+~-]``.
            record: its settings, status, final metrics...: a JSON-able dict (NumPy values
                allowed; non-finite floats are stored as described in the module docstring),
                without the keys ``run_id`` and ``trajectory``, which the store adds.
            trajectory: arrays of metrics over steps, saved as ``trajectories/<run_id>.npz``;
                or None.

        Raises:
            ValueError: if ``run_id`` is already recorded (a finished run is never redone).
        """
        _check_name(run_id, "run_id")
        if not isinstance(record, dict):
            raise TypeError(f"record must be a dict, got {type(record).__name__}")
        for reserved in ("run_id", "trajectory"):
            if reserved in record:
                raise ValueError(f"record must not hold the key {reserved!r}; the store adds it")
        self._refresh()
        if run_id in self._records:
            raise ValueError(f"run {run_id!r} is already recorded in {self.runs_path}")
        rel = None if trajectory is None else f"trajectories/{run_id}.npz"
        full = {"run_id": run_id, **_encode(record, "record"), "trajectory": rel}
        line = (json.dumps(full, allow_nan=False, separators=(",", ":")) + "\n").encode()
        if trajectory is not None:
            if not isinstance(trajectory, dict):
                raise TypeError(f"trajectory must be a dict or None, got {type(trajectory)}")
            self.trajectory_dir.mkdir(exist_ok=True)
            save_npz_atomic(self.out_dir / rel, **trajectory)
        self._append(line)
        self._records[run_id] = _decode(json.loads(line))

    def _append(self, line: bytes) -> None:
        created = not self.runs_path.exists()
        fd = os.open(self.runs_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size > self._good_end:  # a torn tail from a kill: cut it off first
                os.ftruncate(fd, self._good_end)
                size = self._good_end
            written = os.write(fd, line)
            if written != len(line):  # disk full: leave no partial line behind
                os.ftruncate(fd, size)
                raise OSError(f"short write to {self.runs_path}: {written} of {len(line)} bytes")
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.out_dir)
        self._good_end = st.st_size
        self._stamp = (st.st_size, st.st_mtime_ns, st.st_ino)

    def load_trajectory(self, run_id: str) -> dict[str, np.ndarray]:
        """The arrays saved with run ``run_id``."""
        _check_name(run_id, "run_id")
        path = self.trajectory_dir / f"{run_id}.npz"
        if not path.exists():
            raise FileNotFoundError(f"no trajectory for run {run_id!r} at {path}")
        return _load_npz(path)

    # ---- checkpoints

    def checkpoint_path(self, name: str) -> Path:
        """Where checkpoint ``name`` lives: ``checkpoints/<name>.npz``."""
        return self.checkpoint_dir / f"{_check_name(name, 'name')}.npz"

    def save_checkpoint(self, name: str, /, **arrays: Any) -> Path:
        """Atomically save in-progress state as ``checkpoints/<name>.npz``; returns its path."""
        path = self.checkpoint_path(name)
        self.checkpoint_dir.mkdir(exist_ok=True)
        return save_npz_atomic(path, **arrays)

    def load_checkpoint(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of checkpoint ``name``, or None if there is none."""
        path = self.checkpoint_path(name)
        try:
            return _load_npz(path)
        except FileNotFoundError:
            return None

    def clear_checkpoint(self, name: str) -> None:
        """Delete checkpoint ``name`` (nothing happens if there is none)."""
        path = self.checkpoint_path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        _fsync_dir(self.checkpoint_dir)


_ABSENT = "<absent>"


def _diff(a: Any, b: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """Dotted paths where two JSON values differ, recursing into dicts; a missing key is
    shown as ``<absent>``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            path = f"{prefix}.{k}" if prefix else k
            if k not in a or k not in b:
                out.append((path, a.get(k, _ABSENT), b.get(k, _ABSENT)))
            else:
                out.extend(_diff(a[k], b[k], path))
        return out
    # Compare as JSON text: JSON keeps 1, 1.0 and true apart, so the store does too.
    if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
        return [(prefix or "<config>", a, b)]
    return []


def _is_volatile(path: str, volatile: set[str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in volatile for i in range(1, len(parts) + 1))


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
