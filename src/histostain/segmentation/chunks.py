"""Segment an image of any size chunk by chunk, and merge the chunks so no nucleus is cut in two or counted twice.

A 8192 x 8192 image would need gigabytes of float maps (HoVer-Net: nine channels per pixel) if it were
processed at once. Instead the image is cut into square *cores* of ``chunk`` pixels that tile it without
overlap; each core is segmented together with a ``margin`` of real image around it (the *extended* region),
so that a nucleus near the core's edge is seen whole. A nucleus belongs to the core that holds its centroid:
exactly one core does, so no nucleus is counted twice, and because the margin is wider than any nucleus, the
nucleus lies wholly inside that core's extended region, so it is never cut. Its pixels are painted into the
image's label map where no earlier nucleus claimed them, and the per-nucleus rows are computed once from the
final map. Memory: the label and type maps of the image plus the working set of one extended region.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from histostain.errors import ConfigError
from histostain.runtime.progress import progress_task
from histostain.segmentation.nuclei import Nuclei

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 2048
DEFAULT_MARGIN = 128  # > the largest nucleus (about 40 px at 0.25 um/px) + the post-processing's own halo


@dataclass(frozen=True)
class Chunk:
    """One core ``[y0, y1) x [x0, x1)`` and its extended region ``[ey0, ey1) x [ex0, ex1)`` (clipped)."""

    y0: int
    x0: int
    y1: int
    x1: int
    ey0: int
    ex0: int
    ey1: int
    ex1: int

    def holds(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which centroids (image coordinates) fall in this core (half-open, so a point has one core)."""
        return (y >= self.y0) & (y < self.y1) & (x >= self.x0) & (x < self.x1)


def check_chunk(chunk: int, margin: int = DEFAULT_MARGIN) -> None:
    """A chunk side and margin that can work (checked before any image is read)."""
    if chunk < 64:
        raise ConfigError(f"--chunk-size {chunk}: must be at least 64 pixels", hint=f"the default is {DEFAULT_CHUNK}")
    if margin < 0:
        raise ConfigError(f"chunk margin {margin}: must be 0 or more")


def plan_chunks(height: int, width: int, chunk: int = DEFAULT_CHUNK, margin: int = DEFAULT_MARGIN) -> list[Chunk]:
    """Cores of ``chunk`` pixels covering the image (the last ones shorter), each with its extended region."""
    check_chunk(chunk, margin)
    chunks = []
    for y0 in range(0, height, chunk):
        for x0 in range(0, width, chunk):
            y1, x1 = min(y0 + chunk, height), min(x0 + chunk, width)
            chunks.append(
                Chunk(
                    y0,
                    x0,
                    y1,
                    x1,
                    max(0, y0 - margin),
                    max(0, x0 - margin),
                    min(height, y1 + margin),
                    min(width, x1 + margin),
                )
            )
    return chunks


def iter_kept(chunk: Chunk, found: Nuclei) -> Iterator[tuple[int, int, float | None]]:
    """``(id in the region's map, type, type_prob)`` of the region's nuclei whose centroid lies in the core."""
    if not len(found):
        return
    x = found.centroids[:, 0] + chunk.ex0
    y = found.centroids[:, 1] + chunk.ey0
    for i in np.flatnonzero(chunk.holds(x, y)).tolist():
        kind = -1 if found.types is None else int(found.types[i])
        prob = None if found.type_probs is None else float(found.type_probs[i])
        yield int(found.ids[i]), kind, prob


def segment_in_chunks(
    segment_region: Callable[[np.ndarray], Nuclei],
    image: np.ndarray,
    *,
    chunk: int = DEFAULT_CHUNK,
    margin: int = DEFAULT_MARGIN,
    type_names: dict[int, str] | None = None,
    mpp: float | None = None,
) -> Nuclei:
    """Run ``segment_region`` on every extended region of ``image`` and merge (see the module docstring).

    ``segment_region`` takes the ``H' x W' (x C)`` region and returns its :class:`Nuclei` in region
    coordinates. An image that fits in one chunk is segmented whole, with no merging at all.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    if height <= chunk and width <= chunk:
        return segment_region(image)
    from histostain.segmentation.postprocess import nuclei_from_labels, source_ids

    chunks = plan_chunks(height, width, chunk, margin)
    inst_map = np.zeros((height, width), np.int32)
    type_map: np.ndarray | None = None
    measured: dict[str, list[tuple[int, float]]] = {}
    next_id = 1
    point_parts: list[tuple[Chunk, Nuclei, np.ndarray]] = []
    with progress_task("chunks", total=len(chunks), unit="chunk") as task:
        for part in chunks:
            region = image[part.ey0 : part.ey1, part.ex0 : part.ex1]
            found = segment_region(region)
            if found.point_radius is not None:  # a detector's points: keep the core's rows, rebuild at the end
                keep = np.flatnonzero(part.holds(found.centroids[:, 0] + part.ex0, found.centroids[:, 1] + part.ey0))
                point_parts.append((part, found, keep))
                task.advance()
                continue
            if found.type_map is not None and type_map is None:
                type_map = np.zeros((height, width), np.uint8)
            view = inst_map[part.ey0 : part.ey1, part.ex0 : part.ex1]
            kept = list(iter_kept(part, found))
            if kept:
                # one pass over the region: region id -> new image id (0 for nuclei another core owns)
                lut = np.zeros(int(found.inst_map.max()) + 1, np.int32)
                region_ids = np.array([region_id for region_id, _, _ in kept], np.int64)
                lut[region_ids] = np.arange(next_id, next_id + len(kept), dtype=np.int32)
                relabelled = lut[found.inst_map]
                claim = (relabelled > 0) & (view == 0)  # pixels a neighbour already owns stay its own
                view[claim] = relabelled[claim]
                if type_map is not None and found.type_map is not None:
                    type_map[part.ey0 : part.ey1, part.ex0 : part.ex1][claim] = found.type_map[claim]
                rows = {int(v): i for i, v in enumerate(found.ids.tolist())}
                for name, column in found.measurements.items():
                    values = measured.setdefault(name, [])
                    values += [(next_id + k, float(column[rows[rid]])) for k, (rid, _, _) in enumerate(kept)]
                next_id += len(kept)
            task.advance()
    if point_parts:
        return _merge_points(point_parts, (height, width), type_names, mpp)
    merged = nuclei_from_labels(inst_map, type_map, type_names=type_names, mpp=mpp)
    if measured:
        # the merged rows are renumbered (and a degenerate nucleus dropped): look each row's painted id up
        painted = source_ids(inst_map, merged)
        for name, values in measured.items():
            by_id = dict(values)
            merged.measurements[name] = np.array([by_id.get(int(v), np.nan) for v in painted.tolist()])
    log.debug("merged %d chunk(s) into %d nuclei", len(chunks), len(merged))
    return merged


def _merge_points(
    parts: list[tuple[Chunk, Nuclei, np.ndarray]],
    shape: tuple[int, int],
    type_names: dict[int, str] | None,
    mpp: float | None,
) -> Nuclei:
    """Point nuclei of the whole image from each chunk's core points (in chunk order), every column kept."""
    from histostain.segmentation.points import nuclei_from_points

    first = parts[0][1]
    points = np.concatenate([f.centroids[k] + (p.ex0, p.ey0) for p, f, k in parts]).reshape(-1, 2)

    def column(get: Callable[[Nuclei], np.ndarray | None]) -> np.ndarray | None:
        if get(first) is None:
            return None
        return np.concatenate([np.asarray(get(f))[k] for _, f, k in parts])

    measurements = {name: column(lambda f, name=name: f.measurements[name]) for name in first.measurements}
    return nuclei_from_points(
        points,
        shape,
        float(first.point_radius or 0.0),
        types=column(lambda f: f.types),
        type_probs=column(lambda f: f.type_probs),
        type_names=type_names if type_names is not None else first.type_names,
        measurements={name: value for name, value in measurements.items() if value is not None},
        mpp=mpp,
    )


__all__ = ["DEFAULT_CHUNK", "DEFAULT_MARGIN", "Chunk", "check_chunk", "iter_kept", "plan_chunks", "segment_in_chunks"]
