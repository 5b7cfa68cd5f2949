"""The CIFAR-10-C corruptions that are not additive noise, in numpy/scipy/Pillow/scikit-image.

Every function takes a batch ``x`` of float64 pixels in [0, 1] laid out B×H×W×3 (H = W = 32), a
severity 1–5 and a ``numpy.random.Generator``, and returns a float array of the same shape before
the final clip. Parameters are the CIFAR (32×32) tables of Hendrycks & Dietterich's
``make_cifar_c.py``; where the reference goes through OpenCV or ImageMagick the operation is
re-implemented from its definition (noted per function), so results match the published files in
distribution, not bit for bit.
"""
from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color

SIZE = 32

# -- helpers --------------------------------------------------------------------------------------


def _gaussian(x: np.ndarray, sigma: float, *, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian over the two spatial axes of a B×H×W[×C] batch (its defaults:
    mode 'nearest', truncate 4)."""
    sig = (0.0, sigma, sigma) + (0.0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _to_uint8_grid(x: np.ndarray) -> np.ndarray:
    """np.uint8(x·255)/255 as the reference does between steps: truncation, not rounding. The 1e-4
    keeps values that are already on the grid (k/255 computed in floating point) where they are."""
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 1e-4) / 255.0


@functools.lru_cache(maxsize=None)
def _zoom_matrix(size: int, factor: float) -> np.ndarray:
    """The reference's clipped_zoom along one axis as a size×size linear map: take the central
    ceil(size/factor) pixels, zoom them by ``factor`` with scipy.ndimage.zoom (order 1, read off an
    identity matrix; bilinear zoom is separable), keep the central ``size``."""
    ch = int(math.ceil(size / factor))
    top = (size - ch) // 2
    zoomed = ndimage.zoom(np.eye(ch), (factor, 1), order=1)  # rows: output pixels
    t = (zoomed.shape[0] - size) // 2
    m = np.zeros((size, size))
    m[:, top:top + ch] = zoomed[t:t + size]
    return m


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the central 1/factor of each B×H×W×C image back to full size (bilinear)."""
    m = _zoom_matrix(x.shape[1], float(factor))
    return (m @ x.transpose(0, 3, 1, 2) @ m.T).transpose(0, 2, 3, 1)


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's MotionBlurImage (used by the reference through Wand), one angle per image.

    A one-sided Gaussian of width 2·ceil(radius)+1 is laid along the direction ``angle`` (degrees):
    out(y, x) = Σ_i k_i · img(y + ceil(i·sin a − ½), x + ceil(i·cos a − ½)), k_i ∝ exp(−i²/2σ²),
    reading outside the image as the nearest edge pixel (ImageMagick's default virtual pixels).
    """
    b, h, w, _ = x.shape
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(i ** 2) / (2.0 * sigma ** 2))
    kernel /= kernel.sum()
    rad = np.deg2rad(angles)[:, None]
    off_x = np.ceil(i[None] * np.cos(rad) - 0.5).astype(np.int64)  # B×width
    off_y = np.ceil(i[None] * np.sin(rad) - 0.5).astype(np.int64)
    rows = np.clip(np.arange(h)[None, None, :] + off_y[:, :, None], 0, h - 1)  # B×width×H
    cols = np.clip(np.arange(w)[None, None, :] + off_x[:, :, None], 0, w - 1)
    bi = np.arange(b)[:, None, None]
    out = np.zeros_like(x)
    for j in range(width):
        out += kernel[j] * x[bi, rows[:, j, :, None], cols[:, j, None, :]]
    return out


def _plasma_fractal(rng: np.random.Generator, batch: int, decay: float, size: int = SIZE) -> np.ndarray:
    """Diamond-square height maps in [0, 1], B×size×size (the reference's plasma_fractal, batched)."""
    m = np.zeros((batch, size, size))
    step, wibble = size, 100.0

    def wibbled_mean(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        m[:, half::step, half::step] = wibbled_mean(square)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(centres + np.roll(centres, 1, axis=1)
                                                 + corners + np.roll(corners, -1, axis=2))
        m[:, half::step, 0::step] = wibbled_mean(centres + np.roll(centres, 1, axis=2)
                                                 + corners + np.roll(corners, -1, axis=1))
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _pil_box_matrix(src: int, dst: int) -> np.ndarray:
    """The linear map (dst×src) of Pillow's BOX resize along one axis, read off by resizing an
    identity image in 32-bit float mode, so pixelation needs no 8-bit round trip."""
    eye = Image.fromarray(np.eye(src, dtype=np.float32), mode="F")
    return np.asarray(eye.resize((dst, src), Image.BOX), dtype=np.float64).T


# -- blur -----------------------------------------------------------------------------------------

GAUSSIAN_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
GLASS_BLUR = ((0.05, 1), (0.25, 1), (0.4, 1), (0.25, 2), (0.4, 2))  # (sigma, iterations); max_delta 1
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (radius, alias_blur)
MOTION_BLUR = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # (radius, sigma)
# Written as the reference writes them: floating-point arange yields 7, 12, 16, 21 and 26 factors.
ZOOM_BLUR = (np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
             np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01))


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return _gaussian(x, GAUSSIAN_BLUR_SIGMA[severity - 1])


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, move pixels locally, blur again.

    The reference "swaps" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views, which only
    copies: x[h, w] takes the value at (h+dy, w+dx), dy, dx ∈ {−1, 0} (``randint(-1, 1)``). Scanning
    from the bottom-right, that source has not been overwritten yet in the same pass, so one pass is
    exactly a gather over rows/columns 2…31, which is what CIFAR-10-C was generated with.
    """
    sigma, iterations = GLASS_BLUR[severity - 1]
    x = _to_uint8_grid(_gaussian(x, sigma))
    b = x.shape[0]
    idx = np.arange(2, SIZE)
    bi = np.arange(b)[:, None, None]
    for _ in range(iterations):
        dy, dx = rng.integers(-1, 1, size=(2, b, idx.size, idx.size), endpoint=False)
        moved = x.copy()
        moved[:, 2:, 2:] = x[bi, idx[None, :, None] + dy, idx[None, None, :] + dx]
        x = moved
    return _gaussian(x, sigma)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk: a normalised disk on a 17×17 grid smoothed by OpenCV's
    3-tap Gaussian (sigma = alias_blur), trimmed to its non-zero support."""
    r = np.arange(-8, 9)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2.0 * alias_blur ** 2))
    taps /= taps.sum()
    k = ndimage.correlate1d(ndimage.correlate1d(disk, taps, axis=0, mode="mirror"), taps, axis=1, mode="mirror")
    nz = np.nonzero(k.sum(axis=1))[0]
    return k[nz[0]:nz[-1] + 1, nz[0]:nz[-1] + 1]


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # cv2.filter2D's default border is BORDER_REFLECT_101, which is scipy's "mirror".
    k = _disk_kernel(*DEFOCUS_BLUR[severity - 1])
    return ndimage.correlate(x, k[None, :, :, None], mode="mirror")


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = MOTION_BLUR[severity - 1]
    return _motion_blur(x, radius, sigma, rng.uniform(-45, 45, size=x.shape[0]))


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factors = ZOOM_BLUR[severity - 1]
    out = x.copy()
    for z in factors:
        out += _clipped_zoom(x, float(z))
    return out / (len(factors) + 1)


# -- weather --------------------------------------------------------------------------------------

FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (strength, wibble decay)
# (mean, std, zoom, threshold, motion radius, motion sigma, blend)
SNOW = ((0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = FOG[severity - 1]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma_fractal(rng, x.shape[0], decay)[..., None]
    return x * peak / (peak + strength)


def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Flakes: thresholded, zoomed Gaussian speckles streaked by a motion blur at −135…−45°, added
    twice (once rotated by 180°) over a slightly greyed, brightened image."""
    mean, std, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    b = x.shape[0]
    layer = rng.normal(mean, std, size=(b, SIZE, SIZE, 1))
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    # The reference passes the layer through an 8-bit greyscale PNG into ImageMagick and back.
    layer = _to_uint8_grid(layer)
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45, size=b))
    layer = np.round(layer * 255.0) / 255.0
    grey = x @ np.array([0.299, 0.587, 0.114])  # cv2.COLOR_RGB2GRAY weights
    x = blend * x + (1 - blend) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2, axes=(1, 2))


# -- digital / photometric ------------------------------------------------------------------------

CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))  # S ← S·a + b
JPEG_QUALITY = (80, 65, 58, 50, 40)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
# (alpha, sigma, affine jitter) in pixels: IMSIZE·(…) with IMSIZE = 32
ELASTIC = tuple(tuple(SIZE * v for v in row) for row in
                ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)))


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    means = x.mean(axis=(1, 2), keepdims=True)  # per image and channel
    return (x - means) * CONTRAST[severity - 1] + means


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    hsv = color.rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS[severity - 1], 0, 1)
    return color.hsv2rgb(hsv)


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Severities 1–2 wash colours out (S·0.3, S·0.1), 3–5 boost them: CIFAR-10-C's own table, so
    the change is not monotone in severity (see tests/test_corruptions.py)."""
    scale, shift = SATURATE[severity - 1]
    hsv = color.rgb2hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return color.hsv2rgb(hsv)


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pillow JPEG at the given quality (default 4:2:0 chroma subsampling, as in the reference).
    JPEG codes 8-bit pixels, so the input is rounded to the 8-bit grid first."""
    quality = JPEG_QUALITY[severity - 1]
    u8 = np.round(np.clip(x, 0, 1) * 255.0).astype(np.uint8)
    out = np.empty(x.shape, dtype=np.float64)
    for i, img in enumerate(u8):
        buf = io.BytesIO()
        Image.fromarray(img, mode="RGB").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"), dtype=np.float64) / 255.0
    return out


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pillow BOX downscale to int(32·c) and BOX upscale back, as one linear map per axis."""
    small = int(SIZE * PIXELATE[severity - 1])
    p = _pil_box_matrix(small, SIZE) @ _pil_box_matrix(SIZE, small)  # 32×32
    nchw = x.transpose(0, 3, 1, 2)
    return (p @ nchw @ p.T).transpose(0, 2, 3, 1)


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp (three control points jittered by ±jitter, like cv2.getAffineTransform +
    warpAffine with reflect-101 borders), then a smooth random displacement field (uniform noise
    blurred with sigma, scaled by alpha) sampled bilinearly with reflected borders."""
    alpha, sigma, jitter = ELASTIC[severity - 1]
    b, h, w, c = x.shape
    centre, half = np.float64(SIZE // 2), SIZE // 3
    src = np.array([[centre + half, centre + half], [centre + half, centre - half], [centre - half, centre - half]])
    dst = src[None] + rng.uniform(-jitter, jitter, size=(b, 3, 2))
    # Forward affine (x, y) ↦ A·(x, y, 1) through the three pairs, then sample src at A⁻¹(dst grid).
    ones = np.ones((3, 1))
    fwd = np.linalg.solve(np.hstack([src, ones])[None], dst).transpose(0, 2, 1)  # B×2×3
    full = np.concatenate([fwd, np.broadcast_to(np.array([0.0, 0.0, 1.0]), (b, 1, 3))], axis=1)
    inv = np.linalg.inv(full)[:, :2]  # B×2×3
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    grid = np.stack([xx, yy, np.ones_like(xx)])  # 3×H×W in (x, y, 1)
    sx, sy = np.einsum("bij,jhw->ibhw", inv, grid)
    bi = np.broadcast_to(np.arange(b, dtype=np.float64)[:, None, None, None], (b, h, w, c))
    ci = np.broadcast_to(np.arange(c, dtype=np.float64), (b, h, w, c))

    def sample(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
        coords = [bi, np.broadcast_to(rows[..., None], bi.shape), np.broadcast_to(cols[..., None], bi.shape), ci]
        return ndimage.map_coordinates(img, coords, order=1, mode=mode)

    warped = sample(x, sy, sx, "mirror")  # BORDER_REFLECT_101
    dx = _gaussian(rng.uniform(-1, 1, size=(b, h, w)), sigma, mode="reflect", truncate=3.0) * alpha
    dy = _gaussian(rng.uniform(-1, 1, size=(b, h, w)), sigma, mode="reflect", truncate=3.0) * alpha
    return sample(warped, yy[None] + dy, xx[None] + dx, "reflect")


IMAGE = {
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "saturate": saturate,
}
