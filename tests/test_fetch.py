"""robench data fetch: verified, atomic, idempotent, resumable; never the network.

Every archive is built by the test in the official layout (a few tiny batches) and served from a
local http.server on 127.0.0.1 in a daemon thread that the fixture shuts down, or passed as a path.
"""
import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from robench.cli import main
from robench.corruptions import CIFAR10C_NAMES, load_cifar10c
from robench.data import default_corruption_dir, fetched_dir, load_cifar, load_dataset, resolve_data_dir
from robench.errors import BadInput
from robench.fetch import SOURCES, FetchError, fetch, is_present
from synthetic_cifar import write_cifar10

ROOT = Path(__file__).resolve().parents[1]


# -- archives in the official layout ------------------------------------------------------------
def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar10_folder(root: Path, padding: int = 0) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 2)) for _ in range(5)]
    test = (rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 3))
    folder = write_cifar10(root, parts, test)
    if padding:  # a bigger archive, so a download takes a while
        (folder / "readme.html").write_bytes(rng.integers(0, 256, padding, dtype=np.uint8).tobytes())
    return folder, test[0]


def cifar10_archive(tmp_path: Path, padding: int = 0, extra=None) -> tuple[Path, str, np.ndarray]:
    """cifar-10-python.tar.gz as published (one top folder); ``extra(tar)`` may add members."""
    folder, test_images = _cifar10_folder(tmp_path / "src", padding)
    archive = tmp_path / "src" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        if extra is not None:
            extra(tar)
    return archive, _md5(archive), test_images


def cifar10c_archive(tmp_path: Path) -> tuple[Path, str, np.ndarray]:
    folder = tmp_path / "src" / "CIFAR-10-C"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in CIFAR10C_NAMES:
        np.save(folder / f"{name}.npy", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    labels = np.tile(np.arange(2), 5).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    archive = tmp_path / "src" / "CIFAR-10-C.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="CIFAR-10-C")
    return archive, _md5(archive), np.load(folder / "gaussian_noise.npy")


# -- a local server ----------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if srv.cut_after is not None:  # the connection drops mid-file, once
            data, srv.cut_after = data[:srv.cut_after], None
            self.close_connection = True
        for i in range(0, len(data), 16384):
            self.wfile.write(data[i:i + 16384])
            if srv.delay:
                time.sleep(srv.delay)


@pytest.fixture
def serve(monkeypatch):
    """serve({path: bytes}, cut_after=None, ranges=True, delay=0) -> (base url, server)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers = []

    def start(files, cut_after=None, ranges=True, delay=0.0):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.daemon_threads = True
        srv.files, srv.cut_after, srv.ranges, srv.delay, srv.requests = files, cut_after, ranges, delay, []
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}", srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _leftovers(parent: Path) -> list[str]:
    """What a fetch left in ``parent`` (a lock file would show: issue 24.7, none is ever made)."""
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# -- the happy path ----------------------------------------------------------------------------
def test_fetch_over_http_then_idempotent(tmp_path, serve):
    archive, md5, test_images = cifar10_archive(tmp_path)
    base, srv = serve({"/c10.tar.gz": archive.read_bytes()})
    logs, stream = [], io.StringIO()
    folder = fetch("cifar10", url=f"{base}/c10.tar.gz?download=1", md5=md5, log=logs.append, stream=stream)
    # not a terminal: plain progress lines, no carriage returns
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and lines[-1].startswith("extracting") and "(100 %)" in lines[-1]
    assert any(line.startswith("cifar-10-python.tar.gz:") and "(100 %)" in line for line in lines)
    home = fetched_dir("cifar10").parent
    assert folder == fetched_dir("cifar10") and home == Path(os.environ["ROBENCH_HOME"]) / "data"
    assert _leftovers(home) == ["cifar-10-batches-py"]  # no .part, no temporary folder, archive deleted
    assert is_present("cifar10") and any("verified" in m for m in logs)
    # the fetched copy is where --data-dir looks by default
    ds = load_dataset("cifar10", None)
    assert torch.equal(ds.images, torch.from_numpy(test_images)) and ds.source == str(folder)
    assert resolve_data_dir("cifar10", None) == folder and resolve_data_dir(None, None) is None
    assert load_dataset().name == "samples"  # no data options at all: the 20 bundled images
    assert len(load_cifar("cifar10", None, "train")) == 10
    # second call: nothing downloaded, says so
    logs.clear()
    assert fetch("cifar10", url=f"{base}/c10.tar.gz", md5=md5, log=logs.append) == folder
    assert len(srv.requests) == 1 and "already present" in logs[0]


def test_fetch_local_archive_into_dir_keeps_the_archive(tmp_path):
    archive, md5, _ = cifar10_archive(tmp_path)
    before = archive.read_bytes()
    folder = fetch("cifar10", data_dir=tmp_path / "d", url=str(archive), md5=md5, log=lambda m: None)
    assert folder == tmp_path / "d" / "cifar-10-batches-py" and is_present("cifar10", tmp_path / "d")
    assert archive.read_bytes() == before
    assert resolve_data_dir("cifar10", None) is None  # --dir elsewhere: the default place stays empty
    # a mirror of the official archive is checked against the official MD5
    with pytest.raises(FetchError, match=f"not the official {SOURCES['cifar10'].md5}.*needs --md5"):
        fetch("cifar10", data_dir=tmp_path / "e", url=archive.as_uri(), log=lambda m: None)
    assert not (tmp_path / "e" / "cifar-10-batches-py").exists()


def test_cifar10c_fetch_is_the_default_corruption_dir(tmp_path, serve):
    assert default_corruption_dir() is None
    with pytest.raises(BadInput, match="robench data fetch cifar10c"):
        load_cifar10c(None, "gaussian_noise", 1)
    archive, md5, images = cifar10c_archive(tmp_path)
    base, _ = serve({"/CIFAR-10-C.tar": archive.read_bytes()})
    fetch("cifar10c", url=f"{base}/CIFAR-10-C.tar", md5=md5, log=lambda m: None, stream=io.StringIO())
    assert default_corruption_dir() == fetched_dir("cifar10c")
    ds = load_cifar10c(None, "gaussian_noise", 3)
    assert torch.equal(ds.images, torch.from_numpy(images[4:6].transpose(0, 3, 1, 2).copy()))


# -- refusals leave nothing behind ------------------------------------------------------------
def test_checksum_refused_nothing_left(tmp_path, serve):
    archive, md5, _ = cifar10_archive(tmp_path)
    base, _ = serve({"/c.tgz": archive.read_bytes()})
    wrong = "0" * 32
    with pytest.raises(FetchError) as e:
        fetch("cifar10", data_dir=tmp_path / "d", url=f"{base}/c.tgz", md5=wrong, log=lambda m: None, stream=io.StringIO())
    msg = str(e.value)
    assert "\n" not in msg and f"has MD5 {md5}, not the stated {wrong}" in msg and "deleted" in msg
    assert _leftovers(tmp_path / "d") == []
    # a local archive with the wrong checksum is refused and left alone
    with pytest.raises(FetchError, match="not the stated"):
        fetch("cifar10", data_dir=tmp_path / "d", url=str(archive), md5=wrong, log=lambda m: None)
    assert archive.is_file() and _leftovers(tmp_path / "d") == []


def test_interrupted_download_resumes(tmp_path, serve):
    archive, md5, _ = cifar10_archive(tmp_path, padding=200_000)
    body = archive.read_bytes()
    base, srv = serve({"/c.tgz": body}, cut_after=len(body) // 3)
    parent = tmp_path / "d"
    with pytest.raises(FetchError) as e:
        fetch("cifar10", data_dir=parent, url=f"{base}/c.tgz", md5=md5, log=lambda m: None, stream=io.StringIO())
    assert "stopped after" in str(e.value) and "partial download kept" in str(e.value) and "resumes" in str(e.value)
    part = parent / "cifar-10-python.tar.gz.part"
    assert _leftovers(parent) == [part.name] and part.stat().st_size == len(body) // 3
    logs = []
    fetch("cifar10", data_dir=parent, url=f"{base}/c.tgz", md5=md5, log=logs.append, stream=io.StringIO())
    assert srv.requests[1][1] == f"bytes={len(body) // 3}-" and any("resuming" in m for m in logs)
    assert _leftovers(parent) == ["cifar-10-batches-py"] and is_present("cifar10", parent)


def test_server_without_ranges_starts_over(tmp_path, serve):
    archive, md5, _ = cifar10_archive(tmp_path)
    body = archive.read_bytes()
    base, srv = serve({"/c.tgz": body}, ranges=False)
    parent = tmp_path / "d"
    parent.mkdir()
    (parent / "cifar-10-python.tar.gz.part").write_bytes(b"garbage from an older attempt")
    logs = []
    fetch("cifar10", data_dir=parent, url=f"{base}/c.tgz", md5=md5, log=logs.append, stream=io.StringIO())
    assert any("starting" in m and "again" in m for m in logs) and _leftovers(parent) == ["cifar-10-batches-py"]


def _member(name: str, kind=tarfile.REGTYPE, linkname: str = "", data: bytes = b"x"):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return add


@pytest.mark.parametrize("extra, why", [
    (lambda p: _member(f"{p}/evil"), "absolute path"),
    (lambda p: _member("cifar-10-batches-py/../../evil"), "'..'"),
    (lambda p: _member("cifar-10-batches-py/evil", tarfile.SYMTYPE, f"{p}/evil"), "is a link"),
    (lambda p: _member("cifar-10-batches-py/evil", tarfile.LNKTYPE, "/etc/passwd"), "is a link"),
    (lambda p: _member("cifar-10-batches-py/evil", tarfile.FIFOTYPE), "special file"),
    (lambda p: _member("other/x", tarfile.CHRTYPE), "special file"),
])
def test_malicious_member_refused(tmp_path, extra, why):
    victim = tmp_path / "victim"
    archive, md5, _ = cifar10_archive(tmp_path, extra=extra(victim))
    parent = tmp_path / "a" / "b" / "d"
    with pytest.raises(FetchError) as e:
        fetch("cifar10", data_dir=parent, url=str(archive), md5=md5, log=lambda m: None)
    assert "\n" not in str(e.value) and why in str(e.value) and "refusing to extract anything" in str(e.value)
    assert _leftovers(parent) == [] and not victim.exists()
    assert not list(tmp_path.rglob("evil"))


def test_members_outside_the_data_folder_skipped(tmp_path):
    archive, md5, _ = cifar10_archive(tmp_path, extra=lambda tar: (_member("._cifar-10-batches-py")(tar),
                                                                    _member("other/evil")(tar)))
    logs = []
    fetch("cifar10", data_dir=tmp_path / "d", url=str(archive), md5=md5, log=logs.append)
    assert _leftovers(tmp_path / "d") == ["cifar-10-batches-py"] and not list((tmp_path / "d").rglob("evil"))
    assert any("2 outside cifar-10-batches-py/ skipped" in m for m in logs)


def test_http_errors_leave_nothing(tmp_path, serve):
    base, _ = serve({})
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch("cifar10", data_dir=tmp_path / "d", url=f"{base}/missing.tgz", md5="0" * 32, log=lambda m: None)
    assert _leftovers(tmp_path / "d") == []
    with pytest.raises(FetchError, match="could not download") as e:  # nothing listens on port 1
        fetch("cifar10", data_dir=tmp_path / "d", url="http://127.0.0.1:1/x.tgz", md5="0" * 32, log=lambda m: None)
    assert _leftovers(tmp_path / "d") == []
    # issue 24.7: offline, the error names the next step
    assert "offline? copy the archive here and run `robench data fetch cifar10 --url FILE` (add --md5 HEX" in str(e.value)
    assert "--data-dir DIR" in str(e.value) and "\n" not in str(e.value)


def test_not_the_layout_refused(tmp_path):
    folder, _ = _cifar10_folder(tmp_path / "src")
    (folder / "test_batch").unlink()
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(FetchError, match="lacks test_batch"):
        fetch("cifar10", data_dir=tmp_path / "d", url=str(archive), md5=_md5(archive), log=lambda m: None)
    assert _leftovers(tmp_path / "d") == []
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(FetchError, match="not a readable tar archive"):
        fetch("cifar10", data_dir=tmp_path / "d", url=str(junk), md5=_md5(junk), log=lambda m: None)
    assert _leftovers(tmp_path / "d") == []


def test_force_replaces_only_when_the_new_copy_is_good(tmp_path):
    archive, md5, _ = cifar10_archive(tmp_path)
    parent = tmp_path / "d"
    target = fetch("cifar10", data_dir=parent, url=str(archive), md5=md5, log=lambda m: None)
    (target / "mine.txt").write_text("old copy")
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py" / "batches.meta", arcname="cifar-10-batches-py/batches.meta")
    with pytest.raises(FetchError, match="lacks data_batch_1"):
        fetch("cifar10", data_dir=parent, url=str(bad), md5=_md5(bad), force=True, log=lambda m: None)
    assert (target / "mine.txt").read_text() == "old copy" and _leftovers(parent) == ["cifar-10-batches-py"]
    fetch("cifar10", data_dir=parent, url=str(archive), md5=md5, force=True, log=lambda m: None)
    assert not (target / "mine.txt").exists() and is_present("cifar10", parent)
    assert _leftovers(parent) == ["cifar-10-batches-py"]


def test_one_fetch_at_a_time(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    archive, md5, _ = cifar10_archive(tmp_path)
    parent = tmp_path / "d"
    parent.mkdir()
    held = os.open(parent, os.O_RDONLY)  # another fetch holds the folder
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BadInput, match="another robench data fetch is running in .*d; wait for it"):
            fetch("cifar10", data_dir=parent, url=str(archive), md5=md5, log=lambda m: None)
        assert not (parent / "cifar-10-batches-py").exists()
    finally:
        os.close(held)
    fetch("cifar10", data_dir=parent, url=str(archive), md5=md5, log=lambda m: None)
    assert is_present("cifar10", parent)
    assert _leftovers(parent) == ["cifar-10-batches-py"]  # no lock file left behind (issue 24.7)


def test_incomplete_existing_folder_refused(tmp_path):
    archive, md5, _ = cifar10_archive(tmp_path)
    (tmp_path / "d" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(BadInput, match="exists but is not a complete cifar10 folder.*--force"):
        fetch("cifar10", data_dir=tmp_path / "d", url=str(archive), md5=md5, log=lambda m: None)


# -- the command -------------------------------------------------------------------------------
def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("argv, says", [
    (["cifar10", "--md5", "abc", "--url", "x"], "32 hexadecimal digits"),
    (["cifar10", "--md5", "0" * 32], "needs --url"),
    (["cifar10", "--url", "ftp://host/x.tgz"], "unsupported scheme 'ftp'"),
    (["cifar10", "--url", "/nonexistent/x.tgz"], "no such archive file"),
    (["svhn"], "'svhn' is not one of 'cifar10', 'cifar100', 'cifar10c'"),
])
def test_cli_bad_input(tmp_path, capsys, argv, says):
    code, _, err = _cli(["data", "fetch", *argv, "--dir", str(tmp_path / "d")], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and says in err
    assert not (tmp_path / "d").exists()


def test_cli_fetch_and_list(tmp_path, capsys):
    archive, md5, _ = cifar10_archive(tmp_path)
    code, out, _ = _cli(["data", "fetch", "cifar10", "--url", str(archive), "--md5", md5], capsys)
    assert code == 0 and f"cifar10 is ready at {fetched_dir('cifar10')}" in out
    code, out, _ = _cli(["data", "fetch", "cifar10", "--url", str(archive), "--md5", md5], capsys)
    assert code == 0 and "already present" in out and "nothing to do" in out
    code, out, _ = _cli(["data", "list"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["cifar10", "present"] and lines[2].split()[:2] == ["cifar10c", "missing"]


def test_kill_mid_download_keeps_only_the_part(tmp_path, serve):
    """SIGTERM during a slow download: exit 130, no data folder, the partial archive kept and resumed."""
    archive, md5, _ = cifar10_archive(tmp_path, padding=1_500_000)
    base, srv = serve({"/c.tgz": archive.read_bytes()}, delay=0.01)
    parent = tmp_path / "d"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "data", "fetch", "cifar10", "--dir", str(parent),
                             "--url", f"{base}/c.tgz", "--md5", md5], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = parent / "cifar-10-python.tar.gz.part"
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size > 100_000) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "partial download kept" in out and "interrupted" in err and "Traceback" not in err
    assert _leftovers(parent) == [part.name] and 0 < part.stat().st_size < len(srv.files["/c.tgz"])
    srv.delay = 0.0
    fetch("cifar10", data_dir=parent, url=f"{base}/c.tgz", md5=md5, log=lambda m: None, stream=io.StringIO())
    assert srv.requests[-1][1] is not None and _leftovers(parent) == ["cifar-10-batches-py"]
