"""QuPath's rules for GeoJSON detections: ring repair (io.annotations.polygons) and the checker (qupath_check).

The simplicity tests compare the vectorised checks with an obvious pure-Python one on random rings, and run
real OpenCV contours of random blobs through the repair.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from histostain.io.annotations import (
    GEOJSON_ID_NAMESPACE,
    Nucleus,
    assert_qupath_geojson,
    geojson_feature_id,
    geojson_features,
    qupath_geojson_problems,
    read_geojson,
    write_geojson,
)
from histostain.io.annotations.polygons import (
    _lattice_simple,
    _simple_batch,
    qupath_ring,
    qupath_rings,
    ring_problem,
)

# --------------------------------------------------------------------------------------------- writer


def test_geojson_text_writer_matches_the_feature_dicts(tmp_path: Path) -> None:
    nuclei = [
        Nucleus(id=3, centroid=(12.25, 7.5), type=1, type_prob=0.875, contour=np.array([[10, 5], [14, 5], [14, 9]])),
        Nucleus(id=17, centroid=(40.0, 33.125), contour=np.array([[38.5, 31.0], [42.0, 31.5], [41.0, 35.25]])),
        Nucleus(id=20, centroid=(0.0, 63.0), type=4, measurements={"dab_od": 0.5}),
    ]
    for object_type in ("detection", "cell"):
        path = write_geojson(tmp_path / "t.geojson", nuclei, object_type=object_type, image_name="t")
        expected = {
            "type": "FeatureCollection",
            "features": geojson_features(nuclei, object_type=object_type, image_name="t"),
        }
        assert path.read_text() == json.dumps(expected, separators=(",", ":")) + "\n"


def test_geojson_feature_id_is_uuid5() -> None:
    for nucleus_id, image in [(1, None), (17, "tile.png"), (123456, "a/b c.tif")]:
        key = f"{image}/{nucleus_id}" if image else str(nucleus_id)
        assert geojson_feature_id(nucleus_id, image) == str(uuid.uuid5(GEOJSON_ID_NAMESPACE, key))


def test_geojson_measurements_list_round_trip_and_both_forms_read(tmp_path: Path) -> None:
    nuclei = [
        Nucleus(id=1, centroid=(2, 3), contour=np.array([[0, 0], [4, 0], [4, 5]]), measurements={"dab_od": 0.25}),
        Nucleus(id=2, centroid=(9, 9), area=12.0, measurements={"positivity": 2, "bad": float("nan")}),
    ]
    path = write_geojson(tmp_path / "m.geojson", nuclei)
    features = json.loads(path.read_text())["features"]
    assert features[1]["properties"]["measurements"] == [
        {"name": "nucleus_id", "value": 2},
        {"name": "area", "value": 12.0},
        {"name": "positivity", "value": 2},  # NaN ("bad") left out: not JSON, and QuPath < 0.5 rejects "NaN"
    ]
    back = read_geojson(path)
    assert back[0].measurements == {"dab_od": 0.25} and back[1].measurements == {"positivity": 2}
    # The object form (QuPath 0.4+ exports) reads the same.
    as_object = json.loads(path.read_text())
    for feature in as_object["features"]:
        feature["properties"]["measurements"] = {m["name"]: m["value"] for m in feature["properties"]["measurements"]}
    (tmp_path / "o.geojson").write_text(json.dumps(as_object))
    assert read_geojson(tmp_path / "o.geojson") == back
    with pytest.raises(ValueError, match="reserved"):
        write_geojson(tmp_path / "r.geojson", [Nucleus(id=1, centroid=(0, 0), measurements={"area": 1.0})])


# --------------------------------------------------------------------------------------------- rings


def _square(x: int, y: int, side: int) -> list[list[int]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side]]


@pytest.mark.parametrize(
    ("contour", "ring", "kept"),
    [
        # A valid contour is written as given, closed.
        (_square(0, 0, 4), [*_square(0, 0, 4), [0, 0]], True),
        # A one-pixel spur (OpenCV traces out and back) is removed.
        ([[0, 0], [4, 0], [4, 4], [6, 4], [4, 4], [0, 4]], [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], True),
        # A spur at the ring's seam too.
        ([[4, 4], [6, 4], [4, 4], [0, 4], [0, 0], [4, 0]], [[4, 4], [0, 4], [0, 0], [4, 0], [4, 4]], True),
        # Two lobes joined in one pixel: the larger lobe is kept.
        (
            [[0, 0], [4, 0], [4, 4], [6, 6], [7, 6], [7, 7], [6, 7], [6, 6], [4, 4], [0, 4]],
            [*_square(0, 0, 4), [0, 0]],
            True,
        ),
        # A bow tie crossing between pixels has no valid part: the pixel box.
        ([[0, 0], [4, 4], [4, 0], [0, 2]], None, False),
        # A vertex touching another edge (no repeated point): the pixel box.
        ([[0, 0], [10, 0], [10, 6], [6, 6], [5, 0], [3, 6], [0, 6]], None, False),
        # No area: the pixel box.
        ([[0, 0], [2, 2], [4, 4]], None, False),
        # Sub-pixel contours are put on QuPath's 0.01 px grid.
        ([[0.123, 0.0], [5.0, 0.004], [5.0, 5.0]], [[0.12, 0.0], [5.0, 0.0], [5.0, 5.0], [0.12, 0.0]], True),
    ],
)
def test_qupath_ring_repairs_or_falls_back(contour: list, ring: list | None, kept: bool) -> None:
    points = np.array(contour)
    bbox = (int(points[:, 0].min()), int(points[:, 1].min()), int(points[:, 0].max()) + 1, int(points[:, 1].max()) + 1)
    result, is_contour = qupath_ring(points, bbox=bbox, centroid=(1.0, 1.0))
    assert is_contour == kept
    if ring is not None and kept:
        assert result.tolist() == ring
    if not kept:
        x0, y0, x1, y1 = bbox
        box = np.maximum([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], 0.5) - 0.5  # clipped at 0
        assert result.tolist() == box.tolist()
    assert ring_problem([result.tolist()]) is None


def test_qupath_ring_clips_to_the_image_and_never_goes_negative() -> None:
    ring, kept = qupath_ring(
        np.array([[-0.5, 2.0], [3.0, -0.5], [9.5, 4.0], [3.0, 9.5]]), bbox=None, centroid=(3, 3), image_size=(9, 9)
    )
    assert kept and ring.min() >= 0 and ring.max() <= 9
    box, kept = qupath_ring(np.array([[0, 0]]), bbox=(0, 0, 1, 1), centroid=(0.0, 0.0))
    assert not kept and box.tolist() == [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5], [0.0, 0.0]]


def _brute_force_simple(ring: list[tuple[int, int]]) -> bool:
    """Independent, obvious check: every pair of non-adjacent edges is disjoint, adjacent ones meet only at
    their shared point."""
    n = len(ring)

    def orient(a, b, c):
        value = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        return (value > 0) - (value < 0)

    def on(a, b, p):
        return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])

    def meet(p1, p2, q1, q2):
        d1, d2, d3, d4 = orient(q1, q2, p1), orient(q1, q2, p2), orient(p1, p2, q1), orient(p1, p2, q2)
        if d1 * d2 < 0 and d3 * d4 < 0:
            return True
        return any(
            d == 0 and on(a, b, c)
            for d, a, b, c in ((d1, q1, q2, p1), (d2, q1, q2, p2), (d3, p1, p2, q1), (d4, p1, p2, q2))
        )

    edges = [(ring[i], ring[(i + 1) % n]) for i in range(n)]
    if any(a == b for a, b in edges):
        return False
    for i in range(n):
        a, b = edges[i]
        c = edges[(i + 1) % n][1]
        if orient(a, b, c) == 0 and (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1]) < 0:
            return False  # turns straight back onto its neighbour
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue
            if meet(*edges[i], *edges[j]):
                return False
    return True


def test_ring_simplicity_agrees_with_brute_force_on_random_rings() -> None:
    rng = np.random.default_rng(0)
    directions = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]])
    for trial in range(600):
        n = int(rng.integers(3, 12))
        if trial % 2:
            # 8-directional integer rings (OpenCV style): a closed walk of runs, the last run closing it.
            steps = directions[rng.integers(0, 8, n)] * rng.integers(1, 4, (n, 1))
            ring = np.cumsum(steps, axis=0)
        else:
            ring = rng.integers(0, 6, (n, 2))
        points = [tuple(p) for p in ring.tolist()]
        expected = _brute_force_simple(points)
        assert bool(_simple_batch(ring[None].astype(np.int64))[0]) == expected, points
        lattice = all(dx == 0 or dy == 0 or abs(dx) == abs(dy) for dx, dy in (np.roll(ring, -1, 0) - ring).tolist())
        nonzero = not np.any(np.all(np.roll(ring, -1, 0) == ring, axis=1))
        if lattice and nonzero:
            assert bool(_lattice_simple([ring.astype(np.int64)])[0]) == expected, points


def test_opencv_contours_of_random_blobs_all_become_valid() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    contours, boxes = [], []
    for _ in range(200):
        blob = (rng.random((12, 12)) < 0.55).astype(np.uint8)
        found, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(found, key=len)[:, 0, :]
        contours.append(contour)
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((x, y, x + w, y + h))
    rings = qupath_rings(contours, boxes, [(0.0, 0.0)] * len(contours), image_size=(12, 12))
    for ring, kept in rings:
        assert ring_problem([ring.tolist()]) is None
        if kept:
            assert _brute_force_simple([tuple(p) for p in ring[:-1].tolist()])
    assert sum(kept for _, kept in rings) > 100  # most are kept (repaired), not replaced by their box


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda f: f["properties"].pop("object_type"), "properties.object_type must be 'detection'"),
        (lambda f: f["properties"].update(objectType="annotation"), "properties.objectType must be 'detection'"),
        (lambda f: f["properties"].update(type=1), "properties.type is read by QuPath as the object type"),
        (lambda f: f["properties"]["classification"].pop("color"), "classification needs a color"),
        (lambda f: f["properties"].update(measurements={"area": 1}), "measurements must be a list"),
        (lambda f: f["properties"]["measurements"].append({"name": "x"}), "is not {name, value}"),
        (lambda f: f.update(id="object_1"), "is not a UUID string"),
        (lambda f: f["geometry"]["coordinates"][0].pop(), "ring is not closed"),
        (lambda f: f["geometry"].update(coordinates=[[[0, 0], [1, 1], [0, 0]]]), "needs at least 4"),
        (lambda f: f["geometry"].update(coordinates=[[[0, 0], [4, 4], [4, 0], [0, 2], [0, 0]]]), "not simple"),
        (lambda f: f["geometry"].update(coordinates=[[[0, 0], [1, 1], [2, 2], [0, 0]]]), "zero area"),
        (lambda f: f["geometry"].update(coordinates=[[[0, 0], [1.001, 0], [1, 1], [0, 0]]]), "0.01 px grid"),
        (lambda f: f["geometry"].update(coordinates=[[[0, 0], [99, 0], [0, 9], [0, 0]]]), "outside the 20x20 image"),
        (lambda f: f.update(geometry={"type": "Point", "coordinates": [1, 1]}), "must be a Polygon"),
        (lambda f: f.update(objectType="detection"), "belong in properties"),
    ],
)
def test_qupath_check_reports_each_rule(mutate: Callable[[dict[str, Any]], Any], fragment: str) -> None:
    nuclei = [Nucleus(id=1, centroid=(2, 2), type=1, contour=np.array(_square(0, 0, 4)))]
    data = {"type": "FeatureCollection", "features": geojson_features(nuclei)}
    assert qupath_geojson_problems(data, image_size=(20, 20)) == []
    mutate(data["features"][0])
    problems = qupath_geojson_problems(data, image_size=(20, 20))
    assert len(problems) == 1 and problems[0].startswith("features[0]: ") and fragment in problems[0], problems
    with pytest.raises(AssertionError, match="1 QuPath GeoJSON problem"):
        assert_qupath_geojson(data, image_size=(20, 20))


def test_qupath_check_whole_file_rules(tmp_path: Path) -> None:
    assert qupath_geojson_problems([]) == ["top level must be a FeatureCollection"]
    (tmp_path / "x.geojson").write_text("{")
    assert qupath_geojson_problems(tmp_path / "x.geojson")[0].startswith("cannot read")
    feature = geojson_features([Nucleus(id=1, centroid=(1, 1))])[0]
    data = {"type": "FeatureCollection", "features": [feature, feature]}
    assert qupath_geojson_problems(data, allow_points=True) == [f"ids repeat: {feature['id']}"]
