"""``report.html`` of ``histostain pipeline``: one self-contained page to look at a run with nothing but a browser.

The page is built only from the files of the output folder (``pipeline.json``, ``summary.csv``,
``metrics.json``, ``detections/``, ``translated/``, ``nuclei/``), so it can be rebuilt after a resumed run and
never depends on what the process still holds in memory. Every image is inlined as a ``data:`` URI and the CSS
is inline: the file can be mailed or archived on its own and opens from disk without network access.

Only the sampled tiles are decoded; the histograms and the per-image table come from ``summary.csv`` and the
small detection JSONs, so a report of a 1,000-image run takes about a second.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from histostain.errors import HistostainError
from histostain.io.atomic import atomic_write_text
from histostain.io.images import read_image

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PANEL_MAX_SIDE = 320  # longest side of a sample panel, in CSS pixels
TABLE_MAX_ROWS = 500  # the per-image table stays readable (and the page small) for big runs
MAX_BINS = 30
JPEG_QUALITY = 85
MARK_RADIUS = 4  # marker radius in display pixels
TP_COLOUR = (0, 230, 0)
FP_COLOUR = (255, 40, 40)
FN_COLOUR = (0, 220, 255)
PRED_COLOUR = (255, 210, 0)
_NON_COMMERCIAL = ("-NC", " NC", "NON-COMMERCIAL", "NONCOMMERCIAL")


@dataclass
class RunFolder:
    """What the report needs from the output folder, read once."""

    out_dir: Path
    record: dict[str, Any]
    metrics: dict[str, Any] | None
    columns: list[str]
    rows: list[dict[str, str]]
    detections: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """Image keys: the summary's rows (the run's own list), else the detection files found."""
        keys = [row.get("image", "") for row in self.rows if row.get("image")]
        return sorted(set(keys) if keys else set(self.detections))


def write_report(out_dir: str | Path, *, samples: int = 8) -> Path:
    """Write ``out_dir/report.html`` atomically from the files in ``out_dir`` and return its path."""
    run = read_run_folder(Path(out_dir))
    return atomic_write_text(run.out_dir / REPORT_NAME, render_report(run, samples=samples))


# --- reading the folder ----------------------------------------------------------------------------------


def read_run_folder(out_dir: Path) -> RunFolder:
    """Read the run record, metrics, summary and detections; anything missing or broken becomes a note."""
    notes: list[str] = []
    record = _load_json(out_dir / "pipeline.json", notes)
    metrics = _load_json(out_dir / "metrics.json", notes, optional=True)
    columns, rows = _read_summary(out_dir / "summary.csv", notes)
    detections = _read_detections(out_dir / "detections", notes)
    return RunFolder(
        out_dir=out_dir,
        record=record if isinstance(record, dict) else {},
        metrics=metrics if isinstance(metrics, dict) else None,
        columns=columns,
        rows=rows,
        detections=detections,
        notes=notes,
    )


def _load_json(path: Path, notes: list[str], optional: bool = False) -> Any:
    """Parse a JSON file; a missing or malformed one is noted (not raised) so the page is still written."""
    if not path.is_file():
        if not optional:
            notes.append(f"{path.name} is missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return None


def _read_summary(path: Path, notes: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of summary.csv (strings as written; empty values stay empty)."""
    if not path.is_file():
        notes.append(f"{path.name} is missing")
        return [], []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = [{k: v or "" for k, v in row.items() if k is not None} for row in reader]
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return [], []


def _read_detections(folder: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """All ``detections/<key>.json`` files by key (keys may contain sub-folders)."""
    found: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return found
    broken = 0
    for path in sorted(folder.rglob("*.json")):
        if path.name.startswith("."):  # a temporary file of an interrupted atomic write
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            broken += 1
            continue
        if isinstance(data, dict):
            key = data.get("key") or path.relative_to(folder).with_suffix("").as_posix()
            found[str(key)] = data
    if broken:
        notes.append(f"{broken} detection file(s) could not be read")
    return found


# --- numbers ---------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float from a CSV cell or JSON value, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _column(rows: Iterable[dict[str, str]], name: str) -> list[float]:
    """The numeric values of one summary column (empty and non-numeric cells skipped)."""
    return [v for v in (_number(row.get(name)) for row in rows) if v is not None]


def _points(value: Any) -> list[tuple[float, float]]:
    """``[[x, y], ...]`` as float pairs; malformed entries are dropped (they cannot be drawn)."""
    points = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            x, y = _number(item[0]), _number(item[1])
            if x is not None and y is not None:
                points.append((x, y))
    return points


def _indices(value: Any) -> set[int]:
    """A set of integer indices from a JSON list (anything else is empty)."""
    return (
        {int(i) for i in value if isinstance(i, int) and not isinstance(i, bool)} if isinstance(value, list) else set()
    )


def detection_f1(det: dict[str, Any]) -> float | None:
    """F1 of one image from its detection file; None without ground truth or with nothing to score."""
    if det.get("true") is None:
        return None
    tp = len(_indices(det.get("tp_pred")))
    fp = len(det.get("pred") or []) - tp
    fn = len(det.get("true") or []) - tp
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else None


def f1_by_key(run: RunFolder) -> dict[str, float]:
    """Per-image F1: summary.csv's ``f1`` column where present, else computed from the detection files."""
    scores: dict[str, float] = {}
    for row in run.rows:
        value = _number(row.get("f1"))
        if value is not None and row.get("image"):
            scores[row["image"]] = value
    for key, det in run.detections.items():
        if key not in scores and (value := detection_f1(det)) is not None:
            scores[key] = value
    return scores


def pick_samples(keys: Sequence[str], samples: int, f1s: dict[str, float]) -> list[tuple[str, bool]]:
    """Up to ``samples`` keys evenly spread over the sorted keys, always including the worst-F1 image.

    The worst image replaces the evenly spread pick nearest to it, so the sample keeps its size and spread.
    Returns ``(key, is_worst)`` pairs in key order.
    """
    ordered = sorted(keys)
    if samples <= 0 or not ordered:
        return []
    picks = {int(i) for i in np.linspace(0, len(ordered) - 1, min(samples, len(ordered))).round()}
    scored = [key for key in ordered if key in f1s]
    worst = min(scored, key=lambda key: (f1s[key], key)) if scored else None
    if worst is not None:
        position = ordered.index(worst)
        if position not in picks:
            picks.remove(min(picks, key=lambda i: (abs(i - position), i)))
            picks.add(position)
    return [(ordered[i], ordered[i] == worst) for i in sorted(picks)]


def bin_edges(values: np.ndarray, max_bins: int = MAX_BINS) -> np.ndarray:
    """numpy's 'auto' bin edges, capped at ``max_bins`` bins.

    Computed from the 'auto' bin width directly rather than with ``np.histogram_bin_edges(..., 'auto')``,
    which first materialises every edge: one outlier among tightly clustered areas can ask for millions.
    """
    low, high = float(values.min()), float(values.max())
    if low == high:
        return np.array([low - 0.5, high + 0.5])
    count = values.size
    sturges = (high - low) / (math.log2(count) + 1.0)
    q75, q25 = np.percentile(values, [75, 25])
    fd = 2.0 * float(q75 - q25) * count ** (-1.0 / 3.0)
    width = min(fd, sturges) if fd > 0 else sturges
    bins = min(max_bins, max(1, math.ceil((high - low) / width)))
    return np.linspace(low, high, bins + 1)


def nucleus_areas(detections: dict[str, dict[str, Any]]) -> np.ndarray:
    """Every nucleus area in µm² over all detection files, nulls and non-finite values skipped."""
    areas = [
        value for det in detections.values() for value in map(_number, det.get("areas_um2") or []) if value is not None
    ]
    return np.asarray(areas, dtype=np.float64)


def nuclei_per_image(run: RunFolder) -> np.ndarray:
    """Nuclei per image from summary.csv, or from the detection files when there is no summary."""
    if run.rows:
        return np.asarray(_column(run.rows, "nuclei"), dtype=np.float64)
    return np.asarray([len(det.get("pred") or []) for det in run.detections.values()], dtype=np.float64)


# --- formatting ------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    """Escaped text of any value (None becomes an empty string)."""
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    """Ints as ints, other numbers with ``digits`` decimals, anything else as text (not yet escaped)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _fmt_cell(text: str) -> str:
    """A summary.csv cell for display: integers unchanged, decimals to 3 places, text as is."""
    stripped = text.strip()
    try:
        return str(int(stripped))
    except ValueError:
        number = _number(stripped)
        return f"{number:.3f}" if number is not None else text


def _tick(value: float) -> str:
    """A short axis label."""
    return f"{value:.4g}"


def _table(rows: Iterable[tuple[str, str]], css: str = "kv") -> str:
    """A two-column key/value table; both cells must already be escaped HTML."""
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{css}">{body}</table>'


# --- images ----------------------------------------------------------------------------------------------


def _read(path: Path | None) -> tuple[np.ndarray | None, str]:
    """Decode an image for a panel; an unreadable one gives ``(None, reason)`` instead of an exception."""
    if path is None:
        return None, "no path recorded"
    if not path.is_file():
        return None, f"missing: {path.name}"
    try:
        return read_image(path), ""
    except HistostainError as exc:
        return None, exc.one_line()
    except (OSError, ValueError, MemoryError) as exc:  # belt and braces: a report never fails on one image
        return None, f"unreadable: {exc}"


def downscale(image: np.ndarray, max_side: int = PANEL_MAX_SIDE) -> tuple[Image.Image, float]:
    """Area-averaged downscale so the longest side is at most ``max_side``; returns the image and its scale."""
    pil = Image.fromarray(image)
    scale = min(1.0, max_side / max(pil.width, pil.height))
    if scale < 1.0:
        size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(size, Image.Resampling.BOX)
    return pil, scale


def data_uri(image: Image.Image, fmt: str = "JPEG", *, sharp_colour: bool = False) -> str:
    """The image as an inline ``data:`` URI: JPEG quality 85 keeps the page small (a PNG of tissue is ~5x larger).

    ``sharp_colour`` turns off chroma subsampling, so thin coloured markers keep their hue (about 1.5x the bytes).
    """
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0 if sharp_colour else -1)
    else:
        image.save(buffer, format="PNG")
    mime = "jpeg" if fmt == "JPEG" else "png"
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def draw_matches(image: np.ndarray, det: dict[str, Any]) -> Image.Image:
    """The downscaled image with TP predictions green, FP red and missed true nuclei (FN) cyan.

    Without ground truth every prediction is drawn in yellow. Markers have a fixed display size, so they
    stay visible whatever the input resolution.
    """
    pil, scale = downscale(image)
    pil = pil.convert("RGB")
    draw = ImageDraw.Draw(pil)
    pred = _points(det.get("pred"))
    truth = det.get("true")
    if truth is None:
        for point in pred:
            _circle(draw, point, scale, PRED_COLOUR)
        return pil
    matched_pred, matched_true = _indices(det.get("tp_pred")), _indices(det.get("tp_true"))
    for i, point in enumerate(_points(truth)):
        if i not in matched_true:
            _cross(draw, point, scale, FN_COLOUR)
    for j, point in enumerate(pred):
        _circle(draw, point, scale, TP_COLOUR if j in matched_pred else FP_COLOUR)
    return pil


def _display(point: tuple[float, float], scale: float) -> tuple[float, float]:
    """Input-pixel centre -> display-pixel centre."""
    return (point[0] + 0.5) * scale - 0.5, (point[1] + 0.5) * scale - 0.5


def _circle(draw: ImageDraw.ImageDraw, point: tuple[float, float], scale: float, colour: tuple[int, ...]) -> None:
    """A ring marker (a prediction)."""
    x, y = _display(point, scale)
    r = MARK_RADIUS
    draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=2)


def _cross(draw: ImageDraw.ImageDraw, point: tuple[float, float], scale: float, colour: tuple[int, ...]) -> None:
    """A cross marker (a missed true nucleus), so it reads differently from the rings even in grey."""
    x, y = _display(point, scale)
    r = MARK_RADIUS
    draw.line((x - r, y, x + r, y), fill=colour, width=2)
    draw.line((x, y - r, x, y + r), fill=colour, width=2)


# --- page sections ---------------------------------------------------------------------------------------


def _figure(name: str, caption: str, uri: str | None, problem: str = "") -> str:
    """One panel: the image, or a grey placeholder naming the problem; caption is escaped HTML."""
    if uri is None:
        body = f'<div class="placeholder">{_esc(problem or "not available")}</div>'
    else:
        body = f'<img class="panel" data-panel="{name}" src="{uri}" alt="{_esc(name)}">'
    return f'<figure class="panel-{name}">{body}<figcaption>{caption}</figcaption></figure>'


def _legend(has_truth: bool) -> str:
    """The matches panel's tiny legend."""

    def swatch(colour: tuple[int, int, int], label: str) -> str:
        return f'<span class="sw" style="background:rgb{colour}"></span>{label}'

    if not has_truth:
        return swatch(PRED_COLOUR, "predictions (no ground truth)")
    return " ".join([swatch(TP_COLOUR, "TP"), swatch(FP_COLOUR, "FP"), swatch(FN_COLOUR, "FN (missed)")])


def _sample_row(run: RunFolder, key: str, worst: bool, f1s: dict[str, float], counts: dict[str, str]) -> str:
    """One sampled image: input | translated | overlay | matches, labelled with key, nuclei and F1."""
    det = run.detections.get(key, {})
    image_path = Path(det["image"]) if isinstance(det.get("image"), str) else None
    source, problem = _read(image_path)
    translated_path = run.out_dir / "translated" / f"{key}.png"
    translated, translated_problem = _read(translated_path) if translated_path.is_file() else (None, "")
    overlay, overlay_problem = _read(run.out_dir / "nuclei" / f"{key}_overlay.png")
    panels = [_figure("input", "input", _uri(source), problem)]
    if translated_path.is_file():
        panels.append(_figure("translated", "translated (H&amp;E)", _uri(translated), translated_problem))
    panels.append(_figure("overlay", "nuclei overlay", _uri(overlay), overlay_problem))
    base = translated if translated is not None else source
    matches = data_uri(draw_matches(base, det), sharp_colour=True) if base is not None and det else None
    has_truth = det.get("true") is not None
    panels.append(_figure("matches", _legend(has_truth), matches, problem or "no detections file"))
    nuclei = counts.get(key) or str(len(det.get("pred") or []))
    label = f"<b>{_esc(key)}</b> · {_esc(nuclei)} nuclei"
    if key in f1s:
        label += f" · F1 {f1s[key]:.3f}"
    if worst:
        label += ' <span class="badge warn">worst F1</span>'
    return (
        f'<div class="sample" data-key="{_esc(key)}"><h3>{label}</h3><div class="panels">{"".join(panels)}</div></div>'
    )


def _uri(image: np.ndarray | None) -> str | None:
    """A downscaled JPEG data URI of a decoded image, or None."""
    return None if image is None else data_uri(downscale(image)[0], "JPEG")


def samples_section(run: RunFolder, samples: int) -> str:
    """Section 3: the sampled tiles (only these images are decoded)."""
    f1s = f1_by_key(run)
    picks = pick_samples(run.keys, samples, f1s)
    if not picks:
        return '<section id="samples"><h2>Sample tiles</h2><p class="empty">no images</p></section>'
    counts = {row.get("image", ""): row.get("nuclei", "") for row in run.rows}
    rows = "".join(_sample_row(run, key, worst, f1s, counts) for key, worst in picks)
    intro = f"{len(picks)} of {len(run.keys)} images, evenly spread over the sorted keys"
    if any(worst for _, worst in picks):
        intro += ", plus the image with the worst F1"
    return f'<section id="samples"><h2>Sample tiles</h2><p class="note">{_esc(intro)}.</p>{rows}</section>'


def header_section(run: RunFolder) -> str:
    """Section 1: title, status, version, creation time and command line."""
    record, provenance = run.record, _dict(run.record.get("provenance"))
    status = str(record.get("status", "unknown"))
    css = "ok" if status.lower() in {"ok", "complete", "completed", "done", "finished", "success"} else "warn"
    facts = [
        ("status", f'<span class="badge {css}">{_esc(status)}</span>'),
        ("histostain", _esc(provenance.get("histostain_version", "unknown"))),
        ("created", _esc(provenance.get("created", "unknown"))),
        ("command", f"<code>{_esc(_command_line(provenance.get('command')))}</code>"),
        ("folder", f"<code>{_esc(run.out_dir.resolve())}</code>"),
    ]
    notes = "".join(f'<p class="note warn">{_esc(note)}</p>' for note in run.notes)
    return f"<header><h1>histostain pipeline report</h1>{_table(facts)}{notes}</header>"


def _command_line(command: Any) -> str:
    """The recorded argv as one shell-quoted line."""
    if isinstance(command, list):
        return shlex.join(str(part) for part in command)
    return "" if command is None else str(command)


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (the record may be partial)."""
    return value if isinstance(value, dict) else {}


def metrics_section(run: RunFolder) -> str:
    """Section 2: detection metrics against ground truth (metrics.json) and overall counts (summary.csv)."""
    parts = ['<section id="metrics"><h2>Results</h2><div class="cols">']
    summary = _dict((run.metrics or {}).get("summary"))
    if summary:
        parts.append(f"<div><h3>Detection against ground truth</h3>{_table(_metric_rows(summary), 'kv metrics')}</div>")
    elif run.metrics is None:
        parts.append('<div><h3>Detection against ground truth</h3><p class="empty">no ground truth</p></div>')
    parts.append(f"<div><h3>Counts</h3>{_table(_count_rows(run))}</div></div></section>")
    return "".join(parts)


def _metric_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The metrics table: precision/recall/F1 to 3 decimals, counts as ints, the matching radius, the rest."""
    rows: list[tuple[str, str]] = []
    for name, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
        if name in summary:  # null when undefined (precision without any prediction)
            value = _number(summary[name])
            rows.append((label, "n/a" if value is None else f"{value:.3f}"))
    for name in ("tp", "fp", "fn"):
        if (value := _number(summary.get(name))) is not None:
            rows.append((name.upper(), str(int(value))))
    if (value := _number(summary.get("radius_um"))) is not None:
        rows.append(("match radius", f"{value:g} µm"))
    done = {"precision", "recall", "f1", "tp", "fp", "fn", "radius_um"}
    rows += [(_esc(k), _esc(_fmt(v))) for k, v in summary.items() if k not in done]
    return rows


def _count_rows(run: RunFolder) -> list[tuple[str, str]]:
    """Overall counts from summary.csv: images, nuclei, mean per image, mean positive % and H-score."""
    nuclei = nuclei_per_image(run)
    images = len(run.rows) if run.rows else len(run.detections)
    rows = [("images", str(images)), ("nuclei", str(int(nuclei.sum())))]
    if nuclei.size:
        rows.append(("mean nuclei per image", f"{nuclei.mean():.1f}"))
    for name, label in (("positive_percent", "mean positive %"), ("h_score", "mean H-score")):
        values = _column(run.rows, name)
        if values:
            rows.append((label, f"{float(np.mean(values)):.1f}"))
    return rows


def svg_histogram(values: np.ndarray, *, xlabel: str, ylabel: str, empty: str) -> str:
    """An inline SVG bar chart of ``values`` with axes, labels and the count of every bin."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return f'<p class="empty">{_esc(empty)}</p>'
    edges = bin_edges(values)
    counts, _ = np.histogram(values, bins=edges)
    width, height, left, right, top, bottom = 560, 250, 52, 30, 22, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / len(counts)
    parts = [
        f'<svg class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(xlabel)} histogram">'
    ]
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        x, y = left + i * bar_w, top + plot_h - h
        parts.append(
            f'<rect class="bar" data-count="{int(count)}" x="{x + 0.5:.2f}" y="{y:.2f}" '
            f'width="{max(bar_w - 1, 0.5):.2f}" height="{h:.2f}"><title>{_tick(edges[i])} to '
            f"{_tick(edges[i + 1])}: {int(count)}</title></rect>"
        )
        if count:
            parts.append(f'<text class="count" x="{x + bar_w / 2:.2f}" y="{y - 3:.2f}">{int(count)}</text>')
    parts += _axes(edges, peak, (left, top, plot_w, plot_h), xlabel, ylabel)
    parts.append("</svg>")
    return "".join(parts)


def _axes(edges: np.ndarray, peak: int, box: tuple[float, float, float, float], xlabel: str, ylabel: str) -> list[str]:
    """Axis lines, a few tick labels and the axis titles of a histogram."""
    left, top, plot_w, plot_h = box
    base = top + plot_h
    parts = [
        f'<line class="axis" x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>',
        f'<text class="tick" x="{left - 4}" y="{base}" text-anchor="end">0</text>',
        f'<text class="tick" x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>',
    ]
    step = max(1, math.ceil((len(edges) - 1) / 6))
    for i in range(0, len(edges), step):
        x = left + plot_w * i / (len(edges) - 1)
        parts.append(f'<text class="tick" x="{x:.2f}" y="{base + 14}">{_tick(edges[i])}</text>')
    parts.append(f'<text class="label" x="{left + plot_w / 2:.2f}" y="{base + 36}">{_esc(xlabel)}</text>')
    parts.append(
        f'<text class="label" transform="translate(14 {top + plot_h / 2:.2f}) rotate(-90)">{_esc(ylabel)}</text>'
    )
    return parts


def histograms_section(run: RunFolder) -> str:
    """Section 4: nuclei per image and nucleus areas."""
    per_image = svg_histogram(nuclei_per_image(run), xlabel="nuclei per image", ylabel="images", empty="no images")
    areas = svg_histogram(
        nucleus_areas(run.detections), xlabel="nucleus area (µm²)", ylabel="nuclei", empty="no nuclei"
    )
    return (
        '<section id="histograms"><h2>Distributions</h2><div class="cols">'
        f'<div class="hist-nuclei"><h3>Nuclei per image</h3>{per_image}</div>'
        f'<div class="hist-areas"><h3>Nucleus area</h3>{areas}</div></div></section>'
    )


def table_section(run: RunFolder) -> str:
    """Section 5: the per-image table (the first 500 rows of summary.csv)."""
    if not run.rows:
        return '<section id="images"><h2>Per image</h2><p class="empty">no summary.csv rows</p></section>'
    head = "".join(f"<th>{_esc(c)}</th>" for c in run.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_fmt_cell(row.get(c, '')))}</td>" for c in run.columns) + "</tr>"
        for row in run.rows[:TABLE_MAX_ROWS]
    )
    more = ""
    if len(run.rows) > TABLE_MAX_ROWS:
        more = (
            f'<p class="note">showing the first {TABLE_MAX_ROWS} of {len(run.rows)} rows; all are in summary.csv.</p>'
        )
    return (
        f'<section id="images"><h2>Per image</h2>{more}<div class="scroll">'
        f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>'
    )


def record_section(run: RunFolder) -> str:
    """Section 6: the run record: weights with their licences, options, settings and provenance."""
    record, provenance = run.record, _dict(run.record.get("provenance"))
    parts = ['<section id="record"><h2>Run record</h2>', "<h3>Models and weights</h3>", _weights_html(record)]
    for title, values in (("Options", _dict(provenance.get("options"))), ("Settings", _dict(record.get("settings")))):
        if values:
            rows = [(_esc(k), f"<code>{_esc(_fmt(v))}</code>") for k, v in sorted(values.items())]
            parts.append(f"<h3>{title}</h3>{_table(rows)}")
    facts = [
        ("command", f"<code>{_esc(_command_line(provenance.get('command')))}</code>"),
        ("histostain version", _esc(provenance.get("histostain_version", "unknown"))),
        ("created", _esc(provenance.get("created", "unknown"))),
    ]
    parts.append(f"<h3>Provenance</h3>{_table(facts)}</section>")
    return "".join(parts)


def _weights_html(record: dict[str, Any]) -> str:
    """A block for the translator and one for the segmenter, licences set apart."""
    translator = record.get("translator")
    segmenter = _dict(record.get("segmenter"))
    blocks = []
    if "translator" in record:
        if translator is None:
            blocks.append(_weights_block("translator", {}, "none (input used as is)"))
        else:
            blocks.append(_weights_block("translator", _dict(translator), ""))
    if segmenter:
        kind = str(segmenter.get("model", "unknown"))
        blocks.append(_weights_block(f"segmenter: {kind}", _dict(segmenter.get("weights")), "no weights (classical)"))
    return "".join(blocks) or '<p class="empty">not recorded</p>'


def _weights_block(role: str, weights: dict[str, Any], none_text: str) -> str:
    """One model's weights: name, licence (prominent), file, sha256, format, architecture, direction."""
    if not weights:
        return f'<div class="weights"><h4>{_esc(role)}</h4><p>{_esc(none_text)}</p></div>'
    model = _dict(weights.get("model"))
    licence = str(model.get("licence") or "unknown")
    rows = [("name", _esc(model.get("name") or "(local file)")), ("licence", _licence_badge(licence))]
    for name in ("path", "sha256", "format", "arch", "direction"):
        if weights.get(name) is not None:
            rows.append((name, f"<code>{_esc(weights[name])}</code>"))
    return f'<div class="weights"><h4>{_esc(role)}</h4>{_table(rows)}</div>'


def _licence_badge(licence: str) -> str:
    """The licence as a badge; non-commercial licences (PanNuke-derived weights) are flagged."""
    if any(mark in licence.upper() for mark in _NON_COMMERCIAL):
        note = " non-commercial: results may not be used commercially"
        return f'<span class="licence nc">{_esc(licence)}</span><span class="note warn">{note}</span>'
    return f'<span class="licence">{_esc(licence)}</span>'


# --- the page --------------------------------------------------------------------------------------------


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1400px;
padding:16px 24px;color:#1d2430;background:#fff}
h1{font-size:24px;margin:0 0 8px}h2{font-size:19px;border-bottom:2px solid #d9dee7;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:12px 0 6px}h4{margin:8px 0 4px}
table{border-collapse:collapse}th,td{padding:3px 10px;text-align:left;vertical-align:top}
table.kv th{color:#5a6475;font-weight:600;white-space:nowrap}table.kv td{word-break:break-all}
table.metrics td{font-variant-numeric:tabular-nums;font-size:16px}
table.grid{font-size:12.5px;font-variant-numeric:tabular-nums}
table.grid th{position:sticky;top:0;background:#eef1f6;border-bottom:1px solid #c8cfdb}
table.grid tr:nth-child(even) td{background:#f6f8fb}table.grid td{white-space:nowrap;text-align:right}
table.grid td:first-child{text-align:left}
.scroll{display:inline-block;max-width:100%;max-height:520px;overflow:auto;border:1px solid #d9dee7}
code{font:12.5px ui-monospace,Consolas,monospace;background:#f2f4f8;padding:1px 4px;border-radius:3px}
.cols{display:flex;flex-wrap:wrap;gap:12px 48px}
.sample{margin:14px 0;padding-top:6px;border-top:1px solid #eceff4}.sample h3{font-weight:normal}
.panels{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;max-width:320px}figure img{display:block;max-width:320px;max-height:400px;border:1px solid #ccd}
figcaption{font-size:12px;color:#5a6475;margin-top:2px}
.placeholder{width:200px;height:140px;background:repeating-linear-gradient(45deg,#eee,#eee 8px,#e2e2e2 8px,
#e2e2e2 16px);color:#7a3030;font-size:12px;padding:8px;box-sizing:border-box;word-break:break-all;overflow:hidden}
.sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin:0 3px 0 6px;vertical-align:-1px}
.badge{padding:1px 8px;border-radius:10px;font-size:12.5px;font-weight:600}.ok{background:#d8f3dc;color:#1b5e20}
.warn{color:#8a4b00}.badge.warn{background:#ffe8c2}
.licence{font-weight:700;padding:1px 6px;border:1px solid #9aa5b8;border-radius:3px}
.licence.nc{background:#fff1d6;border-color:#d48a00;color:#7a4100}
.note{color:#5a6475;font-size:12.5px;margin:4px 0}.note.warn{color:#8a4b00}.empty{color:#7a8392;font-style:italic}
.weights{display:inline-block;vertical-align:top;margin:0 40px 8px 0}
svg.hist .bar{fill:#5b7fb5}svg.hist .axis{stroke:#333;stroke-width:1}
svg.hist text{font-size:10px;fill:#333;text-anchor:middle}svg.hist .label{font-size:12px}
svg.hist .count{font-size:9px;fill:#555}
"""


def render_report(run: RunFolder, *, samples: int = 8) -> str:
    """The whole page as one string."""
    sections = [
        header_section(run),
        metrics_section(run),
        samples_section(run, samples),
        histograms_section(run),
        table_section(run),
        record_section(run),
    ]
    title = f"histostain pipeline report: {run.out_dir.name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )
