"""Full-reference metrics on aligned image pairs (arrays): PSNR, SSIM and friends.

PSNR and SSIM follow the BCI protocol exactly (scikit-image, uint8 RGB at full resolution, data range 255,
``channel_axis=-1``, the default uniform 7 x 7 window, mean over images). MAE and Pearson correlation are the
plain definitions. MS-GMSD (Zhang, Sander & Bermak 2017), MDSI (Nafchi et al. 2016) and HaarPSI (Reisenhofer et
al. 2018) are implemented from their papers and their authors' reference code conventions: pixel values in
[0, 255], MATLAB ``conv2(..., 'same')`` zero-padded filtering, the published constants. They need no weights.

Direction: GMSD and MDSI are distances (0 = identical, larger = worse); SSIM, HaarPSI and Pearson are
similarities (1 = identical); PSNR is infinite for identical images.

The ``evaluate paired`` service (folders, pairing by stem) is :mod:`histostain.metrics.evaluate_paired`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from histostain.metrics.defaults import PAIRED_METRICS

MS_GMSD_WEIGHTS = (0.096, 0.596, 0.289, 0.019)  # scale weights from the MS-GMSD paper (finest first)
_PREWITT_SMOOTH = np.ones(3) / 3.0
_PREWITT_DIFF = np.array([1.0, 0.0, -1.0])


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, image in (("a", a), ("b", b)):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", None)
            raise ValueError(f"{name} must be a uint8 H x W x 3 RGB array, got {dtype} {shape}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")


# --------------------------------------------------------------------------------------------- BCI protocol


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB as BCI computes it: ``skimage.metrics.peak_signal_noise_ratio`` with data range 255.

    Identical images give ``inf`` (no warning)."""
    from skimage.metrics import peak_signal_noise_ratio

    _check_pair(a, b)
    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as BCI computes it: ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255)``
    with the default uniform 7 x 7 window (mean of the per-channel SSIM)."""
    from skimage.metrics import structural_similarity

    _check_pair(a, b)
    if min(a.shape[:2]) < 7:
        raise ValueError(f"SSIM needs images of at least 7 x 7 pixels, got {a.shape[1]} x {a.shape[0]}")
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference over all pixels and channels, in grey levels (0..255)."""
    _check_pair(a, b)
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of all pixel values (channels flattened together); NaN when either image is flat."""
    _check_pair(a, b)
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    x -= x.mean()
    y -= y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y)) / denominator if denominator > 0 else math.nan


# --------------------------------------------------------------------------------------------- filtering helpers


def _conv1d_same(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """1-D zero-padded convolution along ``axis``, cropped like MATLAB's ``'same'``:
    ``y[i] = sum_k h[k] x[i + m//2 - k]``.

    A sum of shifted copies: the kernels here have at most 8 taps, so this beats a generic N-D convolution.
    """
    m = len(kernel)
    size = image.shape[axis]
    widths = [(0, 0)] * image.ndim
    widths[axis] = (m - 1, m - 1)
    padded = np.pad(image, widths)
    out = np.zeros_like(image, dtype=np.float64)
    for k, weight in enumerate(kernel):
        if weight == 0:
            continue
        start = m // 2 - k + m - 1
        out += weight * np.take(padded, np.arange(start, start + size), axis=axis)
    return out


def _conv_same(image: np.ndarray, col_kernel: np.ndarray, row_kernel: np.ndarray) -> np.ndarray:
    """MATLAB ``conv2(image, outer(col_kernel, row_kernel), 'same')``: zero padding, true convolution, and the
    full result cropped from index ``floor(k / 2)`` (which matters for even kernel sizes)."""
    out = _conv1d_same(image, np.asarray(col_kernel, dtype=np.float64), axis=0)
    return _conv1d_same(out, np.asarray(row_kernel, dtype=np.float64), axis=1)


def _average_subsample(image: np.ndarray, factor: int) -> np.ndarray:
    """``conv2(image, ones(f) / f^2, 'same')`` sampled at ``1:f:end``, the MATLAB references' downsampling."""
    if factor <= 1:
        return image
    box = np.ones(factor) / factor
    return _conv_same(image, box, box)[::factor, ::factor]


def _prewitt_magnitude(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude with the 3 x 3 Prewitt filters ``[1 0 -1] / 3`` (zero padding)."""
    gx = _conv_same(image, _PREWITT_SMOOTH, _PREWITT_DIFF)
    gy = _conv_same(image, _PREWITT_DIFF, _PREWITT_SMOOTH)
    return np.sqrt(gx * gx + gy * gy)


def _similarity(u: np.ndarray, v: np.ndarray, c: float) -> np.ndarray:
    return (2.0 * u * v + c) / (u * u + v * v + c)


def _channels(image: np.ndarray, matrix: Sequence[Sequence[float]]) -> list[np.ndarray]:
    rgb = image.astype(np.float64)
    return [rgb[..., 0] * r + rgb[..., 1] * g + rgb[..., 2] * b for r, g, b in matrix]


_YIQ = ((0.299, 0.587, 0.114), (0.5959, -0.2746, -0.3213), (0.2115, -0.5227, 0.3112))
_YIQ_HAARPSI = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))  # the authors' code
_LHM = ((0.2989, 0.5870, 0.1140), (0.30, 0.04, -0.35), (0.34, -0.60, 0.17))  # the MDSI authors' code


# --------------------------------------------------------------------------------------------- MS-GMSD


def ms_gmsd(
    a: np.ndarray,
    b: np.ndarray,
    *,
    scale_weights: Sequence[float] = MS_GMSD_WEIGHTS,
    c: float = 170.0,
    chromatic: bool = False,
    beta1: float = 0.01,
    beta2: float = 0.32,
    beta3: float = 15.0,
) -> float:
    """Multi-scale gradient magnitude similarity deviation (0 = identical, larger = worse).

    On the luminance Y (YIQ, 0..255): at each scale ``j`` (the full resolution first, then 2 x 2 averaging and
    dyadic subsampling), ``GMS = (2 m_a m_b + c) / (m_a^2 + m_b^2 + c)`` with Prewitt gradient magnitudes ``m``,
    ``GMSD_j`` = the standard deviation of GMS over the pixels, and ``MS-GMSD = sqrt(sum_j w_j GMSD_j^2)``.
    ``chromatic=True`` adds the paper's colour term (RMSE of the I and Q channels at the coarsest scale, blended
    with ``gamma = 2 / (1 + beta3 exp(-beta2 MS-GMSD)) - 1``); off by default, as piq's ``multi_scale_gmsd``.
    """
    _check_pair(a, b)
    weights = np.asarray(scale_weights, dtype=np.float64)
    coarsest = 2 ** (len(weights) - 1)
    if min(a.shape[:2]) < 2 * coarsest:
        raise ValueError(f"MS-GMSD with {len(weights)} scales needs images of at least {2 * coarsest} pixels a side")
    ya, ia, qa = _channels(a, _YIQ)
    yb, ib, qb = _channels(b, _YIQ)
    deviations = []
    for scale in range(len(weights)):
        if scale:
            ya, yb = _average_subsample(ya, 2), _average_subsample(yb, 2)
            if chromatic:
                ia, ib, qa, qb = (_average_subsample(x, 2) for x in (ia, ib, qa, qb))
        gms = _similarity(_prewitt_magnitude(ya), _prewitt_magnitude(yb), c)
        deviations.append(float(np.std(gms)))
    score = math.sqrt(float(np.sum(weights * np.square(deviations))))
    if chromatic:
        rmse_i = math.sqrt(float(np.mean((ia - ib) ** 2)))
        rmse_q = math.sqrt(float(np.mean((qa - qb) ** 2)))
        gamma = 2.0 / (1.0 + beta3 * math.exp(-beta2 * score)) - 1.0
        score = gamma * score + (1.0 - gamma) * beta1 * math.hypot(rmse_i, rmse_q)
    return score


# --------------------------------------------------------------------------------------------- MDSI


def mdsi(
    a: np.ndarray,
    b: np.ndarray,
    *,
    c1: float = 140.0,
    c2: float = 55.0,
    c3: float = 550.0,
    combination: str = "sum",
    alpha: float = 0.6,
    beta: float = 0.1,
    gamma: float = 0.2,
    q: float = 0.25,
    o: float = 0.25,
) -> float:
    """Mean deviation similarity index (0 = identical, larger = worse), ``a`` the reference.

    Both images are averaged and subsampled by ``f = max(1, round(min(H, W) / 256))``. Gradient similarity on
    the luminance L with the fused image ``F = (L_a + L_b) / 2``: ``GS = GS(a,b; c1) + GS(b,F; c2) - GS(a,F; c2)``;
    chromaticity similarity on the opponent channels H, M:
    ``CS = (2 (H_a H_b + M_a M_b) + c3) / (H_a^2 + H_b^2 + M_a^2 + M_b^2 + c3)``; ``GCS = alpha GS + (1 - alpha)
    CS`` (``combination="sum"``) or ``GS^gamma CS^beta`` (``"mult"``). Deviation pooling:
    ``MDSI = mean(|GCS^q - mean(GCS^q)|)^o`` with complex powers (principal branch), since GCS can be negative.
    """
    _check_pair(a, b)
    if combination not in ("sum", "mult"):
        raise ValueError(f"combination must be 'sum' or 'mult', got {combination!r}")
    factor = max(1, round(min(a.shape[:2]) / 256))
    la, ha, ma = (_average_subsample(x, factor) for x in _channels(a, _LHM))
    lb, hb, mb = (_average_subsample(x, factor) for x in _channels(b, _LHM))
    ga, gb = _prewitt_magnitude(la), _prewitt_magnitude(lb)
    gf = _prewitt_magnitude(0.5 * (la + lb))
    gs = _similarity(ga, gb, c1) + _similarity(gb, gf, c2) - _similarity(ga, gf, c2)
    cs = (2.0 * (ha * hb + ma * mb) + c3) / (ha * ha + hb * hb + ma * ma + mb * mb + c3)
    if combination == "sum":
        gcs = (alpha * gs + (1.0 - alpha) * cs).astype(np.complex128)
    else:
        gcs = np.power(gs.astype(np.complex128), gamma) * np.power(cs.astype(np.complex128), beta)
    powered = np.power(gcs, q)
    deviation = float(np.mean(np.abs(powered - powered.mean())))
    return deviation**o


# --------------------------------------------------------------------------------------------- HaarPSI


def _haar(image: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Haar wavelet responses at ``scale`` (filter side 2^scale, entries +-2^-scale), both orientations."""
    side = 2**scale
    step = np.concatenate([-np.ones(side // 2), np.ones(side // 2)]) * 2.0**-scale
    flat = np.ones(side)
    return _conv_same(image, step, flat), _conv_same(image, flat, step)


def haarpsi(a: np.ndarray, b: np.ndarray, *, c: float = 30.0, alpha: float = 4.2, subsample: bool = True) -> float:
    """Haar wavelet-based perceptual similarity index (1 = identical, towards 0 = dissimilar).

    On YIQ (0..255), subsampled by a 2 x 2 mean first (``subsample``). Local similarity per orientation:
    the mean over scales 1 and 2 of ``S(|h_a|, |h_b|) = (2 |h_a| |h_b| + c) / (h_a^2 + h_b^2 + c)``, weighted by
    ``max(|h_a|, |h_b|)`` at scale 3; the chroma channels I, Q (2 x 2 mean filtered) add a third map with the
    mean of the two luminance weights. ``HaarPSI = (logit(sum(sigmoid(alpha S) W) / sum(W)) / alpha)^2``.
    """
    _check_pair(a, b)
    ya, ia, qa = _channels(a, _YIQ_HAARPSI)
    yb, ib, qb = _channels(b, _YIQ_HAARPSI)
    if subsample:
        ya, ia, qa, yb, ib, qb = (_average_subsample(x, 2) for x in (ya, ia, qa, yb, ib, qb))
    if min(ya.shape) < 2:
        raise ValueError("HaarPSI needs images of at least 4 x 4 pixels")
    responses_a = [_haar(ya, s) for s in (1, 2, 3)]
    responses_b = [_haar(yb, s) for s in (1, 2, 3)]
    maps, weights = [], []
    for orientation in (0, 1):
        local = sum(
            _similarity(np.abs(responses_a[s][orientation]), np.abs(responses_b[s][orientation]), c) for s in (0, 1)
        )
        maps.append(local / 2.0)
        weights.append(np.maximum(np.abs(responses_a[2][orientation]), np.abs(responses_b[2][orientation])))
    mean2 = np.full(2, 0.5)
    chroma = [np.abs(_conv_same(x, mean2, mean2)) for x in (ia, qa, ib, qb)]
    maps.append((_similarity(chroma[0], chroma[2], c) + _similarity(chroma[1], chroma[3], c)) / 2.0)
    weights.append((weights[0] + weights[1]) / 2.0)
    local_maps, weight_maps = np.stack(maps), np.stack(weights)
    total = float(weight_maps.sum())
    if total == 0.0:  # both images flat: no structure to compare, and identical structure
        return 1.0
    pooled = float(np.sum(_sigmoid(alpha * local_maps) * weight_maps)) / total
    return (math.log(pooled / (1.0 - pooled)) / alpha) ** 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------------------------- registry

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "psnr": psnr,
    "ssim": ssim,
    "mae": mae,
    "pearson": pearson,
    "ms_gmsd": ms_gmsd,
    "mdsi": mdsi,
    "haarpsi": haarpsi,
}
# every metric; the names are also in metrics.defaults (import-free, for --help; a test keeps the two equal)
DEFAULT_METRICS = PAIRED_METRICS


__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "MS_GMSD_WEIGHTS",
    "haarpsi",
    "mae",
    "mdsi",
    "ms_gmsd",
    "pearson",
    "psnr",
    "ssim",
]
