"""Settings precedence: flag > HISTOSTAIN_* environment > histostain.toml > default, with recorded sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from histostain.errors import ConfigError
from histostain.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HISTOSTAIN_* are cleared by conftest; the cache root also depends on XDG_CACHE_HOME."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./histostain.toml


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    resolved = load_settings()
    assert resolved.settings.device == "auto"
    assert resolved.settings.precision == "auto"
    assert resolved.settings.home == tmp_path / "home" / ".cache" / "histostain"
    assert resolved.settings.weights_dir == resolved.settings.home / "weights"
    assert set(resolved.sources.values()) == {"default"}
    assert resolved.settings_file is None


def test_each_layer_beats_the_one_below(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg.toml", 'device = "cuda:1"\nprecision = "fp16"\nnum_threads = 3\n')
    # file only
    resolved = load_settings(settings_file=config)
    assert (resolved.settings.device, resolved.settings.precision, resolved.settings.num_threads) == (
        "cuda:1",
        "fp16",
        3,
    )
    assert resolved.sources["device"] == f"file ({config})"
    # environment beats file
    monkeypatch.setenv("HISTOSTAIN_DEVICE", "mps")
    monkeypatch.setenv("HISTOSTAIN_NUM_THREADS", "2")
    resolved = load_settings(settings_file=config)
    assert resolved.settings.device == "mps" and resolved.settings.num_threads == 2
    assert resolved.sources["device"] == "environment (HISTOSTAIN_DEVICE)"
    assert resolved.settings.precision == "fp16" and resolved.sources["precision"].startswith("file")
    # flag beats environment; a flag left unset (None) does not
    resolved = load_settings({"device": "cpu", "precision": None}, settings_file=config)
    assert resolved.settings.device == "cpu" and resolved.sources["device"] == "flag"
    assert resolved.settings.precision == "fp16"
    assert resolved.sources["quiet"] == "default"


def test_explicit_environment_mapping_is_isolated_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOSTAIN_DEVICE", "mps")
    resolved = load_settings(environ={"HISTOSTAIN_PRECISION": "bf16"})
    assert resolved.settings.device == "auto"
    assert resolved.settings.precision == "bf16"


def test_home_from_environment_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HISTOSTAIN_HOME", "~/hs-cache")
    resolved = load_settings()
    assert resolved.settings.home == tmp_path / "hs-cache"
    assert resolved.sources["home"] == "environment (HISTOSTAIN_HOME)"


def test_config_file_discovery_env_then_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(tmp_path / "histostain.toml", 'precision = "fp32"\n')
    assert load_settings().settings.precision == "fp32"
    other = write_config(tmp_path / "other.toml", 'precision = "bf16"\n')
    monkeypatch.setenv("HISTOSTAIN_SETTINGS", str(other))
    resolved = load_settings()
    assert resolved.settings.precision == "bf16" and resolved.settings_file == other


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('device = "gpu"\n', "invalid setting device='gpu'"),
        ('precision = "int8"\n', "invalid setting precision='int8'"),
        ('devcie = "cpu"\n', "invalid setting devcie"),  # typo in a key is caught, not ignored
        ("device = \n", "is not valid TOML"),
        ("num_threads = 0\n", "invalid setting num_threads=0"),
    ],
)
def test_bad_config_files_are_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    config = write_config(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(settings_file=config)
    assert fragment in info.value.message
    assert str(config) in info.value.message


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOSTAIN_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="HISTOSTAIN_DEVICE"):
        load_settings()


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(settings_file=tmp_path / "nope.toml")
