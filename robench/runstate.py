"""A training run's folder: per-member epoch checkpoints behind one commit point, and a lock.

Layout of a run folder::

    state.json                          the commit point: configuration, last finished epoch, and per
                                        member its status, history and checkpoint file (with sha256)
    members/<member>.e<epoch>.safetensors   one member's weights, BatchNorm statistics and momentum
    metrics.csv                         every member's history (a view of state.json, rewritten)
    .lock                               held while a run uses the folder

An epoch ends by writing every member's checkpoint to a new file (named by the epoch), then replacing
``state.json`` (the one commit), then deleting checkpoint files it no longer names. A kill at any
moment leaves ``state.json`` naming complete files of one epoch, so ``--resume`` never trains an
epoch twice nor mixes two epochs. Every file is written through :func:`robench.fileio.atomic_write`
(a fresh temporary name, then a rename), so a link planted at a fixed name is never written through;
checkpoints are read only as regular files inside the folder whose sha256 matches ``state.json``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from robench.errors import BadInput
from robench.fileio import atomic_write, atomic_write_text, regular_file_inside, sha256_file

FORMAT = 2  # 1: state.safetensors + state.json written one after the other (robench before the packed trainer)
STATE = "state.json"
MEMBERS = "members"
_FILE = re.compile(r"^members/[A-Za-z0-9][A-Za-z0-9_.\-]*\.e[0-9]{4,}\.safetensors$")


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (flock) for the run: a second ``robench train`` on the folder is refused.

    The lock file is opened without truncation and never through a symlink."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(run_dir / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise BadInput(f"cannot open the lock file {run_dir / '.lock'}: {e.strerror or e} "
                       "(a symlink there is refused)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BadInput(f"another robench train is using the run folder {run_dir}; wait for it to end") from None
        yield
    finally:
        os.close(fd)


def read_state(run_dir: Path) -> dict | None:
    """The committed state of ``run_dir``, or None when it has none."""
    path = run_dir / STATE
    if not os.path.lexists(path):
        return None
    try:
        state = json.loads(regular_file_inside(path, run_dir, "run state").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"{path} is unreadable ({e}); pass --force to start the run again") from None
    if not isinstance(state, dict):
        raise BadInput(f"{path} is not a robench train state; pass --force to start the run again")
    if state.get("format") != FORMAT:
        raise BadInput(f"{path} was written by an older robench train (state format {state.get('format', 1)}) "
                       f"whose epoch checkpoints cannot be resumed safely; pass --force to start the run again")
    members = state.get("members")
    if not (isinstance(state.get("epoch"), int) and isinstance(state.get("config"), dict)
            and isinstance(members, dict) and all(isinstance(m, dict) for m in members.values())):
        raise BadInput(f"{path} is not a robench train state (epoch, config or members missing); "
                       "pass --force to start the run again")
    return state


def member_state_tensors(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """A member's resumable tensors: its state dict, and each parameter's momentum buffer by name."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, p in model.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{name}"] = buf.detach().cpu().contiguous()
    return tensors


def write_member(run_dir: Path, member_id: str, epoch: int, model: nn.Module,
                 opt: torch.optim.Optimizer) -> dict:
    """Write one member's checkpoint for ``epoch`` (not yet committed); returns its state.json entry."""
    from safetensors.torch import save_file

    rel = f"{MEMBERS}/{member_id}.e{epoch:04d}.safetensors"
    if (run_dir / MEMBERS).is_symlink():
        raise BadInput(f"{run_dir / MEMBERS} is a symlink; robench train writes its checkpoints only into a real "
                       "folder inside the run folder")
    tensors = member_state_tensors(model, opt)
    atomic_write(run_dir / rel, lambda tmp: save_file(tensors, tmp))
    return {"file": rel, "sha256": sha256_file(run_dir / rel)}


def load_member(run_dir: Path, entry: dict, model: nn.Module, opt: torch.optim.Optimizer, device) -> None:
    """Load a committed checkpoint into ``model`` (in place: the parameters stay the same tensors) and
    the optimizer's momentum buffers; the file must be the one state.json names, byte for byte."""
    from safetensors.torch import load_file

    rel = entry.get("file")
    if not (isinstance(rel, str) and _FILE.match(rel)):
        raise BadInput(f"{run_dir / STATE} names an invalid checkpoint file {rel!r}; pass --force to start again")
    path = regular_file_inside(run_dir / rel, run_dir, "epoch checkpoint")
    if sha256_file(path) != entry.get("sha256"):
        raise BadInput(f"{path} does not match the sha256 in {run_dir / STATE}; pass --force to start again")
    tensors = load_file(str(path), device=str(device))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in model.named_parameters():
        buf = tensors.get(f"momentum.{name}")
        if buf is not None:
            # in the parameter's own memory format, so the fused update keeps one layout
            opt.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)


def commit(run_dir: Path, state: dict) -> None:
    """The commit point: ``state.json`` replaced in one rename."""
    atomic_write_text(run_dir / STATE, json.dumps(state, indent=1))


def referenced(state: dict | None) -> set[str]:
    if not state:
        return set()
    return {m["state"]["file"] for m in state["members"].values() if isinstance(m.get("state"), dict)}


def remove_unreferenced(run_dir: Path, state: dict | None) -> None:
    """Delete member checkpoints the committed state does not name (older epochs, or an epoch a kill
    interrupted before its commit) and temporaries a killed write left behind."""
    folder = run_dir / MEMBERS
    if not folder.is_dir() or folder.is_symlink():
        return
    keep = referenced(state)
    for p in folder.iterdir():
        rel = f"{MEMBERS}/{p.name}"
        if rel not in keep and (p.name.startswith(".tmp-") or _FILE.match(rel)) and not p.is_dir():
            p.unlink(missing_ok=True)


def write_metrics(run_dir: Path, state: dict) -> None:
    """``metrics.csv``: one row per member and epoch, the member's id first."""
    rows = [{"member": mid, **row} for mid, m in state["members"].items() for row in m.get("history", [])]
    if not rows:
        return
    fields = ["member"] + [k for k in rows[0] if k != "member"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())
