"""Safe zip extraction: path traversal, absolute paths, symlinks, size limits and forged sizes are refused."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from histostain.errors import InputError
from histostain.io.archives import check_zip, extract_zip


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return path


def test_extracts_the_published_fold_layout(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "fold_1.zip",
        {"Fold 1/images/fold1/images.npy": b"x" * 100, "Fold 1/masks/fold1/masks.npy": b"y" * 50},
    )
    target = extract_zip(archive, tmp_path / "out")
    assert (target / "Fold 1" / "images" / "fold1" / "images.npy").read_bytes() == b"x" * 100
    assert (target / "Fold 1" / "masks" / "fold1" / "masks.npy").read_bytes() == b"y" * 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_1.zip", "out"]  # no partial folder left


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.txt", "escapes the target folder"),
        ("data/../../evil.txt", "escapes the target folder"),
        ("/etc/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("data\\..\\..\\evil.txt", "escapes the target folder"),
    ],
)
def test_members_escaping_the_target_are_refused_before_anything_is_written(
    tmp_path: Path, name: str, reason: str
) -> None:
    archive = make_zip(tmp_path / "bad.zip", {"data/ok.txt": b"fine", name: b"evil"})
    with pytest.raises(InputError, match=reason):
        extract_zip(archive, tmp_path / "out" / "inner")
    assert not (tmp_path / "out" / "inner").exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_symlink_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        check_zip(archive)


def test_total_size_limit(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "big.zip", {"a.bin": b"\0" * 10_000, "b.bin": b"\0" * 10_000})
    with pytest.raises(InputError, match="exceeds"):
        extract_zip(archive, tmp_path / "out", max_total_bytes=15_000)
    assert not (tmp_path / "out").exists()


def test_member_larger_than_declared_is_stopped(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "forged.zip", {"a.bin": b"\0" * 5000})
    raw = bytearray(archive.read_bytes())
    # forge the declared uncompressed size (4 bytes) in the central directory entry down to 10
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="larger than declared|is corrupt"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    fake = tmp_path / "fold_1.zip"
    fake.write_text("<html>download page</html>")
    with pytest.raises(InputError, match="fold_1.zip is not a readable zip"):
        check_zip(fake)
