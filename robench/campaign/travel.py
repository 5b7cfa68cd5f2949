"""What a device call sends, and what the campaign's remaining tasks need of it.

A call sends the checkout's tracked and untracked-not-ignored files (``git ls-files --cached --others
--exclude-standard``) and the carried folder: at most :data:`LIMIT` (64 MiB) together. Tracked files
always travel, whether a window uses them or not, and every checkpoint a campaign installs is tracked
from then on: the zoo grows by ≈ 1.06 MiB per depth-20 member, 3.3 MiB per depth-56 and 6.7 MiB per
depth-110 one. The carried data is the other large part: the whole JPEG tarball (≈ 18.7 MiB) while a
remaining task trains, its test split alone (≈ 3.1 MiB) once only evaluations remain
(:mod:`robench.campaign.carried_data`). :func:`report` counts all of it as it is now, says which remaining
task needs which input, and projects the size of later calls as the remaining train tasks' checkpoints
land; :func:`describe` prints it.
"""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

from robench.campaign.carried_data import TARBALL, TEST_TARBALL
from robench.campaign.outdir import files_under

LIMIT = 64 << 20
FULL_DATA_BYTES = 19_568_327  # ../shared/data/cifar10-jpeg.tar.gz, for projections before it is carried
TEST_DATA_BYTES = 3_220_534   # its test split (carried_data.write_test_tarball)
CARD_BYTES = 6 << 10          # a checkpoint's JSON card, at most


def mib(b: float) -> str:
    return f"{b / (1 << 20):.1f} MiB"


def checkout_files(root: Path) -> list[tuple[str, int]] | None:
    """(path, bytes) of every file a device call sends from the checkout; None when git cannot say."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    files = []
    for name in out.stdout.decode("utf-8", "surrogateescape").split("\0"):
        p = root / name
        if name and p.is_file() and not p.is_symlink():
            files.append((name, p.stat().st_size))
    return files


def checkpoint_bytes(model: str, zoo: Path) -> int:
    """Bytes one checkpoint of ``model`` adds to the zoo: a shipped checkpoint's size where there is one,
    else 4 bytes per parameter and buffer (≈ 1.6 % over the parameters in this family) plus the card."""
    import model_zoo

    for p in sorted(zoo.glob(f"{model}*.safetensors")):
        if model_zoo.split_tag(p.stem)[0].split("__lam")[0] == model:
            return p.stat().st_size + CARD_BYTES
    return int(model_zoo.model_info(model).params * 4 * 1.016) + (16 << 10) + CARD_BYTES


@dataclasses.dataclass
class Need:
    task: str
    kind: str
    status: str
    train_data: bool          # needs the training half of the data
    wheels: bool              # needs the carried attack libraries (evaluations do)
    adds: int                 # bytes its checkpoints add to the tracked zoo once ingested (replacements: 0)
    reads: tuple[str, ...]    # zoo checkpoints an evaluation reads (tracked: they travel anyway)
    waits: tuple[str, ...]    # the jobs it needs that are not done yet (it cannot start in the next window)


def needs(plan, state: dict | None, zoo: Path) -> list[Need]:
    """The plan's tasks not done in ``state`` (a campaign.json), in priority order, with their inputs."""
    tasks = (state or {}).get("tasks") or {}

    def done(t) -> bool:
        rec = tasks.get(t.id) or {}
        return rec.get("status") == "done" and rec.get("fingerprint") == t.fingerprint

    all_tasks = plan.tasks()
    out = []
    for t in all_tasks:
        if done(t):
            continue
        status = (tasks.get(t.id) or {}).get("status", "pending")
        waits = tuple(n for n in t.job.needs if not all(done(x) for x in all_tasks if x.job.name == n))
        if t.job.kind == "train":
            adds = sum(0 if (zoo / f"{m.id}.safetensors").is_file() else checkpoint_bytes(m.model, zoo)
                       for m in t.members())
            out.append(Need(t.id, "train", status, True, False, adds, (), waits))
        else:
            out.append(Need(t.id, "eval", status, False, True, 0, tuple(t.spec.models), waits))
    return out


def report(root: Path, carry: Path, plan=None, state: dict | None = None) -> dict[str, Any] | None:
    """The bytes the next device call sends (checkout, of it the zoo's weights, and the carried folder by
    part) against :data:`LIMIT`; with a plan, the remaining tasks' inputs and the projected size of the calls
    after each remaining train task's checkpoints are installed. None when git cannot list the checkout."""
    files = checkout_files(root)
    if files is None:
        return None
    checkout = sum(b for _, b in files)
    weights = sum(b for n, b in files if n.startswith("model_zoo/weights/"))
    parts = {"data": 0, "wheels": 0, "state": 0, "other": 0}
    carried = [(n, p.stat().st_size) for n, p in files_under(carry)] if carry.is_dir() else []
    for n, b in carried:
        head = n.split("/")[0]
        parts[head if head in parts else "other"] += b
    data_now = {"full": (carry / "data" / TARBALL).is_file(), "test": (carry / "data" / TEST_TARBALL).is_file()}
    total = checkout + sum(parts.values())
    out: dict[str, Any] = {"limit": LIMIT, "total": total, "checkout": checkout, "zoo_weights": weights,
                           "carry": parts, "data": "full" if data_now["full"] else "test" if data_now["test"] else
                           "none", "over": total > LIMIT}
    if plan is None:
        return out
    zoo = root / "model_zoo" / "weights"
    remaining = needs(plan, state, zoo)
    out["remaining"] = [dataclasses.asdict(n) for n in remaining]
    out["train_data_needed"] = any(n.train_data and not n.waits for n in remaining)
    # later calls: the carry without its data, plus the data they will need (the whole tarball while a
    # train task remains, the test split once none does), plus the checkpoints landed by then
    base = total - parts["data"]
    grown = 0
    proj = []
    trains = [n for n in remaining if n.kind == "train"]
    for i, n in enumerate(trains):
        grown += n.adds
        later_trains = len(trains) > i + 1
        proj.append({"after": n.task, "adds": n.adds,
                     "with_training_data": base + grown + FULL_DATA_BYTES,
                     "test_split_only": base + grown + TEST_DATA_BYTES, "trains_left": later_trains})
    out["projection"] = proj
    return out


def describe(r: dict[str, Any] | None) -> list[str]:
    """Lines for the user: the next call's size by part, each remaining task's inputs, and the projection."""
    if r is None:
        return ["(git could not list the checkout: the size of a device call is unknown)"]
    c = r["carry"]
    data = {"full": "the whole tarball", "test": "the test split only", "none": "none"}[r["data"]]
    lines = [f"a device call sends {mib(r['total'])} of at most {mib(r['limit'])}: checkout {mib(r['checkout'])} "
             f"(zoo weights {mib(r['zoo_weights'])}), carried {mib(sum(c.values()))} (data {mib(c['data'])}: {data}, "
             f"wheels {mib(c['wheels'])}, state {mib(c['state'])}, other {mib(c['other'])})"]
    if r["over"]:
        lines.append(f"WARNING: {mib(r['total'] - r['limit'])} over the limit: the device tool will refuse the call. "
                     "Carry the test split only when no remaining task trains (--data test), drop a half-done run "
                     "folder from the state (its task starts again), or carry fewer wheels")
    if "remaining" not in r:
        return lines
    rem = r["remaining"]
    if not rem:
        return lines + ["the plan has no remaining task"]
    train = [n["task"] for n in rem if n["train_data"] and not n["waits"]]
    lines.append(f"{len(rem)} remaining tasks; the training data is needed next by "
                 f"{', '.join(train) if train else 'none'}"
                 + ("" if train or r["data"] != "full" else " (carry the test split only: --data test)"))
    for n in rem:
        wait = f"; waits for {', '.join(n['waits'])}" if n["waits"] else ""
        if n["kind"] == "train":
            lines.append(f"  {n['task']} ({n['status']}): trains; needs the training data; its checkpoints add "
                         f"{mib(n['adds'])} to every later call once installed{wait}")
        else:
            lines.append(f"  {n['task']} ({n['status']}): evaluates {', '.join(n['reads'])}; needs the test split "
                         f"and the wheels{wait}")
    for p in r.get("projection", []):
        with_data, test_only = p["with_training_data"], p["test_split_only"]
        lines.append(f"  once {p['after']} is installed: a call sends {mib(with_data)} with the training data"
                     f"{' (OVER)' if with_data > r['limit'] else ''}, {mib(test_only)} with the test split only"
                     f"{' (OVER)' if test_only > r['limit'] else ''}"
                     + ("" if p["trains_left"] else "; no train task is left then"))
    return lines
