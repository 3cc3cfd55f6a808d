"""The one split rule of every evaluate command that reads prepared data (issue point 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from histostain.errors import ConfigError, DatasetLayoutError
from histostain.metrics.splits import SplitChoice, check_split_applies, choose_split

FOLDER = Path("prepared")


@pytest.mark.parametrize(
    ("available", "requested", "expected"),
    [
        (["train", "val", "test"], None, SplitChoice("test", ("test",), "default: the test split")),
        (["test", "train"], None, SplitChoice("test", ("test",), "default: the test split")),
        (["train"], None, SplitChoice("train", ("train",), "default: the folder's only split")),
        (["train", "val", "test"], "val", SplitChoice("val", ("val",), "requested")),
        (["test", "val", "train"], "all", SplitChoice("all", ("train", "val", "test"), "requested")),  # dataset order
        (["train", "fold9"], "all", SplitChoice("all", ("train", "fold9"), "requested")),
    ],
)
def test_choose_split(available: list[str], requested: str | None, expected: SplitChoice) -> None:
    assert choose_split(FOLDER, available, requested) == expected


def test_labels_and_meta_say_which_split() -> None:
    assert SplitChoice("test", ("test",), "requested").label == "split test"
    pooled = SplitChoice("all", ("train", "val", "test"), "requested")
    assert pooled.label == "splits train+val+test pooled"
    assert pooled.to_meta() == {"split": "all", "splits": ["train", "val", "test"], "split_reason": "requested"}


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="holds the splits train, val and no test split: choose one with --split"):
        choose_split(FOLDER, ["train", "val"], None)
    with pytest.raises(ConfigError, match="--split holdout: prepared has no such split; it has train, test"):
        choose_split(FOLDER, ["train", "test"], "holdout")
    with pytest.raises(DatasetLayoutError, match="no split"):
        choose_split(FOLDER, [], None)
    check_split_applies(None, FOLDER)
    with pytest.raises(ConfigError, match="applies to a prepared dataset folder"):
        check_split_applies("test", FOLDER)
