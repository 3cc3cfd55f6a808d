"""Fixtures every test module shares: an isolated environment, one torch thread, the CLI runner, FID weights.

Test modules import nothing from each other; what several of them need lives here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Settings a developer may have exported; a test that wants one sets it with monkeypatch.
_SETTINGS_VARIABLES = (
    "HISTOSTAIN_DEVICE",
    "HISTOSTAIN_PRECISION",
    "HISTOSTAIN_HOME",
    "HISTOSTAIN_SETTINGS",
    "HISTOSTAIN_NUM_THREADS",
    "HISTOSTAIN_QUIET",
    "HISTOSTAIN_OFFLINE",
    "HISTOSTAIN_REGISTRY",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HISTOSTAIN_* (or scheduler) variable of the developer's shell reaches a test."""
    for name in _SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: test tensors are tiny, and on a shared 2-core machine OpenMP's spinning
    threads make tiny forwards many times slower and erratic. The previous setting is restored afterwards.

    torch is imported here when a test module has not imported it yet (CLI tests import it only inside the
    command), so every test starts with one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


CliRunner = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run the real entry point in-process: ``run_cli(args) -> (exit code, stdout, stderr)``."""
    from histostain.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def fid_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random FID-Inception state dict under torchvision names (the published file's layout), made once.

    BatchNorm running statistics are set from one training-mode batch (cumulative average), so activations keep a
    sane scale through the 94 layers instead of vanishing, and the features are not all zero.
    """
    import torch

    from histostain.metrics.inception import FID_WEIGHTS_FILENAME, FIDInceptionV3

    directory = tmp_path_factory.mktemp("fid_weights")
    torch.manual_seed(0)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 96, 96))
    path = directory / FID_WEIGHTS_FILENAME
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def install_fid_weights(fid_weights: Path) -> Callable[[Path], Path]:
    """``install_fid_weights(folder)`` puts the session's FID weights into ``folder`` (as a user would)."""

    def install(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / fid_weights.name
        try:
            os.link(fid_weights, target)
        except OSError:
            shutil.copyfile(fid_weights, target)
        return target

    return install


@pytest.fixture(scope="session")
def prepared_bci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature prepared BCI, made once: 6 synthetic 48 x 48 pairs, splits train / val / test."""
    from histostain.datasets.bci import prepare_bci
    from histostain.synth import write_dataset

    root = tmp_path_factory.mktemp("bci")
    write_dataset("bci", root / "raw", n=6, size=48, seed=1)
    prepare_bci(root / "raw", root / "prepared", patch=48, size=0, val_fraction=0.34, seed=0)
    return root / "prepared"
