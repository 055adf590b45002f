"""Atomic file writes: a file is either the old one or the new one, never half written (kill -9 safe)."""
import os


def atomic_write(path, data):
    """Write `data` to `path` atomically: a temp file in the same folder, flush + fsync, os.replace, then
    fsync the folder so the rename itself is durable.

    data: bytes, str (UTF-8), or a callable `data(f)` that writes into the open binary file `f`.
    On any error (e.g. OSError(ENOSPC) from a full disk) the temp file is removed, `path` keeps its old
    contents and the error propagates.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # folders cannot be opened for fsync on some systems
        pass
