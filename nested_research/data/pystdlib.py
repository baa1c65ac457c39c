"""TFDS builder ``python_stdlib_text``: byte-level language modelling on Python's own source.

Corpus
    The ``.py`` files of the *running* interpreter's standard library
    (``sysconfig.get_paths()["stdlib"]``, e.g. ``.../lib/python3.11``).  Nothing
    is downloaded.  Left out, so that the corpus is the hand-written library
    code every installation of that Python version ships, and nothing that
    depends on the machine, the distributor or installed packages:

    * directories named ``site-packages`` / ``dist-packages`` (installed
      packages), ``test`` / ``tests`` (CPython's test suite, with deliberately
      broken and huge data files), ``idlelib`` (the IDE), ``__pycache__``,
      ``encodings`` and ``pydoc_data`` (generated codec tables and the
      generated 750 KB documentation string) and ``config-*`` (the build's
      ``python-config`` script);
    * files named ``_sysconfigdata*`` (this build's compiler flags and paths);
    * symbolic links (e.g. a distributor's ``sitecustomize.py`` pointing into
      ``/etc``) and directories reached through them.

    See :func:`stdlib_files`.  The files are read as bytes, in sorted order of
    their POSIX path relative to the stdlib directory (``str`` order, so
    ``"a.py" < "a/b.py"``), and concatenated, each file followed by the
    separator byte :data:`SEPARATOR` (``0x00``, which does not occur in Python
    source: an end-of-file token).  The corpus is the first ``max_bytes``
    bytes of that concatenation (:func:`read_corpus`): a bound on the size, so
    that preparing the dataset takes seconds.  The corpus is the library's
    first modules in that order, not a sample of the whole library: with the
    default 460,000 bytes (CPython 3.11) ``__future__.py`` .. ``_weakrefset.py``
    (half of it ``_pydecimal.py`` and ``_pyio.py``); the whole library, so
    filtered, is about 9 MB in 548 files.

Version
    The config name starts with the interpreter and its full version, e.g.
    ``cpython3.11.7_L64_b460000_t0.05`` (:func:`python_tag`), so each
    Python version prepares its own dataset directory
    ``data_dir/python_stdlib_text/<config name>/1.0.0`` rather than reading one
    made from another version's (different) sources.  The dataset's metadata
    also records the version, the number of files used and the SHA-256 of the
    corpus bytes (two builds of the same version patched differently by a
    distributor give the same name; compare ``corpus_sha256``).

Tokens and examples
    Byte-level: every byte is one token, vocabulary :data:`VOCAB_SIZE` = 256
    (no mapping, no special tokens; the separator is byte 0).  An example is a
    window of ``seq_len`` consecutive corpus bytes ``x`` and the next-byte
    targets ``y`` = the same window shifted by one (``y[i] = x[i + 1]``, and
    ``y[-1]`` the byte after the window); both ``uint8`` of shape
    ``(seq_len,)`` on disk, read as ``int32`` by the loader.  Windows follow
    one another with stride ``L``: window ``k`` of a region starting at byte
    ``s`` is ``x = corpus[s + k*L : s + k*L + L]``,
    ``y = corpus[s + k*L + 1 : s + k*L + L + 1]`` (so inputs never overlap;
    a window's last target is the next window's first input).

Split (by position in the corpus)
    With ``n`` corpus bytes, the last ``round(test_fraction * n)`` bytes are
    the ``test`` region, the bytes before them the ``train`` region; each
    region is cut into as many whole windows (``L + 1`` bytes with the target
    of the last position) as fit, the rest of the region is dropped.  No byte
    of a train window (input or target) is in a test window.  Examples are
    stored and read in corpus order (``disable_shuffling=True``), so the
    loader's validation set (the end of ``train``, ``val_fraction``) is again a
    contiguous stretch of the corpus just before the test region.

Configuration
    :class:`PythonStdlibTextConfig` holds ``seq_len`` (default 64),
    ``max_bytes`` (default 460,000) and ``test_fraction`` (default 0.05);
    :func:`make_config` builds one with a name derived from them and the Python
    version.  The loader's config group passes them as
    ``builder_kwargs.config`` (``conf/data/pystdlib.yaml``, same defaults).
    The defaults are the ``lm_transformer`` workload's: with the loader's
    ``val_fraction=0.05`` and batch 32, 203 steps per epoch (2030 in 10 epochs)
    of 64-byte windows, and 341 validation / 359 test windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import sysconfig
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from nested_research.core.checks import check_int, check_real
from nested_research.data._tfds_compat import LocalGeneratorBuilder

__all__ = [
    "DEFAULT_CONFIG",
    "EXCLUDED_DIRS",
    "PythonStdlibText",
    "PythonStdlibTextConfig",
    "SEPARATOR",
    "VOCAB_SIZE",
    "make_config",
    "python_tag",
    "read_corpus",
    "split_windows",
    "stdlib_dir",
    "stdlib_files",
]

#: Number of token ids: one per byte value.
VOCAB_SIZE = 256
#: The byte after every file of the corpus (absent from Python source).
SEPARATOR = b"\x00"
#: Directory names left out wherever they occur below the stdlib directory.
EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__",
    "encodings", "pydoc_data",
})
#: Prefixes of left-out directory names (``config-3.11-x86_64-linux-gnu``).
EXCLUDED_DIR_PREFIXES = ("config-",)
#: Prefixes of left-out file names (``_sysconfigdata__linux_x86_64-linux-gnu.py``).
EXCLUDED_FILE_PREFIXES = ("_sysconfigdata",)

_PARAMS = ("seq_len", "max_bytes", "test_fraction")


def python_tag() -> str:
    """The running interpreter and its full version, e.g. ``cpython3.11.7``."""
    v = sys.version_info
    return f"{sys.implementation.name}{v.major}.{v.minor}.{v.micro}"


def stdlib_dir() -> str:
    """The running interpreter's standard library directory (``sysconfig``'s ``stdlib``)."""
    return sysconfig.get_paths()["stdlib"]


def _excluded_dir(name: str) -> bool:
    return name in EXCLUDED_DIRS or name.startswith(EXCLUDED_DIR_PREFIXES)


def stdlib_files(root: str | None = None) -> List[str]:
    """The corpus files: POSIX paths relative to ``root`` (default :func:`stdlib_dir`), sorted.

    Regular ``.py`` files, not symbolic links, outside the excluded directories
    (module docstring); symbolic links to directories are not followed.
    """
    root = stdlib_dir() if root is None else root
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not _excluded_dir(d)]
        for name in files:
            path = os.path.join(folder, name)
            if (name.endswith(".py") and not name.startswith(EXCLUDED_FILE_PREFIXES)
                    and not os.path.islink(path) and os.path.isfile(path)):
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found)


def read_corpus(max_bytes: int, root: str | None = None) -> Tuple[bytes, int]:
    """The first ``max_bytes`` bytes of the concatenated corpus and the number of files used.

    Each file of :func:`stdlib_files` contributes its bytes followed by
    :data:`SEPARATOR`; files after the bound are not read.
    """
    root = stdlib_dir() if root is None else root
    parts, size, used = [], 0, 0
    for rel in stdlib_files(root):
        if size >= max_bytes:
            break
        with open(os.path.join(root, rel), "rb") as fh:
            parts.append(fh.read() + SEPARATOR)
        size += len(parts[-1])
        used += 1
    return b"".join(parts)[:max_bytes], used


def _window_count(region: int, seq_len: int) -> int:
    """Whole windows of ``seq_len`` inputs (+1 target byte) in ``region`` bytes."""
    return max(0, (region - 1) // seq_len)


def _test_bytes(n: int, test_fraction: float) -> int:
    return int(round(test_fraction * n))


def split_windows(
    corpus: bytes, seq_len: int, test_fraction: float
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Cut ``corpus`` into ``train`` / ``test`` windows (module docstring, "Split").

    Returns ``{split: (x, y)}`` arrays stacked as ``uint8`` ``(N, seq_len)``.
    Raises ``ValueError`` when a split would get no window.
    """
    data = np.frombuffer(corpus, dtype=np.uint8)
    cut = len(data) - _test_bytes(len(data), test_fraction)
    out = {}
    for split, start, stop in (("train", 0, cut), ("test", cut, len(data))):
        count = _window_count(stop - start, seq_len)
        if count < 1:
            raise ValueError(
                f"seq_len={seq_len!r} must leave at least one {split} window of seq_len + 1 "
                f"bytes: with test_fraction={test_fraction!r} the corpus of {len(data)} bytes "
                f"has a {split} region of {stop - start} bytes (raise max_bytes, change "
                f"test_fraction or lower seq_len)"
            )
        rows = np.arange(count)[:, None] * seq_len + np.arange(seq_len)[None, :] + start
        out[split] = (data[rows], data[rows + 1])
    return out


@dataclasses.dataclass(eq=False)
class PythonStdlibTextConfig(tfds.core.BuilderConfig):
    """Sizes of the byte-level stdlib corpus (see the module docstring).

    Attributes:
        seq_len: bytes per example ``L`` (>= 1).
        max_bytes: corpus size bound: the first ``max_bytes`` bytes of the
            concatenated stdlib (>= 2 * (seq_len + 1), enough for one train
            and one test window).
        test_fraction: share of the corpus bytes, from its end, held out as
            ``test``, in ``(0, 1)``.
    """

    seq_len: int = 64
    max_bytes: int = 460_000
    test_fraction: float = 0.05

    def __post_init__(self) -> None:
        self.seq_len = check_int("seq_len", self.seq_len, low=1)
        self.max_bytes = check_int("max_bytes", self.max_bytes, low=2 * (self.seq_len + 1))
        self.test_fraction = check_real("test_fraction", self.test_fraction, 0.0, 1.0,
                                        low_open=True, high_open=True)
        test = _test_bytes(self.max_bytes, self.test_fraction)
        for split, region in (("test", test), ("train", self.max_bytes - test)):
            if _window_count(region, self.seq_len) < 1:
                raise ValueError(
                    f"test_fraction={self.test_fraction!r} must leave at least one {split} "
                    f"window of seq_len + 1 = {self.seq_len + 1} bytes in max_bytes="
                    f"{self.max_bytes!r} ({split} region: {region} bytes)"
                )

    def params(self) -> Dict[str, Any]:
        """The generation parameters as a plain dict."""
        return {name: getattr(self, name) for name in _PARAMS}


#: The configs :func:`make_config` named, by name.
_BY_NAME: Dict[str, PythonStdlibTextConfig] = {}


def make_config(name: str | None = None, **params: Any) -> PythonStdlibTextConfig:
    """A :class:`PythonStdlibTextConfig` from (a subset of) its parameters.

    Missing parameters take the defaults.  Unless ``name`` is given, the name
    is :func:`python_tag` followed by every parameter (e.g.
    ``cpython3.11.7_L64_b460000_t0.05``), so each size and each Python
    version is prepared into its own directory, and the same parameters give
    the same config object (TFDS accepts no second config under the name of
    :data:`DEFAULT_CONFIG`).  Unknown parameter names and bad values raise
    ``ValueError`` naming the parameter, the value and what is allowed.
    """
    unknown = sorted(set(params) - set(_PARAMS))
    if unknown:
        raise ValueError(f"unknown python_stdlib_text config parameter(s) {unknown}; "
                         f"allowed: {sorted(_PARAMS)}")
    config = PythonStdlibTextConfig(name=name or "tmp", **params)
    if name is None:
        config.name = (f"{python_tag()}_L{config.seq_len}_b{config.max_bytes}"
                       f"_t{config.test_fraction!r}")
        config = _BY_NAME.setdefault(config.name, config)
    config.description = (
        f"Byte-level windows of {config.seq_len} bytes from the first {config.max_bytes} "
        f"bytes of the {python_tag()} standard library sources; last "
        f"{config.test_fraction:g} of the bytes -> test."
    )
    return config


DEFAULT_CONFIG = make_config()


class PythonStdlibText(LocalGeneratorBuilder):
    """Byte windows (next-byte targets) of the running Python's standard library source."""

    name = "python_stdlib_text"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [DEFAULT_CONFIG]
    DEFAULT_BUILDER_CONFIG_NAME = DEFAULT_CONFIG.name

    def _info(self) -> tfds.core.DatasetInfo:
        config: PythonStdlibTextConfig = self.builder_config
        window = tfds.features.Tensor(shape=(config.seq_len,), dtype=np.uint8)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({"x": window, "y": window}),
            supervised_keys=("x", "y"),
            homepage="https://docs.python.org/3/library/",
            metadata=tfds.core.MetadataDict(python=python_tag(), vocab_size=VOCAB_SIZE,
                                            **config.params()),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Read from the local stdlib: nothing to download.
        config: PythonStdlibTextConfig = self.builder_config
        corpus, files = read_corpus(config.max_bytes)
        self.info.metadata.update(
            corpus_bytes=len(corpus), corpus_files=files,
            corpus_sha256=hashlib.sha256(corpus).hexdigest(),
        )
        windows = split_windows(corpus, config.seq_len, config.test_fraction)
        return {split: self._generate_examples(*xy) for split, xy in windows.items()}

    def _generate_examples(
        self, xs: np.ndarray, ys: np.ndarray
    ) -> Iterator[Tuple[int, Dict[str, Any]]]:
        for index in range(len(xs)):
            yield index, {"x": xs[index], "y": ys[index]}
