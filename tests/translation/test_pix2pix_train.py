"""pix2pix training: reference defaults, the PyramidPix2pix loss against a hand computation, one step's losses,
overfitting above the identity baseline, exact resume, the NaN guard, validation modes, checkpoint contents
and the label-map source."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from histostain.errors import ConfigError
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.runtime.device import DeviceManager
from histostain.runtime.training import RunDirectory, TrainingDiverged
from histostain.synth import generate_tile
from histostain.translation.pix2pix import UnetGenerator, set_norm_mode
from histostain.translation.pix2pix_config import Pix2PixConfig, check_resume_compatible, resolve_config
from histostain.translation.pix2pix_train import train_pix2pix
from histostain.translation.pix2pix_trainer import Pix2PixTrainer
from histostain.translation.pyramid_loss import PyramidL1Loss

CPU = DeviceManager.create("cpu", "fp32")


class Pairs(Dataset):
    """4 synthetic H&E tiles (32 x 32) as A and a fixed colour mapping of them (RGB -> BRG, darkened) as B."""

    def __init__(self, nan_at: int | None = None) -> None:
        self.a = []
        for seed in range(4):
            he = torch.from_numpy(generate_tile(seed, 64).he).permute(2, 0, 1).float()
            self.a.append(F.avg_pool2d(he[None], 2)[0] / 127.5 - 1)
        self.b = [(a[[2, 0, 1]] * 0.8 - 0.1).clone() for a in self.a]
        self.nan_at = nan_at

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        a = self.a[index]
        if self.nan_at is not None and index == self.nan_at:
            a = torch.full_like(a, float("nan"))
        return {"A": a, "B": self.b[index]}


def tiny(**changes: Any) -> Pix2PixConfig:
    options: dict[str, Any] = {
        "net_g": "unet_32",
        "ngf": 8,
        "ndf": 8,
        "n_layers_d": 2,
        "crop": None,
        "epochs": 2,
        "epochs_decay": 1,
        "num_workers": 0,
        "log_every": 1,
        "sample_every": 0,
        "save_every": 0,
        "save_latest_steps": 0,
        "val_every": 0,
        "tensorboard": False,
    }
    options.update(changes)
    return Pix2PixConfig(**options)


def _run(tmp_path: Path, name: str) -> RunDirectory:
    run = RunDirectory(tmp_path / "runs", name)
    run.create()
    return run


# ------------------------------------------------------------------------------------------ config


def test_defaults_are_the_reference_ones() -> None:
    config = Pix2PixConfig()
    assert (config.net_g, config.net_d, config.ngf, config.ndf, config.n_layers_d) == ("unet_256", "basic", 64, 64, 3)
    assert (config.norm, config.dropout, config.init_gain, config.gan_mode) == ("batch", True, 0.02, "vanilla")
    assert (config.loss, config.lambda_l1, config.lr, config.beta1, config.beta2) == ("l1", 100.0, 2e-4, 0.5, 0.999)
    assert (config.epochs, config.epochs_decay, config.batch_size, config.crop) == (100, 100, 1, 256)
    assert (config.source, config.direction, config.best_metric, config.norm_mode) == (
        "bci",
        "he2ihc",
        "val_ssim",
        "per-input",
    )
    assert config.domains == ("HE", "IHC") and Pix2PixConfig(source="labels").domains == ("LABELS", "HE")


def test_pyramid_loss_takes_its_published_weight_unless_one_is_given(tmp_path: Path) -> None:
    assert Pix2PixConfig(loss="pyramid").lambda_l1 == 25.0
    assert Pix2PixConfig(loss="pyramid", lambda_l1=10).lambda_l1 == 10.0
    file = tmp_path / "p.toml"
    file.write_text('loss = "pyramid"\n')
    assert resolve_config(config_file=file).lambda_l1 == 25.0
    assert resolve_config(config_file=file, overrides={"lambda_l1": 50.0, "net_g": None}).lambda_l1 == 50.0
    assert resolve_config(overrides={"norm_mode": "PER_INPUT"}).norm_mode == "per-input"
    with pytest.raises(ConfigError, match="net_g"):
        resolve_config(overrides={"net_g": "unet_100"})
    stored = Pix2PixConfig()
    with pytest.raises(ConfigError, match="loss"):
        check_resume_compatible(stored, Pix2PixConfig(loss="pyramid"))
    check_resume_compatible(stored, Pix2PixConfig(lr=1e-4, norm_mode="eval"))  # free to change


# ------------------------------------------------------------------------------------------ pyramid loss


def _octave_by_hand(image: np.ndarray) -> np.ndarray:
    """kornia gaussian_blur2d((3, 3), (1, 1)) four times (reflect border), then blur_pool2d(x, 1, stride=2)."""
    g = np.exp(-0.5)
    kernel = np.array([g, 1.0, g]) / (1.0 + 2.0 * g)
    out = image.astype(np.float64)
    for _ in range(4):
        out = ndimage.correlate1d(out, kernel, axis=-1, mode="mirror")  # mirror = reflect without the edge pixel
        out = ndimage.correlate1d(out, kernel, axis=-2, mode="mirror")
    return out[..., ::2, ::2]


def test_pyramid_loss_equals_a_hand_computation() -> None:
    rng = np.random.default_rng(0)
    fake = rng.uniform(-1, 1, (2, 3, 20, 18))
    real = rng.uniform(-1, 1, (2, 3, 20, 18))
    expected_terms = [np.abs(fake - real).mean()]
    f, r = fake, real
    for _ in range(3):
        f, r = _octave_by_hand(f), _octave_by_hand(r)
        expected_terms.append(np.abs(f - r).mean())
    assert f.shape[-2:] == (3, 3)  # 20 -> 10 -> 5 -> 3, 18 -> 9 -> 5 -> 3
    loss = PyramidL1Loss()
    got = [float(t) for t in loss.terms(torch.from_numpy(fake).float(), torch.from_numpy(real).float())]
    assert got == pytest.approx(expected_terms, rel=1e-5)
    total = float(loss(torch.from_numpy(fake).float(), torch.from_numpy(real).float()))
    assert total == pytest.approx(sum(expected_terms), rel=1e-5)
    weighted = PyramidL1Loss((2.0, 0.5, 0.0, 3.0))(torch.from_numpy(fake).float(), torch.from_numpy(real).float())
    hand = 2 * expected_terms[0] + 0.5 * expected_terms[1] + 3 * expected_terms[3]
    assert float(weighted) == pytest.approx(hand, rel=1e-5)
    # kornia's 3 x 3, sigma 1 kernel
    assert loss.kernel.sum(0).tolist() == pytest.approx([0.27407, 0.45186, 0.27407], abs=1e-4)


def test_pyramid_loss_is_zero_for_equal_images_and_blind_to_what_it_does_not_weigh() -> None:
    x = torch.rand(1, 3, 16, 16)
    assert float(PyramidL1Loss()(x, x.clone())) == 0.0
    shifted = x + 0.25
    assert float(PyramidL1Loss((1.0, 0.0, 0.0, 0.0))(shifted, x)) == pytest.approx(0.25, rel=1e-5)
    assert float(PyramidL1Loss()(shifted, x)) == pytest.approx(1.0, rel=1e-4)  # a constant survives every blur


# ------------------------------------------------------------------------------------------ one step


def test_one_step_computes_the_reference_losses_d_first_then_g(tmp_path: Path) -> None:
    config = tiny(loss="pyramid", dropout=False, gan_mode="vanilla")
    trainer = Pix2PixTrainer(config, _run(tmp_path, "step"), CPU)
    g0, d0 = copy.deepcopy(trainer.models["G"]), copy.deepcopy(trainer.models["D"])
    batch = {"A": torch.stack([Pairs()[0]["A"], Pairs()[1]["A"]]), "B": torch.stack([Pairs()[0]["B"], Pairs()[1]["B"]])}
    torch.manual_seed(5)
    losses = trainer.train_step(batch)
    bce = F.binary_cross_entropy_with_logits
    with torch.no_grad():  # the same forwards by hand, with the networks as they were before the step
        fake = g0(batch["A"])
        pred_fake, pred_real = d0(torch.cat([batch["A"], fake], 1)), d0(torch.cat([batch["A"], batch["B"]], 1))
        expected_d = 0.5 * (bce(pred_fake, torch.zeros_like(pred_fake)) + bce(pred_real, torch.ones_like(pred_real)))
        expected_l1 = 25.0 * PyramidL1Loss()(fake, batch["B"])
        # the generator's GAN term is scored by the already updated discriminator (the reference's order)
        pred = trainer.models["D"](torch.cat([batch["A"], fake], 1))
        expected_gan = bce(pred, torch.ones_like(pred))
    assert float(losses["D"]) == pytest.approx(float(expected_d), rel=1e-5)
    assert float(losses["G_L1"]) == pytest.approx(float(expected_l1), rel=1e-5)
    assert float(losses["G_GAN"]) == pytest.approx(float(expected_gan), rel=1e-4)
    assert not torch.equal(next(g0.parameters()), next(trainer.models["G"].parameters()))


# ------------------------------------------------------------------------------------------ overfit


def test_tiny_model_overfits_and_beats_the_identity_baseline(tmp_path: Path) -> None:
    config = tiny(lr=2e-3, batch_size=4, epochs=50, epochs_decay=0, log_every=0, val_every=50, dropout=False)
    trainer = Pix2PixTrainer(config, _run(tmp_path, "overfit"), CPU, val_dataset=Pairs())
    before = trainer.validate()
    recon: list[float] = []
    step = trainer.train_step

    def recording(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = step(batch)
        recon.append(float(losses["G_L1"]))
        return losses

    trainer.train_step = recording  # type: ignore[method-assign]
    result = trainer.fit(Pairs())
    assert result.status == "completed" and result.step == 50
    assert np.mean(recon[:2]) / np.mean(recon[-3:]) > 3, (recon[:2], recon[-3:])
    after = result.validation
    baseline = after["val_identity_psnr"]
    assert before["val_identity_psnr"] == baseline and {"val_psnr_eval", "val_ssim_per_input"} <= set(after)
    assert after["val_psnr"] > baseline + 3 and after["val_psnr"] > before["val_psnr"] + 3, (before, after)
    assert after["val_psnr"] == after["val_psnr_per_input"]  # the configured mode is the reported one
    assert result.best_checkpoint is not None and result.best == after["val_ssim"]


# ------------------------------------------------------------------------------------------ resume


def _snapshot(trainer: Pix2PixTrainer) -> dict[str, Any]:
    return {
        "models": {n: copy.deepcopy(m.state_dict()) for n, m in trainer.models.items()},
        "optimizers": {n: copy.deepcopy(o.state_dict()) for n, o in trainer.optimizers.items()},
        "schedulers": {n: s.state_dict() for n, s in trainer.schedulers.items()},
        "state": (trainer.state.epoch, trainer.state.step, trainer.state.batch_in_epoch),
    }


def _assert_identical(x: Any, y: Any, where: str = "") -> None:
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), where
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


def _train_set(prepared: Path) -> Any:
    from histostain.datasets.torch_data import TranslationPairs

    return TranslationPairs(prepared, "train", paired=True, direction="he2ihc", crop=32, augment=True, seed=0)


def test_resume_equals_straight_run_tensor_for_tensor(tmp_path: Path, prepared_bci: Path, deterministic: None) -> None:
    """2 steps + save + a new trainer resuming + 3 steps == 5 steps straight (dropout on: its RNG is restored)."""
    options = {"deterministic": True, "ngf": 4, "ndf": 4, "loss": "pyramid"}
    straight = Pix2PixTrainer(tiny(max_steps=5, **options), _run(tmp_path, "straight"), CPU)
    assert straight.fit(_train_set(prepared_bci)).step == 5
    expected = _snapshot(straight)

    first = Pix2PixTrainer(tiny(max_steps=2, **options), _run(tmp_path, "resumed"), CPU)
    first.fit(_train_set(prepared_bci))
    torch.manual_seed(999)  # a new trainer in a scrambled process: everything must come from the checkpoint
    random.seed(999)
    np.random.seed(999)
    second = Pix2PixTrainer(tiny(max_steps=5, **options), first.run, CPU)
    assert second.fit(_train_set(prepared_bci), resume=True).step == 5
    got = _snapshot(second)
    assert expected["state"] == got["state"] == (1, 5, 2)  # 3 patches per epoch: crossed an epoch end
    _assert_identical(expected, got)


# ------------------------------------------------------------------------------------------ guard


def test_nan_input_stops_before_any_update_and_keeps_last_good(tmp_path: Path) -> None:
    trainer = Pix2PixTrainer(tiny(save_latest_steps=1), _run(tmp_path, "nan"), CPU)
    order = trainer.dist.sampler(Pairs(), seed=0)
    order.set_epoch(0)
    poisoned = Pairs(nan_at=order.indices()[2])  # the third batch of the first epoch
    with pytest.raises(TrainingDiverged, match=r"step 3 .*loss .*D.*NaN.*step 2"):
        trainer.fit(poisoned)
    payload = load_histostain_checkpoint(trainer.run.last, arch="pix2pix")
    assert payload["step"] == 2
    for name, model in trainer.models.items():  # no optimiser update after the save; the file is finite
        parameters = {key: value for key, value in model.state_dict().items() if key in dict(model.named_parameters())}
        _assert_identical({key: payload["models"][name][key] for key in parameters}, parameters, name)
        assert all(torch.isfinite(value.float()).all() for value in payload["models"][name].values())


# ------------------------------------------------------------------------------------------ service + checkpoint


def test_train_pix2pix_writes_a_translate_ready_checkpoint(tmp_path: Path, prepared_bci: Path) -> None:
    from histostain.translation.compat import load_generator

    overrides = {"net_g": "unet_32", "ngf": 4, "ndf": 4, "crop": 32, "epochs": 1, "epochs_decay": 1}
    overrides |= {"num_workers": 0, "val_every": 1, "tensorboard": False, "norm_mode": "eval"}
    config, result = train_pix2pix(
        prepared_bci, name="svc", runs_dir=tmp_path / "runs", manager=CPU, overrides=overrides
    )
    assert result.status == "completed" and result.best_checkpoint is not None
    assert {"val_psnr", "val_ssim", "val_identity_psnr", "val_psnr_eval", "val_psnr_per_input"} <= set(
        result.validation
    )
    assert result.validation["val_psnr"] == result.validation["val_psnr_eval"]
    payload = load_histostain_checkpoint(result.best_checkpoint, arch="pix2pix")
    assert payload["direction"] == "he2ihc" and payload["domains"] == {"A": "HE", "B": "IHC"}
    assert payload["norm_mode"] == "eval" and payload["generator"]["config"]["arch"] == "unet_32"
    model, record = load_generator(result.best_checkpoint)
    assert isinstance(model, UnetGenerator) and record.arch == "unet_32" and record.direction == "he2ihc"
    trained = Pix2PixTrainer(config, RunDirectory(tmp_path / "runs", "svc"), CPU)
    trained.models["G"].load_state_dict(payload["models"]["G"])
    x = torch.rand(1, 3, 48, 48) * 2 - 1
    for net in (model, trained.models["G"]):
        net.eval()
        set_norm_mode(net, "eval")
    with torch.inference_mode():
        assert torch.allclose(model(x), trained.models["G"](x), atol=1e-6)
    assert math.isfinite(result.validation["val_identity_ssim"])


def test_labels_source_trains_on_prepared_pannuke(tmp_path: Path) -> None:
    pytest.importorskip("histostain.datasets.label_pairs", reason="LabelPairs (issue 16, --source labels) not there")
    from histostain.datasets.pannuke import prepare_pannuke
    from histostain.synth import write_dataset

    write_dataset("pannuke", tmp_path / "raw", n=4, size=64, seed=3)
    prepare_pannuke(tmp_path / "raw", tmp_path / "prepared", split="random", fractions="0.5,0.25,0.25")
    overrides = {"source": "labels", "net_g": "unet_32", "ngf": 4, "ndf": 4, "crop": 32, "epochs": 1}
    overrides |= {"epochs_decay": 0, "num_workers": 0, "val_every": 1, "tensorboard": False, "max_steps": 2}
    config, result = train_pix2pix(
        tmp_path / "prepared", name="labels", runs_dir=tmp_path / "runs", manager=CPU, overrides=overrides
    )
    assert config.domains == ("LABELS", "HE") and result.step == 2
    payload = load_histostain_checkpoint(result.last_checkpoint, arch="pix2pix")
    assert payload["source"] == "labels" and payload["domains"] == {"A": "LABELS", "B": "HE"}
