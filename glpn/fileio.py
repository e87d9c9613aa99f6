"""The one atomic file write: a final name only ever holds a complete file.

Used for engine caches, checkpoints (save_pretrained), ONNX exports and every output file the
pipeline writes (depth maps, summaries).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile

_TMP = re.compile(r"\.tmp(\d+)$")


def tmp_name(path: str) -> str:
    """Where `path` is written before it is renamed: beside it, tagged with this process's id."""
    return f"{path}.tmp{os.getpid()}"


def partial_path(path: str) -> str:
    """Where a file written over time (a video, a recording) lives until it is complete:
    out.mcap -> out.partial.mcap; renamed to `path` once it is."""
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"


def atomic_write(path: str, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` through a temporary file and a rename.

    On any failure (a full disk, a missing directory) the temporary file is removed and an
    OSError whose message names `path` is raised; an older file under `path` is left as it was.
    New files get the usual permissions (0666 less the umask). `fsync` also survives a power
    loss, which costs a disk flush per file: caches want it, per-frame outputs do not.
    """
    tmp = tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        error = OSError(f"cannot write {path}: {e.strerror or e}")
        error.errno = e.errno or errno.EIO  # "[Errno N]" stays out of the message
        raise error from None


def remove_stale_tmp(directory: str) -> int:
    """Remove `*.tmpPID` files left in `directory` by processes that no longer run (killed
    between writing and renaming); returns how many were removed."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        m = _TMP.search(name)
        if m is None or _alive(int(m[1])):
            continue
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, name))
            removed += 1
    return removed


def pid_temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    """A fresh temporary directory named PREFIX<pid>-..., after removing those of PREFIX whose
    process no longer runs (a process killed with SIGKILL cannot remove its own)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            m = pattern.match(name)
            if m is not None and not _alive(int(m[1])):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
