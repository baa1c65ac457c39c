"""Shared test setup: quiet TensorFlow, a fresh Keras session per test, and under
pytest-xdist (the default: ``-n auto`` in pyproject.toml) each worker's TensorFlow thread pools
sized to its share of the cores (``nested_research.studies.processes.worker_env``): workers with pools as
large as the machine take turns on its cores."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from nested_research.studies.processes import worker_env  # noqa: E402  (imports no TensorFlow)

    os.environ.update(worker_env(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import gc  # noqa: E402

import nested_research  # noqa: E402,F401  (TensorFlow's start-up lines held to the level: tf_log)
import keras  # noqa: E402
import pytest  # noqa: E402

# TensorFlow's and Keras' own objects live as long as the session: out of the collector's way
gc.freeze()


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory):
    """One TFDS data dir for the session, as ``NESTED_RESEARCH_DATA_DIR`` (the environment's,
    if it names one): the embedded datasets are prepared into it once, on first use.  (Under
    this name for session fixtures: some modules override ``data_dir``.)"""
    previous = os.environ.get("NESTED_RESEARCH_DATA_DIR")
    path = previous or str(tmp_path_factory.mktemp("data_dir"))
    os.environ["NESTED_RESEARCH_DATA_DIR"] = path
    yield path
    if previous is None:
        os.environ.pop("NESTED_RESEARCH_DATA_DIR", None)


@pytest.fixture(scope="session")
def data_dir(session_data_dir):
    """The session's TFDS data dir (``session_data_dir``)."""
    return session_data_dir


def prepare_digits(data_dir: str) -> str:
    """``data_dir`` with the digits dataset prepared."""
    from nested_research.data import load_splits

    load_splits("sklearn_digits", data_dir, batch_size=8, seed=0)
    return data_dir


@pytest.fixture(scope="session")
def digits_prepared(session_data_dir):
    """The session's data dir with the digits dataset prepared: for work started in other
    processes while tests of this one may prepare it (tests/early.py)."""
    return prepare_digits(session_data_dir)


@pytest.fixture(scope="session", autouse=True)
def early_session(request, tmp_path_factory, session_data_dir):
    """The selected test modules' ``session_jobs``, one after the other in a thread from the
    session's first test on (tests/early.py); a test reads its job with ``result(name)``.
    Under pytest-xdist a worker does not know which modules it will run, so each job runs in
    the test that reads it (the other workers keep the other cores busy)."""
    from early import Early, session_jobs

    jobs = Early(session_jobs(request, tmp_path_factory, session_data_dir),
                 lazy=bool(os.environ.get("PYTEST_XDIST_WORKER")))
    yield jobs
    jobs.close()


_TESTS_SINCE_COLLECTION = [0]
#: Tests between full garbage collections.  Each collection is followed by ``gc.freeze()``:
#: what survived it (TensorFlow's and Keras' caches and registries, modules imported by
#: earlier tests) is long-lived, and a collection scans only what is not frozen.  Without
#: that, the live heap grows past 10^6 objects over the suite and every full collection
#: (Python's own, and ``keras.backend.clear_session()``'s default in tests and in
#: ``nested_research.studies.runner``) takes about a second.
COLLECT_EVERY = 10


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.backend.clear_session(free_memory=False)
    _TESTS_SINCE_COLLECTION[0] += 1
    if _TESTS_SINCE_COLLECTION[0] >= COLLECT_EVERY:
        _TESTS_SINCE_COLLECTION[0] = 0
        gc.collect()
        gc.freeze()
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")
