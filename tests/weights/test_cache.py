"""The weights cache: layout, records, checked installs, verification and the per-model lock."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from histostain.errors import WeightsError
from histostain.weights.cache import (
    CacheRecord,
    cache_size,
    cached_path,
    install_file,
    is_cached,
    model_dir,
    model_lock,
    read_record,
    remove_stale_parts,
    verify,
)
from histostain.weights.registry import ModelCard

PAYLOAD = b"histostain test weights\n" * 4000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
OTHER_DIGEST = hashlib.sha256(b"something else").hexdigest()


def make_card(**overrides: object) -> ModelCard:
    values: dict[str, object] = {
        "name": "hovernet_fast-test",
        "task": "segmentation",
        "arch": "hovernet",
        "filename": "w.pth",
        "urls": ["https://example.invalid/w.pth"],
        "sha256": DIGEST,
    }
    values.update(overrides)
    return ModelCard(**values)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "downloads" / "my weights.pth"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_layout_is_one_folder_per_model_under_home_weights(tmp_path: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    assert model_dir(card, home) == home / "weights" / "hovernet_fast-test"
    assert cached_path(card, home) == home / "weights" / "hovernet_fast-test" / "w.pth"
    assert not is_cached(card, home)
    assert read_record(card, home) is None
    assert cache_size(card, home) is None


def test_install_copies_the_file_and_writes_its_record(tmp_path: Path, source: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    before = datetime.now(UTC).replace(microsecond=0)
    record = install_file(card, home, source, source="import", origin=str(source))

    folder = home / "weights" / "hovernet_fast-test"
    assert (folder / "w.pth").read_bytes() == PAYLOAD
    assert source.read_bytes() == PAYLOAD  # a copy: the user's file stays
    on_disk = json.loads((folder / "record.json").read_text())
    assert on_disk == {
        "name": "hovernet_fast-test",
        "filename": "w.pth",
        "sha256": DIGEST,
        "size_bytes": len(PAYLOAD),
        "source": "import",
        "origin": str(source),
        "created": on_disk["created"],
        "checked_against": "sha256",
    }
    created = datetime.fromisoformat(on_disk["created"])
    assert created.utcoffset() == timedelta(0)
    assert before <= created <= datetime.now(UTC) + timedelta(seconds=1)
    assert record == read_record(card, home)
    assert record.to_dict() == on_disk
    assert is_cached(card, home)
    assert cache_size(card, home) == len(PAYLOAD)
    # nothing else is left in the model's folder but the lock file
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "record.json", "w.pth"]


def test_install_rejects_a_wrong_file_and_installs_nothing(tmp_path: Path, source: Path) -> None:
    card = make_card(sha256=OTHER_DIGEST)
    home = tmp_path / "home"
    with pytest.raises(WeightsError) as caught:
        install_file(card, home, source, source="import", origin=str(source))
    message = caught.value.one_line()
    assert OTHER_DIGEST in message and DIGEST in message
    assert "\n" not in message
    assert not is_cached(card, home)
    assert not cached_path(card, home).exists()
    assert [p.name for p in model_dir(card, home).iterdir()] == [".lock"]  # no temp copy left
    assert source.read_bytes() == PAYLOAD


def test_a_rejected_file_does_not_replace_a_good_cached_one(tmp_path: Path, source: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    good = install_file(card, home, source, source="import", origin=str(source))
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"not the weights")
    with pytest.raises(WeightsError):
        install_file(card, home, wrong, source="import", origin=str(wrong))
    assert cached_path(card, home).read_bytes() == PAYLOAD
    assert read_record(card, home) == good


def test_install_with_move_renames_a_temp_file_of_the_model_folder(tmp_path: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    folder = model_dir(card, home)
    folder.mkdir(parents=True)
    temp = folder / "w.pth.123.abcd.part"
    temp.write_bytes(PAYLOAD)
    record = install_file(card, home, temp, source="download", origin="https://example.invalid/w.pth", move=True)
    assert not temp.exists()
    assert cached_path(card, home).read_bytes() == PAYLOAD
    assert record.source == "download" and record.origin == "https://example.invalid/w.pth"


def test_move_refuses_a_file_outside_the_model_folder(tmp_path: Path, source: Path) -> None:
    with pytest.raises(ValueError, match="temporary file in"):
        install_file(make_card(), tmp_path / "home", source, source="download", origin="x", move=True)
    assert source.exists()


@pytest.mark.parametrize(
    ("card_digest", "expected_check"),
    [("full", "sha256"), ("prefix", "sha256_prefix"), (None, "recorded")],
)
def test_the_record_says_what_the_file_was_checked_against(
    tmp_path: Path, source: Path, card_digest: str | None, expected_check: str
) -> None:
    digests = {"full": {"sha256": DIGEST}, "prefix": {"sha256": None, "sha256_prefix": DIGEST[:10]}}
    card = make_card(**digests.get(card_digest, {"sha256": None}))
    record = install_file(card, tmp_path / "home", source, source="import", origin=str(source))
    assert record.checked_against == expected_check
    assert record.sha256 == DIGEST  # always the full digest, whatever the card knew


def test_a_wrong_published_prefix_rejects_the_file(tmp_path: Path, source: Path) -> None:
    card = make_card(sha256=None, sha256_prefix="0123456789")
    assert not DIGEST.startswith("0123456789")
    with pytest.raises(WeightsError, match=f"expected sha256 0123456789.*got {DIGEST}"):
        install_file(card, tmp_path / "home", source, source="import", origin=str(source))


def test_is_cached_needs_both_the_file_and_the_record(tmp_path: Path, source: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    folder = model_dir(card, home)
    folder.mkdir(parents=True)
    (folder / "w.pth.99.beef.part").write_bytes(PAYLOAD)
    assert not is_cached(card, home)  # a partial file never counts
    cached_path(card, home).write_bytes(PAYLOAD)
    assert not is_cached(card, home)  # no record yet
    install_file(card, home, source, source="import", origin=str(source))
    assert is_cached(card, home)
    cached_path(card, home).unlink()
    assert not is_cached(card, home)  # a record alone does not count either
    assert cache_size(card, home) is None


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"name": "hovernet_fast-test"}', None],
    ids=["not-json", "not-object", "missing-fields", "bad-digest"],
)
def test_a_damaged_record_is_a_weights_error(tmp_path: Path, source: Path, content: str | None) -> None:
    card = make_card()
    home = tmp_path / "home"
    install_file(card, home, source, source="import", origin=str(source))
    record_file = model_dir(card, home) / "record.json"
    if content is None:
        data = json.loads(record_file.read_text())
        data["sha256"] = "xyz"
        content = json.dumps(data)
    record_file.write_text(content)
    with pytest.raises(WeightsError, match="record .* is damaged") as caught:
        read_record(card, home)
    assert "--force" in caught.value.one_line()
    ok, message = verify(card, home)
    assert not ok and "damaged" in message


def test_verify_accepts_an_intact_file(tmp_path: Path, source: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    install_file(card, home, source, source="import", origin=str(source))
    ok, message = verify(card, home)
    assert ok
    assert message.startswith("hovernet_fast-test: ok") and "\n" not in message


@pytest.mark.parametrize("card_digest", ["full", "prefix", None])
def test_verify_detects_a_tampered_file(tmp_path: Path, source: Path, card_digest: str | None) -> None:
    digests = {"full": {"sha256": DIGEST}, "prefix": {"sha256": None, "sha256_prefix": DIGEST[:8]}}
    card = make_card(**digests.get(card_digest, {"sha256": None}))
    home = tmp_path / "home"
    install_file(card, home, source, source="import", origin=str(source))
    assert verify(card, home)[0]
    tampered = PAYLOAD[:-1] + b"X"
    cached_path(card, home).write_bytes(tampered)
    ok, message = verify(card, home)
    assert not ok
    assert hashlib.sha256(tampered).hexdigest() in message
    expected = {"full": DIGEST, "prefix": DIGEST, None: DIGEST}[card_digest]  # prefix cards: the record has it all
    assert expected in message
    assert "\n" not in message


def test_verify_of_a_model_that_is_not_cached(tmp_path: Path) -> None:
    ok, message = verify(make_card(), tmp_path / "home")
    assert not ok and message == "hovernet_fast-test: not in the cache"


def test_verify_of_a_file_without_record(tmp_path: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    model_dir(card, home).mkdir(parents=True)
    cached_path(card, home).write_bytes(PAYLOAD)
    ok, message = verify(card, home)
    assert not ok and "no record.json" in message


def test_remove_stale_parts_removes_only_partial_files(tmp_path: Path, source: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    install_file(card, home, source, source="import", origin=str(source))
    folder = model_dir(card, home)
    (folder / "w.pth.4242.0a0b.part").write_bytes(b"half")
    (folder / ".record.json.k2j4.tmp.json").write_text("{")  # an interrupted record write
    with model_lock(card, home):
        assert remove_stale_parts(card, home) == 2
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "record.json", "w.pth"]
    assert verify(card, home)[0]


def test_cache_record_round_trip() -> None:
    record = CacheRecord("a-b", "w.pth", DIGEST, 3, "download", "file:///x", "2024-01-01T00:00:00+00:00", "sha256")
    assert CacheRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_model_lock_excludes_other_threads_and_is_reentrant(tmp_path: Path) -> None:
    card = make_card()
    home = tmp_path / "home"
    acquired = threading.Event()
    order: list[str] = []

    def other() -> None:
        with model_lock(card, home):
            order.append("other")
            acquired.set()

    with model_lock(card, home):
        with model_lock(card, home):  # re-entrant in the same thread (install_file inside a download)
            order.append("nested")
        thread = threading.Thread(target=other)
        thread.start()
        assert not acquired.wait(0.3)  # blocked while this thread holds the lock
        order.append("holder")
    assert acquired.wait(5)
    thread.join(5)
    assert order == ["nested", "holder", "other"]
    assert (model_dir(card, home) / ".lock").is_file()


def test_model_lock_excludes_another_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    card = make_card()
    home = tmp_path / "home"
    started = tmp_path / "child-started"
    stamp = tmp_path / "child-got-lock"
    script = (
        "import sys, time; from pathlib import Path\n"
        "from histostain.weights.cache import model_lock\n"
        "from histostain.weights.registry import ModelCard\n"
        "card = ModelCard(name='hovernet_fast-test', task='segmentation', arch='hovernet', filename='w.pth')\n"
        "Path(sys.argv[2]).touch()\n"
        "with model_lock(card, Path(sys.argv[1])):\n"
        "    Path(sys.argv[3]).write_text(str(time.time()))\n"
    )
    with model_lock(card, home):
        child = subprocess.Popen([sys.executable, "-c", script, str(home), str(started), str(stamp)])
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists()
        time.sleep(0.3)  # the child goes from "started" to waiting on the lock in far less
        assert not stamp.exists()
        released = time.time()
    assert child.wait(30) == 0
    assert float(stamp.read_text()) >= released


def test_an_unwritable_cache_is_a_weights_error(tmp_path: Path, source: Path) -> None:
    home = tmp_path / "home"
    home.write_text("a file where the cache folder should be")
    with pytest.raises(WeightsError, match="cannot write to the weights cache"):
        install_file(make_card(), home, source, source="import", origin=str(source))
