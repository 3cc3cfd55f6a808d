"""Tissue compartments of a tile: glass, stroma (with collagen fibres), tumour nests and glands with lumens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histostain.synth.constants import EPITHELIUM, GLASS, LUMEN, STROMA, TUMOUR
from histostain.synth.fields import quantile, smooth_field

SHAPE_HARMONICS = np.arange(2, 5)


@dataclass
class Nest:
    """A star-shaped nest (tumour) or gland (epithelial ring around a lumen), in pixels."""

    x: float
    y: float
    radius: float
    coef: np.ndarray  # (3, 2) Fourier coefficients of the outline for harmonics 2..4
    compartment: int  # TUMOUR or EPITHELIUM
    thickness: float = 0.0  # > 0 for a gland: the epithelial ring width; inside it is lumen

    def outline(self, phi: np.ndarray) -> np.ndarray:
        """Outline radius (px) at polar angles ``phi``."""
        k = SHAPE_HARMONICS[None, :]
        phi = np.asarray(phi, dtype=np.float64)[:, None]
        wobble = (self.coef[None, :, 0] * np.cos(k * phi) + self.coef[None, :, 1] * np.sin(k * phi)).sum(axis=1)
        return self.radius * (1.0 + wobble)


@dataclass
class Tissue:
    compartments: np.ndarray  # uint8 compartment per pixel
    nests: list[Nest]
    phase: np.ndarray  # float32 phase of the fibre stripes; fibres run across its gradient
    fibres: np.ndarray  # float32 0..1 collagen fibre pattern
    density: np.ndarray  # float32 0..1 stroma density (loose areas are paler)

    def fibre_angle(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Direction (radians) of the collagen fibres at pixel positions (x, y)."""
        height, width = self.phase.shape
        xi = np.clip(np.asarray(x).astype(np.int64), 1, width - 2)
        yi = np.clip(np.asarray(y).astype(np.int64), 1, height - 2)
        gx = self.phase[yi, xi + 1] - self.phase[yi, xi - 1]
        gy = self.phase[yi + 1, xi] - self.phase[yi - 1, xi]
        return np.arctan2(gy, gx) + np.pi / 2


def _draw_nest(rng: np.random.Generator, compartments: np.ndarray, nest: Nest) -> None:
    height, width = compartments.shape
    spread = 1.0 + np.abs(nest.coef).sum()
    reach = int(np.ceil(nest.radius * spread)) + 1
    y0, y1 = max(0, int(nest.y) - reach), min(height, int(nest.y) + reach + 1)
    x0, x1 = max(0, int(nest.x) - reach), min(width, int(nest.x) + reach + 1)
    if y0 >= y1 or x0 >= x1:
        return
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - np.float32(nest.y))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - np.float32(nest.x))[None, :]
    rho = np.sqrt(dx * dx + dy * dy)
    inv = 1.0 / np.maximum(rho, np.float32(1e-6))
    c1, s1 = dx * inv, dy * inv
    c, s = c1, s1
    outline = np.ones_like(rho)
    for j in range(len(SHAPE_HARMONICS)):
        c, s = c * c1 - s * s1, s * c1 + c * s1
        outline = outline + np.float32(nest.coef[j, 0]) * c + np.float32(nest.coef[j, 1]) * s
    outline *= np.float32(nest.radius)
    window = compartments[y0:y1, x0:x1]
    window[rho <= outline] = nest.compartment
    if nest.thickness > 0:
        window[rho <= outline - np.float32(nest.thickness)] = LUMEN


def draw_tissue(rng: np.random.Generator, height: int, width: int, mpp: float, kind: str) -> Tissue:
    """Compartments for one tile of the given kind ("tumour", "glandular" or "stromal")."""
    compartments = np.full((height, width), STROMA, dtype=np.uint8)
    area_um2 = height * width * mpp * mpp
    cells = max(2, round(max(height, width) * mpp / 40.0) + 1)
    nests: list[Nest] = []

    def coef(amplitude: float) -> np.ndarray:
        amps = rng.uniform(0.3, 1.0, size=len(SHAPE_HARMONICS))
        amps *= amplitude / amps.sum()
        phase = rng.uniform(0, 2 * np.pi, size=len(SHAPE_HARMONICS))
        return np.stack([amps * np.cos(phase), amps * np.sin(phase)], axis=-1)

    def centre(radius: float) -> tuple[float, float]:
        margin = 0.35 * radius
        return (
            float(rng.uniform(-margin, width + margin)),
            float(rng.uniform(-margin, height + margin)),
        )

    if kind == "tumour":
        count = 1 + int(rng.poisson(area_um2 / 4500.0))
        for _ in range(count):
            radius = rng.uniform(16.0, 42.0) / mpp
            x, y = centre(radius)
            nests.append(Nest(x, y, radius, coef(rng.uniform(0.10, 0.28)), TUMOUR))
    elif kind == "glandular":
        count = 1 + int(rng.poisson(area_um2 / 5000.0))
        for _ in range(count):
            radius = rng.uniform(14.0, 30.0) / mpp
            x, y = centre(radius)
            malignant = rng.random() < 0.25
            thickness = rng.uniform(6.5, 9.0) / mpp * (1.5 if malignant else 1.0)
            compartment = TUMOUR if malignant else EPITHELIUM
            nests.append(Nest(x, y, radius, coef(rng.uniform(0.05, 0.15)), compartment, min(thickness, 0.8 * radius)))
    elif rng.random() < 0.3:
        radius = rng.uniform(8.0, 16.0) / mpp
        x, y = centre(radius)
        nests.append(Nest(x, y, radius, coef(0.15), EPITHELIUM if rng.random() < 0.5 else TUMOUR))
    for nest in nests:
        _draw_nest(rng, compartments, nest)

    # Glass: part of the tile beyond the edge of the section (about a third of the tiles).
    if rng.random() < 0.35:
        edge = smooth_field(rng, height, width, max(2, cells - 1))
        edge += 0.25 * smooth_field(rng, height, width, cells * 4)
        cut = quantile(edge, rng.uniform(0.08, 0.45))
        compartments[edge < cut] = GLASS

    # Stroma texture: wavy collagen fibres (stripes of two warped phase fields at slightly different angles,
    # their contrast varying over the tile) and thin clefts between fibre bundles.
    yy = np.arange(height, dtype=np.float32)[:, None] - np.float32(height / 2)
    xx = np.arange(width, dtype=np.float32)[None, :] - np.float32(width / 2)
    base = float(rng.uniform(0, np.pi))
    warp = np.float32(rng.uniform(3.0, 6.0)) * smooth_field(rng, height, width, cells * 2)
    phases = []
    for spread, lo, hi in ((0.0, 1.6, 2.6), (0.35, 2.4, 3.8), (-0.2, 6.0, 10.0)):
        angle = base + rng.normal(spread, 0.1)
        wavenumber = 2 * np.pi / (rng.uniform(lo, hi) / mpp)
        phases.append(xx * np.float32(wavenumber * np.cos(angle)) + yy * np.float32(wavenumber * np.sin(angle)) + warp)
    phase = phases[0]
    stripes = (0.5 + 0.5 * np.sin(phases[0])) * (0.6 + 0.4 * np.sin(phases[1]))
    contrast = np.clip(0.55 + 0.3 * smooth_field(rng, height, width, cells * 2), 0.15, 0.9)
    cleft = np.exp(-((np.sin(phases[2]) / np.float32(0.12)) ** 2)) * (smooth_field(rng, height, width, cells) > 0.6)
    fibres = np.clip((1.0 - contrast) + contrast * stripes - 0.45 * cleft, 0.0, 1.0)
    density = np.clip(0.75 + 0.35 * smooth_field(rng, height, width, cells * 2), 0.25, 1.0).astype(np.float32)
    return Tissue(compartments, nests, phase.astype(np.float32), fibres.astype(np.float32), density)
