"""`--weights` resolution: a file as it is, a run folder's checkpoint with its card, a registry name from the
cache (downloaded when missing unless offline); wrong tasks and typos are one line; FID finds the cache."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from histostain.errors import ConfigError, HistostainError, WeightsError
from histostain.metrics.inception import FID_WEIGHTS_URL
from histostain.metrics.inception import resolve_weights as fid_resolve
from histostain.runtime.environment import fid_weights_status
from histostain.settings import load_settings
from histostain.weights.cache import cached_path, is_cached, model_dir, read_record
from histostain.weights.importer import import_weights
from histostain.weights.registry import load_registry
from histostain.weights.resolve import open_registry, resolve_weights, user_registry_path


def _settings(home: Path, **environ: str):
    return load_settings(environ={"HISTOSTAIN_HOME": str(home), **environ}).settings


def _one_line(error: HistostainError) -> str:
    line = error.one_line()
    assert "\n" not in line
    return line


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a URL fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the network was used: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _user_registry(tmp_path: Path, source: Path, name: str = "hovernet_fast-mylab.v1") -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(
        f'[models."{name}"]\ntask = "segmentation"\narch = "hovernet"\narch_args = {{ mode = "fast", num_types = 6 }}\n'
        f'vocabulary = "pannuke"\nmpp = 0.5\nfilename = "mylab.pth"\nurls = ["{source.resolve().as_uri()}"]\n'
        'licence = "internal: lab use only"\n',
        encoding="utf-8",
    )
    return path


def test_an_existing_file_is_used_as_it_is(tmp_path: Path, weight_files: dict[str, Path], no_network: None) -> None:
    resolved = resolve_weights(weight_files["official"], task="segmentation", settings=_settings(tmp_path))
    assert (resolved.path, resolved.card, resolved.kind) == (weight_files["official"], None, "file")


def test_a_run_folder_gives_its_checkpoint_and_a_card_from_its_record(
    tmp_path: Path, trained_runs: dict[str, Path]
) -> None:
    checkpoints = trained_runs["hovernet"].resolve() / "checkpoints"
    resolved = resolve_weights(trained_runs["hovernet"], task="segmentation", settings=_settings(tmp_path))
    assert resolved.kind == "run"
    assert resolved.path == checkpoints / ("best.pt" if (checkpoints / "best.pt").is_file() else "last.pt")
    assert resolved.card is not None and resolved.card.task == "segmentation"
    assert resolved.card.classes[1] == "Neoplastic" and resolved.card.run_dir == str(trained_runs["hovernet"].resolve())
    with pytest.raises(ConfigError) as info:
        resolve_weights(trained_runs["cyclegan"], task="segmentation", settings=_settings(tmp_path))
    line = _one_line(info.value)
    assert "`histostain train cyclegan` run" in line and "segment needs a segmentation model" in line
    assert not (tmp_path / "weights").exists()  # resolving a run caches nothing


def test_a_cached_name_resolves_to_the_cache_and_a_name_of_another_task_is_one_line(
    tmp_path: Path, weight_files: dict[str, Path], no_network: None
) -> None:
    registry = load_registry()
    import_weights(registry, "hovernet_fast-pannuke", weight_files["official"], tmp_path, user_registry=None)
    settings = _settings(tmp_path)
    resolved = resolve_weights("hovernet_fast-pannuke", task="segmentation", settings=settings)
    assert resolved.kind == "registry" and resolved.card == registry.get("hovernet_fast-pannuke")
    assert resolved.path == cached_path(resolved.card, tmp_path) and resolved.path.is_file()
    with pytest.raises(ConfigError) as info:
        resolve_weights("hovernet_fast-pannuke", task="translation", settings=settings)
    line = _one_line(info.value)
    assert "hovernet_fast-pannuke is a segmentation model (hovernet); translate needs a translation model" in line
    assert "cyclegan-bci.seed" in line  # the models that would do


def test_a_missing_model_downloads_unless_offline_which_names_the_url_and_the_import_command(
    tmp_path: Path, weight_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = _user_registry(tmp_path, weight_files["tiatoolbox"])
    offline = _settings(tmp_path / "home", HISTOSTAIN_REGISTRY=str(user), HISTOSTAIN_OFFLINE="1")
    assert offline.offline is True
    with pytest.raises(WeightsError) as info:
        resolve_weights("hovernet_fast-mylab.v1", task="segmentation", settings=offline)
    line = _one_line(info.value)
    assert weight_files["tiatoolbox"].resolve().as_uri() in line
    assert "histostain weights import hovernet_fast-mylab.v1 FILE" in line
    card = load_registry(user).get("hovernet_fast-mylab.v1")
    assert not is_cached(card, tmp_path / "home")

    online = _settings(tmp_path / "home", HISTOSTAIN_REGISTRY=str(user))
    resolved = resolve_weights("hovernet_fast-mylab.v1", task="segmentation", settings=online)
    assert resolved.path == cached_path(card, tmp_path / "home")
    assert resolved.path.read_bytes() == weight_files["tiatoolbox"].read_bytes()
    record = read_record(card, tmp_path / "home")
    assert record is not None and record.source == "download" and record.checked_against == "recorded"
    assert resolved.card is not None and resolved.card.mpp == 0.5 and resolved.card.licence == "internal: lab use only"


def test_a_packaged_model_offline_says_where_to_get_it_without_touching_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("HISTOSTAIN_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        resolve_weights("fid-inception", task="fid", settings=_settings(tmp_path))
    line = _one_line(info.value)
    assert FID_WEIGHTS_URL in line and "histostain weights import fid-inception FILE" in line


def test_a_damaged_cache_entry_is_one_line(tmp_path: Path, weight_files: dict[str, Path], no_network: None) -> None:
    registry = load_registry()
    import_weights(registry, "hovernet_fast-pannuke", weight_files["official"], tmp_path, user_registry=None)
    path = cached_path(registry.get("hovernet_fast-pannuke"), tmp_path)
    path.write_bytes(path.read_bytes()[:-10])  # truncated behind the cache's back
    with pytest.raises(WeightsError) as info:
        resolve_weights("hovernet_fast-pannuke", task="segmentation", settings=_settings(tmp_path))
    line = _one_line(info.value)
    assert "damaged" in line and "weights download hovernet_fast-pannuke --force" in line


def test_typos_and_missing_files_are_one_line(tmp_path: Path, no_network: None) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve_weights("hovernet_fast-panuke", task="segmentation", settings=settings)
    line = _one_line(info.value)
    assert "neither a weights file, a training run folder nor a model" in line and "hovernet_fast-pannuke" in line
    for missing in (tmp_path / "nope.pth", "weights/model.tar", "hovernet_fast-pannuke.pth"):
        with pytest.raises(WeightsError) as info:
            resolve_weights(missing, task="segmentation", settings=settings)
        assert "weights file not found" in _one_line(info.value)


def test_the_user_registry_file_env_then_settings_then_home(tmp_path: Path, weight_files: dict[str, Path]) -> None:
    plain = _settings(tmp_path / "home")
    assert user_registry_path(plain) == tmp_path / "home" / "registry.toml"
    assert open_registry(plain).names() == load_registry().names()  # the default file is read only if present
    lab = _user_registry(tmp_path, weight_files["official"])
    from_settings = _settings(tmp_path / "home", HISTOSTAIN_REGISTRY=str(lab))
    assert user_registry_path(from_settings) == lab and "hovernet_fast-mylab.v1" in open_registry(from_settings)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "registry.toml").write_text(lab.read_text())
    assert "hovernet_fast-mylab.v1" in open_registry(plain)  # now present: read
    typo = _settings(tmp_path / "home", HISTOSTAIN_REGISTRY=str(tmp_path / "lab_typo.toml"))
    with pytest.raises(ConfigError, match="registry file not found"):
        open_registry(typo)  # a configured file that is missing hides nothing silently
    assert open_registry(typo, missing_ok=True).user_file == tmp_path / "lab_typo.toml"  # import may create it


# ----------------------------------------------------------------------------------------------- FID


def test_fid_weights_are_found_in_the_cache_layout_and_the_flat_one(
    tmp_path: Path, install_fid_weights, no_network: None
) -> None:
    weights_dir = tmp_path / "home" / "weights"
    card = load_registry().get("fid-inception")
    with pytest.raises(WeightsError) as info:
        fid_resolve(None, weights_dir)
    line = _one_line(info.value)
    assert str(cached_path(card, tmp_path / "home")) in line and "histostain weights download fid-inception" in line
    flat = install_fid_weights(weights_dir)  # where earlier versions told users to put it
    assert fid_resolve(None, weights_dir) == flat
    cached = install_fid_weights(model_dir(card, tmp_path / "home"))  # the cache's layout wins when both exist
    assert cached == cached_path(card, tmp_path / "home") and fid_resolve(None, weights_dir) == cached
    status = fid_weights_status(weights_dir)
    assert status["present"] is True and status["path"] == str(cached) and status["published"] is False


def test_the_published_fid_file_is_checked_on_import(tmp_path: Path, fid_weights: Path) -> None:
    """The registry knows the published file's sha256 prefix: the tests' random network is refused."""
    registry = load_registry()
    with pytest.raises(WeightsError) as info:
        import_weights(registry, "fid-inception", fid_weights, tmp_path, user_registry=None)
    line = _one_line(info.value)
    assert "checksum mismatch" in line and "6726825d..." in line
    assert not is_cached(registry.get("fid-inception"), tmp_path)
