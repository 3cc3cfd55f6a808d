"""Weight-free nuclei segmentation of H&E and IHC tiles, with the IHC positivity of every nucleus.

No model, so nothing to download and nothing trained on someone else's scanner; every threshold is chosen
again on each tile from that tile's own histogram, because stain intensity varies between slides far more
than any fixed number tolerates (docs/classical.md has the method, the measurements on real tissue and why).

1. **Colour deconvolution** (``skimage.color.rgb2hed``) into haematoxylin, eosin and DAB optical densities, in
   base-10 OD (:mod:`histostain.segmentation.positivity` defines the unit).
2. **Stain** (``stain="auto"``): H&E when eosin is present, i.e. the 90th percentile of the eosin OD over tissue
   pixels reaches ``EOSIN_PRESENT_OD``; otherwise IHC (DAB or haematoxylin alone has no eosin). Eosin, not the
   DAB mass, decides because ``rgb2hed`` puts part of pink eosin and of neutral grey into its DAB channel.
3. **Foreground**, both ODs smoothed by a Gaussian of ``smoothing_um``: a pixel is nuclear when its haematoxylin
   exceeds the tile's Otsu threshold of haematoxylin; for IHC also when haematoxylin + DAB exceeds
   ``dab_margin`` x the tile's Otsu threshold of haematoxylin + DAB, so DAB-positive nuclei that carry little
   haematoxylin are found, while DAB-stained cytoplasm (lighter than a positive nucleus) is not. Each threshold
   is at least ``min_od``, the guard for tiles with almost no tissue, where Otsu would split glass from faint
   stroma. Holes are filled and specks under ``min_area_um2`` removed.
4. **Markers**: the regional maxima of the nuclear OD (H&E: haematoxylin; IHC: haematoxylin + DAB) smoothed by
   ``marker_sigma_um``, kept when they rise at least ``marker_h`` x the standard deviation of that signal over
   the foreground above their surroundings (``skimage.morphology.h_maxima``: the depth scales with the tile).
5. **Watershed** of the inverted signal from the markers within the foreground.
6. **Split of merged nuclei**: a region larger than ``split_ratio`` x the tile's median nucleus area is split
   again along its shape (distance-transform peaks, at least 0.6 typical radii apart), because touching nuclei
   of one intensity have no intensity valley between them.
7. **Size filter** in um^2 through ``mpp``: regions outside ``[min_area_um2, max_area_um2]`` are dropped.
8. **Rows** (:func:`~histostain.segmentation.postprocess.nuclei_from_labels`) and, for IHC, ``dab_od`` and
   ``positivity`` per nucleus (:mod:`~histostain.segmentation.positivity`).

Coordinates are in the input's pixels; ``mpp`` is the input's scale and converts every length given in um.
Everything is array-wide (no Python loop over nuclei).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import find_boundaries, watershed

from histostain.errors import ConfigError
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.positivity import (
    DAB_OD,
    DEFAULT_THRESHOLDS,
    OD_PER_SKIMAGE_UNIT,
    POSITIVITY,
    check_thresholds,
    positivity_classes,
)

log = logging.getLogger(__name__)

STAINS = ("auto", "he", "ihc")
DAB_LOCATIONS = ("nuclear", "membrane")
METHOD = "classical-1"  # bump when the algorithm changes what it finds (recorded with every run)
EOSIN_PRESENT_OD = 0.075  # stain="auto": eosin OD (90th percentile over tissue) from which a tile is H&E
GLASS_PERCENTILE = 2  # the glass level of a tile: this percentile of its summed OD
TISSUE_CONTRAST = 0.05  # tissue is at least this much OD darker than the glass level
MEMBRANE_DAB_WEIGHT = 0.5  # dab="membrane": nuclear signal = haematoxylin - this x DAB
SPLIT_MIN_DISTANCE = 0.6  # shape split: peaks at least this many typical nucleus radii apart


def optical_densities(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` float32 base-10 optical densities of haematoxylin, eosin and DAB (``rgb2hed`` x 6)."""
    return (rgb2hed(rgb) * OD_PER_SKIMAGE_UNIT).astype(np.float32)


def resolve_stain(od: np.ndarray) -> str:
    """``"he"`` when the tile carries eosin (module docstring, step 2), else ``"ihc"``.

    ``od`` is the output of :func:`optical_densities`. A tile without tissue has no eosin and counts as IHC,
    which only decides whether (zero) nuclei get positivity columns.
    """
    tissue = _tissue(od, 1.0)
    return "he" if float(np.percentile(od[..., 1][tissue], 90)) >= EOSIN_PRESENT_OD else "ihc"


def _tissue(od: np.ndarray, sigma: float) -> np.ndarray:
    """Pixels darker than the tile's glass by ``TISSUE_CONTRAST`` (summed H + E + DAB OD, smoothed).

    The glass level is the ``GLASS_PERCENTILE``-th percentile, since scanners white-balance unevenly (glass reads
    0.05 to 0.1 OD on the EndoNuke tiles); on a tile without glass this only sets aside its palest tissue.
    Thresholds are taken over these pixels so that the share of glass in a tile does not move them.
    """
    total = gaussian(od.sum(axis=-1), sigma, preserve_range=True)
    tissue = total > float(np.percentile(total, GLASS_PERCENTILE)) + TISSUE_CONTRAST
    return tissue if tissue.any() else np.ones(total.shape, bool)


def _otsu(values: np.ndarray, floor: float) -> float:
    """Otsu's threshold of ``values``, never below ``floor`` (a flat image has no threshold: the floor)."""
    if values.size == 0 or float(values.max()) - float(values.min()) < 1e-6:
        return floor
    return max(float(threshold_otsu(values)), floor)


class ClassicalSegmenter:
    """Colour deconvolution, per-tile Otsu foreground, h-maxima markers, watershed, shape split, size filter.

    ``stain``: "he", "ihc" or "auto" (decided per image, :func:`resolve_stain`). ``mpp``: the input's um per
    pixel; every length and area below is physical and converted with it. ``thresholds``: DAB OD of 1+, 2+, 3+.
    The other arguments are the few settings of the method (module docstring); their defaults were chosen by
    cross-validation on real EndoNuke tiles (docs/classical.md) and should rarely need changing.
    """

    def __init__(
        self,
        stain: str = "auto",
        mpp: float = 0.5,
        *,
        min_area_um2: float = 5.0,
        max_area_um2: float = 400.0,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        smoothing_um: float = 0.5,
        marker_sigma_um: float = 1.0,
        marker_h: float = 0.05,
        dab_margin: float = 1.4,
        split_ratio: float = 1.6,
        min_od: float = 0.1,
        dab: str = "nuclear",
    ) -> None:
        if stain not in STAINS:
            raise ConfigError(f"stain {stain!r}: unknown", hint=f"use one of {', '.join(STAINS)}")
        if dab not in DAB_LOCATIONS:
            raise ConfigError(f"dab {dab!r}: unknown", hint=f"use one of {', '.join(DAB_LOCATIONS)}")
        if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise ConfigError(f"mpp {mpp!r}: must be a positive number of micrometres per pixel", hint="e.g. 0.5")
        positive = {
            "smoothing_um": smoothing_um,
            "marker_sigma_um": marker_sigma_um,
            "dab_margin": dab_margin,
            "max_area_um2": max_area_um2,
        }
        non_negative = {
            "min_area_um2": min_area_um2,
            "marker_h": marker_h,
            "split_ratio": split_ratio,
            "min_od": min_od,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} {value!r}: must be a positive number")
        for name, value in non_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} {value!r}: must be 0 or more")
        if min_area_um2 >= max_area_um2:
            raise ConfigError(f"min_area_um2 {min_area_um2} must be below max_area_um2 {max_area_um2}")
        self.stain = stain
        self.dab = dab
        self.mpp = float(mpp)
        self.min_area_um2 = float(min_area_um2)
        self.max_area_um2 = float(max_area_um2)
        self.thresholds = check_thresholds(thresholds)
        self.smoothing_um = float(smoothing_um)
        self.marker_sigma_um = float(marker_sigma_um)
        self.marker_h = float(marker_h)
        self.dab_margin = float(dab_margin)
        self.split_ratio = float(split_ratio)
        self.min_od = float(min_od)

    # ------------------------------------------------------------------------------------------ settings

    def _px(self, um: float) -> float:
        return um / self.mpp

    def _px2(self, um2: float) -> float:
        return um2 / self.mpp**2

    def describe(self) -> dict[str, Any]:
        """Every setting that decides the output, for run records (and re-run comparisons)."""
        return {
            "method": METHOD,
            "stain": self.stain,
            "dab": self.dab,
            "mpp": self.mpp,
            "min_area_um2": self.min_area_um2,
            "max_area_um2": self.max_area_um2,
            "thresholds": list(self.thresholds),
            "smoothing_um": self.smoothing_um,
            "marker_sigma_um": self.marker_sigma_um,
            "marker_h": self.marker_h,
            "dab_margin": self.dab_margin,
            "split_ratio": self.split_ratio,
            "min_od": self.min_od,
            "dab_od": "base-10 OD of skimage's DAB vector (rgb2hed x log10(1e6)), white = 255",
        }

    # ------------------------------------------------------------------------------------------ pipeline

    def segment(self, rgb: np.ndarray) -> Nuclei:
        """The nuclei of one ``H x W x 3`` uint8 RGB image, in its pixels, at this segmenter's ``mpp``."""
        from histostain.segmentation.postprocess import nuclei_from_labels

        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} of shape {rgb.shape}")
        od = optical_densities(rgb)
        stain = resolve_stain(od) if self.stain == "auto" else self.stain
        labels = self.label_nuclei(od, stain)
        nuclei = nuclei_from_labels(labels, mpp=self.mpp)
        if stain == "ihc":
            n = len(nuclei)
            dab = ndi.mean(od[..., 2], labels=nuclei.inst_map, index=nuclei.ids) if n else np.zeros(0)
            dab = np.asarray(dab, dtype=np.float64).reshape(n)
            nuclei.measurements[DAB_OD] = dab
            nuclei.measurements[POSITIVITY] = positivity_classes(dab, self.thresholds)
        log.debug("classical (%s): %d nuclei in %s", stain, len(nuclei), rgb.shape[:2])
        return nuclei

    def label_nuclei(self, od: np.ndarray, stain: str) -> np.ndarray:
        """The int32 instance map of :func:`optical_densities` output ``od`` for ``stain`` ("he" or "ihc")."""
        sigma = self._px(self.smoothing_um)
        haem = gaussian(od[..., 0], sigma, preserve_range=True)
        tissue = _tissue(od, sigma)
        signal = od[..., 0]
        if stain == "ihc" and self.dab == "membrane":
            # DAB outside nuclei: haematoxylin net of part of the DAB, so brown cytoplasm is not a nucleus
            signal = od[..., 0] - MEMBRANE_DAB_WEIGHT * od[..., 2]
            haem = gaussian(signal, sigma, preserve_range=True)
        foreground = haem > _otsu(haem[tissue], self.min_od)
        if stain == "ihc" and self.dab == "nuclear":
            total = gaussian(od[..., 0] + od[..., 2], sigma, preserve_range=True)
            dabfg = total > max(self.dab_margin * _otsu(total[tissue], 0.0), self.min_od)
            foreground |= dabfg
            signal = od[..., 0] + od[..., 2]
        min_px = self._px2(self.min_area_um2)
        foreground = ndi.binary_fill_holes(_drop_small(foreground, min_px))
        if not foreground.any():
            return np.zeros(foreground.shape, np.int32)
        smooth = gaussian(signal, self._px(self.marker_sigma_um), preserve_range=True)
        depth = self.marker_h * float(np.std(smooth[foreground]))
        peaks = h_maxima(np.where(foreground, smooth, 0.0), depth) if depth > 0 else _local_maxima(smooth)
        markers, _ = ndi.label(peaks.astype(bool) & foreground)
        labels = watershed(-smooth, markers, mask=foreground)
        if self.split_ratio > 0:
            labels = _split_large(labels, self.split_ratio, min_px, self._px(self.smoothing_um))
        return _filter_sizes(labels, min_px, self._px2(self.max_area_um2))


# ---------------------------------------------------------------------------------------------- helpers


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """``mask`` without the connected components smaller than ``min_px`` pixels."""
    components, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[components]


def _local_maxima(image: np.ndarray) -> np.ndarray:
    """Plateau-aware regional maxima (``marker_h=0``: every maximum is a marker)."""
    from skimage.morphology import local_maxima

    return local_maxima(image)


def _split_large(labels: np.ndarray, ratio: float, min_px: float, sigma: float) -> np.ndarray:
    """Split regions over ``ratio`` x the median region area along their shape (module docstring, step 6).

    Each large region is cut from its neighbours by its inner boundary, its distance transform smoothed, and the
    peaks at least ``SPLIT_MIN_DISTANCE`` typical radii apart seed a watershed inside it. A piece flooded from a
    seed of another region (large regions can touch) and a large region without a peak keep their label.
    """
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    valid = areas[areas >= max(min_px, 1)]
    if len(valid) < 3:  # too few nuclei for a typical size
        return labels
    typical = float(np.median(valid))
    large = np.flatnonzero(areas > ratio * typical)
    if len(large) == 0:
        return labels
    region = np.isin(labels, large)
    inside = region & ~find_boundaries(labels, mode="inner")
    distance = gaussian(ndi.distance_transform_edt(inside), sigma, preserve_range=True)
    spacing = max(1, round(SPLIT_MIN_DISTANCE * math.sqrt(typical / math.pi)))
    peaks = peak_local_max(distance, min_distance=spacing, labels=inside.astype(np.int32), exclude_border=False)
    seeds = np.zeros(labels.shape, np.int32)
    top = int(labels.max())
    seeds[peaks[:, 0], peaks[:, 1]] = np.arange(top + 1, top + 1 + len(peaks), dtype=np.int32)
    split = watershed(-distance, seeds, mask=region)
    origin = np.zeros(top + 1 + len(peaks), np.int64)  # split label -> the region its seed lies in
    origin[top + 1 :] = labels[peaks[:, 0], peaks[:, 1]]
    own = (split > 0) & (origin[split] == labels)
    return np.where(own, split, labels).astype(np.int32)


def _filter_sizes(labels: np.ndarray, min_px: float, max_px: float) -> np.ndarray:
    """Background for every region whose pixel count lies outside ``[min_px, max_px]``."""
    areas = np.bincount(labels.ravel())
    keep = (areas >= min_px) & (areas <= max_px)
    keep[0] = False
    return np.where(keep[labels], labels, 0).astype(np.int32)


__all__ = ["EOSIN_PRESENT_OD", "METHOD", "STAINS", "ClassicalSegmenter", "optical_densities", "resolve_stain"]
