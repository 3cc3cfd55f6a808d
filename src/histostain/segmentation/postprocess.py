"""HoVer-Net's post-processing: NP/HV(/TP) maps -> instance map -> one row per nucleus, as hover_net computes it.

hover_net's published numbers come out of ``models/hovernet/post_proc.py`` (reference ``hovernet.md`` section 3),
so this module reproduces it to the pixel and to the bit, and only changes *how* the per-nucleus step is computed:

1. **Instance map** (:func:`hovernet_instance_map`, the reference's ``__proc_np_hv``): threshold NP at 0.5, label
   (4-connected) and drop components of fewer than 10 px; min-max normalise h and v over the whole map; Sobel
   (ksize 21) of h along x and of v along y, min-max normalised and inverted; energy = max of both minus the
   background, clipped at 0; ``dist = -GaussianBlur((1 - energy) * foreground, 3x3)``; markers = foreground
   where energy < 0.4, holes filled, opened with a 5x5 ellipse, labelled, components < 10 px dropped;
   ``skimage.segmentation.watershed(dist, markers, mask=foreground)``. Every step keeps the reference's dtypes
   (float32 maps, float64 Sobel, float64 energy because float32 - int32 promotes), so the floating-point values,
   and with them the 0.4 threshold and the watershed's flooding order, are the reference's exactly.
   ``scale`` adapts the two pixel-size constants as TIAToolbox does (Sobel ksize ``int(20 * scale + 1)`` made odd,
   minimum size ``ceil(10 * scale**2)``); 1.0 is the reference.
2. **Per nucleus** (:func:`nuclei_from_labels`, the reference's ``process()``): bounding box, centroid of
   ``cv2.moments`` of the box crop as ``(x, y)``, the first contour of ``cv2.findContours(RETR_TREE,
   CHAIN_APPROX_SIMPLE)`` shifted to image coordinates, area, and with a type map the majority vote (the second
   most frequent type when background wins; ties go to the smaller type id, as the reference's stable sort of
   ``np.unique`` output does) and ``type_prob = votes / (area + 1e-6)``.

Decisions where the reference leaves a choice:

- **ids**: the returned ``inst_map`` numbers nuclei 1..n in the order of the reference's ids (the marker labels
  of ``scipy.ndimage.label``, i.e. raster order of each marker's first pixel), with the gaps left by removed
  markers closed; :func:`nuclei_from_labels` keeps the order of the input ids. An input already numbered 1..n
  whose instances are all kept comes back with the same ids.
- **degenerate instances**: the reference drops an instance whose first contour has fewer than 3 points (a single
  pixel or a one-pixel-wide straight line; for an instance in several pieces the first contour OpenCV returns is
  the last piece in raster order) from its nucleus dict but leaves its pixels in the instance map. Here the map
  and the rows must agree, so such an instance is removed from both: its pixels become background. The rows are
  the reference's dict exactly; the map differs from the reference's only in those pixels. HoVer-Net maps
  practically never contain one (every instance holds a marker that survived a 5x5 elliptical opening).

**Why OpenCV** (``opencv-python-headless``): identical rows need it and it is the faster way. Contours must be
OpenCV's (border following with CHAIN_APPROX_SIMPLE; skimage's ``find_contours`` traces sub-pixel iso-lines, a
different polygon). A scipy/skimage-only instance map (``benchmarks/bench_postprocess.py --scipy``, numbers in
``docs/postprocess.md``) is 2.3-2.8x slower, and its Sobel and min-max values differ from OpenCV's in the last bit
on most maps: it gave the same instances on all 800 test maps, but only OpenCV's arithmetic makes the 0.4
threshold and the watershed's tie order the reference's by construction.

**Why it is fast**: the reference loops over nuclei and compares the whole image with each id (O(nuclei x
pixels): seconds on a 2048 x 2048 map). Here one ``find_objects`` pass gives every box, OpenCV (contour; moments
for centroid and area) runs on each box crop only, and the type votes are one ``bincount``. Holes are filled
with one flood fill instead of iterated dilations. The reference's own work (watershed, Sobel, labelling) is what
remains. To overlap post-processing with inference use :mod:`histostain.segmentation.postprocess_pool`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from histostain.segmentation.nuclei import Nuclei

NP_THRESHOLD = 0.5  # nucleus probability at or above which a pixel is foreground
ENERGY_THRESHOLD = 0.4  # energy at or above which a foreground pixel is a boundary, not a marker
SOBEL_KSIZE = 21  # at scale 1.0
MIN_OBJECT_SIZE = 10  # px at scale 1.0: smaller foreground components and markers are removed
OPENING_SIZE = 5  # the elliptical opening of the markers (not scaled, as in TIAToolbox)
TYPE_PROB_EPS = 1.0e-6  # type_prob = votes / (area + 1e-6), as the reference
_MAX_CV_SOBEL = 31  # largest aperture cv2.Sobel accepts; larger ones (scale > 1.5) use explicit binomial kernels
_DENSE_VOTES_LIMIT = 1 << 24  # (nuclei + 1) x types cells counted with one dense bincount


def scaled_constants(scale: float = 1.0) -> tuple[int, int]:
    """``(sobel_ksize, min_object_size)`` for maps whose pixels are ``1 / scale`` times the reference's size.

    TIAToolbox's rule: ksize ``int(20 * scale + 1)`` (made odd: Sobel apertures are odd) and
    ``ceil(10 * scale**2)`` pixels; ``scale = 1.0`` gives the reference's 21 and 10. For maps at ``mpp`` um/px,
    ``scale = 0.25 / mpp`` (the published weights see 0.25 um/px).
    """
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    ksize = int((SOBEL_KSIZE - 1) * value + 1)
    if ksize % 2 == 0:
        ksize += 1
    return ksize, math.ceil(MIN_OBJECT_SIZE * value**2)


def remove_small_components(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set to 0, in place, every labelled component of fewer than ``min_size`` pixels (hover_net's rule: a 9 px
    component goes at 10, a 10 px one stays; skimage >= 0.26 states the same as ``max_size=min_size - 1``)."""
    if min_size <= 1 or labels.size == 0:
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return labels


def _kept_components(labels: np.ndarray, min_size: int, *, renumber: bool = False) -> np.ndarray:
    """:func:`remove_small_components`; with ``renumber`` the kept ids become 1..m in their order, in the same
    single pass over the map."""
    if not renumber:
        return remove_small_components(labels, min_size)
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    lut = np.cumsum(keep, dtype=np.int32)
    lut[~keep] = 0
    return lut[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (cross structure) with one flood fill: background pixels
    4-connected to the outside of the image stay background, every other pixel is filled. scipy dilates from the
    border until nothing changes, one pass per pixel of the widest hole; the answer is the same set."""
    height, width = mask.shape
    framed = np.zeros((height + 2, width + 2), np.uint8)  # a background frame joins every border pixel
    framed[1:-1, 1:-1] = mask
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return framed[1:-1, 1:-1] != 2


def _binomial_kernels(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's first-derivative and smoothing Sobel kernels for any odd ``ksize`` (binomial coefficients)."""
    smooth = np.array([math.comb(ksize - 1, k) for k in range(ksize)], np.float64)
    base = np.array([math.comb(ksize - 2, k) for k in range(ksize - 1)], np.float64)
    derivative = np.convolve(base, [-1.0, 1.0])
    return derivative, smooth


def _sobel(image: np.ndarray, dx: int, dy: int, ksize: int) -> np.ndarray:
    """``cv2.Sobel(image, CV_64F, dx, dy, ksize)``; apertures above 31 (which cv2 refuses) use the same kernels."""
    if ksize <= _MAX_CV_SOBEL:
        return cv2.Sobel(image, cv2.CV_64F, dx, dy, ksize=ksize)
    derivative, smooth = _binomial_kernels(ksize)
    kx, ky = (derivative, smooth) if dx else (smooth, derivative)
    return cv2.sepFilter2D(image, cv2.CV_64F, kx, ky)


def _minmax(image: np.ndarray) -> np.ndarray:
    """``cv2.normalize(NORM_MINMAX)`` to float32 [0, 1] over the whole map (a constant map becomes 0)."""
    return cv2.normalize(image, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)


def _check_maps(np_prob: np.ndarray, hv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(np, h, v) as C-contiguous float32 H x W arrays (the reference casts its input to float32 first)."""
    prob = np.asarray(np_prob)
    hv_arr = np.asarray(hv)
    if prob.ndim != 2:
        raise ValueError(f"np_prob must be H x W, got shape {prob.shape}")
    if hv_arr.shape != (*prob.shape, 2):
        raise ValueError(f"hv must be H x W x 2 = {(*prob.shape, 2)} (channel 0 horizontal), got {hv_arr.shape}")
    as32 = np.ascontiguousarray
    return (
        as32(prob, dtype=np.float32),
        as32(hv_arr[..., 0], dtype=np.float32),
        as32(hv_arr[..., 1], dtype=np.float32),
    )


def hovernet_instance_map(np_prob: np.ndarray, hv: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """The reference's instance map (int32, H x W) with the reference's ids: marker labels, gaps included.

    ``np_prob`` is P(nucleus) H x W, ``hv`` the H x W x 2 horizontal/vertical maps. Most callers want
    :func:`instances_from_hovernet_maps`; this is the first half of it, for comparisons and custom pipelines.
    """
    return _instance_labels(np_prob, hv, scale, compact=False)[0]


def _instance_labels(np_prob: np.ndarray, hv: np.ndarray, scale: float, *, compact: bool) -> tuple[np.ndarray, int]:
    """``(instance map, largest id)``; ``compact`` numbers the markers 1..m (same order) instead of keeping the
    reference's gaps, which saves a pass over the map later."""
    prob, h_raw, v_raw = _check_maps(np_prob, hv)
    ksize, min_size = scaled_constants(scale)
    empty = np.zeros(prob.shape, np.int32), 0
    labels, count = ndimage.label(prob >= NP_THRESHOLD)
    if count == 0:
        return empty
    foreground = _kept_components(labels, min_size) > 0
    if not foreground.any():
        return empty

    sobel_h = _sobel(_minmax(h_raw), 1, 0, ksize)
    sobel_v = _sobel(_minmax(v_raw), 0, 1, ksize)
    energy = np.maximum(1 - _minmax(sobel_h), 1 - _minmax(sobel_v)).astype(np.float64)  # float32 values
    del sobel_h, sobel_v
    # energy - (1 - foreground) is float64 in numpy (float32 - int32); x - 0.0 is x, so only background changes
    background = (~foreground).astype(np.float64)
    energy -= background
    energy[energy < 0] = 0
    dist = np.subtract(1.0, energy)
    dist *= np.subtract(1.0, background, out=background)  # (1 - energy) * foreground
    del background
    dist = cv2.GaussianBlur(dist, (3, 3), 0)
    np.negative(dist, out=dist)  # nuclei become basins

    markers = foreground & ~(energy >= ENERGY_THRESHOLD)  # not `<`: a NaN is not a boundary in the reference
    del energy
    markers = _fill_holes(markers).view(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (OPENING_SIZE, OPENING_SIZE))
    markers = cv2.morphologyEx(markers, cv2.MORPH_OPEN, kernel)
    marker_labels, count = ndimage.label(markers)
    if count == 0:
        return empty
    marker_labels = _kept_components(marker_labels, min_size, renumber=compact)
    top = int(marker_labels.max()) if compact else count
    return watershed(dist, markers=marker_labels, mask=foreground).astype(np.int32, copy=False), top


def _as_type_map(type_pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-pixel type prediction as uint8 (whole numbers 0..255; the reference stores argmax as float32)."""
    types = np.asarray(type_pred)
    if types.shape != shape:
        raise ValueError(f"type map shape {types.shape} does not match the instance map {shape}")
    if types.dtype == np.uint8:
        return types.copy()  # the result owns its maps, as it owns inst_map
    if types.dtype == bool or np.issubdtype(types.dtype, np.integer):
        whole = True
    elif np.issubdtype(types.dtype, np.floating):
        whole = bool(np.all(np.mod(types, 1) == 0))
    else:
        raise ValueError(f"type map must hold integer type codes, got dtype {types.dtype}")
    if types.size and (not whole or types.min() < 0 or types.max() > 255):
        raise ValueError("type map must hold whole type codes in 0..255")
    return types.astype(np.uint8)


def _int_labels(inst_map: np.ndarray) -> tuple[np.ndarray, int]:
    """``(labels, top)``: the ids as a new int32 array and the largest id. Gaps stay (the per-nucleus step closes
    them); ids too sparse to index a table by are first ranked (increasing order kept)."""
    labels = np.asarray(inst_map)
    if labels.ndim != 2:
        raise ValueError(f"instance map must be H x W, got shape {labels.shape}")
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"instance map must hold integer ids, got dtype {labels.dtype}")
    if labels.size == 0:
        return np.zeros(labels.shape, np.int32), 0
    if labels.min() < 0:
        raise ValueError("instance map ids must be >= 0 (0 is background)")
    top = int(labels.max())
    if top <= 2 * labels.size + 1024:
        return labels.astype(np.int32), top
    values, inverse = np.unique(labels, return_inverse=True)
    ranked = inverse.reshape(labels.shape).astype(np.int32)
    if values[0] != 0:  # no background pixel: ranks start at 0 for the smallest id
        ranked += 1
    return ranked, int(ranked.max())


def _type_votes(labels: np.ndarray, types: np.ndarray, n: int, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per nucleus: the reference's vote (most frequent type; the second when background wins and another type
    is present; ties to the smaller id) and the fraction of its pixels that voted for it."""
    fg = labels > 0
    owner = labels[fg].astype(np.int64)
    voted = types[fg].astype(np.int64)
    width = int(voted.max(initial=0)) + 1
    if (n + 1) * width <= _DENSE_VOTES_LIMIT:
        counts = np.bincount(owner * width + voted, minlength=(n + 1) * width).reshape(n + 1, width)[1:]
    else:  # many nuclei and many codes: count only the pairs present
        pairs, pair_counts = np.unique(owner * width + voted, return_counts=True)
        counts = np.zeros((n, width), np.int64)
        counts[pairs // width - 1, pairs % width] = pair_counts
    chosen = np.argmax(counts, axis=1)  # first maximum: the smallest type id among ties
    if width > 1:
        others = counts[:, 1:]
        second = np.argmax(others, axis=1) + 1
        use_second = (chosen == 0) & (others.max(axis=1) > 0)
        chosen = np.where(use_second, second, chosen)
    votes = counts[np.arange(n), chosen]
    return chosen.astype(np.int64), votes / (areas + TYPE_PROB_EPS)


def _rows(labels: np.ndarray, top: int) -> tuple[list[np.ndarray | None], np.ndarray, np.ndarray, np.ndarray]:
    """``(contours, bboxes, centroids, areas)`` of ids 1..top: one ``find_objects`` pass, then OpenCV on each box
    crop (the reference's crop, so its contour and moments are the reference's, bit for bit).

    A contour is None for an absent id and where the reference drops the nucleus (first contour under 3 points).
    """
    boxes = ndimage.find_objects(labels, max_label=top) if top else []
    contours: list[np.ndarray | None] = [None] * top
    centroids = [(0.0, 0.0)] * top
    bboxes = [(0, 0, 0, 0)] * top
    areas = [0] * top
    for index, box in enumerate(boxes):
        if box is None:
            continue
        rows, cols = box
        x0, y0 = cols.start, rows.start
        crop = (labels[rows, cols] == index + 1).view(np.uint8)
        # offset: OpenCV adds the crop origin to every point, the integer shift the reference does afterwards
        found = cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))[0]
        if len(found[0]) < 3:
            continue
        contours[index] = found[0].reshape(-1, 2)  # int32 (x, y)
        moments = cv2.moments(crop)  # m10 / m00, then + the crop origin: the reference's order of operations
        area = moments["m00"]  # the pixel count, exactly
        centroids[index] = (moments["m10"] / area + x0, moments["m01"] / area + y0)
        bboxes[index] = (x0, y0, cols.stop, rows.stop)
        areas[index] = int(area)
    return (
        contours,
        np.array(bboxes, np.int64).reshape(top, 4),
        np.array(centroids, np.float64).reshape(top, 2),
        np.array(areas, np.int64),
    )


def _describe(
    labels: np.ndarray,
    top: int,
    type_map: np.ndarray | None,
    type_names: Mapping[int, str] | None,
    mpp: float | None,
) -> Nuclei:
    """The per-nucleus step on an owned int32 map with ids in 1..top: rows for the ids present whose contour the
    reference keeps, and the map renumbered 1..n in the same order (one pass, only when an id is absent or
    dropped)."""
    contours, bboxes, centroids, areas = _rows(labels, top)
    keep = np.fromiter((c is not None for c in contours), bool, count=top)
    n = int(keep.sum())
    if n < top:
        lut = np.zeros(top + 1, np.int32)
        lut[1:][keep] = np.arange(1, n + 1, dtype=np.int32)
        labels = lut[labels]
        bboxes, centroids, areas = bboxes[keep], centroids[keep], areas[keep]
        contours = [c for c in contours if c is not None]
    types = type_probs = None
    if type_map is not None:
        types, type_probs = _type_votes(labels, type_map, n, areas)
    return Nuclei(
        inst_map=labels,
        type_map=type_map,
        ids=np.arange(1, n + 1, dtype=np.int32),
        centroids=centroids,
        bboxes=bboxes,
        contours=contours,  # type: ignore[arg-type]  # no None left
        areas=areas,
        types=types,
        type_probs=type_probs,
        type_names=type_names,
        mpp=mpp,
    )


def nuclei_from_labels(
    inst_map: np.ndarray,
    type_pred: np.ndarray | None = None,
    *,
    type_names: Mapping[int, str] | None = None,
    mpp: float | None = None,
) -> Nuclei:
    """One row per instance of any label map, computed as hover_net's ``process()`` computes its nucleus dict.

    ``inst_map``: H x W integer ids (0 = background; ids need not be contiguous; an instance may be in pieces).
    ``type_pred``: optional H x W per-pixel type codes 0..255 (0 = background), e.g. the argmax of a type head;
    it becomes ``type_map`` as given and decides each nucleus' ``type``/``type_prob`` by majority vote.
    The result is numbered 1..n in increasing order of the input ids; instances whose first OpenCV contour has
    fewer than 3 points are removed from the map and the rows (module docstring). The input is not modified.
    """
    labels, top = _int_labels(inst_map)
    types = None if type_pred is None else _as_type_map(type_pred, labels.shape)
    return _describe(labels, top, types, type_names, mpp)


def source_ids(inst_map: np.ndarray, nuclei: Nuclei) -> np.ndarray:
    """The id each row of ``nuclei = nuclei_from_labels(inst_map, ...)`` had in ``inst_map`` (int64, one per row).

    ``nuclei_from_labels`` renumbers 1..n and leaves out absent and degenerate ids, so callers that carry
    per-instance columns across (measurements of a chunk or of a rescaled map) look them up here instead of
    assuming ids survive: every contour point is a pixel of its nucleus, so one read per row suffices.
    """
    labels = np.asarray(inst_map)
    if not nuclei.contours:
        return np.zeros(0, np.int64)
    points = np.array([contour[0] for contour in nuclei.contours], np.int64)
    return labels[points[:, 1], points[:, 0]].astype(np.int64)


def type_map_from_probabilities(tp_prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Argmax over the last axis of H x W x T type probabilities (or logits) as uint8 (first maximum wins)."""
    probs = np.asarray(tp_prob)
    if probs.ndim != 3 or probs.shape[:2] != tuple(shape):
        raise ValueError(f"tp_prob must be H x W x T with H x W = {tuple(shape)}, got shape {probs.shape}")
    if not 1 <= probs.shape[2] <= 256:
        raise ValueError(f"tp_prob must have 1..256 type channels, got {probs.shape[2]}")
    return np.argmax(probs, axis=-1).astype(np.uint8)


def instances_from_hovernet_maps(
    np_prob: np.ndarray,
    hv: np.ndarray,
    tp_prob: np.ndarray | None = None,
    *,
    scale: float = 1.0,
    type_names: Mapping[int, str] | None = None,
    mpp: float | None = None,
) -> Nuclei:
    """HoVer-Net's NP/HV(/TP) maps -> :class:`Nuclei`, the instances and rows hover_net's post-processing gives.

    ``np_prob``: H x W P(nucleus). ``hv``: H x W x 2, channel 0 horizontal, 1 vertical (the ``hv`` head after
    NCHW -> HWC). ``tp_prob``: H x W x T type probabilities (channel 0 background) or None; ``type_map`` is its
    argmax (uint8) and ``types``/``type_probs`` the per-nucleus vote. ``scale``: see :func:`scaled_constants`.
    ``type_names``/``mpp`` are recorded on the result. Ids 1..n follow the reference's ids (module docstring).
    """
    type_map = None
    if tp_prob is not None:
        type_map = type_map_from_probabilities(tp_prob, np.shape(np_prob)[:2])  # type: ignore[arg-type]
    return instances_from_argmax(np_prob, hv, type_map, scale=scale, type_names=type_names, mpp=mpp)


def instances_from_argmax(
    np_prob: np.ndarray,
    hv: np.ndarray,
    type_map: np.ndarray | None = None,
    *,
    scale: float = 1.0,
    type_names: Mapping[int, str] | None = None,
    mpp: float | None = None,
) -> Nuclei:
    """:func:`instances_from_hovernet_maps` with the type probabilities already reduced to their H x W argmax
    (``type_map``, codes 0..255): all the post-processing reads of them, and as uint8 1/(4 T) of the bytes of
    T float32 channels to hand to a worker process (:mod:`histostain.segmentation.postprocess_pool`)."""
    labels, top = _instance_labels(np_prob, hv, scale, compact=True)
    types = None if type_map is None else _as_type_map(type_map, labels.shape)
    return _describe(labels, top, types, type_names, mpp)


__all__ = [
    "ENERGY_THRESHOLD",
    "MIN_OBJECT_SIZE",
    "NP_THRESHOLD",
    "SOBEL_KSIZE",
    "hovernet_instance_map",
    "instances_from_argmax",
    "instances_from_hovernet_maps",
    "nuclei_from_labels",
    "remove_small_components",
    "scaled_constants",
    "source_ids",
    "type_map_from_probabilities",
]
