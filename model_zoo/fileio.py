"""Small file helpers shared by the zoo, the data loaders and the table writers (no torch).

``robench.fileio`` re-exports these, so there is one implementation. The rules they enforce:

- **Writes are atomic and never go through a link robench did not make.** :func:`atomic_write`
  lets a writer fill a file inside a private temporary folder (mode 0700, created with
  ``mkdtemp``: nobody else can plant a link in it) beside the target, then renames it onto the
  target: a reader, or a kill at any moment, sees the old file or the whole new one, and a symlink
  planted at the target is replaced, never written through. Files robench writes by descriptor are
  opened ``O_CREAT | O_EXCL | O_NOFOLLOW`` (:func:`open_new`). A failure (full disk, read-only
  folder) is one-line :class:`BadInput` and leaves nothing behind.
- **Several files change together or not at all** (:func:`atomic_write_group`): every new file is
  written and fsync'd first, then one journal file names the renames (the commit point), then they
  happen. A kill before the journal leaves the old files; after it, :func:`recover_group` (run by
  every reader and writer of those files) finishes the renames.
- **Reads and waits are bounded.** :func:`read_regular` reads a regular file of at most ``limit``
  bytes (a FIFO, a device such as ``/dev/zero`` or a directory is refused without blocking);
  :func:`exclusive_lock` takes a non-blocking lock on a regular file it opens without following
  links, so a planted link, FIFO or device never hangs or truncates anything.
- **Names from data are never paths**: :func:`safe_component` turns any text into one file-name
  component (letters, digits, ``._+-``; a short hash keeps distinct texts distinct).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from model_zoo.errors import BadInput

MAX_JSON_BYTES = 64 << 20  # a model card, a sweep cell, a journal: far below this
_COMMIT_VERSION = 1


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file (device)"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


# -- writing ---------------------------------------------------------------------------------
def _private_dir(parent: Path, stem: str) -> Path:
    """A new 0700 folder beside the target: ``.tmp-<stem>.<pid>.<random>`` (stale ones, whose
    process is gone, are removed by :func:`remove_stale_temps`)."""
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{stem[:60]}.{os.getpid()}."))


def _prepare_parent(path: Path, what: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        raise BadInput(f"cannot write the {what} {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot write the {what} {path}: cannot create {path.parent}: {_why(e)}") from None


def _finish_temp(tmp: Path, *, sync: bool) -> None:
    """The writer's file must be a regular file (not a link it was tricked into making); give it
    the ordinary mode (mkstemp/mkdtemp make private ones) and optionally fsync it."""
    st = os.lstat(tmp)
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"the writer made {_kind(st.st_mode)} instead of a file at {tmp}")
    os.chmod(tmp, file_mode())
    if sync:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, what: str = "file") -> Path:
    """Call ``write(tmp)`` on a path inside a private temporary folder beside ``path``, then rename
    the file onto ``path``: readers (and a kill at any moment) see the old file or the whole new
    one, never a torn one, and a link at ``path`` is replaced, not followed. An OSError (full disk,
    read-only folder, over-long name) is :class:`BadInput` and nothing is left behind."""
    path = Path(path)
    _prepare_parent(path, what)
    tmp_dir = None
    try:
        tmp_dir = _private_dir(path.parent, path.stem)
        tmp = tmp_dir / path.name
        write(str(tmp))
        _finish_temp(tmp, sync=False)
        os.replace(tmp, path)
    except OSError as e:
        raise BadInput(f"cannot write the {what} {path}: {_why(e)}; nothing was written") from None
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), what=what)


def open_new(path: str | os.PathLike, flags: int = os.O_WRONLY) -> int:
    """A descriptor on a file that did not exist (``O_CREAT | O_EXCL | O_NOFOLLOW``): never an
    existing file, link or FIFO."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def _journal(path: Path) -> Path:
    return path.parent / f".{path.stem}.commit"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_group(items: Sequence[tuple[str | os.PathLike, Callable[[str], None]]], *,
                       what: str = "files") -> list[Path]:
    """Write several files of one folder as one change: each ``write(tmp)`` fills a temporary
    file (in order, so a later writer may use what an earlier one computed), every file is fsync'd,
    then a journal ``.<stem>.commit`` naming the renames is written (the commit point) and the
    renames happen. A kill before the journal exists leaves the old files; a kill after it is
    finished by :func:`recover_group` before the files are next read or written."""
    paths = [Path(p) for p, _ in items]
    if not paths:
        return []
    parent = paths[0].parent
    if any(p.parent != parent for p in paths) or len({p.name for p in paths}) != len(paths):
        raise ValueError("atomic_write_group: the files must be distinct names in one folder")
    for p in paths:
        _prepare_parent(p, what)
    recover_group(paths[0])
    journal = _journal(paths[0])
    tmp_dir, committed = None, False
    try:
        tmp_dir = _private_dir(parent, paths[0].stem)
        for p, (_, write) in zip(paths, items):
            write(str(tmp_dir / p.name))
            _finish_temp(tmp_dir / p.name, sync=True)
        moves = [[f"{tmp_dir.name}/{p.name}", p.name] for p in paths]
        body = json.dumps({"robench_commit": _COMMIT_VERSION, "pid": os.getpid(), "host": socket.gethostname(),
                           "moves": moves}).encode()
        jtmp = tmp_dir / journal.name
        fd = open_new(jtmp)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(jtmp, file_mode())
        os.replace(jtmp, journal)  # the commit point
        committed = True
        _fsync_dir(parent)
        for p in paths:
            os.replace(tmp_dir / p.name, p)
        os.unlink(journal)
        _fsync_dir(parent)
    except OSError as e:
        if committed:  # the new files are whole: the next reader or writer finishes the renames
            raise BadInput(f"writing {', '.join(map(str, paths))} stopped after its commit ({_why(e)}); "
                           "the next robench command that reads them finishes it") from None
        raise BadInput(f"cannot write the {what} {', '.join(map(str, paths))}: {_why(e)}; nothing was written") \
            from None
    finally:
        if tmp_dir is not None and not (committed and journal.exists()):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return paths


def _alive(pid: object, host: object) -> bool:
    if host != socket.gethostname():
        return True  # another machine's process: cannot tell, so leave its files alone
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_group(path: str | os.PathLike) -> bool:
    """Finish a group write of ``path``'s stem that a killed process committed but did not rename
    (see :func:`atomic_write_group`); → whether it did. The journal is data: it may only move a
    file from a ``.tmp-*`` folder of this folder onto the same name in this folder."""
    path = Path(path)
    journal = _journal(path)
    if not os.path.lexists(journal):
        return False
    raw = read_regular(journal, limit=1 << 20, what="commit journal", follow=False)
    try:
        entry = json.loads(raw)
        moves = entry["moves"]
        ok = isinstance(moves, list) and all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m)
            and re.fullmatch(r"\.tmp-[^/\x00]+/[^/\x00]+", m[0]) and m[0].split("/")[1] == m[1]
            and m[1] not in (".", "..") for m in moves)
    except (ValueError, KeyError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise BadInput(f"{journal} is not a robench commit journal; delete it (and any .tmp-* folders beside it)")
    if _alive(entry.get("pid"), entry.get("host")):
        return False  # its writer is still renaming: leave it alone
    parent = path.parent
    try:
        for tmp, name in moves:
            src = parent / tmp
            try:
                if stat.S_ISREG(os.lstat(src).st_mode):
                    os.replace(src, parent / name)
            except FileNotFoundError:
                pass  # renamed before the kill
        os.unlink(journal)
        _fsync_dir(parent)
    except OSError as e:
        raise BadInput(f"{path} was left half-updated by a killed robench ({journal} names the finished files) and "
                       f"cannot be repaired here: {_why(e)}; run the command that wrote it again") from None
    for tmp, _ in moves:
        shutil.rmtree(parent / tmp.split("/")[0], ignore_errors=True)
    return True


def _journal_dirs(folder: Path) -> set[str]:
    """The temporary folders pending commit journals in ``folder`` still need."""
    keep = set()
    for j in folder.glob(".*.commit"):
        try:
            entry = json.loads(read_regular(j, limit=1 << 20, what="commit journal", follow=False))
            keep.update(str(m[0]).split("/")[0] for m in entry["moves"])
        except (BadInput, ValueError, KeyError, TypeError, IndexError, RecursionError):
            keep.add("*")  # unreadable: keep every temporary folder until a person looks
    return keep


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Remove the ``.tmp-*`` folders of writes whose process is gone (left by a kill), except those
    a pending commit journal still needs."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    host = socket.gethostname()
    stale = [p for p in folder.glob(".tmp-*")
             if (m := re.fullmatch(r"\.tmp-.*\.(\d+)\.[^.]+", p.name)) and int(m.group(1)) != os.getpid()
             and not _alive(int(m.group(1)), host)
             and p.is_dir() and not p.is_symlink()]
    if stale:
        keep = _journal_dirs(folder)
        for p in stale:
            if p.name not in keep and "*" not in keep:
                shutil.rmtree(p, ignore_errors=True)


# -- reading ---------------------------------------------------------------------------------
def _open_regular(path: str | os.PathLike, what: str, follow: bool) -> tuple[int, os.stat_result]:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BadInput(f"{what} {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadInput(f"{what} {path} is a symbolic link; robench does not follow links it did not make") from None
        raise BadInput(f"{what} {path} is unreadable: {_why(e)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{what} {path} is {_kind(st.st_mode)}, not a regular file")
    return fd, st


def check_regular(path: str | os.PathLike, *, limit: int | None = None, what: str = "file",
                  follow: bool = True) -> int:
    """The size of ``path`` once it is known to be a regular file of at most ``limit`` bytes
    (opened without blocking, so a FIFO or a device is refused, never read)."""
    fd, st = _open_regular(path, what, follow)
    os.close(fd)
    if limit is not None and st.st_size > limit:
        raise BadInput(f"{what} {path} is {st.st_size:,} bytes, more than the limit of {limit:,}")
    return st.st_size


def read_regular(path: str | os.PathLike, *, limit: int, what: str = "file", follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; a FIFO, device, directory or larger
    file is :class:`BadInput` without blocking or reading it."""
    fd, st = _open_regular(path, what, follow)
    try:
        if st.st_size > limit:
            raise BadInput(f"{what} {path} is {st.st_size:,} bytes, more than the limit of {limit:,}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise BadInput(f"{what} {path} grew beyond the limit of {limit:,} bytes while being read")
        return b"".join(chunks)
    except OSError as e:
        raise BadInput(f"{what} {path} is unreadable: {_why(e)}") from None
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, *, what: str = "JSON file", limit: int = MAX_JSON_BYTES) -> object:
    """A JSON value from a regular file of at most ``limit`` bytes; malformed, over-deep or
    non-UTF-8 content is :class:`BadInput`."""
    raw = read_regular(path, limit=limit, what=what)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadInput(f"{what} {path} is unreadable ({type(e).__name__})") from None


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


# -- locks -----------------------------------------------------------------------------------
@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, busy: str, what: str = "lock file",
                   remove: bool = False) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, never truncated) for the
    duration; ``busy`` is the one-line error when another process holds it. A link, FIFO or
    device at ``path`` is refused at once (opened without following links and without blocking);
    the OS releases the lock when the process dies. With ``remove`` the lock file is deleted on
    release (a lock on a file another holder already removed is retried once, then refused)."""
    for attempt in range(2):
        with _locked(path, busy=busy, what=what) as fd:
            if remove:
                try:
                    same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # its previous holder removed it after we opened it
                    if attempt:
                        raise BadInput(busy)
                    continue
            try:
                yield fd
            finally:
                if remove:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            return


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, *, busy: str) -> Iterator[None]:
    """A lock that one output (a table stem, a file) is being produced, held while the work runs: a
    file ``.<name>.lock`` in the nearest existing folder above ``path`` (nothing is created where the
    output goes before it is written), removed again on release."""
    p = Path(os.path.abspath(path))
    anc = p.parent
    while not anc.is_dir() and anc != anc.parent:
        anc = anc.parent
    name = "." + safe_component(p.relative_to(anc).as_posix(), max_len=150) + ".lock"
    with exclusive_lock(anc / name, busy=busy, what="output lock", remove=True):
        yield


@contextlib.contextmanager
def _locked(path: str | os.PathLike, *, busy: str, what: str) -> Iterator[int]:
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadInput(f"{what} {path} is a symbolic link; robench does not follow links it did not make: "
                           "remove it") from None
        raise BadInput(f"cannot open the {what} {path}: {_why(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{what} {path} is {_kind(st.st_mode)}, not a lock file: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BadInput(busy) from None
        yield fd
    finally:
        os.close(fd)


# -- names and places ------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_component(text: object, *, max_len: int = 80) -> str:
    """One file-name component made from arbitrary text (a name read from a table): letters,
    digits and ``._+-`` only, no leading dot or dash, at most ``max_len`` characters. Text that is
    already such a name is kept as it is; any other text gets ``-`` and 8 hex digits of its sha256,
    so distinct texts never share a file."""
    s = str(text)
    slug = _UNSAFE.sub("_", s).lstrip(".-_")[:max_len].rstrip(".")
    if slug == s and slug:
        return slug
    return f"{slug or 'x'}-{hashlib.sha256(s.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def check_writable(path: str | os.PathLike, *, what: str, folder: bool = False) -> Path:
    """Fail before the work starts when ``path`` (a file, or with ``folder`` a folder to create or
    fill) cannot be written: not UTF-8, a name longer than the file system allows, an existing
    directory where a file goes (or a file where a folder goes), or no existing ancestor that is a
    writable folder. Nothing is created."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{what} {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; "
                       "use a path of valid UTF-8 characters") from None
    p = Path(text)
    if not text or "\x00" in text:
        raise BadInput(f"{what} {text!r} is not a path")
    too_long = [part for part in p.parts if len(part.encode("utf-8")) > 255]
    if too_long:  # checked first: stat() of such a name fails with ENAMETOOLONG
        raise BadInput(f"{what}: the name {too_long[0][:40]}… is longer than the 255 bytes a file name may have")
    try:
        if folder:
            if p.exists() and not p.is_dir():
                raise BadInput(f"{what} {text} exists and is not a folder")
        elif p.is_dir():
            raise BadInput(f"{what} {text} is a directory; give a file name")
        parent = p if folder else p.parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
    except OSError as e:
        raise BadInput(f"{what} {text}: {_why(e)}") from None
    if not parent.is_dir():
        raise BadInput(f"{what} {text}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {text}: cannot create files under {parent} (not writable)")
    return p


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
