"""Two adjustments to typer's rich help so every command's options read the same way.

* A flag takes no value, so its type column stays empty instead of reading ``<bool>``.
* A default given as text (``show_default="0 on a CPU"``, for computed or automatic defaults) reads
  ``[default: 0 on a CPU]`` like every other default, instead of typer's ``[default: (0 on a CPU)]``.
* A required argument reads ``SOURCE`` in the usage line (the convention of every Unix manual), not
  ``{SOURCE}``; optional ones keep their brackets.

Both wrap typer's own methods; if a typer release renames them, the wrappers are skipped and help keeps
typer's formatting (a test checks the result on the real commands).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

_APPLIED = False


def apply() -> None:
    """Install the adjustments once per process."""
    global _APPLIED
    if _APPLIED:
        return
    _APPLIED = True
    display_type = getattr(TyperOption, "display_type_rich", None)
    if display_type is not None:

        def flag_without_type(self: TyperOption, ctx: Any) -> str | None:
            return None if self.is_flag and self.metavar is None else display_type(self, ctx)

        TyperOption.display_type_rich = flag_without_type  # type: ignore[method-assign]
    for cls in (TyperOption, TyperArgument):
        default_string = getattr(cls, "_get_default_string", None)
        if default_string is None:
            continue

        def plain_text_default(
            self: Any, *, ctx: Any, show_default_is_str: bool, default_value: Any, _original: Any = default_string
        ) -> str:
            if show_default_is_str:
                return str(self.show_default)
            return _original(self, ctx=ctx, show_default_is_str=show_default_is_str, default_value=default_value)

        cls._get_default_string = plain_text_default  # type: ignore[method-assign]
    if hasattr(TyperArgument, "_usage_display_name"):

        def usage_name(self: TyperArgument) -> str:
            name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            return name + ("..." if self.nargs != 1 else "")

        TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


__all__ = ["apply"]
