"""HoVer-Net training targets from an instance map: NP (nucleus/background), HV (offsets) and TP (types).

Follows the reference (``vqdang/hover_net`` ``models/hovernet/targets.py``) step by step, because the released
weights were trained on exactly these maps:

1. instances split into pieces by augmentation are given new ids, one per 4-connected piece
   (``fix_mirror_padding``);
2. only instances with at least ``min_area`` (30) pixels *inside the centre output window* get HV targets; smaller
   ones (and pixels outside the window) stay 0 in HV but are still nuclei in NP;
3. per instance: bounding box grown by 2 px; centre of mass rounded half up (``int(c + 0.5)``); per pixel
   ``x = col + 1 - com_col`` and ``y = row + 1 - com_row`` (the reference's 1-based grid, so the zero line sits one
   pixel left of/above the rounded centre); negative values divided by ``|min|``, positive ones by ``max``;
4. HV is ``[x_map, y_map]`` (channel 0 horizontal, channel 1 vertical), NP is ``inst > 0``; everything is
   centre-cropped to the output window.

``origin="centre"`` puts the zero line on the rounded centre of mass instead (x = col - com_col), which makes the
maps of a symmetric nucleus exactly antisymmetric; it is not what the published weights were trained with.

One deliberate difference: the reference grows the box without clipping, so an instance within 2 px of the top
or left image edge gets a negative slice start, an empty box and silently no HV target. Here the box is clipped to
the image, which yields the values the reference computes everywhere else (offsets do not depend on the box
origin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

MIN_AREA = 30
Origin = Literal["reference", "centre"]


@dataclass(frozen=True)
class HoVerTargets:
    """Targets for one image, all cropped to the output window: ``np`` (H, W) uint8 0/1, ``hv`` (2, H, W)
    float32 in [-1, 1] with channel 0 = x map and channel 1 = y map, ``tp`` (H, W) int64 type ids or None."""

    np: np.ndarray
    hv: np.ndarray
    tp: np.ndarray | None


def centre_crop(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop the first two axes to ``shape`` around the centre; the extra odd pixel is dropped at the bottom/right."""
    height, width = array.shape[:2]
    out_h, out_w = shape
    if out_h > height or out_w > width:
        raise ValueError(f"cannot crop {height}x{width} to {out_h}x{out_w}")
    top, left = (height - out_h) // 2, (width - out_w) // 2
    return array[top : top + out_h, left : left + out_w]


def fix_mirror_padding(inst_map: np.ndarray) -> np.ndarray:
    """Give every extra 4-connected piece of an instance its own new id (the first piece in raster order keeps
    the old one), as the reference does after shape augmentation."""
    fixed = np.asarray(inst_map).astype(np.int64)  # a copy; new ids may exceed the input dtype
    current_max = int(fixed.max(initial=0))
    objects = ndimage.find_objects(fixed)
    for index, box in enumerate(objects):
        if box is None:
            continue
        inst_id = index + 1
        mask = fixed[box] == inst_id
        pieces, count = ndimage.label(mask)
        if count <= 1:
            continue
        region = fixed[box]
        extra = pieces > 1
        region[extra] = pieces[extra] + current_max
        current_max = int(fixed.max())
    return fixed


def _offsets(length: int, com: int, origin: Origin) -> np.ndarray:
    base = np.arange(1, length + 1) if origin == "reference" else np.arange(length)
    return (base - com).astype(np.float32)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Negative side divided by |min|, positive side by max, each only when present."""
    out = values.copy()
    negative, positive = out < 0, out > 0
    if negative.any():
        out[negative] /= -out[negative].min()
    if positive.any():
        out[positive] /= out[positive].max()
    return out


def hv_map(
    inst_map: np.ndarray,
    output_shape: tuple[int, int] | None = None,
    *,
    min_area: int = MIN_AREA,
    origin: Origin = "reference",
) -> np.ndarray:
    """HV map ``(2, H, W)`` float32 over the whole input (crop it with :func:`centre_crop` on axes 1, 2).

    ``output_shape`` is the window whose instances get targets (the network's output; default: the whole map).
    """
    if origin not in ("reference", "centre"):
        raise ValueError(f"origin must be 'reference' or 'centre', got {origin!r}")
    inst = np.asarray(inst_map)
    if inst.ndim != 2:
        raise ValueError(f"instance map must be 2-D (H, W), got shape {inst.shape}")
    height, width = inst.shape
    fixed = fix_mirror_padding(inst)
    window = centre_crop(fixed, output_shape) if output_shape is not None else fixed
    areas = np.bincount(window.ravel())
    x_map = np.zeros((height, width), np.float32)
    y_map = np.zeros((height, width), np.float32)
    objects = ndimage.find_objects(fixed)
    for inst_id in np.flatnonzero(areas >= min_area):
        if inst_id == 0:
            continue
        box = objects[inst_id - 1]
        r0, r1 = max(box[0].start - 2, 0), min(box[0].stop + 2, height)
        c0, c1 = max(box[1].start - 2, 0), min(box[1].stop + 2, width)
        mask = fixed[r0:r1, c0:c1] == inst_id
        if mask.shape[0] < 2 or mask.shape[1] < 2:
            continue
        com_row, com_col = ndimage.center_of_mass(mask)
        com_row, com_col = int(com_row + 0.5), int(com_col + 0.5)
        xs = np.broadcast_to(_offsets(mask.shape[1], com_col, origin)[None, :], mask.shape)
        ys = np.broadcast_to(_offsets(mask.shape[0], com_row, origin)[:, None], mask.shape)
        x_inst = _normalise(np.where(mask, xs, 0.0).astype(np.float32))
        y_inst = _normalise(np.where(mask, ys, 0.0).astype(np.float32))
        x_map[r0:r1, c0:c1][mask] = x_inst[mask]
        y_map[r0:r1, c0:c1][mask] = y_inst[mask]
    return np.stack([x_map, y_map])


def make_targets(
    inst_map: np.ndarray,
    output_shape: tuple[int, int],
    type_map: np.ndarray | None = None,
    *,
    min_area: int = MIN_AREA,
    origin: Origin = "reference",
) -> HoVerTargets:
    """NP, HV and (when ``type_map`` is given) TP targets for one input patch, cropped to ``output_shape``."""
    inst = np.asarray(inst_map)
    hv = hv_map(inst, output_shape, min_area=min_area, origin=origin)
    hv = np.ascontiguousarray(centre_crop(hv.transpose(1, 2, 0), output_shape).transpose(2, 0, 1))
    nuclei = np.ascontiguousarray(centre_crop(inst > 0, output_shape)).astype(np.uint8)
    types = None
    if type_map is not None:
        type_arr = np.asarray(type_map)
        if type_arr.shape != inst.shape:
            raise ValueError(f"type map shape {type_arr.shape} differs from instance map shape {inst.shape}")
        types = np.ascontiguousarray(centre_crop(type_arr, output_shape)).astype(np.int64)
    return HoVerTargets(np=nuclei, hv=hv, tp=types)


__all__ = ["MIN_AREA", "HoVerTargets", "centre_crop", "fix_mirror_padding", "hv_map", "make_targets"]
