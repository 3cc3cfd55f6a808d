"""Annotation formats: hand-written files of each format, exact writer output, round trips, and bad inputs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from histostain.errors import ConfigError, InputError
from histostain.io.annotations import (
    Nucleus,
    centroids_array,
    format_number,
    name_colour,
    polygon_centroid,
    qupath_geojson_problems,
    read_annotations,
    read_centroids_txt,
    read_csv,
    read_geojson,
    read_hovernet_json,
    types_array,
    write_annotations,
    write_centroids_txt,
    write_csv,
    write_geojson,
    write_hovernet_json,
)
from histostain.vocabulary import ENDONUKE_CLASS_NAMES, ENDONUKE_TYPE_COLOURS, type_colour


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def assert_same(actual: list[Nucleus], expected: list[Nucleus], atol: float = 1e-9) -> None:
    """Nuclei equal field by field, floats within ``atol``."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.id == e.id
        np.testing.assert_allclose(a.centroid, e.centroid, atol=atol, rtol=0)
        assert a.type == e.type
        assert a.type_name == e.type_name
        for name in ("type_prob", "area", "score"):
            va, ve = getattr(a, name), getattr(e, name)
            assert (va is None) == (ve is None), name
            if ve is not None:
                assert va == pytest.approx(ve, abs=atol)
        assert a.bbox == e.bbox
        assert (a.contour is None) == (e.contour is None)
        if e.contour is not None:
            np.testing.assert_array_equal(a.contour, e.contour)


def sample_nuclei() -> list[Nucleus]:
    """Nuclei with everything set, non-contiguous ids, an untyped one and one without a contour."""
    return [
        Nucleus(
            id=3,
            centroid=(12.25, 7.5),
            type=1,
            type_prob=0.875,
            contour=np.array([[10, 5], [14, 5], [14, 9], [10, 9]], dtype=np.int32),
            bbox=(10, 5, 15, 10),
            area=20.0,
            score=0.5,
        ),
        Nucleus(
            id=17,
            centroid=(40.0, 33.125),
            type=None,
            contour=np.array([[38.5, 31.0], [42.0, 31.5], [41.0, 35.25]]),
            bbox=(38, 31, 43, 36),
        ),
        Nucleus(id=20, centroid=(0.0, 63.0), type=4, type_prob=1.0),
    ]


# --------------------------------------------------------------------------------------------- centroid txt


def test_txt_reads_endonuke_file_with_trailing_spaces_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "1010.txt", "12 7 0 \n\n3 200 1 \n  199.5\t0.25   2\n\n")
    nuclei = read_centroids_txt(path, image_size=(200, 200))
    assert [(n.id, n.centroid, n.type) for n in nuclei] == [
        (1, (12.0, 7.0), 0),
        (2, (3.0, 200.0), 1),
        (3, (199.5, 0.25), 2),
    ]
    assert all(n.contour is None and n.bbox is None and n.type_prob is None for n in nuclei)


def test_txt_crlf_and_missing_class(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "1.5 2\r\n3 4 1\r\n")
    assert [(n.centroid, n.type) for n in read_centroids_txt(path)] == [((1.5, 2.0), None), ((3.0, 4.0), 1)]


def test_txt_empty_file_has_no_nuclei(tmp_path: Path) -> None:
    assert read_centroids_txt(write(tmp_path / "empty.txt", "")) == []
    assert read_centroids_txt(write(tmp_path / "blank.txt", "\n \n")) == []


def test_txt_point_on_the_image_edge_is_accepted_but_beyond_it_rejected(tmp_path: Path) -> None:
    ok = write(tmp_path / "ok.txt", "200 0 1\n0 200 0\n")
    assert len(read_centroids_txt(ok, image_size=(200, 200))) == 2
    bad = write(tmp_path / "bad.txt", "5 5 0\n201 10 1\n")
    with pytest.raises(InputError, match=r"bad\.txt:2: point \(201, 10\) lies outside the 200x200 image"):
        read_centroids_txt(bad, image_size=(200, 200))
    negative = write(tmp_path / "neg.txt", "-1 10 1\n")
    with pytest.raises(InputError, match=r"neg\.txt:1:"):
        read_centroids_txt(negative, image_size=(200, 200))
    # Without an image size no range is imposed.
    assert read_centroids_txt(bad)[1].centroid == (201.0, 10.0)


@pytest.mark.parametrize("line", ["1 2 3 4", "a b 1", "1 2 1.5", "7", "nan 2 0", "1 inf", "1,2,0"])
def test_txt_malformed_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = write(tmp_path / "labels.txt", f"1 2 0\n{line}\n")
    with pytest.raises(InputError) as info:
        read_centroids_txt(path)
    assert str(info.value) == f"{path}:2: expected 'x y [class]', got '{line}'"


def test_txt_class_written_as_float_is_accepted(tmp_path: Path) -> None:
    # The EndoNuke authors parse tokens with int(float(tok)), so "1.0" is a legal class.
    assert read_centroids_txt(write(tmp_path / "f.txt", "1 2 1.0\n"))[0].type == 1


def test_txt_writer_output_is_exact(tmp_path: Path) -> None:
    nuclei = [
        Nucleus(id=1, centroid=(12, 7), type=0),
        Nucleus(id=2, centroid=(3.5, 200.0), type=1),
        Nucleus(id=3, centroid=(10.123456, 0.10000001), type=2),
        Nucleus(id=4, centroid=(-0.00001, 5.99999), type=None),
    ]
    path = write_centroids_txt(tmp_path / "out.txt", nuclei)
    assert path.read_bytes() == b"12 7 0\n3.5 200 1\n10.1235 0.1 2\n0 6\n"


def test_format_number() -> None:
    assert format_number(3.0) == "3"
    assert format_number(2.50) == "2.5"
    assert format_number(1 / 3) == "0.3333"
    assert format_number(-1.25) == "-1.25"
    assert format_number(1.23456789, decimals=6) == "1.234568"
    with pytest.raises(ValueError):
        format_number(float("nan"))


def test_txt_round_trip_keeps_subpixel_positions_and_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nuclei = [
        Nucleus(id=i + 1, centroid=tuple(rng.uniform(0, 256, 2)), type=int(rng.integers(0, 3))) for i in range(50)
    ]
    nuclei.append(Nucleus(id=51, centroid=(256.0, 0.0)))
    back = read_centroids_txt(write_centroids_txt(tmp_path / "r.txt", nuclei), image_size=(256, 256))
    assert_same(back, nuclei, atol=5e-5)


def test_txt_empty_round_trip(tmp_path: Path) -> None:
    path = write_centroids_txt(tmp_path / "none.txt", [])
    assert path.read_bytes() == b""
    assert read_centroids_txt(path) == []


# --------------------------------------------------------------------------------------------- hover_net JSON

HOVERNET_LITERAL = """{"mag": null, "nuc": {
  "3": {"bbox": [[5, 10], [15, 30]], "centroid": [19.5, 9.25],
        "contour": [[10, 5], [29, 5], [29, 14], [10, 14]], "type_prob": 0.75, "type": 2},
  "17": {"bbox": [[40, 2], [44, 6]], "centroid": [3, 41], "contour": [[2, 40], [5, 40], [5, 43]],
         "type_prob": null, "type": null},
  "1000": {"centroid": [7.5, 8.5], "extra": "ignored"}
}}"""


def test_hovernet_reads_literal_with_noncontiguous_ids_and_swaps_bbox(tmp_path: Path) -> None:
    nuclei = read_hovernet_json(write(tmp_path / "tile.json", HOVERNET_LITERAL))
    assert [n.id for n in nuclei] == [3, 17, 1000]
    first, second, third = nuclei
    assert first.bbox == (10, 5, 30, 15)  # [[rmin, cmin], [rmax, cmax]] -> (x0, y0, x1, y1)
    assert first.centroid == (19.5, 9.25)
    assert first.type == 2 and first.type_prob == 0.75
    np.testing.assert_array_equal(first.contour, [[10, 5], [29, 5], [29, 14], [10, 14]])
    assert second.bbox == (2, 40, 6, 44)
    assert second.type is None and second.type_prob is None
    assert third == Nucleus(id=1000, centroid=(7.5, 8.5))


def test_hovernet_writer_output_matches_handwritten_expectation(tmp_path: Path) -> None:
    nuclei = [
        Nucleus(
            id=3,
            centroid=(19.5, 9.25),
            type=2,
            type_prob=0.75,
            contour=np.array([[10, 5], [29, 5], [29, 14]], dtype=np.int32),
            bbox=(10, 5, 30, 15),
            area=99.0,
        ),
        Nucleus(id=8, centroid=(1, 2)),
    ]
    path = write_hovernet_json(tmp_path / "out.json", nuclei)
    assert json.loads(path.read_text()) == {
        "mag": None,
        "nuc": {
            "3": {
                "bbox": [[5, 10], [15, 30]],
                "centroid": [19.5, 9.25],
                "contour": [[10, 5], [29, 5], [29, 14]],
                "type": 2,
                "type_prob": 0.75,
            },
            "8": {"bbox": None, "centroid": [1.0, 2.0], "contour": [], "type": None, "type_prob": None},
        },
    }
    assert json.loads(write_hovernet_json(tmp_path / "m.json", nuclei, mag=40).read_text())["mag"] == 40


def test_hovernet_round_trip(tmp_path: Path) -> None:
    nuclei = sample_nuclei()
    back = read_hovernet_json(write_hovernet_json(tmp_path / "r.json", nuclei))
    # area and score are not part of hover_net JSON.
    expected = [Nucleus(**{**vars(n), "area": None, "score": None}) for n in nuclei]
    assert back == expected
    assert back[0].contour.dtype.kind == "i" and back[1].contour.dtype.kind == "f"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"mag": null}', "not a hover_net JSON file"),
        ("[]", "not a hover_net JSON file"),
        ('{"nuc": {"a": {"centroid": [1, 2]}}}', "nuc['a']: nucleus id 'a' is not an integer"),
        ('{"nuc": {"1": [1, 2]}}', "nuc['1']: expected an object"),
        ('{"nuc": {"1": {"type": 1}}}', "nuc['1']: has neither 'centroid' nor 'contour'"),
        ('{"nuc": {"1": {"centroid": [1]}}}', "nuc['1'].centroid: expected [x, y]"),
        ('{"nuc": {"1": {"centroid": [1, 2], "bbox": [1, 2, 3, 4]}}}', "nuc['1'].bbox: expected"),
        ('{"nuc": {"1": {"centroid": [1, 2], "bbox": [[1, 2.5], [3, 4]]}}}', "nuc['1'].bbox: expected"),
        ('{"nuc": {"1": {"centroid": [1, 2], "contour": [[1, 2], [3]]}}}', "nuc['1'].contour: expected"),
        ('{"nuc": {"1": {"centroid": [1, 2], "type": "tumour"}}}', "nuc['1'].type: expected an integer"),
        ('{"nuc": {"1": {"centroid": [1, 2], "type_prob": "high"}}}', "nuc['1'].type_prob: expected a number"),
    ],
)
def test_hovernet_wrong_structure_names_file_and_field(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "bad.json", text)
    with pytest.raises(InputError) as info:
        read_hovernet_json(path)
    assert str(info.value).startswith(str(path))
    assert fragment in str(info.value)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.json", '{"mag": null,\n "nuc": {"1": {"centroid": [1, 2]\n')
    with pytest.raises(InputError, match=r"cut\.json:3: invalid JSON"):
        read_hovernet_json(path)


def test_hovernet_contour_without_centroid_uses_polygon_centroid(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '{"nuc": {"5": {"contour": [[10, 20], [14, 20], [14, 24], [10, 24]]}}}')
    assert read_hovernet_json(path)[0].centroid == (12.0, 22.0)


# --------------------------------------------------------------------------------------------- GeoJSON

QUPATH_EXPORT = """{
  "type": "FeatureCollection",
  "features": [
    {"type": "Feature", "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
     "geometry": {"type": "Polygon", "coordinates": [[[10, 20], [14, 20], [14, 24], [10, 24], [10, 20]]]},
     "properties": {"objectType": "detection",
                    "classification": {"name": "Inflammatory", "color": [34, 221, 77]},
                    "measurements": {"Nucleus: Area": 16.0, "area": 16.0}}},
    {"type": "Feature",
     "geometry": {"type": "Point", "coordinates": [5.5, 6.25]},
     "properties": {"object_type": "detection", "classification": "Dead", "isLocked": false}},
    {"type": "Feature",
     "geometry": {"type": "Point", "coordinates": [1, 2]},
     "properties": {"objectType": "detection", "classification": {"name": "Lymphocyte", "colorRGB": -16711936},
                    "measurements": [{"name": "score", "value": 0.25}]}},
    {"type": "Feature",
     "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]},
     "properties": {"objectType": "annotation", "name": "Region"}},
    {"type": "Feature",
     "geometry": {"type": "Polygon", "coordinates": [[[30, 30], [50, 30], [50, 50], [30, 50], [30, 30]]]},
     "nucleusGeometry": {"type": "Polygon", "coordinates": [[[32, 33], [36, 33], [36, 37], [32, 37], [32, 33]]]},
     "properties": {"objectType": "cell", "classification": {"names": ["Tumor", "Positive"]}}}
  ]
}"""


def test_geojson_reads_qupath_export(tmp_path: Path) -> None:
    nuclei = read_geojson(write(tmp_path / "export.geojson", QUPATH_EXPORT))
    assert [n.id for n in nuclei] == [1, 2, 3, 4, 5]  # no stored ids: numbered in file order
    square, point, lymph, region, cell = nuclei
    assert square.centroid == (12.0, 22.0)
    np.testing.assert_array_equal(square.contour, [[10, 20], [14, 20], [14, 24], [10, 24]])  # ring reopened
    assert square.type == 2 and square.type_name is None
    assert square.area == 16.0
    assert point.centroid == (5.5, 6.25) and point.type == 4 and point.contour is None
    assert lymph.type is None and lymph.type_name == "Lymphocyte" and lymph.score == 0.25
    assert region.centroid == (50.0, 50.0)
    assert cell.centroid == (34.0, 35.0)  # the nucleus of a cell, not the cell boundary
    assert cell.type is None and cell.type_name == "Tumor: Positive"


def test_geojson_object_types_filter_skips_region_annotations(tmp_path: Path) -> None:
    path = write(tmp_path / "export.geojson", QUPATH_EXPORT)
    nuclei = read_geojson(path, object_types={"detection", "cell"})
    assert [n.centroid for n in nuclei] == [(12.0, 22.0), (5.5, 6.25), (1.0, 2.0), (34.0, 35.0)]


def test_geojson_bare_list_with_legacy_type_key_and_v02_object_names(tmp_path: Path) -> None:
    text = """[
      {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]},
       "properties": {"type": "PathDetectionObject", "classification": "neoplastic"}},
      {"type": "Feature", "geometry": {"type": "Point", "coordinates": [8, 9, 0]}, "properties": {}}
    ]"""
    path = write(tmp_path / "list.json", text)
    nuclei = read_annotations(path, object_types=["detection"])
    assert [(n.centroid, n.type) for n in nuclei] == [((3.0, 4.0), 1)]
    # A feature without a type is an annotation, as in QuPath.
    assert [n.centroid for n in read_geojson(path, object_types=["annotation"])] == [(8.0, 9.0)]


def test_geojson_reads_cellvit_multipoint_and_multipolygon(tmp_path: Path) -> None:
    # CellViT writes a bare list with ONE feature per class.
    text = """[
      {"type": "Feature", "id": "0a6bd8b6-0aa8-4f27-8e2a-7f5a5f7c1f00",
       "geometry": {"type": "MultiPoint", "coordinates": [[10.5, 20.5], [30, 40], [50, 60]]},
       "properties": {"objectType": "annotation", "classification": {"name": "Neoplastic", "color": [255, 0, 0]}}},
      {"type": "Feature",
       "geometry": {"type": "MultiPolygon", "coordinates": [
          [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]],
          [[[10, 10], [16, 10], [10, 13], [10, 10]]]]},
       "properties": {"objectType": "annotation", "classification": {"name": "Epithelial", "color": [255, 159, 68]},
                      "measurements": {"area": 999}}}
    ]"""
    nuclei = read_annotations(write(tmp_path / "cells.json", text))
    assert [(n.id, n.centroid, n.type) for n in nuclei] == [
        (1, (10.5, 20.5), 1),
        (2, (30.0, 40.0), 1),
        (3, (50.0, 60.0), 1),
        (4, (1.0, 1.0), 5),
        (5, (12.0, 11.0), 5),  # triangle centroid = mean of its corners
    ]
    assert nuclei[4].area is None  # a group's measurement does not describe one of its nuclei


def test_polygon_centroid_is_area_centroid_not_vertex_mean() -> None:
    # A 4x4 square with three extra vertices on its bottom edge: the vertex mean is pulled to y = 8/7.
    ring = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [4, 4], [0, 4]])
    assert polygon_centroid(ring) == pytest.approx((2.0, 2.0))
    assert polygon_centroid(np.vstack([ring, ring[:1]])) == pytest.approx((2.0, 2.0))  # closed ring too
    assert polygon_centroid(ring[:, ::-1]) == pytest.approx((2.0, 2.0))  # the same with x and y swapped
    # Large slide coordinates keep their precision; a degenerate polygon falls back to the vertex mean.
    assert polygon_centroid(ring + 1_000_000) == pytest.approx((1_000_002.0, 1_000_002.0), abs=1e-9)
    assert polygon_centroid(np.array([[0, 0], [2, 2], [4, 4]])) == pytest.approx((2.0, 2.0))


def test_geojson_writer_structure(tmp_path: Path) -> None:
    # Format 2 (QuPath 0.3-0.7 rules): both type keys, coloured classes, measurements as a list, and a
    # degenerate contour written as a one-pixel square instead of a Point.
    nuclei = [
        Nucleus(id=1, centroid=(12.5, 22.0), type=2, type_prob=0.5, contour=np.array([[10, 20], [14, 20], [14, 24]])),
        Nucleus(id=2, centroid=(5.0, 6.0), contour=np.array([[5, 6], [6, 6]])),  # too short for a polygon
        Nucleus(id=3, centroid=(7.0, 8.0), type=9),  # no contour: a point annotation
    ]
    path = write_geojson(tmp_path / "out.geojson", nuclei)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    first, second, third = data["features"]
    assert first["type"] == "Feature"
    assert first["geometry"] == {"type": "Polygon", "coordinates": [[[10, 20], [14, 20], [14, 24], [10, 20]]]}
    assert first["properties"] == {
        "objectType": "detection",
        "object_type": "detection",
        "classification": {"name": "Inflammatory", "color": [0, 255, 0]},  # hover_net's type_info colour
        "measurements": [
            {"name": "nucleus_id", "value": 1},
            {"name": "centroid_x", "value": 12.5},
            {"name": "centroid_y", "value": 22.0},
            {"name": "type_prob", "value": 0.5},
        ],
    }
    square = [[4.5, 5.5], [5.5, 5.5], [5.5, 6.5], [4.5, 6.5], [4.5, 5.5]]
    assert second["geometry"] == {"type": "Polygon", "coordinates": [square]}
    assert "classification" not in second["properties"]
    assert third["geometry"] == {"type": "Point", "coordinates": [7.0, 8.0]}
    assert third["properties"]["classification"] == {"name": "9", "color": list(type_colour(9))}  # palette colour
    ids = [uuid.UUID(f["id"]) for f in data["features"]]
    assert all(u.version == 5 for u in ids) and len(set(ids)) == 3
    assert qupath_geojson_problems(path, allow_points=True) == []
    assert qupath_geojson_problems(path) == ["features[2]: geometry must be a Polygon, got 'Point'"]


def test_geojson_polygons_are_written_closed(tmp_path: Path) -> None:
    data = json.loads(write_geojson(tmp_path / "p.geojson", sample_nuclei()).read_text())
    polygons = [f["geometry"]["coordinates"][0] for f in data["features"] if f["geometry"]["type"] == "Polygon"]
    assert len(polygons) == 2
    for ring in polygons:
        assert ring[0] == ring[-1] and len(ring) >= 4
    # A contour that is already closed is not closed twice.
    closed = Nucleus(id=1, centroid=(1, 1), contour=np.array([[0, 0], [2, 0], [2, 2], [0, 0]]))
    data = json.loads(write_geojson(tmp_path / "c.geojson", [closed]).read_text())
    assert data["features"][0]["geometry"]["coordinates"] == [[[0, 0], [2, 0], [2, 2], [0, 0]]]


def test_geojson_ids_are_reproducible_and_depend_on_image_name(tmp_path: Path) -> None:
    nuclei = sample_nuclei()
    a = write_geojson(tmp_path / "a.geojson", nuclei, image_name="tile_1").read_bytes()
    b = write_geojson(tmp_path / "b.geojson", nuclei, image_name="tile_1").read_bytes()
    c = write_geojson(tmp_path / "c.geojson", nuclei, image_name="tile_2").read_bytes()
    assert a == b
    ids_a = [f["id"] for f in json.loads(a)["features"]]
    ids_c = [f["id"] for f in json.loads(c)["features"]]
    assert set(ids_a).isdisjoint(ids_c)


def test_geojson_cell_and_annotation_object_types(tmp_path: Path) -> None:
    nuclei = sample_nuclei()
    data = json.loads(write_geojson(tmp_path / "c.geojson", nuclei, object_type="cell").read_text())
    assert {f["properties"]["objectType"] for f in data["features"]} == {"cell"}
    assert all(f["nucleusGeometry"] == f["geometry"] for f in data["features"])
    assert_same(read_geojson(tmp_path / "c.geojson"), _geojson_expected(nuclei))
    data = json.loads(write_geojson(tmp_path / "a.geojson", nuclei, object_type="annotation").read_text())
    assert {f["properties"]["objectType"] for f in data["features"]} == {"annotation"}
    with pytest.raises(ConfigError, match="unknown QuPath object type 'tile'"):
        write_geojson(tmp_path / "t.geojson", nuclei, object_type="tile")


def _geojson_expected(nuclei: list[Nucleus]) -> list[Nucleus]:
    """What survives GeoJSON: everything but the bbox."""
    return [Nucleus(**{**vars(n), "bbox": None}) for n in nuclei]


def test_geojson_round_trip(tmp_path: Path) -> None:
    nuclei = sample_nuclei()
    back = read_geojson(write_geojson(tmp_path / "r.geojson", nuclei))
    assert_same(back, _geojson_expected(nuclei))
    # Centroids come back exactly, not as the polygon centroid (which is (12, 7) for the first contour).
    assert back[0].centroid == (12.25, 7.5)


def test_geojson_round_trip_with_endonuke_names_and_unknown_codes(tmp_path: Path) -> None:
    nuclei = [
        Nucleus(id=1, centroid=(1, 1), type=0),
        Nucleus(id=2, centroid=(2, 2), type=1),
        Nucleus(id=3, centroid=(3, 3), type=2),
        Nucleus(id=4, centroid=(4, 4), type=7),
        Nucleus(id=5, centroid=(5, 5), type_name="Lymphocyte"),
    ]
    path = write_geojson(tmp_path / "e.geojson", nuclei, type_names=ENDONUKE_CLASS_NAMES)
    names = [f["properties"].get("classification") for f in json.loads(path.read_text())["features"]]
    # Every class has a colour (QuPath rejects one without): EndoNuke names take EndoNuke colours, an unnamed
    # code the palette's, a bare name a colour derived from the name.
    assert names == [
        {"name": "stroma", "color": list(ENDONUKE_TYPE_COLOURS[0])},
        {"name": "epithelium", "color": list(ENDONUKE_TYPE_COLOURS[1])},
        {"name": "other", "color": list(ENDONUKE_TYPE_COLOURS[2])},
        {"name": "7", "color": list(type_colour(7))},
        {"name": "Lymphocyte", "color": list(name_colour("Lymphocyte"))},
    ]
    assert qupath_geojson_problems(path, allow_points=True) == []
    assert read_geojson(path, type_names=ENDONUKE_CLASS_NAMES) == nuclei
    # Read with the wrong table, the names are kept instead of being mistaken for PanNuke codes.
    wrong = read_geojson(path)
    assert [(n.type, n.type_name) for n in wrong[:3]] == [(None, "stroma"), (None, "epithelium"), (None, "other")]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"type": "Topology"}', "not GeoJSON"),
        ('{"type": "FeatureCollection"}', "FeatureCollection has no 'features' list"),
        ("[1]", "[0]: expected a GeoJSON Feature"),
        ('[{"type": "Feature", "properties": {}}]', "[0]: feature has no geometry"),
        (
            '[{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]',
            "[0].geometry: unsupported geometry type 'LineString'",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}}]',
            "[0].geometry.coordinates: polygon has fewer than 3 distinct points",
        ),
        ('[{"type": "Feature", "geometry": {"type": "Point", "coordinates": ["a", 1]}}]', "expected a position"),
        (
            '[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},'
            ' "properties": {"classification": 5}}]',
            "[0].properties.classification: expected a name",
        ),
    ],
)
def test_geojson_malformed_names_file_and_feature(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "bad.geojson", text)
    with pytest.raises(InputError) as info:
        read_geojson(path)
    assert str(info.value).startswith(str(path))
    assert fragment in str(info.value)


def test_geojson_image_size_check(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "s.geojson", [Nucleus(id=1, centroid=(300, 10))])
    with pytest.raises(InputError, match=r"s\.geojson: features\[0\]: point \(300, 10\) lies outside"):
        read_geojson(path, image_size=(256, 256))


# --------------------------------------------------------------------------------------------- CSV


def test_csv_writer_output_is_exact(tmp_path: Path) -> None:
    nuclei = [
        Nucleus(id=3, centroid=(12.25, 7.0), type=1, type_prob=0.875, area=20.0),
        Nucleus(id=17, centroid=(0.1, 33.0)),
    ]
    path = write_csv(tmp_path / "n.csv", nuclei)
    assert path.read_text() == "id,x,y,type,type_prob,area\n3,12.25,7,1,0.875,20\n17,0.1,33,,,\n"
    nuclei[1].score = 0.5
    path = write_csv(tmp_path / "s.csv", nuclei)
    assert path.read_text() == "id,x,y,type,type_prob,area,score\n3,12.25,7,1,0.875,20,\n17,0.1,33,,,,0.5\n"


def test_csv_reader_accepts_extra_and_reordered_columns(tmp_path: Path) -> None:
    text = "image,y,x,class_name,type,area\ntile1,7.5,12,tumour,1,30\n\ntile1,8,13,,,\n"
    nuclei = read_csv(write(tmp_path / "t.csv", text))
    assert nuclei == [
        Nucleus(id=1, centroid=(12.0, 7.5), type=1, area=30.0),
        Nucleus(id=2, centroid=(13.0, 8.0)),
    ]


def test_csv_round_trip_full_precision(tmp_path: Path) -> None:
    nuclei = [Nucleus(**{**vars(n), "contour": None, "bbox": None}) for n in sample_nuclei()]
    nuclei.append(Nucleus(id=21, centroid=(1 / 3, 2 / 3), type=0, score=1e-7))
    assert read_csv(write_csv(tmp_path / "r.csv", nuclei)) == nuclei


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("id,x,type\n1,2,3\n", ":1: missing column(s) y"),
        ("x,y\n1,2\n3,abc\n", ":3: column 'y': expected a number, got 'abc'"),
        ("x,y\n1,\n", ":2: x and y are required"),
        ("x,y,type\n1,2,1.5\n", ":2: column 'type': expected an integer class code"),
        ("x,y,id\n1,2,one\n", ":2: column 'id': expected an integer"),
        ("x,y\n1,nan\n", ":2: column 'y': expected a finite number"),
    ],
)
def test_csv_malformed_names_file_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(InputError) as info:
        read_csv(path)
    assert str(info.value).startswith(f"{path}:")
    assert fragment in str(info.value)


def test_csv_empty_and_header_only(tmp_path: Path) -> None:
    assert read_csv(write(tmp_path / "e.csv", "")) == []
    assert read_csv(write(tmp_path / "h.csv", "id,x,y,type,type_prob,area\n")) == []
    assert read_csv(write_csv(tmp_path / "w.csv", [])) == []


# --------------------------------------------------------------------------------------------- dispatch, files


@pytest.mark.parametrize(("name", "fmt"), [("a.txt", "txt"), ("a.json", "hovernet"), ("a.geojson", "geojson")])
def test_dispatch_by_extension(tmp_path: Path, name: str, fmt: str) -> None:
    nuclei = [Nucleus(id=1, centroid=(2.5, 3.0), type=1), Nucleus(id=2, centroid=(4.0, 5.0), type=2)]
    path = write_annotations(tmp_path / name, nuclei)
    readers = {"txt": read_centroids_txt, "hovernet": read_hovernet_json, "geojson": read_geojson}
    assert readers[fmt](path) == nuclei  # written in the format the extension names
    assert read_annotations(path) == nuclei


def test_dispatch_csv_and_case_insensitive_suffix(tmp_path: Path) -> None:
    nuclei = [Nucleus(id=1, centroid=(2.5, 3.0), type=1)]
    path = write_annotations(tmp_path / "A.CSV", nuclei)
    assert path.read_text().startswith("id,x,y,")
    assert read_annotations(path) == nuclei


def test_dispatch_json_content_decides(tmp_path: Path) -> None:
    nuclei = [Nucleus(id=1, centroid=(2.5, 3.0), type=3)]
    geo = write_geojson(tmp_path / "qupath.json", nuclei)
    assert read_annotations(geo) == nuclei
    hv = write_hovernet_json(tmp_path / "hovernet.json", nuclei)
    assert read_annotations(hv) == nuclei
    # Options for the other format are ignored, so one call site can read both.
    assert read_annotations(hv, type_names=ENDONUKE_CLASS_NAMES) == nuclei
    assert read_annotations(geo, type_names={3: "Connective"}, image_size=(10, 10)) == nuclei


def test_dispatch_fmt_override_and_errors(tmp_path: Path) -> None:
    nuclei = [Nucleus(id=1, centroid=(2.0, 3.0), type=0)]
    path = write_annotations(tmp_path / "points.lbl", nuclei, fmt="txt")
    assert path.read_text() == "2 3 0\n"
    assert read_annotations(path, fmt="txt") == nuclei
    with pytest.raises(InputError) as info:
        read_annotations(path)
    assert str(info.value).startswith(f"{path}: cannot tell the annotation format")
    assert ".txt" in info.value.hint and ".geojson" in info.value.hint and ".csv" in info.value.hint
    with pytest.raises(InputError):
        write_annotations(tmp_path / "x.xml", nuclei)
    with pytest.raises(ConfigError, match="unknown annotation format 'xml'"):
        read_annotations(path, fmt="xml")
    with pytest.raises(TypeError, match="typo_option"):
        read_annotations(path, fmt="txt", typo_option=1)
    # mag applies to hover_net only; GeoJSON ignores it.
    write_annotations(tmp_path / "g.geojson", nuclei, mag=40, object_type="annotation")
    assert read_geojson(tmp_path / "g.geojson") == nuclei


def test_missing_folder_and_non_utf8_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.txt: annotation file not found"):
        read_annotations(tmp_path / "nope.txt")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(InputError, match=r"dir\.json: is a folder"):
        read_annotations(tmp_path / "dir.json")
    (tmp_path / "bin.txt").write_bytes(b"1 2 0\n\xff\xfe\x00")
    with pytest.raises(InputError, match=r"bin\.txt: not a UTF-8 text file"):
        read_centroids_txt(tmp_path / "bin.txt")


def test_writes_are_atomic(tmp_path: Path) -> None:
    out = tmp_path / "out"
    nuclei = sample_nuclei()
    for name in ("a.txt", "a.json", "a.geojson", "a.csv"):
        write_annotations(out / name, nuclei)
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a.geojson", "a.json", "a.txt"]
    # A failing write (NaN is not JSON) leaves the previous file intact and no temporary file behind.
    before = (out / "a.json").read_bytes()
    with pytest.raises(ValueError):
        write_hovernet_json(out / "a.json", [Nucleus(id=1, centroid=(float("nan"), 1.0))])
    assert (out / "a.json").read_bytes() == before
    with pytest.raises(ValueError):
        write_centroids_txt(out / "b.txt", [Nucleus(id=1, centroid=(float("inf"), 1.0))])
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a.geojson", "a.json", "a.txt"]


def test_duplicate_ids_are_refused_by_keyed_writers(tmp_path: Path) -> None:
    nuclei = [Nucleus(id=1, centroid=(1, 1)), Nucleus(id=1, centroid=(2, 2))]
    with pytest.raises(ValueError, match="duplicate nucleus id 1"):
        write_hovernet_json(tmp_path / "d.json", nuclei)
    with pytest.raises(ValueError, match="duplicate nucleus id 1"):
        write_geojson(tmp_path / "d.geojson", nuclei)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- model, helpers


def test_nucleus_normalises_numpy_values_and_compares_contours_by_value() -> None:
    a = Nucleus(id=np.int64(4), centroid=np.array([1.5, 2.0]), type=np.uint8(2), contour=[[1, 2], [3, 4], [5, 6]])
    assert type(a.id) is int and type(a.type) is int
    assert a.centroid == (1.5, 2.0) and type(a.centroid[0]) is float
    assert isinstance(a.contour, np.ndarray)
    b = Nucleus(id=4, centroid=(1.5, 2.0), type=2, contour=np.array([[1, 2], [3, 4], [5, 6]]))
    assert a == b
    b.contour = np.array([[1, 2], [3, 4], [5, 7]])
    assert a != b
    with pytest.raises(ValueError, match="K x 2"):
        Nucleus(id=1, centroid=(0, 0), contour=np.zeros((3, 3)))


def test_centroids_and_types_arrays() -> None:
    nuclei = sample_nuclei()
    centroids = centroids_array(nuclei)
    assert centroids.dtype == np.float64 and centroids.shape == (3, 2)
    np.testing.assert_array_equal(centroids, [[12.25, 7.5], [40.0, 33.125], [0.0, 63.0]])
    types = types_array(nuclei)
    assert types.dtype.kind == "i"
    np.testing.assert_array_equal(types, [1, -1, 4])
    assert centroids_array([]).shape == (0, 2) and types_array([]).shape == (0,)
