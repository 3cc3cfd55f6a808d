"""The layout of one tile: tissue compartments, nuclei (with exact instance and type maps) and cell outlines.

A layout is stain-independent: the same layout is rendered as H&E and as IHC (see ``render.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from histostain.synth.constants import (
    CONNECTIVE,
    DEAD,
    ENDONUKE_EPITHELIUM,
    ENDONUKE_OTHER,
    ENDONUKE_STROMA,
    EPITHELIAL,
    EPITHELIUM,
    GLASS,
    INFLAMMATORY,
    NEOPLASTIC,
    NUCLEUS_STATS,
    STROMA,
    TUMOUR,
)
from histostain.synth.nuclei import NucleusDrafts, _reach, draw_drafts, finalise, rasterise
from histostain.synth.tissue import Nest, Tissue, draw_tissue

NEST_COMPARTMENTS = (EPITHELIUM, TUMOUR)


@dataclass
class Layout:
    """Everything about a tile that does not depend on the stain."""

    kind: str
    mpp: float
    tissue: Tissue
    inst_map: np.ndarray  # int32, 0 background, ids 1..n
    type_map: np.ndarray  # uint8, 0 background, PanNuke types 1..5
    types: np.ndarray  # (n,) uint8 type per id (index id - 1)
    x: np.ndarray  # (n,) centroid column
    y: np.ndarray  # (n,) centroid row
    area: np.ndarray  # (n,) pixels
    compartment: np.ndarray  # (n,) compartment under the centroid
    endonuke: np.ndarray  # (n,) EndoNuke class 0 stroma, 1 epithelium, 2 other
    hematoxylin: np.ndarray  # (n,) H&E hematoxylin optical density of the nucleus
    chromatin: np.ndarray  # (n,) chromatin texture contrast
    cell_map: np.ndarray  # int32: the id of the nucleus whose cell covers the pixel (nest cells only), else 0
    membrane: np.ndarray  # bool: cell membranes of nest cells

    @property
    def compartments(self) -> np.ndarray:
        return self.tissue.compartments

    @property
    def shape(self) -> tuple[int, int]:
        return self.inst_map.shape  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.types.shape[0])


def _keep(compartments: np.ndarray, x: np.ndarray, y: np.ndarray, allowed: tuple[int, ...]) -> np.ndarray:
    height, width = compartments.shape
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    ok = np.zeros(x.shape, dtype=bool)
    ok[inside] = np.isin(compartments[y[inside].astype(np.int64), x[inside].astype(np.int64)], allowed)
    return ok


def _uniform_points(rng: np.random.Generator, count: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0, width, size=count), rng.uniform(0, height, size=count)


def _hex_points(
    rng: np.random.Generator, height: int, width: int, spacing: float, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(-1, height / (spacing * 0.866) + 1)
    cols = np.arange(-1, width / spacing + 1)
    gy, gx = np.meshgrid(rows, cols, indexing="ij")
    x = (gx + 0.5 * (gy % 2)) * spacing
    y = gy * spacing * 0.866
    x = x.ravel() + rng.uniform(-jitter, jitter, size=x.size) * spacing
    y = y.ravel() + rng.uniform(-jitter, jitter, size=y.size) * spacing
    return x, y


def _inside_gland(nests: list[Nest], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inside = np.zeros(x.shape, dtype=bool)
    for nest in nests:
        if nest.thickness <= 0:
            continue
        dx, dy = x - nest.x, y - nest.y
        inside |= np.hypot(dx, dy) <= nest.outline(np.arctan2(dy, dx))
    return inside


def _gland_nuclei(rng: np.random.Generator, nest: Nest, compartments: np.ndarray, mpp: float) -> NucleusDrafts:
    """A single basal row of radially oriented nuclei along the epithelial ring of a benign gland."""
    spacing = rng.uniform(3.8, 5.0) / mpp
    basal = nest.radius - 0.35 * nest.thickness
    count = max(3, int(2 * np.pi * basal / spacing))
    phi = rng.uniform(0, 2 * np.pi) + np.arange(count) * (2 * np.pi / count)
    phi = phi + rng.normal(0, 0.12 * spacing / max(basal, 1.0), size=count)
    depth = rng.uniform(0.22, 0.5, size=count) * nest.thickness
    radius = nest.outline(phi) - depth
    x, y = nest.x + radius * np.cos(phi), nest.y + radius * np.sin(phi)
    ok = _keep(compartments, x, y, (EPITHELIUM,)) & (rng.random(count) > 0.08)
    theta = phi + rng.normal(0, 0.15, size=count)
    return draw_drafts(rng, EPITHELIAL, x[ok], y[ok], mpp, theta=theta[ok])


def _place_nuclei(
    rng: np.random.Generator, tissue: Tissue, kind: str, mpp: float, inflammation: float
) -> NucleusDrafts:
    comp = tissue.compartments
    height, width = comp.shape
    unit = 1.0 / (mpp * mpp)  # pixels per square micrometre
    stroma_um2 = float((comp == STROMA).sum()) / unit
    tissue_um2 = float((comp != GLASS).sum()) / unit
    groups: list[NucleusDrafts] = []

    # Connective (spindle) nuclei along the collagen fibres.
    count = int(rng.poisson(stroma_um2 / rng.uniform(110.0, 220.0)))
    x, y = _uniform_points(rng, count, height, width)
    ok = _keep(comp, x, y, (STROMA,))
    x, y = x[ok], y[ok]
    ok = rng.random(x.size) < tissue.density[y.astype(np.int64), x.astype(np.int64)]
    x, y = x[ok], y[ok]
    theta = tissue.fibre_angle(x, y) + rng.normal(0, 0.2, size=x.size)
    groups.append(draw_drafts(rng, CONNECTIVE, x, y, mpp, theta=theta))

    # Nest cells: neoplastic (dense, overlapping) in tumour, epithelial in small solid epithelial nests.
    if (comp == TUMOUR).any():
        spacing = rng.uniform(1.85, 2.4) * 3.85 / mpp
        x, y = _hex_points(rng, height, width, spacing, jitter=0.3)
        ok = _keep(comp, x, y, (TUMOUR,)) & (rng.random(x.size) > 0.06)
        groups.append(draw_drafts(rng, NEOPLASTIC, x[ok], y[ok], mpp))
    if (comp == EPITHELIUM).any():
        spacing = rng.uniform(1.9, 2.3) * 2.9 / mpp
        x, y = _hex_points(rng, height, width, spacing, jitter=0.25)
        ok = _keep(comp, x, y, (EPITHELIUM,)) & ~_inside_gland(tissue.nests, x, y)
        groups.append(draw_drafts(rng, EPITHELIAL, x[ok], y[ok], mpp))
        for nest in tissue.nests:
            if nest.compartment == EPITHELIUM and nest.thickness > 0:
                groups.append(_gland_nuclei(rng, nest, comp, mpp))
    if kind == "tumour":  # a few invasive single tumour cells in the stroma
        count = int(rng.poisson(tissue_um2 / 2500.0))
        x, y = _uniform_points(rng, count, height, width)
        ok = _keep(comp, x, y, (STROMA,))
        groups.append(draw_drafts(rng, NEOPLASTIC, x[ok], y[ok], mpp))

    # Inflammatory cells: scattered, a few inside nests, and dense clusters.
    count = int(rng.poisson(inflammation * tissue_um2 / rng.uniform(600.0, 2500.0)))
    x, y = _uniform_points(rng, count, height, width)
    ok = _keep(comp, x, y, (STROMA,)) | (_keep(comp, x, y, NEST_COMPARTMENTS) & (rng.random(count) < 0.1))
    parts_x, parts_y = [x[ok]], [y[ok]]
    clusters = int(rng.poisson(inflammation * tissue_um2 / 10000.0 * (1.4 if kind != "glandular" else 0.8)))
    for _ in range(clusters):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = int(rng.integers(6, 26))
        sd = rng.uniform(4.0, 9.0) / mpp
        x, y = cx + rng.normal(0, sd, size), cy + rng.normal(0, sd, size)
        ok = _keep(comp, x, y, (STROMA, EPITHELIUM, TUMOUR))
        parts_x.append(x[ok])
        parts_y.append(y[ok])
    groups.append(draw_drafts(rng, INFLAMMATORY, np.concatenate(parts_x), np.concatenate(parts_y), mpp))

    # Dead cells: apoptotic / necrotic debris, mostly in tumour.
    expected = tissue_um2 / 4096.0 * (1.6 if kind == "tumour" else 0.3)
    count = int(rng.poisson(expected))
    x, y = _uniform_points(rng, 4 * count, height, width)  # candidates; keep up to `count` in the right place
    allowed = (TUMOUR,) if kind == "tumour" else (STROMA, EPITHELIUM, TUMOUR)
    ok = np.nonzero(_keep(comp, x, y, allowed))[0][:count]
    groups.append(draw_drafts(rng, DEAD, x[ok], y[ok], mpp))

    drafts = NucleusDrafts.concat(groups)
    # Shuffle within the tile but keep inflammatory and dead cells on top (they sit over other cells).
    top = np.isin(drafts.type, (INFLAMMATORY, DEAD))
    order = np.concatenate([rng.permutation(np.nonzero(~top)[0]), rng.permutation(np.nonzero(top)[0])])
    return drafts.take(order.astype(np.int64))


def _cells(inst: np.ndarray, types: np.ndarray, comp: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell territories of nest nuclei (nearest nucleus within a cell radius) and their membranes."""
    nest = np.isin(comp, NEST_COMPARTMENTS)
    if not nest.any() or types.size == 0:
        return np.zeros(inst.shape, np.int32), np.zeros(inst.shape, bool)
    height, width = inst.shape
    step = 2 if mpp < 0.35 else 1  # cell territories at half resolution when cells are large in pixels
    coarse = inst[::step, ::step]
    distance, (iy, ix) = ndi.distance_transform_edt(coarse == 0, return_indices=True)
    nearest = coarse[iy, ix]
    if step > 1:
        nearest = np.repeat(np.repeat(nearest, step, axis=0), step, axis=1)[:height, :width]
        distance = np.repeat(np.repeat(distance, step, axis=0), step, axis=1)[:height, :width] * step
    nest_type = np.zeros(types.size + 1, dtype=bool)
    nest_type[1:] = np.isin(types, (NEOPLASTIC, EPITHELIAL))
    own = np.where(inst > 0, inst, nearest)  # a nucleus' own pixels always belong to its own cell
    cell = np.where(nest & (distance <= 5.0 / mpp) & nest_type[own], own, 0).astype(np.int32)
    edge = np.zeros(inst.shape, dtype=bool)
    diff_y = cell[1:, :] != cell[:-1, :]
    diff_x = cell[:, 1:] != cell[:, :-1]
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    if mpp < 0.35:  # membranes are about 1 micrometre wide
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:, 1:] |= edge[:, :-1]
        edge = grown
    return cell, edge & (cell > 0)


def build_layout(
    rng: np.random.Generator,
    height: int,
    width: int,
    mpp: float,
    kind: str,
    empty: bool,
    inflammation: float = 1.0,
) -> Layout:
    """Draw a tissue layout and its nuclei; ``empty`` draws tissue without any nucleus.

    ``inflammation`` scales the rate of scattered and clustered inflammatory cells.
    """
    tissue = draw_tissue(rng, height, width, mpp, kind)
    drafts = NucleusDrafts.empty() if empty else _place_nuclei(rng, tissue, kind, mpp, inflammation)
    raw = rasterise(drafts, height, width)
    reach = _reach(drafts)
    near_edge = (drafts.x < reach) | (drafts.y < reach) | (drafts.x > width - reach) | (drafts.y > height - reach)
    min_area = np.where(near_edge, 4.0, np.maximum(4.0, 0.2 * np.pi * drafts.a * drafts.b))
    inst = finalise(raw, min_area)
    kept = drafts.take(inst.draft_index)
    types = kept.type.astype(np.uint8)
    lut = np.zeros(types.size + 1, dtype=np.uint8)
    lut[1:] = types
    type_map = lut[inst.inst_map]
    comp = tissue.compartments
    n = types.size
    cy = np.clip(np.rint(inst.y).astype(np.int64), 0, height - 1)
    cx = np.clip(np.rint(inst.x).astype(np.int64), 0, width - 1)
    compartment = comp[cy, cx] if n else np.zeros(0, np.uint8)
    endonuke = np.where(
        np.isin(types, (INFLAMMATORY, DEAD)),
        ENDONUKE_OTHER,
        np.where(np.isin(compartment, NEST_COMPARTMENTS), ENDONUKE_EPITHELIUM, ENDONUKE_STROMA),
    ).astype(np.uint8)
    hema = np.empty(n)
    chrom = np.empty(n)
    for t, stats in NUCLEUS_STATS.items():
        sel = types == t
        hema[sel] = rng.uniform(*stats.hematoxylin, size=int(sel.sum()))
        chrom[sel] = stats.chromatin * rng.uniform(0.7, 1.3, size=int(sel.sum()))
    cell_map, membrane = _cells(inst.inst_map, types, comp, mpp)
    return Layout(
        kind=kind,
        mpp=mpp,
        tissue=tissue,
        inst_map=inst.inst_map,
        type_map=type_map,
        types=types,
        x=inst.x,
        y=inst.y,
        area=inst.area,
        compartment=compartment.astype(np.uint8),
        endonuke=endonuke,
        hematoxylin=hema,
        chromatin=chrom,
        cell_map=cell_map,
        membrane=membrane,
    )


__all__ = ["Layout", "build_layout"]
