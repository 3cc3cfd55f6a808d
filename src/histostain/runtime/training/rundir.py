"""The run folder: ``<runs_dir>/<name>/`` with config.toml, checkpoints/, metrics.csv and samples/.

``config.toml`` holds the resolved training options and a ``[run]`` table that says how the run was made: the
first start's provenance record (command as typed, histostain version, UTC time, resolved command-line options;
:class:`histostain.provenance.Provenance`), when it was last started, where its data came from, and one
``[[run.resumed]]`` entry per resume, in order::

    [run]
    name = "bci_ihc2he"
    command = ["histostain", "train", "cyclegan", "prepared/bci", "--name", "bci_ihc2he"]
    histostain_version = "0.2.0"
    created = "2026-11-26T12:00:00+00:00"
    updated = "2026-11-27T08:30:00+00:00"
    prepared = "/data/prepared/bci"
    ...
    [run.options]
    ...
    [[run.resumed]]
    command = ["histostain", "train", "cyclegan", "prepared/bci", "--name", "bci_ihc2he", "--resume"]
    histostain_version = "0.2.0"
    created = "2026-11-27T08:30:00+00:00"

The ``[run]`` table is ignored when the file is read back as a configuration, so a run's config.toml is a valid
``--config`` file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from histostain.errors import ConfigError
from histostain.provenance import Provenance, record_or_capture
from histostain.runtime.config_toml import write_toml

if TYPE_CHECKING:
    from histostain.runtime.distributed import DistContext

ConfigT = TypeVar("ConfigT", bound=BaseModel)

RUN_TABLE = "run"  # the config.toml table that records how the run was made (ignored when loading a config)
RESUMED = "resumed"  # the list, inside [run], of the resumes' provenance records
_FIRST_START = ("command", "histostain_version", "created", "options")  # kept from the first start forever


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a ConfigError naming it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML ({exc})") from exc


class RunDirectory:
    """``<runs_dir>/<name>/``: everything one training run writes, under fixed names."""

    def __init__(self, runs_dir: str | Path, name: str) -> None:
        if not name or name in {".", ".."} or "/" in name or "\\" in name:
            raise ConfigError(f"invalid run name {name!r}", hint="use a plain folder name such as bci_cyclegan")
        self.name = name
        self.root = Path(runs_dir) / name
        self.config_path = self.root / "config.toml"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.samples = self.root / "samples"
        self.metrics_path = self.root / "metrics.csv"
        self.tensorboard = self.root / "tensorboard"

    def periodic(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def check(self, resume: bool) -> None:
        """Refuse to overwrite a previous run, and to resume one that has no checkpoint (read-only)."""
        if resume:
            if not self.last.is_file():
                raise ConfigError(
                    f"cannot resume: {self.last} does not exist",
                    hint="start the run without --resume (or check --name and --runs-dir)",
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(
                f"run folder {self.root} already exists",
                hint="add --resume to continue it, or choose another --name",
            )

    def create(self) -> None:
        for folder in (self.checkpoints, self.samples):
            folder.mkdir(parents=True, exist_ok=True)

    def write_config(
        self,
        config: Mapping[str, Any],
        provenance: Provenance | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the resolved config and the ``[run]`` table (see the module docstring) as config.toml.

        The first write records ``provenance`` as the run's origin; every later write (a resume) keeps that
        origin and appends ``provenance`` to ``[[run.resumed]]``, so a run's history reads in order.
        ``info`` (data folder, processes, device, ...) describes the latest start.
        """
        record = provenance if provenance is not None else Provenance.capture()
        previous = self.read_run_info()
        started = record.to_dict()
        history = [dict(entry) for entry in previous.get(RESUMED, []) if isinstance(entry, Mapping)]
        if previous.get("command") or previous.get("created"):  # a resume: the first start stays the origin
            origin = {key: previous[key] for key in _FIRST_START if key in previous}
            history.append(started)
        else:
            origin = started
        run: dict[str, Any] = {"name": self.name, **origin, "updated": record.created, **(info or {})}
        if not run.get("options"):
            run.pop("options", None)  # TOML has no empty value; an old run simply has no options recorded
        if history:
            run[RESUMED] = history
        data = {key: value for key, value in config.items() if key != RUN_TABLE}
        data[RUN_TABLE] = run
        write_toml(
            self.config_path,
            data,
            header="histostain training run: the resolved configuration.\n"
            "Reuse it with --config (the [run] table is ignored when loading).",
        )

    def read_config(self) -> dict[str, Any]:
        """The resolved config stored in config.toml, without the ``[run]`` table."""
        data = read_toml(self.config_path)
        data.pop(RUN_TABLE, None)
        return data

    def read_run_info(self) -> dict[str, Any]:
        """The ``[run]`` table of config.toml (empty when there is none yet)."""
        if not self.config_path.is_file():
            return {}
        info = read_toml(self.config_path).get(RUN_TABLE, {})
        return dict(info) if isinstance(info, dict) else {}

    def commands(self) -> list[list[str]]:
        """Every command that started this run, in order: the first, then each resume."""
        info = self.read_run_info()
        entries = [info, *info.get(RESUMED, [])]
        return [list(entry["command"]) for entry in entries if isinstance(entry, Mapping) and entry.get("command")]


def open_run(
    runs_dir: str | Path,
    name: str,
    resume: bool,
    config: ConfigT | None,
    resolve: Callable[[Mapping[str, Any] | None], ConfigT],
    check_resume: Callable[[Mapping[str, Any], ConfigT], None],
) -> tuple[RunDirectory, ConfigT]:
    """Check the run folder, resolve the config (on resume over the stored one) and refuse fixed-option changes."""
    run = RunDirectory(runs_dir, name)
    run.check(resume)
    stored = run.read_config() if resume else None
    if config is None:
        config = resolve(stored)
    if stored is not None:
        check_resume(stored, config)
    return run, config


def record_run(
    run: RunDirectory,
    dist: DistContext,
    config: BaseModel,
    provenance: Provenance | None,
    prepared: Path,
    config_file: str | Path | None,
    **info: Any,
) -> None:
    """Rank 0 creates the run folder and writes config.toml with the provenance every run records.

    ``provenance`` is the CLI's record of the invocation; a library caller without one gets ``sys.argv``.
    """
    if not dist.is_main:
        return
    record = record_or_capture(provenance, prepared=str(prepared), name=run.name)
    run.create()
    run.write_config(
        config.model_dump(),
        record,
        info={
            "prepared": str(Path(prepared).resolve()),
            "config_file": str(config_file) if config_file else "",
            "world_size": dist.world_size,
            "device": str(dist.manager.device),
            "precision": dist.manager.precision,
            **info,
        },
    )


__all__ = ["RESUMED", "RUN_TABLE", "RunDirectory", "open_run", "read_toml", "record_run"]
