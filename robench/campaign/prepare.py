"""``robench campaign prepare DIR``: the git-ignored folder a GPU window carries besides the repository.

    DIR/data/cifar10-jpeg.tar.gz      the data, while a train task can start (the converter reads it from
                                      ../data beside itself) …
    DIR/data/cifar10-jpeg-test.tar.gz … or its test split alone, when none can or the whole tarball would
                                      take the call over 64 MiB (≈ 3 of 19 MiB; :mod:`~.carried_data`)
    DIR/tools/cifar10_from_jpeg.py    the converter to the official python layout
    DIR/wheels/*.whl, DIR/wheels/src  ART, Foolbox and their small dependencies; pyautoattack's sources
    DIR/manifest.json                 sha256 of each file, the checkout's git sha and code fingerprint, the
                                      sha256 of the local test batch the checkpoints will be verified on, and
                                      which data is carried
    DIR/state/                        what ``robench campaign ingest`` keeps for the next window

Nothing here is committed: DIR must be ignored by git (``/.carry/`` is in ``.gitignore``). ``prepare``
ends with what the next device call sends (:mod:`robench.campaign.travel`) against the 64 MiB limit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from robench.campaign import travel
from robench.campaign.carried_data import TARBALL, TEST_TARBALL, unpack_test_split, write_test_tarball
from robench.campaign.outdir import files_under
from robench.campaign.state import code_fingerprint, load_state, now, repo_root
from robench.errors import BadInput
from robench.fileio import atomic_write, atomic_write_text, sha256_file

DATA_CHOICES = ("auto", "full", "test")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def _copy(src: Path, dst: Path) -> None:
    if dst.is_file() and sha256_file(dst) == sha256_file(src):
        return
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp), what="carried file")


@dataclasses.dataclass
class Prepared:
    manifest: dict
    travel: dict | None  # robench.campaign.travel.report: what the next device call sends

    @property
    def over(self) -> bool:
        return bool(self.travel and self.travel["over"])


def _data_choice(data: str, plan, state: dict | None, root: Path, log: Callable[[str], None]) -> str:
    """``full`` or ``test``: ``auto`` is full when a remaining train task can start (the jobs it needs are
    done), else test; :func:`prepare` falls back to test when full would be over the limit."""
    if data not in DATA_CHOICES:
        raise BadInput(f"--data {data!r}: valid choices: {', '.join(DATA_CHOICES)}")
    if data != "auto":
        return data
    if plan is None:
        return "full"
    trains = [n.task for n in travel.needs(plan, state, root / "model_zoo" / "weights")
              if n.train_data and not n.waits]
    if trains:
        log(f"data: the whole tarball ({', '.join(trains)} can train)")
        return "full"
    log("data: the test split only (no remaining train task can start)")
    return "test"


def _carry_data(split: str, dest: Path, tarball: Path, expected: str | None, data_dir) -> dict | None:
    """Put the data into ``dest/data``: the whole tarball, or its test split checked against the CPU copy's
    test batch (sha256 ``expected``); → the tarball's image counts for the test split."""
    if split == "full":
        _copy(tarball, dest / "data" / TARBALL)
        (dest / "data" / TEST_TARBALL).unlink(missing_ok=True)
        return None
    counts = write_test_tarball(tarball, dest / "data" / TEST_TARBALL)
    with tempfile.TemporaryDirectory(prefix="robench-prepare-") as tmp:
        got = sha256_file(unpack_test_split(dest / "data" / TEST_TARBALL, dest / "tools" / "cifar10_from_jpeg.py",
                                            tmp, n_train=counts["train"]))
    if got != expected:
        (dest / "data" / TEST_TARBALL).unlink()
        raise BadInput(f"the test split decoded from {tarball} (sha256 {got[:12]}…) is not {data_dir}'s test "
                       f"batch ({expected[:12]}…); carry the whole tarball (--data full)")
    (dest / "data" / TARBALL).unlink(missing_ok=True)
    return counts


def prepare(dest: str | os.PathLike, *, tarball: str | os.PathLike, converter: str | os.PathLike,
            wheels_script: str | os.PathLike | None = None, wheels_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
            plan: str | os.PathLike | None = None, data: str = "auto",
            log: Callable[[str], None] = print) -> Prepared:
    """Build ``dest`` (see the module docstring); → the manifest written and what the next device call sends.
    ``wheels_script`` runs ``gpu_wheels.sh``-style (``bash SCRIPT DIR``); ``wheels_dir`` copies a folder of
    wheels instead; neither: no wheels. ``data_dir``: the CPU copy whose test batch ingest will verify
    against. ``data``: ``full`` (the whole tarball), ``test`` (its test split, checked against ``data_dir``'s
    test batch byte for byte) or ``auto``: the whole tarball when a train task of ``plan`` can start (state:
    ``dest/state/campaign.json``) and the call stays within the limit with it, else the test split."""
    from robench.campaign.plan import load_plan

    the_plan = load_plan(plan) if plan is not None else None
    state_path = Path(dest) / "state" / "campaign.json"
    state = load_state(state_path, the_plan) if the_plan is not None and state_path.is_file() else None
    root = Path(root) if root is not None else repo_root()
    split = _data_choice(data, the_plan, state, root, log)
    dest = Path(dest)
    dest_abs = dest.resolve()
    tarball, converter = Path(tarball), Path(converter)
    for p, what in ((tarball, "--tarball"), (converter, "--converter")):
        if not p.is_file():
            raise BadInput(f"{what} {p} does not exist")
    if wheels_script is not None and wheels_dir is not None:
        raise BadInput("give --wheels-script or --wheels, not both")
    if wheels_script is not None and not Path(wheels_script).is_file():
        raise BadInput(f"--wheels-script {wheels_script} does not exist")
    if wheels_dir is not None and not Path(wheels_dir).is_dir():
        raise BadInput(f"--wheels {wheels_dir} is not a folder")
    expected = None
    if data_dir is not None:
        test = Path(data_dir) / "cifar-10-batches-py" / "test_batch"
        if not test.is_file():
            raise BadInput(f"--data-dir {data_dir} holds no cifar-10-batches-py/test_batch")
        expected = sha256_file(test)
    if split == "test" and expected is None:
        raise BadInput("--data test needs --data-dir: the test split decoded from the tarball is checked against "
                       "that copy's test batch before it is carried")
    try:
        dest_abs.relative_to(root.resolve())
    except ValueError:
        raise BadInput(f"{dest} is outside the repository {root}; only the repository travels to the GPU machine") \
            from None
    dest.mkdir(parents=True, exist_ok=True)
    ignored = _git(root, "check-ignore", "-q", str(dest_abs))
    if ignored is not None and ignored.returncode == 1:
        raise BadInput(f"{dest} is not ignored by git; add /{dest_abs.relative_to(root.resolve())}/ to .gitignore or "
                       ".git/info/exclude (data and wheels are never committed)")
    _copy(converter, dest / "tools" / "cifar10_from_jpeg.py")
    counts = _carry_data(split, dest, tarball, expected, data_dir)
    wheels = dest / "wheels"
    if wheels_script is not None or wheels_dir is not None:
        tmp = dest / "wheels.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if wheels_script is not None:
            done = subprocess.run(["bash", str(wheels_script), str(tmp)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BadInput(f"{wheels_script} failed (exit {done.returncode}): "
                               f"{' '.join((done.stderr or done.stdout).split()[-30:])}")
        else:
            shutil.copytree(wheels_dir, tmp)
        shutil.rmtree(wheels, ignore_errors=True)
        os.replace(tmp, wheels)
    manifest, report = _finish(dest, root, the_plan, state, expected, data_dir, split, counts)
    if data == "auto" and split == "full" and report is not None and report["over"]:
        if expected is None:
            log(f"data: the whole tarball makes the call {travel.mib(report['total'])}, over the limit; with "
                "--data-dir the test split alone would be carried instead")
        else:
            waiting = [n["task"] for n in report.get("remaining", []) if n["train_data"] and not n["waits"]]
            log(f"data: the whole tarball makes the call {travel.mib(report['total'])}, over the limit: the test "
                f"split only ({', '.join(waiting)} wait for a call with room for the training data)")
            split = "test"
            counts = _carry_data(split, dest, tarball, expected, data_dir)
            manifest, report = _finish(dest, root, the_plan, state, expected, data_dir, split, counts)
    size = sum(b.stat().st_size for _, b in files_under(dest))
    log(f"prepared {dest}: {len(manifest['files'])} files, {travel.mib(size)}")
    for line in travel.describe(report):
        log(line)
    return Prepared(manifest, report)


def _finish(dest: Path, root: Path, plan, state, expected, data_dir, split: str, counts) -> tuple[dict, dict | None]:
    """Write the manifest; → it and what the next device call sends."""
    git = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    manifest = {"created": now(), "git_sha": git.stdout.decode().strip() if git is not None and git.returncode == 0
                else None, "dirty": bool(dirty is not None and dirty.stdout.strip()),
                "code_fingerprint": code_fingerprint(root),
                "data": {"test_batch_sha256": expected, "from": None if data_dir is None else str(data_dir),
                         "carried": split, "n_train": None if counts is None else counts["train"]},
                "files": {n: sha256_file(p) for n, p in files_under(dest)
                          if n.split("/")[0] in ("data", "tools", "wheels")}}
    atomic_write_text(dest / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest, travel.report(root, dest, plan, state)
