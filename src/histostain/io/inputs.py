"""The inputs of a batch command: files, folders and globs -> sorted (input, outputs) items; output-folder checks.

Every output is named after its input: ``<out>/<key><suffix>`` where the key is the input's stem, keeping the
sub-folders of a recursive folder input (``in/a/b.tif`` -> ``a/b``). Items are sorted by key, so the order
(and with it every shard's share) is the same on every machine whatever order the arguments came in.

Outputs must never land on inputs. The rules, checked before anything is written:

* a **folder** input: the output folder may be neither that folder nor inside it (with or without
  ``--recursive``: outputs there would replace the inputs, or be read as inputs by the next run);
* a **file** input: no output may be that file (``a.png`` into its own folder as ``a.png``); an output beside
  it under another name (``a.tif`` -> ``a.png``) is allowed;
* a **glob**: its matches are file inputs; in addition the folder it searches is an input folder. For a pattern
  whose wildcards are all in the file name (``scans/*.png``) that is only ``scans/`` itself (``--out
  scans/out`` is fine: the pattern never reaches it); a pattern with wildcards in a folder part or ``**``
  (``scans/*/x.png``, ``scans/**/*.png``) reaches everything under its literal prefix, so ``--out`` may not be
  inside ``scans/`` either.

Folders are compared by identity (device and inode), so symbolic links, ``..`` and case-insensitive file
systems cannot sneak an output folder into an input folder.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from histostain.errors import InputError
from histostain.io.images import IMAGE_EXTENSIONS, list_images

OutputNames = Callable[[PurePosixPath], tuple[PurePosixPath, ...]]
"""Maps an input's key (``a/b``) to its outputs relative to the output folder (``a/b.png``, ``a/b.json``)."""

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class BatchItem:
    """One input file, its key (output path without extension) and every output it produces (absolute)."""

    source: Path
    key: PurePosixPath
    targets: tuple[Path, ...]

    def done(self) -> bool:
        """Whether every output exists: an input with one output missing is not done (it is redone whole)."""
        return all(target.exists() for target in self.targets)


@dataclass(frozen=True)
class InputSpec:
    """One command-line input after expansion: its files and the folder outputs must stay out of."""

    text: str
    kind: str  # "file" | "folder" | "glob"
    files: tuple[tuple[Path, PurePosixPath], ...]  # (file, key)
    guard: Path | None = None  # a folder the output folder must not be
    guard_subfolders: bool = False  # ... nor lie inside


def outputs_with(*suffixes: str) -> OutputNames:
    """Output naming for a step writing one file per suffix: ``outputs_with(".json", "_overlay.png")``."""
    if not suffixes:
        raise ValueError("a batch step writes at least one output per input")

    def names(key: PurePosixPath) -> tuple[PurePosixPath, ...]:
        return tuple(key.parent / f"{key.name}{suffix}" for suffix in suffixes)

    return names


def _is_glob(text: str) -> bool:
    return not Path(text).exists() and bool(_GLOB_CHARS & set(text))


def _expand_glob(text: str) -> InputSpec:
    matches = sorted(Path(match) for match in glob.glob(text, recursive=True))
    files = [m for m in matches if m.suffix.lower() in IMAGE_EXTENSIONS and m.is_file()]
    if not files:
        raise InputError(f"no images match {text}", hint="check the pattern; quote it to stop the shell expanding it")
    parts = Path(text).parts
    wild = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    base = Path(*parts[:wild]) if wild else Path(".")
    return InputSpec(
        text,
        "glob",
        tuple((f, PurePosixPath(f.stem)) for f in files),
        guard=base,
        guard_subfolders=wild < len(parts) - 1,
    )


def expand_input(text: str | os.PathLike[str], recursive: bool = False) -> InputSpec:
    """Expand one file, folder or glob pattern (``**`` allowed) into its image files and their keys."""
    text = str(text)
    if _is_glob(text):
        return _expand_glob(text)
    path = Path(text)
    files = list_images(path, recursive=recursive)  # raises InputError for a missing path or an empty folder
    if path.is_file():
        return InputSpec(text, "file", ((path, PurePosixPath(path.stem)),))
    keys = tuple((f, PurePosixPath(f.relative_to(path).parent.as_posix()) / f.stem) for f in files)
    return InputSpec(text, "folder", keys, guard=path, guard_subfolders=True)


def collect_items(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    outputs: OutputNames,
    *,
    recursive: bool = False,
) -> tuple[list[BatchItem], list[InputSpec]]:
    """Expand every input, name its outputs in ``out_dir`` and sort by key.

    Two different files that would write the same output (``a.png`` and ``a.tif``, or one name in two input
    folders) are an :class:`InputError` naming both; the same file reached twice with the same key is kept once.
    """
    if not inputs:
        raise InputError("no inputs given", hint="pass image files, folders or glob patterns")
    out = Path(out_dir)
    specs = [expand_input(text, recursive) for text in inputs]
    by_key: dict[PurePosixPath, Path] = {}
    by_target: dict[Path, Path] = {}
    items: list[BatchItem] = []
    for spec in specs:
        for source, key in spec.files:
            previous = by_key.get(key)
            if previous is not None and os.path.samefile(previous, source):
                continue
            targets = tuple(out / Path(name) for name in outputs(key))
            for target in targets:
                clash = by_target.setdefault(target, source)
                if clash != source:
                    raise InputError(
                        f"{clash} and {source} would both be written to {target}",
                        hint="write them to different --out folders, or rename one",
                    )
            by_key[key] = source
            items.append(BatchItem(source, key, targets))
    items.sort(key=lambda item: item.key.as_posix())
    return items, specs


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_output_folder(
    out_dir: str | os.PathLike[str], specs: Sequence[InputSpec], items: Iterable[BatchItem]
) -> None:
    """Refuse an output folder that is (or lies in) an input folder, and any output that is an input file.

    The rules are in the module docstring. Raises :class:`InputError` (one line, nothing written).
    """
    out = Path(os.path.realpath(out_dir))
    own = _identity(out)
    above = {identity for parent in out.parents if (identity := _identity(parent)) is not None}
    for spec in specs:
        guard = None if spec.guard is None else _identity(spec.guard)
        if guard is None or (guard != own and not (spec.guard_subfolders and guard in above)):
            continue
        relation = "is" if guard == own else "lies inside"
        folder = f"the input folder {spec.text}"
        if spec.kind == "glob":
            folder = f"the folder {spec.guard} searched by the pattern {spec.text}"
        raise InputError(
            f"--out {out_dir} {relation} {folder}",
            hint="choose an --out folder outside the inputs: outputs there would replace them or be read as inputs",
        )
    _check_targets_are_not_inputs(out_dir, out, specs, items)


def _check_targets_are_not_inputs(
    out_dir: str | os.PathLike[str], out_real: Path, specs: Sequence[InputSpec], items: Iterable[BatchItem]
) -> None:
    """No output may be an input file, by path or (for outputs that exist) by identity (hard links, case)."""
    sources = [source for spec in specs for source, _ in spec.files]
    by_path = {os.path.realpath(source): source for source in sources}
    by_identity = {identity: source for source in sources if (identity := _identity(source)) is not None}
    out = Path(out_dir)
    for item in items:
        for target in item.targets:
            source = by_path.get(str(out_real / target.relative_to(out)))
            if source is None and target.exists():
                source = by_identity.get(_identity(target))  # type: ignore[arg-type]
            if source is not None:
                raise InputError(
                    f"the output {target} would replace the input {source}",
                    hint="choose an --out folder that holds no inputs",
                )


__all__ = [
    "BatchItem",
    "InputSpec",
    "OutputNames",
    "check_output_folder",
    "collect_items",
    "expand_input",
    "outputs_with",
]
