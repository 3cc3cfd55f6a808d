"""The colour of every class a writer names: QuPath rejects a classification without one, so none is left out.

Names and colours of the datasets come from :mod:`histostain.vocabulary`; this module only decides which table
applies to a set of names, and gives a colour to a code or a name that no table knows (a model with more
classes, a class name read from another tool). The IHC intensity classes (Negative, 1+, 2+, 3+) are named as
QuPath names them, so scored nuclei land in QuPath's own intensity classes.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from histostain.vocabulary import (
    ENDONUKE_CLASS_NAMES,
    ENDONUKE_TYPE_COLOURS,
    PANNUKE_TYPE_COLOURS,
    PANNUKE_TYPE_NAMES,
    RGB,
    TYPE_PALETTE,
    type_colour,
)

# QuPath's intensity class names (PathClassFactory: "Negative", "1+", "2+", "3+"), indexed by the positivity
# score 0..3. Colours: blue, yellow, orange, red, bright enough to stand out as thin contours on hematoxylin
# blue and DAB brown (QuPath's own are close: 90,90,180 / 255,215,0 / 225,150,50 / 200,50,50).
IHC_CLASS_NAMES: dict[int, str] = {0: "Negative", 1: "1+", 2: "2+", 3: "3+"}
IHC_CLASS_COLOURS: dict[int, RGB] = {0: (40, 120, 255), 1: (255, 215, 0), 2: (255, 128, 0), 3: (230, 0, 0)}

# A code the palette draws in black (0, background) would vanish on dark nuclei: it is drawn grey.
UNLABELLED_COLOUR: RGB = (128, 128, 128)

_KNOWN_TABLES: tuple[tuple[Mapping[int, str], Mapping[int, RGB]], ...] = (
    (PANNUKE_TYPE_NAMES, PANNUKE_TYPE_COLOURS),
    (ENDONUKE_CLASS_NAMES, ENDONUKE_TYPE_COLOURS),
    (IHC_CLASS_NAMES, IHC_CLASS_COLOURS),
)
_NAME_COLOURS: dict[str, RGB] = {
    name: colours[code] for names, colours in _KNOWN_TABLES for code, name in names.items() if code in colours
}


def colours_for_names(type_names: Mapping[int, str] | None) -> dict[int, RGB]:
    """The colours that go with a table of class names: a known table's own colours, else the type palette.

    So EndoNuke names get EndoNuke colours (stroma is blue, not the palette's colour of code 0, black).
    """
    if type_names is None:
        return dict(PANNUKE_TYPE_COLOURS)
    for names, colours in _KNOWN_TABLES:
        if dict(type_names) == dict(names):
            return dict(colours)
    return {code: class_colour(code, {}) for code in type_names}


def class_colour(code: int, colours: Mapping[int, RGB]) -> RGB:
    """The colour of a class code: from ``colours``, else the type palette (grey instead of background black)."""
    if code in colours:
        return tuple(int(c) for c in colours[code])  # type: ignore[return-value]
    return type_colour(code) if code > 0 else UNLABELLED_COLOUR


def name_colour(name: str) -> RGB:
    """The colour of a class known only by its name: a dataset's colour if the name is one, else a palette
    colour chosen by a checksum of the name, so the same name always gets the same colour."""
    if name in _NAME_COLOURS:
        return _NAME_COLOURS[name]
    return TYPE_PALETTE[1 + zlib.crc32(name.encode("utf-8")) % (len(TYPE_PALETTE) - 1)]


__all__ = [
    "IHC_CLASS_COLOURS",
    "IHC_CLASS_NAMES",
    "UNLABELLED_COLOUR",
    "class_colour",
    "colours_for_names",
    "name_colour",
]
