"""FID and KID between two image sets, computed as pytorch-fid (FID) and torch-fidelity / clean-fid (KID) define them.

Features: the 2048-d pool3 output of the FID-Inception network (:mod:`histostain.metrics.inception`) on each
image read as uint8 RGB, scaled to [0, 1], resized bilinearly to 299 x 299 (``align_corners=False``, no
antialiasing), then mapped to [-1, 1]: the pytorch-fid pipeline. Decoding and resizing run in DataLoader worker
processes so they overlap with the network; the network always runs in fp32 (reduced precision would move
the numbers, and FID is only useful when it is reproducible).

* Statistics: ``mu`` = mean, ``sigma`` = covariance with N - 1 (``np.cov``), both float64.
* FID = ``|mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr sqrt(S1 S2)``. The trace of the matrix square root comes from
  eigenvalues, not ``scipy.linalg.sqrtm``: ``S1 S2`` is similar to the symmetric positive semi-definite
  ``A = S1^1/2 S2 S1^1/2``, so ``Tr sqrt(S1 S2) = sum sqrt(eigvalsh(A))``, with ``S1^1/2`` from ``eigh`` and
  round-off negatives clipped to 0. This is real by construction, stays finite when N < 2048 makes the
  covariances singular, and avoids the scipy 1.11.2-1.12 ``sqrtm`` regression and its deprecated ``disp``.
* KID: cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, unbiased MMD^2 on ``subsets`` pairs of subsets of
  size ``m = min(subset_size, N1, N2)`` drawn without replacement by a seeded ``numpy.random.default_rng``;
  mean and (population) standard deviation over the subsets, raw (papers often print x1000).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histostain.errors import ConfigError, HistostainError, InputError
from histostain.io.atomic import atomic_write
from histostain.io.images import list_images, read_image
from histostain.metrics.inception import (
    FID_FEATURE_DIM,
    FID_INPUT_SIZE,
    FID_WEIGHTS_FILENAME,
    load_fid_inception,
    resolve_weights,
)
from histostain.metrics.report import EvaluationResult
from histostain.runtime.device import DeviceManager
from histostain.runtime.progress import progress_task

log = logging.getLogger(__name__)

STATS_SUFFIX = ".npz"
RESIZE_RULE = "bilinear to 299x299, align_corners=False, no antialias; [0,1] -> 2x-1 (pytorch-fid)"
_GRAM_BYTES_LIMIT = 512 * 2**20  # KID: precompute one Gram matrix when it fits in this many bytes


# ------------------------------------------------------------------------------------------------ statistics


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N - 1 denominator, as ``np.cov``) of N x d features, in float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise InputError(f"features must be an N x d array, got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise InputError(f"FID needs at least 2 images per side to estimate a covariance, got {feats.shape[0]}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _floor_noise(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off (|v| <= d * eps * max) set to 0 before taking square roots.

    Singular covariances (N < d) have many eigenvalues that are 0 up to round-off (~1e-16 * max); their
    square roots (~1e-8 each) would otherwise add up to a visible bias in the trace.
    """
    tolerance = values.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(values).max(initial=0.0)), 0.0)
    return np.where(values > tolerance, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(_floor_noise(values))) @ vectors.T


def _check_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InputError(f"{name}: mu must be (d,) and sigma (d, d); got {mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise InputError(f"{name}: statistics contain NaN or infinite values")
    return mu, (sigma + sigma.T) / 2


def covariance_factor(features: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``A`` with ``A.T @ A`` = the N - 1 covariance: the centred features divided by sqrt(N - 1)."""
    feats = np.asarray(features, dtype=np.float64)
    return (feats - mu) / np.sqrt(feats.shape[0] - 1)


def _trace_sqrt_product(
    sigma1: np.ndarray, sigma2: np.ndarray, factor1: np.ndarray | None, factor2: np.ndarray | None
) -> tuple[float, str]:
    """``Tr sqrt(S1 S2)`` by the cheapest exact route.

    * both factors (``S = A.T A``) known: the nonzero eigenvalues of ``S1 S2`` are the squared singular values
      of ``A1 A2.T`` (N1 x N2), so the trace is its nuclear norm;
    * one factor with fewer rows than d: eigenvalues of the small symmetric ``A S A.T``;
    * otherwise eigenvalues of ``S1^1/2 S2 S1^1/2`` (d x d).
    All are similar matrices of ``S1 S2`` (up to zero eigenvalues), so they give the same number.
    """
    d = sigma1.shape[0]
    if factor1 is not None and factor2 is not None and min(len(factor1), len(factor2)) <= d:
        route = f"nuclear norm of A1 A2^T ({len(factor1)} x {len(factor2)})"
        return float(np.linalg.svd(factor1 @ factor2.T, compute_uv=False).sum()), route
    if factor1 is not None and len(factor1) <= d:
        inner, route = factor1 @ sigma2 @ factor1.T, f"eigenvalues of A1 S2 A1^T ({len(factor1)} x {len(factor1)})"
    elif factor2 is not None and len(factor2) <= d:
        inner, route = factor2 @ sigma1 @ factor2.T, f"eigenvalues of A2 S1 A2^T ({len(factor2)} x {len(factor2)})"
    else:
        root1 = _psd_sqrt(sigma1)
        inner, route = root1 @ sigma2 @ root1, f"eigenvalues of S1^1/2 S2 S1^1/2 ({d} x {d})"
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(_floor_noise(eigenvalues)).sum()), route


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    factor1: np.ndarray | None = None,
    factor2: np.ndarray | None = None,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), with the eigenvalue route for the sqrt trace.

    ``factor1``/``factor2`` (optional, from :func:`covariance_factor`) let sets of N <= d images take an exact
    N-sized route instead of d x d eigenproblems; the value is the same.
    """
    return _frechet(mu1, sigma1, mu2, sigma2, factor1, factor2)[0]


def _frechet(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    factor1: np.ndarray | None,
    factor2: np.ndarray | None,
) -> tuple[float, str]:
    """The distance and the route taken for the trace term."""
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise InputError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    for factor in (factor1, factor2):
        if factor is not None and (factor.ndim != 2 or factor.shape[1] != mu1.shape[0]):
            raise InputError(f"covariance factor must be N x {mu1.shape[0]}, got {factor.shape}")
    trace_covmean, route = _trace_sqrt_product(sigma1, sigma2, factor1, factor2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean), route


# ------------------------------------------------------------------------------------------------------- KID


def _unbiased_mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from the three kernel blocks of one pair of size-m subsets."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets) between two N x d feature sets; see the module docstring for the definition.

    When all pairwise products fit in memory they are computed once (one matrix product instead of one per
    subset); the subsets and the result are the same either way.
    """
    x_all = np.asarray(f1, dtype=np.float64)
    y_all = np.asarray(f2, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise InputError(f"KID needs two N x d feature arrays of equal d, got {x_all.shape} and {y_all.shape}")
    if subsets < 1:
        raise ConfigError(f"KID subsets must be >= 1, got {subsets}")
    n1, n2 = x_all.shape[0], y_all.shape[0]
    m = min(int(subset_size), n1, n2)
    if m < 2:
        raise InputError(f"KID needs subsets of at least 2 images; got N = {n1} and {n2}, subset size {subset_size}")
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    gram = None
    if (n1 + n2) ** 2 * 8 <= _GRAM_BYTES_LIMIT:
        joint = np.concatenate([x_all, y_all])
        gram = (joint @ joint.T / d + 1.0) ** 3
    values = np.empty(subsets, dtype=np.float64)
    for index in range(subsets):
        ix = rng.choice(n1, m, replace=False)
        iy = rng.choice(n2, m, replace=False)
        if gram is not None:
            jy = iy + n1
            values[index] = _unbiased_mmd2(gram[np.ix_(ix, ix)], gram[np.ix_(jy, jy)], gram[np.ix_(ix, jy)])
        else:
            x, y = x_all[ix], y_all[iy]
            values[index] = _unbiased_mmd2((x @ x.T / d + 1.0) ** 3, (y @ y.T / d + 1.0) ** 3, (x @ y.T / d + 1.0) ** 3)
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------------------------ feature extraction


class ImageTensorDataset:
    """Map-style dataset: path -> float 3 x 299 x 299 in [0, 1], decoded and resized in the worker process.

    Resizing each image on its own gives the same numbers as resizing a batch (bilinear resampling is
    per-image) and lets a folder mix image sizes. A read failure is returned, not raised, so the main process
    can raise the original one-line :class:`InputError` instead of the DataLoader's re-wrapped traceback.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        try:
            image = read_image(self.paths[index])
        except HistostainError as exc:
            return None, exc.one_line()
        if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (some decoders return them)
            image = image.copy()
        # exactly torchvision's ToTensor: uint8 -> float32 / 255
        tensor = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if tensor.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            size = (FID_INPUT_SIZE, FID_INPUT_SIZE)
            tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=False)
        return tensor[0], None


def _collate(items: list[tuple[torch.Tensor | None, str | None]]) -> tuple[torch.Tensor | None, str | None]:
    for _, error in items:
        if error is not None:
            return None, error
    return torch.stack([tensor for tensor, _ in items if tensor is not None]), None


def _check_loader_options(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")


def extract_features(
    paths: Sequence[Path],
    model: torch.nn.Module,
    device: DeviceManager,
    batch_size: int = 32,
    num_workers: int = 2,
    description: str = "FID features",
    channels_last: bool | None = None,
) -> np.ndarray:
    """Pool3 features (N x 2048, float32, in ``paths`` order) of the images, batched, decoding in workers.

    ``channels_last=None`` uses channels_last memory where the device plan asks for it and on CPU, where
    oneDNN runs this network faster (benchmarks/bench_fid.py) with features equal to fp32
    round-off. Workers (``num_workers`` processes, at most one per batch) decode and resize while the
    main process runs the network.
    """
    from torch.utils.data import DataLoader

    _check_loader_options(batch_size, num_workers)
    paths = list(paths)
    batches = -(-len(paths) // batch_size)
    loader = DataLoader(
        ImageTensorDataset(paths),  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=min(num_workers, batches),
        collate_fn=_collate,
        pin_memory=device.plan.kind == "cuda",
    )
    if channels_last is None:
        channels_last = device.plan.channels_last or device.plan.kind == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = device.prepare_model(model).to(memory_format=memory_format).eval()
    out = np.empty((len(paths), FID_FEATURE_DIM), dtype=np.float32)
    filled = 0
    with torch.inference_mode(), progress_task(description, total=len(paths), unit="img") as task:
        for batch, error in loader:
            if error is not None:
                raise InputError(error)
            assert batch is not None
            batch = device.to_device(batch).contiguous(memory_format=memory_format)
            features = model(batch).float()
            count = features.shape[0]
            out[filled : filled + count] = features.cpu().numpy()
            filled += count
            task.advance(count)
    return out


# ------------------------------------------------------------------------------------------------ the sides


@dataclass
class _Side:
    """One input of FID/KID: a folder of images or a saved statistics file."""

    role: str  # "real" / "fake"
    path: Path
    images: list[Path] | None = None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    n: int | None = None
    stats_sha256: str | None = None  # weights hash recorded in a statistics file
    features: np.ndarray | None = None
    factor: np.ndarray | None = None  # covariance factor, kept only when N <= d (cheap exact FID route)

    @property
    def kind(self) -> str:
        return "images" if self.images is not None else "statistics"


def _is_stats_file(path: Path) -> bool:
    return path.suffix.lower() == STATS_SUFFIX and not path.is_dir()


def read_stats(path: Path) -> tuple[np.ndarray, np.ndarray, int | None, str | None]:
    """Read ``mu``/``sigma`` from a pytorch-fid ``.npz`` (and ``n``, ``weights_sha256`` when histostain wrote it)."""
    if not path.is_file():
        raise InputError(f"statistics file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if not {"mu", "sigma"} <= keys:
                raise InputError(f"{path} holds {sorted(keys)[:6]}, expected the arrays 'mu' and 'sigma'")
            mu, sigma = np.asarray(data["mu"]), np.asarray(data["sigma"])
            n = int(data["n"]) if "n" in keys else None
            sha = str(data["weights_sha256"]) if "weights_sha256" in keys else None
    except InputError:
        raise
    except Exception as exc:  # a zip that is not an npz, a pickled object array, a truncated file
        raise InputError(f"cannot read statistics file {path}: {' '.join(str(exc).split())[:160]}") from exc
    mu, sigma = _check_stats(mu, sigma, str(path))
    return mu, sigma, n, sha


def write_stats(
    path: Path, mu: np.ndarray, sigma: np.ndarray, n: int | None = None, weights_sha256: str | None = None
) -> Path:
    """Write ``mu``/``sigma`` atomically as ``.npz`` (readable by pytorch-fid), with ``n`` and the weights hash."""
    arrays: dict[str, Any] = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    if n is not None:
        arrays["n"] = np.int64(n)
    if weights_sha256 is not None:
        arrays["weights_sha256"] = np.str_(weights_sha256)
    path = Path(path)
    if path.suffix.lower() != STATS_SUFFIX:
        raise ConfigError(f"statistics file must end in .npz: {path}")
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _open_side(role: str, path: Path, allow_stats: bool) -> _Side:
    path = Path(path)
    if _is_stats_file(path):
        if not allow_stats:
            raise InputError(
                f"{role} input {path} is a statistics file; KID needs the images themselves",
                hint="pass the image folder",
            )
        mu, sigma, n, sha = read_stats(path)
        return _Side(role, path, mu=mu, sigma=sigma, n=n, stats_sha256=sha)
    images = list_images(path)
    if len(images) < 2:
        raise InputError(f"{role} input {path} has {len(images)} image; FID and KID need at least 2 per side")
    return _Side(role, path, images=images, n=len(images))


@dataclass
class _Extractor:
    """Loads the network once, on first need, and remembers which weights it used."""

    device: DeviceManager
    weights: Path | None
    weights_dir: Path | None
    batch_size: int
    num_workers: int
    path: Path | None = None
    sha256: str | None = None
    model: torch.nn.Module | None = None
    seconds: float = 0.0
    images: int = 0

    def resolve(self) -> None:
        self.path = resolve_weights(self.weights, self.weights_dir)

    def features(self, side: _Side) -> np.ndarray:
        if self.model is None:
            self.resolve()
            model, loaded = load_fid_inception(self.path)
            self.sha256 = loaded.sha256
            if self.device.precision != "fp32":
                log.info("FID/KID features are computed in fp32; --precision %s is not used", self.device.precision)
            self.model = self.device.prepare_model(model)
        assert side.images is not None
        start = time.perf_counter()
        features = extract_features(
            side.images,
            self.model,
            self.device,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            description=f"Inception features ({side.role})",
        )
        self.seconds += time.perf_counter() - start
        self.images += len(side.images)
        return features

    def meta(self) -> dict[str, Any]:
        return {
            "weights": str(self.path) if self.path else None,
            "weights_sha256": self.sha256,
            "device": self.device.plan.device,
            "precision": "fp32",
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "feature_seconds": round(self.seconds, 3),
            "images_per_second": round(self.images / self.seconds, 3) if self.seconds > 0 else None,
        }


def _small_n_warnings(sides: Sequence[_Side], minimum: int = FID_FEATURE_DIM) -> list[str]:
    warnings = []
    for side in sides:
        if side.n is not None and side.n < minimum:
            warnings.append(
                f"N {side.role} = {side.n} < {minimum} (the feature dimension): the covariance is rank-deficient, "
                f"FID is biased upwards and comparable only with FIDs computed at the same N"
            )
        elif side.n is None:
            warnings.append(f"N {side.role} unknown: {side.path} does not record how many images it summarises")
    return warnings


def _hash_warnings(sides: Sequence[_Side], sha256: str | None) -> list[str]:
    """Statistics files record the weights they came from; mixing weights makes the FID meaningless."""
    sources = [("this run's weights", sha256)] if sha256 else []
    sources += [(str(side.path), side.stats_sha256) for side in sides if side.stats_sha256]
    if len({sha for _, sha in sources}) <= 1:
        return []
    listed = ", ".join(f"{name}: {sha[:12]}..." for name, sha in sources)
    return [f"the inputs come from different Inception weights ({listed}): the FID is not meaningful"]


def _inputs_table(sides: Sequence[_Side]) -> list[dict[str, Any]]:
    return [{"side": side.role, "path": str(side.path), "kind": side.kind, "n": side.n} for side in sides]


# --------------------------------------------------------------------------------------------------- services


def evaluate_fid(
    real: Path,
    fake: Path,
    *,
    device: DeviceManager,
    weights: Path | None = None,
    weights_dir: Path | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    save_stats: Path | None = None,
) -> EvaluationResult:
    """FID between two image folders (either may be a saved ``.npz`` of mu/sigma), as pytorch-fid computes it.

    ``save_stats`` writes the statistics of the **real** side (the reference set that is reused across models).
    """
    _check_loader_options(batch_size, num_workers)
    if save_stats is not None and Path(save_stats).suffix.lower() != STATS_SUFFIX:
        raise ConfigError(f"--save-stats must name a .npz file, got {save_stats}")
    sides = [_open_side("real", real, allow_stats=True), _open_side("fake", fake, allow_stats=True)]
    extractor = _Extractor(device, weights, weights_dir, batch_size, num_workers)
    if any(side.images is not None for side in sides):
        extractor.resolve()  # fail on missing weights before any work
    for side in sides:
        if side.images is not None:
            features = extractor.features(side)
            side.mu, side.sigma = compute_statistics(features)
            if len(features) <= features.shape[1]:
                side.factor = covariance_factor(features, side.mu)
    real_side, fake_side = sides
    assert real_side.mu is not None and real_side.sigma is not None
    assert fake_side.mu is not None and fake_side.sigma is not None
    if real_side.mu.shape != fake_side.mu.shape:
        raise InputError(
            f"feature dimensions differ: {real_side.path} has {real_side.mu.shape[0]}, "
            f"{fake_side.path} has {fake_side.mu.shape[0]}",
            hint=f"statistics must be {FID_FEATURE_DIM}-d pool3 features of the FID-Inception network",
        )
    fid, route = _frechet(
        real_side.mu, real_side.sigma, fake_side.mu, fake_side.sigma, real_side.factor, fake_side.factor
    )
    saved = None
    if save_stats is not None:
        sha = extractor.sha256 or real_side.stats_sha256
        saved = str(write_stats(Path(save_stats), real_side.mu, real_side.sigma, real_side.n, sha))
    meta: dict[str, Any] = {
        "real": str(real_side.path),
        "fake": str(fake_side.path),
        "n_real": real_side.n,
        "n_fake": fake_side.n,
        "feature_dim": int(real_side.mu.shape[0]),
        "resize": RESIZE_RULE,
        "covariance": "float64, N-1 denominator",
        "sqrt_trace": f"{route}; numpy eigh/svd, no scipy sqrtm",
        "reference": "pytorch-fid 0.3.0",
        "saved_stats": saved,
        **extractor.meta(),
    }
    warnings = _small_n_warnings(sides) + _hash_warnings(sides, extractor.sha256)
    for message in warnings:
        log.warning(message)
    return EvaluationResult(
        metric="fid",
        summary={"fid": fid, "n_real": real_side.n, "n_fake": fake_side.n},
        tables={"inputs": _inputs_table(sides)},
        meta=meta,
        warnings=warnings,
    )


def evaluate_kid(
    real: Path,
    fake: Path,
    *,
    device: DeviceManager,
    weights: Path | None = None,
    weights_dir: Path | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> EvaluationResult:
    """KID between two image folders on the FID-Inception pool3 features (raw values; x1000 alongside)."""
    if subsets < 1 or subset_size < 2:
        raise ConfigError(f"KID needs subsets >= 1 and subset size >= 2, got {subsets} and {subset_size}")
    _check_loader_options(batch_size, num_workers)
    sides = [_open_side("real", real, allow_stats=False), _open_side("fake", fake, allow_stats=False)]
    extractor = _Extractor(device, weights, weights_dir, batch_size, num_workers)
    extractor.resolve()
    for side in sides:
        side.features = extractor.features(side)
    real_side, fake_side = sides
    assert real_side.features is not None and fake_side.features is not None
    mean, std = kid_from_features(real_side.features, fake_side.features, subsets, subset_size, seed)
    m = min(subset_size, len(real_side.features), len(fake_side.features))
    warnings = []
    if m < subset_size:
        warnings.append(
            f"subset size reduced from {subset_size} to {m} = min(N real {real_side.n}, N fake {fake_side.n}); "
            f"KID values with other subset sizes have other variance (torch-fidelity refuses this case)"
        )
    for message in warnings:
        log.warning(message)
    meta: dict[str, Any] = {
        "real": str(real_side.path),
        "fake": str(fake_side.path),
        "n_real": real_side.n,
        "n_fake": fake_side.n,
        "feature_dim": FID_FEATURE_DIM,
        "resize": RESIZE_RULE,
        "kernel": "(x.y/d + 1)^3, d = 2048",
        "estimator": "unbiased MMD^2, mean and population std over subsets",
        "subsets": subsets,
        "subset_size": m,
        "requested_subset_size": subset_size,
        "seed": seed,
        "rng": "numpy.random.default_rng(seed).choice(N, m, replace=False), real then fake per subset",
        **extractor.meta(),
    }
    return EvaluationResult(
        metric="kid",
        summary={
            "kid": mean,
            "kid_std": std,
            "kid_x1000": mean * 1000.0,
            "kid_std_x1000": std * 1000.0,
            "subset_size": m,
            "subsets": subsets,
            "n_real": real_side.n,
            "n_fake": fake_side.n,
        },
        tables={"inputs": _inputs_table(sides)},
        meta=meta,
        warnings=warnings,
    )


__all__ = [
    "FID_WEIGHTS_FILENAME",
    "ImageTensorDataset",
    "compute_statistics",
    "covariance_factor",
    "evaluate_fid",
    "evaluate_kid",
    "extract_features",
    "frechet_distance",
    "kid_from_features",
    "read_stats",
    "write_stats",
]
