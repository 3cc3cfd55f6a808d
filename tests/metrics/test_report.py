"""EvaluationResult: JSON without NaN; --out is a folder holding <metric>.json and <metric>_per_image.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from histostain.errors import InputError
from histostain.metrics.report import EvaluationResult, check_output, output_files


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
    written = result.write(tmp_path / "results")
    assert [p.name for p in written] == ["instance.json", "instance_per_image.csv"]
    with (tmp_path / "results" / "instance_per_image.csv").open() as handle:
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


def test_out_is_a_folder_named_after_the_metric_and_fid_kid_write_no_csv(tmp_path: Path) -> None:
    """Point 11: ``--out DIR`` -> ``DIR/<metric>.json`` (+ ``<metric>_per_image.csv`` only with per-image rows)."""
    assert output_files(tmp_path, "celldet") == (tmp_path / "celldet.json", tmp_path / "celldet_per_image.csv")
    assert output_files(tmp_path, "fid") == (tmp_path / "fid.json", None)
    assert output_files(tmp_path, "kid")[1] is None
    written = EvaluationResult(metric="fid", summary={"fid": 1.5}).write(tmp_path / "a" / "b")  # folders created
    assert written == [tmp_path / "a" / "b" / "fid.json"]
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["fid.json"]  # no temp file left behind


def test_check_output_refuses_in_one_line_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "ok" / "paired.json").mkdir(parents=True)  # an existing folder where the JSON is to go
    cases = [
        (tmp_path / "file", "is a file, not a folder"),
        (tmp_path / "file" / "sub", "is a file, not a folder"),
        (tmp_path / "ok", "paired.json is a folder, not a file"),
    ]
    for folder, message in cases:
        with pytest.raises(InputError, match=message) as info:
            check_output(folder, "paired")
        assert "\n" not in info.value.one_line() and "--out" in info.value.one_line()
    assert check_output(tmp_path / "new" / "deeper", "paired") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the check creates nothing
