"""Pairing by file stem, the rule every file-based evaluate service shares: order, leftovers, the no-match error."""

from __future__ import annotations

import pytest

from histostain.errors import InputError
from histostain.metrics.pairing import listed, pair_by_stem

NO_MATCH = InputError("nothing in common", hint="pair by stem")


def test_pairs_follow_the_true_side_and_leftovers_each_side_s_order() -> None:
    true = {"c": 1, "a": 2, "b": 3, "only_t": 4}
    pred = {"z_only": "p0", "b": "p1", "a": "p2", "c": "p3"}
    pairs = pair_by_stem(true, pred, no_match=NO_MATCH)
    assert pairs.matched == [("c", 1, "p3"), ("a", 2, "p2"), ("b", 3, "p1")]
    assert pairs.only_true == ["only_t"] and pairs.only_pred == ["z_only"]


def test_no_common_stem_raises_the_caller_s_error() -> None:
    with pytest.raises(InputError, match="nothing in common") as info:
        pair_by_stem({"a": 1}, {"b": 2}, no_match=NO_MATCH)
    assert info.value.hint == "pair by stem"


def test_two_single_files_pair_whatever_their_names() -> None:
    pairs = pair_by_stem({"gt": 1}, {"prediction": 2}, no_match=NO_MATCH, single_files=True)
    assert pairs.matched == [("gt", 1, 2)] and pairs.only_true == [] and pairs.only_pred == []
    with pytest.raises(InputError):  # without the flag a single file is paired by its stem like any other
        pair_by_stem({"gt": 1}, {"prediction": 2}, no_match=NO_MATCH)


def test_listed_names_the_first_ten_then_counts() -> None:
    assert listed(["a", "b"]) == "a, b"
    stems = [f"s{i}" for i in range(13)]
    assert listed(stems) == "s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 ... and 3 more"
