"""Checkpoints: atomic writes and weights-only loading that refuses anything but plain data."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from histostain.errors import WeightsError
from histostain.io.atomic import atomic_write
from histostain.runtime.checkpoint import (
    load_checkpoint,
    load_histostain_checkpoint,
    make_checkpoint,
    save_checkpoint,
)


class _CreatesFile:
    """Unpickling this object runs code that creates a marker file (a stand-in for a malicious checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_round_trip_keeps_tensors_and_plain_values(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    payload = make_checkpoint("linear", model.state_dict(), {"lr": 2e-4, "betas": [0.5, 0.999]}, epoch=3, step=40)
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", payload)
    loaded = load_histostain_checkpoint(path, arch="linear")
    assert loaded["format"] == "histostain" and loaded["version"] == 1
    assert loaded["epoch"] == 3 and loaded["step"] == 40 and loaded["config"]["betas"] == [0.5, 0.999]
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][key], tensor)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp files left


def test_wrong_architecture_and_foreign_dicts_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.pt", make_checkpoint("cyclegan", {}, {}))
    with pytest.raises(WeightsError, match="holds a 'cyclegan' model, expected 'hovernet'"):
        load_histostain_checkpoint(path, arch="hovernet")
    foreign = tmp_path / "foreign.pth"
    torch.save({"desc": {"w": torch.zeros(1)}}, foreign)
    assert "desc" in load_checkpoint(foreign)  # a plain foreign checkpoint loads ...
    with pytest.raises(WeightsError, match="not a histostain checkpoint"):
        load_histostain_checkpoint(foreign)  # ... but is not ours


def test_missing_empty_truncated_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        load_checkpoint(empty)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(10_000, dtype=torch.float32)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated.pt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "notes.pt"
    garbage.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="notes.pt is not a PyTorch weights file"):
        load_checkpoint(garbage)
    pickled_garbage = tmp_path / "odd.pt"
    pickled_garbage.write_bytes(b"\x80\x02{garbage")  # looks like a pickle, is not one: not called "code"
    with pytest.raises(WeightsError) as info:
        load_checkpoint(pickled_garbage)
    assert "not a readable checkpoint" in info.value.message


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path, writer: str) -> None:
    # First prove the payload is live: unpickling it unsafely does create its marker.
    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_CreatesFile(proof)))
    assert proof.read_text() == "pwned"

    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "hook": _CreatesFile(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError) as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert "evil.pt" in info.value.message
    if writer == "torch.save":
        assert "pickled code" in info.value.message


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"step": 1})

    def boom(handle) -> None:
        handle.write(b"partial")
        raise KeyboardInterrupt  # like Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, boom)
    assert load_checkpoint(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
