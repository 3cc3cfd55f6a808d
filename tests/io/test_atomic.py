"""Atomic files and folders: an interrupted write never leaves a half-written output under the final name."""

from __future__ import annotations

from pathlib import Path

import pytest

from histostain.io.atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    remove_stale_partials,
    remove_stale_temp_files,
    temp_file_target,
)


def test_atomic_path_keeps_the_suffix_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out" / "tile.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["tile.png"]


def test_atomic_write_text(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a.txt", "é\n")
    assert path.read_text(encoding="utf-8") == "é\n"


def test_directory_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("x")
        assert not target.exists()
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "done.txt").write_text("x")
    assert (target / "done.txt").exists()


def test_directory_replace_rules(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError), atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (target / "old.txt").read_text() == "old"  # refused, nothing lost
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]  # the old copy is gone too


def test_remove_stale_partials(tmp_path: Path) -> None:
    (tmp_path / ".dataset.abc.partial").mkdir()
    (tmp_path / ".dataset.def.old").mkdir()
    (tmp_path / ".other.abc.partial").mkdir()
    assert remove_stale_partials(tmp_path / "dataset") == 2
    assert [p.name for p in tmp_path.iterdir()] == [".other.abc.partial"]


def test_outputs_get_normal_permissions_not_private_temp_ones(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "shared.txt", "x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "a").write_text("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("name", ["tile.png", "a.b.c.tif", "noext", "translate.json", "x.tmp.png", ".hidden.png"])
def test_temp_names_of_atomic_path_map_back_to_their_target(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    with atomic_path(target) as tmp:
        assert temp_file_target(tmp.name) == name
        tmp.write_bytes(b"x")
    assert temp_file_target(name) is None  # a finished output is not a temp file
    assert temp_file_target(f".{name}.tmp{Path(name).suffix}") is None  # no random part


def test_remove_stale_temp_files_touches_only_the_given_targets(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    leftovers = [".a.png.k2j4_q9a.tmp.png", ".a.json.zzzzzzzz.tmp.json", "sub/.c.png.abcdefgh.tmp.png"]
    kept = [
        ".b.png.k2j4_q9a.tmp.png",  # another process's output (not in this caller's targets)
        ".a.png.k2j4_q9a.tmp.tif",  # suffix does not match the target's: not atomic_path's name
        ".a.png.notes",
        "a.png",
    ]
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"x")
    targets = [tmp_path / "a.png", tmp_path / "a.json", tmp_path / "sub" / "c.png", tmp_path / "missing" / "d.png"]
    assert remove_stale_temp_files(targets) == 3
    remaining = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert remaining == sorted(kept)
