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

How a start treats an existing folder is decided up front, reading only (:meth:`RunDirectory.plan_start`):
a folder with checkpoints is resumed (``--resume``), replaced (``--overwrite``) or refused; a run folder without
any checkpoint is the remains of a start that died before its first save (``kill -9``, a bad image) and is
simply started again, its stale files replaced. Only a folder that looks like a histostain run (config.toml with
a ``[run]`` table, or a checkpoints/ folder) is ever deleted, and only by rank 0 when it records the new start,
after every check, the datasets and the trainer have succeeded.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from histostain.errors import ConfigError, InputError
from histostain.io.writable import check_output_folder
from histostain.provenance import Provenance, record_or_capture
from histostain.runtime.config_toml import write_toml

if TYPE_CHECKING:
    from histostain.runtime.distributed import DistContext

log = logging.getLogger(__name__)

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

    # ------------------------------------------------------------------ what a start finds
    def checkpoint_files(self) -> list[Path]:
        """The checkpoints the run saved (``*.pt``; not the hidden temporary file of a save a kill cut short)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(
            p for p in self.checkpoints.iterdir() if p.suffix == ".pt" and not p.name.startswith(".") and p.is_file()
        )

    def looks_like_run(self) -> bool:
        """config.toml with a ``[run]`` table, or a checkpoints/ folder: the only folders histostain deletes."""
        if self.checkpoints.is_dir():
            return True
        try:
            return isinstance(read_toml(self.config_path).get(RUN_TABLE), dict)
        except (ConfigError, OSError, ValueError):
            return False

    def _check_not_running(self) -> None:
        """Refuse a folder that a live histostain process on this machine is training now (the ``[run]`` table's
        pid and host): a second start must not replace or resume a run under its feet. On Linux the process
        must also be a histostain one, so a pid reused after a reboot does not block the run."""
        try:
            info = self.read_run_info()
        except (ConfigError, ValueError):
            return
        pid, host = info.get("pid"), info.get("host")
        if not isinstance(pid, int) or pid == os.getpid() or host != socket.gethostname():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass  # alive, owned by another user
        cmdline = Path(f"/proc/{pid}/cmdline")
        try:
            if cmdline.parent.is_dir():
                argv = cmdline.read_bytes().decode(errors="replace").split("\0")
                if not any(Path(arg).name == "histostain" for arg in argv):  # histostain, -m histostain, torchrun
                    return
        except OSError:
            pass  # alive, but its command line is not ours to read
        raise ConfigError(
            f"run folder {self.root} is being trained right now by process {pid} on this machine",
            hint="wait for it or stop it (Ctrl-C saves a checkpoint) and run the command again; --overwrite "
            "starts it again anyway",
        )

    def plan_start(self, resume: bool, overwrite: bool = False) -> RunStart:
        """Decide, reading only, how this start treats the run folder; refuse in one line what cannot be right.

        * no folder (or an empty one): a new run (``--resume`` is refused: nothing was ever started there);
        * a run folder without checkpoints (a start that died before its first save): started again, its stale
          files replaced; with ``--resume`` its recorded options stay the base, since there is nothing else to
          resume;
        * a run folder with checkpoints: ``--resume`` continues from last.pt, ``--overwrite`` replaces it,
          anything else is refused;
        * a folder that does not look like a histostain run is never touched.
        """
        if resume and overwrite:
            raise ConfigError(
                "--resume and --overwrite cannot be used together (--resume continues the run, --overwrite "
                "deletes it and starts again)",
                hint="drop one of them",
            )
        root = self.root
        if root.exists() and not root.is_dir():
            raise InputError(f"run folder {root} is a file, not a folder", hint="choose another --name or --runs-dir")
        if root.is_dir():
            check_output_folder(root, option="run folder")
        if not root.is_dir() or not any(root.iterdir()):
            if resume:
                raise ConfigError(
                    f"cannot resume: there is no run {root}",
                    hint="start the run without --resume (or check --name and --runs-dir)",
                )
            return RunStart(self, resume=False, replace=False)
        if not self.looks_like_run():
            raise InputError(
                f"{root} exists and is not a histostain run folder (no config.toml with a [run] table, no "
                "checkpoints/); not touching it",
                hint="choose another --name or --runs-dir",
            )
        if not overwrite:
            self._check_not_running()
        saved = self.checkpoint_files()
        if not saved:
            what = f"{root} has no checkpoint (its last start stopped before the first save)"
            note = (
                f"nothing to resume: {what}; starting it afresh with its recorded options"
                if resume
                else f"{what}: starting it afresh, replacing its files"
            )
            return RunStart(
                self, resume=False, replace=True, reuse_options=resume and self.config_path.is_file(), note=note
            )
        if overwrite:
            names = ", ".join(p.name for p in saved[:3]) + (", ..." if len(saved) > 3 else "")
            return RunStart(
                self, resume=False, replace=True, note=f"--overwrite: replacing {root} (checkpoints {names})"
            )
        if not resume:
            raise ConfigError(
                f"run folder {root} already exists and has checkpoints",
                hint="add --resume to continue it, --overwrite to start it again from scratch, or choose another "
                "--name",
            )
        if not self.last.is_file():
            raise ConfigError(
                f"cannot resume: {self.last} does not exist (the run has {', '.join(p.name for p in saved)})",
                hint="copy the checkpoint to continue from to checkpoints/last.pt, or start again with --overwrite",
            )
        return RunStart(self, resume=True, replace=False, reuse_options=True)

    def remove(self) -> None:
        """Delete the run folder: checked again to look like a run, then renamed aside (the name is free at once)
        and removed. A folder that does not look like a run is refused, whoever asks."""
        if not self.root.is_dir():
            return
        if not self.looks_like_run():
            raise InputError(f"{self.root} is not a histostain run folder; not deleting it")
        trash = Path(tempfile.mkdtemp(prefix=f".{self.name}.removing-", dir=self.root.parent))
        os.replace(self.root, trash / self.name)
        shutil.rmtree(trash)

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


@dataclass(frozen=True)
class RunStart:
    """How one start treats its run folder (:meth:`RunDirectory.plan_start`; nothing written yet).

    ``resume``: continue from last.pt; ``replace``: rank 0 deletes the existing folder (a dead start's remains,
    or ``--overwrite``) when it records this start; ``reuse_options``: the run's config.toml is the base of the
    options; ``note``: what the user should be told (empty: nothing special).
    """

    run: RunDirectory
    resume: bool
    replace: bool
    reuse_options: bool = False
    note: str = ""


def open_run(
    runs_dir: str | Path,
    name: str,
    resume: bool,
    config: ConfigT | None,
    resolve: Callable[[Mapping[str, Any] | None], ConfigT],
    check_resume: Callable[[Mapping[str, Any], ConfigT], None],
    *,
    overwrite: bool = False,
) -> tuple[RunStart, ConfigT]:
    """Check that ``runs_dir`` can be written and how the run folder is to be treated, resolve the config (over
    the stored one when the run's options are reused) and refuse fixed-option changes of a resume. Reads only."""
    check_output_folder(runs_dir, option="--runs-dir")
    start = RunDirectory(runs_dir, name).plan_start(resume, overwrite)
    stored = start.run.read_config() if start.reuse_options else None
    if config is None:
        config = resolve(stored)
    if start.resume and stored is not None:
        check_resume(stored, config)
    return start, config


def record_run(
    run: RunDirectory,
    dist: DistContext,
    config: BaseModel,
    provenance: Provenance | None,
    prepared: Path,
    config_file: str | Path | None,
    *,
    replace: bool = False,
    **info: Any,
) -> None:
    """Rank 0 creates the run folder and writes config.toml with the provenance every run records.

    ``replace``: the existing folder goes first (the last moment, so a failed check or a bad dataset never
    cost the user an old run). ``provenance`` is the CLI's record of the invocation; a library caller without
    one gets ``sys.argv``. The ``[run]`` table also names this start's host and process, so a second start of
    the same run on this machine can tell that it is still being trained.
    """
    if not dist.is_main:
        return
    record = record_or_capture(provenance, prepared=str(prepared), name=run.name)
    if replace:
        run.remove()
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
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **info,
        },
    )


__all__ = ["RESUMED", "RUN_TABLE", "RunDirectory", "RunStart", "open_run", "read_toml", "record_run"]
