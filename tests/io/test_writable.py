"""Output locations are judged before long work, in one line, and nothing is created by asking."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from histostain.errors import InputError
from histostain.io.writable import USER_ERRNOS, check_output_file, check_output_folder, os_error_message


def test_folders_that_exist_or_can_be_made_pass_and_nothing_is_created(tmp_path: Path) -> None:
    assert check_output_folder(tmp_path) == tmp_path
    deep = tmp_path / "a" / "b" / "c"
    assert check_output_folder(deep) == deep
    assert check_output_file(deep / "m.json") == deep / "m.json"
    assert list(tmp_path.iterdir()) == []  # asking creates nothing


def test_a_file_where_a_folder_is_needed_is_named(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("x")
    with pytest.raises(InputError, match=r"--out .*note.txt is a file, not a folder"):
        check_output_folder(note)
    with pytest.raises(InputError, match=r"note.txt is a file, not a folder"):
        check_output_folder(note / "sub" / "deeper", "--runs-dir")
    with pytest.raises(InputError, match=r"note.txt is a file, not a folder"):
        check_output_file(note / "m.json")


def test_a_folder_where_a_file_is_needed_suggests_a_file_name_with_the_suffix(tmp_path: Path) -> None:
    (tmp_path / "stats.npz").mkdir()
    with pytest.raises(InputError) as info:
        check_output_file(tmp_path / "stats.npz", "--save-stats")
    assert "is a folder; expected a file name" in info.value.message and info.value.hint.endswith("x.npz")


def test_read_only_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from histostain.io import writable

    monkeypatch.setattr(writable.os, "access", lambda path, mode: False)  # root ignores chmod; pretend
    with pytest.raises(InputError, match="the folder is not writable"):
        check_output_folder(tmp_path)
    with pytest.raises(InputError, match="is not writable"):
        check_output_folder(tmp_path / "new")
    with pytest.raises(InputError, match="is not writable"):
        check_output_file(tmp_path / "m.json")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENOTDIR, "a part of the path is a file, not a folder"),
        (errno.EISDIR, "it is a folder, not a file"),
    ],
)
def test_os_errors_become_one_line_naming_path_and_reason(code: int, reason: str) -> None:
    error = OSError(code, "raw text", "out/x.png")
    assert code in USER_ERRNOS
    assert os_error_message(error) == f"cannot write out/x.png: {reason}"
    assert os_error_message(error, action=None) == f"out/x.png: {reason}"


def test_errors_that_are_not_about_a_location_are_not_users_to_fix() -> None:
    assert errno.ENOENT not in USER_ERRNOS and errno.EINVAL not in USER_ERRNOS
