"""Files replaced whole or not at all: what a killed process leaves is the old file or the new.

One function for every small record the project rewrites (a checkpoint's progress log, a
study's ``cost.json`` and rates, a sweep's record); it imports no TensorFlow.
"""

from __future__ import annotations

import os
import threading


def fsync_dir(path: str) -> None:
    """Flush the directory ``path`` itself (its entries), where the platform allows."""
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


def replace_file(path: str, data: bytes | str) -> None:
    """Replace ``path`` by a file holding ``data`` (text is UTF-8), atomically: a temporary
    file beside it (named by process and thread, so concurrent writers never share one),
    fsynced, renamed over it, and the directory fsynced."""
    if isinstance(data, str):
        data = data.encode()
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
