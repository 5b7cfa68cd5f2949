"""The Ray executor: a sweep's cells as tasks on a Ray cluster, the driver alone writing the store.

What the driver does, in order (nothing runs on the cluster before all of it passed):

1. **Connect** (:func:`connect`) to ``address`` (None: a new local instance). An address is probed
   first, in a child process bounded by ``timeout``, so a mistyped one is one line, not a hang.
2. **Preflight** (:func:`preflight`) every node that can take a task: it must run the same robench
   code (:func:`robench.provenance.code_fingerprint`), robench and library versions
   (:func:`robench.provenance.numeric_library_versions`; torch compared without its build suffix, and equal
   with it across the nodes), and, for ``device = "cuda"``, see the GPUs it offers Ray. A node that
   differs is refused with one line naming it and what differs; a cluster without GPUs for a cuda
   sweep, or without any node large enough for one task, is refused at once. A node that joins
   later is checked by its first task the same way.
3. **Ship** through the object store whatever a task reads, so nothing comes from a worker's disk:
   the first n images only (a copy, not a view of the whole split), each model's weights and card
   bytes (sha256-checked on the driver and again by ``model_zoo.load_entry`` on the worker), and the
   CIFAR-10-C slices (corruption, severity, first n) the plan needs. A worker caches models by
   their weights' sha256, so a second sweep in the same worker never reuses stale weights.
4. **Run** one task per clean or corruption cell, and per attack cell split by ε (fixed-ε attacks;
   a minimal-norm attack keeps its ε together: it searches once for all of them) and by image
   chunks of ``batches_per_task`` batches. Batch b of an attack is seeded ``batch_seed(seed, b)``
   wherever it runs (``run_attack_group(first_batch=)``), so the split changes no flag: the table
   equals the local executor's. Each task reserves ``threads`` CPUs and runs that many torch
   threads, plus ``gpus`` GPUs (a fraction packs several tasks on one GPU) for cuda. A cell is
   stored as soon as all its pieces are back; its provenance columns are computed inside the task
   (:func:`robench.provenance.provenance` on the worker), pieces that ran on different machines
   join their differing values with " + ".
5. **Failures.** A task lost with its worker or node is retried up to ``retries`` times; healthy
   tasks go on. A task that fails for its own reason (bad input, non-finite logits) is not retried:
   the sweep stops with the worker's one-line message and the node's name. When retries run out,
   or no node able to run the remaining tasks is left for ``timeout`` seconds, the sweep stops with
   one line; finished cells are kept, and the same command resumes.

:func:`run_checks_on_ray` runs the end-of-sweep checks as tasks too (one per data set, n and seed,
with the same CPUs, GPUs and threads), on shipped models and images.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from robench.errors import BadInput
from robench.plan import Cell, Unit

Log = Callable[[str], None]
INSTALL_HINT = "pip install 'robench[ray]'"
README_HINT = "see the README section \"Running on a Ray cluster\""


# -- options --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How a sweep uses a Ray cluster.

    ``address``: the cluster (``host:port`` of ``ray start --head``, ``auto``, ``ray://…``; None
    starts a local instance). ``gpus``: GPUs each task reserves with device cuda (None: 1; a
    fraction in (0, 1) packs several tasks on one GPU). ``retries``: how often a task lost with its
    worker or node is re-run. ``batches_per_task``: image batches in one attack task (more → fewer,
    longer tasks). ``timeout``: seconds to wait for the cluster to answer, for the preflight and
    for a node that can run a task, before failing with one line."""

    address: str | None = None
    gpus: float | None = None
    retries: int = 3
    batches_per_task: int = 1
    timeout: float = 60.0

    def validate(self, device: str) -> "RayOptions":
        cuda = str(device).startswith("cuda")
        gpus = self.gpus
        if gpus is not None:
            if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not math.isfinite(gpus) or gpus <= 0 \
                    or (gpus > 1 and gpus != int(gpus)):
                raise BadInput(f"GPUs per task must be a fraction in (0, 1] or a whole number, got {gpus!r}")
            if not cuda:
                raise BadInput(f"GPUs per task apply to device cuda, but the sweep's device is {device!r}; "
                               f"set device = \"cuda\" in the config or drop --gpus-per-task")
        for name, v, lo, hi in (("retries", self.retries, 0, 100), ("batches per task", self.batches_per_task, 1, 10**6)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise BadInput(f"{name} must be a whole number in [{lo}, {hi}], got {v!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) \
                or not 0 < self.timeout <= 3600:
            raise BadInput(f"the Ray timeout must be a number of seconds in (0, 3600], got {self.timeout!r}")
        return dataclasses.replace(self, gpus=(1.0 if gpus is None else float(gpus)) if cuda else 0.0)


# -- connecting -----------------------------------------------------------------------------
def import_ray():
    """The ray module, or BadInput saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BadInput(f"the ray executor needs Ray, which is not installed here: {INSTALL_HINT} "
                       "(or use --executor local)") from None
    return ray


_PROBE = """
import logging, sys
try:
    import ray
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
    print(len([n for n in ray.nodes() if n.get("Alive")]))
except BaseException as e:
    msg = " ".join(str(e).split()) or type(e).__name__
    print(f"{type(e).__name__}: {msg[:300]}", file=sys.stderr)
    sys.exit(3)
"""


def _probe_address(address: str, timeout: float) -> None:
    """Fail fast and in one line where ``ray.init(address)`` would hang or print pages: nothing
    listening at host:port, or no Ray cluster answering there within ``timeout`` seconds."""
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", address)
    if m:
        try:
            with socket.create_connection((m.group(1), int(m.group(2))), timeout=min(timeout, 10.0)):
                pass
        except OSError as e:
            raise BadInput(f"no Ray cluster at {address}: {e.strerror or type(e).__name__}; start one with "
                           f"`ray start --head` and pass the address it prints ({README_HINT})") from None
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    except subprocess.TimeoutExpired:
        raise BadInput(f"no Ray cluster answered at {address} within {timeout:g} s; is it the address `ray start "
                       f"--head` printed (GCS port, 6379 by default), and is RAY_AUTH_MODE set as on the cluster? "
                       f"({README_HINT})") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        raise BadInput(f"cannot join the Ray cluster at {address}: {why[:400]}")


def connect(options: RayOptions):
    """Import Ray and join the cluster of ``options`` (a new local instance for address None),
    unless this process already has a Ray session (a test's, a notebook's). → the ray module."""
    import logging

    ray = import_ray()
    if ray.is_initialized():
        return ray
    if options.address is not None:
        _probe_address(options.address, options.timeout)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if options.address is None:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=options.address, **kwargs)
    except Exception as e:  # noqa: BLE001 — Ray raises many types here; each becomes one line
        raise BadInput(f"cannot join a Ray cluster at {options.address or 'a new local instance'}: "
                       f"{type(e).__name__}: {_first_line(e)}") from None
    return ray


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _condense(message: str, limit: int = 200) -> str:
    """Ray's multi-line notices ("Raylet is terminated… Last 20 lines of the Raylet logs: …") →
    their first line, cut after the sentence that passes ``limit`` characters."""
    line = _first_line(message) if message.strip() else message
    if len(line) <= limit:
        return line
    cut = line.find(". ", limit // 2)
    return line[: cut + 1] if 0 < cut < limit * 2 else line[:limit] + "…"


@contextlib.contextmanager
def one_line_notices() -> Any:
    """While a sweep waits on the cluster, Ray's own notices to the driver (a node lost, a task
    retried) are printed one line each instead of pages of raylet log. Ray has no switch for this:
    its notice printer (``ray._private.worker.print_to_stdstream``) is wrapped for the duration and
    left alone where a Ray version lacks it."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def condensed(data, *args, **kwargs):
        if isinstance(data, dict) and data.get("pid") == "raylet" and isinstance(data.get("lines"), list):
            data = {**data, "lines": [_condense(str(m)) for m in data["lines"]]}
        return original(data, *args, **kwargs)

    ray_worker.print_to_stdstream = condensed
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


# -- nodes ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Node:
    id: str
    name: str
    cpus: float
    gpus: float

    def fits(self, cpus: float, gpus: float) -> bool:
        return self.cpus >= cpus and self.gpus >= gpus


def node_label(hostname: str, ip: str, node_id: str) -> str:
    return f"{hostname} ({ip}, node {node_id[:8]})"


def alive_nodes(ray) -> list[Node]:
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        out.append(Node(id=n["NodeID"], name=node_label(n.get("NodeManagerHostname", "?"), n.get("NodeManagerAddress", "?"),
                                                          n["NodeID"]),
                        cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0))))
    return out


def _need(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPU{'s' if cpus != 1 else ''}" + (f" and {gpus:g} GPU{'s' if gpus != 1 else ''}" if gpus else "")


def wait_for_fit(ray, cpus: float, gpus: float, timeout: float) -> list[Node]:
    """The alive nodes that can run a task needing ``cpus`` and ``gpus``; waits up to ``timeout``
    seconds for one (a node may be joining), then BadInput naming what the cluster has."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = alive_nodes(ray)
        fit = [n for n in nodes if n.fits(cpus, gpus)]
        if fit:
            return fit
        if time.monotonic() >= deadline:
            have = "; ".join(f"{n.name}: {_need(n.cpus, n.gpus)}" for n in nodes) or "no node"
            raise BadInput(f"no node of the Ray cluster can run a task needing {_need(cpus, gpus)} (waited {timeout:g} s; "
                           f"the cluster has {have}); lower --threads or --gpus-per-task, or add a larger node")
        time.sleep(0.5)


# -- the node check (runs on every node, and in every worker's first task) ---------------------
def this_node() -> str:
    import ray

    return node_label(socket.gethostname(), ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())


def node_facts(cuda: bool) -> dict:
    """What the driver compares: code fingerprint, versions, and the CUDA devices torch sees."""
    from robench.provenance import code_fingerprint, numeric_library_versions

    facts = {"node": this_node(), "code": code_fingerprint(), "versions": numeric_library_versions()}
    if cuda:
        import torch

        facts["cuda_devices"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return facts


def expected_facts() -> dict:
    """The driver's side of :func:`differences`."""
    from robench.provenance import code_fingerprint, numeric_library_versions

    return {"code": code_fingerprint(), "versions": numeric_library_versions()}


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def differences(driver: dict, node: dict) -> list[str]:
    """What differs between a node and the driver, one phrase each (empty: nothing)."""
    out = []
    if node.get("code") != driver.get("code"):
        out.append(f"robench code fingerprint {str(node.get('code'))[:12]}… (driver {str(driver.get('code'))[:12]}…)")
    mine, theirs = driver.get("versions", {}), node.get("versions", {})
    for lib in dict.fromkeys([*mine, *theirs]):
        a, b = str(mine.get(lib, "not installed")), str(theirs.get(lib, "not installed"))
        if (_public(a) != _public(b)) if lib == "torch" else a != b:
            out.append(f"{lib} {b} (driver {a})")
    return out


_CHECKED: dict[str, bool] = {}  # per worker process: expected code fingerprint → this node matched it


def check_this_node(expected: dict) -> None:
    """In a task: refuse to compute anything on a node whose code or libraries differ from the
    driver's (a node that joined after the preflight)."""
    if _CHECKED.get(expected["code"]):
        return
    diff = differences(expected, node_facts(cuda=False))
    if diff:
        raise BadInput(f"node {this_node()} differs from the driver: {'; '.join(diff)}; install the driver's "
                       f"robench and libraries there (refused rather than mixed into the table)")
    _CHECKED[expected["code"]] = True


def prepare_this_node(expected: dict) -> None:
    """First thing in a task: the node check, then the allocator setting the CLI process has
    (:func:`robench.machine.keep_freed_memory`), so a worker runs a cell as fast as ``robench eval``."""
    from robench.machine import keep_freed_memory

    check_this_node(expected)
    keep_freed_memory()


def _facts_task(cuda: bool) -> dict:
    return node_facts(cuda)


def preflight(ray, *, cuda: bool, cpus: float, gpus: float, timeout: float, log: Log | None = None) -> list[Node]:
    """Check every node that can run a task against the driver before any task runs (see the
    module doc); → those nodes. BadInput with one line on the first problem."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes(ray)
    total_gpus = sum(n.gpus for n in nodes)
    if cuda and total_gpus == 0:
        raise BadInput(f"device cuda, but the Ray cluster has no GPUs ({len(nodes)} node{'s' if len(nodes) != 1 else ''}: "
                       f"{', '.join(n.name for n in nodes)}); set device = \"cpu\" in the config, or start GPU "
                       f"nodes (`ray start` finds their GPUs)")
    if not cuda and total_gpus > 0 and log is not None:
        log(f"warning: the Ray cluster has {total_gpus:g} GPU{'s' if total_gpus != 1 else ''} but this sweep runs "
            f"on the CPU (device = \"cpu\"); set device = \"cuda\" in the config to use them")
    fit = wait_for_fit(ray, cpus, gpus, timeout)
    driver = expected_facts()
    probe = ray.remote(_facts_task)
    refs = {probe.options(num_cpus=0, num_gpus=0, max_retries=0,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n.id, soft=False)).remote(cuda): n
            for n in fit}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    if late:
        ray.cancel(late[0], force=True)
        raise BadInput(f"node {refs[late[0]].name} did not answer robench's preflight within {timeout:g} s; "
                       f"check that it is healthy (`ray status`) or remove it")
    torch_builds: dict[str, str] = {}
    for ref in refs:
        node = refs[ref]
        try:
            facts = ray.get(ref)
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e
            raise BadInput(f"node {node.name} cannot run robench: {type(cause).__name__}: {_first_line(cause)}; "
                           f"install the driver's robench ({driver['versions']['robench']}, code "
                           f"{driver['code'][:12]}…) and libraries on every node") from None
        diff = differences(driver, facts)
        if diff:
            raise BadInput(f"node {node.name} differs from the driver: {'; '.join(diff)}; install the same robench and "
                           f"libraries on every node (refused rather than mixed into one table)")
        torch_builds.setdefault(facts["versions"].get("torch", "?"), node.name)
        if cuda and facts.get("cuda_devices", 0) < node.gpus:
            raise BadInput(f"node {node.name} offers {node.gpus:g} GPU(s) to Ray but its torch "
                           f"{facts['versions'].get('torch')} sees {facts.get('cuda_devices', 0)} CUDA device(s)")
    if len(torch_builds) > 1:
        raise BadInput("the nodes run different torch builds (" + ", ".join(f"{v} on {n}" for v, n in torch_builds.items())
                       + "); install one build on every node")
    return fit


# -- what gets shipped ------------------------------------------------------------------------
def ship_data(data):
    """The data set holding exactly its first ``len(data)`` images in its own storage: a view of
    the whole split would drag all of it through the object store."""
    return dataclasses.replace(data, images=data.images.clone(), labels=data.labels.clone())


def model_payload(loaded) -> dict:
    """A zoo model's weights and card bytes (checked against the sha256 the plan verified), for
    :func:`model_zoo.load_entry` on a worker."""
    weights = Path(loaded.path)
    card = weights.with_name(weights.name[: -len(".safetensors")] + ".json")
    wbytes, cbytes = weights.read_bytes(), card.read_bytes()
    if hashlib.sha256(wbytes).hexdigest() != loaded.weights_sha256 or hashlib.sha256(cbytes).hexdigest() != loaded.card_sha256:
        raise BadInput(f"{weights} or its card changed since the sweep was planned; rerun the command")
    return {"stem": weights.name[: -len(".safetensors")], "weights": wbytes, "card": cbytes,
            "weights_sha256": loaded.weights_sha256}


# -- worker side ------------------------------------------------------------------------------
_MODELS: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()  # per worker: (use, sha256, device) → module
_MODEL_SLOTS = 4
_INPUTS: dict = {}  # per worker: (data sha256, n, device) → Inputs of the current sweep


def _load_shipped(payload: dict, device, *, for_eval: bool):
    """The shipped model, verified by ``model_zoo.load_entry`` from a private temporary copy;
    prepared as the local executor prepares it (``for_eval``) or as ``run_checks`` loads it."""
    key = ("eval" if for_eval else "checks", payload["weights_sha256"], str(device))
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    import model_zoo

    from robench.models import ModelCache

    if hashlib.sha256(payload["weights"]).hexdigest() != payload["weights_sha256"]:
        raise BadInput(f"the weights of {payload['stem']} arrived corrupted (sha256 mismatch)")
    with tempfile.TemporaryDirectory(prefix="robench-shipped-") as tmp:
        path = Path(tmp) / (payload["stem"] + ".safetensors")
        path.write_bytes(payload["weights"])
        (Path(tmp) / (payload["stem"] + ".json")).write_bytes(payload["card"])
        entry = model_zoo.load_entry(path, map_location="cpu")
    if entry.card.weights_sha256 != payload["weights_sha256"]:
        raise BadInput(f"the card shipped with {payload['stem']} names other weights")
    if for_eval:
        module = ModelCache(device, modules={payload["stem"]: entry.model}).get(payload["stem"], None).module
    else:
        module = entry.model.eval()
    _MODELS[key] = module
    while len(_MODELS) > _MODEL_SLOTS:
        _MODELS.popitem(last=False)
    return module


def _inputs(data, device):
    from robench.executors import Inputs

    key = (data.sha256, len(data), str(device))
    if _INPUTS.get("key") != key:
        _INPUTS.clear()
        _INPUTS.update(key=key, inputs=Inputs(data, device))
    return _INPUTS["inputs"]


@dataclasses.dataclass(frozen=True)
class Task:
    """Cells scored together on images ``start:stop``: one clean or corruption cell, one ε of a
    fixed-ε attack, or every ε of a minimal-norm attack."""

    cells: tuple
    start: int
    stop: int

    def label(self) -> str:
        unit = Unit(self.cells).label()
        n = self.cells[0].n
        return unit if (self.start, self.stop) == (0, n) else f"{unit} images {self.start}..{self.stop - 1}"


@dataclasses.dataclass(frozen=True)
class Piece:
    """A task's result for one cell: the flags of images ``start:start+len(flags)`` and where and
    how they were computed."""

    cell_id: str
    start: int
    flags: np.ndarray
    seconds: float
    data_sha256: str
    context: dict
    norm: str | None = None
    steps: int | None = None
    backend: str | None = None
    data_label: str | None = None
    params: dict | None = None


def run_task(task: Task, data, model: dict, corrupted, *, device: str, batch_size: int, threads: int,
             expected: dict, tf32: bool = False) -> list[Piece]:
    """Body of one Ray task (on a worker): check the node, evaluate the task's cells on the shipped
    model and images → one :class:`Piece` per cell. A BadInput names the node it happened on."""
    try:
        return _run_task(task, data, model, corrupted, device=device, batch_size=batch_size, threads=threads,
                         expected=expected, tf32=tf32)
    except BadInput as e:
        if str(e).startswith("node "):
            raise
        msg = " ".join(str(e).split())
        for c in task.cells:  # the cell's own label once is enough
            msg = msg[len(c.label()) + 2:] if msg.startswith(c.label() + ": ") else msg
        raise BadInput(f"{task.label()} failed on node {this_node()}: {msg}") from None


def _run_task(task: Task, data, model: dict, corrupted, *, device: str, batch_size: int, threads: int,
              expected: dict, tf32: bool = False) -> list[Piece]:
    from robench.data import data_label, label_for
    from robench.devices import determinism, resolve_device, sync
    from robench.executors import _correct, run_attack_group, torch_threads
    from robench.models import to_format
    from robench.provenance import provenance

    prepare_this_node(expected)
    with torch_threads(threads), determinism(resolve_device(device), tf32=tf32):  # as the local executor runs
        module = _load_shipped(model, device, for_eval=True)
        inputs = _inputs(data, device)
        dev = inputs.device
        first = task.cells[0]
        if first.kind == "attack":
            x, y = inputs.clean(first.n)
            results = run_attack_group(module, x[task.start:task.stop], y[task.start:task.stop], attack=first.perturbation,
                                       eps=[c.eps for c in task.cells], backend=first.backend, params=dict(first.params),
                                       seed=first.seed, batch_size=batch_size, first_batch=task.start // batch_size)
            context = provenance(dev, tf32=tf32)
            return [Piece(cell_id=c.cell_id(), start=task.start, flags=r.flags, seconds=r.seconds,
                          data_sha256=data.sha256, context=context, norm=r.norm, steps=r.steps, backend=r.backend,
                          data_label=data_label(data), params=r.params)
                    for c, r in zip(task.cells, results)]
        sync(dev)
        t0 = time.perf_counter()
        if first.kind == "clean":
            x, y = inputs.clean(first.n)
            data_sha = data.sha256
        elif first.dataset == "cifar10c":
            x, y = corrupted.as_float(dev)
            x, data_sha = to_format(x), corrupted.sha256
        else:
            x, y, data_sha = inputs.corrupted(first)
        flags = _correct(module, x, y, batch_size, first.label(), lambda k: None)
        sync(dev)
        label = label_for("cifar10c", data_sha, None) if first.dataset == "cifar10c" else data_label(data)
        return [Piece(cell_id=first.cell_id(), start=0, flags=flags, seconds=time.perf_counter() - t0,
                      data_sha256=data_sha, context=provenance(dev, tf32=tf32), data_label=label)]


# -- splitting and assembling -----------------------------------------------------------------
def split(units: Iterable[Unit], *, batch_size: int, batches_per_task: int) -> list[Task]:
    """Units → tasks (see the module doc). Chunks start at multiples of ``batch_size`` so every
    batch keeps its index, and with it its attack seed."""
    from robench.attacks.registry import get_spec

    chunk = batch_size * batches_per_task
    tasks = []
    for u in units:
        first = u.cells[0]
        n = first.n
        if u.kind != "attack":
            tasks += [Task((c,), 0, n) for c in u.cells]
            continue
        groups = [u.cells] if get_spec(first.perturbation).minimal else [(c,) for c in u.cells]
        tasks += [Task(tuple(g), s, min(n, s + chunk)) for g in groups for s in range(0, n, chunk)]
    return tasks


def merge_context(contexts: list[dict]) -> dict:
    """Provenance of a cell computed in pieces: a value all pieces share, else the distinct values
    joined with " + " (e.g. two hosts); the latest timestamp."""
    out = {}
    for key in dict.fromkeys(k for c in contexts for k in c):
        values = [c.get(key) for c in contexts]
        if all(v == values[0] for v in values):
            out[key] = values[0]
        elif key == "timestamp":
            out[key] = max(str(v) for v in values)
        else:
            out[key] = " + ".join(sorted({str(v) for v in values}))
    return out


def assemble(cell: Cell, pieces: list[Piece], loaded) -> dict:
    """The record of a cell from all its pieces (flags in image order, seconds summed)."""
    from robench.executors import _record

    pieces = sorted(pieces, key=lambda p: p.start)
    at = 0
    for p in pieces:
        if p.start != at:
            raise RuntimeError(f"{cell.label()}: pieces do not cover images {at}.. in order; this is a robench bug")
        at += len(p.flags)
    shas = {p.data_sha256 for p in pieces}
    if len(shas) != 1:
        raise RuntimeError(f"{cell.label()}: pieces ran on different data ({', '.join(sorted(shas))})")
    last = pieces[-1]
    return _record(cell, loaded, np.concatenate([p.flags for p in pieces]), seconds=sum(p.seconds for p in pieces),
                   context=merge_context([p.context for p in pieces]), data_sha=last.data_sha256,
                   batch_size=cell.batch_size, data_label=last.data_label, norm=last.norm, steps=last.steps,
                   backend=last.backend, params=last.params)


# -- the driver -------------------------------------------------------------------------------
def _task_failure(ray, e: Exception, what: str, *, retries: int, keep: str) -> Exception:
    """An exception from ray.get → what the sweep raises: the worker's own BadInput (with its
    node), an import failure on a node as one line, a robench bug as itself (with the worker's
    traceback), and Ray's own failures as one line. ``keep``: what is kept (appended)."""
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        if isinstance(cause, BadInput):
            return BadInput(f"{_first_line(cause)} ({keep.split('; ')[0]})")
        if isinstance(cause, ImportError):
            return BadInput(f"node {getattr(e, 'ip', '?')} cannot import robench's code for {what}: "
                            f"{type(cause).__name__}: {_first_line(cause)}; install the driver's robench on every node")
        if cause is not None:
            try:
                return e.as_instanceof_cause()
            except Exception:  # noqa: BLE001 — a cause Ray cannot rebuild: keep Ray's own error
                return e
        return e
    tries = f"{retries + 1} attempt{'s' if retries else ''}"
    return BadInput(f"Ray lost {what} after {tries} ({type(e).__name__}: {_condense(str(e), 120)}); {keep}"
                    + ("; --retries N allows more attempts" if retries < 100 else ""))


def _kept(done: int) -> str:
    return f"{done} finished cell{'s are' if done != 1 else ' is'} kept; rerun the same command to resume"


def _wait_all(ray, futures: dict, on_result: Callable[[Any, Any], None], *, cpus: float, gpus: float,
              retries: int, timeout: float, keep: Callable[[], str]) -> None:
    """Collect every future as it finishes; stop with one line when a task fails for good or no
    node that could run the remaining tasks has been alive for ``timeout`` seconds."""
    lost_since = None
    try:
        with one_line_notices():
            while futures:
                ready, _ = ray.wait(list(futures), num_returns=1, timeout=2.0)
                if not ready:
                    if any(n.fits(cpus, gpus) for n in alive_nodes(ray)):
                        lost_since = None
                    elif lost_since is None:
                        lost_since = time.monotonic()
                    elif time.monotonic() - lost_since > timeout:
                        raise BadInput(f"no node of the Ray cluster that can run a task ({_need(cpus, gpus)}) has been "
                                       f"alive for {timeout:g} s; {keep()}")
                    continue
                what = futures.pop(ready[0])
                try:
                    value = ray.get(ready[0])
                except ray.exceptions.RayError as e:
                    raise _task_failure(ray, e, what.label(), retries=retries, keep=keep()) from None
                on_result(what, value)
    finally:
        for f in futures:
            ray.cancel(f, force=True)


def run_ray(units: list[Unit], data, store, ray, *, spec, options: RayOptions, log: Log | None = None,
            on_cell: Callable[[Cell, dict], None] | None = None) -> None:
    """Run ``units`` on the cluster ``ray`` is connected to (see the module doc), putting each
    finished cell into ``store``. ``spec``: the sweep's validated spec (device, batch size,
    threads, corruption dir). ``on_cell`` is called after each cell is stored (e.g.
    :class:`robench.progress.CellProgress`); without it, ``log`` gets a line per cell."""
    from robench.executors import _done_line
    from robench.models import ModelCache

    cuda = spec.device.startswith("cuda")
    threads = int(spec.threads or 1)
    gpus = float(options.gpus or 0.0)
    cells = [c for u in units for c in u.cells]
    if not cells:
        return
    nodes = preflight(ray, cuda=cuda, cpus=threads, gpus=gpus, timeout=options.timeout, log=log)
    cache = ModelCache("cpu")  # the driver's copy: the rows' model columns, and the bytes to ship
    loaded = {pair: cache.get(*pair) for pair in dict.fromkeys((c.model, c.lam) for c in cells)}
    data_ref = ray.put(ship_data(data))
    model_refs = {pair: ray.put(model_payload(m)) for pair, m in loaded.items()}
    slice_refs = {}
    for c in cells:
        if c.kind == "corruption" and c.dataset == "cifar10c" and (c.perturbation, c.severity) not in slice_refs:
            from robench.corruptions import load_cifar10c

            slice_refs[(c.perturbation, c.severity)] = ray.put(load_cifar10c(spec.corruption_dir, c.perturbation,
                                                                             c.severity, n=c.n))
    tasks = split(units, batch_size=spec.batch_size, batches_per_task=options.batches_per_task)
    if log is not None:
        log(f"ray: {len(nodes)} node{'s' if len(nodes) != 1 else ''} checked ({', '.join(n.name for n in nodes)}); "
            f"{len(tasks)} tasks of {_need(threads, gpus)} each, {threads} thread{'s' if threads != 1 else ''}, "
            f"up to {options.retries} retr{'ies' if options.retries != 1 else 'y'} each")
    remote = ray.remote(run_task).options(num_cpus=threads, num_gpus=gpus, max_retries=options.retries,
                                          retry_exceptions=False)
    expected = expected_facts()
    dev = "cuda" if cuda else spec.device  # a GPU task sees its GPU as cuda:0
    by_id = {c.cell_id(): c for c in cells}
    need = collections.Counter(c.cell_id() for t in tasks for c in t.cells)
    pieces: dict[str, list[Piece]] = collections.defaultdict(list)
    total, finished = len(cells), [0]

    def on_result(task: Task, result: list[Piece]) -> None:
        for p in result:
            pieces[p.cell_id].append(p)
            if len(pieces[p.cell_id]) == need[p.cell_id]:
                cell = by_id[p.cell_id]
                record = assemble(cell, pieces.pop(p.cell_id), loaded[(cell.model, cell.lam)])
                store.put(cell, record)
                finished[0] += 1
                if on_cell is not None:
                    on_cell(cell, record)
                elif log is not None:
                    log(_done_line(finished[0], total, cell, record))

    futures = {}
    for t in tasks:
        first = t.cells[0]
        corrupted = slice_refs.get((first.perturbation, first.severity)) if first.dataset == "cifar10c" else None
        futures[remote.remote(t, data_ref, model_refs[(first.model, first.lam)], corrupted, device=dev,
                              batch_size=spec.batch_size, threads=threads, expected=expected, tf32=spec.tf32)] = t
    _wait_all(ray, futures, on_result, cpus=threads, gpus=gpus, retries=options.retries, timeout=options.timeout,
              keep=lambda: _kept(finished[0]))


# -- checks on the cluster ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ChecksJob:
    dataset: str
    n: int
    seed: int

    def label(self) -> str:
        return f"the checks of {self.dataset} n={self.n} seed={self.seed}"


def _checks_task(table, models: dict, data, *, device: str, batch_size: int, threads: int, transfer_source: str | None,
                 expected: dict):
    """Body of one checks task: ``robench.checks.run_checks`` on shipped models and images."""
    import ray

    from robench.checks import run_checks
    from robench.executors import torch_threads

    try:
        prepare_this_node(expected)
        with torch_threads(threads):
            payloads = {k: ray.get(ref) for k, ref in models.items()}
            # with the file's sha256, which the table's rows record (the checks compare them)
            modules = {k: (_load_shipped(p, device, for_eval=False), p["weights_sha256"]) for k, p in payloads.items()}
            given = {(data.name, len(data)): data} if data is not None else None
            return run_checks(table, models=modules, device=device, data=given, transfer_source=transfer_source,
                              batch_size=batch_size)
    except BadInput as e:
        if str(e).startswith("node "):
            raise
        raise BadInput(f"checks failed on node {this_node()}: {' '.join(str(e).split())}") from None


def run_checks_on_ray(table, ray, *, spec, data, options: RayOptions, transfer_source: str | None = "resnet20",
                      log: Log | None = None):
    """``robench.checks.run_checks(table)`` as Ray tasks, one per (dataset, n, seed) of the table,
    each with the sweep's CPUs (= threads), GPUs and device; → the same checks table. Models are
    shipped from the driver's zoo; a transfer source the driver lacks is skipped ("no transfer
    source")."""
    import model_zoo
    import pandas as pd

    from robench.checks import order_checks
    from robench.models import ModelCache
    from robench.results import nan_to_none

    cuda = spec.device.startswith("cuda")
    threads = int(spec.threads or 1)
    gpus = float(options.gpus or 0.0)
    preflight(ray, cuda=cuda, cpus=threads, gpus=gpus, timeout=options.timeout)
    cache = ModelCache("cpu")
    refs: dict[Any, Any] = {}
    for m, lam in dict.fromkeys(zip(table["model"].astype(str), (nan_to_none(v) for v in table["lam"]))):
        loaded = cache.get(m, lam if model_zoo.model_info(m).takes_lam else None)
        refs[(m, lam)] = ray.put(model_payload(loaded))
    if transfer_source is not None:
        try:
            refs[transfer_source] = ray.put(model_payload(cache.get(transfer_source, None)))
        except BadInput:
            transfer_source = None
    shipped = ship_data(data) if data is not None else None
    data_ref = ray.put(shipped)
    remote = ray.remote(_checks_task).options(num_cpus=threads, num_gpus=gpus, max_retries=options.retries,
                                              retry_exceptions=False)
    expected = expected_facts()
    dev = "cuda" if cuda else spec.device
    futures = {}
    keys = zip(table["dataset"].astype(str), table["n"].astype(int), table["seed"].astype(int))
    for ds, n, seed in dict.fromkeys(keys):
        part = table[(table["dataset"] == ds) & (table["n"] == n) & (table["seed"] == seed)]
        models = {k: r for k, r in refs.items() if k == transfer_source
                  or (isinstance(k, tuple) and k in set(zip(part["model"].astype(str), (nan_to_none(v) for v in part["lam"]))))}
        futures[remote.remote(part, models, data_ref, device=dev, batch_size=spec.batch_size, threads=threads,
                              transfer_source=transfer_source, expected=expected)] = _ChecksJob(ds, n, seed)
    frames = []
    _wait_all(ray, futures, lambda job, df: frames.append(df), cpus=threads, gpus=gpus, retries=options.retries,
              timeout=options.timeout, keep=lambda: "the sweep's table is written; rerun the checks with `robench check`")
    return order_checks(pd.concat(frames, ignore_index=True))


__all__ = ["INSTALL_HINT", "Node", "Piece", "RayOptions", "Task", "assemble", "connect", "differences", "import_ray",
           "merge_context", "model_payload", "preflight", "run_checks_on_ray", "run_ray", "run_task", "ship_data",
           "split"]
