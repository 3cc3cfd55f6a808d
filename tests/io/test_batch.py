"""The batch engine with fake steps: record first, refusals, resume, several outputs, streaming, errors, temp files."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from histostain.errors import ConfigError, InputError
from histostain.io.atomic import atomic_write_text
from histostain.io.batch import BatchItem, BatchReport, BatchStep, ImageStep, Sink, outputs_with, plan_batch, run_batch
from histostain.io.images import read_image, write_image
from histostain.provenance import Provenance

COMMAND = "fake"
TWO_FILES = outputs_with(".png", ".json")


class TwoFiles(ImageStep[np.ndarray, np.ndarray]):
    """Writes the image and a JSON of its mean for every input (like segment: several files per input)."""

    def __init__(self, model: str = "a", tile: int = 512, **raise_on: BaseException) -> None:
        self.model, self.tile, self.raise_on = model, tile, raise_on
        self.seen: list[str] = []
        self.before_run: Callable[[BatchItem], None] | None = None

    def settings(self) -> dict[str, Any]:
        return {"model": self.model, "tile": self.tile}

    def describe(self) -> dict[str, Any]:
        return {"details": {"batch_size": 1}}

    def run(self, item: BatchItem, image: np.ndarray) -> np.ndarray:
        self.seen.append(item.key.as_posix())
        if self.before_run is not None:
            self.before_run(item)
        error = self.raise_on.get(item.key.as_posix())
        if error is not None:
            raise error
        return image

    def write(self, item: BatchItem, result: np.ndarray) -> None:
        png, summary = item.targets
        write_image(png, result)
        atomic_write_text(summary, json.dumps({"mean": float(result.mean())}))


def _inputs(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(count)
    for i in range(count):
        write_image(folder / f"k{i}.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    return folder


def _run(inputs: Path, out: Path, step: BatchStep[Any, Any], **options: Any) -> BatchReport:
    shard = {k: options.pop(k) for k in ("num_parts", "part_id") if k in options}
    plan = plan_batch([inputs], out, options.pop("outputs", TWO_FILES), command=COMMAND, **shard)
    return run_batch(plan, step, **options)


def _record(out: Path, name: str = "fake.json") -> dict[str, Any]:
    return json.loads((out / name).read_text())


def _outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("fake"))


def test_record_is_written_before_the_first_output(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 3), tmp_path / "out"
    step = TwoFiles(k0=RuntimeError("model crashed"))
    seen_record: list[dict[str, Any]] = []
    step.before_run = lambda item: seen_record.append(_record(out))
    provenance = Provenance.capture({"tile": 512}, command=["histostain", "fake", "in"])
    with pytest.raises(RuntimeError, match="model crashed"):
        _run(inputs, out, step, provenance=provenance)
    assert seen_record[0]["status"] == "running" and seen_record[0]["result"] is None
    record = _record(out)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: model crashed"
    assert record["settings"] == {"model": "a", "tile": 512} and record["details"] == {"batch_size": 1}
    assert record["provenance"]["command"] == ["histostain", "fake", "in"]
    assert record["inputs"] == {"total": 3, "this_part": 3}
    assert _outputs(out) == []


def test_an_input_is_done_only_when_all_its_outputs_exist(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 3), tmp_path / "out"
    first = _run(inputs, out, TwoFiles())
    assert (first.done, first.skipped) == (3, 0)
    assert _outputs(out) == ["k0.json", "k0.png", "k1.json", "k1.png", "k2.json", "k2.png"]
    (out / "k1.json").unlink()
    step = TwoFiles()
    again = _run(inputs, out, step)
    assert step.seen == ["k1"] and (again.done, again.skipped) == (1, 2)
    assert (out / "k1.json").is_file()
    record = _record(out)
    assert record["status"] == "finished" and (record["result"]["done"], record["result"]["skipped"]) == (1, 2)
    assert np.array_equal(read_image(out / "k2.png"), read_image(inputs / "k2.png"))


def test_rerun_with_other_settings_is_refused_with_the_differences(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 2), tmp_path / "out"
    _run(inputs, out, TwoFiles("a", 512))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    step = TwoFiles("b", 256)
    with pytest.raises(ConfigError) as info:
        _run(inputs, out, step)
    assert info.value.one_line() == (
        f"{out}/ holds outputs of an earlier run with other settings (fake.json): model a -> b; tile 512 -> 256 "
        "(hint: --overwrite replaces them, or choose another --out)"
    )
    assert step.seen == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_digests_are_shortened_in_the_refusal(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 1), tmp_path / "out"
    _run(inputs, out, TwoFiles("1a2b3c4d" * 8))
    with pytest.raises(ConfigError, match="model 1a2b3c4d… -> 9f8e7d6c…$"):
        _run(inputs, out, TwoFiles("9f8e7d6c" * 8))


def test_killed_run_protects_its_outputs_and_the_same_settings_resume(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 3), tmp_path / "out"
    with pytest.raises(RuntimeError):
        _run(inputs, out, TwoFiles("a", k2=RuntimeError("killed")))
    assert _outputs(out) == ["k0.json", "k0.png", "k1.json", "k1.png"]  # finished outputs are kept
    with pytest.raises(ConfigError, match="model a -> b"):
        _run(inputs, out, TwoFiles("b"))
    step = TwoFiles("a")
    report = _run(inputs, out, step)
    assert step.seen == ["k2"] and (report.done, report.skipped) == (1, 2)
    assert _record(out)["status"] == "finished"


def test_records_of_every_shard_are_compared(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 4), tmp_path / "out"
    _run(inputs, out, TwoFiles("a"), num_parts=2, part_id=1)
    assert _record(out, "fake.part-1-of-2.json")["shard"] == {"part_id": 1, "num_parts": 2, "source": "flags"}
    with pytest.raises(ConfigError, match=r"\(fake\.part-1-of-2\.json\): model a -> b"):
        _run(inputs, out, TwoFiles("b"), num_parts=2, part_id=0)
    with pytest.raises(ConfigError, match="model a -> b"):
        _run(inputs, out, TwoFiles("b"))  # another layout of shards is compared too
    report = _run(inputs, out, TwoFiles("a"), num_parts=2, part_id=0)
    assert report.done == 2 and _outputs(out) == sorted(f"k{i}.{ext}" for i in range(4) for ext in ("json", "png"))


def test_an_interrupted_overwrite_keeps_protecting_the_folder(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 3), tmp_path / "out"
    _run(inputs, out, TwoFiles("a"))
    with pytest.raises(RuntimeError):
        _run(inputs, out, TwoFiles("b", k1=RuntimeError("killed")), overwrite=True)
    record = _record(out)  # this run's record replaced a's, but remembers that a's outputs may remain
    assert record["settings"]["model"] == "b" and record["replaces"] == [
        {"record": "fake.json", "settings": {"model": "a", "tile": 512}}
    ]
    with pytest.raises(
        ConfigError, match=r"\(fake\.json; the --overwrite run recorded in fake\.json did not finish\): model a -> b$"
    ):
        _run(inputs, out, TwoFiles("b"))  # k2 still holds a's output: resuming would mix
    with pytest.raises(ConfigError, match="model b -> c"):
        _run(inputs, out, TwoFiles("c"))
    assert _run(inputs, out, TwoFiles("b"), overwrite=True).done == 3
    step = TwoFiles("b")
    report = _run(inputs, out, step)  # every output is b's now: resuming is fine
    assert step.seen == [] and report.skipped == 3


def test_a_sharded_overwrite_retires_the_old_record_when_every_part_finished(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 4), tmp_path / "out"
    _run(inputs, out, TwoFiles("a"))
    _run(inputs, out, TwoFiles("b"), overwrite=True, num_parts=2, part_id=0)
    assert (out / "fake.json").is_file()  # part 1 still holds a's outputs
    with pytest.raises(ConfigError, match=r"\(fake\.json\): model a -> b"):
        _run(inputs, out, TwoFiles("b"), num_parts=2, part_id=0)
    _run(inputs, out, TwoFiles("b"), overwrite=True, num_parts=2, part_id=1)
    assert not (out / "fake.json").exists()
    assert sorted(p.name for p in out.glob("fake*")) == ["fake.part-0-of-2.json", "fake.part-1-of-2.json"]
    assert _run(inputs, out, TwoFiles("b"), num_parts=2, part_id=0).skipped == 2


def test_input_errors_skip_one_input_and_the_rest_is_written(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 4), tmp_path / "out"
    (inputs / "k1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    class BadWrite(TwoFiles):
        def write(self, item: BatchItem, result: np.ndarray) -> None:
            if item.key.name == "k3":
                raise InputError("cannot write k3")
            super().write(item, result)

    report = _run(inputs, out, BadWrite(k2=InputError("k2 has no tissue")))
    assert report.done == 1 and [Path(p).name for p, _ in report.failed] == ["k1.png", "k2.png", "k3.png"]
    assert "file is truncated" in report.failed[0][1] and report.failed[1][1] == "k2 has no tissue"
    assert _outputs(out) == ["k0.json", "k0.png"]
    record = _record(out)
    assert record["status"] == "finished" and len(record["result"]["failed"]) == 3


def test_ctrl_c_is_recorded_as_interrupted(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 2), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _run(inputs, out, TwoFiles(k1=KeyboardInterrupt()))
    assert _record(out)["status"] == "interrupted" and _record(out)["result"]["done"] == 1


def test_leftover_temp_files_of_this_shard_go_and_another_shards_stay(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 2), tmp_path / "out"  # part 0: k0, part 1: k1
    out.mkdir()
    mine = [".k0.png.aaaaaaaa.tmp.png", ".k0.json.b_2b4b6b.tmp.json", ".fake.part-0-of-2.json.dddddddd.tmp.json"]
    theirs = [".k1.png.cccccccc.tmp.png", ".fake.part-1-of-2.json.eeeeeeee.tmp.json"]  # a live shard's writes
    for name in mine + theirs:
        (out / name).write_bytes(b"partial")
    report = _run(inputs, out, TwoFiles(), num_parts=2, part_id=0)
    assert report.removed_temp_files == 3
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted(theirs)


class Pairs(BatchStep[np.ndarray, np.ndarray]):
    """A streaming step: holds inputs back and completes them two at a time (like tiles batched across images)."""

    def __init__(self) -> None:
        self.received = 0
        self.lock = threading.Lock()
        self.reads: list[tuple[int, int]] = []  # (input number, inputs the step had received when it was read)

    def settings(self) -> dict[str, Any]:
        return {"model": "pairs"}

    def read(self, path: Path) -> np.ndarray:
        with self.lock:
            self.reads.append((int(path.stem[1:]), self.received))
        return read_image(path)

    def process(self, work: Iterable[tuple[BatchItem, np.ndarray]], sink: Sink[np.ndarray]) -> None:
        held: list[tuple[BatchItem, np.ndarray]] = []
        for item, image in work:
            with self.lock:
                self.received += 1
            held.append((item, 255 - image))
            if len(held) == 2:
                for pair in held:
                    sink.done(*pair)
                held.clear()
        for pair in held:
            sink.done(*pair)

    def write(self, item: BatchItem, result: np.ndarray) -> None:
        write_image(item.targets[0], result)


def test_a_streaming_step_completes_inputs_late_and_reads_stay_bounded(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 9), tmp_path / "out"
    step = Pairs()
    report = _run(inputs, out, step, outputs=outputs_with(".png"), lookahead=2)
    assert report.done == 9 and not report.failed
    for i in range(9):
        assert np.array_equal(read_image(out / f"k{i}.png"), 255 - read_image(inputs / f"k{i}.png"))
    assert sorted(number for number, _ in step.reads) == list(range(9))
    assert all(received >= number - 2 for number, received in step.reads)  # never more than 2 decoded ahead


def test_records_of_the_previous_version_still_protect_their_folder(tmp_path: Path) -> None:
    """Older records kept the settings at the top level and were written only when finished."""
    inputs, out = _inputs(tmp_path / "in", 2), tmp_path / "out"
    out.mkdir()
    legacy = {"tool": "histostain fake", "tile": 256, "batch_size": 4, "num_parts": 1, "part_id": 0}
    (out / "fake.json").write_text(json.dumps(legacy))
    with pytest.raises(ConfigError, match=r"\(fake\.json\): tile 256 -> 512$"):
        _run(inputs, out, TwoFiles("a", 512))  # "model" is not in the old record: not compared
    assert _run(inputs, out, TwoFiles("a", 256)).done == 2
    assert _record(out)["settings"] == {"model": "a", "tile": 256}


def test_an_unreadable_record_is_refused_unless_overwriting(tmp_path: Path) -> None:
    inputs, out = _inputs(tmp_path / "in", 1), tmp_path / "out"
    out.mkdir()
    (out / "fake.part-1-of-2.json").write_text("{ truncated")
    with pytest.raises(ConfigError, match="cannot read the run record"):
        _run(inputs, out, TwoFiles())
    assert _run(inputs, out, TwoFiles(), overwrite=True).done == 1
