"""`histostain weights list|info|path|download|import|verify`: the named models and their cache (docs/weights.md).

The commands parse options and call :mod:`histostain.weights` (registry, cache, download, importer, resolve);
the rules (which registry file, checksums, locking, offline) belong there. Nothing here imports torch except
``import``, whose check loads the file into the named architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from histostain.cli.common import print_json, print_summary, print_table, state, stderr_console
from histostain.cli.options import JsonOpt
from histostain.errors import ConfigError, HistostainError, WeightsError

if TYPE_CHECKING:
    from histostain.settings import Settings
    from histostain.weights.registry import ModelCard, Registry

DEFAULT_TIMEOUT = 60.0  # seconds without data before a download fails (histostain.weights.download's default)

weights_app = typer.Typer(
    help="List, download, import and verify named models (model cards, checksummed weights cache).",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="A model name, as `histostain weights list` shows it.")]


def _settings(ctx: typer.Context) -> Settings:
    return state(ctx).settings().settings


def _registry(settings: Settings, *, missing_ok: bool = False) -> Registry:
    from histostain.weights.resolve import open_registry

    return open_registry(settings, missing_ok=missing_ok)


def human_size(size: int | None) -> str:
    """``163.2 MB``; ``-`` for an unknown size."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - the loop always returns


def _cache_state(card: ModelCard, home: Path) -> dict[str, Any]:
    """Whether ``card`` is cached, where, and its record (a damaged record is reported, not raised). A packaged
    model counts as cached: its file is the one shipped with histostain (``packaged``: true, no record)."""
    from histostain.weights.cache import cache_size, cached_path, is_cached, read_record

    packaged = card.packaged_path()
    if packaged is not None:
        present = packaged.is_file()
        entry = {"cached": present, "packaged": True, "path": str(packaged), "record": None}
        entry["size_bytes"] = packaged.stat().st_size if present else None
        if not present:
            entry["problem"] = f"the packaged file {packaged} is missing (reinstall histostain)"
        return entry

    cached = is_cached(card, home)
    entry: dict[str, Any] = {
        "cached": cached,
        "packaged": False,
        "path": str(cached_path(card, home)),
        "size_bytes": None,
    }
    if cached:
        entry["size_bytes"] = cache_size(card, home)
        try:
            record = read_record(card, home)
            entry["record"] = record.to_dict() if record is not None else None
        except HistostainError as exc:
            entry["record"] = None
            entry["problem"] = exc.one_line()
    return entry


# ------------------------------------------------------------------------------------------------- list


@weights_app.command("list", epilog="Example: histostain weights list --json")
def list_command(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every model in the registry (histostain's and your own): name, task, cached or not, size and licence.

    Packaged models (the demo weights) ship inside histostain: always available, never downloaded.
    """
    from rich.table import Table

    settings = _settings(ctx)
    registry = _registry(settings)
    rows = []
    for name in registry.names():
        card = registry.cards[name]
        cache = _cache_state(card, settings.home)
        rows.append(
            {
                "name": name,
                "task": card.task,
                "arch": card.arch,
                "cached": cache["cached"],
                "packaged": cache["packaged"],
                "size_bytes": cache["size_bytes"] if cache["cached"] else card.size_bytes,
                "licence": card.licence,
                "downloadable": card.downloadable,
                "source": card.source,
                "path": cache["path"] if cache["cached"] else None,
            }
        )
    if as_json:
        print_json({"home": str(settings.home), "registry": _registry_file(registry), "models": rows})
        return
    table = Table(title=f"histostain models (cache: {settings.home / 'weights'})", title_justify="left")
    for column in ("name", "task", "cached", "size"):
        table.add_column(column, no_wrap=True, justify="right" if column == "size" else "left")
    table.add_column("licence", overflow="fold")
    for row in rows:
        if row["packaged"]:
            cached = "[green]packaged[/green]" if row["cached"] else "[red]missing[/red]"
        else:
            cached = "[green]yes[/green]" if row["cached"] else "no" if row["downloadable"] else "no (manual)"
        size = human_size(row["size_bytes"]) if row["cached"] else "-"
        table.add_row(row["name"], row["task"], cached, size, row["licence"])
    print_table(table)


def _registry_file(registry: Registry) -> str | None:
    path = registry.user_file
    return str(path) if path is not None and path.is_file() else None


# ------------------------------------------------------------------------------------------------- info


@weights_app.command("info", epilog="Example: histostain weights info hovernet_fast-pannuke")
def info_command(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """The model card of NAME (architecture, geometry, classes, source, licence, citation) and its cache state."""
    settings = _settings(ctx)
    card = _registry(settings).get(name)
    cache = _cache_state(card, settings.home)
    if as_json:
        print_json({"card": card.card(), "cache": cache})
        return
    geometry = card.geometry
    shown = {key: value for key, value in geometry.items() if value is not None}
    rows = [
        ("task", f"{card.task} ({card.arch})"),
        ("arguments", ", ".join(f"{key}={value}" for key, value in card.arch_args.items()) or "-"),
        ("geometry", ", ".join(f"{key}={value}" for key, value in shown.items()) or "-"),
        ("classes", ", ".join(f"{code}={label}" for code, label in enumerate(card.classes)) or "-"),
        ("file name", card.filename),
        (
            "urls",
            "\n".join(card.urls) or ("none (packaged with histostain)" if card.packaged else "none (manual download)"),
        ),
        ("sha256", card.sha256 or (f"{card.sha256_prefix}... (published prefix)" if card.sha256_prefix else "-")),
        ("licence", card.licence),
        ("citation", card.citation or "-"),
        ("intended use", card.intended_use or "-"),
    ]
    if card.manual_download:
        rows.append(("manual download", card.manual_download))
    if card.run_dir:
        rows.append(("training run", card.run_dir))
    rows.append(("registry", card.source))
    record = cache.get("record")
    if cache["packaged"]:
        rows.append(("packaged", cache.get("problem") or f"{cache['path']} ({human_size(cache['size_bytes'])})"))
    elif cache["cached"] and record:
        rows.append(("cached", f"{cache['path']} ({human_size(cache['size_bytes'])}, sha256 {record['sha256']})"))
        rows.append(("cached from", f"{record['source']} of {record['origin']} at {record['created']}"))
    else:
        rows.append(("cached", cache.get("problem") or "no"))
    print_summary(f"{card.name}", rows, header=False)


# ------------------------------------------------------------------------------------------------- path


@weights_app.command("path", epilog='Example: ls -l "$(histostain weights path fid-inception)"')
def path_command(ctx: typer.Context, name: NameArg) -> None:
    """Print the cached file of NAME (a packaged model: its shipped file) for scripts; exit 2 when not cached."""
    from histostain.weights.resolve import cached_weights

    settings = _settings(ctx)
    card = _registry(settings).get(name)
    path = cached_weights(card, settings.home)
    if path is None:
        how = f"histostain weights download {name}" if card.urls else f"histostain weights import {name} FILE"
        raise WeightsError(f"{name} is not in the cache ({settings.home / 'weights'})", hint=f"run `{how}`")
    typer.echo(str(path))


# --------------------------------------------------------------------------------------------- download


@weights_app.command(
    "download", epilog="Example: histostain weights download hovernet_fast-pannuke fid-inception --timeout 120"
)
def download_command(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME", help="Models to download (see `histostain weights list`).", show_default=False),
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Every model that has a download URL.", show_default="off")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds without data from the server before giving up.")
    ] = DEFAULT_TIMEOUT,
    force: Annotated[
        bool, typer.Option("--force", help="Download again even when the model is cached.", show_default="off")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download models into the cache: checksummed, renamed into place only when complete (safe to interrupt).

    Without a published sha256 the digest is computed, recorded and checked by every later verify.

    With HISTOSTAIN_OFFLINE=1 nothing is downloaded.
    """
    from histostain.weights.cache import is_cached
    from histostain.weights.download import download

    settings = _settings(ctx)
    registry = _registry(settings)
    if all_models and names:
        raise ConfigError("give model names or --all, not both")
    if all_models:
        cards = [registry.cards[name] for name in registry.names()]
    elif names:
        cards = [registry.get(name) for name in dict.fromkeys(names)]
    else:
        raise ConfigError("name the models to download, or give --all", hint="see `histostain weights list`")
    rows: list[dict[str, Any]] = []
    failures: list[HistostainError] = []
    for card in cards:
        row: dict[str, Any] = {"name": card.name, "licence": card.licence}
        if card.packaged is not None:
            path = card.packaged_path()
            present = path is not None and path.is_file()
            status = "packaged with histostain (nothing to download)" if present else "packaged file missing"
            rows.append({**row, "status": status, "path": str(path)})
            if not present:
                failures.append(WeightsError(f"{card.name}: the packaged file {path} is missing", hint="reinstall"))
            continue
        if all_models and not card.urls:
            rows.append({**row, "status": "skipped: no direct URL (download by hand, then `weights import`)"})
            continue
        had = is_cached(card, settings.home) and not force
        try:
            record = download(card, settings.home, offline=settings.offline, timeout=timeout, force=force)
        except HistostainError as exc:
            if len(cards) == 1:
                raise
            failures.append(exc)
            rows.append({**row, "status": "failed", "error": exc.one_line()})
            continue
        rows.append(
            {
                **row,
                "status": "already cached" if had else "downloaded",
                "sha256": record.sha256,
                "checked_against": record.checked_against,
                "size_bytes": record.size_bytes,
                "path": str(settings.home / "weights" / card.name / record.filename),
            }
        )
    if as_json:
        print_json({"models": rows})
    else:
        _download_table(rows)
    console = stderr_console()
    for row in rows:
        if row["status"] == "failed":
            console.print(f"[yellow]warning:[/yellow] {row['error']}", highlight=False, markup=True)
    if failures:
        first = failures[0]
        raise WeightsError(f"{len(failures)} of {len(cards)} downloads failed: {first.message}", hint=first.hint)


def _download_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="histostain weights download", title_justify="left")
    for column in ("name", "status", "size", "sha256", "licence"):
        table.add_column(column, overflow="fold", justify="right" if column == "size" else "left")
    for row in rows:
        digest = row.get("sha256", "-")
        if row.get("checked_against") == "recorded":
            digest += " (recorded: no published sha256)"
        table.add_row(row["name"], row["status"], human_size(row.get("size_bytes")), digest, row["licence"])
    print_table(table)


# ----------------------------------------------------------------------------------------------- import


IMPORT_EXAMPLE = (
    "Example: histostain weights import hovernet_fast-pannuke ~/Downloads/hovernet_fast_pannuke_type_tf2pytorch.tar"
    " (a training run: histostain weights import hovernet_fast-mylab.v1 runs/mylab)"
)


@weights_app.command("import", epilog=IMPORT_EXAMPLE)
def import_command(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="A registry name for a file; a new name (<arch>-<dataset>.<tag>) for a run folder."
        ),
    ],
    source: Annotated[
        Path,
        typer.Argument(
            metavar="FILE|RUN_DIR", help="A weights file you downloaded, or a `histostain train` run folder."
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Cache a weights file you downloaded, or register a training run as a new model, once it loads as NAME.

    The file must load into NAME's architecture with NAME's classes; it is cached under the card's file name.

    A run folder gets a card from its record (classes, scale, geometry) in your registry file, and its best.pt.

    Your registry file: HISTOSTAIN_REGISTRY, else the settings' registry, else HISTOSTAIN_HOME/registry.toml.
    """
    from histostain.weights.importer import import_model
    from histostain.weights.resolve import user_registry_path

    settings = _settings(ctx)
    registry = _registry(settings, missing_ok=True)
    if name in registry and registry.cards[name].packaged is not None:
        raise ConfigError(
            f"{name} is packaged with histostain: there is nothing to import",
            hint="register your own weights under another name (<arch>-<dataset>.<tag>)",
        )
    result = import_model(registry, name, source, settings.home, user_registry=user_registry_path(settings))
    card, record = result.card, result.record
    if as_json:
        payload = {"card": card.card(), "record": record.to_dict(), "registered": result.registered}
        print_json(payload)
        return
    rows = [
        ("from", record.origin),
        ("cached as", str(settings.home / "weights" / card.name / record.filename)),
        ("size", human_size(record.size_bytes)),
        ("sha256", f"{record.sha256} (checked against {record.checked_against})"),
        ("task", f"{card.task} ({card.arch})"),
        ("classes", ", ".join(card.classes) or "-"),
        ("licence", card.licence),
    ]
    if result.registered is not None:
        rows.append(("registered in", str(result.registered)))
    print_summary(f"histostain weights import {card.name}", rows, header=False)


# ----------------------------------------------------------------------------------------------- verify


@weights_app.command("verify", epilog="Example: histostain weights verify")
def verify_command(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME", help="Models to check.", show_default="every cached model"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash cached models against the registry's digests and their cache records; exit 2 if any fails.

    Packaged models (the demo weights) are checked against their cards' sha256 too.
    """
    from histostain.weights.cache import cached_path, record_path, verify

    settings = _settings(ctx)
    registry = _registry(settings)
    if names:
        cards = [registry.get(name) for name in dict.fromkeys(names)]
    else:
        cards = [
            registry.cards[name]
            for name in registry.names()
            if registry.cards[name].packaged is not None
            or cached_path(registry.cards[name], settings.home).exists()
            or record_path(registry.cards[name], settings.home).exists()
        ]
    results = []
    for card in cards:
        ok, message = verify(card, settings.home)
        results.append({"name": card.name, "ok": ok, "message": message})
    shown = [(row["name"], row["message"].removeprefix(f"{row['name']}: ")) for row in results]
    if as_json:
        print_json({"home": str(settings.home), "models": results})
    elif results:
        marks = ["" if row["ok"] else "[red]FAILED[/red] " for row in results]
        print_summary(
            "histostain weights verify", [(name, mark + text) for (name, text), mark in zip(shown, marks, strict=True)]
        )
    else:
        print_summary(
            "histostain weights verify", [("cached models", f"none in {settings.home / 'weights'}")], header=False
        )
    failed = [row for row in results if not row["ok"]]
    if failed:
        raise WeightsError(
            f"{len(failed)} of {len(results)} cached model(s) failed verification: {failed[0]['message']}",
            hint="download them again with --force, or import the files again",
        )


__all__ = ["weights_app"]
