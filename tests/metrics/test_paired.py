"""Paired-image metrics: the BCI protocol against scikit-image, hand-computed cases, and the properties each
metric's definition implies (perfect score for identical images, monotone in the noise level, symmetry)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from histostain.errors import ConfigError, InputError
from histostain.io.images import write_image
from histostain.metrics.evaluate_paired import evaluate_paired
from histostain.metrics.paired import (
    _conv_same,
    haarpsi,
    mae,
    mdsi,
    ms_gmsd,
    pearson,
    psnr,
    ssim,
)


def _smooth(seed: int, height: int = 48, width: int = 40) -> np.ndarray:
    """A tissue-like smooth RGB image (blurred noise), so gradients are mostly inside the image."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (height, width, 3))
    kernel = np.ones((5, 5)) / 25
    channels = [convolve2d(noise[..., c], kernel, mode="same", boundary="symm") for c in range(3)]
    return np.clip(np.stack(channels, axis=-1) * 1.5 - 60, 0, 255).astype(np.uint8)


def _noisy(image: np.ndarray, sigma: float, seed: int = 7) -> np.ndarray:
    pattern = np.random.default_rng(seed).standard_normal(image.shape)  # the same pattern at every sigma
    return np.clip(np.round(image + sigma * pattern), 0, 255).astype(np.uint8)


def _matlab_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB conv2(image, kernel, 'same') written independently: the full convolution, cropped at k // 2."""
    full = convolve2d(image, kernel, mode="full")
    m, n = kernel.shape
    return full[m // 2 : m // 2 + image.shape[0], n // 2 : n // 2 + image.shape[1]]


# --------------------------------------------------------------------------------------------- BCI protocol


def test_psnr_and_ssim_equal_skimage_with_the_bci_arguments() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    assert psnr(a, b) == peak_signal_noise_ratio(a, b, data_range=255)
    assert ssim(a, b) == structural_similarity(a, b, channel_axis=-1, data_range=255)
    c = _noisy(_smooth(1), 10)
    d = _smooth(1)
    assert ssim(d, c) == structural_similarity(d, c, channel_axis=-1, data_range=255, win_size=7)


def test_hand_computed_psnr_mae_pearson() -> None:
    zeros = np.zeros((8, 8, 3), dtype=np.uint8)
    ones = np.ones((8, 8, 3), dtype=np.uint8)
    assert psnr(zeros, ones) == pytest.approx(10 * math.log10(255**2 / 1.0))  # MSE 1: 48.1308 dB
    assert mae(zeros, ones * 10) == 10.0
    ramp = (np.arange(8 * 8 * 3) // 2).astype(np.uint8).reshape(8, 8, 3)  # 0..95: 2 x + 3 stays < 256
    assert pearson(ramp, (ramp.astype(int) * 2 + 3).astype(np.uint8)) == pytest.approx(1.0)
    assert pearson(ramp, (255 - ramp).astype(np.uint8)) == pytest.approx(-1.0)
    assert math.isnan(pearson(ramp, zeros))  # a flat image has no variance: undefined


def test_identical_images_give_the_perfect_score() -> None:
    a = _smooth(2)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0)
    assert mae(a, a) == 0.0
    assert pearson(a, a) == pytest.approx(1.0)
    assert ms_gmsd(a, a) == 0.0
    assert ms_gmsd(a, a, chromatic=True) == 0.0
    assert mdsi(a, a) == pytest.approx(0.0, abs=1e-12)
    assert mdsi(a, a, combination="mult") == pytest.approx(0.0, abs=1e-12)
    assert haarpsi(a, a) == pytest.approx(1.0, abs=1e-9)
    assert haarpsi(a, a, subsample=False) == pytest.approx(1.0, abs=1e-9)


def test_monotone_worsening_with_noise() -> None:
    a = _smooth(3, 64, 64)
    noisy = [_noisy(a, sigma) for sigma in (2, 8, 24, 64)]
    for distance in (ms_gmsd, mdsi, mae):
        values = [distance(a, b) for b in noisy]
        assert values == sorted(values) and values[0] < values[-1], distance.__name__
    for similarity in (haarpsi, ssim, psnr, pearson):
        values = [similarity(a, b) for b in noisy]
        assert values == sorted(values, reverse=True) and values[0] > values[-1], similarity.__name__
    assert 0.0 < haarpsi(a, noisy[-1]) < 1.0


def test_symmetry_where_the_definition_is_symmetric() -> None:
    a, b = _smooth(4), _noisy(_smooth(4), 20)
    for metric in (psnr, ssim, mae, pearson, ms_gmsd, haarpsi):
        assert metric(a, b) == pytest.approx(metric(b, a), rel=1e-12), metric.__name__
    # MDSI is not symmetric: the fused image enters as GS(b, F) - GS(a, F), a being the reference
    assert mdsi(a, b) != pytest.approx(mdsi(b, a), rel=1e-9)


def test_conv_same_matches_matlab_cropping_for_odd_and_even_kernels() -> None:
    rng = np.random.default_rng(5)
    image = rng.normal(size=(9, 11))
    for m, n in ((3, 3), (2, 2), (4, 8), (8, 8), (1, 3)):
        col, row = rng.normal(size=m), rng.normal(size=n)
        np.testing.assert_allclose(_conv_same(image, col, row), _matlab_same(image, np.outer(col, row)), atol=1e-12)


# --------------------------------------------------------------------------------------------- hand cases


def test_single_scale_gmsd_of_black_against_flat_grey_by_hand() -> None:
    # a = 0 everywhere: its gradient magnitude is 0. b = v everywhere: with zero padding the Prewitt response
    # is v on border pixels (x-difference v, smoothed over 3 rows of v) and 0 inside; in the 4 corners both
    # directions see the border and the smoothing sees one padded row: gx = gy = 2v/3, m = 2 sqrt(2) v / 3.
    # GMS = c / (m_b^2 + c): 1 inside, c / (v^2 + c) on edges, c / (8 v^2 / 9 + c) in corners; GMSD = std(GMS).
    height, width, v, c = 10, 13, 10.0, 170.0
    a = np.zeros((height, width, 3), dtype=np.uint8)
    b = np.full((height, width, 3), int(v), dtype=np.uint8)
    gms = np.ones((height, width))
    gms[0, :] = gms[-1, :] = gms[:, 0] = gms[:, -1] = c / (v**2 + c)
    gms[0, 0] = gms[0, -1] = gms[-1, 0] = gms[-1, -1] = c / (8 * v**2 / 9 + c)
    assert ms_gmsd(a, b, scale_weights=(1.0,)) == pytest.approx(float(np.std(gms)), rel=1e-9)
    # two scales with weights w: sqrt(w1 GMSD1^2 + w2 GMSD2^2); at scale 2 the 2x2 mean keeps b flat at v
    # (10 and 13 px: the last column of 13 averages v with the zero padding: v/2)
    b2 = np.full((5, 7), v)
    b2[:, -1] = v / 2
    gms2 = c / (_prewitt_by_definition(b2) ** 2 + c)
    expected = math.sqrt(0.3 * np.std(gms) ** 2 + 0.7 * np.std(gms2) ** 2)
    assert ms_gmsd(a, b, scale_weights=(0.3, 0.7)) == pytest.approx(expected, rel=1e-9)


def _prewitt_by_definition(y: np.ndarray) -> np.ndarray:
    dx = np.array([[1, 0, -1]] * 3) / 3.0
    return np.hypot(_matlab_same(y, dx), _matlab_same(y, dx.T))


def test_mdsi_by_the_published_formula() -> None:
    # The MDSI definition written out with scipy's 2-D convolution (a different code path), on a non-square
    # image large enough for the f = 2 pre-filter (round(300 / 256) = 1 would not exercise it; 512 -> 2).
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (512, 520, 3), dtype=np.uint8)
    b = _noisy(a, 30)
    f = 2
    box = np.ones((f, f)) / f**2

    def channels(img):
        rgb = [_matlab_same(img[..., k].astype(float), box)[::f, ::f] for k in range(3)]
        lum = 0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]
        h = 0.30 * rgb[0] + 0.04 * rgb[1] - 0.35 * rgb[2]
        m = 0.34 * rgb[0] - 0.60 * rgb[1] + 0.17 * rgb[2]
        return lum, h, m

    (la, ha, ma), (lb, hb, mb) = channels(a), channels(b)
    ga, gb, gf = (_prewitt_by_definition(x) for x in (la, lb, (la + lb) / 2))

    def sim(u, v, c):
        return (2 * u * v + c) / (u**2 + v**2 + c)

    gs = sim(ga, gb, 140) + sim(gb, gf, 55) - sim(ga, gf, 55)
    cs = (2 * (ha * hb + ma * mb) + 550) / (ha**2 + hb**2 + ma**2 + mb**2 + 550)
    gcs = (0.6 * gs + 0.4 * cs).astype(complex)
    root = np.sqrt(np.sqrt(gcs))  # (GCS^0.5)^0.5 as the authors' code writes it
    expected = np.mean(np.abs(root - root.mean())) ** 0.25
    assert mdsi(a, b) == pytest.approx(expected, rel=1e-9)


def test_haarpsi_by_the_published_formula() -> None:
    rng = np.random.default_rng(9)
    a = rng.integers(0, 256, (22, 30, 3), dtype=np.uint8)
    b = _noisy(a, 25)
    c, alpha = 30.0, 4.2

    def yiq(img):
        x = img.astype(float)
        y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
        i = 0.596 * x[..., 0] - 0.274 * x[..., 1] - 0.322 * x[..., 2]
        q = 0.211 * x[..., 0] - 0.523 * x[..., 1] + 0.312 * x[..., 2]
        return [_matlab_same(ch, np.ones((2, 2)) / 4)[::2, ::2] for ch in (y, i, q)]

    (ya, ia, qa), (yb, ib, qb) = yiq(a), yiq(b)

    def haar(img, j):
        filt = 2.0**-j * np.ones((2**j, 2**j))
        filt[: 2 ** (j - 1), :] *= -1
        return [np.abs(_matlab_same(img, filt)), np.abs(_matlab_same(img, filt.T))]

    def sim(u, v):
        return (2 * u * v + c) / (u**2 + v**2 + c)

    ha = {j: haar(ya, j) for j in (1, 2, 3)}
    hb = {j: haar(yb, j) for j in (1, 2, 3)}
    local = [(sim(ha[1][o], hb[1][o]) + sim(ha[2][o], hb[2][o])) / 2 for o in (0, 1)]
    weight = [np.maximum(ha[3][o], hb[3][o]) for o in (0, 1)]
    mean = np.ones((2, 2)) / 4
    chroma = [np.abs(_matlab_same(x, mean)) for x in (ia, ib, qa, qb)]
    local.append((sim(chroma[0], chroma[1]) + sim(chroma[2], chroma[3])) / 2)
    weight.append((weight[0] + weight[1]) / 2)
    s, w = np.stack(local), np.stack(weight)
    pooled = np.sum(w / (1 + np.exp(-alpha * s))) / np.sum(w)
    expected = (np.log(pooled / (1 - pooled)) / alpha) ** 2
    assert haarpsi(a, b) == pytest.approx(expected, rel=1e-9)


def test_bad_inputs_raise_value_errors() -> None:
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="size"):
        psnr(a, np.zeros((8, 9, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        mae(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="7 x 7"):
        ssim(a[:5, :5], a[:5, :5])
    with pytest.raises(ValueError, match="MS-GMSD"):
        ms_gmsd(a, a)  # 4 scales need 16 px


# --------------------------------------------------------------------------------------------- service


def test_evaluate_paired_folders(tmp_path: Path) -> None:
    real, fake = tmp_path / "real", tmp_path / "fake"
    images = {stem: _smooth(i, 32, 40) for i, stem in enumerate(["a", "b", "c"])}
    for stem, image in images.items():
        write_image(real / f"{stem}.png", image)
    write_image(fake / "a.tif", _noisy(images["a"], 10))  # another extension: paired by stem
    write_image(fake / "b.png", images["b"])  # identical: PSNR infinite
    write_image(fake / "extra.png", images["c"])
    result = evaluate_paired(real, fake)
    assert [r["stem"] for r in result.per_image] == ["a", "b"]
    assert result.meta["unmatched_real"] == ["c"] and result.meta["unmatched_fake"] == ["extra"]
    assert result.meta["resolutions"] == {"40x32": 2}
    noisy = _noisy(images["a"], 10)
    assert result.per_image[0]["psnr"] == pytest.approx(peak_signal_noise_ratio(images["a"], noisy, data_range=255))
    assert result.summary["ssim"] == pytest.approx((ssim(images["a"], noisy) + 1.0) / 2)
    assert result.summary["mae"] == pytest.approx(mae(images["a"], noisy) / 2)
    assert result.summary["psnr"] == pytest.approx(result.per_image[0]["psnr"])  # the inf pair is left out
    assert result.meta["identical_pairs"] == 1 and any("identical" in w for w in result.warnings)
    assert result.summary["n_pairs"] == 2
    only = evaluate_paired(real, fake, metrics=["mae"])
    assert set(only.summary) == {"mae", "n_pairs"}


def test_evaluate_paired_errors(tmp_path: Path) -> None:
    write_image(tmp_path / "real" / "a.png", np.zeros((16, 16, 3), dtype=np.uint8))
    write_image(tmp_path / "fake" / "a.png", np.zeros((16, 20, 3), dtype=np.uint8))
    write_image(tmp_path / "other" / "z.png", np.zeros((16, 16, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="a.png"):
        evaluate_paired(tmp_path / "real", tmp_path / "fake")
    with pytest.raises(InputError, match="matches"):
        evaluate_paired(tmp_path / "real", tmp_path / "other")
    with pytest.raises(ConfigError, match="lpips"):
        evaluate_paired(tmp_path / "real", tmp_path / "other", metrics=["lpips"])


def test_the_import_free_metric_list_matches_the_metrics() -> None:
    """`evaluate paired --help` lists PAIRED_METRICS without importing numpy; they must be METRICS' keys."""
    from histostain.metrics.defaults import PAIRED_METRICS
    from histostain.metrics.paired import DEFAULT_METRICS, METRICS

    assert tuple(METRICS) == PAIRED_METRICS == DEFAULT_METRICS
