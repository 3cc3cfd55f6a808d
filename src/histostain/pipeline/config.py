"""Every option of ``histostain pipeline`` in one model, so a run can be described by a ``pipeline.toml``.

Precedence: an option given on the command line > the ``--config pipeline.toml`` value > the default. The
resolved configuration is written to ``DIR/pipeline.toml`` at the start of every run, so a run can be repeated
with ``histostain pipeline --config DIR/pipeline.toml``. Torch-free: ``--help`` reads the defaults from here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from histostain.errors import ConfigError
from histostain.io.defaults import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE

CONFIG_NAME = "pipeline.toml"
FORMAT_NAMES = ("json", "geojson", "tif", "png", "txt")
DEFAULT_RADIUS_UM = 3.0  # EndoNuke's matching radius (docs/commands/evaluate-celldet.md)
DEFAULT_SAMPLES = 8
DEFAULT_CHUNK = 2048


class PipelineConfig(BaseModel):
    """What a pipeline run does; field names are the command's options (``--segmenter-weights`` ->
    ``segmenter_weights``)."""

    model_config = ConfigDict(extra="forbid")

    input: list[str] = Field(default_factory=list, description="image files, folders or glob patterns")
    out: Path | None = None
    # translation
    translator: str | None = None  # FILE | RUN | NAME
    direction: Literal["ihc2he", "he2ihc"] = "ihc2he"
    no_translate: bool = False
    keep_translated: bool = True
    tile: int = Field(DEFAULT_TILE, ge=16)
    overlap: int = Field(DEFAULT_OVERLAP, ge=0)
    # segmentation
    # None: hovernet with weights, else classical; detector: the packaged detector-endonuke unless weights given
    segmenter: Literal["hovernet", "classical", "detector"] | None = None
    segmenter_weights: str | None = None
    stain: Literal["he", "ihc", "auto"] | None = None  # None: he after translation to H&E, else auto
    dab: Literal["nuclear", "membrane"] = "nuclear"
    positivity: tuple[float, float, float] = (0.2, 0.4, 0.6)
    mpp: float | None = Field(None, gt=0)
    chunk_size: int | None = Field(None, ge=256)  # None: the segmenter's own (DEFAULT_CHUNK; the detector 1024)
    roi: str | None = None  # whole slides: x,y,w,h in level-0 pixels
    tissue_mask: str = "auto"  # whole slides: auto | none | a PNG
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    formats: list[str] = Field(default_factory=lambda: list(FORMAT_NAMES))
    # scoring and report
    ground_truth: Path | None = None
    split: str | None = None
    radius_um: float = Field(DEFAULT_RADIUS_UM, ge=0)
    report_samples: int = Field(DEFAULT_SAMPLES, ge=0)
    # batch
    recursive: bool = False
    overlap_stages: bool = True  # translate the next image while this one is segmented

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, value: list[str]) -> list[str]:
        names = [name.strip().lower() for name in value if name.strip()]
        unknown = [name for name in names if name not in FORMAT_NAMES]
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(unknown)}; use some of {','.join(FORMAT_NAMES)}")
        if not names:
            raise ValueError("at least one format")
        return names

    @field_validator("positivity")
    @classmethod
    def _check_positivity(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not (0 <= value[0] < value[1] < value[2]):
            raise ValueError("three increasing, non-negative DAB OD thresholds for 1+, 2+, 3+")
        return value

    @model_validator(mode="after")
    def _check_choices(self) -> PipelineConfig:
        if self.segmenter == "classical" and self.segmenter_weights:
            raise ValueError(
                "--segmenter-weights is for --segmenter hovernet|detector; the classical model uses no weights"
            )
        if self.segmenter == "hovernet" and not self.segmenter_weights:
            raise ValueError("--segmenter hovernet needs --segmenter-weights FILE|RUN|NAME")
        return self

    # ------------------------------------------------------------------------------------------ derived
    @property
    def translates(self) -> bool:
        return not self.no_translate

    @property
    def segmenter_model(self) -> str:
        if self.segmenter is not None:
            return self.segmenter
        return "hovernet" if self.segmenter_weights else "classical"

    @property
    def segmenter_stain(self) -> str:
        """The stain the segmenter sees: H&E after an IHC -> H&E translation, IHC after H&E -> IHC."""
        if self.stain is not None:
            return self.stain
        if self.translates:
            return "he" if self.direction == "ihc2he" else "ihc"
        return "auto"

    def check_ready(self) -> None:
        """What a run needs beyond valid values: inputs, an output folder, a translator unless told not to."""
        if not self.input:
            raise ConfigError("no input: give --input DIR|FILE|GLOB (or `input = [...]` in the config file)")
        if self.out is None:
            raise ConfigError("no output folder: give --out DIR (or `out = ...` in the config file)")
        if self.translates and not self.translator:
            raise ConfigError(
                "no translator: give --translator FILE|RUN|NAME, or --no-translate to segment the inputs as they are",
                hint="`histostain weights list` shows the translation models (cyclegan-demo: synthetic tissue only)",
            )


def _fail(exc: ValidationError, origin: str) -> ConfigError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    option = "--" + where.replace("_", "-") if origin == "the command line" else where
    message = str(first["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{origin}: {option}: {message}", hint="see `histostain pipeline --help`")


def read_config_file(path: Path) -> dict[str, Any]:
    """The options of a ``pipeline.toml`` (unknown keys are errors: a typo must not be ignored)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(PipelineConfig.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}", hint="see docs/pipeline.md")
    return data


def resolve_config(overrides: dict[str, Any], config_file: Path | None = None) -> PipelineConfig:
    """The run's configuration: ``overrides`` (options given on the command line; None = not given) over the
    config file's values over the defaults. Relative paths of a config file are relative to the file."""
    base: dict[str, Any] = {}
    if config_file is not None:
        base = read_config_file(config_file)
        for key in ("out", "ground_truth", "translator", "segmenter_weights"):
            value = base.get(key)
            if isinstance(value, str) and _is_relative_path(value, config_file):
                base[key] = str(Path(config_file).parent / value)
        if isinstance(base.get("input"), str):
            base["input"] = [base["input"]]
        base["input"] = [
            str(Path(config_file).parent / text) if _is_relative_path(text, config_file) else text
            for text in base.get("input", [])
        ]
        try:
            PipelineConfig(**base)
        except ValidationError as exc:
            raise _fail(exc, str(config_file)) from None
    given = {key: value for key, value in overrides.items() if value is not None and value != []}
    try:
        return PipelineConfig(**{**base, **given})
    except ValidationError as exc:
        raise _fail(exc, "the command line") from None


def _is_relative_path(text: str, config_file: Path) -> bool:
    """A relative path written in a config file (a registry name such as ``cyclegan-demo`` is left alone)."""
    path = Path(text)
    return not path.is_absolute() and (Path(config_file).parent / path).exists()


def write_config(config: PipelineConfig, folder: Path) -> Path:
    """``folder/pipeline.toml``: every resolved option (absolute paths), atomically."""
    from histostain.runtime.config_toml import write_toml

    data = config.model_dump(mode="json")
    data["input"] = [str(Path(text).resolve()) if Path(text).exists() else text for text in config.input]
    for key in ("out", "ground_truth"):
        if data.get(key):
            data[key] = str(Path(data[key]).resolve())
    for key in ("translator", "segmenter_weights"):
        if data.get(key) and Path(data[key]).exists():
            data[key] = str(Path(data[key]).resolve())
    data["positivity"] = list(config.positivity)
    path = folder / CONFIG_NAME
    write_toml(path, data, header="histostain pipeline: the resolved options of this run (--config this file)")
    return path


__all__ = [
    "CONFIG_NAME",
    "DEFAULT_RADIUS_UM",
    "DEFAULT_SAMPLES",
    "FORMAT_NAMES",
    "PipelineConfig",
    "read_config_file",
    "resolve_config",
    "write_config",
]
