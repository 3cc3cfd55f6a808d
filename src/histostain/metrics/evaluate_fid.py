"""The ``evaluate fid`` and ``evaluate kid`` services: image folders or statistics files in, one result out.

Features come from :mod:`histostain.metrics.fid_features`, the maths from :mod:`histostain.metrics.fid`. This
module opens the two sides (a folder of images or a pytorch-fid ``.npz`` of ``mu``/``sigma``), loads the
network once when a side needs it, reads and writes statistics files, decides the worker count, and records
what a number depends on (N per side, the weights' sha256, the resize rule, the square-root route).
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

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_write
from histostain.io.images import list_images
from histostain.io.writable import check_output_file
from histostain.metrics.defaults import (
    DEFAULT_BATCH_SIZE,
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_SHA256_PREFIX,
    KID_SEED,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
)
from histostain.metrics.fid import (
    check_statistics,
    compute_statistics,
    covariance_factor,
    frechet_distance_and_route,
    kid_from_features,
)
from histostain.metrics.fid_features import RESIZE_RULE, check_loader_options, extract_features, resolve_num_workers
from histostain.metrics.inception import FID_FEATURE_DIM, is_published_fid_weights, load_fid_inception, resolve_weights
from histostain.metrics.report import EvaluationResult
from histostain.provenance import Provenance, record_or_capture
from histostain.runtime.device import DeviceManager

log = logging.getLogger(__name__)

STATS_SUFFIX = ".npz"


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
    mu, sigma = check_statistics(mu, sigma, str(path))
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
            # Only a precision the user asked for (flag, HISTOSTAIN_PRECISION, config file) deserves a note;
            # one that "auto" picked was never the user's choice, so saying it is ignored would only confuse.
            if self.device.precision != "fp32" and self.device.plan.precision_reason == "requested":
                log.info(
                    "FID/KID features are computed in fp32; the requested precision %s is not used",
                    self.device.precision,
                )
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


def _log_warnings(warnings: Sequence[str]) -> None:
    """Result warnings go to the log at DEBUG only: the CLI prints ``result.warnings`` itself, once (a WARNING
    record would reach its log handler, also under ``--quiet``, and show every warning twice)."""
    for message in warnings:
        log.debug("warning: %s", message)


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


def _weights_check(sides: Sequence[_Side], sha256: str | None, metric: str) -> tuple[bool | None, list[str]]:
    """Are the features from the published FID-Inception file? ``(published, warnings)``; None when unknown.

    The network's hashes and those recorded in statistics files are checked alike: a file of the right layout
    with other values (a randomly initialised or fine-tuned network) gives numbers that look like a FID but
    compare with nothing published, so the result says so instead of printing them plainly.
    """
    known = [("the weights", sha256)] if sha256 else []
    known += [(f"{side.path} (statistics file)", side.stats_sha256) for side in sides if side.stats_sha256]
    if not known:
        return None, []
    other = [(name, sha) for name, sha in known if not is_published_fid_weights(sha)]
    if not other:
        return True, []
    name, sha = other[0]
    return False, [
        f"{name}: sha256 {sha[:8]}... is not the published FID-Inception file "
        f"({FID_WEIGHTS_FILENAME}, sha256 {FID_WEIGHTS_SHA256_PREFIX}...): this {metric.upper()} is not comparable "
        "with published values"
    ]


WEIGHTS_NOTES = {
    True: f"published FID-Inception ({FID_WEIGHTS_SHA256_PREFIX}...)",
    False: "NOT the published FID-Inception file (not comparable with papers)",
    None: "unknown (the statistics files record no weights hash)",
}


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
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    save_stats: Path | None = None,
    provenance: Provenance | None = None,
) -> EvaluationResult:
    """FID between two image folders (either may be a saved ``.npz`` of mu/sigma), as pytorch-fid computes it.

    ``save_stats`` writes the statistics of the **real** side (the reference set that is reused across models).
    ``num_workers=None`` lets the device decide (:func:`~histostain.metrics.fid_features.resolve_num_workers`).
    ``provenance``: the caller's run record (the CLI's), completed with the resolved worker count; without one the
    result records this call's arguments.
    """
    check_loader_options(batch_size, num_workers)
    if save_stats is not None:
        if Path(save_stats).suffix.lower() != STATS_SUFFIX:
            raise ConfigError(f"--save-stats must name a .npz file, got {save_stats}")
        if Path(save_stats).is_dir():
            raise InputError(
                f"--save-stats {save_stats} is a folder; expected a .npz file name",
                hint=f"e.g. --save-stats {Path(save_stats) / 'real_stats.npz'}",
            )
        check_output_file(save_stats, "--save-stats")  # before any feature is computed
    workers = resolve_num_workers(num_workers, device.plan.kind)
    record = record_or_capture(
        provenance, real=real, fake=fake, weights=weights, batch_size=batch_size, save_stats=save_stats
    ).with_options(num_workers=workers)
    sides = [_open_side("real", real, allow_stats=True), _open_side("fake", fake, allow_stats=True)]
    extractor = _Extractor(device, weights, weights_dir, batch_size, workers)
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
    fid, route = frechet_distance_and_route(
        real_side.mu, real_side.sigma, fake_side.mu, fake_side.sigma, factor1=real_side.factor, factor2=fake_side.factor
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
    published, weights_warnings = _weights_check(sides, extractor.sha256, "fid")
    meta["weights_published"] = published
    warnings = weights_warnings + _small_n_warnings(sides) + _hash_warnings(sides, extractor.sha256)
    _log_warnings(warnings)
    return EvaluationResult(
        metric="fid",
        summary={"fid": fid, "n_real": real_side.n, "n_fake": fake_side.n},
        tables={"inputs": _inputs_table(sides)},
        meta=meta,
        warnings=warnings,
        provenance=record,
        notes={"weights": WEIGHTS_NOTES[published]},
    )


def evaluate_kid(
    real: Path,
    fake: Path,
    *,
    device: DeviceManager,
    weights: Path | None = None,
    weights_dir: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
    provenance: Provenance | None = None,
) -> EvaluationResult:
    """KID between two image folders on the FID-Inception pool3 features (raw values; x1000 alongside).

    ``num_workers`` and ``provenance`` as for :func:`evaluate_fid`.
    """
    if subsets < 1 or subset_size < 2:
        raise ConfigError(f"KID needs subsets >= 1 and subset size >= 2, got {subsets} and {subset_size}")
    check_loader_options(batch_size, num_workers)
    workers = resolve_num_workers(num_workers, device.plan.kind)
    record = record_or_capture(
        provenance,
        real=real,
        fake=fake,
        weights=weights,
        batch_size=batch_size,
        subsets=subsets,
        subset_size=subset_size,
        seed=seed,
    ).with_options(num_workers=workers)
    sides = [_open_side("real", real, allow_stats=False), _open_side("fake", fake, allow_stats=False)]
    extractor = _Extractor(device, weights, weights_dir, batch_size, workers)
    extractor.resolve()
    for side in sides:
        side.features = extractor.features(side)
    real_side, fake_side = sides
    assert real_side.features is not None and fake_side.features is not None
    mean, std = kid_from_features(real_side.features, fake_side.features, subsets, subset_size, seed)
    m = min(subset_size, len(real_side.features), len(fake_side.features))
    published, warnings = _weights_check(sides, extractor.sha256, "kid")
    if m < subset_size:
        warnings.append(
            f"subset size reduced from {subset_size} to {m} = min(N real {real_side.n}, N fake {fake_side.n}); "
            f"KID values with other subset sizes have other variance (torch-fidelity refuses this case)"
        )
    _log_warnings(warnings)
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
        "weights_published": published,
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
        provenance=record,
        notes={"weights": WEIGHTS_NOTES[published]},
    )


__all__ = ["STATS_SUFFIX", "evaluate_fid", "evaluate_kid", "read_stats", "write_stats"]
