"""PanNuke class masks -> one instance map and one type map per patch (the conversion ``prepare pannuke`` runs).

Rules (docs/commands/prepare-pannuke.md): a pixel positive in two or more class channels (0-4) belongs to the
**last** such channel, as PanNuke-metrics ``binarize``, CellViT and torch-em decide; every 4-connected piece of
one (channel, id) pair becomes its own instance, so split ids and ids reused across channels become distinct
instances; ids are then 1..n in raster order; the type map is the winning channel + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OVERLAP_RULE = "last-channel"
CONNECTIVITY = 4


@dataclass
class PatchConversion:
    """One converted patch: instance map, type map and what was found on the way."""

    inst_map: Any  # int32 (H, W), 0 background, 1..n
    type_map: Any  # uint8 (H, W), 0 background, 1..5 = channel + 1
    n_nuclei: int
    overlap_pixels: int
    instances_lost: int
    split_ids: int
    extra_instances: int
    colliding_ids: int


def convert_masks(classes: Any) -> PatchConversion:
    """Convert the five class channels ``(H, W, 5)`` (non-negative integer ids) of one patch.

    The last positive channel wins a pixel claimed by several channels; every 4-connected piece of a
    (channel, id) pair becomes one instance, numbered 1..n in raster order.
    """
    import numpy as np
    from skimage.measure import label

    classes = np.asarray(classes)
    height, width, channels = classes.shape
    planes = np.ascontiguousarray(np.moveaxis(classes, -1, 0), dtype=np.int64)  # (5, H, W): fast 2-D passes
    claims = np.zeros((height, width), np.uint8)
    winner = np.zeros((height, width), np.int64)
    winner_id = np.zeros((height, width), np.int64)
    raw_ids = []
    for channel in range(channels):
        plane = planes[channel]
        positive = plane > 0
        if not positive.any():
            raw_ids.append(np.zeros(0, np.int64))
            continue
        values = plane[positive]
        raw_ids.append(np.unique(values))
        claims += positive
        winner[positive] = channel  # a later channel overwrites: the last positive channel wins
        winner_id[positive] = values
    foreground = claims > 0
    if not foreground.any():
        return PatchConversion(
            inst_map=np.zeros((height, width), np.int32),
            type_map=np.zeros((height, width), np.uint8),
            n_nuclei=0,
            overlap_pixels=0,
            instances_lost=0,
            split_ids=0,
            extra_instances=0,
            colliding_ids=0,
        )
    base = int(planes.max()) + 1
    key = np.where(foreground, winner * base + winner_id, 0)
    inst = label(key, connectivity=1, background=0).astype(np.int32)
    n = int(inst.max())
    type_map = np.where(foreground, winner + 1, 0).astype(np.uint8)

    # Bookkeeping: the (channel, id) pairs of the input, and the pair each instance came from.
    raw_keys = np.concatenate([channel * base + ids for channel, ids in enumerate(raw_ids)])
    _, uses = np.unique(np.concatenate(raw_ids), return_counts=True)
    key_of = np.zeros(n + 1, np.int64)
    key_of[inst.ravel()] = key.ravel()  # every pixel of an instance carries the same key
    final_keys, pieces = np.unique(key_of[1:], return_counts=True)
    return PatchConversion(
        inst_map=inst,
        type_map=type_map,
        n_nuclei=n,
        overlap_pixels=int((claims > 1).sum()),
        instances_lost=int(raw_keys.size - final_keys.size),
        split_ids=int((pieces > 1).sum()),
        extra_instances=int(n - final_keys.size),
        colliding_ids=int((uses > 1).sum()),
    )


__all__ = ["CONNECTIVITY", "OVERLAP_RULE", "PatchConversion", "convert_masks"]
