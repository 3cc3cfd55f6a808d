"""The one rule ``segment``, ``translate`` and ``pipeline`` share for which inputs are whole slides
(``io.slide_inputs``): files, folders, globs, sub-folder keys, pyramidal TIFFs moved out of the batch plan,
clashing outputs and ``--out`` inside an input folder refused, slides shared out between shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histostain.errors import InputError
from histostain.io.inputs import outputs_with
from histostain.io.slide_inputs import (
    SlideBatch,
    SlideInput,
    check_slides,
    move_slides,
    prepare_inputs,
    slide_key,
    split_inputs,
)
from histostain.segmentation.slide_segment import slide_outputs
from tests.io.slides_fixtures import write_svs

PNG = outputs_with(".png")


def _touch(*paths: Path) -> None:
    """Files named like slides or images; nothing here decodes them (a slide extension decides)."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")


def _aperio_tif(path: Path) -> Path:
    """A small Aperio-style slide saved as ``.tif``: a slide by its description, not by its extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    return write_svs(path, pixels, mpp=0.5)


def _outputs(slide: SlideInput) -> tuple[Path, ...]:
    return (Path(f"{slide.key}.out"),)


def _prepare(inputs: list[Path | str], out: Path, **options: int) -> SlideBatch:
    return prepare_inputs(
        [str(i) for i in inputs], out, command="segment", image_outputs=lambda: PNG, slide_outputs=_outputs, **options
    )


def _keys(slides) -> list[str]:
    return [s.key for s in slides]


def test_slide_keys() -> None:
    assert slide_key("x.svs") == "x"
    assert slide_key("a/b.svs") == "a/b"
    assert slide_key("x.ome.tif") == "x"  # an OME-TIFF keeps its name: translate's output segments as x.*
    assert slide_key("a.b.svs") == "a.b"  # the stem, as for images
    assert slide_key(".ome.tif") == ".ome"


def test_a_file_slide_and_a_folder_of_images(tmp_path: Path) -> None:
    slide, images = tmp_path / "mosaic.svs", tmp_path / "in"
    _touch(slide, images / "a.png")
    found, slides, specs = split_inputs([slide, images])
    assert found == [str(images)]
    assert slides == [SlideInput(slide, "mosaic")]
    assert [s.kind for s in specs] == ["file"]


def test_a_folder_of_slides_only_is_not_an_image_input(tmp_path: Path) -> None:
    folder = tmp_path / "only"
    _touch(folder / "x.svs", folder / "y.ndpi", folder / ".hidden.svs", folder / "notes.txt")
    images, slides, specs = split_inputs([folder])
    assert images == []
    assert _keys(slides) == ["x", "y"]
    (spec,) = specs
    assert spec.kind == "folder" and spec.guard == folder


def test_a_folder_of_slides_and_images_is_both(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    _touch(folder / "x.svs", folder / "a.png")
    images, slides, _ = split_inputs([folder])
    assert images == [str(folder)] and _keys(slides) == ["x"]
    batch = _prepare([folder], tmp_path / "out")
    assert [item.key.as_posix() for item in batch.plan.items] == ["a"]
    assert _keys(batch.slides) == ["x"] and batch.any_slides and batch.runs_images


def test_a_pyramidal_tif_in_a_folder_is_moved_out_of_the_plan(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    big = _aperio_tif(folder / "big.tif")
    _touch(folder / "a.png")
    images, slides, _ = split_inputs([folder])
    assert images == [str(folder)] and slides == []  # .tif is no slide extension: found in the plan
    batch = _prepare([folder], tmp_path / "out")
    assert [item.key.as_posix() for item in batch.plan.items] == ["a"]  # never decoded whole as an image
    assert batch.plan.total == 1
    assert batch.slides == (SlideInput(big, "big"),)
    # move_slides alone, on a plan of the tif only: nothing left for the batch engine
    alone = _prepare([big.parent / "*.tif"], tmp_path / "out2")
    assert alone.plan is not None and alone.plan.items == () and not alone.runs_images
    assert alone.slides == (SlideInput(big, "big"),)
    plan, moved = move_slides(alone.plan)
    assert (plan, moved) == (alone.plan, [])


def test_a_glob_of_slides(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    _touch(folder / "x.svs", folder / "y.svs", folder / "a.png")
    images, slides, specs = split_inputs([str(folder / "*.svs")])
    assert images == [] and _keys(slides) == ["x", "y"] and [s.kind for s in specs] == ["file"]
    images, slides, _ = split_inputs([str(folder / "*")])  # slides and images: the images go to the engine
    assert images == [str(folder / "*")] and _keys(slides) == ["x", "y"]
    batch = _prepare([folder / "*"], tmp_path / "out")
    assert [item.key.as_posix() for item in batch.plan.items] == ["a"] and _keys(batch.slides) == ["x", "y"]


def test_recursive_folders_keep_sub_folders_in_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _touch(folder / "top.svs", folder / "a" / "b" / "deep.svs", folder / "a" / "x.ome.tif")
    _, slides, _ = split_inputs([folder], recursive=True)
    assert _keys(slides) == ["a/b/deep", "top"]
    _, slides, _ = split_inputs([folder])
    assert _keys(slides) == ["top"]
    batch = prepare_inputs(
        [folder], tmp_path / "out", command="segment", image_outputs=lambda: PNG, recursive=True,
        slide_outputs=lambda slide: slide_outputs(slide.key),
    )  # fmt: skip
    assert _keys(batch.slides) == ["a/b/deep", "top"]
    assert [item.key.as_posix() for item in batch.plan.items] == ["a/x.ome"]  # a .tif that is no slide: an image


def test_the_same_slide_twice_counts_once(tmp_path: Path) -> None:
    slide = tmp_path / "in" / "x.svs"
    _touch(slide)
    batch = _prepare([slide, slide.parent, tmp_path / "in" / "*.svs"], tmp_path / "out")
    assert batch.slides == (SlideInput(slide, "x"),)


def test_two_slides_writing_one_output_are_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "x.svs", tmp_path / "b" / "x.svs")
    with pytest.raises(InputError, match=r"x\.svs and .*x\.svs would both be written to .*x\.out"):
        _prepare([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    # each command's own names decide: a work folder counts as an output
    slides = [SlideInput(tmp_path / "a" / "x.svs", "x"), SlideInput(tmp_path / "b" / "x.svs", "x.partial")]
    with pytest.raises(InputError, match="would both be written"):
        check_slides(slides, tmp_path / "out", [], lambda s: (Path(s.key), Path(f"{s.key}.partial")))
    check_slides(slides, tmp_path / "out", [], _outputs)  # x.out and x.partial.out: no clash


def test_a_slide_writing_an_image_output_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _touch(folder / "x.svs", folder / "x.png")
    segment_like = outputs_with(".geojson", ".summary.jsonl")
    with pytest.raises(InputError, match=r"x\.png and .*x\.svs would both be written to .*x\.summary\.jsonl"):
        prepare_inputs(
            [folder], tmp_path / "out", command="segment", image_outputs=lambda: segment_like,
            slide_outputs=lambda slide: slide_outputs(slide.key),
        )  # fmt: skip


@pytest.mark.parametrize("inside", [".", "out", "sub/out"])
def test_out_inside_a_folder_of_slides_is_refused(tmp_path: Path, inside: str) -> None:
    folder = tmp_path / "in"
    _touch(folder / "x.svs", folder / "sub" / "y.svs")
    with pytest.raises(InputError, match=r"--out .* (is|lies inside) the input folder"):
        _prepare([folder], folder / inside)


def test_out_beside_a_slide_file_is_allowed(tmp_path: Path) -> None:
    slide = tmp_path / "x.svs"
    _touch(slide)
    assert _prepare([slide], tmp_path).slides == (SlideInput(slide, "x"),)


def test_slides_are_shared_out_between_shards(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _aperio_tif(folder / "c.tif")
    _touch(folder / "a.svs", folder / "b.svs", folder / "d.png", folder / "e.png", folder / "f.png")
    parts = [_prepare([folder], tmp_path / "out", num_parts=2, part_id=i) for i in range(2)]
    assert [_keys(p.slides) for p in parts] == [["a", "c"], ["b"]]  # the moved tif shared like the other slides
    assert [[i.key.as_posix() for i in p.plan.items] for p in parts] == [["d", "f"], ["e"]]
    assert all(p.any_slides and p.plan.total == 3 for p in parts)


def test_no_slides_leaves_everything_to_the_batch_engine(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _touch(folder / "a.png")
    batch = _prepare([folder], tmp_path / "out")
    assert batch.slides == () and not batch.any_slides and batch.runs_images
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):  # nothing at all: the batch engine says so
        _prepare([tmp_path / "empty"], tmp_path / "out")
