"""Atomic files and folders: an interrupted write never leaves a half-written output under the final name."""

from __future__ import annotations

from pathlib import Path

import pytest

from histostain.io.atomic import atomic_directory, atomic_path, atomic_write_text, remove_stale_partials


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
