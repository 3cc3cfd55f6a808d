"""The prepared-dataset contract: fingerprints, idempotency, refusal with a diff, atomic build."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from histostain.datasets.prepared import (
    Manifest,
    build_prepared,
    check_existing,
    fingerprint_source,
    load_prepared,
    open_source,
    option_differences,
    parse_fractions,
    split_groups,
    write_manifest,
)
from histostain.errors import ConfigError, DatasetLayoutError, InputError


def make_source(root: Path) -> Path:
    (root / "HE" / "train").mkdir(parents=True)
    (root / "HE" / "train" / "00000_train_1+.png").write_bytes(b"a" * 10)
    (root / "IHC" / "train").mkdir(parents=True)
    (root / "IHC" / "train" / "00000_train_1+.png").write_bytes(b"b" * 12)
    return root


def prepare(out: Path, source: Path, options: dict, overwrite: bool = False) -> Manifest:
    info = fingerprint_source(source)
    existing = check_existing(out, "bci", info, options, overwrite)
    if existing is not None:
        return existing
    with build_prepared(out, overwrite) as tmp:
        (tmp / "train").mkdir()
        (tmp / "train" / "x.txt").write_text(json.dumps(options))
        manifest = Manifest(dataset="bci", source=info, options=options, splits={"train": 1})
        write_manifest(tmp, manifest)
    return manifest


def test_fingerprint_follows_names_and_sizes(tmp_path: Path) -> None:
    source = make_source(tmp_path / "BCI_dataset")
    first = fingerprint_source(source)
    assert (first.kind, first.file_count, first.total_bytes) == ("folder", 2, 22)
    assert fingerprint_source(source).fingerprint == first.fingerprint
    (source / "HE" / "train" / "00000_train_1+.png").write_bytes(b"a" * 11)
    assert fingerprint_source(source).fingerprint != first.fingerprint


def test_zip_fingerprint_uses_member_crcs(tmp_path: Path) -> None:
    def zip_with(data: bytes) -> str:
        archive = tmp_path / "BCI.zip"
        with zipfile.ZipFile(archive, "w") as handle:
            handle.writestr("BCI_dataset/HE/train/a.png", data)
        return fingerprint_source(archive).fingerprint

    assert zip_with(b"abc") != zip_with(b"abd")  # same size, different content
    with pytest.raises(InputError, match="not found"):
        fingerprint_source(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="neither a folder nor a zip"):
        fingerprint_source(tmp_path / "notes.txt")


def test_same_inputs_are_a_no_op_and_different_options_are_refused_with_a_diff(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    out = tmp_path / "prepared"
    first = prepare(out, source, {"size": 256, "seed": 0})
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = prepare(out, source, {"size": 256, "seed": 0})
    assert again.created == first.created and first.created.endswith("+00:00")
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(ConfigError) as info:
        prepare(out, source, {"size": 0, "seed": 0})
    assert "size 256 -> 0" in info.value.message and "--overwrite" in (info.value.hint or "")
    replaced = prepare(out, source, {"size": 0, "seed": 0}, overwrite=True)
    assert load_prepared(out, "bci").options == {"size": 0, "seed": 0} == replaced.options
    assert json.loads((out / "train" / "x.txt").read_text()) == {"size": 0, "seed": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "src"]


def test_killed_build_leaves_no_prepared_folder_and_is_cleaned_on_rerun(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    out = tmp_path / "prepared"
    with pytest.raises(KeyboardInterrupt), build_prepared(out, overwrite=False) as tmp:
        (tmp / "train").mkdir()
        raise KeyboardInterrupt
    assert not out.exists()
    # simulate a hard kill that left a partial folder behind
    (tmp_path / ".prepared.zzz.partial").mkdir()
    prepare(out, source, {"size": 256})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "src"]


def test_foreign_folders_are_not_clobbered(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    out = tmp_path / "results"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a prepared dataset"):
        prepare(out, source, {})
    assert (out / "precious.txt").read_text() == "keep me"


def test_load_prepared_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="not a prepared dataset") as info:
        load_prepared(tmp_path)
    assert "histostain prepare" in (info.value.hint or "")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="not a valid histostain manifest"):
        load_prepared(tmp_path)


def test_option_differences_normalises_json_types() -> None:
    assert option_differences({"fractions": [0.6, 0.2, 0.2]}, {"fractions": (0.6, 0.2, 0.2)}) == []
    assert option_differences({"a": 1}, {"b": 2}) == ["a 1 -> (unset)", "b (unset) -> 2"]


def test_parse_fractions() -> None:
    assert parse_fractions("0.6,0.2,0.2") == {"train": 0.6, "val": 0.2, "test": 0.2}
    for bad in ("0.5,0.5", "0.6,0.3,0.2", "a,b,c", "1.2,-0.1,-0.1"):
        with pytest.raises(ConfigError, match="--fractions"):
            parse_fractions(bad)


def test_split_groups_keeps_groups_whole_and_counts_exact() -> None:
    groups = [f"img{i:02d}" for i in range(10) for _ in range(4)]  # 10 source images, 4 patches each
    assignment = split_groups(groups, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert set(assignment) == {f"img{i:02d}" for i in range(10)}
    counts = {name: sum(1 for s in assignment.values() if s == name) for name in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 2, "test": 2}
    assert split_groups(reversed(groups), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0) == assignment
    assert split_groups(groups, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1) != assignment
    # largest remainder: 7 groups at 0.5/0.25/0.25 -> exact 3.5/1.75/1.75 -> 3/2/2
    seven = split_groups([str(i) for i in range(7)], {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    assert sorted(seven.values()).count("train") == 3 and sorted(seven.values()).count("val") == 2


def test_open_source_extracts_a_zip_and_cleans_up(tmp_path: Path) -> None:
    archive = tmp_path / "BCI.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("BCI_dataset/HE/train/00000_train_1+.png", b"png")
    scratch = tmp_path / "scratch"
    with open_source(archive, scratch) as folder:
        assert (folder / "BCI_dataset" / "HE" / "train" / "00000_train_1+.png").read_bytes() == b"png"
    assert list(scratch.iterdir()) == []
    plain = make_source(tmp_path / "plain")
    with open_source(plain, scratch) as folder:
        assert folder == plain


def test_a_version_1_manifest_still_reads_with_its_provenance_in_the_one_record(tmp_path: Path) -> None:
    legacy = {
        "format": "histostain-prepared",
        "format_version": 1,
        "dataset": "bci",
        "source": {"path": "/data/BCI", "kind": "folder", "file_count": 2, "total_bytes": 10, "fingerprint": "ab"},
        "options": {"size": 256},
        "splits": {"train": 1},
        "histostain_version": "0.1.0",
        "created": "2026-10-01T08:00:00+00:00",
        "command": ["histostain", "prepare", "bci", "/data/BCI", "--out", "prepared"],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(legacy))
    manifest = load_prepared(tmp_path)
    assert manifest.provenance == {
        "command": ["histostain", "prepare", "bci", "/data/BCI", "--out", "prepared"],
        "histostain_version": "0.1.0",
        "created": "2026-10-01T08:00:00+00:00",
        "options": {},
    }
    assert manifest.created == "2026-10-01T08:00:00+00:00" and manifest.options == {"size": 256}
