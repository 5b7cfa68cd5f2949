"""``campaign.json``: what a campaign has done across GPU windows, and the fingerprints it checks.

One JSON object (never code), rewritten atomically after every step::

    format      "robench-campaign/1"
    plan        {name, sha256, path}
    windows     one per run: window, started, ended (null while running: a killed run leaves it null),
                status, deadline_s, elapsed_s, device, fingerprints {code, data, versions}, steps
                {wheels, data, preflight, cuda_tests, probe}, tasks_run
    tasks       task id → {job, kind, fingerprint, status (done | partial | failed | pending), reason, window,
                estimate_s, wall_s, code, versions, command, files [{name, sha256, bytes}], run_files
                [{name, sha256, bytes}] (a half-done task's run folder), outputs {zoo stem → {model, lam, seed,
                tag, weights_sha256, card_sha256, test_acc, n_test}}}
    done        task ids finished
    remaining   [{task, reason}] in priority order

Fingerprints: ``code`` is the sha256 of robench's and the zoo's Python sources, ``cli.py`` and
``pyproject.toml``; ``data`` the sha256 of the carried tarball and of the unpacked test and training
batches; ``versions`` Python, torch, CUDA, cuDNN, the device's name and the attack libraries.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from robench.errors import BadInput
from robench.fileio import sha256_file

FORMAT = "robench-campaign/1"
STATUSES = ("done", "partial", "failed", "pending")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def repo_root() -> Path:
    """The folder holding robench/ and model_zoo/ (the copied working tree on the GPU machine)."""
    return Path(__file__).resolve().parents[2]


def code_fingerprint(root: Path | None = None) -> str:
    """sha256 of the code that can change a number: :func:`robench.provenance.code_fingerprint` of robench's
    and the zoo's sources under ``root``, with ``cli.py`` and ``pyproject.toml`` (which travel with them);
    independent of git (the working tree travels without .git)."""
    from robench.provenance import code_fingerprint as sources_fingerprint

    root = repo_root() if root is None else Path(root)
    h = hashlib.sha256(sources_fingerprint(root).encode())
    for name in ("cli.py", "pyproject.toml"):
        if (root / name).is_file():
            h.update(f"\0{name}\0".encode() + (root / name).read_bytes())
    return h.hexdigest()


def versions(device) -> dict[str, Any]:
    """What can change a number besides the code: interpreter, torch, CUDA/cuDNN, the device, libraries."""
    import numpy
    import torch

    from robench.machine import cpu_capability, cpu_name
    from robench.provenance import dist_version

    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
         else None, "art": dist_version("adversarial-robustness-toolbox", "missing"),
         "foolbox": dist_version("foolbox", "missing"),
         "cpu": f"{cpu_name()} ({cpu_capability()})"}
    if getattr(device, "type", str(device)).startswith("cuda"):
        v["device"] = torch.cuda.get_device_name(device)
        v["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        v["device"] = "cpu"
    return v


def versions_fingerprint(v: dict) -> str:
    keys = ("python", "torch", "numpy", "cuda", "cudnn", "art", "foolbox", "device")
    return hashlib.sha256(json.dumps({k: v.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()


def data_fingerprint(data_dir: Path, tarball: Path | None = None) -> dict[str, str | None]:
    """sha256 of the unpacked test batch (the cards' ``dataset.test_batch_sha256``), of the five training
    batches together (None when only the test split was carried), and of the tarball they came from."""
    folder = data_dir / "cifar-10-batches-py"
    train = [folder / f"data_batch_{i}" for i in range(1, 6)]
    h = hashlib.sha256()
    for p in train:
        if p.is_file():
            h.update(bytes.fromhex(sha256_file(p)))
    return {"test_batch_sha256": sha256_file(folder / "test_batch"),
            "train_sha256": h.hexdigest() if all(p.is_file() for p in train) else None,
            "tarball_sha256": sha256_file(tarball) if tarball is not None and tarball.is_file() else None}


def new_state(plan) -> dict:
    return {"format": FORMAT, "plan": {"name": plan.name, "sha256": plan.sha256, "path": str(plan.path)},
            "windows": [], "tasks": {}, "done": [], "remaining": []}


def load_state(path: str | os.PathLike, plan=None) -> dict:
    """A campaign.json, checked for shape (and against ``plan``'s name when given)."""
    p = Path(path)
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"campaign state {p} is unreadable: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"{p} is not a campaign state (format {FORMAT})")
    if not isinstance(state.get("tasks"), dict) or not isinstance(state.get("windows"), list) \
            or not isinstance(state.get("plan"), dict):
        raise BadInput(f"{p}: a campaign state has plan, windows and tasks")
    for tid, t in state["tasks"].items():
        if not isinstance(t, dict) or t.get("status") not in STATUSES:
            raise BadInput(f"{p}: task {tid!r} has no valid status (one of {', '.join(STATUSES)})")
        for key in ("files", "run_files"):
            for f in t.get(key) or []:
                if not (isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("sha256"), str)):
                    raise BadInput(f"{p}: task {tid!r} lists a malformed file {f!r}")
    if plan is not None and state["plan"].get("name") != plan.name:
        raise BadInput(f"{p} is the state of campaign {state['plan'].get('name')!r}, not of {plan.name!r} "
                       f"({plan.path}); use that plan or start without the old state")
    return state


def summarise(state: dict, plan) -> None:
    """Refresh ``done`` and ``remaining`` (priority order) from the tasks."""
    tasks = state["tasks"]
    state["done"] = [t.id for t in plan.tasks() if tasks.get(t.id, {}).get("status") == "done"]
    state["remaining"] = [{"task": t.id, "status": tasks.get(t.id, {}).get("status", "pending"),
                           "reason": tasks.get(t.id, {}).get("reason", "not started")}
                          for t in plan.tasks() if tasks.get(t.id, {}).get("status") != "done"]


def to_json(state: dict) -> str:
    return json.dumps(state, indent=1, sort_keys=False, default=str) + "\n"
