"""Which split of a prepared dataset an evaluation reads: one rule for every ``evaluate`` command.

A prepared folder holds train/val/test. Scoring all of them silently mixes the images a model was trained on
into its test score, so every command that reads prepared data picks the same way (:func:`choose_split`):
``--split NAME`` if given; else ``test`` when the folder has it; else the folder's only split; a folder with
several splits and no test split is refused, asking for ``--split``. ``--split all`` pools every split, but only
when asked for. The choice is recorded (``meta.split``, ``meta.splits``) and shown in every table title.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histostain.errors import ConfigError, DatasetLayoutError
from histostain.metrics.defaults import DEFAULT_SPLIT, SPLIT_ALL

_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class SplitChoice:
    """The split an evaluation reads: its name (``"all"`` when pooled), the splits behind it and why."""

    name: str
    splits: tuple[str, ...]
    reason: str  # "requested", "default: ..."

    @property
    def label(self) -> str:
        """``split test``, or ``splits train+val+test pooled``: what table titles say."""
        if self.name == SPLIT_ALL:
            return f"splits {'+'.join(self.splits)} pooled"
        return f"split {self.name}"

    def to_meta(self) -> dict[str, Any]:
        return {"split": self.name, "splits": list(self.splits), "split_reason": self.reason}


def _ordered(available: Sequence[str]) -> list[str]:
    known = [name for name in _ORDER if name in available]
    return known + sorted(name for name in available if name not in _ORDER)


def choose_split(folder: Path, available: Sequence[str], split: str | None) -> SplitChoice:
    """The split of the prepared ``folder`` (whose manifest lists ``available``) to evaluate on."""
    splits = _ordered(available)
    if not splits:
        raise DatasetLayoutError(f"{folder}: the manifest lists no split", hint="prepare the dataset again")
    if split is not None:
        if split == SPLIT_ALL:
            return SplitChoice(SPLIT_ALL, tuple(splits), "requested")
        if split not in splits:
            raise ConfigError(
                f"--split {split}: {folder} has no such split; it has {', '.join(splits)}",
                hint=f"choose one of {', '.join(splits)}, or --split {SPLIT_ALL} to pool them",
            )
        return SplitChoice(split, (split,), "requested")
    if DEFAULT_SPLIT in splits:
        return SplitChoice(DEFAULT_SPLIT, (DEFAULT_SPLIT,), f"default: the {DEFAULT_SPLIT} split")
    if len(splits) == 1:
        return SplitChoice(splits[0], (splits[0],), "default: the folder's only split")
    raise ConfigError(
        f"{folder} holds the splits {', '.join(splits)} and no {DEFAULT_SPLIT} split: choose one with --split",
        hint=f"e.g. --split {splits[-1]}, or --split {SPLIT_ALL} to pool every split",
    )


def check_split_applies(split: str | None, path: Path) -> None:
    """``--split`` given for an input that is not a prepared folder: refused rather than silently ignored."""
    if split is not None:
        raise ConfigError(
            f"--split {split} applies to a prepared dataset folder (with manifest.json); {path} is not one",
            hint="omit --split",
        )


__all__ = ["SplitChoice", "check_split_applies", "choose_split"]
