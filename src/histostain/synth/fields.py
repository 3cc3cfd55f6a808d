"""Cheap random fields: smooth low-frequency fields and crops of fixed, precomputed noise banks.

Smooth fields are a small random grid interpolated to full size by two matrix products with Gaussian
radial-basis weights (``A_y @ G @ A_x.T``), which costs far less than filtering a full-size image. Fine
textures (chromatin grain, sensor noise) come from random crops of noise banks computed once per process from a
fixed seed, so a tile costs a slice instead of millions of random draws, and stays deterministic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_BANK_SIDE = 1024
_BANK_SEED = 0x5EED


@lru_cache(maxsize=64)
def _rbf_matrix(n: int, cells: int) -> np.ndarray:
    """``n x (cells + 2)`` interpolation weights from a coarse grid (with one margin node per side) to n pixels."""
    nodes = np.linspace(-1.0, cells, cells + 2) / max(cells - 1, 1)
    pixels = (np.arange(n, dtype=np.float64) + 0.5) / n
    width = 1.0 / max(cells - 1, 1)
    weights = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) / (0.6 * width)) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    weights *= np.sqrt(cells + 2.0)  # keep roughly unit variance whatever the grid size
    out = weights.astype(np.float32)
    out.setflags(write=False)
    return out


def smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """A smooth random field (float32, about zero mean, roughly unit spread) with ``cells`` blobs per side."""
    cells = max(2, int(cells))
    grid = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    rows = _rbf_matrix(height, cells) @ grid
    across = np.ascontiguousarray(_rbf_matrix(width, cells).T)
    field = np.empty((height, width), dtype=np.float32)
    # Row blocks small enough that OpenBLAS stays single-threaded: its threads only contend with our own work.
    block = max(1, 150_000 // max(1, width * across.shape[0]))
    for start in range(0, height, block):
        np.matmul(rows[start : start + block], across, out=field[start : start + block])
    return field / np.float32(max(float(field.std()), 1e-6))


@lru_cache(maxsize=1)
def _grain_bank() -> np.ndarray:
    """A fixed field of fine grain (correlation length about 1.5 px), zero mean and unit variance."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(_BANK_SEED)
    white = rng.standard_normal((_BANK_SIDE, _BANK_SIDE)).astype(np.float32)
    grain = ndi.gaussian_filter(white, 1.0, mode="wrap")
    grain /= grain.std()
    grain.setflags(write=False)
    return grain


@lru_cache(maxsize=1)
def _white_bank() -> np.ndarray:
    rng = np.random.default_rng(_BANK_SEED + 1)
    white = rng.standard_normal(_BANK_SIDE * _BANK_SIDE * 3).astype(np.float32)
    white.setflags(write=False)
    return white


def quantile(field: np.ndarray, q: float) -> float:
    """Approximate quantile of a smooth field from a regular subsample (much cheaper than the full sort)."""
    step = max(1, int(np.sqrt(field.size / 4096)))
    return float(np.quantile(field[::step, ::step], q))


def grain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop (with random flips) of the fine-grain bank; wraps around for large tiles."""
    bank = _grain_bank()
    oy, ox = (int(v) for v in rng.integers(0, _BANK_SIDE, size=2))
    flip_y, flip_x = (bool(v) for v in rng.integers(0, 2, size=2))
    if oy + height <= _BANK_SIDE and ox + width <= _BANK_SIDE:
        crop = bank[oy : oy + height, ox : ox + width]
    else:
        rows = np.arange(oy, oy + height) % _BANK_SIDE
        cols = np.arange(ox, ox + width) % _BANK_SIDE
        crop = bank[np.ix_(rows, cols)]
    if flip_y:
        crop = crop[::-1]
    if flip_x:
        crop = crop[:, ::-1]
    return crop


def white_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of ``shape`` as a (read-only) slice of the white bank."""
    bank = _white_bank()
    count = int(np.prod(shape))
    offset = int(rng.integers(0, bank.size))
    if offset + count <= bank.size:
        flat = bank[offset : offset + count]
    else:
        repeats = -(-(offset + count) // bank.size)  # ceil: enough copies of the bank to reach the end
        flat = np.concatenate([bank[offset:], *([bank] * (repeats - 1))])[:count]
    return flat.reshape(shape)
