"""`histostain translate` through the real entry point: outputs, record, resume, refusals, sharding, bad inputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain import __version__
from histostain.io.images import read_image, write_image
from histostain.translation.compat import save_generator
from histostain.translation.cyclegan import ResnetGenerator, init_weights

CliRunner = Callable[[list[str]], tuple[int, str, str]]  # the shared ``run_cli`` fixture (tests/conftest.py)
GLOBAL = ["--quiet", "--device", "cpu", "--precision", "fp32"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "weights" / "g.pt"
    save_generator(path, init_weights(ResnetGenerator(ngf=2, n_blocks=1)), direction="ihc2he")
    return path


@pytest.fixture()
def other_weights(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "weights" / "other.pt"
    save_generator(path, init_weights(ResnetGenerator(ngf=2, n_blocks=1)), direction="ihc2he")
    return path


def _tiles(folder: Path, sizes: list[tuple[int, int]], prefix: str = "t") -> list[Path]:
    rng = np.random.default_rng(len(sizes))
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"{prefix}{i}.png"
        write_image(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_translate_folder_recursive_writes_same_size_outputs_and_record(
    tmp_path: Path, weights: Path, run_cli: CliRunner
) -> None:
    _tiles(tmp_path / "in", [(40, 36), (21, 33)])
    _tiles(tmp_path / "in" / "sub", [(16, 16)], prefix="s")
    out = tmp_path / "out"
    args = [*GLOBAL, "translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he"]
    args += ["--out", str(out), "-r"]
    code, stdout, err = run_cli(args)
    assert code == 0, err
    assert "translated" in stdout and "images/s" in stdout
    assert read_image(out / "t0.png").shape == (40, 36, 3)
    assert read_image(out / "t1.png").shape == (21, 33, 3)
    assert read_image(out / "sub" / "s0.png").shape == (16, 16, 3)
    record = json.loads((out / "translate.json").read_text())
    assert record["status"] == "finished" and record["command"] == "translate"
    assert record["settings"] == {
        "weights_sha256": _sha(weights),
        "direction": "ihc2he",
        "tile": 512,
        "overlap": 64,
        "format": "png",
    }
    assert record["weights"]["sha256"] == _sha(weights) and record["weights"]["format"] == "histostain"
    assert record["weights"]["path"] == str(weights.resolve())
    assert record["details"]["batch_size"] == 4 and record["details"]["device"] == "cpu"
    provenance = record["provenance"]
    assert provenance["command"] == ["histostain", *args]  # as typed, global options included
    assert provenance["histostain_version"] == __version__
    assert provenance["options"]["recursive"] is True and provenance["options"]["tile"] == 512
    assert record["result"]["translated"] == 3 and record["result"]["failed"] == []
    assert record["shard"] == {"part_id": 0, "num_parts": 1, "source": "single"}


def test_second_run_skips_and_overwrite_redoes(tmp_path: Path, weights: Path, run_cli: CliRunner) -> None:
    _tiles(tmp_path / "in", [(24, 24), (24, 24), (24, 28)])
    args = [*GLOBAL, "translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he"]
    args += ["--out", str(tmp_path / "o")]
    code, stdout, _ = run_cli([*args, "--json"])
    assert code == 0 and json.loads(stdout)["translated"] == 3
    first = (tmp_path / "o" / "t0.png").stat().st_mtime_ns
    code, stdout, _ = run_cli([*args, "--json", "--batch-size", "2"])  # batch size does not change outputs
    report = json.loads(stdout)
    assert code == 0 and (report["translated"], report["skipped"]) == (0, 3)
    assert (tmp_path / "o" / "t0.png").stat().st_mtime_ns == first
    record = json.loads((tmp_path / "o" / "translate.json").read_text())
    assert record["status"] == "finished" and record["result"]["skipped"] == 3
    assert record["details"]["batch_size"] == 2  # the record describes the latest run
    code, stdout, _ = run_cli([*args, "--json", "--overwrite", "--format", "tif"])
    assert code == 0 and json.loads(stdout)["translated"] == 3
    assert read_image(tmp_path / "o" / "t2.tif").shape == (24, 28, 3)


def test_resume_with_other_weights_is_refused_naming_the_difference(
    tmp_path: Path, weights: Path, other_weights: Path, run_cli: CliRunner
) -> None:
    _tiles(tmp_path / "in", [(16, 16)])
    out = tmp_path / "o"
    args = [*GLOBAL, "translate", str(tmp_path / "in"), "--direction", "ihc2he", "--out", str(out)]
    assert run_cli([*args, "-w", str(weights)])[0] == 0
    before = _snapshot(out)
    code, stdout, err = run_cli([*args, "-w", str(other_weights)])
    expected = (
        f"Error: {out}/ holds outputs of an earlier run with other settings (translate.json): "
        f"weights sha256 {_sha(weights)[:8]}… -> {_sha(other_weights)[:8]}… "
        "(hint: --overwrite replaces them, or choose another --out)"
    )
    assert code == 2 and stdout == "" and err.strip() == expected
    assert _snapshot(out) == before  # nothing touched, not even the record


def test_killed_run_then_other_weights_is_refused(
    tmp_path: Path, weights: Path, other_weights: Path, run_cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run record exists from the start: a crash mid-run can no longer hide which weights made the outputs."""
    import histostain.translation.translate as translate_module

    _tiles(tmp_path / "in", [(16, 16), (16, 20), (20, 16)])
    out = tmp_path / "o"
    real_write = translate_module.write_image
    calls: list[Path] = []

    def dying_write(path: Path, image: np.ndarray) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real_write(path, image)

    monkeypatch.setattr(translate_module, "write_image", dying_write)
    args = [*GLOBAL, "translate", str(tmp_path / "in"), "--direction", "ihc2he", "--out", str(out)]
    with pytest.raises(RuntimeError, match="killed"):
        run_cli([*args, "-w", str(weights), "--batch-size", "1"])
    monkeypatch.setattr(translate_module, "write_image", real_write)
    record = json.loads((out / "translate.json").read_text())
    assert record["status"] == "failed" and "killed" in record["error"]
    assert record["settings"]["weights_sha256"] == _sha(weights)
    done = sorted(p.name for p in out.glob("*.png"))
    assert 1 <= len(done) < 3  # some outputs were finished before the crash

    code, _, err = run_cli([*args, "-w", str(other_weights), "--tile", "256"])
    assert code == 2
    assert f"weights sha256 {_sha(weights)[:8]}… -> {_sha(other_weights)[:8]}…; tile 512 -> 256" in err
    assert sorted(p.name for p in out.glob("*.png")) == done

    code, stdout, err = run_cli([*args, "-w", str(weights), "--json"])  # the same settings resume
    assert code == 0, err
    assert (json.loads(stdout)["translated"], json.loads(stdout)["skipped"]) == (3 - len(done), len(done))


def test_output_folder_inside_an_input_folder_is_refused_and_inputs_stay_intact(
    tmp_path: Path, weights: Path, run_cli: CliRunner
) -> None:
    paths = _tiles(tmp_path / "in", [(16, 16), (20, 20)])
    before = _snapshot(tmp_path / "in")
    base = [*GLOBAL, "translate", "-w", str(weights), "--direction", "ihc2he"]
    for inputs, out in (
        ([str(tmp_path / "in")], tmp_path / "in"),  # the reported accident: sources replaced by translations
        ([str(tmp_path / "in")], tmp_path / "in" / "translated"),
        ([str(paths[0]), str(paths[1])], tmp_path / "in"),  # file inputs written onto themselves
        ([str(tmp_path / "in" / "*.png")], tmp_path / "in"),
    ):
        code, stdout, err = run_cli([*base, *inputs, "--out", str(out), "--overwrite"])
        assert code == 2 and stdout == "", err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err
        assert _snapshot(tmp_path / "in") == before  # byte-identical, nothing added (no record, no temp file)
    assert not (tmp_path / "in" / "translated").exists()


def test_two_shards_cover_every_input_exactly_once(tmp_path: Path, weights: Path, run_cli: CliRunner) -> None:
    _tiles(tmp_path / "in", [(16, 16)] * 7)
    outputs: list[set[str]] = []
    base = [*GLOBAL, "translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he"]
    for part in (0, 1):
        out = tmp_path / f"o{part}"
        code, stdout, _ = run_cli([*base, "--out", str(out), "--num-parts", "2", "--part-id", str(part), "--json"])
        assert code == 0 and json.loads(stdout)["translated"] == (4, 3)[part]
        assert (out / f"translate.part-{part}-of-2.json").is_file()
        outputs.append({p.name for p in out.glob("*.png")})
    assert outputs[0].isdisjoint(outputs[1])
    assert outputs[0] | outputs[1] == {f"t{i}.png" for i in range(7)}
    code, _, err = run_cli([*base, "--out", str(tmp_path / "x"), "--num-parts", "2", "--part-id", "2"])
    assert code == 2 and "part 2 of 2" in err and not (tmp_path / "x").exists()


def test_slurm_array_tasks_share_one_folder(
    tmp_path: Path, weights: Path, run_cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiles(tmp_path / "in", [(16, 16)] * 5)
    out = tmp_path / "o"
    base = [*GLOBAL, "translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he"]
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")  # sbatch --array=1-2
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    seen: list[set[str]] = []
    for task in ("2", "1"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        before = {p.name for p in out.glob("*.png")}
        code, _, err = run_cli([*base, "--out", str(out)])
        assert code == 0, err
        seen.append({p.name for p in out.glob("*.png")} - before)
    assert seen[0] == {"t1.png", "t3.png"}  # task 2 is part 1: every 2nd input from the second
    assert seen[1] == {"t0.png", "t2.png", "t4.png"}
    shard = json.loads((out / "translate.part-1-of-2.json").read_text())["shard"]
    assert shard == {"part_id": 1, "num_parts": 2, "source": "slurm"}


def test_leftover_temp_files_are_removed(tmp_path: Path, weights: Path, run_cli: CliRunner) -> None:
    _tiles(tmp_path / "in", [(16, 16), (16, 16)])
    out = tmp_path / "o"
    out.mkdir()
    (out / ".t0.png.a1b2c3d4.tmp.png").write_bytes(b"half a png")
    (out / ".translate.json.zz_9x8y7.tmp.json").write_text("{")
    (out / ".notes.txt").write_text("mine")
    args = [*GLOBAL, "translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he"]
    code, _, err = run_cli([*args, "--out", str(out)])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt", "t0.png", "t1.png", "translate.json"]


def test_glob_and_file_inputs(tmp_path: Path, weights: Path, run_cli: CliRunner) -> None:
    paths = _tiles(tmp_path / "in", [(16, 16), (20, 20), (24, 24)])
    out = tmp_path / "o"
    pattern = str(tmp_path / "in" / "t[01].png")
    args = [*GLOBAL, "translate", pattern, str(paths[2]), "-w", str(weights), "--direction", "ihc2he"]
    code, _, err = run_cli([*args, "--out", str(out), "--json"])
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.png")) == ["t0.png", "t1.png", "t2.png"]


def test_corrupt_image_among_many_is_reported_and_others_are_kept(
    tmp_path: Path, weights: Path, run_cli: CliRunner
) -> None:
    _tiles(tmp_path / "in", [(16, 16), (16, 16)])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "o"
    args = [*GLOBAL, "translate", str(tmp_path / "in"), "-w", str(weights), "--direction", "ihc2he"]
    code, stdout, err = run_cli([*args, "--out", str(out), "--json"])
    assert code == 2
    report = json.loads(stdout)
    assert report["translated"] == 2 and len(report["failed"]) == 1 and "broken.png" in report["failed"][0]["path"]
    assert "broken.png" in err and "1 of 3" in err
    assert (out / "t0.png").is_file() and (out / "t1.png").is_file() and not (out / "broken.png").exists()
    record = json.loads((out / "translate.json").read_text())
    assert record["status"] == "finished" and record["result"]["failed"][0]["path"].endswith("broken.png")


def test_missing_folder_and_wrong_weights_are_one_line_errors(
    tmp_path: Path, weights: Path, run_cli: CliRunner
) -> None:
    out = str(tmp_path / "o")
    base = [*GLOBAL, "translate"]
    code, stdout, err = run_cli([*base, str(tmp_path / "nope"), "-w", str(weights), "--direction", "ihc2he", "-o", out])
    assert code == 2 and stdout == "" and "does not exist" in err and "Traceback" not in err
    _tiles(tmp_path / "in", [(16, 16)])
    hovernet = tmp_path / "hovernet.tar"
    torch.save({"desc": {f"conv0.{i}.weight": torch.zeros(1) for i in range(5)}}, hovernet)
    code, _, err = run_cli([*base, str(tmp_path / "in"), "-w", str(hovernet), "--direction", "ihc2he", "-o", out])
    assert code == 2 and "expected a CycleGAN generator" in err and "HoVer-Net" in err
    code, _, err = run_cli([*base, str(tmp_path / "in"), "-w", str(weights), "--direction", "sideways", "-o", out])
    assert code == 2 and "unknown direction" in err
    code, _, err = run_cli([*base, str(tmp_path / "in"), "-w", str(weights), "--direction", "he2ihc", "-o", out])
    assert code == 2 and "ihc2he generator" in err
    assert not Path(out).exists()  # every refusal came before the first write


def test_cli_module_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, histostain.cli.translate; sys.exit('torch' in sys.modules or 'numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
