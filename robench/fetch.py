"""``robench data fetch``: CIFAR-10, CIFAR-100 and CIFAR-10-C from their official archives.

One job: get an archive (download with the standard library, or a local file), check its MD5
against the published value, check every tar member, extract into a temporary folder beside the
target and rename the data folder into place. So the target folder either does not exist or is
complete: an interrupted, killed or corrupted fetch never leaves half a data folder.

* A download goes to ``<dir>/<archive>.part``. If it stops (network error, server closing early,
  Ctrl-C, kill), that file is kept and the next fetch resumes it with an HTTP range request (or
  starts over when the server does not offer ranges). An archive whose MD5 is wrong is deleted.
  After a successful extraction the downloaded archive is deleted; a local archive given as
  ``url`` is never touched.
* One fetch per folder at a time: a second one is refused while the first holds an exclusive lock
  on the folder itself (no lock file; the OS releases the lock when a process dies).
* Tar members must be regular files or folders inside the archive's one data folder: absolute
  paths, ``..``, links and special files (devices, FIFOs) are refused before anything is written.
* The checksums are those published with the data sets and used by torchvision and RobustBench:
  CIFAR-10/100 from https://www.cs.toronto.edu/~kriz/cifar.html, CIFAR-10-C from Zenodo record
  2535967 (https://zenodo.org/records/2535967).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

from robench.datahome import FOLDERS, data_home
from robench.errors import BadInput

__all__ = ["SOURCES", "Source", "fetch", "FetchError", "is_present"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60
_MAX_MEMBERS = 100_000


class FetchError(BadInput):
    """A fetch that could not finish (network, checksum, archive content); one line, like BadInput."""


@dataclasses.dataclass(frozen=True)
class Source:
    """An official archive: where it is, its published MD5 and size, and the data folder inside it."""

    name: str
    url: str
    md5: str
    archive: str
    folder: str
    size: int

    @property
    def max_extracted(self) -> int:
        """The most bytes an archive of this data set may unpack to: its official archive unpacks to
        about 1.1× its size (the CIFAR tarballs are gzip'd pickles, CIFAR-10-C an uncompressed tar)."""
        return 2 * self.size

    def required(self) -> tuple[str, ...]:
        """Files the data folder must hold after extraction."""
        if self.name == "cifar10":
            return tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
        if self.name == "cifar100":
            return ("train", "test", "meta")
        from robench.corruptions import CIFAR10C_NAMES

        return tuple(f"{c}.npy" for c in CIFAR10C_NAMES) + ("labels.npy",)


SOURCES = {
    "cifar10": Source("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", FOLDERS["cifar10"], 170_498_071),
    "cifar100": Source("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", FOLDERS["cifar100"], 169_001_437),
    "cifar10c": Source("cifar10c", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                       "56bf5dcef84df0e2308c6dcbcbbd8499", "CIFAR-10-C.tar", FOLDERS["cifar10c"], 2_918_471_680),
}


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise BadInput(f"unknown data set {name!r}; valid choices: {', '.join(SOURCES)}")
    return SOURCES[name]


def is_present(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``data_dir`` (default ``$ROBENCH_HOME/data``) holds the complete data folder of ``name``."""
    src = _source(name)
    folder = Path(data_dir if data_dir is not None else data_home()) / src.folder
    return folder.is_dir() and all((folder / f).is_file() for f in src.required())


def _check_md5(md5: str | None) -> str | None:
    if md5 is None:
        return None
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise BadInput(f"--md5 must be 32 hexadecimal digits (an MD5), got {md5!r}")
    return md5.lower()


def _local_archive(url: str) -> Path | None:
    """The local file ``url`` names (a path or a file:// URL), or None for http(s); other schemes are refused."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise BadInput(f"--url {url!r}: unsupported scheme {parsed.scheme!r}; valid choices: http, https, "
                       "file, or a local archive path")
    else:
        path = Path(url)
    if not path.is_file():
        raise BadInput(f"--url {url}: no such archive file" if not path.exists()
                       else f"--url {url} is not a regular file")
    return path


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    """Bytes done out of a total: one rewritten line on a terminal, plain lines every 10 % otherwise."""

    def __init__(self, label: str, total: int | None, done: int, stream, tty: bool) -> None:
        self.label, self.total, self.done, self.stream, self.tty = label, total, done, stream, tty
        self.last_step = -1
        self.last_t = 0.0
        self.start_t = time.monotonic()
        self.start_done = done

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty:
            if now - self.last_t >= 0.2:
                self.last_t = now
                self.stream.write("\r" + self._text(now))
                self.stream.flush()
        else:  # every 10 %, or every 50 MB when the total is unknown
            step = min(10, self.done * 10 // self.total) if self.total else self.done // 50_000_000
            if step > self.last_step:
                self.last_step = step
                self.stream.write(self._text(now) + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._text(time.monotonic()) + "\n")
            self.stream.flush()

    def _text(self, now: float) -> str:
        mb = self.done / 1e6
        rate = (self.done - self.start_done) / 1e6 / max(now - self.start_t, 1e-6)
        if self.total:
            return f"{self.label}: {mb:,.1f} / {self.total / 1e6:,.1f} MB ({100 * self.done / self.total:.0f} %), {rate:.1f} MB/s"
        return f"{self.label}: {mb:,.1f} MB, {rate:.1f} MB/s"


# -- download ---------------------------------------------------------------------------------
def label_name(part: Path) -> str:
    """The data set name whose archive ``part`` is being downloaded (for the next-step hint)."""
    for name, src in SOURCES.items():
        if part.name.startswith(src.archive):
            return name
    return "NAME"


def _part_size(part: Path) -> int:
    """Bytes of an earlier partial download, or 0; a link, FIFO or device there is refused (robench
    never writes through a file it did not make)."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode):
        raise FetchError(f"{part} is not a regular file (a link, FIFO or device); robench does not write through "
                         "files it did not make: remove it")
    return st.st_size


def _open_part(part: Path, *, append: bool):
    """The partial download opened for writing without following a link (O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(part, flags, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FetchError(f"{part} is not a regular file; remove it")
    return os.fdopen(fd, "ab" if append else "wb")


def _download(url: str, part: Path, expected_size: int | None, label: str, stream, tty: bool,
              log: Callable[[str], None]) -> None:
    """Download ``url`` into ``part``, resuming what is already there when the server allows ranges.

    The partial file is kept on any failure or interruption and named in the error."""
    have = _part_size(part)
    request = urllib.request.Request(url, headers={"User-Agent": "robench-data-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts at the end: the partial file may be complete
            log(f"{part} is already complete ({have:,} bytes)")
            return
        raise FetchError(f"could not download {url}: HTTP {e.code} {e.reason}"
                         + (f"; partial download kept at {part} ({have:,} bytes)" if have else "")) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"could not download {url}: {reason}"
                         + (f"; partial download kept at {part} ({have:,} bytes), the next fetch resumes it"
                            if have else "")
                         + f"; offline? copy the archive here and run `robench data fetch {label_name(part)} --url FILE` "
                           "(add --md5 HEX for a re-packed archive), or use an existing copy with --data-dir DIR") \
            from None
    with response:
        if have and response.status == 206:
            log(f"resuming {part.name} at {have:,} bytes")
            mode = "ab"
        else:
            if have:
                log(f"the server does not resume downloads: starting {part.name} again")
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else expected_size
        progress = _Progress(label, total, have, stream, tty)
        got = have
        try:
            with _open_part(part, append=mode == "ab") as f:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    progress.update(len(chunk))
        except KeyboardInterrupt:
            progress.close()
            log(f"interrupted: partial download kept at {part} ({part.stat().st_size:,} bytes), "
                "the next fetch resumes it (or delete it)")
            raise
        except (OSError, http.client.HTTPException) as e:  # connection reset, timeout, full disk
            progress.close()
            raise FetchError(f"download of {url} stopped after {got:,} bytes ({e}); partial download kept at "
                             f"{part}, the next fetch resumes it") from None
        progress.close()
    if length and length.isdigit() and got < total:
        raise FetchError(f"download of {url} stopped after {got:,} of {total:,} bytes (the server closed the "
                         f"connection); partial download kept at {part}, the next fetch resumes it")


# -- extraction -------------------------------------------------------------------------------
def _check_members(tar: tarfile.TarFile, folder: str, archive: str, limit: int | None = None) -> list[tarfile.TarInfo]:
    """The members under ``folder/``, once every member is known to be a regular file or folder with a
    relative path that stays inside the archive; anything else is refused by name. The members are
    read one by one and their declared sizes added up: past ``limit`` bytes (a decompression bomb)
    reading stops at once, before anything is extracted."""
    keep, total, count = [], 0, 0
    for m in tar:
        total += m.size
        count += 1
        if limit is not None and (total > limit or count > _MAX_MEMBERS):
            raise FetchError(f"{archive} unpacks to more than {limit / 1e9:.2f} GB or {_MAX_MEMBERS:,} members, far "
                             "more than the data set it claims to be (a decompression bomb?); nothing was extracted")
        name = m.name
        if name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
            raise FetchError(f"{archive} member {name!r} has an absolute path; refusing to extract anything")
        if ".." in name.replace("\\", "/").split("/"):
            raise FetchError(f"{archive} member {name!r} points outside the archive ('..'); refusing to extract anything")
        if m.issym() or m.islnk():
            raise FetchError(f"{archive} member {name!r} is a link (to {m.linkname!r}); the official archives hold "
                             "only files and folders, refusing to extract anything")
        if not (m.isfile() or m.isdir()):
            raise FetchError(f"{archive} member {name!r} is a special file (device, FIFO); refusing to extract anything")
        if posixpath.normpath(name).split("/")[0] == folder:
            keep.append(m)
    return keep


def _extract(archive: Path, src: Source, target_parent: Path, force: bool, log: Callable[[str], None],
             stream, tty: bool) -> Path:
    """Extract ``archive`` into a temporary folder in ``target_parent``, check it, rename it into place.

    Only the data folder is extracted (other members, e.g. an archiver's metadata files, are skipped)."""
    target = target_parent / src.folder
    try:
        tmp = Path(tempfile.mkdtemp(dir=target_parent, prefix=f".fetch-{src.folder}-{os.getpid()}-"))
    except OSError as e:
        raise FetchError(f"could not create a temporary folder in {target_parent}: {e}") from None
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _check_members(tar, src.folder, archive.name, limit=src.max_extracted)
                skipped = len(tar.getmembers()) - len(members)
                size = sum(m.size for m in members)
                free = shutil.disk_usage(target_parent).free
                if free < size:
                    raise FetchError(f"{target_parent} has {free / 1e9:.2f} GB free; {archive.name} unpacks to "
                                     f"{size / 1e9:.2f} GB; nothing was extracted")
                log(f"extracting {archive.name}: {len(members)} members"
                    + (f" ({skipped} outside {src.folder}/ skipped)" if skipped else ""))
                progress = _Progress("extracting", size or None, 0, stream, tty)
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # else: the check above only
                for m in members:
                    tar.extract(m, tmp, **safe)
                    progress.update(m.size)
                progress.close()
        except (tarfile.TarError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as e:
            raise FetchError(f"{archive} is not a readable tar archive ({type(e).__name__}: {e})") from None
        except OSError as e:  # full disk, permissions
            raise FetchError(f"could not extract {archive.name} into {target_parent}: {e}") from None
        new = tmp / src.folder
        missing = [f for f in src.required() if not (new / f).is_file()]
        if missing:
            raise FetchError(f"{archive.name} does not hold the official {src.name} layout: {src.folder}/ lacks "
                             f"{', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
        old = None
        if target.exists() or target.is_symlink():
            if not force:  # someone else finished first
                raise FetchError(f"{target} appeared while fetching; leaving it as it is")
            old = tmp / ".old"
            os.replace(target, old)
        os.replace(new, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(parent: Path, folder: str) -> None:
    """Temporary folders of earlier fetches that were killed (their process is gone)."""
    for p in parent.glob(f".fetch-{folder}-*-*"):
        m = re.match(rf"\.fetch-{re.escape(folder)}-(\d+)-", p.name)
        if not m or not p.is_dir():
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True)


# -- the one entry point ----------------------------------------------------------------------
def fetch(name: str, *, data_dir: str | os.PathLike | None = None, url: str | None = None, md5: str | None = None,
          force: bool = False, log: Callable[[str], None] = print, stream=None) -> Path:
    """Fetch data set ``name`` (cifar10, cifar100, cifar10c) into ``data_dir`` (default
    ``$ROBENCH_HOME/data``) and return the data folder (e.g. ``<data_dir>/cifar-10-batches-py``).

    ``url`` replaces the official location (an http(s) URL, a file:// URL or a local archive path);
    ``md5`` is the checksum of an archive that is not the official one (it needs ``url``). With the
    complete data folder already there this does nothing (and says so) unless ``force``, which
    replaces it only once the new copy is extracted and checked. Progress goes to ``stream``
    (default stderr), as a rewritten line on a terminal and plain lines otherwise; messages to ``log``.
    """
    src = _source(name)
    md5 = _check_md5(md5)
    if md5 is not None and url is None:
        raise BadInput("--md5 states the checksum of an archive that is not the official one; it needs --url "
                       f"(the official {src.archive} has MD5 {src.md5})")
    parent = Path(data_dir) if data_dir is not None else data_home()
    if parent.exists() and not parent.is_dir():
        raise BadInput(f"--dir {parent} is not a folder")
    local = _local_archive(url) if url is not None else None
    expected = md5 or src.md5
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create the data folder {parent}: {e.strerror or e}") from None
    with _lock(parent, name):
        _remove_stale(parent, src.folder)
        return _fetch_locked(src, parent, local, url, md5, expected, force, log, stream)


@contextlib.contextmanager
def _lock(folder: Path, name: str):
    """One fetch per data folder at a time: an exclusive ``flock`` on the folder itself, so no lock
    file is made or left behind (the OS releases the lock when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the checksum still catches a mixed download
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BadInput(f"another robench data fetch is running in {folder}; wait for it to finish "
                           f"(this one was for {name})") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fetch_locked(src: Source, parent: Path, local: Path | None, url: str | None, md5: str | None, expected: str,
                  force: bool, log: Callable[[str], None], stream) -> Path:
    name, target = src.name, parent / src.folder
    if is_present(name, parent) and not force:
        log(f"{name} is already present at {target}; nothing to do (--force fetches it again)")
        return target
    if (target.exists() or target.is_symlink()) and not force:
        raise BadInput(f"{target} exists but is not a complete {name} folder (it lacks some of "
                       f"{', '.join(src.required()[:3])} …); move it away or pass --force to replace it")
    stream = sys.stderr if stream is None else stream
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if local is not None:
        archive, downloaded = local, False
        log(f"checking {archive} (MD5 {expected})")
    else:
        source_url = url or src.url
        archive, downloaded = parent / f"{src.archive}.part", True
        if url is None or md5 is None:
            need = src.size - _part_size(archive)
            free = shutil.disk_usage(parent).free
            if free < need + src.size:  # the archive and its extracted copy
                raise BadInput(f"{parent} has {free / 1e9:.1f} GB free; {name} needs about "
                               f"{(need + src.size) / 1e9:.1f} GB (archive and extracted copy)")
        log(f"downloading {name} from {source_url} to {archive}")
        _download(source_url, archive, src.size if url is None else None, src.archive, stream, tty, log)
    actual = _md5_file(archive)
    if actual != expected:
        if downloaded:
            archive.unlink(missing_ok=True)
        what = "the official" if md5 is None else "the stated"
        raise FetchError(f"{archive.name if downloaded else archive} has MD5 {actual}, not {what} {expected}"
                         + ("; the download was deleted, run the fetch again" if downloaded else "")
                         + ("; a re-packed copy needs --md5 with its own checksum" if url is not None and md5 is None else ""))
    log(f"MD5 {actual} verified")
    try:
        folder = _extract(archive, src, parent, force, log, stream, tty)
    except FetchError as e:
        if downloaded:  # a resumed download of the same archive would be refused the same way
            archive.unlink(missing_ok=True)
            raise FetchError(f"{e}; the download was deleted") from None
        raise
    if downloaded:
        archive.unlink(missing_ok=True)
    log(f"{name} is ready at {folder}")
    return folder
