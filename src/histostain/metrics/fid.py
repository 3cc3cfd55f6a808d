"""FID and KID maths on feature arrays, as pytorch-fid (FID) and torch-fidelity / clean-fid (KID) define them.

* Statistics: ``mu`` = mean, ``sigma`` = covariance with N - 1 (``np.cov``), both float64.
* FID = ``|mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr sqrt(S1 S2)``. The trace of the matrix square root comes from
  eigenvalues, not ``scipy.linalg.sqrtm``: ``S1 S2`` is similar to the symmetric positive semi-definite
  ``A = S1^1/2 S2 S1^1/2``, so ``Tr sqrt(S1 S2) = sum sqrt(eigvalsh(A))``, with ``S1^1/2`` from ``eigh`` and
  round-off negatives clipped to 0. This is real by construction, stays finite when N < 2048 makes the
  covariances singular, and avoids the scipy 1.11.2-1.12 ``sqrtm`` regression and its deprecated ``disp``.
* KID: cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, unbiased MMD^2 on ``subsets`` pairs of subsets of
  size ``m = min(subset_size, N1, N2)`` drawn without replacement by a seeded ``numpy.random.default_rng``;
  mean and (population) standard deviation over the subsets, raw (papers often print x1000).

numpy only: the features come from :mod:`histostain.metrics.fid_features` (the FID-Inception network), the
``evaluate fid``/``evaluate kid`` services are :mod:`histostain.metrics.evaluate_fid`.
"""

from __future__ import annotations

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.metrics.defaults import KID_SEED, KID_SUBSET_SIZE, KID_SUBSETS

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


def check_statistics(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` (d,) and ``sigma`` (d, d) as float64, finite, ``sigma`` symmetrised; else an InputError naming them."""
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
    return frechet_distance_and_route(mu1, sigma1, mu2, sigma2, factor1=factor1, factor2=factor2)[0]


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two N x d feature sets: their statistics, and the exact N-sized trace route when N <= d
    (a validation set of a few hundred images then costs milliseconds, not a 2048 x 2048 eigenproblem)."""
    sides = []
    for features in (real, fake):
        mu, sigma = compute_statistics(features)
        factor = covariance_factor(features, mu) if len(features) <= np.asarray(features).shape[1] else None
        sides.append((mu, sigma, factor))
    (mu1, sigma1, factor1), (mu2, sigma2, factor2) = sides
    return frechet_distance(mu1, sigma1, mu2, sigma2, factor1=factor1, factor2=factor2)


def frechet_distance_and_route(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    factor1: np.ndarray | None = None,
    factor2: np.ndarray | None = None,
) -> tuple[float, str]:
    """:func:`frechet_distance` and the route taken for the trace term (recorded with every FID)."""
    mu1, sigma1 = check_statistics(mu1, sigma1, "first statistics")
    mu2, sigma2 = check_statistics(mu2, sigma2, "second statistics")
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
    f1: np.ndarray,
    f2: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
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


__all__ = [
    "check_statistics",
    "compute_statistics",
    "covariance_factor",
    "fid_from_features",
    "frechet_distance",
    "frechet_distance_and_route",
    "kid_from_features",
]
