"""Preflight ceilings, the ≤ 2-minute probe, and the time estimates the campaign schedules by.

Ceilings (CUDA only; skipped on a CPU): a large bf16 matrix product in TFLOP/s and a device-to-device
copy in GB/s (bytes read + written), each the mean of timed repetitions after warm-ups.

The probe, on the run's device:
- ``train``: ms per model-step (one optimizer step of one member on one batch) for K members of the
  depth-20 model and of the deep model, timed by :func:`train_step_ms`: the packed trainer's own step
  (:func:`robench.train.time_pack_step`: K members packed as ``robench train`` packs them, the plan's
  recipe, batch and ``amp``; on CUDA one stream per member and the step replayed as a CUDA graph), so
  the estimates measure what the campaign's train tasks run;
- ``eval``: PGD-20 at 8/255 through :func:`robench.evaluate` (clean + attack cells, its own batching and
  memory format) in images/s, against its floor: a hand loop of one clean forward and 21 forward+backward
  passes with the input gradient only, on the same images and batch size;
- ``memory_format``: that floor in channels_last and in NCHW.

:func:`estimate_train` and :func:`estimate_eval` turn these numbers (or the plan's defaults where the probe
has none) into seconds.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from robench.campaign.plan import TEST_SIZE, Estimates, Job, ProbeSettings
from robench.packed import Member

# forward+backward passes per image (a forward alone counts 1/3) for each attack at its defaults;
# an unknown attack counts UNKNOWN_PASSES (conservative)
FORWARD = 1 / 3
ATTACK_PASSES: dict[str, Callable[[dict, float], float]] = {
    "fgsm": lambda p, e: 1 + FORWARD,
    "ifgsm": lambda p, e: p.get("steps", 20) + FORWARD,
    "pgd": lambda p, e: p.get("steps", 20) + FORWARD,
    "pgd10": lambda p, e: p.get("steps", 10) + FORWARD,
    "pgd_l2": lambda p, e: p.get("steps", 20) + FORWARD,
    "apgd_ce": lambda p, e: p.get("steps", 100) * p.get("restarts", 1) + FORWARD,
    "square": lambda p, e: p.get("queries", 1000) * p.get("restarts", 1) * FORWARD,
    "autoattack_lite": lambda p, e: 2 * p.get("steps", 100) + p.get("queries", 1000) * FORWARD,
}
UNKNOWN_PASSES = 2000.0


def autoattack_survivors(eps: float) -> float:
    """Guess of the fraction of images APGD-CE leaves for APGD-T, FAB-T and Square at ε on an undefended
    CIFAR model (conservative: 0.7 at 1/255, halving as ε doubles)."""
    return min(1.0, 0.7 * (1 / 255) / max(eps, 1e-9))


def _autoattack(p: dict, eps: float) -> float:
    steps, targets, queries = p.get("steps", 100), p.get("target_classes", 9), p.get("queries", 5000)
    # APGD-CE on all; on the survivors APGD-T and FAB-T (≈ 2 passes per iteration) per target, Square
    return steps + autoattack_survivors(eps) * (targets * steps * 3 + queries * FORWARD) + FORWARD


ATTACK_PASSES["autoattack"] = _autoattack
ATTACK_PASSES["autoattack_art"] = lambda p, e: 3 * _autoattack(p, e)  # ART's host-side loop (issue 22)
CHECK_PASSES_PER_IMAGE = 24.0  # zero gradient, determinism, PGD transfer from resnet20 (per image of the table)
CHECK_PASSES_FIXED = 100 * 2 * 21.5  # PGD-20 on 100 images at 64/255, and its transfer source, per model


# -- ceilings --------------------------------------------------------------------------------------------
def ceilings(device, *, matmul_n: int = 8192, copy_bytes: int = 2 << 30, reps: int = 10) -> dict[str, Any]:
    """bf16 matrix-product TFLOP/s and device copy GB/s on a CUDA device; skipped elsewhere."""
    import torch

    if device.type != "cuda":
        return {"status": "skipped", "reason": f"no CUDA device ({device})"}
    out: dict[str, Any] = {"status": "ok"}
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    s = start.elapsed_time(end) / 1000 / reps
    out["matmul_bf16_tflops"] = round(2 * matmul_n ** 3 / s / 1e12, 1)
    out["matmul_n"] = matmul_n
    del a, b
    x = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start.record()
    for _ in range(reps):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize(device)
    s = start.elapsed_time(end) / 1000 / reps
    out["copy_gbps"] = round(2 * copy_bytes / s / 1e9, 1)
    out["copy_bytes"] = copy_bytes
    del x, y
    torch.cuda.empty_cache()
    return out


# -- probe -----------------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_ms(model_name: str, k: int, *, device, batch: int, steps: int, warmup: int, amp: bool,
                  recipe: str = "paper") -> float:
    """ms per model-step of a pack of ``k`` members of ``model_name``: :func:`robench.train.time_pack_step`,
    the trainer's own step (CUDA graphs on a CUDA device, as ``robench train`` runs it)."""
    from robench.train import time_pack_step

    try:
        return time_pack_step(model_name, k, recipe=recipe, batch_size=batch, steps=steps, warmup=warmup,
                              device=device, amp=amp, cuda_graphs=None)
    finally:
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()  # K = 16 packs leave their graph pools; the next measurement starts clean


def floor_s(model, x, y, batch: int, *, channels_last: bool, steps: int = 20) -> float:
    """Seconds of one clean forward and ``steps`` + 1 forward+backward passes (input gradient only) over
    ``x`` in batches: what PGD-20 plus its scoring cannot go below."""
    import torch
    import torch.nn.functional as F

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = x.device

    def run(x, y) -> None:
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch].contiguous(memory_format=fmt), y[i:i + batch]
            with torch.no_grad():
                model(xb)
            for _ in range(steps + 1):
                xg = xb.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xg), yb), xg)

    run(x[:batch], y[:batch])  # warm-up on one batch
    _sync(device)
    t0 = time.perf_counter()
    run(x, y)
    _sync(device)
    return time.perf_counter() - t0


def run_probe(settings: ProbeSettings, *, device, data_dir, threads: int | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """The probe's numbers (see the module docstring); pieces past ``budget_s`` are left out and say so."""
    import torch

    t_start = time.perf_counter()
    over = lambda: time.perf_counter() - t_start > settings.budget_s  # noqa: E731
    out: dict[str, Any] = {"how": "robench.train.time_pack_step: K members packed as robench train packs them"
                                  + (" (one stream each, the step replayed as a CUDA graph)" if device.type == "cuda"
                                     else ""),
                           "device": str(device), "train_batch": settings.train_batch, "amp": settings.amp,
                           "recipe": settings.recipe, "train": {}, "skipped": []}
    for model_name, ks in ((settings.model, settings.ks), (settings.deep_model, settings.deep_ks)):
        for k in ks:
            if over():
                out["skipped"].append(f"train {model_name} K={k}: past the probe's budget")
                continue
            try:
                ms = train_step_ms(model_name, k, device=device, batch=settings.train_batch, steps=settings.steps,
                                   warmup=settings.warmup, amp=settings.amp, recipe=settings.recipe)
            except Exception as e:  # one failed measurement leaves the others (and the defaults) in place
                out["skipped"].append(f"train {model_name} K={k}: {type(e).__name__}: {e}")
                log(f"probe: {model_name} K={k} failed: {type(e).__name__}: {e}")
                continue
            out["train"].setdefault(model_name, {})[str(k)] = round(ms, 4)
            log(f"probe: {model_name} K={k}: {ms:.3f} ms per model-step (batch {settings.train_batch})")
    if not over():
        try:
            _probe_eval(settings, device=device, data_dir=data_dir, threads=threads, out=out, log=log, over=over)
        except Exception as e:
            out["skipped"].append(f"eval: {type(e).__name__}: {e}")
            log(f"probe: PGD-20 eval failed: {type(e).__name__}: {e}")
    else:
        out["skipped"].append("eval: past the probe's budget")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out["seconds"] = round(time.perf_counter() - t_start, 2)
    return out


def _probe_eval(settings: ProbeSettings, *, device, data_dir, threads, out: dict, log: Callable[[str], None],
                over: Callable[[], bool]) -> None:
    """PGD-20 through robench.evaluate against its floor, and the floor in both memory formats (NCHW left out
    when the probe's budget is spent)."""
    import model_zoo
    import robench
    from robench.data import load_dataset

    net = model_zoo.create_model(settings.model).eval()
    data = load_dataset("cifar10", data_dir, n=settings.eval_n)
    t0 = time.perf_counter()
    df = robench.evaluate(model=net, name=f"probe_{settings.model}", attacks=["pgd"], eps=[8 / 255],
                          dataset="cifar10", data_dir=data_dir, n=len(data), batch_size=settings.eval_batch,
                          device=str(device), threads=threads, progress=False)
    eval_s = time.perf_counter() - t0
    x, y = data.as_float(device)
    net = net.to(device)
    cl = floor_s(net, x, y, settings.eval_batch, channels_last=True)
    nchw = float("nan") if over() else floor_s(net, x, y, settings.eval_batch, channels_last=False)
    best = cl if math.isnan(nchw) else min(cl, nchw)
    n = len(data)
    out["eval"] = {"n": n, "batch": settings.eval_batch, "pgd20_seconds": round(eval_s, 3),
                   "pgd20_images_per_s": round(n / eval_s, 1), "floor_images_per_s": round(n / best, 1),
                   "ratio_to_floor": round(eval_s / best, 3),
                   "pass_us": round(best / (n * (21 + FORWARD)) * 1e6, 3),
                   "pgd_accuracy": float(df.loc[df["perturbation"] == "pgd", "accuracy"].iloc[0])}
    out["memory_format"] = {"floor_channels_last_s": round(cl, 4),
                            "floor_nchw_s": None if math.isnan(nchw) else round(nchw, 4),
                            "channels_last_over_nchw": None if math.isnan(nchw) else round(cl / nchw, 3)}
    log(f"probe: PGD-20 eval {n / eval_s:.0f} images/s, floor {n / best:.0f} images/s "
        f"(×{eval_s / best:.2f}); channels_last / NCHW floor {cl / nchw:.2f}")  # nan: NCHW left out


# -- estimates -------------------------------------------------------------------------------------------
def cost_factor(model: str, base: str = "resnet20") -> float:
    """Compute relative to ``base`` per image, by parameter count (ResNet-110: ≈ 6.4 × ResNet-20; the
    parameter ratio tracks the FLOP ratio within the CIFAR ResNet family)."""
    import model_zoo

    return model_zoo.model_info(model).params / model_zoo.model_info(base).params


def _interp(points: dict[int, float], k: int) -> float:
    ks = sorted(points)
    if k <= ks[0]:
        return points[ks[0]]
    if k >= ks[-1]:
        return points[ks[-1]]
    lo = max(x for x in ks if x <= k)
    hi = min(x for x in ks if x >= k)
    return points[lo] if lo == hi else points[lo] + (points[hi] - points[lo]) * (k - lo) / (hi - lo)


def step_ms(probe: dict | None, settings: ProbeSettings, est: Estimates, k: int, factor: float,
            batch: int) -> tuple[float, str]:
    """ms per model-step of a member of relative cost ``factor`` in a pack of ``k`` at ``batch``; the
    source of the number ("probe" or "default")."""
    base_pts = {int(kk): v for kk, v in ((probe or {}).get("train", {}).get(settings.model) or {}).items()}
    scale = batch / settings.train_batch
    if not base_pts:
        return est.step_ms * factor * scale, "default"
    base = _interp(base_pts, k)
    deep = {int(kk): v for kk, v in ((probe or {}).get("train", {}).get(settings.deep_model) or {}).items()}
    deep_f = cost_factor(settings.deep_model, settings.model) if deep else 1.0
    if factor > 1 and deep and deep_f > 1:
        kd = min(deep)
        measured = deep[kd] / _interp(base_pts, kd)  # the deep model's cost per model-step, measured
        factor = 1 + (factor - 1) * (measured - 1) / (deep_f - 1)
    return base * factor * scale, "probe"


def pass_us(probe: dict | None, est: Estimates) -> tuple[float, str]:
    v = ((probe or {}).get("eval") or {}).get("pass_us")
    return (float(v), "probe") if v else (est.pass_us, "default")


def estimate_train(members: list[Member], job: Job, *, probe: dict | None, settings: ProbeSettings,
                   est: Estimates, n_train: int, n_test: int = TEST_SIZE) -> dict[str, Any]:
    """Seconds for one pack: overhead + steps × K × ms per model-step + per-epoch test evaluation."""
    k = len(members)
    factor = sum(cost_factor(m.model, settings.model) for m in members) / k
    tr = job.train
    ms, source = step_ms(probe, settings, est, k, factor, tr.batch())
    us, _ = pass_us(probe, est)
    steps = tr.steps(n_train)
    train_s = steps * k * ms / 1000
    eval_s = tr.epochs_() * k * n_test * factor * FORWARD * us / 1e6
    total = est.train_overhead_s + train_s + eval_s
    return {"seconds": round(total, 1), "source": source, "k": k, "steps": steps, "ms_per_model_step": round(ms, 4)}


def estimate_eval(spec, *, n: int, checks: bool, probe: dict | None, settings: ProbeSettings,
                  est: Estimates) -> dict[str, Any]:
    """Seconds for one sweep: overhead + Σ cells n × cost factor × passes × µs per pass (+ the checks)."""
    us, source = pass_us(probe, est)
    passes = 0.0
    for model, _lam in spec.pairs():
        f = cost_factor(model, settings.model)
        per_seed = FORWARD  # clean
        for a in spec.attacks:
            fn = ATTACK_PASSES.get(a, lambda p, e: UNKNOWN_PASSES)
            per_seed += sum(fn(spec.params_of(a), e) for e in (spec.eps or ()))
        per_seed += len(spec.corruptions) * len(spec.severities or ()) * FORWARD
        passes += f * (per_seed * len(spec.seeds) + (CHECK_PASSES_PER_IMAGE + CHECK_PASSES_FIXED / n if checks else 0))
    total = est.eval_overhead_s + n * passes * us / 1e6
    return {"seconds": round(total, 1), "source": source, "image_passes": round(n * passes)}


def fits(estimate_s: float, remaining_s: float) -> bool:
    return math.isfinite(estimate_s) and estimate_s <= remaining_s
