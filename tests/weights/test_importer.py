"""`weights import`: a file must load into the card's architecture and classes before it is cached (under the
card's file name); a training run is registered under a new name with a card built from its own record."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from histostain.errors import ConfigError, HistostainError, InputError, WeightsError
from histostain.runtime.checkpoint import load_histostain_checkpoint
from histostain.segmentation.compat import load_hovernet
from histostain.translation.compat import load_generator
from histostain.weights.cache import cached_path, is_cached, model_dir, read_record, verify
from histostain.weights.importer import identify, import_model, import_weights, read_run
from histostain.weights.registry import load_registry


def _one_line(error: HistostainError) -> str:
    line = error.one_line()
    assert "\n" not in line
    return line


# --------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("kind", ["official", "tiatoolbox"])
def test_a_downloaded_hovernet_file_is_cached_under_the_cards_file_name(
    tmp_path: Path, weight_files: dict[str, Path], kind: str
) -> None:
    registry = load_registry()
    card = registry.get("hovernet_fast-pannuke")
    source = weight_files[kind]
    record = import_weights(registry, card.name, source, tmp_path / "home", user_registry=None)
    cached = cached_path(card, tmp_path / "home")
    assert cached.name == card.filename != source.name  # hover_net's .tar is stored as the card's .pth
    assert cached.read_bytes() == source.read_bytes() and source.is_file()  # copied, not moved
    assert (record.source, record.origin, record.size_bytes) == ("import", str(source.resolve()), source.stat().st_size)
    assert read_record(card, tmp_path / "home") == record
    assert verify(card, tmp_path / "home")[0] is True
    _, loaded = load_hovernet(cached, mode="fast", num_types=6)
    assert loaded.format == kind
    assert not (tmp_path / "home" / "registry.toml").exists()  # a file for a known name registers nothing


@pytest.mark.parametrize(
    ("name", "kind", "what"),
    [
        ("hovernet_fast-pannuke", "seed_generator", "is a CycleGAN generator (seed format, ihc2he), not HoVer-Net"),
        ("hovernet_fast-pannuke", "generator", "is a CycleGAN generator (histostain format, ihc2he), not HoVer-Net"),
        ("cyclegan-bci.seed", "official", "is HoVer-Net weights (fast mode with 6 types, official format), not Cyc"),
        ("fid-inception", "tiatoolbox", "is HoVer-Net weights (fast mode with 6 types, tiatoolbox format), not FID"),
    ],
)
def test_a_file_of_another_architecture_is_refused_with_what_it_is_and_nothing_is_cached(
    tmp_path: Path, weight_files: dict[str, Path], name: str, kind: str, what: str
) -> None:
    registry = load_registry()
    with pytest.raises(WeightsError) as info:
        import_weights(registry, name, weight_files[kind], tmp_path / "home", user_registry=None)
    line = _one_line(info.value)
    assert str(weight_files[kind]) in line and what in line and f"import it as {name}" in line
    assert not model_dir(registry.get(name), tmp_path / "home").exists()


def test_the_right_architecture_with_other_arguments_is_refused_by_the_loaders_check(
    tmp_path: Path, weight_files: dict[str, Path]
) -> None:
    registry = load_registry()
    with pytest.raises(WeightsError) as info:  # a 5-type HoVer-Net offered as the 6-type PanNuke model
        import_weights(registry, "hovernet_fast-pannuke", weight_files["five_types"], tmp_path, user_registry=None)
    line = _one_line(info.value)
    assert "cannot import" in line and "fast mode with 5 types" in line and "6 types" in line
    assert not is_cached(registry.get("hovernet_fast-pannuke"), tmp_path)
    record = import_weights(registry, "hovernet_fast-monusac", weight_files["five_types"], tmp_path, user_registry=None)
    assert record.name == "hovernet_fast-monusac"  # where it belongs, it is accepted


def test_a_seed_generator_imports_as_the_seed_model_and_a_generator_of_the_other_direction_does_not(
    tmp_path: Path, weight_files: dict[str, Path]
) -> None:
    registry = load_registry()
    card = registry.get("cyclegan-bci.seed")
    import_weights(registry, card.name, weight_files["seed_generator"], tmp_path, user_registry=None)
    _, loaded = load_generator(cached_path(card, tmp_path))
    assert (loaded.format, loaded.direction) == ("seed", "ihc2he")
    with pytest.raises(WeightsError, match="he2ihc generator but --direction ihc2he"):
        import_weights(registry, card.name, weight_files["generator_he2ihc"], tmp_path / "b", user_registry=None)
    assert not is_cached(card, tmp_path / "b")


def test_a_user_card_whose_classes_do_not_fit_the_file_is_refused(
    tmp_path: Path, weight_files: dict[str, Path]
) -> None:
    user = tmp_path / "registry.toml"
    user.write_text(
        '[models."hovernet_fast-mylab.v1"]\ntask = "segmentation"\narch = "hovernet"\n'
        'arch_args = { mode = "fast", num_types = 6 }\nclass_names = ["Background", "tumour", "immune"]\n'
        'filename = "mylab.pth"\n',
        encoding="utf-8",
    )
    registry = load_registry(user)
    with pytest.raises(WeightsError) as info:
        import_weights(registry, "hovernet_fast-mylab.v1", weight_files["official"], tmp_path, user_registry=user)
    line = _one_line(info.value)
    assert "names 3 classes" in line and "6 type outputs" in line


def test_unknown_names_and_missing_files_are_one_line_errors(tmp_path: Path, weight_files: dict[str, Path]) -> None:
    registry = load_registry()
    with pytest.raises(ConfigError) as info:
        import_weights(registry, "hovernet_fast-nowhere", weight_files["official"], tmp_path, user_registry=None)
    assert "no model named 'hovernet_fast-nowhere'" in _one_line(info.value)
    with pytest.raises(InputError, match="not found"):
        import_weights(registry, "hovernet_fast-pannuke", tmp_path / "absent.tar", tmp_path, user_registry=None)
    assert not (tmp_path / "weights").exists()


@pytest.mark.slow  # the FID-Inception fixture takes seconds to make
def test_identify_names_each_architecture(weight_files: dict[str, Path], fid_weights: Path, tmp_path: Path) -> None:
    assert identify(weight_files["official"]) == (
        "hovernet",
        "HoVer-Net weights (fast mode with 6 types, official format)",
    )
    assert identify(weight_files["seed_generator"])[0] == "cyclegan"  # type: ignore[index]
    assert identify(fid_weights) == ("inception", "the FID-Inception network (pytorch-fid layout)")
    (tmp_path / "notes.txt").write_text("not weights")
    assert identify(tmp_path / "notes.txt") is None


# ----------------------------------------------------------------------------------------------- runs


def test_a_hovernet_run_is_registered_with_the_classes_scale_and_geometry_it_was_trained_with(
    tmp_path: Path, trained_runs: dict[str, Path]
) -> None:
    run = trained_runs["hovernet"]
    home, user = tmp_path / "home", tmp_path / "lab" / "registry.toml"
    result = import_model(load_registry(), "hovernet_fast-lab.v1", run, home, user_registry=user)
    assert result.registered == user
    card = load_registry(user).get("hovernet_fast-lab.v1")  # written to, and read back from, the user file
    checkpoints = run / "checkpoints"
    used = checkpoints / ("best.pt" if (checkpoints / "best.pt").is_file() else "last.pt")  # best, else last
    payload = load_histostain_checkpoint(used, arch="hovernet")
    with (run / "config.toml").open("rb") as handle:
        info = tomllib.load(handle)["run"]
    assert card.task == "segmentation" and card.arch == "hovernet"
    assert card.arch_args == {**payload["model_config"], "num_types": payload["model_config"]["num_types"]}
    assert card.type_names == {int(code): name for code, name in payload["class_names"].items() if int(code) > 0}
    assert card.mpp == payload["mpp"]
    assert (card.patch_in, card.patch_out) == (info["input_size"], info["output_size"])
    assert "CC BY-NC-SA 4.0" in card.licence  # trained on (prepared) PanNuke
    assert card.run_dir == str(run.resolve()) and card.source == str(user)
    cached = cached_path(card, home)
    assert cached.read_bytes() == used.read_bytes() and used.name in card.intended_use
    assert card.sha256 == result.record.sha256 and verify(card, home)[0] is True
    assert result.record.origin == str(run.resolve())
    model, loaded = load_hovernet(cached, mode=card.arch_args["mode"], num_types=card.arch_args["num_types"])
    assert loaded.class_names is not None and loaded.class_names[1] == card.classes[1]


def test_a_cyclegan_run_can_translate_both_ways_and_keeps_other_user_entries(
    tmp_path: Path, trained_runs: dict[str, Path]
) -> None:
    user = tmp_path / "registry.toml"
    user.write_text(
        '[models."hovernet_fast-other.v1"]\ntask = "segmentation"\narch = "hovernet"\nfilename = "other.pth"\n',
        encoding="utf-8",
    )
    import_weights(load_registry(user), "cyclegan-bci.lab", trained_runs["cyclegan"], tmp_path, user_registry=user)
    registry = load_registry(user)
    assert "hovernet_fast-other.v1" in registry
    card = registry.get("cyclegan-bci.lab")
    assert card.task == "translation"
    assert card.arch_args["direction"] == "he2ihc" and sorted(card.arch_args["directions"]) == ["he2ihc", "ihc2he"]
    assert (card.arch_args["ngf"], card.arch_args["n_blocks"]) == (4, 1)
    for direction in ("he2ihc", "ihc2he"):
        _, loaded = load_generator(cached_path(card, tmp_path), direction)
        assert loaded.direction == direction
    assert "BCI" in card.licence


def test_a_run_prefers_best_and_can_be_imported_again_under_its_name(tmp_path: Path, copy_run) -> None:
    run = copy_run("hovernet")
    shutil.copyfile(run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")
    assert read_run(run).checkpoint == (run / "checkpoints" / "best.pt").resolve()
    user = tmp_path / "registry.toml"
    first = import_weights(load_registry(), "hovernet_fast-lab.v2", run, tmp_path, user_registry=user)
    second = import_weights(load_registry(user), "hovernet_fast-lab.v2", run, tmp_path, user_registry=user)
    assert first.sha256 == second.sha256
    assert list(tomllib.loads(user.read_text())["models"]) == ["hovernet_fast-lab.v2"]


def test_runs_are_refused_under_histostain_names_bad_names_and_folders_that_are_no_runs(
    tmp_path: Path, trained_runs: dict[str, Path]
) -> None:
    registry, user = load_registry(), tmp_path / "registry.toml"
    run = trained_runs["hovernet"]
    with pytest.raises(ConfigError) as info:
        import_weights(registry, "hovernet_fast-pannuke", run, tmp_path, user_registry=user)
    assert "is a histostain model" in _one_line(info.value)
    with pytest.raises(ConfigError) as info:
        import_weights(registry, "My Model", run, tmp_path, user_registry=user)
    assert "cannot register" in _one_line(info.value) and "<arch>-<dataset>" in info.value.one_line()
    (tmp_path / "photos").mkdir()
    with pytest.raises(InputError, match="is not a histostain training run"):
        import_weights(registry, "hovernet_fast-x.v1", tmp_path / "photos", tmp_path, user_registry=user)
    assert not user.exists() and not (tmp_path / "weights").exists()


def test_a_run_without_a_checkpoint_yet_is_refused(tmp_path: Path, copy_run) -> None:
    run = copy_run("cyclegan")
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(WeightsError, match="has no checkpoint yet"):
        read_run(run)
