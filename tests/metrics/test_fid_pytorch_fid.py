"""FID against pytorch-fid itself (the implementation histostain claims to reproduce), on the same random weights.

pytorch-fid downloads its weights in ``fid_inception_v3``; here its fetch returns the session's random FID-Inception
state dict instead (the published file's layout), so both implementations run the same network and nothing is
downloaded. Compared: (a) pool3 features of the same image files, (b) the Fréchet distance of the same statistics,
(c) pytorch-fid's folder pipeline (its file listing, PIL decoding, ``ToTensor``, DataLoader, ``np.cov``; its
``--save-stats`` files) against ``evaluate_fid`` on the folders.

Tolerance for features: float32 round-off, 1e-4 of the largest feature. pytorch-fid runs NCHW; histostain's CPU
default is channels_last, whose oneDNN kernels sum in another order: a 3 x 3 convolution over 2048 channels sums
~18,000 float32 products (random-walk error ~ sqrt(18000) * 1.2e-7 = 1.6e-5 relative), over ~100 layers.
Measured on the development machine: 5e-7 to 5e-6 of the largest feature with channels_last, 0 (bit-identical)
on the NCHW path. Pipeline mistakes are far above the tolerance: ``align_corners=True`` moves features by 0.23 of
the largest, BGR input by 0.19.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid import fid_score
from pytorch_fid import inception as pytorch_fid_inception

from histostain.io.images import write_image
from histostain.metrics.evaluate_fid import evaluate_fid, read_stats
from histostain.metrics.fid import compute_statistics, frechet_distance
from histostain.metrics.fid_features import extract_features
from histostain.metrics.inception import load_fid_inception
from histostain.runtime.device import DeviceManager

FEATURE_TOLERANCE = 1e-4  # of the largest feature: float32 round-off through ~100 layers (module docstring)


@pytest.fixture(scope="module")
def reference_net(fid_weights: Path) -> Iterator[torch.nn.Module]:
    """pytorch-fid's ``InceptionV3([3])`` (pool3), built by its own code with the random weights instead of the
    published download; the fetch stays patched while this module's tests run (pytorch-fid's functions that
    build their own network get the same weights)."""
    state = torch.load(fid_weights, weights_only=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state)
        net = pytorch_fid_inception.InceptionV3([pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        yield net.eval()


def _pytorch_fid_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    with warnings.catch_warnings():  # pytorch-fid passes scipy's deprecated `disp` argument
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(fid_score.calculate_frechet_distance(mu1, s1, mu2, s2))


# ------------------------------------------------------------------------------------------ (a) features


@pytest.fixture(scope="module")
def mixed_files(
    reference_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[Path], np.ndarray]:
    """Mixed sizes (upscaled, non-square, downscaled without antialias, native 299) and pytorch-fid's features."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(64, 64), (48, 80), (400, 300), (299, 299)]):
        paths.append(folder / f"{index}.png")
        write_image(paths[-1], rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    # batch size 1: pytorch-fid's DataLoader cannot stack images of different sizes
    theirs = fid_score.get_activations(paths, reference_net, batch_size=1, dims=2048, device="cpu", num_workers=0)
    return paths, theirs


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [True, False])
def test_features_equal_pytorch_fid_on_the_same_files(
    mixed_files: tuple[list[Path], np.ndarray], fid_weights: Path, cpu: DeviceManager, channels_last: bool
) -> None:
    """Our per-image resize in the workers equals pytorch-fid's resize inside the network."""
    paths, theirs = mixed_files
    model, _ = load_fid_inception(fid_weights)
    ours = extract_features(paths, model, cpu, batch_size=2, num_workers=0, channels_last=channels_last)
    assert ours.shape == theirs.shape == (4, 2048)
    scale = float(np.abs(theirs).max())
    assert scale > 1.0 and float(theirs.std()) > 0  # the random network's features are not degenerate
    assert float(np.abs(ours - theirs).max()) <= FEATURE_TOLERANCE * scale


# ---------------------------------------------------------------------------------- (b) Fréchet distance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_pytorch_fid_on_well_conditioned_statistics(seed: int) -> None:
    """Full-rank covariances (N > d), where scipy's sqrtm is accurate: the eigenvalue route gives its value."""
    rng = np.random.default_rng(seed)
    d = 64
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = rng.normal(size=(400, d)) @ mix
    f2 = rng.normal(size=(300, d)) @ (mix + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)) + 0.5
    (mu1, s1), (mu2, s2) = compute_statistics(f1), compute_statistics(f2)
    expected = _pytorch_fid_distance(mu1, s1, mu2, s2)
    assert expected > 1.0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_equals_pytorch_fid_when_the_covariance_is_rank_deficient() -> None:
    """N < d on one side (the usual case with < 2048 images): still pytorch-fid's value where its sqrtm copes."""
    rng = np.random.default_rng(7)
    d = 32
    f1 = rng.normal(size=(20, d))  # rank 19 covariance
    f2 = rng.normal(size=(200, d)) * 1.3 + 0.2
    (mu1, s1), (mu2, s2) = compute_statistics(f1), compute_statistics(f2)
    expected = _pytorch_fid_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


# -------------------------------------------------------------------------------------- (c) folder path


@pytest.mark.slow
def test_evaluate_fid_on_folders_equals_pytorch_fid_statistics_and_distance(
    reference_net: torch.nn.Module, fid_weights: Path, cpu: DeviceManager, tmp_path: Path
) -> None:
    """pytorch-fid's folder pipeline up to mu/sigma (``compute_statistics_of_path``: its file listing, PIL
    decoding, ``ToTensor``, DataLoader, ``np.mean``/``np.cov``) against ``evaluate_fid`` on the same folders.

    Its real side's statistics replace ours (as a ``.npz``, what ``python -m pytorch_fid --save-stats`` writes)
    and the FID must not move; the distance of statistics is tied to pytorch-fid's by (b) above. (Running
    pytorch-fid's ``calculate_frechet_distance`` itself on 2048 x 2048 matrices is a scipy ``sqrtm`` of 20+ s.)
    """
    rng = np.random.default_rng(3)
    for index in range(4):
        tile = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        write_image(tmp_path / "real" / f"{index}.png", tile)
        write_image(tmp_path / "fake" / f"{index}.png", (tile // 2 + 40).astype(np.uint8))
    mu, sigma = fid_score.compute_statistics_of_path(str(tmp_path / "real"), reference_net, 4, 2048, "cpu", 0)
    np.savez(tmp_path / "pytorch_fid_real.npz", mu=mu, sigma=sigma)

    ours = evaluate_fid(
        tmp_path / "real", tmp_path / "fake", device=cpu, weights=fid_weights, save_stats=tmp_path / "ours.npz"
    )
    their_mu, their_sigma, _, _ = read_stats(tmp_path / "pytorch_fid_real.npz")
    our_mu, our_sigma, n, _ = read_stats(tmp_path / "ours.npz")
    assert n == 4
    # Feature errors e (<= FEATURE_TOLERANCE of the largest feature) move mu by <= e and a covariance entry by
    # <= N / (N - 1) * (2 e max|x - mu| + e^2), with max|x - mu| <= sqrt((N - 1) max sigma_ii).
    spread = float(np.sqrt((n - 1) * np.diag(their_sigma).max()))
    e = FEATURE_TOLERANCE * (float(np.abs(their_mu).max()) + spread)
    np.testing.assert_allclose(our_mu, their_mu, rtol=0, atol=e)
    np.testing.assert_allclose(our_sigma, their_sigma, rtol=0, atol=n / (n - 1) * (2 * e * spread + e * e))

    assert ours.summary["fid"] > 0
    # pytorch-fid's --save-stats file in place of our real side (the fake side's file is read by the same code)
    real_theirs = evaluate_fid(tmp_path / "pytorch_fid_real.npz", tmp_path / "fake", device=cpu, weights=fid_weights)
    assert real_theirs.summary["fid"] == pytest.approx(ours.summary["fid"], rel=1e-5)
