"""A small TOML writer for resolved configurations (Python's ``tomllib`` reads TOML but cannot write it).

It covers what histostain records in ``config.toml``: strings, integers, floats (including inf/nan), booleans,
lists of those, nested tables, and lists of tables (written as ``[[array.of.tables]]`` sections, e.g. a
training run's resume history). ``None`` means "not set" and is skipped, because TOML
has no null; :class:`pathlib.Path` values are written as strings. Reading the result back with ``tomllib``
gives the same values (minus the ``None`` entries), which the tests check by round trip.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from histostain.io.atomic import atomic_write_text

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # used with fullmatch: "$" would let "a\n" through
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _key(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"TOML keys must be strings, got {type(name).__name__} {name!r}")
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(float(value))
    return text if any(c in text for c in ".eE") else text + ".0"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    """A non-empty list whose items are all tables: written as ``[[name]]`` sections, one per item."""
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes | bytearray)
        and len(value) > 0
        and all(_is_table(item) for item in value)
    )


def _value(value: Any) -> str:
    """One inline value (scalars, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, PurePath):
        return _string(str(value))
    if _is_table(value):
        items = [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}" if items else "{}"
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        if any(item is None for item in value):
            raise TypeError("TOML arrays cannot hold None")
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _value(value.item())
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _table(lines: list[str], path: list[str], table: Mapping[str, Any], array_item: bool = False) -> None:
    """Append ``table`` at ``path``: its scalars under its header, then its sub-tables, then its table arrays.

    ``array_item``: the table is one item of a table array (header ``[[path]]``, always written, because each
    header starts a new item).
    """
    scalars = [(k, v) for k, v in table.items() if v is not None and not _is_table(v) and not _is_table_array(v)]
    tables = [(k, v) for k, v in table.items() if _is_table(v)]
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v)]
    dotted = ".".join(_key(part) for part in path)
    if array_item or (path and (scalars or not (tables or arrays))):
        if lines:
            lines.append("")
        lines.append(f"[[{dotted}]]" if array_item else f"[{dotted}]")
    for key, value in scalars:
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables:
        _table(lines, [*path, key], value)
    for key, items in arrays:
        for item in items:
            _table(lines, [*path, key], item, array_item=True)


def dumps(data: Mapping[str, Any], header: str | None = None) -> str:
    """Serialise a mapping as a TOML document (top-level scalars first, then one ``[table]`` per mapping)."""
    lines: list[str] = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()]
    body: list[str] = []
    _table(body, [], data)
    if lines and body:
        lines.append("")
    return "\n".join(lines + body) + "\n"


def write_toml(path: str | os.PathLike[str], data: Mapping[str, Any], header: str | None = None) -> None:
    """Write ``data`` as TOML atomically."""
    atomic_write_text(path, dumps(data, header=header))


__all__ = ["dumps", "write_toml"]
