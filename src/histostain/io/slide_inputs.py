"""Which inputs of ``segment``, ``translate`` and ``pipeline`` are whole slides: one rule for the three commands.

A slide is never decoded whole: it goes to the command's slide route (read chunk by chunk), every other input
to the image batch engine (``io.batch``). The rule:

* a **file** input is a slide when ``io.slides.is_slide`` says so (a slide extension, an Aperio TIFF, a big
  tiled pyramid);
* a **folder** or **glob** contributes its files with a slide extension (``.svs``, ``.ndpi``, ...) as slides; a
  folder stays an image input only if it also holds images, a glob only if it also matches other files;
* a pyramidal ``.tif`` that a folder or glob brought into the batch plan is moved out of it
  (:func:`move_slides`), so it is never decoded whole as an image.

A slide's **key** names its outputs relative to ``--out``, as an image's does: the file's stem, keeping the
sub-folders of a folder input (``in/a/b.svs`` -> ``a/b``). A trailing ``.ome`` is dropped (``x.ome.tif`` ->
``x``), so an OME-TIFF written by ``translate`` keeps its name through ``segment``.

Before anything is written (:func:`check_slides`), two slides writing one output are refused, and so are an
output that is an input and ``--out`` inside an input folder (``io.inputs.check_output_folder``). Each command
names its own outputs, so the check takes them as a function of the slide.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from histostain.errors import InputError
from histostain.io.batch import BatchPlan, plan_batch
from histostain.io.inputs import BatchItem, InputSpec, OutputNames, check_output_folder
from histostain.io.sharding import Shard, resolve_shard

SlideOutputs = Callable[["SlideInput"], tuple[Path, ...]]
"""A command's outputs of one slide, relative to the output folder (work folders included)."""

_GLOB_CHARS = frozenset("*?[")
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class SlideInput:
    """One whole slide of a run and the key its outputs are named after."""

    source: Path
    key: str  # output path without suffix, relative to --out (the stem, with sub-folders of a folder input)


def slide_key(relative: PurePosixPath | str) -> str:
    """The key of a slide at ``relative`` (to its input folder; a file input: its name), without suffix.

    ``a/b.svs`` -> ``a/b``; ``x.ome.tif`` -> ``x`` (an OME-TIFF's ``.ome`` is part of the suffix, not the name).
    """
    path = PurePosixPath(relative)
    stem = path.stem
    if stem.lower().endswith(".ome") and len(stem) > len(".ome"):
        stem = stem[: -len(".ome")]
    return (path.parent / stem).as_posix()


def _slide_files(folder: Path, recursive: bool) -> list[Path]:
    from histostain.io.slides import SLIDE_EXTENSIONS

    return sorted(
        f
        for f in (folder.rglob("*") if recursive else folder.iterdir())
        if f.is_file()
        and f.suffix.lower() in SLIDE_EXTENSIONS
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def split_inputs(
    inputs: Sequence[str | os.PathLike[str]], recursive: bool = False
) -> tuple[list[str], list[SlideInput], list[InputSpec]]:
    """``(image_inputs, slides, specs)``: the inputs left for the batch engine, the slides (module docstring),
    and the slides' input specs, which :func:`check_slides` uses to keep ``--out`` out of input folders."""
    from histostain.io.images import list_images
    from histostain.io.slides import SLIDE_EXTENSIONS, is_slide

    images: list[str] = []
    slides: list[SlideInput] = []
    specs: list[InputSpec] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.is_file():
            if is_slide(path):
                key = slide_key(path.name)
                slides.append(SlideInput(path, key))
                specs.append(InputSpec(text, "file", ((path, PurePosixPath(key)),)))
            else:
                images.append(text)
            continue
        if path.is_dir():
            keys = [
                (f, PurePosixPath(slide_key(f.relative_to(path).as_posix()))) for f in _slide_files(path, recursive)
            ]
            slides += [SlideInput(f, key.as_posix()) for f, key in keys]
            if keys:
                specs.append(InputSpec(text, "folder", tuple(keys), guard=path, guard_subfolders=True))
            try:
                list_images(path, recursive=recursive)
            except InputError:
                if keys:
                    continue  # slides only: nothing for the batch engine
            images.append(text)  # images too (or nothing at all: the batch engine says so)
            continue
        if not path.exists() and _GLOB_CHARS & set(text):
            matches = [m for m in sorted(Path(m) for m in glob.glob(text, recursive=True)) if m.is_file()]
            found = [m for m in matches if m.suffix.lower() in SLIDE_EXTENSIONS]
            slides += [SlideInput(f, slide_key(f.name)) for f in found]
            if found:
                specs.append(InputSpec(text, "file", tuple((f, PurePosixPath(slide_key(f.name))) for f in found)))
                if len(found) == len(matches):
                    continue  # slides only
        images.append(text)
    return images, slides, specs


def move_slides(plan: BatchPlan) -> tuple[BatchPlan, list[SlideInput]]:
    """``(plan, moved)``: the pyramidal TIFF slides a folder or glob brought into the batch plan, taken out of it."""
    from histostain.io.slides import is_slide

    kept, moved = [], []
    for item in plan.items:
        if item.source.suffix.lower() in _TIFF_SUFFIXES and is_slide(item.source):
            moved.append(SlideInput(item.source, slide_key(item.key)))
        else:
            kept.append(item)
    if not moved:
        return plan, []
    return replace(plan, items=tuple(kept), total=plan.total - len(moved)), moved


def check_slides(
    slides: Sequence[SlideInput],
    out_dir: Path,
    specs: Sequence[InputSpec],
    outputs: SlideOutputs,
    images: Sequence[BatchItem] = (),
) -> list[SlideInput]:
    """The slides once each (the same file reached twice under one key counts once), sorted by key.

    Refuses two slides writing one output, a slide writing an output of one of the ``images`` (the batch plan's
    items), an output that is an input, and ``--out`` inside an input folder; ``outputs`` names a slide's
    outputs relative to ``out_dir`` (each command its own).
    """
    unique: dict[tuple[str, str], SlideInput] = {}
    for slide in slides:
        unique.setdefault((slide.key, str(slide.source.resolve())), slide)
    by_target: dict[Path, Path] = {target: item.source for item in images for target in item.targets}
    items: list[BatchItem] = []
    for slide in sorted(unique.values(), key=lambda s: s.key):
        targets = tuple(out_dir / name for name in outputs(slide))
        for target in targets:
            clash = by_target.setdefault(target, slide.source)
            if clash != slide.source:
                raise InputError(
                    f"{clash} and {slide.source} would both be written to {target}",
                    hint="write them to different --out folders, or rename one",
                )
        items.append(BatchItem(slide.source, PurePosixPath(slide.key), targets))
    check_output_folder(out_dir, specs, items)
    return [SlideInput(item.source, item.key.as_posix()) for item in items]


@dataclass(frozen=True)
class SlideBatch:
    """A command's inputs sorted out: the batch plan of its images, this shard's slides, the shard, ``--out``."""

    plan: BatchPlan | None  # this shard's images; None: every input is a slide
    slides: tuple[SlideInput, ...]  # this shard's slides, sorted by key
    shard: Shard
    out_dir: Path
    any_slides: bool  # whether any input is a slide (on any shard)

    @property
    def runs_images(self) -> bool:
        """Whether the batch engine runs: this share has images, or nothing else (it then reports the empty run)."""
        return self.plan is not None and (bool(self.plan.items) or not self.slides)


def prepare_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    command: str,
    image_outputs: Callable[[], OutputNames],
    slide_outputs: SlideOutputs,
    recursive: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
) -> SlideBatch:
    """Split the inputs, plan the images, move pyramidal TIFFs to the slides, check the slides, take this share.

    Writes nothing and raises the user's errors, so a command calls it before loading any model. The batch
    engine is planned only when there are image inputs (or no slides, so that it names the problem);
    ``image_outputs`` is called only then, so a command may refuse there options that only images need.
    The images and the slides are each shared out between the shards after the whole plan is known, so every
    shard sees the same slides (the clash checks agree) and the moved TIFFs are shared like other slides.
    """
    from histostain.io.writable import check_output_folder as writable_folder

    shard = resolve_shard(num_parts, part_id)  # a bad --num-parts/--part-id first, as plan_batch does
    image_inputs, slides, specs = split_inputs(inputs, recursive)
    plan: BatchPlan | None = None
    images: tuple[BatchItem, ...] = ()  # every shard's
    if image_inputs or not slides:
        whole = plan_batch(image_inputs, out_dir, image_outputs(), command=command, recursive=recursive, environ={})
        whole, moved = move_slides(whole)
        slides += moved
        images = whole.items
        plan = replace(whole, items=tuple(shard.select(images)), shard=shard)
    out = Path(plan.out_dir if plan is not None else writable_folder(out_dir, "--out"))
    mine: list[SlideInput] = []
    if slides:
        mine = shard.select(check_slides(slides, out, specs, slide_outputs, images))
    return SlideBatch(plan, tuple(mine), shard, out, bool(slides))


__all__ = [
    "SlideBatch",
    "SlideInput",
    "SlideOutputs",
    "check_slides",
    "move_slides",
    "prepare_inputs",
    "slide_key",
    "split_inputs",
]
