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

When
    Every ``every`` batches (0: only at the end of a successful fit), and at
    the end of a fit that returned normally; never after ``fit`` raised (a run
    stopped by the non-finite guard keeps its last good periodic checkpoint).
    A checkpoint that falls on the last batch of an epoch is taken after the
    epoch's validation and logging, as "epoch e+1, position 0".

Resume (:func:`check_resume`, :class:`Resume`, :func:`epoch_stream`)
    Weights, optimizer state, metrics, RNG states, step and epoch are
    restored; the batches of the interrupted epoch that were already trained
    are skipped, so the data order is exactly that of an uninterrupted run:
    the training stream is ``data.train`` iterated once per epoch (one new
    shuffle order per iteration, drawn from the dataset's seeded generator),
    and a resumed run first draws (and discards) the orders of the finished
    epochs.  ``progress.jsonl`` loses rows of epochs after the checkpoint (they
    are written again), and the W&B run continues under its id; rows whose
    ``trainer/step`` (``trainer/epoch``) are already in that run's local files
    are not logged again, and the checkpoint's rows that they lack (lost with
    the killed process) are logged first (:class:`RowJournal`), so each step
    appears exactly once.

Test hook
    ``NESTED_RESEARCH_KILL_AT_STEP=<n>`` makes the training process SIGKILL
    itself right after batch ``n`` (after that batch's checkpoint, if one was
    due).  Only the resume tests use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np

from nested_research.train import ConfigError

FORMAT = 1
DIRNAME = "checkpoints"
GROUPS = ("model", "optimizer", "metrics", "extra")
KILL_ENV = "NESTED_RESEARCH_KILL_AT_STEP"
#: W&B rows (the newest) that a checkpoint carries, to re-log what a killed process lost.
ROWS_KEPT = 512
_NAME = re.compile(r"^ckpt-(\d+)$")
_TMP = re.compile(r"^\.tmp-ckpt-\d+-(\d+)$")

#: Config keys that may differ between a run and its resumption (where things are, how loud).
RESUME_MAY_DIFFER = ("trainer.resume", "trainer.verbose", "trainer.checkpoint_every",
                     "trainer.keep_checkpoints", "paths.", "data.data_dir", "logger.dir",
                     "logger.mode", "logger.init_timeout", "logger.finish_timeout")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used (missing, damaged, or of another model/config)."""


# ---------------------------------------------------------------- files
def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, DIRNAME)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


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
        """The tracker rows logged up to this checkpoint (the newest ``ROWS_KEPT``)."""
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
def _variables(model, extra=()) -> dict[str, list]:
    opt = model.optimizer
    return {"model": list(model.variables),
            "optimizer": list(opt.variables) if opt is not None else [],
            "metrics": list(model.metrics_variables),
            "extra": list(extra)}


def _dtype_name(variable) -> str:
    return keras.backend.standardize_dtype(variable.dtype)


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(state: dict | None) -> None:
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
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
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


def _mismatch(ckpt_path: str, group: str, variables: list, specs: list) -> str | None:
    """Why ``specs`` (a checkpoint group) does not fit ``variables``; ``None`` if it does."""
    if len(variables) != len(specs):
        return (f"it holds {len(specs)} {group} variables, this {group} has "
                f"{len(variables)}")
    for i, (v, spec) in enumerate(zip(variables, specs)):
        shape, dtype = list(v.shape), _dtype_name(v)
        if shape != list(spec["shape"]) or dtype != spec["dtype"]:
            return (f"{group} variable {i} ({spec['path']!r}) is {spec['dtype']}"
                    f"{tuple(spec['shape'])} there, {dtype}{tuple(shape)} here "
                    f"({getattr(v, 'path', v.name)!r})")
    return None


def check_model(ckpt: Checkpoint, model) -> None:
    """``CheckpointError`` if the checkpoint's model variables do not fit ``model``."""
    why = _mismatch(ckpt.path, "model", list(model.variables),
                    ckpt.meta["variables"]["model"])
    if why:
        raise CheckpointError(f"trainer.resume={ckpt.run_dir!r}: checkpoint {ckpt.path} is of "
                              f"a different model: {why}")


def _build_metrics(model, data) -> None:
    """Create the compiled metrics' variables (Keras builds them lazily in the first step)."""
    for x, y in (data.val if data.val is not None else data.test).take(1):
        model.compute_metrics(x, y, model(x, training=False))
    model.reset_metrics()


class Resume:
    """Restores a checkpoint into a compiled model (``restore``); tells ``fit`` where to go on."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.epoch, self.position, self.step = ckpt.epoch, ckpt.position, ckpt.step
        self.history = ckpt.history
        self.metrics = None  # running epoch metrics, assigned at the resumed epoch's start

    def restore(self, model, data, extra_variables=()) -> None:
        """Build the optimizer and metrics, then assign every saved value (checked first)."""
        opt = model.optimizer
        if not opt.built:  # as Keras' first apply() would: same scope, same variables
            with keras.name_scope(opt.name, caller=opt):
                opt.build(model.trainable_variables)
        _build_metrics(model, data)
        variables = _variables(model, extra_variables)
        arrays = self.ckpt.arrays()
        specs = self.ckpt.meta["variables"]
        for group in ("model", "optimizer", "extra"):
            why = _mismatch(self.ckpt.path, group, variables[group], specs[group])
            if why:
                raise CheckpointError(f"trainer.resume={self.ckpt.run_dir!r}: checkpoint "
                                      f"{self.ckpt.path} does not fit this run: {why}")
        if specs["metrics"] and not _mismatch(self.ckpt.path, "metrics", variables["metrics"],
                                              specs["metrics"]):
            self.metrics = (variables["metrics"], arrays["metrics"])
        for group in ("model", "optimizer", "extra"):
            for v, value in zip(variables[group], arrays[group]):
                v.assign(value)
        _set_rng_state(self.ckpt.meta.get("rng"))

    def done(self, epochs: int, max_steps: int | None) -> bool:
        """Nothing is left to train (the checkpoint is from the end of the fit)."""
        return self.epoch >= epochs or (max_steps is not None and self.step >= max_steps)


# ---------------------------------------------------------------- data order
def advance_shuffle(dataset, epochs: int) -> None:
    """Draw (and discard) ``epochs`` shuffle orders of ``dataset``, as finished epochs did.

    Each iterator of a ``shuffle(seed=..., reshuffle_each_iteration=True)``
    pipeline takes the next order from the dataset's seeded generator when it
    is created; one element is read so that the draw has certainly happened.
    """
    for _ in range(int(epochs)):
        iterator = iter(dataset)
        next(iterator, None)
        del iterator


def epoch_stream(train, first_epoch: int, epochs: int, skip: int = 0):
    """One ``tf.data`` stream of epochs ``first_epoch .. epochs-1`` of ``train``.

    Every epoch is a fresh iteration of ``train`` (its own shuffle order);
    the first loses its first ``skip`` batches (trained before the checkpoint).
    Fed to ``model.fit`` with ``steps_per_epoch``, Keras keeps one iterator for
    the whole fit, so the orders are drawn once per epoch whatever Keras does
    with iterators.
    """
    import tensorflow as tf

    first = tf.constant(int(first_epoch), tf.int64)
    k = tf.constant(int(skip), tf.int64)

    def one_epoch(epoch):
        return train.skip(tf.where(tf.equal(epoch, first), k, tf.constant(0, tf.int64)))

    return tf.data.Dataset.range(int(first_epoch), int(epochs)).flat_map(one_epoch)


class EpochCut(keras.callbacks.Callback):
    """Ends epoch ``epoch`` after ``batches`` batches (the rest of an interrupted epoch).

    Keras' epochs all have ``steps_per_epoch`` batches; this sets
    ``stop_training`` at the cut (Keras then validates and ends the epoch) and
    clears it again first thing in ``on_epoch_end``, so training goes on.  It
    must be the first callback; a stop that another callback asks for in that
    same batch is kept when it is the step limit (``stop_step``).
    """

    def __init__(self, epoch: int, batches: int, first_step: int, stop_step: int | None):
        super().__init__()
        self.epoch, self.batches = int(epoch), int(batches)
        self.step, self.stop_step = int(first_step), stop_step
        self._current, self._cut = None, False

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self._current == self.epoch and int(batch) + 1 >= self.batches \
                and not self.model.stop_training:
            self.model.stop_training = True
            self._cut = self.stop_step is None or self.step < self.stop_step

    def on_epoch_end(self, epoch, logs=None):
        if self._cut:
            self.model.stop_training = False
            self._cut = False


# ---------------------------------------------------------------- the callback
def _rename(logs: dict) -> dict:
    from nested_research.trainer import rename

    return rename(logs, "train")


class Checkpointer(keras.callbacks.Callback):
    """Writes checkpoints of ``fit`` into ``<run_dir>/checkpoints`` (module docstring).

    ``every``: batches between checkpoints (0: only ``save_final``).  ``meta``:
    facts stored with every checkpoint (config, W&B run).  ``before_save``:
    called first (the tracker's flush, so W&B holds every row up to the step).
    ``resume``: the :class:`Resume` the fit continues from.  ``log_rows``: returns
    the tracker's newest rows (``rows.json``).  ``defer_tail``: a checkpoint due
    in the last ``defer_tail`` batches of an epoch waits for the epoch's end
    (under a ``tf.distribute`` strategy Keras first reads a batch of the stream
    ahead of training, and the distributed input prefetches a few more: a
    resumed epoch shorter than that would draw the next epoch's shuffle order
    early).  Must come after the callbacks that log (progress, W&B) so that a
    checkpoint follows its rows.
    """

    def __init__(self, run_dir: str, every: int, steps_per_epoch: int, keep: int = 2,
                 meta: dict | None = None, before_save=None, resume: Resume | None = None,
                 log_rows=None, defer_tail: int = 0):
        super().__init__()
        self.defer_tail = int(defer_tail)
        self.run_dir, self.every, self.keep = run_dir, int(every), int(keep)
        self.steps_per_epoch = int(steps_per_epoch)
        self.meta = dict(meta or {})
        self.before_save = before_save
        self.log_rows = log_rows
        self.resume = resume
        self.extra_variables = []
        self.history = {k: list(v) for k, v in resume.history.items()} if resume else {}
        self.step = resume.step if resume else 0
        self.epoch = resume.epoch if resume else 0
        self.position = 0
        self.saved = []          # paths written by this fit
        self._last_batch = -1
        self._due_at_epoch_end = False
        kill = os.environ.get(KILL_ENV)
        self._kill_at = int(kill) if kill else None

    # -- hooks
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self._last_batch = epoch, -1
        self.position = 0
        if self.resume is not None and epoch == self.resume.epoch:
            self.position = self.resume.position
            if self.resume.metrics is not None and self.position:  # the epoch's running means
                for v, value in zip(*self.resume.metrics):  # (per replica: summed on read)
                    v.assign(value)

    def on_train_batch_end(self, batch, logs=None):
        n = max(int(batch) - self._last_batch, 1)
        self._last_batch = int(batch)
        self.position += n
        self.step += n
        if self.every and self.step // self.every > (self.step - n) // self.every:
            if self.position >= self.steps_per_epoch - self.defer_tail:
                self._due_at_epoch_end = True  # after validation and the epoch's rows
            else:
                self.save(self.epoch, self.position, with_metrics=True)
        if self._kill_at is not None and self.step >= self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (module docstring)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in _rename(logs).items():
            self.history.setdefault(key, []).append(float(value))
        if self._due_at_epoch_end:
            self._due_at_epoch_end = False
            self.save(epoch + 1, 0)

    # -- saving
    def save_final(self) -> str:
        """The end-of-fit checkpoint (call only when ``fit`` returned normally)."""
        if self.position >= self.steps_per_epoch:
            return self.save(self.epoch + 1, 0)
        return self.save(self.epoch, self.position, final=True)

    def save(self, epoch: int, position: int, with_metrics: bool = False,
             final: bool = False) -> str:
        if self.before_save is not None:
            self.before_save()
        variables = _variables(self.model, self.extra_variables)
        if not with_metrics:
            variables["metrics"] = []
        opt = self.model.optimizer
        meta = dict(self.meta, epoch=int(epoch), position=int(position),
                    steps_per_epoch=self.steps_per_epoch, fit_done=bool(final),
                    iterations=int(keras.ops.convert_to_numpy(opt.iterations)),
                    history=self.history, rng=_rng_state())
        rows = self.log_rows() if self.log_rows is not None else None
        path = write(self.run_dir, self.step, variables, meta, keep=self.keep, rows=rows)
        self.saved.append(path)
        return path


# ---------------------------------------------------------------- resume checks
def _flatten(tree, prefix="") -> dict:
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    out[prefix[:-1]] = tree
    return out


def config_diff(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """``(key, saved, current)`` for every differing key not in ``RESUME_MAY_DIFFER``."""
    a, b = _flatten(saved or {}), _flatten(current or {})
    missing = "<not set>"
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUME_MAY_DIFFER):
            continue
        if a.get(key, missing) != b.get(key, missing):
            out.append((key, a.get(key, missing), b.get(key, missing)))
    return out


def check_resume(resume: str, config: dict) -> Checkpoint:
    """The checkpoint ``trainer.resume=<resume>`` continues from; ``CheckpointError`` if none fits.

    Reads only: nothing on disk changes, whatever the outcome.
    """
    run_dir = os.path.abspath(os.path.expanduser(str(resume)))
    param = f"trainer.resume={str(resume)!r}"
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"{param}: no such directory; give the run directory of the run "
                              f"to continue (the folder that holds its checkpoints/)")
    if os.path.exists(os.path.join(run_dir, "results.json")):
        raise CheckpointError(f"{param}: that run already finished ({run_dir}/results.json "
                              f"exists); nothing to resume. Start a new run without "
                              f"trainer.resume")
    found = list_checkpoints(run_dir)
    ckpt = latest(run_dir)
    if ckpt is None:
        what = (f"only damaged ones ({', '.join(os.path.basename(p) for _, p in found)})"
                if found else "none")
        raise CheckpointError(
            f"{param}: no complete checkpoint in {checkpoints_dir(run_dir)} ({what}); the run "
            f"stopped before its first checkpoint (trainer.checkpoint_every) or is not a "
            f"training run. Start it again without trainer.resume")
    diff = config_diff(ckpt.meta.get("config") or {}, config)
    if diff:
        model_keys = [d for d in diff if d[0].split(".")[0] in ("model", "data")]
        kind = "a different model" if model_keys else "a different configuration"
        shown = (model_keys or diff)[:3]
        others = [k for k, _, _ in diff if k not in {s[0] for s in shown}]
        details = "; ".join(f"{k} is {s!r} there, {c!r} here" for k, s, c in shown)
        more = f" (and {len(others)} more: {', '.join(others[:8])})" if others else ""
        raise CheckpointError(
            f"{param}: checkpoint {ckpt.path} was written by {kind}: {details}{more}. A run "
            f"resumes with its own settings: repeat its overrides "
            f"({os.path.join(run_dir, '.hydra', 'overrides.yaml')}) and add trainer.resume; only "
            f"trainer.verbose/checkpoint_every/keep_checkpoints, paths.*, data.data_dir and "
            f"logger.dir/mode may change")
    return ckpt


def trim_progress(path: str, epochs_done: int) -> None:
    """Keep the rows of ``progress.jsonl`` for epochs ``<= epochs_done`` (atomically)."""
    if not os.path.exists(path):
        return
    with open(path) as fh:
        lines = fh.readlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by the crash
            continue
        if isinstance(row, dict) and int(row.get("epoch", 0)) <= epochs_done:
            keep.append(json.dumps(row) + "\n")
    if keep == lines:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    _write_file(tmp, [line.encode() for line in keep])
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


# ---------------------------------------------------------------- W&B continuity
def logged_extent(wandb_dir: str, run_id: str) -> tuple[int, int]:
    """The largest ``trainer/step`` (step rows) and ``trainer/epoch`` (epoch rows) that the
    local files of W&B run ``run_id`` under ``wandb_dir`` hold (``-1`` when none)."""
    import glob

    from nested_research.wandb_reader import _key, iter_records

    max_step = max_epoch = -1
    pattern = os.path.join(glob.escape(wandb_dir), "wandb", f"*-{glob.escape(run_id)}",
                           f"run-{glob.escape(run_id)}.wandb")
    for log in glob.glob(pattern):
        try:
            for record in iter_records(log):
                if record.WhichOneof("record_type") != "history":
                    continue
                row = {"/".join(_key(item)): item.value_json for item in record.history.item}
                if "trainer/epoch" in row:
                    max_epoch = max(max_epoch, int(float(json.loads(row["trainer/epoch"]))))
                elif "trainer/step" in row:
                    max_step = max(max_step, int(float(json.loads(row["trainer/step"]))))
        except (OSError, ValueError) as err:  # a damaged tail: what was read counts
            warnings.warn(f"W&B file {log}: read up to a damaged record ({err})", stacklevel=2)
    return max_step, max_epoch


class RowJournal:
    """Wraps a tracker's ``log``: drops rows the W&B run already holds, remembers the rest.

    ``max_step``/``max_epoch``: the largest ``trainer/step`` (step rows) and
    ``trainer/epoch`` (epoch rows) already in the run's files (``logged_extent``;
    ``-1`` for a new run).  The newest ``keep`` rows passed on are kept
    (``rows``): checkpoints store them, because W&B writes its files
    asynchronously and a killed process loses the last rows it logged; a resumed
    run logs the stored rows that its W&B files lack before it trains.
    """

    def __init__(self, log, max_step: int = -1, max_epoch: int = -1, keep: int = ROWS_KEPT):
        import collections

        self.log, self.max_step, self.max_epoch = log, int(max_step), int(max_epoch)
        self.rows = collections.deque(maxlen=int(keep))
        self.dropped = 0

    def __call__(self, row: dict) -> None:
        if "trainer/epoch" in row:
            seen = row["trainer/epoch"] <= self.max_epoch
        else:
            seen = row.get("trainer/step", self.max_step + 1) <= self.max_step
        if seen:
            self.dropped += 1
            return
        self.rows.append(dict(row))
        self.log(row)

    def __getattr__(self, name):  # flush/close of an AsyncLog underneath
        if name == "log":
            raise AttributeError(name)
        return getattr(self.log, name)
