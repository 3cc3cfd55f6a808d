"""Pairing ground truth with predictions by file stem: the one rule of every file-based evaluate service.

``12.txt`` pairs with ``12.json``, ``001.png`` with ``001.jpg``: the services read one side's files by stem and
the other side's, and this module decides what is compared with what, and what is left over. How a folder is
turned into ``{stem: item}`` (which extensions, what to do with a stem present twice) stays with each service's
input readers; the pairing itself, the order of the pairs and the "nothing matches" rule live here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from histostain.errors import HistostainError

T = TypeVar("T")
U = TypeVar("U")

MAX_LISTED = 10  # stems named in a warning before "... and N more"


@dataclass(frozen=True)
class StemPairs(Generic[T, U]):
    """The outcome of pairing: ``matched`` as ``(stem, true item, pred item)`` in the order of the true side,
    and the stems found on one side only, each in the order of its own side."""

    matched: list[tuple[str, T, U]]
    only_true: list[str]
    only_pred: list[str]


def pair_by_stem(
    true: Mapping[str, T], pred: Mapping[str, U], *, no_match: HistostainError, single_files: bool = False
) -> StemPairs[T, U]:
    """Pair the items of ``true`` and ``pred`` that share a stem (the mapping key).

    ``single_files``: the caller was given one file on each side, which are compared whatever their names (the
    pair takes the true file's stem). When no stem is shared, ``no_match`` is raised: an evaluation of nothing
    is a mistake in the inputs, not a score. Unmatched stems are returned, for the caller to warn about.
    """
    if single_files and len(true) == 1 and len(pred) == 1:
        (stem, true_item), pred_item = next(iter(true.items())), next(iter(pred.values()))
        return StemPairs([(stem, true_item, pred_item)], [], [])
    matched = [(stem, item, pred[stem]) for stem, item in true.items() if stem in pred]
    if not matched:
        raise no_match
    only_true = [stem for stem in true if stem not in pred]
    only_pred = [stem for stem in pred if stem not in true]
    return StemPairs(matched, only_true, only_pred)


def listed(stems: Sequence[str], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` stems, comma-separated, then "... and N more": a warning stays one readable line."""
    shown = ", ".join(stems[:limit])
    return shown + (f" ... and {len(stems) - limit} more" if len(stems) > limit else "")


__all__ = ["MAX_LISTED", "StemPairs", "listed", "pair_by_stem"]
