"""CIFAR-10-C corruptions: contract, severity ordering, the reference formulas and tables, seeding,
and the loader for the published .npy files. Real images: Foolbox's 20 CIFAR-10 samples."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage import color
from skimage.filters import gaussian
from skimage.util import random_noise

from robench.corruptions import (CIFAR10C_NAMES, MISSING, NOISE_CORRUPTIONS, corrupt, list_corruptions,
                                 load_cifar10c)
from robench.data import load_samples
from robench.errors import BadInput

ALL = list_corruptions()
DETERMINISTIC = {"gaussian_blur", "defocus_blur", "zoom_blur", "brightness", "contrast", "saturate", "pixelate",
                 "jpeg_compression"}
# CIFAR-10-C's own tables are not monotone in pixel error for these three; each gets its own test below.
NOT_MONOTONE = {"saturate", "glass_blur", "elastic_transform"}


@pytest.fixture(scope="module")
def samples() -> torch.Tensor:
    return load_samples().as_float()[0]


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


def _distortion(name: str, x: torch.Tensor, seeds=(0, 1)) -> list[float]:
    return [float(np.mean([_mse(corrupt(name, x, s, seed=k), x) for k in seeds])) for s in range(1, 6)]


# -- registry and contract ------------------------------------------------------------------------

def test_registry_covers_cifar10c():
    assert set(ALL) | set(MISSING) == set(CIFAR10C_NAMES) and not set(ALL) & set(MISSING)
    assert len(CIFAR10C_NAMES) == 19 and set(MISSING) == {"frost", "spatter"}
    assert set(NOISE_CORRUPTIONS) == {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"} <= set(ALL)
    assert all(MISSING.values())


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_range_and_input_untouched(name, samples):
    x = samples[:4].clone()
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        out = corrupt(name, xd, 5, seed=3)
        assert out.shape == xd.shape and out.dtype == dtype and out.device == xd.device
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert _mse(out, xd) > 1e-5  # it does corrupt
    assert torch.equal(x, samples[:4])
    assert corrupt(name, x[:0], 1).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name, samples):
    x = samples[:3]
    a, b = corrupt(name, x, 3, seed=7), corrupt(name, x, 3, seed=7)
    assert torch.equal(a, b)
    other = corrupt(name, x, 3, seed=8)
    if name in DETERMINISTIC:
        assert torch.equal(a, other)  # no random choice in the reference either
    else:
        assert not torch.equal(a, other)


# -- severity ordering ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in ALL if n not in NOT_MONOTONE])
def test_distortion_grows_with_severity(name, samples):
    """Mean squared error to the clean image, averaged over 8 images × 2 seeds, is non-decreasing in
    severity and clearly larger at 5 than at 1. Non-decreasing (1 % slack), not strict: in
    CIFAR-10-C's table motion_blur 3 and 4 differ only by Gaussian taps of weight < 1e-9, so with the
    same seed (same blur angle) their errors are equal."""
    x = samples[:8]
    d = _distortion(name, x)
    assert all(d[s + 1] >= 0.99 * d[s] for s in range(4)), d
    assert d[4] > 1.5 * d[0], d


def test_saturate_washes_out_at_1_2_and_boosts_at_3_to_5(samples):
    """CIFAR-10-C's saturate table is S·0.3, S·0.1, S·1.5, S·2+0.1, S·2.5+0.2 (not monotone in error)."""
    x = samples[:8]

    def sat(t: torch.Tensor) -> float:
        return float(color.rgb2hsv(t.permute(0, 2, 3, 1).double().numpy())[..., 1].mean())

    s = [sat(corrupt("saturate", x, k)) for k in range(1, 6)]
    assert s[1] < s[0] < sat(x) < s[2] < s[3] < s[4], s
    assert s[0] == pytest.approx(0.3 * sat(x), rel=0.02)


def test_glass_blur_two_passes_distort_more_than_one(samples):
    """CIFAR-10-C glass blur: severities 1–3 shuffle pixels once, 4–5 twice; within a pass a larger
    blur smooths the shuffle away, so error is ordered by passes, not by severity."""
    d = _distortion("glass_blur", samples[:8])
    assert min(d[3], d[4]) > 1.5 * max(d[:3]), d


def test_elastic_transform_trades_affine_jitter_for_local_warping():
    """Feed a coordinate ramp (R = column/31, G = row/31): bilinear sampling reproduces it exactly, so
    the output reads off where every pixel was sampled from. CIFAR-10-C's table shrinks the random
    affine part with severity (±2.56 → ±0.96 px) while the non-affine elastic field grows (0 at
    severity 1); both must show."""
    r = torch.arange(32, dtype=torch.float64) / 31
    ramp = torch.stack([r[None, :].expand(32, 32), r[:, None].expand(32, 32), torch.full((32, 32), 0.5)])
    x = ramp.expand(16, 3, 32, 32).contiguous()
    inner = slice(10, 22)  # far from borders, where reflection would bend the ramp
    yy, xx = np.mgrid[inner, inner]
    design = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)], axis=1)
    affine, local = [], []
    for s in range(1, 6):
        out = corrupt("elastic_transform", x, s, seed=1).numpy() * 31
        res_affine, res_local = [], []
        for img in out:
            src = np.stack([img[0][inner, inner].ravel(), img[1][inner, inner].ravel()], axis=1)
            coef, *_ = np.linalg.lstsq(design, src, rcond=None)
            res_local.append(np.sqrt(np.mean((design @ coef - src) ** 2)))
            res_affine.append(np.sqrt(np.mean((design @ coef - design[:, :2]) ** 2)))
        affine.append(np.mean(res_affine))
        local.append(np.mean(res_local))
    assert local[0] < 1e-6, local
    assert all(local[k + 1] > local[k] for k in range(4)), local
    assert affine[4] < affine[0], affine


# -- the reference formulas -----------------------------------------------------------------------

def _mid(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (x > lo) & (x < hi)


@pytest.mark.parametrize("severity,sigma", list(enumerate((0.04, 0.06, 0.08, 0.09, 0.10), start=1)))
def test_gaussian_noise_has_the_cifar10c_sigma(samples, severity, sigma):
    x = samples.double()
    delta = (corrupt("gaussian_noise", x, severity, seed=severity) - x)[_mid(x, 0.4, 0.6)]  # never clipped
    assert float(delta.mean()) == pytest.approx(0.0, abs=0.02 * sigma)
    assert float(delta.std()) == pytest.approx(sigma, rel=0.03)


@pytest.mark.parametrize("severity,lam", list(enumerate((500, 250, 100, 75, 50), start=1)))
def test_shot_noise_is_poisson_counts_over_lambda(samples, severity, lam):
    x = samples.double()
    out = corrupt("shot_noise", x, severity, seed=severity)
    counts = out[out < 1] * lam
    assert torch.allclose(counts, counts.round(), atol=1e-6)  # Poisson(λx)/λ lives on the 1/λ grid
    m = _mid(x, 0.1, 0.5)
    # Var[Poisson(λx)/λ] = x/λ
    assert float(((out - x)[m] ** 2).sum() / x[m].sum()) == pytest.approx(1 / lam, rel=0.05)


@pytest.mark.parametrize("severity,sigma", list(enumerate((0.06, 0.10, 0.12, 0.16, 0.20), start=1)))
def test_speckle_noise_is_multiplicative_with_the_cifar10c_sigma(samples, severity, sigma):
    x = samples.double()
    m = _mid(x, 0.15, 0.6)
    rel = ((corrupt("speckle_noise", x, severity, seed=severity) - x) / x.clamp_min(1e-9))[m]
    assert float(rel.std()) == pytest.approx(sigma, rel=0.03)


@pytest.mark.parametrize("severity,amount", list(enumerate((0.01, 0.02, 0.03, 0.05, 0.07), start=1)))
def test_impulse_noise_matches_skimage_salt_and_pepper(samples, severity, amount):
    x = samples.double()
    out = corrupt("impulse_noise", x, severity, seed=severity)
    changed = out != x
    assert bool(((out[changed] == 0) | (out[changed] == 1)).all())  # only salt or pepper, rest untouched
    m = _mid(x, 0.0, 1.0)
    n = int(m.sum())
    tol = 4 * np.sqrt(amount * (1 - amount) / n)
    hit = float(changed[m].float().mean())
    assert hit == pytest.approx(amount, abs=tol)
    assert float((out[changed & m] == 1).float().mean()) == pytest.approx(0.5, abs=4 * np.sqrt(0.25 / (hit * n)))
    ref = torch.from_numpy(random_noise(x.numpy(), mode="s&p", amount=amount, rng=severity))
    assert float((ref != x)[m].float().mean()) == pytest.approx(hit, abs=2 * tol)


def test_deterministic_ones_match_their_reference_libraries(samples):
    ds_u8 = (samples[:6] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    x = samples[:6].double()
    a = x.permute(0, 2, 3, 1).numpy()

    def hwc(t):
        return t.permute(0, 2, 3, 1).numpy()

    ref = np.clip(np.stack([gaussian(im, sigma=0.7, channel_axis=-1) for im in a]), 0, 1)
    assert np.allclose(hwc(corrupt("gaussian_blur", x, 3)), ref, atol=1e-12)
    hsv = color.rgb2hsv(a)
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.2, 0, 1)
    assert np.allclose(hwc(corrupt("brightness", x, 4)), np.clip(color.hsv2rgb(hsv), 0, 1), atol=1e-12)
    means = a.mean(axis=(1, 2), keepdims=True)
    assert np.allclose(hwc(corrupt("contrast", x, 5)), np.clip((a - means) * 0.15 + means, 0, 1), atol=1e-12)
    # Pillow on 8-bit images rounds after each pass; the float map may differ by one grey level.
    ref = np.stack([np.asarray(Image.fromarray(im).resize((24, 24), Image.BOX).resize((32, 32), Image.BOX))
                    for im in ds_u8]) / 255
    assert np.abs(hwc(corrupt("pixelate", x, 4)) - ref).max() <= 1 / 255 + 1e-9

    def jpeg(im, q):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=q)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) / 255

    assert np.array_equal(hwc(corrupt("jpeg_compression", x, 5)), np.stack([jpeg(im, 40) for im in ds_u8]))
    def zoom(im, z):  # make_cifar_c.py's clipped_zoom
        ch = int(np.ceil(32 / z))
        top = (32 - ch) // 2
        out = ndimage.zoom(im[top:top + ch, top:top + ch], (z, z, 1), order=1)
        t = (out.shape[0] - 32) // 2
        return out[t:t + 32, t:t + 32]

    factors = np.arange(1, 1.11, 0.01)
    ref = np.stack([(im + sum(zoom(im, z) for z in factors)) / (len(factors) + 1) for im in a[:2]])
    assert np.allclose(hwc(corrupt("zoom_blur", x[:2], 2)), np.clip(ref, 0, 1), atol=1e-12)
    # defocus 5: a radius-1.5 disk is the 3×3 box (alias blur 0.1 is negligible)
    box = sum(np.roll(a, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    assert np.abs(hwc(corrupt("defocus_blur", x, 5))[:, 1:-1, 1:-1] - box[:, 1:-1, 1:-1]).max() < 1e-6


def test_quantize_truncates_to_the_8bit_grid(samples):
    x = samples[:4]
    for name in ("gaussian_noise", "fog"):
        raw = corrupt(name, x, 3, seed=5).double()
        q = corrupt(name, x, 3, seed=5, quantize=True).double()
        assert torch.allclose(q * 255, (q * 255).round(), atol=1e-4)
        assert bool(((raw - q) >= -1e-6).all()) and bool(((raw - q) < 1 / 255 + 1e-6).all())


# -- bad input ------------------------------------------------------------------------------------

def test_bad_names_severities_and_images(samples):
    x = samples[:2]
    with pytest.raises(BadInput, match=r"unknown corruption 'gauss'.*gaussian_noise.*unavailable: frost"):
        corrupt("gauss", x, 1)
    with pytest.raises(BadInput, match="frost.*not available"):
        corrupt("frost", x, 1)
    for bad in (0, 6, 2.0, True, "3"):
        with pytest.raises(BadInput, match="severity must be 1–5"):
            corrupt("contrast", x, bad)
    with pytest.raises(BadInput, match="seed"):
        corrupt("gaussian_noise", x, 1, seed=-1)
    with pytest.raises(BadInput, match=r"B×3×32×32"):
        corrupt("contrast", x[:, :1], 1)
    with pytest.raises(BadInput, match="float"):
        corrupt("contrast", (x * 255).to(torch.uint8), 1)
    with pytest.raises(BadInput, match=r"\[0, 1\]"):
        corrupt("contrast", x * 2 - 1, 1)


# -- the published files --------------------------------------------------------------------------

def _write_set(folder, name="fog", images=None, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if images is None:
        images = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(20)  # row tag
    if labels is None:
        labels = (np.arange(20) % 10).astype(np.uint8)
    np.save(folder / f"{name}.npy", images)
    np.save(folder / "labels.npy", labels)
    return images, labels


def test_load_cifar10c_round_trips_a_tiny_set(tmp_path):
    root = tmp_path / "CIFAR-10-C"
    images, labels = _write_set(root)
    ds = load_cifar10c(root, "fog", 3)
    assert (ds.name, ds.split, ds.source, len(ds)) == ("cifar10c", "fog-3", str(root), 4)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (4, 3, 32, 32)
    assert np.array_equal(ds.images.numpy(), images[8:12].transpose(0, 3, 1, 2))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels[8:12].tolist()
    # the fingerprint covers the images and the labels file (25.3: other labels are other data)
    parts = [hashlib.sha256((root / f).read_bytes()).hexdigest() for f in ("fog.npy", "labels.npy")]
    assert ds.sha256 == hashlib.sha256(f"{parts[0]}:{parts[1]}".encode()).hexdigest()
    first = load_cifar10c(tmp_path, "fog", 5, n=2)  # the parent folder works too
    assert first.images[:, 0, 0, 0].tolist() == [16, 17] and first.split == "fog-5"
    _write_set(root, name="frost")  # readable although corrupt() cannot make it
    assert len(load_cifar10c(root, "frost", 1)) == 4


def test_load_cifar10c_rejects_bad_layouts(tmp_path):
    root = tmp_path / "c"
    with pytest.raises(BadInput, match="does not exist"):
        load_cifar10c(root, "fog", 1)
    _write_set(root)
    with pytest.raises(BadInput, match=r"snow\.npy not found.*labels\.npy"):
        load_cifar10c(root, "snow", 1)
    with pytest.raises(BadInput, match="unknown CIFAR-10-C corruption"):
        load_cifar10c(root, "rain", 1)
    with pytest.raises(BadInput, match="severity must be 1–5"):
        load_cifar10c(root, "fog", 6)
    with pytest.raises(BadInput, match="larger than"):
        load_cifar10c(root, "fog", 1, n=5)
    _write_set(root, images=np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(BadInput, match=r"shape \(20, 32, 32\).*N×32×32×3 uint8"):
        load_cifar10c(root, "fog", 1)
    _write_set(root, images=np.zeros((21, 32, 32, 3), dtype=np.uint8), labels=np.zeros(21, dtype=np.uint8))
    with pytest.raises(BadInput, match="5 severities"):
        load_cifar10c(root, "fog", 1)
    _write_set(root, labels=np.zeros(19, dtype=np.uint8))
    with pytest.raises(BadInput, match="labels"):
        load_cifar10c(root, "fog", 1)
    (root / "fog.npy").write_bytes(b"not an array")
    with pytest.raises(BadInput, match="not a readable"):
        load_cifar10c(root, "fog", 1)


@pytest.mark.cuda
def test_noise_is_drawn_on_the_gpu(samples):
    x = samples.cuda()
    for name in ALL:
        out = corrupt(name, x, 5, seed=2)
        assert out.device == x.device and float(out.min()) >= 0 and float(out.max()) <= 1
        assert torch.equal(out, corrupt(name, x, 5, seed=2))
    delta = (corrupt("gaussian_noise", x.double(), 4, seed=1) - x.double())[_mid(x, 0.4, 0.6)]
    assert float(delta.std()) == pytest.approx(0.09, rel=0.03)
