"""``histostain demo``: the whole tool in two minutes with no download.

It makes a fresh set of synthetic HER2 IHC tiles with exact ground-truth centroids (``histostain.synth``), then
runs :func:`~histostain.pipeline.run.run_pipeline` four ways on them and compares them:

1. ``translate``: IHC -> H&E with the packaged ``cyclegan-demo``, nuclei with ``hovernet-demo`` (the main job);
2. ``no-translate``: ``hovernet-demo`` on the IHC tiles as they are (the ablation: does translation help?);
3. ``classical``: the weight-free classical segmenter on the IHC tiles (HER2: DAB on membranes);
4. ``detector``: the packaged ``detector-endonuke`` on the IHC tiles as they are. It was trained on *real*
   EndoNuke ER/PR tissue, not on these synthetic HER2 tiles, so its row says how a real-tissue model meets a
   synthetic stain it never saw.

The demo weights were trained on synthetic tissue only (``scripts/train_demo_weights.sh``); the figures say how
the parts fit together, not how well they work on real tissue (docs/pipeline.md has the real-tissue run).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import InputError
from histostain.io.atomic import atomic_write_text
from histostain.pipeline.config import PipelineConfig

if TYPE_CHECKING:
    from histostain.pipeline.run import PipelineReport
    from histostain.provenance import Provenance
    from histostain.runtime.device import DeviceManager
    from histostain.settings import Settings

DEMO_TRANSLATOR = "cyclegan-demo"
DEMO_SEGMENTER = "hovernet-demo"
DEMO_TILES = 12
DEMO_SIZE = 256
DEMO_SEED = 2026
DEMO_RECORD = "demo.json"
ROUTES = ("translate", "no-translate", "classical", "detector")


@dataclass
class DemoRow:
    """One route's scores on the demo tiles."""

    route: str
    description: str
    precision: float | None
    recall: float | None
    f1: float | None
    nuclei: int
    seconds: float
    report: str | None


@dataclass
class DemoReport:
    """The routes, where everything is, and how long it took."""

    out_dir: str
    data: str
    mpp: float
    rows: list[DemoRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def main_report(self) -> str | None:
        return self.rows[0].report if self.rows else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "main_report": self.main_report}


def make_demo_tiles(folder: Path, count: int = DEMO_TILES, size: int = DEMO_SIZE, seed: int = DEMO_SEED) -> float:
    """``folder/tiles/demo_NN.png`` (synthetic HER2 IHC) and ``folder/truth/demo_NN.txt`` (their nuclei, ``x y
    class``, EndoNuke classes); returns the tiles' um/px."""
    from histostain.io.annotations import Nucleus, write_centroids_txt
    from histostain.io.images import write_image
    from histostain.runtime.progress import track
    from histostain.synth import generate_tile

    (folder / "tiles").mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(parents=True, exist_ok=True)
    mpp = 0.0
    for index in track(range(count), "Synthetic IHC tiles", unit="tile"):
        tile = generate_tile(seed + index, size)
        name = f"demo_{index:02d}"
        write_image(folder / "tiles" / f"{name}.png", tile.ihc)
        truth = [Nucleus(i + 1, (n.x, n.y), n.endonuke_class) for i, n in enumerate(tile.nuclei)]
        write_centroids_txt(folder / "truth" / f"{name}.txt", truth)
        mpp = tile.mpp
    return mpp


def _check_out(out: Path) -> None:
    """The demo rewrites its own folder only: an existing folder must be empty or an earlier demo's."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file", hint="choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_RECORD).is_file():
        raise InputError(
            f"--out {out} holds files that are not a histostain demo's; the demo would replace them",
            hint="choose a new or empty folder",
        )


def _configs(out: Path, data: Path, mpp: float, translator: str, segmenter_weights: str) -> dict[str, PipelineConfig]:
    common: dict[str, Any] = {
        "input": [str(data / "tiles")],
        "ground_truth": data / "truth",
        "mpp": mpp,
        "report_samples": 6,
    }
    return {
        "translate": PipelineConfig(
            out=out / "translate", translator=translator, segmenter_weights=segmenter_weights, **common
        ),
        "no-translate": PipelineConfig(
            out=out / "no-translate", no_translate=True, segmenter_weights=segmenter_weights, stain="ihc", **common
        ),
        "classical": PipelineConfig(
            out=out / "classical", no_translate=True, segmenter="classical", stain="ihc", dab="membrane", **common
        ),
        "detector": PipelineConfig(
            out=out / "detector", no_translate=True, segmenter="detector", stain="ihc", **common
        ),
    }


def _describe(route: str, translator: str, segmenter_weights: str) -> str:
    translator, segmenter_weights = Path(translator).name, Path(segmenter_weights).name  # names, not whole paths
    return {
        "translate": f"IHC -> H&E ({translator}) -> HoVer-Net ({segmenter_weights})",
        "no-translate": f"IHC -> HoVer-Net ({segmenter_weights}), no translation",
        "classical": "IHC -> classical (weight-free, HER2 membrane mode)",
        "detector": "IHC -> detector (detector-endonuke: real ER/PR tissue, not HER2), no translation",
    }[route]


def _row(route: str, description: str, report: PipelineReport) -> DemoRow:
    metrics = report.metrics or {}
    return DemoRow(
        route=route,
        description=description,
        precision=metrics.get("precision"),
        recall=metrics.get("recall"),
        f1=metrics.get("f1"),
        nuclei=int(report.totals.get("nuclei", 0)),
        seconds=round(report.seconds, 2),
        report=report.report,
    )


def run_demo(
    out: Path,
    *,
    tiles: int = DEMO_TILES,
    seed: int = DEMO_SEED,
    translator: str = DEMO_TRANSLATOR,
    segmenter_weights: str = DEMO_SEGMENTER,
    device: DeviceManager | None = None,
    settings: Settings | None = None,
    provenance: Provenance | None = None,
) -> DemoReport:
    """Make the tiles, run the four routes, write ``out/demo.json``; see the module docstring."""
    from histostain.pipeline.run import run_pipeline
    from histostain.runtime.device import DeviceManager

    if tiles < 1:
        raise InputError(f"--tiles {tiles}: must be at least 1")
    out = Path(out)
    _check_out(out)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / DEMO_RECORD, json.dumps({"status": "running"}) + "\n")
    data = out / "data"
    for stale in (data, *(out / route for route in ROUTES)):
        shutil.rmtree(stale, ignore_errors=True)  # a fresh demo every time, in the demo's own folder only
    mpp = make_demo_tiles(data, tiles, DEMO_SIZE, seed)
    manager = device if device is not None else DeviceManager.create(exact_cpu=True)
    report = DemoReport(out_dir=str(out), data=str(data), mpp=mpp)
    for route, config in _configs(out, data, mpp, translator, segmenter_weights).items():
        result = run_pipeline(config, device=manager, settings=settings, overwrite=True, provenance=provenance)
        report.rows.append(_row(route, _describe(route, translator, segmenter_weights), result))
    report.seconds = round(time.perf_counter() - start, 2)
    atomic_write_text(out / DEMO_RECORD, json.dumps({"status": "finished", **report.to_dict()}, indent=2) + "\n")
    return report


__all__ = ["DEMO_SEGMENTER", "DEMO_TRANSLATOR", "DemoReport", "DemoRow", "make_demo_tiles", "run_demo"]
