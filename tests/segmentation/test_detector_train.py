"""`train detector` service: crops and targets, F1 validation with the threshold choice, exact resume, checkpoint."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from histostain.datasets.endonuke import prepare_endonuke
from histostain.runtime.device import DeviceManager
from histostain.runtime.training import RunDirectory
from histostain.segmentation.detector_config import DetectorConfig
from histostain.segmentation.detector_train import build_datasets, train_detector
from histostain.segmentation.detector_trainer import DetectorTrainer, best_row, pooled_f1, prepared_mpp
from histostain.synth import write_dataset

CPU = DeviceManager.create("cpu", "fp32")


def tiny(**options: Any) -> DetectorConfig:
    values = {
        "width": 4,
        "levels": 2,
        "epochs": 2,
        "batch_size": 2,
        "crop": 48,
        "num_workers": 0,
        "tensorboard": False,
        "log_every": 1,
        "sample_every": 0,
        "threshold_step": 0.2,
    }
    return DetectorConfig(**{**values, **options})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("endonuke")
    write_dataset("endonuke", root / "raw", n=5, size=64, seed=1)
    prepare_endonuke(root / "raw", root / "prepared", mpp=0.5, fractions="0.6,0.2,0.2")
    return root / "prepared"


def test_thresholds_and_pooled_f1_pick_the_best_threshold() -> None:
    assert tiny(threshold_min=0.1, threshold_step=0.05).thresholds()[:3] == [0.1, 0.15, 0.2]
    assert tiny(threshold_min=0.1, threshold_step=0.05).thresholds()[-1] == 0.9
    assert len(DetectorConfig().thresholds()) == 90 and DetectorConfig().thresholds()[:2] == [0.01, 0.02]
    true = [np.array([[10.0, 10.0], [30.0, 30.0]]), np.array([[5.0, 5.0]])]
    # tile 1: two hits (0.9, 0.6) and a false peak (0.3); tile 2: a hit (0.8)
    decoded = [
        (np.array([[10.0, 11.0], [31.0, 30.0], [50.0, 50.0]]), np.array([0.9, 0.6, 0.3], np.float32)),
        (np.array([[5.0, 5.0]]), np.array([0.8], np.float32)),
    ]
    rows = pooled_f1(decoded, true, [0.1, 0.5, 0.7], radius=2.0)
    assert [(r["tp"], r["fp"], r["fn"]) for r in rows] == [(3, 1, 0), (3, 0, 0), (2, 0, 1)]
    assert best_row(rows)["threshold"] == 0.5 and best_row(rows)["f1"] == 1.0


def test_crops_carry_exact_targets(prepared: Path) -> None:
    train, val = build_datasets(prepared, tiny(augment=False))
    assert val is not None and prepared_mpp(train.samples) == 0.5
    assert train.sigma_px == pytest.approx(1.0)  # 1.5 um / (3 * 0.5 um/px)
    sample = train[0]
    assert sample["image"].shape == (3, 48, 48) and sample["heatmap"].shape == (3, 48, 48)
    assert int((sample["heatmap"] == 1).sum()) <= sample["count"]  # peaks of 1.0 only at the kept points
    assert train[0]["heatmap"].equal(sample["heatmap"])  # the crop depends on seed, epoch and index only


def _run(tmp_path: Path, name: str) -> RunDirectory:
    run = RunDirectory(tmp_path / "runs", name)
    run.create()
    return run


def _snapshot(trainer: DetectorTrainer) -> dict[str, Any]:
    return {
        "model": copy.deepcopy(trainer.models["detector"].state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizers["adam"].state_dict()),
        "state": (trainer.state.epoch, trainer.state.step, trainer.state.batch_in_epoch),
        "threshold": trainer.threshold,
    }


def _assert_identical(x: Any, y: Any, where: str = "") -> None:
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert set(x) == set(y), where
        for key in x:
            _assert_identical(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), where
        for index, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_identical(u, v, f"{where}[{index}]")
    else:
        assert x == y, where


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_resume_mid_epoch_equals_a_straight_run(tmp_path: Path, prepared: Path, deterministic: None) -> None:
    config = tiny(deterministic=True, batch_size=1)
    train, val = build_datasets(prepared, config)
    steps = 2 * len(train)
    straight = DetectorTrainer(config, _run(tmp_path, "straight"), CPU, val_dataset=val, mpp=0.5)
    assert straight.fit(train).step == steps
    expected = _snapshot(straight)

    first = DetectorTrainer(tiny(deterministic=True, batch_size=1, max_steps=steps - 1), _run(tmp_path, "r"), CPU,
                            val_dataset=val, mpp=0.5)  # fmt: skip
    first.fit(build_datasets(prepared, config)[0])
    torch.manual_seed(999)  # a new trainer in a scrambled process: everything comes from the checkpoint
    random.seed(999)
    np.random.seed(999)
    second = DetectorTrainer(config, first.run, CPU, val_dataset=val, mpp=0.5)
    assert second.fit(build_datasets(prepared, config)[0], resume=True).step == steps
    _assert_identical(expected, _snapshot(second))


def test_train_detector_writes_an_inference_ready_checkpoint(tmp_path: Path, prepared: Path) -> None:
    _, result = train_detector(prepared, tiny(), name="run", runs_dir=tmp_path / "runs", manager=CPU)
    assert result.status == "completed" and result.best_checkpoint is not None
    assert {"f1", "precision", "recall", "threshold"} <= set(result.validation)
    payload = torch.load(result.best_checkpoint, weights_only=True)
    assert payload["class_names"] == {0: "stroma", 1: "epithelium", 2: "other"}
    assert payload["model_config"] == {"in_channels": 3, "num_classes": 3, "width": 4, "levels": 2}
    assert payload["mpp"] == 0.5 and payload["sigma_px"] == pytest.approx(1.0)
    assert payload["threshold"] in tiny().thresholds()  # tiny(): 0.01 .. 0.9 by 0.2
    assert payload["smooth_px"] == pytest.approx(1.0 / 0.5) and payload["nms_kernel"] == 5  # the defaults
    from histostain.segmentation.detector import DetectorNet

    network = DetectorNet(**payload["model_config"])
    network.load_state_dict(payload["state_dict"])
