"""Checkpoints of a training run and resuming it (``trainer.checkpoint_every``, ``trainer.resume``).

What a checkpoint holds
    ``<run dir>/checkpoints/ckpt-<step>/`` (``step``: batches trained, the W&B
    ``trainer/step``), three files:

    ``state.bin``
        the raw bytes of every variable, in a fixed order, group by group:
        ``model`` (``model.variables``: weights and the state of every
        ``SeedGenerator`` the model owns, e.g. dropout), ``optimizer``
        (``model.optimizer.variables``: ``iterations``, the learning-rate
        variable, every memory tier, second moment, accumulator, per-variable
        update counter and statistic; a ``LossScaleOptimizer``'s scale and
        counter), ``metrics`` (the running train loss/accuracy of the epoch, for
        a checkpoint taken inside an epoch) and ``extra`` (the non-finite
        guard's counters).
    ``rows.json``
        the newest W&B rows the tracker logged (re-logged on resume if the
        run's W&B files lack them: W&B writes asynchronously).
    ``meta.json``
        step, epoch, position in the epoch, ``iterations``, the per-epoch
        history so far, Python's and NumPy's global RNG states, the resolved
        run config, the W&B run id and directory, and for every variable its
        path, shape, dtype and byte range, plus the SHA-256 of ``state.bin``.

    Variables are matched by position and checked by shape and dtype, not by
    path (Keras' variable paths change between versions and build contexts;
    the order of ``model.variables`` and ``optimizer.variables`` does not).

Atomic writes
    A checkpoint is written into ``checkpoints/.tmp-ckpt-<step>-<pid>/``
    (files fsynced, then the folder), then renamed to ``ckpt-<step>`` with
    ``os.replace`` (atomic on POSIX) and the parent folder fsynced; only then
    are checkpoints beyond the newest ``keep`` deleted.  A crash at any point
    leaves the previous checkpoints complete; a left-over ``.tmp-*`` folder
    (its writer dead) is ignored and removed by the next save.  Loading
    verifies the size and SHA-256 of ``state.bin`` and falls back to the next
    older checkpoint (with a warning) when the newest is damaged.

Related modules: ``checkpoint_callback.py`` (the callback that writes checkpoints
during ``fit``), ``resume.py`` (checking and restoring one for
``trainer.resume``), ``tracking/rows.py`` (the W&B rows a checkpoint carries).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np

from nested_research.core.errors import ConfigError
from nested_research.core.files import fsync_dir

FORMAT = 1
DIRNAME = "checkpoints"
GROUPS = ("model", "optimizer", "metrics", "extra")
#: Test hook of ``checkpointer.Checkpointer``: SIGKILL right after this batch.
KILL_ENV = "NESTED_RESEARCH_KILL_AT_STEP"
_NAME = re.compile(r"^ckpt-(\d+)$")
_TMP = re.compile(r"^\.tmp-ckpt-\d+-(\d+)$")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used (missing, damaged, or of another model/config)."""


# ---------------------------------------------------------------- files
def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, DIRNAME)


def _write_file(path: str, chunks) -> tuple[int, str]:
    """Write ``chunks`` (bytes-likes) to ``path``, fsync; return (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as fh:
        for chunk in chunks:
            chunk = memoryview(chunk).cast("B")
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return size, digest.hexdigest()


def _np_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16, float8_*: NumPy extension types
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


@dataclass
class Checkpoint:
    """A complete, verified checkpoint on disk."""

    path: str
    meta: dict
    _arrays: dict | None = field(default=None, repr=False)

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    @property
    def position(self) -> int:
        return int(self.meta["position"])

    @property
    def history(self) -> dict:
        return {k: list(v) for k, v in (self.meta.get("history") or {}).items()}

    @property
    def run_dir(self) -> str:
        return os.path.dirname(os.path.dirname(self.path))

    def rows(self) -> list[dict]:
        """The tracker rows logged up to this checkpoint (``tracking.rows.RowJournal``)."""
        with open(os.path.join(self.path, "rows.json")) as fh:
            return json.load(fh)

    def arrays(self) -> dict[str, list[np.ndarray]]:
        """Every variable's value, by group, read from ``state.bin`` (verified on load)."""
        if self._arrays is None:
            with open(os.path.join(self.path, "state.bin"), "rb") as fh:
                buf = fh.read()
            if hashlib.sha256(buf).hexdigest() != self.meta["sha256"]:
                raise CheckpointError(f"checkpoint {self.path}: state.bin changed since it was "
                                      "verified (SHA-256 mismatch)")
            out = {}
            for group in GROUPS:
                out[group] = [
                    np.frombuffer(buf, _np_dtype(spec["dtype"]),
                                  count=int(np.prod(spec["shape"], dtype=np.int64)),
                                  offset=spec["offset"]).reshape(spec["shape"]).copy()
                    for spec in self.meta["variables"].get(group, [])]
            self._arrays = out
        return self._arrays


def load(path: str) -> Checkpoint:
    """Read and verify the checkpoint folder ``path``; ``CheckpointError`` says what is wrong."""
    meta_path, state_path = os.path.join(path, "meta.json"), os.path.join(path, "state.bin")
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: meta.json is missing or unreadable "
                              f"({err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {meta.get('format')!r}, this version "
                              f"reads format {FORMAT}")
    try:
        size = os.path.getsize(state_path)
    except OSError as err:
        raise CheckpointError(f"checkpoint {path}: state.bin is missing ({err})") from err
    if size != meta.get("nbytes"):
        raise CheckpointError(f"checkpoint {path}: state.bin has {size} bytes, meta.json "
                              f"says {meta.get('nbytes')} (truncated or damaged)")
    digest = hashlib.sha256()
    with open(state_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path}: state.bin fails its SHA-256 check (damaged)")
    try:
        with open(os.path.join(path, "rows.json"), "rb") as fh:
            rows_ok = hashlib.sha256(fh.read()).hexdigest() == meta.get("rows_sha256")
    except OSError:
        rows_ok = False
    if not rows_ok:
        raise CheckpointError(f"checkpoint {path}: rows.json is missing or fails its SHA-256 "
                              "check (damaged)")
    return Checkpoint(path=path, meta=meta)


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every complete-by-name checkpoint folder, newest first."""
    root = checkpoints_dir(run_dir)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(root, n)) for n in names
             if (m := _NAME.match(n)) and os.path.isdir(os.path.join(root, n))]
    return sorted(found, reverse=True)


def latest(run_dir: str) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged newer ones are skipped with a warning."""
    for _, path in list_checkpoints(run_dir):
        try:
            return load(path)
        except CheckpointError as err:
            warnings.warn(f"{err}; using an older checkpoint", stacklevel=2)
    return None


# ---------------------------------------------------------------- state
def state_variables(model, extra=()) -> dict[str, list]:
    """The variables a checkpoint holds, by group (``GROUPS``); ``extra``: the guard's."""
    opt = model.optimizer
    return {"model": list(model.variables),
            "optimizer": list(opt.variables) if opt is not None else [],
            "metrics": list(model.metrics_variables),
            "extra": list(extra)}


def _dtype_name(variable) -> str:
    return keras.backend.standardize_dtype(variable.dtype)


def rng_state() -> dict:
    """Python's and NumPy's global RNG states, as JSON-able lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state: dict | None) -> None:
    """Restore what :func:`rng_state` returned (nothing for ``None``)."""
    if not state:
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))


def write(run_dir: str, step: int, variables: dict[str, list], meta: dict,
          keep: int = 2, rows: list | None = None) -> str:
    """Write ``variables`` (by group) and ``meta`` as checkpoint ``step``, atomically.

    Returns the checkpoint's path.  An existing checkpoint of the same step is
    kept as it is (same step, same state).  Older checkpoints beyond the newest
    ``keep`` and dead writers' temporary folders are removed afterwards.
    """
    root = checkpoints_dir(run_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"ckpt-{step:09d}")
    if os.path.isdir(final):
        return final
    tmp = os.path.join(root, f".tmp-ckpt-{step:09d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        specs, values, offset = {}, [], 0
        for group in GROUPS:
            specs[group] = []
            for v in variables.get(group, []):
                value = np.array(keras.ops.convert_to_numpy(v), order="C", copy=True)
                # (a Keras variable's path; a backend variable has only a name)
                specs[group].append({"path": getattr(v, "path", None) or v.name,
                                     "shape": list(value.shape), "dtype": str(value.dtype),
                                     "offset": offset})
                values.append(value)
                offset += value.nbytes
        nbytes, sha = _write_file(os.path.join(tmp, "state.bin"),
                                  (v.reshape(-1).view(np.uint8) for v in values))
        _, rows_sha = _write_file(os.path.join(tmp, "rows.json"),
                                  [json.dumps(list(rows or [])).encode()])
        meta = dict(meta, format=FORMAT, step=int(step), variables=specs, nbytes=nbytes,
                    sha256=sha, rows_sha256=rows_sha,
                    written_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_file(os.path.join(tmp, "meta.json"), [json.dumps(meta, indent=1).encode()])
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def _prune(root: str, keep: int) -> None:
    run_dir = os.path.dirname(root)
    for _, path in list_checkpoints(run_dir)[max(int(keep), 1):]:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(root):
        m = _TMP.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def mismatch(group: str, variables: list, specs: list) -> str | None:
    """Why ``specs`` (a checkpoint group) does not fit ``variables``; ``None`` if it does."""
    if len(variables) != len(specs):
        return (f"it holds {len(specs)} {group} variables, this {group} has "
                f"{len(variables)}")
    for i, (v, spec) in enumerate(zip(variables, specs)):
        shape, dtype = list(v.shape), _dtype_name(v)
        if shape != list(spec["shape"]) or dtype != spec["dtype"]:
            return (f"{group} variable {i} ({spec['path']!r}) is {spec['dtype']}"
                    f"{tuple(spec['shape'])} there, {dtype}{tuple(shape)} here "
                    f"({getattr(v, 'path', v.name)!r})")  # (as in write)
    return None
