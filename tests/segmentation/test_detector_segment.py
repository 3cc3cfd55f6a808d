"""The detector as a segmenter: point nuclei (disks, rescaling, chunk merge), weights export/load, positivity in
the disk, and every output format showing points."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from histostain.errors import WeightsError
from histostain.runtime.checkpoint import make_checkpoint, save_checkpoint
from histostain.runtime.device import DeviceManager
from histostain.segmentation.chunks import segment_in_chunks
from histostain.segmentation.classical import optical_densities
from histostain.segmentation.detector import DetectorNet
from histostain.segmentation.detector_segment import DISK_RADIUS_UM, SCORE, DetectorSegmenter
from histostain.segmentation.detector_weights import export_detector, load_detector
from histostain.segmentation.outputs import summary_row, write_outputs
from histostain.segmentation.points import nuclei_from_points, point_disks, rescale_points
from histostain.segmentation.positivity import DAB_OD, POSITIVITY
from histostain.segmentation.segment import segment_at_scale

# ------------------------------------------------------------------------------------------------ disks


def test_an_isolated_disk_holds_exactly_the_pixels_within_the_radius():
    labels = point_disks(np.array([[10.0, 8.0]]), (20, 24), 2.0)
    rows, cols = np.nonzero(labels)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == {
        (r, c) for r in range(20) for c in range(24) if (r - 8) ** 2 + (c - 10) ** 2 <= 4
    }
    assert (labels[rows, cols] == 1).all() and len(rows) == 13  # 1 + 4 + 4 + 4 pixels of a radius-2 disk


def test_neighbouring_disks_split_by_nearest_point_and_never_overlap():
    points = np.array([[5.0, 5.0], [8.0, 5.0], [5.0, 15.0]])
    labels = point_disks(points, (20, 20), 3.0)
    for r, c in zip(*np.nonzero(labels), strict=True):
        d = np.hypot(points[:, 0] - c, points[:, 1] - r)
        assert d[labels[r, c] - 1] <= 3.0 and d[labels[r, c] - 1] == d.min()
    # the point pixels belong to their own points
    assert labels[5, 5] == 1 and labels[5, 8] == 2 and labels[15, 5] == 3


def test_point_nuclei_keep_the_points_exactly_and_every_column():
    points = np.array([[3.25, 4.75], [0.0, 19.0], [23.0, 0.0]])
    found = nuclei_from_points(
        points,
        (20, 24),
        2.0,
        types=np.array([0, 1, 2]),
        type_probs=np.array([0.5, 0.6, 0.7]),
        measurements={SCORE: np.array([0.9, 0.8, 0.7])},
        mpp=0.5,
    )
    assert np.array_equal(found.centroids, points) and found.point_radius == 2.0
    assert found.ids.tolist() == [1, 2, 3] and found.types.tolist() == [0, 1, 2]
    for i in range(3):  # the bounding box is the disk's, clipped at the image border
        rows, cols = np.nonzero(found.inst_map == i + 1)
        assert tuple(found.bboxes[i]) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert found.areas[i] == len(rows)
    records = found.to_annotations()
    assert all(r.contour is None and r.area is None for r in records)
    assert [r.centroid for r in records] == [tuple(p) for p in points.tolist()]


def test_rescaled_points_map_pixel_centres_to_pixel_centres():
    found = nuclei_from_points(np.array([[10.0, 4.0], [0.0, 0.0]]), (50, 100), 5.0, types=np.array([2, 0]))
    back = rescale_points(found, (100, 200), mpp=0.25)  # the image was downsampled 2x for the model
    assert back.centroids.tolist() == [[20.5, 8.5], [0.5, 0.5]]  # (x + 0.5) * 2 - 0.5
    assert back.point_radius == 10.0 and back.types.tolist() == [2, 0] and back.mpp == 0.25


class FakeDots:
    """A 'detector' that finds the white pixels of a region: points whose truth is the image itself."""

    kind = "detector"
    mpp = 0.5

    def segment_region(self, rgb):
        rows, cols = np.nonzero(rgb[..., 0] == 255)
        points = np.stack([cols, rows], axis=1).astype(float)
        return nuclei_from_points(
            points, rgb.shape[:2], 3.0, types=rgb[rows, cols, 1], measurements={"green": rgb[rows, cols, 2]}, mpp=0.5
        )

    def segment(self, rgb):
        return segment_in_chunks(self.segment_region, rgb, chunk=64, margin=16, mpp=0.5)


def dots_image(shape=(150, 170), n=60, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((*shape, 3), np.uint8)
    rows, cols = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    image[rows, cols, 0] = 255
    image[rows, cols, 1] = rng.integers(0, 3, n)  # the class of the dot
    image[rows, cols, 2] = rng.integers(0, 256, n)  # a measurement
    return image


def test_chunked_points_equal_the_whole_image():
    image = dots_image()
    whole, chunked = FakeDots().segment_region(image), FakeDots().segment(image)
    order = np.lexsort((chunked.centroids[:, 0], chunked.centroids[:, 1]))  # chunk order differs from raster order
    assert np.array_equal(chunked.centroids[order], whole.centroids)
    assert np.array_equal(chunked.types[order], whole.types)
    assert np.array_equal(chunked.measurements["green"][order], whole.measurements["green"])
    assert np.array_equal(chunked.inst_map > 0, whole.inst_map > 0)


def test_segment_at_scale_returns_points_in_input_pixels():
    image = np.zeros((40, 60, 3), np.uint8)
    image[20:22, 30:32] = 255  # a 2x2 white square at 0.25 um/px is one white pixel at 0.5 um/px

    class Bright(FakeDots):
        def segment(self, rgb):
            rows, cols = np.unravel_index(np.argmax(rgb[..., 0]), rgb.shape[:2])
            return nuclei_from_points(np.array([[cols, rows]], float), rgb.shape[:2], 3.0, mpp=0.5)

    found = segment_at_scale(Bright(), image, input_mpp=0.25)
    assert found.shape == (40, 60) and found.mpp == 0.25 and found.point_radius == 6.0
    assert found.centroids.tolist() == [[30.5, 20.5]]  # the centre of the square


# ------------------------------------------------------------------------------------------------ outputs


def test_outputs_show_points(tmp_path):
    image = np.full((40, 50, 3), 200, np.uint8)
    found = nuclei_from_points(
        np.array([[10.0, 10.0], [30.0, 25.0]]),
        (40, 50),
        4.0,
        types=np.array([0, 1]),
        type_probs=np.array([0.9, 0.8]),
        type_names={0: "stroma", 1: "epithelium", 2: "other"},
        measurements={SCORE: np.array([0.7, 0.6])},
        mpp=0.5,
    )
    names = ("json", "geojson", "png", "txt")
    paths = write_outputs(found, [tmp_path / f"x.{n}" for n in names], image=image, image_name="x.png", formats=names)
    hover = json.loads(paths[0].read_text())["nuc"]
    assert hover["1"]["centroid"] == [10.0, 10.0] and hover["1"]["contour"] == []
    features = json.loads(paths[1].read_text())["features"]
    assert [f["geometry"] for f in features] == [
        {"type": "Point", "coordinates": [10.0, 10.0]},
        {"type": "Point", "coordinates": [30.0, 25.0]},
    ]
    assert [f["properties"]["classification"]["name"] for f in features] == ["stroma", "epithelium"]
    measured = {m["name"] for m in features[0]["properties"]["measurements"]}
    assert SCORE in measured and "area_um2" not in measured and "area" not in measured
    assert paths[3].read_text() == "10 10 0\n30 25 1\n"
    from skimage.io import imread

    overlay = imread(paths[2])
    assert overlay.shape[1] == 50 and (overlay[10, 10, :3] != 200).any() and (overlay[25, 30, :3] != 200).any()
    assert (overlay[2, 45, :3] == 200).all()  # away from the points the image is unchanged
    row = summary_row("x.png", found)
    assert row["nuclei"] == 2 and row["stroma"] == 1 and row["epithelium"] == 1
    assert "mean_area_um2" not in row and "mean_area_px" not in row


# ------------------------------------------------------------------------------------------------ weights


def tiny_checkpoint(path, *, threshold=0.3, mpp=0.5, seed=0):
    torch.manual_seed(seed)
    net = DetectorNet(width=4, levels=2)
    payload = make_checkpoint(
        "detector",
        net.state_dict(),
        {"width": 4},
        model_config={"in_channels": 3, "num_classes": 3, "width": 4, "levels": 2},
        class_names={0: "stroma", 1: "epithelium", 2: "other"},
        mpp=mpp,
        sigma_px=2.0,
        target_radius_um=3.0,
        threshold=threshold,
        nms_kernel=3,
        optimizers={"adam": {}},
        step=7,
    )
    save_checkpoint(path, payload)
    return net.eval()


def test_export_keeps_what_inference_needs_in_half_precision(tmp_path):
    net = tiny_checkpoint(tmp_path / "best.pt")
    out = export_detector(tmp_path / "best.pt", tmp_path / "small.pt", validation={"f1": 0.9})
    assert out.stat().st_size < (tmp_path / "best.pt").stat().st_size
    raw = torch.load(out, weights_only=True)
    assert "optimizers" not in raw and raw["source_step"] == 7 and raw["validation"] == {"f1": 0.9}
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if torch.is_floating_point(v))
    loaded_net, weights = load_detector(out)
    assert weights.threshold == 0.3 and weights.mpp == 0.5 and weights.nms_kernel == 3
    assert weights.class_names == {0: "stroma", 1: "epithelium", 2: "other"}
    assert weights.validation == {"f1": 0.9} and len(weights.loaded.sha256) == 64
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(loaded_net(x)), torch.sigmoid(net(x)), atol=2e-3)


def test_load_detector_refuses_other_checkpoints_in_one_line(tmp_path):
    save_checkpoint(tmp_path / "h.pt", make_checkpoint("hovernet", {}, {}))
    with pytest.raises(WeightsError, match="'hovernet' model, expected 'detector'"):
        load_detector(tmp_path / "h.pt")
    payload = make_checkpoint("detector", {}, {}, model_config={"width": 4})
    save_checkpoint(tmp_path / "d.pt", payload)
    with pytest.raises(WeightsError, match="does not record its network"):
        load_detector(tmp_path / "d.pt")


# ------------------------------------------------------------------------------------------------ the segmenter


def test_detector_segmenter_decodes_peaks_and_measures_dab_in_the_disk(tmp_path, monkeypatch):
    tiny_checkpoint(tmp_path / "w.pt", threshold=0.5)
    net, weights = load_detector(tmp_path / "w.pt")
    segmenter = DetectorSegmenter(net, weights, DeviceManager.create("cpu", "fp32"), stain="ihc")
    image = np.full((48, 64, 3), 235, np.uint8)
    image[8:17, 8:17] = (120, 80, 50)  # brown around (12, 12)
    image[30:39, 40:49] = (150, 150, 200)  # blue-grey around (44, 34)
    heat = np.zeros((3, 48, 64), np.float32)
    heat[1, 12, 12], heat[0, 12, 12] = 0.9, 0.3  # epithelium wins, share 0.75
    heat[2, 34, 44] = 0.6
    heat[0, 40, 5] = 0.4  # below the stored threshold 0.5: not a nucleus
    monkeypatch.setattr(segmenter, "heatmaps", lambda rgb: heat)
    found = segmenter.segment(image)
    assert found.centroids.tolist() == [[12.0, 12.0], [44.0, 34.0]]
    assert found.types.tolist() == [1, 2] and found.type_probs[0] == pytest.approx(0.75)
    assert found.measurements[SCORE].tolist() == pytest.approx([0.9, 0.6])
    radius = DISK_RADIUS_UM / 0.5
    assert found.point_radius == radius
    od = optical_densities(image)[..., 2]
    for i, (x, y) in enumerate(found.centroids.tolist()):
        rows, cols = np.mgrid[:48, :64]
        disk = (rows - y) ** 2 + (cols - x) ** 2 <= radius**2
        assert found.measurements[DAB_OD][i] == pytest.approx(float(od[disk].mean()), rel=1e-5)
    expected = [sum(value >= t for t in (0.2, 0.4, 0.6)) for value in found.measurements[DAB_OD]]
    assert found.measurements[POSITIVITY].tolist() == expected and expected[0] > expected[1]
    assert math.isclose(segmenter.radius_px, 5.0)
