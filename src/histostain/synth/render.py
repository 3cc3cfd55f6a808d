"""Render a layout as H&E or as HER2 IHC with the Beer-Lambert model, then apply the optics of a scanner.

Both renders share the geometry; they differ in stain concentrations: H&E puts hematoxylin in nuclei and eosin in
cytoplasm and stroma; IHC has a lighter hematoxylin counterstain and DAB on the membranes (and a little in the
cytoplasm) of HER2-positive tumour cells. Each render draws its own stain-vector and concentration jitter, blur,
illumination gradient and sensor noise.
"""

from __future__ import annotations

import numpy as np

from histostain.synth.constants import CONNECTIVE, EPITHELIAL, EPITHELIUM, GLASS, LUMEN, NEOPLASTIC, STROMA, TUMOUR
from histostain.synth.fields import grain, quantile, smooth_field, white_noise
from histostain.synth.layout import Layout
from histostain.synth.stains import jitter_vectors, optical_density, transmit

# HER2 score -> (fraction of positive tumour cells, membrane DAB optical density, fraction of membrane stained)
HER2_DAB: dict[int, tuple[float, float, float]] = {
    0: (0.04, 0.10, 0.30),
    1: (0.45, 0.22, 0.45),
    2: (0.80, 0.50, 0.80),
    3: (0.97, 1.00, 1.00),
}


def _lut(values: dict[int, float], size: int = 5) -> np.ndarray:
    table = np.zeros(size, dtype=np.float32)
    for key, value in values.items():
        table[key] = value
    return table


def _nuclear_pattern(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """Relative hematoxylin of nuclei: 0 outside, ~1 inside, with chromatin grain and a darker rim."""
    inst = layout.inst_map
    n = len(layout)
    chrom = np.zeros(n + 1, dtype=np.float32)
    chrom[1:] = layout.chromatin
    height, width = inst.shape
    texture = np.float32(1.0) + chrom[inst] * grain(rng, height, width)
    rim = np.zeros(inst.shape, dtype=bool)
    dy = inst[1:, :] != inst[:-1, :]
    dx = inst[:, 1:] != inst[:, :-1]
    rim[1:, :] |= dy
    rim[:-1, :] |= dy
    rim[:, 1:] |= dx
    rim[:, :-1] |= dx
    texture += np.float32(0.25) * rim
    texture *= inst > 0
    return np.clip(texture, 0.0, None)


def _cell_factor(layout: Layout, rng: np.random.Generator, spread: float) -> np.ndarray:
    """A per-cell multiplicative factor (1 outside cells) so neighbouring cells differ a little."""
    table = np.ones(len(layout) + 1, dtype=np.float32)
    table[1:] = rng.uniform(1.0 - spread, 1.0 + spread, size=len(layout))
    return table[layout.cell_map]


def _optics(od: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Transmit, illuminate unevenly, blur (optics), add sensor noise and quantise to uint8 RGB ``H x W x 3``."""
    height, width = od.shape[1:]
    light = transmit(od)  # planar 3 x H x W
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(angle) / width)) + (
        np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(angle) / height)
    )
    ramp -= ramp.min()
    gain = np.float32(rng.uniform(0.975, 1.0)) - np.float32(rng.uniform(0.0, 0.07)) * ramp
    light *= gain
    # Optical blur: separable 3-tap Gaussian with a per-render width (edges replicated).
    sigma = rng.uniform(0.55, 0.95)
    side = float(np.exp(-0.5 / sigma**2))
    side = np.float32(side / (1 + 2 * side))
    centre = np.float32(1 - 2 * side)
    blurred = light * centre
    blurred[:, 1:, :] += light[:, :-1, :] * side
    blurred[:, :-1, :] += light[:, 1:, :] * side
    blurred[:, 0, :] += light[:, 0, :] * side
    blurred[:, -1, :] += light[:, -1, :] * side
    light = blurred * centre
    light[:, :, 1:] += blurred[:, :, :-1] * side
    light[:, :, :-1] += blurred[:, :, 1:] * side
    light[:, :, 0] += blurred[:, :, 0] * side
    light[:, :, -1] += blurred[:, :, -1] * side
    # Sensor noise, stronger in bright pixels (shot noise), then quantisation.
    scale = np.float32(rng.uniform(0.8, 2.2))
    spread = np.sqrt(light * np.float32(scale * scale / 255) + np.float32(0.05 * scale * scale))
    light += white_noise(rng, light.shape) * spread
    np.clip(light, 0.0, 255.0, out=light)
    light += np.float32(0.5)
    return np.ascontiguousarray(light.astype(np.uint8).transpose(1, 2, 0))


def render_he(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """H&E: purple-blue nuclei (hematoxylin), pink stroma and cytoplasm (eosin), white glass and lumens."""
    comp = layout.compartments
    tissue = layout.tissue
    height, width = comp.shape
    scale_h, scale_e = rng.uniform(0.85, 1.2), rng.uniform(0.75, 1.25)
    nuclear = _nuclear_pattern(layout, rng)
    hema_lut = np.zeros(len(layout) + 1, dtype=np.float32)
    hema_lut[1:] = layout.hematoxylin
    background_h = _lut({STROMA: 0.05, EPITHELIUM: 0.10, TUMOUR: 0.17, LUMEN: 0.01})[comp]
    h = (hema_lut[layout.inst_map] * nuclear + background_h) * np.float32(scale_h)

    e_stroma = np.float32(rng.uniform(0.45, 0.75))
    eosin = _lut({STROMA: 1.0, EPITHELIUM: 0.48, TUMOUR: 0.40, LUMEN: 0.05})[comp]
    stroma = comp == STROMA
    eosin[stroma] *= (tissue.density * (0.25 + 0.75 * tissue.fibres))[stroma] * e_stroma
    eosin *= _cell_factor(layout, rng, 0.15)
    eosin *= np.float32(1.0) + np.float32(0.12) * grain(rng, height, width)
    eosin += np.float32(0.10) * layout.membrane
    eosin *= np.where(layout.inst_map > 0, np.float32(0.6), np.float32(1.0))
    eosin *= np.float32(scale_e)
    vectors = jitter_vectors(rng)
    od = optical_density([h, eosin, None], vectors, neutral=rng.uniform(0.03, 0.07))
    return _optics(od, rng)


# Nuclear markers (ER/PR, as in EndoNuke): fraction of positive nuclei per type and their DAB density range.
NUCLEAR_POSITIVE: dict[int, float] = {NEOPLASTIC: 0.7, EPITHELIAL: 0.65, CONNECTIVE: 0.45}
NUCLEAR_DAB = (0.35, 1.1)
MARKERS = ("her2", "nuclear")


def render_ihc(layout: Layout, her2: int, rng: np.random.Generator, marker: str = "her2") -> np.ndarray:
    """IHC with a pale blue hematoxylin counterstain and DAB where the marker is.

    ``marker="her2"``: DAB on tumour-cell membranes (and a little cytoplasm), scaling with the HER2 score.
    ``marker="nuclear"``: DAB in a fraction of the nuclei (ER/PR-like, as in EndoNuke); ``her2`` is ignored.
    """
    if her2 not in HER2_DAB:
        raise ValueError(f"HER2 score must be 0..3, got {her2}")
    if marker not in MARKERS:
        raise ValueError(f"marker must be one of {', '.join(MARKERS)}, got {marker!r}")
    if marker == "nuclear":
        return _render_nuclear_ihc(layout, rng)
    comp = layout.compartments
    height, width = comp.shape
    nuclear = _nuclear_pattern(layout, rng)
    hema_lut = np.zeros(len(layout) + 1, dtype=np.float32)
    hema_lut[1:] = layout.hematoxylin * rng.uniform(0.45, 0.6)
    background_h = _lut({STROMA: 0.035, EPITHELIUM: 0.06, TUMOUR: 0.07, LUMEN: 0.0})[comp]
    stroma = comp == STROMA
    background_h[stroma] *= (0.5 + 0.5 * layout.tissue.fibres[stroma]) * layout.tissue.density[stroma]
    h = hema_lut[layout.inst_map] * nuclear + background_h

    fraction, strength, complete = HER2_DAB[her2]
    strength *= rng.uniform(0.85, 1.15)
    positive = np.zeros(len(layout) + 1, dtype=np.float32)
    tumour = layout.types == NEOPLASTIC
    positive[1:] = tumour & (rng.random(len(layout)) < fraction)
    positive[1:] *= rng.uniform(0.7, 1.3, size=len(layout))
    cell_positive = positive[layout.cell_map]
    continuity = np.float32(1.0)
    if complete < 1.0:
        field = smooth_field(rng, height, width, max(4, round(max(height, width) * layout.mpp / 6)))
        continuity = (field > quantile(field, 1.0 - complete)).astype(np.float32)
    dab = (
        cell_positive
        * np.float32(strength)
        * (layout.membrane * continuity + np.float32(0.16) * (layout.cell_map > 0) * (layout.inst_map == 0))
    )
    dab *= np.float32(1.0) + np.float32(0.25) * grain(rng, height, width)
    dab += np.float32(0.015) * (comp != GLASS)
    vectors = jitter_vectors(rng)
    od = optical_density([h, None, dab], vectors, neutral=rng.uniform(0.02, 0.05))
    return _optics(od, rng)


def _render_nuclear_ihc(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    comp = layout.compartments
    height, width = comp.shape
    nuclear = _nuclear_pattern(layout, rng)
    n = len(layout)
    chance = np.zeros(n)
    for code, fraction in NUCLEAR_POSITIVE.items():
        chance[layout.types == code] = fraction
    positive = rng.random(n) < chance
    dab_lut = np.zeros(n + 1, dtype=np.float32)
    dab_lut[1:] = positive * rng.uniform(*NUCLEAR_DAB, size=n)
    hema_lut = np.zeros(n + 1, dtype=np.float32)
    hema_lut[1:] = layout.hematoxylin * rng.uniform(0.45, 0.6) * np.where(positive, 0.45, 1.0)
    background_h = _lut({STROMA: 0.035, EPITHELIUM: 0.06, TUMOUR: 0.07, LUMEN: 0.0})[comp]
    h = hema_lut[layout.inst_map] * nuclear + background_h
    dab = dab_lut[layout.inst_map] * nuclear + np.float32(0.015) * (comp != GLASS)
    vectors = jitter_vectors(rng)
    od = optical_density([h, None, dab], vectors, neutral=rng.uniform(0.02, 0.05))
    return _optics(od, rng)
