"""Nucleus geometry: drawing shape parameters per type and rasterising them into one instance map.

A nucleus is a filled ellipse (semi-axes ``a >= b``, orientation ``theta``) whose boundary radius is perturbed
by a low-order Fourier series, ``r(phi) = 1 + sum_k A_k cos(k phi) + B_k sin(k phi)`` for k = 2..5 in the
ellipse's normalised frame. The series' total amplitude stays below 1, so every shape is star-shaped around its
centre and therefore one connected piece. All nuclei of a size class are rasterised together in padded
windows around their centres (no per-pixel Python loop); where nuclei overlap, the later one wins.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
from skimage.measure import label

from histostain.synth.constants import NUCLEUS_STATS

HARMONICS = np.arange(2, 6)
_WINDOW_STEPS = (3, 4, 5, 6, 8, 10, 12, 15, 18, 22, 27, 33, 40, 48, 58, 70, 84, 100, 120, 150, 200)


@dataclass
class NucleusDrafts:
    """Shape parameters of nuclei before rasterisation (pixel units), in draw order."""

    x: np.ndarray  # centre column, float64
    y: np.ndarray  # centre row, float64
    a: np.ndarray  # semi-major axis, px
    b: np.ndarray  # semi-minor axis, px
    theta: np.ndarray  # orientation of the major axis, radians from the x axis
    coef: np.ndarray  # (n, 4, 2) Fourier coefficients (A_k, B_k) for harmonics 2..5
    type: np.ndarray  # uint8 PanNuke type 1..5

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def empty(cls) -> NucleusDrafts:
        return cls(
            x=np.zeros(0),
            y=np.zeros(0),
            a=np.zeros(0),
            b=np.zeros(0),
            theta=np.zeros(0),
            coef=np.zeros((0, len(HARMONICS), 2)),
            type=np.zeros(0, np.uint8),
        )

    @classmethod
    def concat(cls, parts: list[NucleusDrafts]) -> NucleusDrafts:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def take(self, index: np.ndarray) -> NucleusDrafts:
        return NucleusDrafts(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def draw_drafts(
    rng: np.random.Generator,
    ntype: int,
    x: np.ndarray,
    y: np.ndarray,
    mpp: float,
    theta: np.ndarray | None = None,
    size_scale: float = 1.0,
) -> NucleusDrafts:
    """Shape parameters for nuclei of one type at the given centres (pixels), from that type's statistics."""
    n = int(np.asarray(x).shape[0])
    stats = NUCLEUS_STATS[ntype]
    a = rng.uniform(*stats.semi_major, size=n) * size_scale / mpp
    aspect = rng.uniform(*stats.aspect, size=n)
    if theta is None:
        theta = rng.uniform(0.0, np.pi, size=n)
    amplitude = rng.uniform(*stats.jitter, size=n)
    weights = rng.uniform(0.2, 1.0, size=(n, len(HARMONICS))) / HARMONICS[None, :] ** 0.7
    weights *= (amplitude / weights.sum(axis=1))[:, None]
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, len(HARMONICS)))
    coef = np.stack([weights * np.cos(phase), weights * np.sin(phase)], axis=-1)
    return NucleusDrafts(
        x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64),
        a=a,
        b=a * aspect,
        theta=np.asarray(theta, dtype=np.float64),
        coef=coef,
        type=np.full(n, ntype, dtype=np.uint8),
    )


def _reach(drafts: NucleusDrafts) -> np.ndarray:
    """Half-size (px) of a square window that contains each whole nucleus."""
    spread = 1.0 + np.abs(drafts.coef).sum(axis=(1, 2))
    return np.ceil(drafts.a * spread + 1.0).astype(np.int64)


def rasterise(drafts: NucleusDrafts, height: int, width: int) -> np.ndarray:
    """Instance map (int32) with value ``i + 1`` for draft ``i``; a later draft covers an earlier one."""
    inst = np.zeros((height, width), dtype=np.int32)
    n = len(drafts)
    if n == 0:
        return inst
    reach = _reach(drafts)
    steps = np.asarray(_WINDOW_STEPS)
    bucket = np.searchsorted(steps, reach)
    pad = int(max(reach.max(), 1))
    padded_w = width + 2 * pad
    canvas = np.zeros((height + 2 * pad) * padded_w, dtype=np.int32)
    cx = np.floor(drafts.x).astype(np.int64)
    cy = np.floor(drafts.y).astype(np.int64)
    # Nuclei entirely outside the tile are skipped.
    visible = (cx + reach >= 0) & (cx - reach < width) & (cy + reach >= 0) & (cy - reach < height)
    all_index, all_value = [], []
    for b_id in np.unique(bucket[visible]):
        members = np.nonzero((bucket == b_id) & visible)[0]
        half = int(steps[b_id]) if b_id < len(steps) else int(reach[members].max())
        offsets = np.arange(-half, half + 1, dtype=np.float32)
        dx = offsets[None, None, :] - (drafts.x[members] - cx[members]).astype(np.float32)[:, None, None]
        dy = offsets[None, :, None] - (drafts.y[members] - cy[members]).astype(np.float32)[:, None, None]
        cos_t = np.cos(drafts.theta[members]).astype(np.float32)[:, None, None]
        sin_t = np.sin(drafts.theta[members]).astype(np.float32)[:, None, None]
        u = (dx * cos_t + dy * sin_t) / drafts.a[members].astype(np.float32)[:, None, None]
        v = (dy * cos_t - dx * sin_t) / drafts.b[members].astype(np.float32)[:, None, None]
        rho = np.sqrt(u * u + v * v)
        inv = 1.0 / np.maximum(rho, np.float32(1e-6))
        c1, s1 = u * inv, v * inv
        c, s = c1, s1
        boundary = np.ones_like(rho)
        coef = drafts.coef[members].astype(np.float32)
        for k in range(2, 2 + len(HARMONICS)):
            c, s = c * c1 - s * s1, s * c1 + c * s1  # cos/sin of k*phi by the angle-addition recurrence
            j = k - 2
            boundary += coef[:, j, 0, None, None] * c + coef[:, j, 1, None, None] * s
        inside = rho <= boundary
        m_idx, oy, ox = np.nonzero(inside)
        rows = cy[members][m_idx] + oy - half + pad
        cols = cx[members][m_idx] + ox - half + pad
        all_index.append(rows * padded_w + cols)
        all_value.append(members[m_idx].astype(np.int32) + 1)
    if all_index:
        np.maximum.at(canvas, np.concatenate(all_index), np.concatenate(all_value))
    inst[:] = canvas.reshape(height + 2 * pad, padded_w)[pad : pad + height, pad : pad + width]
    return inst


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every pixel, flattened (float64, read-only)."""
    rows, cols = np.divmod(np.arange(height * width, dtype=np.float64), width)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


@dataclass
class Instances:
    """A consistent instance map and, per kept nucleus (ids 1..n in draw order), its draft index and geometry."""

    inst_map: np.ndarray  # int32
    draft_index: np.ndarray  # (n,) index into the drafts
    area: np.ndarray  # (n,) pixels
    x: np.ndarray  # (n,) centroid column (mean of the pixel columns)
    y: np.ndarray  # (n,) centroid row


def finalise(raw: np.ndarray, min_area: np.ndarray) -> Instances:
    """Make a raw rasterised map consistent: one connected piece per id, no tiny remnants, ids 1..n.

    An id that a later nucleus cut in two keeps its largest 4-connected piece; the other pieces and any nucleus
    smaller than ``min_area[draft]`` pixels become background. Centroids are means of the final pixels.
    """
    height, width = raw.shape
    comp = label(raw, connectivity=1, background=0)
    flat_comp = comp.ravel()
    n_comp = int(flat_comp.max()) if flat_comp.size else 0
    if n_comp == 0:
        empty = np.zeros(0)
        return Instances(np.zeros_like(raw, dtype=np.int32), np.zeros(0, np.int64), empty, empty, empty)
    comp_size = np.bincount(flat_comp, minlength=n_comp + 1)
    comp_owner = np.zeros(n_comp + 1, dtype=np.int64)
    comp_owner[flat_comp] = raw.ravel()
    comps = np.arange(1, n_comp + 1)
    order = np.lexsort((-comp_size[1:], comp_owner[1:]))  # by owner, largest piece first
    ranked = comps[order]
    owners = comp_owner[ranked]
    first = np.ones(len(ranked), dtype=bool)
    first[1:] = owners[1:] != owners[:-1]
    best = ranked[first]  # the largest piece of each owner, owners ascending (= draw order)
    best_owner = comp_owner[best]
    keep = comp_size[best] >= min_area[best_owner - 1]
    best, best_owner = best[keep], best_owner[keep]
    lut = np.zeros(n_comp + 1, dtype=np.int32)
    lut[best] = np.arange(1, len(best) + 1, dtype=np.int32)
    inst = lut[comp].astype(np.int32, copy=False)
    flat = inst.ravel()
    count = len(best)
    area = np.bincount(flat, minlength=count + 1)[1:].astype(np.float64)
    rows, cols = _pixel_grid(height, width)
    sum_y = np.bincount(flat, weights=rows, minlength=count + 1)[1:]
    sum_x = np.bincount(flat, weights=cols, minlength=count + 1)[1:]
    return Instances(inst, best_owner - 1, area, sum_x / area, sum_y / area)
