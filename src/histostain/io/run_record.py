"""The run record of a batch command: written before the first output, checked against earlier runs, finished last.

``<out>/<command>.json`` (a shard: ``<command>.part-I-of-N.json``, so shards sharing a folder never overwrite
each other's record) holds the provenance (command as typed, version, time, resolved options), what the step
adds (the weights record with its SHA-256, device, batch size, ...), the **settings** (only the options that
change the outputs: weights digest, tile, format, ...), the shard, ``status`` and at the end the ``result``.

Why it is written first: outputs are skipped when they exist, so a folder must say which settings made them
*while* it is being filled. A run that is killed leaves its record with ``status: running``; the next run into
the folder compares its settings with every record there (all shards) and refuses to add outputs made with
other settings (one line naming the differences), instead of silently mixing two models' outputs.

``--overwrite`` replaces the outputs, so it is never refused. Until all its parts have finished, the outputs of
the earlier settings may still be in the folder, so its record lists them under ``replaces`` and a later run
without ``--overwrite`` is still refused; once every part of the overwrite run has finished, the records of
the replaced runs are deleted. Settings keys present in only one of two records are not compared (records of
older versions keep fewer keys, at the top level).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from histostain.errors import ConfigError
from histostain.io.atomic import atomic_write_text
from histostain.io.sharding import Shard
from histostain.provenance import plain

log = logging.getLogger(__name__)

RECORD_VERSION = 1
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
_HEX = re.compile(r"^[0-9a-f]{16,}$")


def record_name(command: str, shard: Shard) -> str:
    """``translate.json``, or ``translate.part-2-of-4.json`` for a shard."""
    return f"{command}.json" if shard.num_parts == 1 else f"{command}.part-{shard.part_id}-of-{shard.num_parts}.json"


def is_record_name(name: str, command: str) -> bool:
    """Whether a file name is (or would be) a run record of ``command``."""
    return re.fullmatch(rf"{re.escape(command)}(\.part-\d+-of-\d+)?\.json", name) is not None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _json(value: Any) -> Any:
    """The value as it reads back from the record file (tuples -> lists, paths -> strings)."""
    return json.loads(json.dumps(plain(value), default=str))


def _show(value: Any) -> str:
    if isinstance(value, str) and _HEX.match(value):
        return value[:8] + "…"  # digests: 8 hex digits identify a file in a message
    return "none" if value is None else str(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["weights sha256 1a2b3c4d… -> 9f8e7d6c…", "tile 512 -> 256"]`` over the keys both hold."""
    return [
        f"{key.replace('_', ' ')} {_show(old[key])} -> {_show(new[key])}"
        for key in new
        if key in old and old[key] != new[key]
    ]


@dataclass(frozen=True)
class EarlierRun:
    """A record found in the output folder."""

    path: Path
    data: dict[str, Any]

    def settings(self, keys: Mapping[str, Any]) -> dict[str, Any]:
        """Its settings; records of older versions kept them at the top level."""
        stored = self.data.get("settings")
        if isinstance(stored, dict):
            return stored
        return {key: self.data[key] for key in keys if key in self.data}

    @property
    def status(self) -> str:
        return str(self.data.get("status", FINISHED))  # older records were written only when finished

    @property
    def part(self) -> tuple[int, int]:
        shard = self.data.get("shard") or self.data
        return int(shard.get("part_id", 0)), int(shard.get("num_parts", 1))

    @property
    def replaces(self) -> list[dict[str, Any]]:
        return list(self.data.get("replaces") or [])


def read_records(out_dir: Path, command: str, *, strict: bool = True) -> list[EarlierRun]:
    """Every record of ``command`` in ``out_dir``, by name; an unreadable one is an error unless not ``strict``."""
    found: list[EarlierRun] = []
    if not out_dir.is_dir():
        return found
    for entry in sorted(os.scandir(out_dir), key=lambda e: e.name):
        if not is_record_name(entry.name, command) or not entry.is_file():
            continue
        try:
            data = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            if strict:
                raise ConfigError(
                    f"cannot read the run record {entry.path} ({exc})",
                    hint="delete it if it is not histostain's, or use --overwrite",
                ) from exc
            log.warning("ignoring the unreadable run record %s (%s)", entry.path, exc)
            continue
        found.append(EarlierRun(Path(entry.path), data))
    return found


def _complete(run: EarlierRun, runs: list[EarlierRun], keys: Mapping[str, Any]) -> bool:
    """Whether every part of ``run``'s layout has a finished record with the same settings."""
    settings, (_, parts) = run.settings(keys), run.part
    finished = {
        other.part[0]
        for other in runs
        if other.part[1] == parts and other.status == FINISHED and not differences(other.settings(keys), settings)
    }
    return finished >= set(range(parts))


def _outstanding(runs: list[EarlierRun], keys: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], str, str | None]]:
    """(settings, record name, unfinished overwrite run replacing it or None) of outputs that may be in the folder."""
    for run in runs:
        yield run.settings(keys), run.path.name, None
        if run.replaces and not _complete(run, runs, keys):
            for entry in run.replaces:
                yield dict(entry.get("settings") or {}), str(entry.get("record", "?")), run.path.name


@dataclass
class RunRecord:
    """This run's record; :meth:`check` before writing anything, :meth:`start` before the first output."""

    out_dir: Path
    command: str
    shard: Shard
    settings: dict[str, Any]
    overwrite: bool = False
    content: dict[str, Any] = field(default_factory=dict)  # provenance, weights, details: recorded, not compared
    data: dict[str, Any] = field(default_factory=dict, init=False)
    replaces: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.settings = _json(self.settings)

    @property
    def path(self) -> Path:
        return self.out_dir / record_name(self.command, self.shard)

    def check(self) -> None:
        """Refuse to add to a folder holding outputs of other settings (module docstring); writes nothing."""
        runs = read_records(self.out_dir, self.command, strict=not self.overwrite)
        conflicts = [
            (where, via, changed)
            for settings, where, via in _outstanding(runs, self.settings)
            if (changed := differences(settings, self.settings))
        ]
        if not conflicts:
            return
        where, via, changed = conflicts[0]
        if not self.overwrite:
            source = where if via is None else f"{where}; the --overwrite run recorded in {via} did not finish"
            raise ConfigError(
                f"{self.out_dir}/ holds outputs of an earlier run with other settings ({source}): {'; '.join(changed)}",
                hint="--overwrite replaces them, or choose another --out",
            )
        log.warning("--overwrite: replacing outputs of an earlier run (%s): %s", where, "; ".join(changed))
        seen: set[str] = set()
        for settings, name, _ in _outstanding(runs, self.settings):
            key = json.dumps(settings, sort_keys=True)
            if differences(settings, self.settings) and key not in seen:
                seen.add(key)
                self.replaces.append({"record": name, "settings": settings})

    def _write(self, **changes: Any) -> None:
        self.data.update(changes, updated=_now())
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")

    def start(self, **extra: Any) -> None:
        """Write the record with ``status: running`` (call it before the first output is written)."""
        now = _now()
        self.data = {
            "record_version": RECORD_VERSION,
            "command": self.command,
            "status": RUNNING,
            "started": now,
            "updated": now,
            "settings": self.settings,
            "shard": self.shard.to_dict(),
            "overwrite": self.overwrite,
            "replaces": self.replaces,
            **_json(self.content),
            **_json(extra),
            "result": None,
        }
        self._write()

    def finish(self, result: Mapping[str, Any]) -> None:
        """Rewrite the record as finished with the result; an overwrite run then drops the replaced records."""
        self._write(status=FINISHED, result=_json(result))
        if self.overwrite:
            self._remove_replaced()

    def stop(self, error: BaseException, result: Mapping[str, Any] | None = None) -> None:
        """Record why the run stopped early (never raises: the original error is what the user must see)."""
        status = INTERRUPTED if isinstance(error, KeyboardInterrupt | SystemExit) else FAILED
        text = getattr(error, "message", None) or " ".join(str(error).split()) or type(error).__name__
        try:
            self._write(status=status, error=f"{type(error).__name__}: {text}", result=_json(result))
        except OSError as exc:
            log.warning("could not update the run record %s: %s", self.path, exc)

    def _remove_replaced(self) -> None:
        """Once every part of this overwrite run has finished, delete the older records of other settings."""
        runs = read_records(self.out_dir, self.command, strict=False)
        ours = [run for run in runs if run.path == self.path]
        if not ours or not _complete(ours[0], runs, self.settings):
            return
        group = [
            run
            for run in runs
            if run.part[1] == self.shard.num_parts and not differences(run.settings(self.settings), self.settings)
        ]
        began = min(str(run.data.get("started", "")) for run in group)
        for run in runs:
            older = str(run.data.get("updated", "")) < began
            if older and differences(run.settings(self.settings), self.settings):
                run.path.unlink(missing_ok=True)
                log.info("removed %s: its outputs were replaced by this --overwrite run", run.path.name)


__all__ = [
    "FAILED",
    "FINISHED",
    "INTERRUPTED",
    "RUNNING",
    "EarlierRun",
    "RunRecord",
    "differences",
    "is_record_name",
    "read_records",
    "record_name",
]
