"""Input collection (files, folders, globs; order; duplicate outputs) and the output-folder refusals."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from histostain.errors import InputError
from histostain.io.batch import plan_batch
from histostain.io.inputs import check_output_folder, collect_items, outputs_with

PNG = outputs_with(".png")


def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")


def _keys(items: list) -> list[str]:
    return [item.key.as_posix() for item in items]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    _touch(root / "b.png", root / "a.TIF", root / "Z.jpg", root / "a-b" / "w.png", root / "a" / "b" / "x.png")
    _touch(root / ".hidden.png", root / "notes.txt", root / ".git" / "y.png")
    return root


def test_folder_keys_order_and_subfolders(tree: Path, tmp_path: Path) -> None:
    items, specs = collect_items([tree], tmp_path / "out", PNG)
    assert _keys(items) == ["Z", "a", "b"]  # sorted by key, uppercase first, hidden and non-images skipped
    assert [s.kind for s in specs] == ["folder"]
    items, _ = collect_items([tree], tmp_path / "out", PNG, recursive=True)
    assert _keys(items) == ["Z", "a", "a-b/w", "a/b/x", "b"]  # plain character order: "-" before "/"
    assert items[3].targets == (tmp_path / "out" / "a" / "b" / "x.png",)
    assert items[3].source == tree / "a" / "b" / "x.png"


def test_order_does_not_depend_on_the_argument_order(tree: Path, tmp_path: Path) -> None:
    first, _ = collect_items([tree / "b.png", str(tree / "a" / "*" / "*.png"), tree / "Z.jpg"], tmp_path / "o", PNG)
    second, _ = collect_items([tree / "Z.jpg", tree / "b.png", str(tree / "a" / "*" / "*.png")], tmp_path / "o", PNG)
    assert first == second and _keys(first) == ["Z", "b", "x"]  # glob matches keep only their stem


def test_several_outputs_per_input_and_dotted_names(tmp_path: Path) -> None:
    _touch(tmp_path / "in" / "slide.v2.png")
    items, _ = collect_items([tmp_path / "in"], tmp_path / "o", outputs_with(".json", "_overlay.png"))
    assert items[0].key == PurePosixPath("slide.v2")
    assert items[0].targets == (tmp_path / "o" / "slide.v2.json", tmp_path / "o" / "slide.v2_overlay.png")


def test_two_inputs_for_one_output_are_refused_naming_both(tmp_path: Path) -> None:
    _touch(tmp_path / "in" / "a.png", tmp_path / "in" / "a.tif")
    with pytest.raises(InputError, match=r"a\.png and .*a\.tif would both be written to .*a\.png"):
        collect_items([tmp_path / "in"], tmp_path / "o", PNG)
    _touch(tmp_path / "other" / "c.png", tmp_path / "third" / "c.png")
    with pytest.raises(InputError, match="would both be written"):
        collect_items([tmp_path / "other", tmp_path / "third"], tmp_path / "o", PNG)


def test_the_same_file_given_twice_is_processed_once(tmp_path: Path) -> None:
    _touch(tmp_path / "in" / "a.png", tmp_path / "in" / "b.png")
    items, _ = collect_items(
        [tmp_path / "in", tmp_path / "in" / "a.png", str(tmp_path / "in" / "*.png")], tmp_path / "o", PNG
    )
    assert _keys(items) == ["a", "b"]


def test_missing_inputs_and_empty_globs_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        collect_items([tmp_path / "nope"], tmp_path / "o", PNG)
    with pytest.raises(InputError, match="no images match"):
        collect_items([str(tmp_path / "*.png")], tmp_path / "o", PNG)
    with pytest.raises(InputError, match="no inputs"):
        collect_items([], tmp_path / "o", PNG)


# ---------------------------------------------------------------------------------------- output folder


def _refused(inputs: list, out: Path, recursive: bool = False) -> str:
    """Plan a run; it must be refused with nothing created. Returns the message."""
    existed = out.exists()
    with pytest.raises(InputError) as info:
        plan_batch(inputs, out, PNG, command="fake", recursive=recursive)
    assert out.exists() == existed
    return info.value.message


def _allowed(inputs: list, out: Path, recursive: bool = False) -> None:
    plan_batch(inputs, out, PNG, command="fake", recursive=recursive)


def test_output_folder_may_not_be_or_lie_inside_an_input_folder(tree: Path, tmp_path: Path) -> None:
    assert _refused([tree], tree) == f"--out {tree} is the input folder {tree}"
    assert "lies inside the input folder" in _refused([tree], tree / "out")  # also without --recursive
    assert "lies inside" in _refused([tree], tree / "a" / "b" / "deeper", recursive=True)
    assert "is the input folder" in _refused([tree / "b.png", tree], tree / "a" / "..")
    _allowed([tree], tmp_path / "out")
    _allowed([tree], tree / ".." / "elsewhere")  # ".." resolves out of the input folder
    _allowed([tree / "a"], tree / "a-b", recursive=True)  # a sibling whose name starts alike is not inside


def test_links_cannot_smuggle_the_output_folder_into_an_input_folder(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tree, target_is_directory=True)
    assert "is the input folder" in _refused([tree], tmp_path / "link")
    assert "lies inside" in _refused([tree], tmp_path / "link" / "out")
    assert "lies inside" in _refused([tmp_path / "link"], tree / "out")


def test_file_inputs_may_not_be_overwritten_but_may_get_siblings(tree: Path, tmp_path: Path) -> None:
    message = _refused([tree / "b.png"], tree)
    assert message == f"the output {tree / 'b.png'} would replace the input {tree / 'b.png'}"
    _allowed([tree / "a.TIF"], tree)  # writes in/a.png beside in/a.TIF: no input is replaced
    # an existing output that is the input under another name (hard link; the same on case-insensitive disks)
    (tmp_path / "out").mkdir()
    os.link(tree / "Z.jpg", tmp_path / "out" / "Z.png")
    assert "would replace the input" in _refused([tree / "Z.jpg"], tmp_path / "out")


def test_glob_rules(tree: Path) -> None:
    # wildcards only in the file name: the pattern reads in/ itself, never in/out/
    assert "searched by the pattern" in _refused([str(tree / "*.png")], tree)
    _allowed([str(tree / "*.png")], tree / "out")
    # wildcards in a folder part or ** reach everything under the literal prefix
    assert "lies inside" in _refused([str(tree / "a" / "*" / "*.png")], tree / "a" / "out")
    assert "lies inside" in _refused([str(tree / "**" / "*.png")], tree / "out")


def test_an_output_named_like_the_run_record_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "in" / "fake.png", tmp_path / "in" / "other.png")
    with pytest.raises(InputError, match="the name of the run record"):
        plan_batch([tmp_path / "in"], tmp_path / "o", outputs_with(".json"), command="fake")


def test_check_output_folder_directly(tree: Path, tmp_path: Path) -> None:
    items, specs = collect_items([tree], tree / "o", PNG)
    with pytest.raises(InputError):
        check_output_folder(tree / "o", specs, items)
    items, specs = collect_items([tree], tmp_path / "o", PNG)
    check_output_folder(tmp_path / "o", specs, items)
