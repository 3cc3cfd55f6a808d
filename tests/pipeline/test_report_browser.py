"""report.html opened by a real headless Chromium from disk: it renders (images and all) and shows the metrics.

Skipped when no Chromium is installed, unless HISTOSTAIN_REQUIRE_BROWSER=1 (set by .ci/run once it installed
chromium-headless-shell), in which case a missing browser is a failure.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histostain.io.images import write_image
from histostain.pipeline.report import write_report
from histostain.synth import generate_tile

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 60
METRICS = {"precision": 0.8765432, "recall": 0.5432109, "f1": 0.6707, "tp": 321, "fp": 45, "fn": 270, "radius_um": 6.0}


def _browser() -> str:
    """Path of a Chromium binary, or skip (fail under HISTOSTAIN_REQUIRE_BROWSER=1)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    message = f"no headless Chromium found (looked for {', '.join(BROWSERS)})"
    if os.environ.get("HISTOSTAIN_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " but HISTOSTAIN_REQUIRE_BROWSER=1")
    pytest.skip(message)


def _fabricate(root: Path, n: int = 3, size: int = 192) -> Path:
    """A run folder in the pipeline's layout: inputs, translated, overlays, detections with ground truth."""
    out = root / "out"
    rows = []
    for i in range(n):
        key = f"tile_{i:03d}"
        tile = generate_tile(i, size)
        image = write_image(root / "tiles" / f"{key}.png", tile.ihc)
        write_image(out / "translated" / f"{key}.png", tile.he)
        write_image(out / "nuclei" / f"{key}_overlay.png", np.vstack([tile.he, np.full((20, size, 3), 255, np.uint8)]))
        true = [[n_.x, n_.y] for n_ in tile.nuclei]
        matched = list(range(len(true) - 1 - i % 2))
        pred = [[true[t][0] + 1, true[t][1]] for t in matched] + [[size / 2, size / 3]]
        det = {"image": str(image.resolve()), "key": key, "mpp": 0.5, "pred": pred, "true": true}
        det |= {"areas_um2": [10.0 + t for t in range(len(pred))], "tp_true": matched, "tp_pred": matched}
        (out / "detections").mkdir(parents=True, exist_ok=True)
        (out / "detections" / f"{key}.json").write_text(json.dumps(det | {"radius_px": 12.0}))
        rows.append({"image": key, "nuclei": len(pred), "tp": len(matched)})
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "nuclei", "tp"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "metrics.json").write_text(json.dumps({"metric": "celldet", "summary": METRICS}))
    record = {"status": "complete", "provenance": {"command": ["histostain", "pipeline"], "histostain_version": "1"}}
    (out / "pipeline.json").write_text(json.dumps(record))
    return out


def _run(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the browser headless with a private profile (parallel runs must not share one)."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    browser = _browser()
    report = write_report(_fabricate(tmp_path), samples=3)
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    _run(browser, tmp_path / "profile", f"--screenshot={shot}", "--hide-scrollbars", "--window-size=1280,2000", url)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20
    packed = pixels.astype(np.uint32)
    colours = np.unique((packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2])
    assert len(colours) > 10_000, "only text and flat colours: the inline images did not render"
    dom = _run(browser, tmp_path / "profile", "--dump-dom", url).stdout
    for value in ("0.877", "0.543", "0.671", "321", "45", "270", "6 µm"):
        assert f">{value}<" in dom, value
    assert dom.count('src="data:image/') == 3 * 4
    assert "tile_002" in dom
