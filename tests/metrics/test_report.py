"""EvaluationResult: JSON without NaN, per-image CSV beside the JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from histostain.metrics.report import EvaluationResult


def test_json_replaces_nan_and_numpy_scalars(tmp_path: Path) -> None:
    result = EvaluationResult(
        metric="instance",
        summary={"pq": np.float64(0.5), "aji": float("nan"), "n": np.int64(3)},
        per_image=[{"image": "a", "pq": 0.25}, {"image": "b", "pq": float("nan"), "extra": 1}],
        tables={"per_class": [{"class": 1, "pq": np.float32(0.5)}]},
    )
    payload = result.to_json()
    assert payload["summary"] == {"pq": 0.5, "aji": None, "n": 3}
    assert json.loads(json.dumps(payload)) == payload  # strict JSON round trip
    written = result.write(tmp_path / "metrics.json")
    assert [p.name for p in written] == ["metrics.json", "metrics_per_image.csv"]
    with (tmp_path / "metrics_per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"image": "a", "pq": "0.25", "extra": ""}, {"image": "b", "pq": "", "extra": "1"}]


def test_provenance_is_serialised_and_absent_provenance_is_null() -> None:
    from histostain.provenance import Provenance

    record = Provenance.capture({"radius": 12.0, "true": Path("gt")}, command=["histostain", "evaluate", "celldet"])
    with_record = EvaluationResult(metric="celldet", summary={"f1": 1.0}, provenance=record).to_json()
    assert with_record["provenance"]["command"] == ["histostain", "evaluate", "celldet"]
    assert with_record["provenance"]["options"] == {"radius": 12.0, "true": "gt"}
    assert json.loads(json.dumps(with_record)) == with_record
    assert EvaluationResult(metric="celldet", summary={}).to_json()["provenance"] is None
