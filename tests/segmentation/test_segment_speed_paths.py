"""The speed paths of `segment` give the nuclei of the plain path: post-processing in a worker process overlapped
with the next image's (or chunk's) network, the compile decision for a whole run, and the speed options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from histostain.io.images import write_image
from histostain.runtime.device import DeviceManager
from histostain.segmentation.chunks import plan_chunks
from histostain.segmentation.compat import load_hovernet, save_hovernet
from histostain.segmentation.hovernet import HoVerNet
from histostain.segmentation.inference import AUTO_COMPILE_MIN_PATCHES, HoVerNetMaps
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.segment import HoVerNetSegmenter
from histostain.segmentation.segment_files import segment_paths
from histostain.segmentation.targets import make_targets
from histostain.synth import generate_tile

CPU = DeviceManager.create("cpu", "fp32")
CLI = ["--quiet", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = HoVerNet("fast", 6, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1])
    return save_hovernet(net, tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiles")
    for seed, size in enumerate((96, 130, 96)):
        write_image(folder / f"he{seed}.png", generate_tile(seed, size).he)
    return folder


def _segmenter(weights: Path, **options: object) -> HoVerNetSegmenter:
    model, info = load_hovernet(weights)
    return HoVerNetSegmenter(model, info, CPU, **options)  # type: ignore[arg-type]


def dark_blob_maps(rgb: np.ndarray) -> HoVerNetMaps:
    """Maps a trained network could give, from the image alone (a random tiny network finds no nuclei): dark
    pixels are nucleus, typed by their red level, with the HV targets of their connected blobs."""
    nucleus = rgb.mean(axis=-1) < 140
    targets = make_targets(ndimage.label(nucleus)[0], nucleus.shape)
    kinds = np.where(nucleus, 1 + (rgb[..., 0] > 90), 0)
    tp_prob = np.eye(6, dtype=np.float32)[kinds]
    return HoVerNetMaps(nucleus.astype(np.float32), targets.hv.transpose(1, 2, 0).astype(np.float32), tp_prob)


def _same(a: Nuclei, b: Nuclei) -> None:
    np.testing.assert_array_equal(a.inst_map, b.inst_map)
    np.testing.assert_array_equal(a.type_map, b.type_map)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.mpp == b.mpp


def test_workers_default_to_none_on_cpu_and_refuse_a_negative_count(weights: Path) -> None:
    assert _segmenter(weights).postprocess_workers == 0
    with _segmenter(weights).overlapping() as pool:
        assert pool is None
    with pytest.raises(Exception, match="--postprocess-workers -1"):
        _segmenter(weights, postprocess_workers=-1)


def test_a_worker_overlaps_images_and_chunks_and_gives_the_same_nuclei(weights: Path) -> None:
    """One worker process (spawned once for both checks): an image handed over by ``start``, and an image in
    chunks whose post-processing runs while the next chunk is inferred, equal the in-process results."""
    small = generate_tile(3, 120).he
    large = generate_tile(4, 300).he  # 3 x 3 chunks of 128 px with their margins
    plain = _segmenter(weights, chunk=128, margin=32)
    overlapped = _segmenter(weights, chunk=128, margin=32, postprocess_workers=1)
    for segmenter in (plain, overlapped):
        segmenter.predictor.maps = dark_blob_maps  # type: ignore[method-assign]
    expected_small = plain.segment(small)
    expected_large = plain.segment(large)
    assert len(expected_small) > 3 and len(expected_large) > 10
    with overlapped.overlapping() as pool:
        assert pool is not None and pool.workers == 1
        finish = overlapped.start(small, 0.25)
        other = overlapped.start(small, None)  # submitted while the first is post-processed
        _same(finish(), expected_small)
        assert other().mpp == expected_small.mpp
        _same(overlapped.segment(large), expected_large)
        resampled = overlapped.start(small, 0.5)  # another scale: done at once, in this process
        assert resampled().inst_map.shape == small.shape[:2]
    assert overlapped._pool is None


def test_segment_paths_with_a_worker_writes_what_the_plain_run_writes(
    weights: Path, tiles: Path, tmp_path: Path
) -> None:
    reports = {}
    for workers in (0, 1):
        out = tmp_path / f"out{workers}"
        report = segment_paths([tiles], out, model="hovernet", weights=weights, device=CPU, postprocess_workers=workers)
        assert report.segmented == 3 and not report.failed
        reports[workers] = report
    assert reports[0].nuclei == reports[1].nuclei
    for stem in ("he0", "he1", "he2"):
        a = json.loads((tmp_path / "out0" / f"{stem}.json").read_text())
        b = json.loads((tmp_path / "out1" / f"{stem}.json").read_text())
        assert a == b
        assert (tmp_path / "out0" / f"{stem}.txt").read_text() == (tmp_path / "out1" / f"{stem}.txt").read_text()
    record = json.loads(Path(reports[1].record).read_text())
    assert record["details"]["postprocess_workers"] == 1 and record["details"]["compile"] == "auto"


def test_the_run_announces_its_patches_so_auto_can_decide_for_all_of_it(weights: Path, tiles: Path) -> None:
    segmenter = _segmenter(weights)
    segmenter.expect(96, 96)
    segmenter.expect(100, 100, input_mpp=0.5)  # at the model's 0.25 um/px: 200 x 200
    per = segmenter.predictor.patches_for
    assert segmenter.predictor._expected == per(96, 96) + per(200, 200)
    chunked = _segmenter(weights, chunk=128, margin=32)
    chunked.expect(300, 300)
    parts = plan_chunks(300, 300, 128, 32)
    assert len(parts) == 9
    assert chunked.predictor._expected == sum(per(p.ey1 - p.ey0, p.ex1 - p.ex0) for p in parts)
    assert per(96, 96) < AUTO_COMPILE_MIN_PATCHES


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--compile", "always"], "--compile always: unknown choice"),
        (["--postprocess-workers", "-2"], "--postprocess-workers -2: must be 0 or more"),
    ],
)
def test_bad_speed_options_are_one_line_and_write_nothing(
    run_cli, weights: Path, tiles: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli([*CLI, "segment", str(tiles), "-w", str(weights), "-o", str(out), *args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not out.exists() or not any(out.iterdir())


def test_the_cli_passes_the_speed_options(run_cli, weights: Path, tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*CLI, "segment", str(tiles), "-w", str(weights), "-o", str(out), "--compile", "OFF"]
    code, stdout, err = run_cli([*args, "--postprocess-workers", "0", "--json"])
    assert code == 0, err
    assert json.loads(stdout)["segmented"] == 3
    record = json.loads(Path(json.loads(stdout)["record"]).read_text())
    assert record["details"]["compile"] == "off" and record["details"]["postprocess_workers"] == 0
