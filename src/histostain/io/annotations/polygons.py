"""Nucleus contours as polygon rings QuPath (JTS) accepts: closed, at least 4 points, a positive area, simple.

Contours traced from pixel masks (OpenCV, hover_net) are often not valid polygons: a one-pixel-wide spur is
traced out and back along the same pixels, two lobes joined by a diagonal pixel touch in one vertex, and a
nucleus one pixel wide has no area at all. JTS rejects rings with fewer than 4 points, QuPath 0.6+ reduces
every geometry to a 0.01 px grid, and invalid (self-touching) rings are the plausible cause of imports that
fail in 0.6 and not 0.5 (reference segment_outputs.md §1.2). So every ring is repaired here, without a
geometry library:

1. coordinates are rounded to the 0.01 px grid QuPath uses, and handled as exact integers (hundredths);
2. repeated consecutive points and out-and-back spurs are removed;
3. a ring that passes through the same point twice is split there and the loop with the largest area kept
   (what ``make_valid`` and "keep the largest part" would give for these rings);
4. whatever is left must be simple (no two edges touch except neighbours at their shared point) and have an
   area; otherwise the nucleus is written as its pixel bounding box, a rectangle that is always valid.

Speed: all rings of an image are checked in a few vectorised passes. OpenCV contours (integer points, edges
in the 8 pixel directions) are walked pixel by pixel, which makes the test O(perimeter): such a ring is simple
exactly when it visits no pixel twice and never crosses a 2 x 2 cell on both diagonals. Any other ring gets
the pairwise edge test, batched by ring length. Only the few rings that fail are repaired one by one, in
plain Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

GRID = 100  # hundredths of a pixel: QuPath's PrecisionModel(-0.01) grid


def _to_grid(points: np.ndarray) -> np.ndarray:
    """Points in hundredths of a pixel, as exact integers (integer contours need no rounding)."""
    points = np.asarray(points)
    if points.dtype.kind in "iub":
        return points.astype(np.int64) * GRID
    return np.rint(points.astype(np.float64) * GRID).astype(np.int64)


def _drop_closing_point(ring: np.ndarray) -> np.ndarray:
    if len(ring) > 1 and (ring[0] == ring[-1]).all():
        return ring[:-1]
    return ring


Point = tuple[int, int]


def _turns_back(a: Point, b: Point, c: Point) -> bool:
    """Whether the path a -> b -> c reverses at b (a spur tip): b - a and c - b point in opposite directions."""
    ux, uy, vx, vy = b[0] - a[0], b[1] - a[1], c[0] - b[0], c[1] - b[1]
    return ux * vy - uy * vx == 0 and ux * vx + uy * vy < 0


def _drop_repeats_and_spurs(points: list[Point]) -> list[Point]:
    """Remove consecutive duplicates and spur tips (cyclically) until none is left.

    One stack pass removes every defect away from the ring's seam; rotating by half a ring and passing again
    reaches the seam. Every change removes a point, so this ends.
    """
    changed = True
    while changed and len(points) >= 3:
        changed = False
        for _ in range(2):
            out: list[Point] = []
            for point in points:
                while len(out) >= 2 and out[-1] != point and _turns_back(out[-2], out[-1], point):
                    out.pop()  # the spur tip
                    changed = True
                if out and out[-1] == point:
                    changed = True
                    continue
                out.append(point)
            half = len(out) // 2
            points = out[half:] + out[:half]
    return points


def _area2(points: list[Point]) -> int:
    """Twice the signed area (shoelace), exact on the integer grid."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True))


def _split_at_repeats(points: list[Point]) -> list[Point]:
    """Split a ring at every point it visits twice, keeping the loop with the largest area each time."""
    while len(points) >= 3:
        seen: dict[Point, int] = {}
        repeat = None
        for index, point in enumerate(points):
            if point in seen:
                repeat = (seen[point], index)
                break
            seen[point] = index
        if repeat is None:
            return points
        i, j = repeat
        loops = [_drop_repeats_and_spurs(points[i:j]), _drop_repeats_and_spurs(points[j:] + points[:i])]
        points = max(loops, key=lambda loop: abs(_area2(loop)) if len(loop) >= 3 else -1)
    return points


def _cleaned(ring: np.ndarray) -> np.ndarray:
    """Steps 2 and 3 of the module docstring on an open grid ring; the result may still be invalid."""
    original = [(int(x), int(y)) for x, y in ring.tolist()]
    points = _split_at_repeats(_drop_repeats_and_spurs(original))
    # Start where the contour starts, when that point survived (the passes rotate the ring).
    start = next((points.index(p) for p in original if p in points), 0)
    return np.array(points[start:] + points[:start], dtype=np.int64).reshape(-1, 2)


def _orientation(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.sign(
        (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
    )


def _on_segment(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Whether ``p`` (already known collinear with a-b) lies within the segment's box."""
    return np.all((np.minimum(a, b) <= p) & (p <= np.maximum(a, b)), axis=-1)


@lru_cache(maxsize=256)
def _edge_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` of every pair of non-adjacent edges of an ``n``-edge ring (edge k: point k to k+1)."""
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))
    return i[keep], j[keep]


_PAIR_BUDGET = 1 << 20  # edge pairs tested at once: a few tens of MB of temporaries


def _simple_batch(rings: np.ndarray) -> np.ndarray:
    """Per ring of an ``(m, n, 2)`` stack of open integer rings: is it a simple polygon boundary?

    No repeated consecutive point, no edge turning straight back onto its neighbour, and no two non-adjacent
    edges that cross or touch: the JTS rules for a valid LinearRing shell. Exact (integer arithmetic).
    """
    nxt, prev = np.roll(rings, -1, axis=1), np.roll(rings, 1, axis=1)
    u, v = rings - prev, nxt - rings
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    dot = u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]
    ok = ~np.any(np.all(v == 0, axis=-1) | ((cross == 0) & (dot < 0)), axis=1)
    i, j = _edge_pairs(rings.shape[1])
    if len(i) == 0:
        return ok
    step = max(1, _PAIR_BUDGET // len(i))
    for start in range(0, len(rings), step):
        block, block_next = rings[start : start + step], nxt[start : start + step]
        p1, p2, q1, q2 = block[:, i], block_next[:, i], block[:, j], block_next[:, j]
        d1, d2 = _orientation(q1, q2, p1), _orientation(q1, q2, p2)
        d3, d4 = _orientation(p1, p2, q1), _orientation(p1, p2, q2)
        bad = (d1 * d2 < 0) & (d3 * d4 < 0)
        bad |= (d1 == 0) & _on_segment(q1, q2, p1)
        bad |= (d2 == 0) & _on_segment(q1, q2, p2)
        bad |= (d3 == 0) & _on_segment(p1, p2, q1)
        bad |= (d4 == 0) & _on_segment(p1, p2, q2)
        ok[start : start + step] &= ~np.any(bad, axis=1)
    return ok


def ring_is_simple(ring: np.ndarray) -> bool:
    """Whether an open ring of exact (integer) points is a simple polygon boundary (:func:`_simple_batch`)."""
    ring = np.asarray(ring, dtype=np.int64)
    return len(ring) >= 3 and bool(_simple_batch(ring[None])[0])


def _from_grid(ring: np.ndarray, integers: bool) -> np.ndarray:
    """The closed ring in pixels: int64 for integer contours, else float64 on the 0.01 px grid.

    An integer divided by 100 is the double nearest to the 2-decimal value, which JSON prints as such.
    """
    closed = np.concatenate([ring, ring[:1]])
    if integers:  # points of an integer contour are whole pixels; repairs only drop points
        return closed // GRID
    return closed / GRID


def fallback_rectangle(
    bbox: Sequence[int] | None, centroid: tuple[float, float], image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """The pixel outline of a nucleus' bounding box as a closed ring (or a one-pixel square at the centroid).

    Contours put pixel centres on integer coordinates, so a box of pixels ``x0..x1-1`` spans ``x0 - 0.5`` to
    ``x1 - 0.5``: the rectangle is centred on the nucleus like its contour would be. Clipped at 0 (and to
    ``image_size``), so no coordinate lies outside the image; its area is always positive.
    """
    if bbox is not None and bbox[2] > bbox[0] and bbox[3] > bbox[1]:
        x0, y0, x1, y1 = (float(v) - 0.5 for v in bbox)
    else:
        cx, cy = centroid
        x0, y0, x1, y1 = cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5
    corners = _to_grid(np.maximum(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), 0.0))
    return _from_grid(_clip(corners, image_size), integers=False)


def _clip(ring: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
    """Grid points clipped to ``[0, W] x [0, H]`` (iso-line contours reach -0.5 at the image edge)."""
    if image_size is None:
        return ring
    return np.clip(ring, 0, np.array(image_size, dtype=np.int64) * GRID)


def _keys(*columns: np.ndarray) -> np.ndarray:
    """Row keys of integer columns that are equal exactly when all columns are: packed into one int64 when
    the ranges fit, else the rank of each row in a lexicographic sort."""
    spans = [int(c.max()) - int(c.min()) + 1 if len(c) else 1 for c in columns]
    if float(np.prod([float(s) for s in spans])) < 2.0**62:
        key = np.zeros(len(columns[0]), dtype=np.int64)
        for column, span in zip(columns, spans, strict=True):
            key = key * span + (column - column.min() if len(column) else column)
        return key
    order = np.lexsort(columns[::-1])
    rows = np.stack(columns, axis=1)[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    key = np.empty(len(order), dtype=np.int64)
    key[order] = np.cumsum(new)
    return key


def _repeated(values: np.ndarray) -> np.ndarray:
    """The values that occur more than once (sorted; plain sorting, faster than ``np.unique`` on big arrays)."""
    ordered = np.sort(values)
    return ordered[1:][ordered[1:] == ordered[:-1]]


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` for a small sorted set: a binary search per value."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    index = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[index] == values


def _lattice_simple(rings: list[np.ndarray]) -> np.ndarray:
    """Per open ring of integer pixel points whose edges all run in one of the 8 pixel directions (OpenCV
    contours): is it simple? Checked for all rings at once in O(total perimeter), not O(points^2).

    Walked one pixel at a time, such a ring is simple exactly when it visits no pixel twice and never takes
    both diagonals of one 2 x 2 cell: unit steps on the pixel lattice meet nowhere else.
    """
    points, following, starts = _concatenated(rings)
    ring_of_point = np.repeat(np.arange(len(rings)), np.diff(np.append(starts, len(points))))
    x, y = points[:, 0], points[:, 1]
    dx, dy = x[following] - x, y[following] - y
    steps = np.maximum(np.abs(dx), np.abs(dy))
    ux, uy = np.sign(dx), np.sign(dy)  # edges are 8-directional: delta = steps * (ux, uy)
    edge = np.repeat(np.arange(len(points)), steps)
    k = np.arange(len(edge)) - np.repeat(np.cumsum(steps) - steps, steps)
    step_x, step_y = ux[edge], uy[edge]
    walked_x, walked_y = x[edge] + k * step_x, y[edge] + k * step_y
    ring_of_step = ring_of_point[edge]
    bad = np.zeros(len(rings), dtype=bool)
    point_key = _keys(ring_of_step, walked_x, walked_y)
    bad[ring_of_step[_member(point_key, _repeated(point_key))]] = True
    # A cell crossed by both diagonals: after dropping repeats of (cell, slope), the cell still repeats.
    diagonal = (step_x != 0) & (step_y != 0)
    cell_x = np.minimum(walked_x, walked_x + step_x)[diagonal]
    cell_y = np.minimum(walked_y, walked_y + step_y)[diagonal]
    slope = (step_x[diagonal] == step_y[diagonal]).astype(np.int64)
    ring_of_diagonal = ring_of_step[diagonal]
    cell_key = _keys(ring_of_diagonal, cell_x, cell_y)
    pairs = np.sort(cell_key * 2 + slope)
    distinct = pairs[np.r_[True, pairs[1:] != pairs[:-1]][: len(pairs)]] // 2
    crossed_cells = distinct[1:][distinct[1:] == distinct[:-1]]
    bad[ring_of_diagonal[_member(cell_key, crossed_cells)]] = True
    return ~bad


def _concatenated(rings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rings' points in one array, each point's successor in its ring, and where each ring starts."""
    lengths = np.array([len(r) for r in rings], dtype=np.int64)
    points = np.concatenate(rings)
    starts = np.cumsum(lengths) - lengths
    following = np.arange(len(points)) + 1
    following[starts + lengths - 1] = starts
    return points, following, starts


def _valid_rings(grids: list[np.ndarray | None]) -> np.ndarray:
    """Which rings are valid as given (simple, with an area): the lattice test for OpenCV-style contours,
    the pairwise edge test, batched by ring length, for any other. Vectorised over all rings."""
    valid = np.zeros(len(grids), dtype=bool)
    candidates = np.array([k for k, ring in enumerate(grids) if ring is not None and len(ring) >= 3], dtype=np.int64)
    if not len(candidates):
        return valid
    rings: list[np.ndarray] = [grids[k] for k in candidates]  # type: ignore[misc]
    points, following, starts = _concatenated(rings)
    delta = points[following] - points
    has_area = np.add.reduceat(points[:, 0] * points[following, 1] - points[following, 0] * points[:, 1], starts) != 0
    # A lattice ring: integer pixel points, every edge non-empty and in one of the 8 pixel directions.
    dx, dy = np.abs(delta[:, 0]), np.abs(delta[:, 1])
    good_point = np.all(points % GRID == 0, axis=1) & ((dx == 0) | (dy == 0) | (dx == dy)) & ((dx > 0) | (dy > 0))
    on_lattice = np.logical_and.reduceat(good_point, starts)
    simple = np.zeros(len(rings), dtype=bool)
    lattice = np.flatnonzero(on_lattice)
    if len(lattice):
        simple[lattice] = _lattice_simple([rings[p] // GRID for p in lattice])
    by_length: dict[int, list[int]] = {}
    for position in np.flatnonzero(~on_lattice).tolist():
        by_length.setdefault(len(rings[position]), []).append(position)
    for positions in by_length.values():
        simple[positions] = _simple_batch(np.stack([rings[p] for p in positions]))
    valid[candidates] = simple & has_area
    return valid


def qupath_rings(
    contours: Sequence[np.ndarray | None],
    bboxes: Sequence[Sequence[int] | None],
    centroids: Sequence[tuple[float, float]],
    image_size: tuple[int, int] | None = None,
) -> list[tuple[np.ndarray, bool]]:
    """A closed, valid polygon ring per nucleus (``K x 2``, int64 pixels for integer contours, else float64
    on the 0.01 px grid), and whether it is the contour (False: the fallback box).

    All rings are checked together (:func:`_valid_rings`); the few that fail are cleaned (spurs, repeats,
    pinches) and checked together again; what still fails becomes the bounding box. So tens of thousands of
    nuclei take about a second. With ``image_size=(W, H)`` every point is clipped to ``[0, W] x [0, H]``.
    """
    grids = [None if c is None or len(c) < 3 else _clip(_drop_closing_point(_to_grid(c)), image_size) for c in contours]
    valid = _valid_rings(grids)
    broken = [k for k, ring in enumerate(grids) if ring is not None and not valid[k]]
    if broken:
        cleaned = [_cleaned(grids[k]) for k in broken]  # type: ignore[arg-type]
        for k, ring, ok in zip(broken, cleaned, _valid_rings(cleaned).tolist(), strict=True):
            grids[k], valid[k] = (ring if ok else None), ok
    results = []
    for index, (contour, ring) in enumerate(zip(contours, grids, strict=True)):
        if ring is None or not valid[index]:
            results.append((fallback_rectangle(bboxes[index], centroids[index], image_size), False))
        else:
            results.append((_from_grid(ring, np.asarray(contour).dtype.kind in "iub"), True))
    return results


def qupath_ring(
    contour: np.ndarray | None,
    *,
    bbox: Sequence[int] | None,
    centroid: tuple[float, float],
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, bool]:
    """:func:`qupath_rings` for one nucleus."""
    return qupath_rings([contour], [bbox], [centroid], image_size)[0]


def ring_problem(coordinates: object) -> str | None:
    """Why a GeoJSON Polygon ``coordinates`` value would not import into QuPath as a valid shell, or None."""
    if not isinstance(coordinates, list) or len(coordinates) != 1:
        return "expected exactly one ring (nuclei have no holes)"
    ring = coordinates[0]
    if not isinstance(ring, list) or not all(
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(c, int | float) and not isinstance(c, bool) and np.isfinite(c) for c in p)
        for p in ring
    ):
        return "ring is not a list of finite [x, y] positions"
    if len(ring) < 4:
        return f"ring has {len(ring)} points, JTS needs at least 4"
    if ring[0] != ring[-1]:
        return "ring is not closed (first point != last point)"
    points = np.asarray(ring, dtype=np.float64)
    grid = _to_grid(points)
    if np.any(np.abs(points * GRID - grid) > 1e-6):
        return "coordinates are finer than QuPath's 0.01 px grid"
    open_ring = grid[:-1]
    if len({tuple(p) for p in open_ring.tolist()}) < 3:
        return "ring has fewer than 3 distinct points"
    if _area2([(x, y) for x, y in open_ring.tolist()]) == 0:
        return "ring has zero area"
    if not ring_is_simple(open_ring):
        return "ring is not simple (it crosses or touches itself)"
    return None


__all__ = ["GRID", "fallback_rectangle", "qupath_ring", "qupath_rings", "ring_is_simple", "ring_problem"]
