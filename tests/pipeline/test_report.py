"""report.html of `histostain pipeline`, built from fabricated output folders in the pipeline's exact layout."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from histostain.io.images import write_image
from histostain.pipeline import report
from histostain.pipeline.report import bin_edges, pick_samples, write_report
from histostain.synth import generate_tile

MPP = 0.5
LICENCE = "CC BY-NC-SA 4.0"

# --- a fabricated run folder ------------------------------------------------------------------------------


@dataclass
class FakeRun:
    """A fabricated output folder and the values it was built from (the expectations of the tests)."""

    out: Path
    keys: list[str]
    nuclei: dict[str, int] = field(default_factory=dict)
    f1: dict[str, float] = field(default_factory=dict)
    areas: list[float] = field(default_factory=list)
    inputs: dict[str, Path] = field(default_factory=dict)


def _record(truth: bool, translated: bool) -> dict[str, Any]:
    """A pipeline.json with every key the contract names."""
    translator = {
        "path": "/weights/cyclegan_ihc2he.pt",
        "sha256": "ab" * 32,
        "format": "histostain",
        "arch": "resnet_9blocks",
        "direction": "ihc2he",
        "model": {"name": "cyclegan-bci-ihc2he", "licence": "MIT"},
    }
    return {
        "status": "complete",
        "provenance": {
            "command": ["histostain", "pipeline", "--input", "tiles dir/", "--out", "out"],
            "histostain_version": "9.8.7",
            "created": "2030-01-02T03:04:05+00:00",
            "options": {"samples": 8, "ground_truth": "gt/" if truth else None, "translate": translated},
        },
        "settings": {"device": "cpu", "precision": "fp32"},
        "translator": translator if translated else None,
        "segmenter": {
            "model": "hovernet",
            "weights": {
                "path": "/weights/hovernet_pannuke.pt",
                "sha256": "cd" * 32,
                "format": "histostain",
                "model": {"name": "hovernet-pannuke", "licence": LICENCE},
            },
        },
    }


def _tile_detections(index: int, size: int, truth: bool, worst: int | None) -> tuple[dict[str, Any], list[Any]]:
    """Predictions derived from a synthetic tile's true centroids, with a varying number of misses and FPs."""
    tile = generate_tile(index, size)
    rng = np.random.default_rng(index)
    true = [[round(n.x, 2), round(n.y, 2)] for n in tile.nuclei]
    misses = len(true) if index == worst else min(index % 3, len(true) // 4)
    matched = list(range(max(0, len(true) - misses)))
    fps = 6 if index == worst else index % 2
    pred = [[true[t][0] + 1.0, true[t][1] - 1.0] for t in matched]
    pred += [[float(v) for v in rng.uniform(2, size - 2, 2)] for _ in range(fps)]
    areas: list[Any] = [round(tile.nuclei[t].area * MPP * MPP, 3) for t in matched]
    areas += [round(float(rng.uniform(5, 60)), 3) for _ in range(fps)]
    if areas and index % 2 == 1:
        areas[0] = None  # a nucleus without an area (null in the JSON)
    det = {
        "mpp": MPP,
        "pred": pred,
        "areas_um2": areas,
        "true": true if truth else None,
        "tp_true": matched if truth else [],
        "tp_pred": list(range(len(matched))) if truth else [],
        "radius_px": 12.0 if truth else None,
    }
    return det, [tile.ihc, tile.he]


def fabricate_run(
    root: Path,
    *,
    n: int = 4,
    size: int = 64,
    truth: bool = True,
    translated: bool = True,
    keys: list[str] | None = None,
    worst: int | None = None,
) -> FakeRun:
    """Write tiles/ (inputs) and out/ in the pipeline's layout; returns the values it was built from."""
    out = root / "out"
    keys = keys or [f"tile_{i:03d}" for i in range(n)]
    run = FakeRun(out=out, keys=keys)
    rows, totals = [], {"tp": 0, "fp": 0, "fn": 0}
    for index, key in enumerate(keys):
        det, (ihc, he) = _tile_detections(index, size, truth, worst)
        image = root / "tiles" / f"{key}.png"
        write_image(image, ihc)
        run.inputs[key] = image
        if translated:
            write_image(out / "translated" / f"{key}.png", he)
        legend = np.full((24, he.shape[1], 3), 255, np.uint8)
        write_image(out / "nuclei" / f"{key}_overlay.png", np.vstack([he, legend]))
        det = {"image": str(image.resolve()), "key": key, **det}
        target = out / "detections" / f"{key}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(det))
        run.nuclei[key] = len(det["pred"])
        run.areas += [a for a in det["areas_um2"] if a is not None]
        row: dict[str, Any] = {"image": key, "nuclei": len(det["pred"]), "neoplastic": len(det["pred"]) // 2}
        row |= {"mean_area_um2": 21.5, "positive_percent": 10.0 * index, "h_score": "" if index == 1 else 50 + index}
        if truth:
            tp = len(det["tp_pred"])
            fp, fn = len(det["pred"]) - tp, len(det["true"]) - tp
            f1 = 2 * tp / (2 * tp + fp + fn)
            run.f1[key] = f1
            row |= {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}
            row["f1"] = f1
            totals = {"tp": totals["tp"] + tp, "fp": totals["fp"] + fp, "fn": totals["fn"] + fn}
        rows.append(row)
    _write_summary(out / "summary.csv", rows)
    (out / "pipeline.json").write_text(json.dumps(_record(truth, translated)))
    if truth:
        metrics = {
            "metric": "celldet",
            "summary": {"precision": 0.8123456, "recall": 0.6666666, "f1": 0.7323, "radius_um": 6.0, **totals},
            "per_image": {},
        }
        (out / "metrics.json").write_text(json.dumps(metrics))
    return run


def _write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """summary.csv with the union of the rows' columns, in first-seen order."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# --- a small DOM for the checks ---------------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def all_text(self) -> str:
        return "".join(self.text) + "".join(child.all_text() for child in self.children)

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if child.tag == tag and (cls is None or cls in child.attrs.get("class", "").split()):
                found.append(child)
            found += child.find_all(tag, cls)
        return found


_VOID = {"img", "meta", "br", "hr", "input", "link", "line"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse(page: str) -> Node:
    """Parse the page strictly: every element must be closed in order."""
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def decode(uri: str) -> np.ndarray:
    """A data: URI image as an RGB array."""
    assert uri.startswith("data:image/")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def sample_panels(dom: Node) -> dict[str, dict[str, Node]]:
    """{key: {panel name: figure node}} of the sample section."""
    result = {}
    for sample in dom.find_all("div", "sample"):
        result[sample.attrs["data-key"]] = {
            fig.attrs["class"].removeprefix("panel-"): fig for fig in sample.find_all("figure")
        }
    return result


def section(dom: Node, name: str) -> Node:
    """The <section id=name>."""
    return next(node for node in dom.find_all("section") if node.attrs.get("id") == name)


def build(run: FakeRun, samples: int = 8) -> tuple[str, Node]:
    path = write_report(run.out, samples=samples)
    assert path == run.out / "report.html"
    page = path.read_text(encoding="utf-8")
    return page, parse(page)


def expected_counts(values: list[float] | np.ndarray) -> np.ndarray:
    """Bar heights computed independently: numpy's 'auto' bins, or 30 equal bins when 'auto' wants more."""
    values = np.asarray(values, dtype=float)
    edges = np.histogram_bin_edges(values, bins="auto")
    if len(edges) - 1 > 30:
        edges = np.histogram_bin_edges(values, bins=30)
    return np.histogram(values, bins=edges)[0]


# --- tests ------------------------------------------------------------------------------------------------


def test_page_is_self_contained_and_parses(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=5)
    page, dom = build(run)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?!data:)[a-z]+:""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(?!data:)", page)
    assert "<script" not in page.lower() and "@import" not in page and "@font-face" not in page
    images = dom.find_all("img")
    assert images, "no images on the page"
    assert all(img.attrs["src"].startswith("data:image/") for img in images)
    assert not dom.find_all("link")
    assert not list(run.out.glob(".report.html.*")), "temporary file left behind"


def test_header_and_run_record(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=2)
    _, dom = build(run)
    header = dom.find_all("header")[0].all_text()
    assert "complete" in header and "9.8.7" in header and "2030-01-02T03:04:05+00:00" in header
    assert "histostain pipeline --input 'tiles dir/' --out out" in header
    record = section(dom, "record")
    text = record.all_text()
    for expected in ("hovernet-pannuke", "/weights/hovernet_pannuke.pt", "cd" * 32, "cyclegan-bci-ihc2he", "ab" * 32):
        assert expected in text
    licences = record.find_all("span", "licence")
    assert [node.all_text() for node in licences if "nc" in node.attrs["class"].split()] == [LICENCE]
    assert "non-commercial" in text
    assert "ground_truth" in text and "gt/" in text and "precision" in text and "fp32" in text


def test_metrics_table_formats_metrics_json(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=3)
    _, dom = build(run)
    metrics = json.loads((run.out / "metrics.json").read_text())["summary"]
    table = dom.find_all("table", "metrics")[0]
    cells = {row.find_all("th")[0].all_text(): row.find_all("td")[0].all_text() for row in table.find_all("tr")}
    assert cells["precision"] == f"{metrics['precision']:.3f}" == "0.812"
    assert cells["recall"] == "0.667"
    assert cells["F1"] == "0.732"
    assert (cells["TP"], cells["FP"], cells["FN"]) == tuple(str(metrics[k]) for k in ("tp", "fp", "fn"))
    assert cells["match radius"] == "6 µm"
    counts = section(dom, "metrics").all_text()
    assert f"{sum(run.nuclei.values())}" in counts
    assert f"{np.mean(list(run.nuclei.values())):.1f}" in counts
    assert f"{np.mean([0.0, 10.0, 20.0]):.1f}" in counts  # mean positive %
    assert f"{np.mean([50, 52]):.1f}" in counts  # mean H-score, the empty cell skipped


def test_per_image_table_lists_every_key(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=6)
    _, dom = build(run, samples=2)
    table = dom.find_all("table", "grid")[0]
    header = [th.all_text() for th in table.find_all("th")]
    assert header[:3] == ["image", "nuclei", "neoplastic"] and "f1" in header
    rows = [[td.all_text() for td in tr.find_all("td")] for tr in table.find_all("tr")[1:]]
    assert [row[0] for row in rows] == run.keys
    assert [int(row[1]) for row in rows] == [run.nuclei[k] for k in run.keys]


def test_per_image_table_is_capped_at_500_rows(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _write_summary(out / "summary.csv", [{"image": f"t{i:04d}", "nuclei": i % 7} for i in range(620)])
    page = write_report(out, samples=3).read_text()
    dom = parse(page)
    assert len(dom.find_all("table", "grid")[0].find_all("tr")) == 1 + 500
    assert "first 500 of 620" in page


def test_histograms_have_the_numpy_bins(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=7)
    _, dom = build(run, samples=1)
    for css, values in (("hist-nuclei", list(run.nuclei.values())), ("hist-areas", run.areas)):
        bars = dom.find_all("div", css)[0].find_all("rect", "bar")
        counts = [int(bar.attrs["data-count"]) for bar in bars]
        assert counts == expected_counts(values).tolist(), css
        assert sum(counts) == len(values)
        heights = [float(bar.attrs["height"]) for bar in bars]
        assert heights.index(max(heights)) == counts.index(max(counts))
    text = section(dom, "histograms").all_text()
    assert "nucleus area (µm²)" in text and "nuclei per image" in text


@pytest.mark.parametrize("seed", range(6))
def test_bin_edges_match_numpy_auto_capped(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = [rng.uniform(0, 50, 40), rng.normal(30, 5, 100_000), rng.poisson(3, 500).astype(float)][seed % 3]
    expected = np.histogram_bin_edges(values, bins="auto")
    if len(expected) - 1 > 30:
        expected = np.histogram_bin_edges(values, bins=30)
    np.testing.assert_allclose(bin_edges(values), expected)


def test_bin_edges_survive_an_outlier_and_a_constant() -> None:
    values = np.concatenate([np.linspace(20, 20.001, 10_000), [1e12]])
    start = time.perf_counter()
    assert len(bin_edges(values)) <= 31
    assert time.perf_counter() - start < 1
    np.testing.assert_allclose(bin_edges(np.array([4.0, 4.0])), [3.5, 4.5])


def test_empty_histograms_say_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "detections").mkdir(parents=True)
    (out / "detections" / "a.json").write_text(json.dumps({"key": "a", "pred": [], "areas_um2": [], "true": None}))
    dom = parse(write_report(out).read_text())
    areas = dom.find_all("div", "hist-areas")[0]
    assert "no nuclei" in areas.all_text() and not areas.find_all("rect")
    bars = dom.find_all("div", "hist-nuclei")[0].find_all("rect", "bar")
    assert [bar.attrs["data-count"] for bar in bars] == ["1"]  # one image, with zero nuclei


def test_sample_includes_worst_f1_tile() -> None:
    keys = [f"k{i:02d}" for i in range(12)]
    f1s = {key: 0.9 for key in keys} | {"k03": 0.1}
    picked = pick_samples(keys, 3, f1s)
    assert len(picked) == 3 and ("k03", True) in picked
    assert [k for k, _ in pick_samples(keys, 3, {})] == ["k00", "k06", "k11"]
    assert [k for k, _ in pick_samples(keys, 50, {})] == keys
    assert pick_samples(keys, 0, f1s) == [] and pick_samples([], 4, f1s) == []


def test_page_samples_the_worst_tile(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=9, size=64, worst=4)
    assert run.f1["tile_004"] < min(f1 for key, f1 in run.f1.items() if key != "tile_004")
    _, dom = build(run, samples=3)
    samples = dom.find_all("div", "sample")
    assert [s.attrs["data-key"] for s in samples] == ["tile_000", "tile_004", "tile_008"]
    label = samples[1].find_all("h3")[0].all_text()
    assert "worst F1" in label and f"{run.f1['tile_004']:.3f}" in label and f"{run.nuclei['tile_004']} nuclei" in label


def test_worst_tile_from_detections_when_summary_has_no_f1(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=9, size=64, worst=2)
    (run.out / "summary.csv").write_text("image,nuclei\n" + "".join(f"{k},{run.nuclei[k]}\n" for k in run.keys))
    _, dom = build(run, samples=3)
    assert "tile_002" in [s.attrs["data-key"] for s in dom.find_all("div", "sample")]


def test_panels_with_and_without_translation(tmp_path: Path) -> None:
    with_t = fabricate_run(tmp_path / "a", n=2, translated=True)
    without = fabricate_run(tmp_path / "b", n=2, translated=False)
    panels = sample_panels(build(with_t)[1])
    assert all(list(p) == ["input", "translated", "overlay", "matches"] for p in panels.values())
    overlay = decode(panels["tile_000"]["overlay"].find_all("img")[0].attrs["src"])
    assert overlay.shape[0] > overlay.shape[1]  # the legend strip below the image is kept
    panels = sample_panels(build(without)[1])
    assert all(list(p) == ["input", "overlay", "matches"] for p in panels.values())


def test_matches_panel_is_drawn_on_translated_image(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=1, size=64)
    panels = sample_panels(build(run)[1])["tile_000"]
    matches = decode(panels["matches"].find_all("img")[0].attrs["src"]).astype(int)
    det = json.loads((run.out / "detections" / "tile_000.json").read_text())
    he = np.asarray(Image.open(run.out / "translated" / "tile_000.png").convert("RGB")).astype(int)
    ihc = np.asarray(Image.open(run.inputs["tile_000"]).convert("RGB")).astype(int)
    untouched = np.ones(matches.shape[:2], bool)
    for x, y in det["pred"] + det["true"]:
        untouched[max(0, int(y) - 7) : int(y) + 8, max(0, int(x) - 7) : int(x) + 8] = False
    assert untouched.sum() > 100
    to_he, to_ihc = np.abs(matches - he)[untouched].mean(), np.abs(matches - ihc)[untouched].mean()
    assert to_he < 6 and to_he * 4 < to_ihc  # JPEG noise, not another image


def _marker_fixture(tmp_path: Path, truth: bool) -> Path:
    """One 400 px tile (downscaled to 320) with one TP, one FP and one FN far apart."""
    out = tmp_path / "out"
    image = tmp_path / "tiles" / "m.png"
    write_image(image, np.full((400, 400, 3), 128, np.uint8))
    write_image(out / "nuclei" / "m_overlay.png", np.full((424, 400, 3), 128, np.uint8))
    det = {
        "image": str(image),
        "key": "m",
        "mpp": MPP,
        "pred": [[100.0, 100.0], [300.0, 100.0]],
        "areas_um2": [20.0, None],
        "true": [[102.0, 99.0], [100.0, 300.0]] if truth else None,
        "tp_true": [0] if truth else [],
        "tp_pred": [0] if truth else [],
        "radius_px": 6.0,
    }
    (out / "detections").mkdir(parents=True)
    (out / "detections" / "m.json").write_text(json.dumps(det))
    return out


def _colour_near(panel: np.ndarray, x: float, y: float, colour: str, scale: float = 0.8) -> int:
    """How many pixels of ``colour`` lie within 7 display pixels of input point (x, y)."""
    cx, cy = round((x + 0.5) * scale - 0.5), round((y + 0.5) * scale - 0.5)
    window = panel[cy - 7 : cy + 8, cx - 7 : cx + 8].astype(int)
    r, g, b = window[..., 0], window[..., 1], window[..., 2]
    masks = {
        "green": (g > 180) & (r < 90) & (b < 90),
        "red": (r > 200) & (g < 90) & (b < 90),
        "cyan": (g > 180) & (b > 180) & (r < 90),
        "yellow": (r > 200) & (g > 160) & (b < 90),
    }
    return int(masks[colour].sum())


def test_matches_panel_marks_tp_fp_fn(tmp_path: Path) -> None:
    out = _marker_fixture(tmp_path, truth=True)
    panels = sample_panels(parse(write_report(out).read_text()))["m"]
    panel = decode(panels["matches"].find_all("img")[0].attrs["src"])
    assert panel.shape == (320, 320, 3)
    assert _colour_near(panel, 100, 100, "green") >= 8
    assert _colour_near(panel, 300, 100, "red") >= 8
    assert _colour_near(panel, 100, 300, "cyan") >= 8
    assert _colour_near(panel, 100, 100, "cyan") == _colour_near(panel, 100, 100, "red") == 0
    assert _colour_near(panel, 300, 100, "green") == _colour_near(panel, 100, 300, "green") == 0
    assert _colour_near(panel, 250, 300, "green") + _colour_near(panel, 250, 300, "red") == 0
    caption = panels["matches"].find_all("figcaption")[0].all_text()
    assert "TP" in caption and "FP" in caption and "FN" in caption


def test_matches_panel_without_truth_shows_predictions(tmp_path: Path) -> None:
    out = _marker_fixture(tmp_path, truth=False)
    page = write_report(out).read_text()
    panel = decode(sample_panels(parse(page))["m"]["matches"].find_all("img")[0].attrs["src"])
    assert _colour_near(panel, 100, 100, "yellow") >= 8 and _colour_near(panel, 300, 100, "yellow") >= 8
    assert _colour_near(panel, 100, 300, "cyan") == 0
    assert "no ground truth" in page


def test_unreadable_input_gives_placeholder(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=2, translated=False)
    run.inputs["tile_001"].write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _, dom = build(run)
    panels = sample_panels(dom)["tile_001"]
    assert not panels["input"].find_all("img") and panels["input"].find_all("div", "placeholder")
    assert "tile_001.png" in panels["input"].all_text()
    assert panels["overlay"].find_all("img")  # the rest of the row is still there
    assert not panels["matches"].find_all("img")  # nothing to draw on
    assert sample_panels(dom)["tile_000"]["input"].find_all("img")


def test_missing_optional_files_do_not_crash(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=3, translated=False)
    for name in ("metrics.json", "pipeline.json"):
        (run.out / name).unlink()
    (run.out / "nuclei" / "tile_000_overlay.png").unlink()
    (run.out / "detections" / "tile_001.json").unlink()
    (run.out / "detections" / "tile_002.json").write_text("{not json")
    _, dom = build(run)
    panels = sample_panels(dom)
    assert panels["tile_000"]["overlay"].find_all("div", "placeholder")
    assert panels["tile_001"]["input"].find_all("div", "placeholder")
    assert "pipeline.json is missing" in dom.all_text()
    assert [row.find_all("td")[0].all_text() for row in dom.find_all("table", "grid")[0].find_all("tr")[1:]] == run.keys


def test_empty_folder_still_gives_a_page(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    dom = parse(write_report(tmp_path / "out").read_text())
    assert "no images" in dom.all_text()


def test_partial_record_is_rendered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.json").write_text(
        json.dumps({"status": "failed", "segmenter": {"model": "classical", "weights": None}})
    )
    text = parse(write_report(out).read_text()).all_text()
    assert "failed" in text and "classical" in text and "no weights" in text


def test_text_is_escaped(tmp_path: Path) -> None:
    key = "x<b>y"
    run = fabricate_run(tmp_path, n=2, keys=["a_tile", key])
    page, dom = build(run)
    assert "<b>y" not in page and "x&lt;b&gt;y" in page
    assert not [b for b in dom.find_all("b") if b.all_text() == "y"]
    cells = [row.find_all("td")[0].all_text() for row in dom.find_all("table", "grid")[0].find_all("tr")[1:]]
    assert cells == ["a_tile", key]
    assert key in sample_panels(dom)


def test_keys_in_sub_folders(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path, n=2, keys=["sub/tile_a", "tile_b"], translated=True)
    panels = sample_panels(build(run)[1])
    assert list(panels["sub/tile_a"]) == ["input", "translated", "overlay", "matches"]
    assert panels["sub/tile_a"]["overlay"].find_all("img")


def test_thousand_images_decode_only_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    image = tmp_path / "tile.png"
    write_image(image, generate_tile(0, 256).ihc)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1000):
        key = f"tile_{i:04d}"
        pred = rng.uniform(0, 256, (60, 2)).round(1).tolist()
        true = rng.uniform(0, 256, (55, 2)).round(1).tolist()
        det = {"image": str(image), "key": key, "mpp": MPP, "pred": pred, "areas_um2": rng.uniform(10, 80, 60).tolist()}
        det |= {"true": true, "tp_true": list(range(50)), "tp_pred": list(range(50)), "radius_px": 12.0}
        path = out / "detections" / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(det))
        write_image(out / "nuclei" / f"{key}_overlay.png", np.zeros((40, 32, 3), np.uint8)) if i < 3 else None
        rows.append({"image": key, "nuclei": 60, "tp": 50, "fp": 10, "fn": 5, "f1": 0.8 if i != 517 else 0.2})
    _write_summary(out / "summary.csv", rows)
    calls = []
    real = report.read_image
    monkeypatch.setattr(report, "read_image", lambda path: calls.append(path) or real(path))
    start = time.perf_counter()
    page = write_report(out, samples=8).read_text()
    elapsed = time.perf_counter() - start
    assert elapsed < 10
    assert len(calls) <= 8 * 3
    assert 'data-key="tile_0517"' in page and "first 500 of 1000" in page
