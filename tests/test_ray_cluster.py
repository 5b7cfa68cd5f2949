"""The Ray executor on a real two-node cluster started on this machine (head + worker, 1 CPU each,
token authentication as Ray 2.60 wants it; started once for the module and torn down by it):
the local executor's table, a node killed mid-sweep, models and data only the driver has, a node
running other code, GPUs that are not there, wrong addresses, unschedulable requests, errors with
their cause. Without Ray the cluster tests skip; what needs no cluster runs anyway."""
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import model_zoo
from robench.data import load_samples
from robench.errors import BadInput
from robench.sweep import load_config, plan_sweep, run_sweep, sweep_checks

from synthetic_cifar import write_cifar10

# Ray 2.60 wants token authentication for a second node to join, and reads RAY_AUTH_MODE once, when it
# is first imported (an earlier test of this session may import it): set it at collection, before any
# test runs. A token in the environment keeps ~/.ray untouched.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

VOLATILE = ["seconds", "timestamp"]


def _save(name="resnet20", seed=0, scale_fc=None):
    torch.manual_seed(seed)
    m = model_zoo.create_model(name)
    m.train()
    m(torch.rand(8, 3, 32, 32))  # non-trivial BN statistics so that predictions differ between images
    if scale_fc is not None:
        with torch.no_grad():
            m.fc.weight.mul_(scale_fc)
    return model_zoo.save(m.eval(), model_zoo.user_zoo() / model_zoo.zoo_stem(name, None))


def _config(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return load_config(p)


def _stable(df):
    return df.drop(columns=VOLATILE).reset_index(drop=True)


def _parts(out):
    return sorted(p.name for p in (Path(out) / "cells").glob("*.json") if not p.name.startswith(".tmp-"))


def _cli(args, timeout=180):
    return subprocess.run([sys.executable, "-c", "from robench.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


# -- the cluster ------------------------------------------------------------------------------
class TwoNodes:
    """A Ray cluster of two local nodes (separate raylets, object stores and temp dirs), the test
    process connected as the driver."""

    def __init__(self, workdir: Path) -> None:
        from ray.cluster_utils import Cluster

        # the workers' own ROBENCH_HOME: an empty zoo, so every model a test saves is the driver's alone
        self.env = {"ROBENCH_HOME": str(workdir / "worker_home"), "ROBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
        # a lost node is noticed within ~2 s (Ray's default: 15 s)
        fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                      "env_vars": self.env, "_system_config": fast})
        self.worker = self.add_node()

    def add_node(self, **env):
        return self.cluster.add_node(num_cpus=1, env_vars={**self.env, **env})

    @property
    def address(self) -> str:
        return self.cluster.address

    def kill(self, node) -> None:
        """SIGKILL the node's processes (raylet, workers, object store) and wait until the cluster knows."""
        import ray

        self.cluster.remove_node(node, allow_graceful=False)
        deadline = time.monotonic() + 60
        while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()) and time.monotonic() < deadline:
            time.sleep(0.2)

    def busy(self, node) -> bool:
        """A task holds the node's CPU right now."""
        import ray

        free = ray._private.state.available_resources_per_node()  # a resource fully in use is left out
        return node.node_id in free and free[node.node_id].get("CPU", 0.0) < 1.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("ray")
    # token authentication: see the module's top (set before Ray is first imported)
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'robench[ray]')")
    nodes = TwoNodes(work)
    here = os.getcwd()
    try:
        # Ray puts the driver's working directory first on the workers' sys.path: not the checkout
        os.chdir(work)
        try:
            ray.init(address=nodes.address, log_to_driver=False, logging_level=logging.ERROR)
        finally:
            os.chdir(here)
        yield nodes
    finally:
        ray.shutdown()
        nodes.cluster.shutdown()


@pytest.fixture
def zoo():
    _save()


@pytest.fixture
def samples_c(tmp_path):
    """A CIFAR-10 folder whose test split is the 20 samples, and a miniature CIFAR-10-C over it."""
    samples = load_samples()
    # severity s: the first 8 test images brightened by 10·s (CIFAR-10-C's labels are the test labels, per severity)
    first = samples.images[:8].numpy().astype(np.int16)
    imgs = np.concatenate([np.clip(first + 10 * s, 0, 255).astype(np.uint8) for s in range(5)]).transpose(0, 2, 3, 1)
    labels = np.concatenate([samples.labels[:8].numpy() for _ in range(5)])
    cdir = tmp_path / "cifar10c"
    cdir.mkdir()
    np.save(cdir / "fog.npy", np.ascontiguousarray(imgs))
    np.save(cdir / "labels.npy", labels)
    s = (samples.images.numpy(), samples.labels.numpy())
    write_cifar10(tmp_path / "clean", [s] * 5, s)
    return tmp_path / "clean", cdir


FULL = """
models = ["resnet20"]
n = 8
batch_size = 2
attacks = ["fgsm", "pgd", "deepfool"]
eps = ["2/255", "8/255"]
attack_params = {{ pgd = {{ steps = 3 }}, deepfool = {{ steps = 5 }} }}
corruptions = ["fog"]
severities = [1, 2]
data_dir = "{data}"
corruption_dir = "{corr}"
"""


# -- what needs no cluster -------------------------------------------------------------------
def test_executor_ray_without_ray_says_how_to_install(tmp_path, zoo):
    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["resnet20"]\nn = 2\nout = "o"\n')
    code = "import sys; sys.modules['ray'] = None; from robench.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "sweep", str(cfg), "--executor", "ray"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: the ray executor needs Ray, which is not installed here: pip install 'robench[ray]' (or use --executor local)"]
    assert not (tmp_path / "o").exists()


def test_ray_options_without_the_ray_executor_or_out_of_range_are_one_line(tmp_path, zoo):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'models = ["resnet20"]\ndataset = "samples"\nn = 2\nout = "{tmp_path / "o"}"\n')
    r = _cli(["sweep", cfg, "--retries", "2", "--ray-timeout", "5"])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --retries, --ray-timeout apply to the ray executor; add --executor ray"]
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'robench[ray]')")
    r = _cli(["sweep", cfg, "--executor", "ray", "--gpus-per-task", "0.5"])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: GPUs per task apply to device cuda, but the sweep's device is 'cpu'; set device = \"cuda\" in the "
        "config or drop --gpus-per-task"]
    r = _cli(["sweep", cfg, "--executor", "ray", "--retries", "-1"])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: retries must be a whole number in [0, 100], got -1"]
    assert not (tmp_path / "o").exists()


def test_only_the_first_n_images_are_shipped():
    from robench.data import load_dataset
    from robench.ray_executor import ship_data

    view = load_dataset("samples", n=3)
    assert view.images.untyped_storage().nbytes() == 20 * 3072  # first(n) is a view of the whole split
    shipped = ship_data(view)
    assert shipped.images.untyped_storage().nbytes() == 3 * 3072
    assert shipped.labels.untyped_storage().nbytes() == 3 * 8
    assert torch.equal(shipped.images, view.images) and shipped.sha256 == view.sha256


def test_an_attack_split_into_chunks_gives_the_flags_of_the_whole_run():
    """Splitting by image batches is exact because batch b is seeded by (cell seed, b) wherever it runs."""
    from robench.executors import run_attack_group
    from robench.plan import Cell, Unit
    from robench.ray_executor import split

    # a linear classifier right on every clean image, attacked by a PGD whose random start decides
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)).eval().requires_grad_(False)
    x = load_samples().as_float()[0]
    y = model(x).argmax(1)
    eps = [4 / 255, 8 / 255]
    common = dict(attack="pgd", eps=eps, backend="art", params={"steps": 1, "step_size": 1e-4}, seed=3, batch_size=3)
    whole = run_attack_group(model, x, y, **common)
    assert 0 < whole[0].flags.sum() < 20  # the random start flips some examples, not all
    cells = tuple(Cell(model="m", lam=None, kind="attack", perturbation="pgd", backend="art", eps=e, severity=None,
                       seed=3, n=20, dataset="samples") for e in eps)
    tasks = split([Unit(cells)], batch_size=3, batches_per_task=2)
    assert [(t.cells[0].eps, t.start, t.stop) for t in tasks] == [(e, s, min(20, s + 6)) for e in eps for s in (0, 6, 12, 18)]
    for k, e in enumerate(eps):
        parts = [run_attack_group(model, x[t.start:t.stop], y[t.start:t.stop], **{**common, "eps": [e]},
                                  first_batch=t.start // 3)[0].flags for t in tasks if t.cells[0].eps == e]
        np.testing.assert_array_equal(np.concatenate(parts), whole[k].flags)
    # numbered from 0 instead, the chunks would reuse batch 0's seed: other random starts, other flags
    renumbered = [run_attack_group(model, x[s:s + 6], y[s:s + 6], **{**common, "eps": [eps[0]]})[0].flags
                  for s in (0, 6, 12, 18)]
    assert not np.array_equal(np.concatenate(renumbered), whole[0].flags)


def test_ray_options_are_validated():
    from robench.ray_executor import RayOptions

    assert RayOptions().validate("cuda").gpus == 1.0 and RayOptions().validate("cpu").gpus == 0.0
    assert RayOptions(gpus=0.25).validate("cuda:0").gpus == 0.25
    for bad, match in ((RayOptions(gpus=0.5), "apply to device cuda"), (RayOptions(gpus=1.5), "fraction in"),
                       (RayOptions(retries=-1), "retries"), (RayOptions(batches_per_task=0), "batches per task"),
                       (RayOptions(timeout=0), "timeout")):
        with pytest.raises(BadInput, match=match):
            bad.validate("cpu" if "device cuda" in match else "cuda")


def test_a_node_with_other_code_or_libraries_is_named():
    from robench.ray_executor import differences

    driver = {"code": "a" * 64, "versions": {"robench": "0.1.0", "torch": "2.13.0+cpu", "numpy": "2.0"}}
    assert differences(driver, {**driver, "versions": {**driver["versions"], "torch": "2.13.0+cu124"}}) == []
    assert differences(driver, {"code": "b" * 64, "versions": {"robench": "0.1.0", "torch": "2.12.0", "numpy": "2.0"}}) \
        == [f"robench code fingerprint {'b' * 12}… (driver {'a' * 12}…)", "torch 2.12.0 (driver 2.13.0+cpu)"]


# -- on the cluster ---------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_ray_sweep_gives_the_local_table_with_models_and_data_only_the_driver_has(cluster, zoo, samples_c, tmp_path):
    data, corr = samples_c
    cfg = _config(tmp_path, FULL.format(data=data, corr=corr))
    ref_plan = plan_sweep(cfg, out=tmp_path / "local")
    ref = run_sweep(ref_plan, log=lambda m: None)
    ref_checks = sweep_checks(ref, ref_plan)
    plan = plan_sweep(cfg, out=tmp_path / "ray", executor="ray")
    # from here on only the driver's memory has the clean images (and only its zoo the model; the
    # workers are never told where CIFAR-10-C is: they get the slices)
    shutil.move(data, tmp_path / "gone_clean")
    lines = []
    df = run_sweep(plan, executor="ray", log=lines.append)
    assert lines[0].startswith("ray: 2 nodes checked") and "1 CPU each, 1 thread" in lines[0]
    # attacks in chunks of one batch (4) per ε (fgsm, pgd: 2 × 4 each; deepfool searches all ε at once: 4),
    # the clean cell and the 2 CIFAR-10-C cells whole
    assert "23 tasks" in lines[0], lines[0]
    pd.testing.assert_frame_equal(_stable(df), _stable(ref))
    assert df.loc[df["kind"] == "corruption", "dataset"].tolist() == ["cifar10c", "cifar10c"]
    checks = sweep_checks(df, plan, executor="ray")
    pd.testing.assert_frame_equal(checks.drop(columns="seconds"), ref_checks.drop(columns="seconds"))


@pytest.mark.timeout(300)
def test_a_second_sweep_in_one_session_runs_the_new_weights(cluster, tmp_path):
    cfg = _config(tmp_path, 'models = ["resnet20"]\ndataset = "samples"\nn = 20\nattacks = ["fgsm"]\n'
                            'corruptions = ["gaussian_noise"]\nseverities = [2]\n')
    out = {}
    for seed in (0, 1):
        _save(seed=seed)  # the same name, other weights: a worker keyed by name would reuse the old module
        local = run_sweep(plan_sweep(cfg, out=tmp_path / f"local{seed}"), log=lambda m: None)
        out[seed] = run_sweep(plan_sweep(cfg, out=tmp_path / f"ray{seed}", executor="ray"), executor="ray",
                              log=lambda m: None)
        pd.testing.assert_frame_equal(_stable(out[seed]), _stable(local))
    assert out[0]["weights_sha256"][0] != out[1]["weights_sha256"][0]
    assert out[0]["flags"].tolist() != out[1]["flags"].tolist()


SLOW = """
models = ["resnet20"]
dataset = "samples"
n = 12
batch_size = 3
attacks = ["pgd"]
eps = ["1/255", "2/255", "4/255"]
attack_params = { pgd = { steps = 12 } }
"""


def _kill_when_busy(nodes, node, out, total, events):
    """In a thread: kill ``node`` as soon as a task holds its CPU, noting how many cells were done."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if nodes.busy(node) and len(_parts(out)) < total:
            events["done_at_kill"] = len(_parts(out))
            nodes.kill(node)
            events["killed"] = True
            return
        time.sleep(0.02)


@pytest.mark.timeout(400)
def test_a_node_killed_mid_sweep_is_retried_to_the_same_table(cluster, zoo, tmp_path):
    cfg = _config(tmp_path, SLOW)
    ref = run_sweep(plan_sweep(cfg, out=tmp_path / "local"), log=lambda m: None)
    out = tmp_path / "ray"
    plan = plan_sweep(cfg, out=out, executor="ray")
    events = {}
    killer = threading.Thread(target=_kill_when_busy, args=(cluster, cluster.worker, out, 3, events))
    killer.start()
    try:
        df = run_sweep(plan, executor="ray", log=lambda m: None)
    finally:
        killer.join()
        cluster.worker = cluster.add_node()
    assert events.get("killed") and events["done_at_kill"] < 3
    pd.testing.assert_frame_equal(_stable(df), _stable(ref))


@pytest.mark.timeout(400)
def test_retries_exhausted_stop_with_one_line_and_keep_finished_cells(cluster, zoo, tmp_path):
    from robench.ray_executor import RayOptions

    out = tmp_path / "ray"
    plan = plan_sweep(_config(tmp_path, SLOW), out=out, executor="ray")
    events = {}
    killer = threading.Thread(target=_kill_when_busy, args=(cluster, cluster.worker, out, 3, events))
    killer.start()
    try:
        with pytest.raises(BadInput) as e:
            run_sweep(plan, executor="ray", log=lambda m: None, ray_options=RayOptions(retries=0))
    finally:
        killer.join()
        cluster.worker = cluster.add_node()
    assert events.get("killed")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("Ray lost resnet20 pgd[art] ε=") and "after 1 attempt (" in msg, msg
    assert any(k in msg for k in ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError")), msg
    assert f"{len(_parts(out))} finished cell" in msg and "rerun the same command to resume" in msg


@pytest.mark.timeout(300)
def test_a_node_running_other_code_is_refused_by_name(cluster, zoo, tmp_path):
    import robench

    alt = tmp_path / "alt"
    shutil.copytree(Path(robench.__file__).parent, alt / "robench", ignore=shutil.ignore_patterns("__pycache__"))
    with open(alt / "robench" / "plan.py", "a") as f:
        f.write("\n# another commit\n")
    node = cluster.add_node(PYTHONPATH=str(alt))
    try:
        plan = plan_sweep(_config(tmp_path, 'models = ["resnet20"]\ndataset = "samples"\nn = 4\n'), out=tmp_path / "o",
                          executor="ray")
        with pytest.raises(BadInput) as e:
            run_sweep(plan, executor="ray", log=lambda m: None)
    finally:
        cluster.kill(node)
    msg = str(e.value)
    assert "\n" not in msg and f"node {node.node_id[:8]})" in msg, msg
    assert "differs from the driver: robench code fingerprint" in msg, msg
    assert _parts(tmp_path / "o") == []


@pytest.mark.timeout(300)
def test_a_unit_failing_for_its_own_reason_fails_once_with_its_message_and_node(cluster, tmp_path):
    _save(scale_fc=1e38)  # finite weights whose logits overflow
    plan = plan_sweep(_config(tmp_path, 'models = ["resnet20"]\ndataset = "samples"\nn = 4\n'), out=tmp_path / "o",
                      executor="ray")
    with pytest.raises(BadInput) as e:
        run_sweep(plan, executor="ray", log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"resnet20 clean seed=0 failed on node {socket.gethostname()} (")
    assert msg.count("resnet20 clean seed=0") == 1 and "): the model returned non-finite logits" in msg, msg
    assert msg.endswith("(0 finished cells are kept)")


@pytest.mark.timeout(120)
def test_an_unschedulable_request_is_one_line_after_a_short_wait(cluster, zoo, tmp_path):
    from robench.ray_executor import RayOptions

    cfg = _config(tmp_path, 'models = ["resnet20"]\ndataset = "samples"\nn = 4\nthreads = 4\n')
    t0 = time.monotonic()
    with pytest.raises(BadInput, match=r"^no node of the Ray cluster can run a task needing 4 CPUs \(waited 2 s; "
                                       r"the cluster has .*1 CPU.*lower --threads"):
        run_sweep(plan_sweep(cfg, out=tmp_path / "o", executor="ray"), executor="ray", log=lambda m: None,
                  ray_options=RayOptions(timeout=2))
    assert time.monotonic() - t0 < 30


@pytest.mark.timeout(200)
def test_cuda_on_a_cluster_without_gpus_is_one_line_not_a_hang(cluster, zoo, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'models = ["resnet20"]\ndataset = "samples"\nn = 4\ndevice = "cuda"\nout = "{tmp_path / "o"}"\n')
    t0 = time.monotonic()
    r = _cli(["sweep", cfg, "--executor", "ray", "--address", cluster.address, "--ray-timeout", "30"])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device cuda, but the Ray cluster has no GPUs (2 nodes: "), lines
    assert time.monotonic() - t0 < 90
    assert _parts(tmp_path / "o") == []


@pytest.mark.timeout(200)
def test_a_wrong_address_is_one_line_after_a_short_wait(cluster, zoo, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'models = ["resnet20"]\ndataset = "samples"\nn = 4\nout = "{tmp_path / "o"}"\n')
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    t0 = time.monotonic()
    r = _cli(["sweep", cfg, "--executor", "ray", "--address", f"127.0.0.1:{port}"])
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    assert r.stderr.strip().splitlines() == [f"error: no Ray cluster at 127.0.0.1:{port}: Connection refused; start one "
                                             f"with `ray start --head` and pass the address it prints (see the README "
                                             f"section \"Running on a Ray cluster\")"]
    # something listens there, but it is not Ray (e.g. the dashboard's port): bounded by --ray-timeout
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        t0 = time.monotonic()
        r = _cli(["sweep", cfg, "--executor", "ray", "--address", f"127.0.0.1:{mute.getsockname()[1]}",
                  "--ray-timeout", "8"])
    assert r.returncode == 2 and time.monotonic() - t0 < 60, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Ray cluster answered at 127.0.0.1:"), lines
    assert "within 8 s" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(300)
def test_gpus_the_sweep_does_not_use_are_mentioned_and_gpus_torch_cannot_see_are_refused(cluster, zoo, tmp_path):
    node = cluster.cluster.add_node(num_cpus=1, num_gpus=1, env_vars=cluster.env)  # Ray believes; torch here has no CUDA
    try:
        lines = []
        cfg = 'models = ["resnet20"]\ndataset = "samples"\nn = 4\n'
        run_sweep(plan_sweep(_config(tmp_path, cfg), out=tmp_path / "cpu", executor="ray"), executor="ray",
                  log=lines.append)
        assert lines[0] == ("warning: the Ray cluster has 1 GPU but this sweep runs on the CPU (device = \"cpu\"); "
                            "set device = \"cuda\" in the config to use them")
        if torch.cuda.is_available():
            return
        plan = plan_sweep(_config(tmp_path, cfg + 'device = "cuda"\n', "g.toml"), out=tmp_path / "gpu", executor="ray")
        with pytest.raises(BadInput) as e:
            run_sweep(plan, executor="ray", log=lambda m: None)
        assert str(e.value) == (f"node {socket.gethostname()} ({node.node_ip_address}, node {node.node_id[:8]}) offers 1 "
                                f"GPU(s) to Ray but its torch {torch.__version__} sees 0 CUDA device(s)")
    finally:
        cluster.kill(node)


@pytest.mark.cuda
@pytest.mark.timeout(400)
def test_a_cuda_sweep_with_fractional_gpus_gives_the_local_cuda_table(cluster, zoo, tmp_path):
    from robench.ray_executor import RayOptions

    node = cluster.cluster.add_node(num_cpus=2, num_gpus=1, env_vars=cluster.env)
    try:
        cfg = _config(tmp_path, 'models = ["resnet20"]\ndataset = "samples"\nn = 20\nbatch_size = 5\ndevice = "cuda"\n'
                                'attacks = ["fgsm", "pgd"]\neps = ["2/255", "8/255"]\ncorruptions = ["gaussian_noise"]\n'
                                'severities = [3]\n')
        ref = run_sweep(plan_sweep(cfg, out=tmp_path / "local"), log=lambda m: None)
        lines = []
        df = run_sweep(plan_sweep(cfg, out=tmp_path / "ray", executor="ray"), executor="ray", log=lines.append,
                       ray_options=RayOptions(gpus=0.5))
        assert "1 CPU and 0.5 GPUs each" in lines[0], lines[0]
        assert set(df["device"]) == set(ref["device"]) and all(str(d).startswith("cuda") for d in df["device"])
        pd.testing.assert_frame_equal(_stable(df), _stable(ref))
    finally:
        cluster.kill(node)
