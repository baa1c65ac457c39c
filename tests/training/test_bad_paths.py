"""Missing or corrupt TFDS data directories and unwritable output directories.

Every fault gives one clear message that names the parameter, the path and
what is wrong, and leaves the disk as it was: the damaged data folder is not
repaired, deleted or regenerated, and no run directory or ``wandb/`` folder is
created.  Faults are injected into copies of freshly prepared data: our own
``sklearn_digits`` and a standard ``mnist`` folder (written by a small stand-in
builder with mnist's features and version, then renamed, so that the real TFDS
``mnist`` builder reads it offline).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hydra import compose, initialize_config_dir

from nested_research.data import (DataDirError, DatasetCorruptError, DatasetNotFoundError,
                                  check_data_dir, load_splits)
from nested_research.data._tfds_compat import LocalGeneratorBuilder
from nested_research.train import ConfigError, run

from inprocess import cli_in_process

from repo import ROOT
CONF = ROOT / "conf"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
DIGITS = "sklearn_digits/1.0.0"
MNIST = "mnist/3.0.1"


class FakeMnistForTests(LocalGeneratorBuilder):
    """mnist's features and version with 64 + 16 random images (written offline)."""

    VERSION = tfds.core.Version("3.0.1")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(64, 0), "test": self._generate_examples(16, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield i, {"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8),
                      "label": i % 10}


def _fake_mnist(data_dir: pathlib.Path, scratch: pathlib.Path) -> None:
    """A prepared ``mnist/3.0.1`` folder in ``data_dir`` (renamed from the stand-in)."""
    builder = tfds.builder("fake_mnist_for_tests", data_dir=str(scratch))
    builder.download_and_prepare()
    target = data_dir / MNIST
    target.parent.mkdir(parents=True)
    shutil.move(builder.data_dir, target)
    for path in target.iterdir():
        if path.name.startswith("fake_mnist_for_tests-"):
            path.rename(target / path.name.replace("fake_mnist_for_tests-", "mnist-"))
    info_path = target / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["name"] = "mnist"
    info_path.write_text(json.dumps(info))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """``{"digits": data_dir, "mnist": data_dir}``, prepared once; tests copy them."""
    base = tmp_path_factory.mktemp("pristine")
    digits = base / "digits_data"
    tfds.builder("sklearn_digits", data_dir=str(digits)).download_and_prepare()
    mnist = base / "mnist_data"
    _fake_mnist(mnist, base / "scratch")
    return {"digits": digits, "mnist": mnist}


def copy_data(pristine, which, tmp_path) -> pathlib.Path:
    target = tmp_path / f"{which}_data"
    shutil.copytree(pristine[which], target)
    return target


def snapshot(root) -> dict:
    """``{relative path: (type, size, mtime_ns, mode)}`` of everything below ``root``, root too."""
    root = os.fspath(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            full = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(full)
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            out[os.path.relpath(full, root)] = (stat.S_IFMT(st.st_mode), size, st.st_mtime_ns,
                                                stat.S_IMODE(st.st_mode))
    return out


# ---------------------------------------------------------------- faults
def _shard(folder: pathlib.Path, split: str = "train") -> pathlib.Path:
    (path,) = folder.glob(f"*-{split}.tfrecord-*")
    return path


def _truncate(path: pathlib.Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


def _garble(path: pathlib.Path) -> None:
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def _flip_byte(path: pathlib.Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _empty_folder(folder: pathlib.Path) -> None:
    for path in folder.iterdir():
        path.unlink()


# name -> (fault applied to the dataset's version folder, words the message must contain)
FAULTS = {
    "shard_truncated_half": (lambda f: _truncate(_shard(f), _shard(f).stat().st_size // 2),
                             "truncated"),
    "shard_truncated_one_byte": (lambda f: _truncate(_shard(f), _shard(f).stat().st_size - 1),
                                 "truncated"),
    "shard_garbage_same_size": (lambda f: _garble(_shard(f)), "corrupted record header"),
    "shard_garbage_appended": (lambda f: _shard(f).open("ab").write(b"garbage!" * 3),
                               "record header"),
    "shard_first_record_flipped": (lambda f: _flip_byte(_shard(f), 20),
                                   "corrupted record data"),
    "shard_empty": (lambda f: _truncate(_shard(f), 0), "truncated: it holds 0 of the"),
    "shard_missing": (lambda f: _shard(f).unlink(), "is missing"),
    "test_shard_missing": (lambda f: _shard(f, "test").unlink(), "is missing"),
    "dataset_info_missing": (lambda f: (f / "dataset_info.json").unlink(),
                             "dataset_info.json is missing"),
    "dataset_info_garbage": (lambda f: (f / "dataset_info.json").write_bytes(b"\x00\xff\x13 {"),
                             "dataset_info.json is not valid JSON"),
    "dataset_info_empty": (lambda f: (f / "dataset_info.json").write_text(""),
                           "dataset_info.json is not valid JSON"),
    "dataset_info_cut": (lambda f: (f / "dataset_info.json").write_text(
        (f / "dataset_info.json").read_text()[:200]), "dataset_info.json is not valid JSON"),
    "dataset_info_not_tfds": (lambda f: (f / "dataset_info.json").write_text("{}"),
                              "dataset_info.json cannot be used"),
    "features_missing": (lambda f: (f / "features.json").unlink(), "features.json is missing"),
    "features_garbage": (lambda f: (f / "features.json").write_text("{\"type\": "),
                         "features.json is not valid JSON"),
    "version_folder_empty": (_empty_folder, "dataset_info.json is missing"),
}
MNIST_FAULTS = ["shard_truncated_half", "shard_garbage_same_size", "shard_missing",
                "dataset_info_garbage", "features_missing", "version_folder_empty"]
CASES = [("digits", f) for f in FAULTS] + [("mnist", f) for f in MNIST_FAULTS]


def _assert_corrupt_message(msg: str, which: str, data_dir, words: str) -> None:
    name = {"digits": "sklearn_digits", "mnist": "mnist"}[which]
    assert f"TFDS dataset {name!r} in data_dir {str(data_dir)!r} is corrupt" in msg, msg
    assert words in msg, msg
    assert "Nothing was changed; delete the folder" in msg, msg
    assert str(data_dir) in msg
    if which == "mnist":
        assert f"tfds build mnist --data_dir {data_dir}" in msg, msg
    else:
        assert "generated again on the next run" in msg, msg


@pytest.mark.parametrize("which,fault", CASES, ids=[f"{w}-{f}" for w, f in CASES])
def test_corrupt_data_dir_is_refused_and_left_alone(which, fault, pristine, tmp_path):
    data_dir = copy_data(pristine, which, tmp_path)
    apply, words = FAULTS[fault]
    apply(data_dir / (DIGITS if which == "digits" else MNIST))
    name = {"digits": "sklearn_digits", "mnist": "mnist"}[which]
    before = snapshot(tmp_path)
    with pytest.raises(DatasetCorruptError) as err:
        load_splits(name, str(data_dir), batch_size=8, seed=0)
    _assert_corrupt_message(str(err.value), which, data_dir, words)
    assert isinstance(err.value, DataDirError) and str(data_dir / name) in err.value.folder
    with pytest.raises(DatasetCorruptError):
        check_data_dir(name, str(data_dir))
    assert snapshot(tmp_path) == before


def _cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("which,fault", CASES, ids=[f"{w}-{f}" for w, f in CASES])
def test_run_stops_on_corrupt_data_before_writing(which, fault, pristine, tmp_path):
    """``train.run`` (W&B logger on): one ConfigError naming data.data_dir; no run dir, no wandb."""
    data_dir = copy_data(pristine, which, tmp_path)
    FAULTS[fault][0](data_dir / (DIGITS if which == "digits" else MNIST))
    out = tmp_path / "out"
    cfg = _cfg(f"data={'digits' if which == 'digits' else 'mnist'}", f"paths.data_dir={data_dir}",
               f"paths.output_dir={out}", "trainer.max_steps=2")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        run(cfg, str(out / "runs" / "r1"))
    msg = str(err.value)
    assert msg.startswith(f"data.data_dir={str(data_dir)!r} "), msg
    _assert_corrupt_message(msg, which, data_dir, FAULTS[fault][1])
    assert snapshot(tmp_path) == before
    assert not out.exists()


def test_intact_copies_pass_and_size_metadata_alone_is_not_corruption(pristine, tmp_path):
    """No false alarm: intact folders load; a wrong numBytes with intact records is accepted."""
    for which, name in (("digits", "sklearn_digits"), ("mnist", "mnist")):
        data_dir = copy_data(pristine, which, tmp_path)
        check_data_dir(name, str(data_dir))
        bundle = load_splits(name, str(data_dir), batch_size=8, seed=0)
        assert next(iter(bundle.train))[0].shape[0] == 8
    info_path = tmp_path / "digits_data" / DIGITS / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["splits"][0]["numBytes"] = str(int(info["splits"][0]["numBytes"]) + 1000)
    info_path.write_text(json.dumps(info))
    check_data_dir("sklearn_digits", str(tmp_path / "digits_data"))
    # ... but a wrong record count is not
    info["splits"][0]["shardLengths"] = [str(int(info["splits"][0]["shardLengths"][0]) + 1)]
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetCorruptError, match="is truncated: it holds 1437 of the 1438 "
                                                   "records that dataset_info.json lists"):
        check_data_dir("sklearn_digits", str(tmp_path / "digits_data"))


# ---------------------------------------------------------------- missing / unusable data_dir
@pytest.mark.parametrize("make", ["absent", "empty"])
def test_standard_dataset_not_prepared(make, tmp_path):
    data_dir = tmp_path / "tfds"
    if make == "empty":
        data_dir.mkdir()
    detail = ("the data_dir does not exist" if make == "absent"
              else "it has no folder 'mnist/3.0.1'")
    before = snapshot(tmp_path)
    for call in (lambda: check_data_dir("mnist", str(data_dir)),
                 lambda: load_splits("mnist", str(data_dir), batch_size=8, seed=0)):
        with pytest.raises(DatasetNotFoundError) as err:
            call()
        msg = str(err.value)
        assert f"TFDS dataset 'mnist' is not prepared in data_dir {str(data_dir)!r}" in msg
        assert detail in msg and f"tfds build mnist --data_dir {data_dir}" in msg, msg
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        run(_cfg("data=mnist", f"paths.data_dir={data_dir}", f"paths.output_dir={out}"),
            str(out / "r"))
    assert str(err.value).startswith(f"data.data_dir={str(data_dir)!r} (data=mnist): TFDS "
                                     f"dataset 'mnist' is not prepared"), err.value
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("data", ["digits", "mnist"])
@pytest.mark.parametrize("where", ["is_file", "under_file"])
def test_data_dir_that_is_a_file(data, where, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    data_dir = blocker if where == "is_file" else blocker / "tfds"
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        run(_cfg(f"data={data}", f"paths.data_dir={data_dir}", f"paths.output_dir={out}"),
            str(out / "r"))
    msg = str(err.value)
    assert msg.startswith(f"data.data_dir={str(data_dir)!r}"), msg
    assert "a file, not a directory" in msg and str(blocker) in msg, msg
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only directories")
def test_embedded_dataset_cannot_be_generated_into_read_only_dir(tmp_path):
    data_dir = tmp_path / "ro"
    data_dir.mkdir()
    data_dir.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        with pytest.raises(DataDirError, match="is not writable"):
            load_splits("sklearn_digits", str(data_dir), batch_size=8, seed=0)
        assert snapshot(tmp_path) == before
    finally:
        data_dir.chmod(0o755)


# ---------------------------------------------------------------- unwritable output directory
def _output_cases(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    return {
        "run_dir_under_file": (blocker / "runs" / "r1", "hydra.run.dir", "which is a file"),
        "run_dir_is_file": (blocker, "hydra.run.dir", "is a file, not a directory"),
    }


@pytest.mark.parametrize("case", ["run_dir_under_file", "run_dir_is_file"])
def test_run_refuses_unwritable_output_dir(case, pristine, tmp_path):
    data_dir = copy_data(pristine, "digits", tmp_path)
    path, param, words = _output_cases(tmp_path)[case]
    cfg = _cfg(f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'out'}")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        run(cfg, str(path))
    msg = str(err.value)
    assert msg.startswith(f"{param}={str(path)!r}"), msg
    assert words in msg and "paths.output_dir=<dir>" in msg, msg
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("param", ["WANDB_DIR", "logger.dir"])
def test_run_refuses_unwritable_wandb_dir(param, pristine, tmp_path, monkeypatch):
    data_dir = copy_data(pristine, "digits", tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    wandb_dir = blocker / "wandb_here"
    overrides = [f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'out'}"]
    if param == "WANDB_DIR":
        monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    else:
        monkeypatch.delenv("WANDB_DIR", raising=False)
        overrides.append(f"logger.dir={wandb_dir}")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        run(_cfg(*overrides), str(tmp_path / "out" / "r"))
    assert str(err.value).startswith(f"{param}={str(wandb_dir)!r} lies under"), err.value
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only directories")
def test_run_refuses_read_only_output_dir(pristine, tmp_path):
    data_dir = copy_data(pristine, "digits", tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        with pytest.raises(ConfigError, match="is not writable") as err:
            run(_cfg(f"paths.data_dir={data_dir}", f"paths.output_dir={ro}"), str(ro / "runs"))
        assert str(ro) in str(err.value)
        assert snapshot(tmp_path) == before
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------- the command line
# In process (tests/inprocess.py): what is checked is the command's message, exit status and
# files.  The exit status and stderr of a real ``python -m nested_research.train`` process on
# bad input are checked in test_train.py::test_cli_bad_input_short_message_no_data_built.
@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``cli(*args, env_extra=None)``: the command line in this process, from ``tmp_path``."""

    def command(*args, env_extra=None):
        env = dict(WANDB_MODE="offline", NESTED_RESEARCH_OUTPUT_DIR=str(tmp_path / "out"),
                   NESTED_RESEARCH_DATA_DIR=str(tmp_path / "never_created"))
        env.update(env_extra or {})
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("NESTED_RESEARCH_FULL_ERROR", raising=False)
        monkeypatch.delenv("WANDB_DIR", raising=False)
        monkeypatch.chdir(tmp_path)
        return cli_in_process(monkeypatch, capsys, *args)

    return command


def _one_error(proc) -> str:
    """The single error line (exit code 2, no traceback, no config dump)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("nested_research.train: error: "), proc.stderr[-3000:]
    assert "trainer:" not in proc.stdout  # stopped before main printed the config
    return lines[0]


def test_cli_output_dir_under_a_file(tmp_path, cli):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    before = snapshot(tmp_path)
    single = _one_error(cli(f"paths.output_dir={blocker}/out", "logger=none"))
    assert f"hydra.run.dir='{blocker}/out/runs/" in single and "which is a file" in single
    assert "paths.output_dir=<dir>" in single
    multi = _one_error(cli("-m", f"paths.output_dir={blocker}/out", "memory=fixed,none",
                           "logger=none"))
    assert f"hydra.sweep.dir='{blocker}/out/multirun/" in multi and "which is a file" in multi
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only directories")
def test_cli_read_only_output_dir(tmp_path, cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        line = _one_error(cli(f"paths.output_dir={ro}", "logger=none"))
        assert "hydra.run.dir=" in line and "is not writable" in line and str(ro) in line
        assert snapshot(tmp_path) == before
    finally:
        ro.chmod(0o755)


def test_cli_standard_dataset_not_prepared(tmp_path, cli):
    before = snapshot(tmp_path)
    line = _one_error(cli("data=mnist"))
    data_dir = tmp_path / "never_created"
    assert f"data.data_dir={str(data_dir)!r} (data=mnist)" in line, line
    assert "is not prepared" in line and "the data_dir does not exist" in line
    assert f"tfds build mnist --data_dir {data_dir}" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("which,fault", [("mnist", "shard_truncated_half"),
                                         ("digits", "dataset_info_garbage")])
def test_cli_corrupt_data_dir(which, fault, pristine, tmp_path, cli):
    data_dir = copy_data(pristine, which, tmp_path)
    FAULTS[fault][0](data_dir / (DIGITS if which == "digits" else MNIST))
    before = snapshot(tmp_path)
    line = _one_error(cli(f"data={'digits' if which == 'digits' else 'mnist'}",
                          env_extra={"NESTED_RESEARCH_DATA_DIR": str(data_dir)}))
    assert f"data.data_dir={str(data_dir)!r}" in line
    _assert_corrupt_message(line, which, data_dir, FAULTS[fault][1])
    assert snapshot(tmp_path) == before


def test_cli_prepared_standard_dataset_trains(pristine, tmp_path, cli):
    """The control: the same mnist folder, intact, trains through the CLI."""
    data_dir = copy_data(pristine, "mnist", tmp_path)
    before = snapshot(data_dir)
    proc = cli("data=mnist", "logger=none", "trainer.max_steps=2", "trainer.verbose=0",
               env_extra={"NESTED_RESEARCH_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "out" / "runs").glob("*/results.json"))) == 1
    assert snapshot(data_dir) == before
