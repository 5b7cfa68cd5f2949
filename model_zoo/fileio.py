"""Small file helpers shared by the zoo, the data loaders and the table writers (no torch).

``robench.fileio`` re-exports these, so there is one implementation.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from model_zoo.errors import BadInput


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``:
    readers (and a kill at any moment) see the old file or the whole new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; the result should be an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def regular_file_inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "file") -> Path:
    """``path`` with symlinks resolved, checked to be a regular file inside ``root`` (also resolved).

    Raises :class:`BadInput` for a path that escapes ``root``, is missing, or is a directory, FIFO,
    device or other special file; it is never opened, so a FIFO or ``/dev/zero`` cannot hang a reader.
    """
    path = Path(path)
    resolved = path.resolve()
    root_r = Path(root).resolve()
    if not resolved.is_relative_to(root_r):
        raise BadInput(f"{what} {path} escapes the zoo directory {root} (it resolves to {resolved})")
    try:
        mode = os.stat(resolved).st_mode
    except OSError as e:
        raise BadInput(f"{what} {path} is unreadable: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"
        raise BadInput(f"{what} {path} is {kind}, not a regular file")
    return resolved


def file_mode() -> int:
    """The mode of an ordinary new file under the current umask (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def robench_home() -> Path:
    """``$ROBENCH_HOME``; by default ``$XDG_CACHE_HOME/robench`` (``~/.cache/robench``). The user zoo
    and the fetched data live below it."""
    home = os.environ.get("ROBENCH_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(cache, "robench")
    return Path(home)
