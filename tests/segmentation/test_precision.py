"""Precision must not change the answer (issue 12): ``segment``'s default precision gives the fp32 nuclei.

A small HoVer-Net is trained here on synthetic PanNuke-layout tiles (the reference losses and targets, Adam),
checked to segment held-out tiles (PQ against their ground truth far above an untrained network's), and then
segments them under each precision. On briefly trained networks like this one, bf16 autocast moves nuclei
boundaries and splits or drops a few nuclei (PQ of single tiles against the fp32 instance maps 0.89-0.98;
the longest-trained ones kept 0.99, docs/segment-precision.md), so under ``auto`` ``segment`` keeps fp32 on a
CPU even where the CPU has native bf16 (``exact_cpu``); a CPU without native bf16 never autocasts under ``auto``.
The training runs once for the module and single-threaded (the same weights on every run on one machine):
about 15-25 s of CPU, most of this module's time.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain.io.images import write_image
from histostain.metrics.detection import match_points
from histostain.metrics.instance import pq, pq_from_counts
from histostain.runtime.device import Capabilities, DeviceManager, plan_device
from histostain.segmentation.compat import save_hovernet
from histostain.segmentation.hovernet import HoVerNet
from histostain.segmentation.inference import HoVerNetMaps, HoVerNetPredictor
from histostain.segmentation.losses import HoVerNetLoss
from histostain.segmentation.nuclei import Nuclei
from histostain.segmentation.postprocess import instances_from_hovernet_maps
from histostain.segmentation.targets import make_targets
from histostain.synth import SynthTile, generate_tile

BF16_CPU = Capabilities(cpu_bf16=True, cpu_name="a CPU with native bf16")
PLAIN_CPU = Capabilities(cpu_bf16=False)
AMPERE = Capabilities(cuda_available=True, cuda_device_count=1, cuda_bf16=(True,), cuda_names=("A100",))

NET = {"encoder_width": 1 / 16, "units": [1, 1, 1, 1], "decoder_width": 0.25, "decoder_units": [1, 1]}
TRAIN_TILES, TRAIN_SIZE, BATCH, STEPS, LR = 32, 64, 8, 60, 3e-3
TEST_TILES, TEST_SIZE = 3, 232  # 232 px: one 256-px patch of the reference geometry each


@dataclass
class Trained:
    untrained: HoVerNet
    trained: HoVerNet
    tiles: list[SynthTile]  # held out: other seeds, every tissue kind (training saw tumour tiles only)
    seconds: float


@dataclass
class Run:
    maps: list[HoVerNetMaps]
    nuclei: list[Nuclei]


def _train() -> Trained:
    torch.manual_seed(0)
    net = HoVerNet("fast", None, **NET)
    for branch in net.decoder.values():
        # zero-initialised output layers: the reference init gives these 1x1 convolutions weights of std 1, and the
        # HV head then needs hundreds of steps before the post-processing finds a single marker
        torch.nn.init.zeros_(branch.u0.conv.weight)
        torch.nn.init.zeros_(branch.u0.conv.bias)
    untrained = copy.deepcopy(net).eval()
    output = net.output_size(TRAIN_SIZE)
    tiles = [generate_tile(1000 + i, TRAIN_SIZE, kind="tumour") for i in range(TRAIN_TILES)]
    targets = [make_targets(t.inst_map, (output, output)) for t in tiles]
    images = torch.from_numpy(np.stack([t.he.transpose(2, 0, 1) for t in tiles]).astype(np.float32))
    true_np = torch.from_numpy(np.stack([t.np for t in targets]).astype(np.int64))
    true_hv = torch.from_numpy(np.stack([t.hv for t in targets]))
    criterion = HoVerNetLoss()
    optimiser = torch.optim.Adam(net.parameters(), lr=LR)
    order = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    net.train()
    for _ in range(STEPS):
        pick = torch.randperm(TRAIN_TILES, generator=order)[:BATCH]
        loss, _ = criterion(net(images[pick]), {"np": true_np[pick], "hv": true_hv[pick]})
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    seconds = time.perf_counter() - started
    held_out = [generate_tile(5000 + i, TEST_SIZE) for i in range(TEST_TILES)]
    return Trained(untrained, net.eval(), held_out, seconds)


@pytest.fixture(scope="module")
def trained() -> Iterator[Trained]:
    previous = torch.get_num_threads()  # module fixtures run before the per-test single-thread fixture
    torch.set_num_threads(1)
    try:
        yield _train()
    finally:
        torch.set_num_threads(previous)


def _segment(net: HoVerNet, manager: DeviceManager, tiles: list[SynthTile]) -> Run:
    predictor = HoVerNetPredictor(net, manager, batch_size=4)
    maps = [predictor.maps(tile.he) for tile in tiles]
    return Run(maps, [instances_from_hovernet_maps(m.np_prob, m.hv) for m in maps])


@pytest.fixture(scope="module")
def fp32(trained: Trained) -> Run:
    return _segment(trained.trained, DeviceManager.create("cpu", "fp32", caps=PLAIN_CPU), trained.tiles)


def _pooled_pq(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[float]]:
    """PQ of TP/FP/FN/IoU summed over the images, and each image's PQ (``metrics.instance.pq``)."""
    results = [pq(true, pred) for true, pred in pairs]
    tp, fp, fn = (sum(getattr(r.pairing, k) for r in results) for k in ("tp", "fp", "fn"))
    pooled = pq_from_counts(tp, fp, fn, sum(r.pairing.iou_sum for r in results))[2]
    return pooled, [r.pq for r in results]


# ------------------------------------------------------------------------------------------------ the policy


def test_auto_keeps_fp32_on_a_bf16_cpu_only_for_exact_commands() -> None:
    exact = plan_device("cpu", "auto", BF16_CPU, exact_cpu=True)
    assert (exact.precision, exact.autocast_enabled) == ("fp32", False)
    assert exact.precision_reason.startswith("auto") and "bf16" in exact.precision_reason
    assert plan_device("auto", "auto", BF16_CPU, exact_cpu=True).precision == "fp32"
    assert plan_device("cpu", "auto", PLAIN_CPU, exact_cpu=True).precision == "fp32"
    # the general rule is unchanged, an explicit request is honoured, and a GPU keeps its own rule
    assert plan_device("cpu", "auto", BF16_CPU).precision == "bf16"
    assert plan_device("cpu", "bf16", BF16_CPU, exact_cpu=True).precision == "bf16"
    assert plan_device("auto", "auto", AMPERE, exact_cpu=True).precision == "bf16"
    manager = DeviceManager.create("cpu", "auto", caps=BF16_CPU, exact_cpu=True)
    assert manager.precision == "fp32" and manager.amp_dtype is None


# ------------------------------------------------------------------------------------ on a trained network


@pytest.mark.slow
def test_the_trained_network_segments_held_out_tiles(trained: Trained, fp32: Run) -> None:
    """The comparisons below mean something only on a network that finds nuclei."""
    truth = [tile.inst_map for tile in trained.tiles]
    pooled, per_tile = _pooled_pq([(t, n.inst_map) for t, n in zip(truth, fp32.nuclei, strict=True)])
    baseline = _segment(trained.untrained, DeviceManager.create("cpu", "fp32", caps=PLAIN_CPU), trained.tiles)
    untrained_pq, _ = _pooled_pq([(t, n.inst_map) for t, n in zip(truth, baseline.nuclei, strict=True)])
    true_count = sum(len(tile.nuclei) for tile in trained.tiles)
    found = sum(len(n.ids) for n in fp32.nuclei)
    print(f"trained in {trained.seconds:.1f} s: PQ {pooled:.3f} {np.round(per_tile, 3)}, untrained {untrained_pq:.3f}")
    assert pooled > 0.4, per_tile  # 0.62 on the development machine (0.58-0.63 over four training seeds)
    assert untrained_pq < 0.1
    assert 0.6 * true_count <= found <= 1.4 * true_count


@pytest.mark.slow
def test_the_default_precision_of_segment_gives_the_fp32_nuclei_on_a_bf16_cpu(trained: Trained, fp32: Run) -> None:
    """The issue's criterion: instance maps under the default precision match fp32 with PQ >= 0.99, the same
    number of nuclei, every fp32 centroid paired within 1 px."""
    manager = DeviceManager.create("cpu", "auto", caps=BF16_CPU, exact_cpu=True)  # what segment asks for
    run = _segment(trained.trained, manager, trained.tiles)
    pooled, per_tile = _pooled_pq([(a.inst_map, b.inst_map) for a, b in zip(fp32.nuclei, run.nuclei, strict=True)])
    assert pooled >= 0.99 and min(per_tile) >= 0.99, per_tile
    for a, b in zip(fp32.nuclei, run.nuclei, strict=True):
        assert len(a.ids) == len(b.ids) > 0
        pairs, unpaired, extra = match_points(a.centroids, b.centroids, radius=1.0)
        assert len(pairs) == len(a.ids) and unpaired.size == extra.size == 0


@pytest.mark.slow
def test_bf16_autocast_moves_nuclei_on_the_trained_network(trained: Trained, fp32: Run) -> None:
    """Why the default is fp32: bf16 rounds every activation to an 8-bit mantissa, NP probabilities move by
    up to ~0.1-0.2 and boundaries by a pixel or more. If this starts failing, bf16 has become exact enough on
    this network and the rule (``exact_cpu``, docs/segment-precision.md) deserves a new measurement."""
    run = _segment(trained.trained, DeviceManager.create("cpu", "bf16", caps=BF16_CPU), trained.tiles)
    np_shift = max(float(np.abs(a.np_prob - b.np_prob).max()) for a, b in zip(fp32.maps, run.maps, strict=True))
    pooled, per_tile = _pooled_pq([(a.inst_map, b.inst_map) for a, b in zip(fp32.nuclei, run.nuclei, strict=True)])
    flips = sum(int(((a.np_prob >= 0.5) != (b.np_prob >= 0.5)).sum()) for a, b in zip(fp32.maps, run.maps, strict=True))
    print(f"bf16 vs fp32: PQ {pooled:.4f} {np.round(per_tile, 4)}, max |dNP| {np_shift:.3f}, NP flips {flips}")
    assert np_shift > 0.01  # fp32 batches agree to ~1e-6: bf16 really ran, and it moved the maps
    assert flips > 0
    assert min(per_tile) < 0.999, per_tile  # 0.980 on the development machine


@pytest.mark.slow
def test_the_segment_command_runs_fp32_under_auto_on_a_bf16_cpu(
    run_cli: Callable[[list[str]], tuple[int, str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("histostain.runtime.device.probe_capabilities", lambda: BF16_CPU)
    write_image(tmp_path / "he.png", generate_tile(0, 96).he)
    torch.manual_seed(0)
    weights = save_hovernet(HoVerNet("fast", None, **NET), tmp_path / "w.pt")
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["--quiet", "--device", "cpu", "segment", str(tmp_path / "he.png"), "-w", str(weights), "-o", str(out)]
    )
    assert code == 0, err
    record = json.loads((out / "segment.json").read_text())
    assert record["details"]["precision"] == "fp32"
