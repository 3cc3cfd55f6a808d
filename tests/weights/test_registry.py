"""The model registry: the packaged cards say what the references publish, and users extend it safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from histostain.errors import ConfigError
from histostain.vocabulary import PANNUKE_CLASSES
from histostain.weights.registry import ModelCard, add_user_entry, load_registry, packaged_cards


def test_packaged_hovernet_cards_carry_the_reference_geometry_and_classes() -> None:
    cards = packaged_cards()
    for name in (
        "hovernet_fast-pannuke",
        "hovernet_fast-monusac",
        "hovernet_original-consep",
        "hovernet_original-kumar",
    ):
        card = cards[name]
        mode = card.arch_args["mode"]
        assert name.startswith(f"hovernet_{mode}-")
        expected = {"fast": (256, 164, 46), "original": (270, 80, 95)}[mode]  # hovernet.md 2.2, TIAToolbox yaml
        geometry = card.geometry
        assert (geometry["patch_in"], geometry["patch_out"], geometry["margin"]) == expected
        assert geometry["mpp"] == 0.25
        assert card.arch_args["num_types"] == len(card.classes)  # background counted, as the network's TP branch
        assert all(url.startswith("https://") for url in card.urls)
    pannuke = cards["hovernet_fast-pannuke"]
    assert pannuke.classes == ["Background", *PANNUKE_CLASSES]
    assert "CC BY-NC-SA 4.0" in pannuke.licence
    assert pannuke.colours[1] == (255, 0, 0)  # hover_net's type_info colour for neoplastic


def test_every_card_can_be_obtained_and_credited() -> None:
    for card in packaged_cards().values():
        assert card.urls or card.manual_download or card.packaged, f"{card.name}: no URL, no manual note, not packaged"
        assert card.licence and card.citation and card.intended_use
    fid = packaged_cards()["fid-inception"]
    assert fid.sha256_prefix == "6726825d" and fid.filename.endswith(f"-{fid.sha256_prefix}.pth")
    assert fid.matches_digest("6726825d" + "0" * 56) is True and fid.matches_digest("0" * 64) is False
    assert packaged_cards()["cyclegan-bci.seed"].urls == []  # Google Drive only: import by hand


def _user_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_a_user_registry_adds_models_with_file_urls(tmp_path: Path) -> None:
    path = _user_file(
        tmp_path,
        '[models."hovernet_fast-mylab.v2"]\ntask = "segmentation"\narch = "hovernet"\n'
        'arch_args = { mode = "fast", num_types = 3 }\nmpp = 0.5\nclass_names = ["Background", "tumour", "immune"]\n'
        'filename = "mylab.pth"\nurls = ["file:///data/models/mylab.pth"]\nlicence = "internal"\n',
    )
    registry = load_registry(path)
    card = registry.get("hovernet_fast-mylab.v2")
    assert card.type_names == {1: "tumour", 2: "immune"} and card.geometry["margin"] == 46
    assert card.source == str(path) and "hovernet_fast-pannuke" in registry
    assert card.matches_digest("ab" * 32) is None  # no digest known yet


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            '[models."hovernet_fast-pannuke"]\ntask = "fid"\narch = "inception"\nfilename = "x.pth"\n',
            "histostain model",
        ),
        ('[models."MyModel"]\ntask = "fid"\narch = "inception"\nfilename = "x.pth"\n', "models.MyModel: name"),
        ('[models."fid-x"]\ntask = "fid"\narch = "inception"\nfilename = "x.pth"\ncolour = 1\n', "colour"),
        ('[models."fid-x"]\ntask = "fid"\narch = "inception"\nfilename = "../x.pth"\n', "filename"),
        ('[models."fid-x"]\ntask = "fid"\narch = "inception"\nfilename = "x.pth"\nurls = ["ftp://h/x"]\n', "urls"),
        ('[models."fid-x"]\ntask = "fid"\narch = "inception"\nfilename = "x.pth"\nsha256 = "abc12345"\n', "64"),
        ('[models."fid-x"]\ntask = "fid"\narch = "unet"\nfilename = "x.pth"\n', "arch"),
        ("[models\n", "not valid TOML"),
    ],
)
def test_bad_user_entries_are_one_line_errors_naming_the_entry(tmp_path: Path, body: str, fragment: str) -> None:
    path = _user_file(tmp_path, body)
    with pytest.raises(ConfigError, match=fragment) as caught:
        load_registry(path)
    assert "\n" not in caught.value.one_line()


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        load_registry().get("hovernet_fast-pannuk")
    assert "hovernet_fast-pannuke" in caught.value.one_line()


def test_user_entries_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    first = ModelCard(
        name="cyclegan-bci.lab",
        task="translation",
        arch="cyclegan",
        arch_args={"direction": "ihc2he"},
        filename="g.pt",
        urls=["https://example.org/g.pt"],
        sha256="0f" * 32,
        citation='a "quoted" title',
    )
    second = ModelCard(name="hovernet_fast-lab", task="segmentation", arch="hovernet", filename="h.pt", mpp=0.5)
    add_user_entry(path, first)
    add_user_entry(path, second)
    cards = load_registry(path).cards
    for card in (first, second):
        assert cards[card.name].model_dump(exclude={"source"}) == card.model_dump(exclude={"source"})
