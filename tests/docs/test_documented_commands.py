"""Every command shown in the docs is run by a test on tiny data, so the docs cannot rot.

The ```bash blocks of the documents in ``DOCS`` are parsed; every line that starts with ``histostain `` (or
``.venv/bin/histostain ``) is a documented command. ``COVERED`` maps each one, by its exact text, to how it is
tested: a new command in the docs without an entry here fails ``test_every_documented_command_is_covered``.

The commands run through the real entry point, in-process, in one working folder per test module where the
documented relative paths exist as tiny fabricated data in the real published layouts (``FABRICATED``: BCI,
PanNuke and EndoNuke from ``histostain synth``, tiny weights files under the documented download names).
Only options that make a real default take long are appended (``extra``), never substituted. Commands that
need the network run with ``HISTOSTAIN_OFFLINE=1`` and must fail with exit code 2 and the offline message
naming the model: that proves the documented name and syntax are valid.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("docs/quickstart.md", "docs/pipeline.md", "docs/commands/pipeline.md", "docs/commands/demo.md", "README.md")
PREFIXES = ("histostain ", ".venv/bin/histostain ")

RunCli = Callable[[list[str]], tuple[int, str, str]]


# ----------------------------------------------------------------------------------------------- parsing
def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash[ \t]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def commands_in(text: str) -> list[str]:
    """The ``histostain ...`` lines of the ```bash blocks, continuation lines joined, trailing comments dropped."""
    found = []
    for block in bash_blocks(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            for prefix in PREFIXES:
                if line.startswith(prefix):
                    found.append("histostain " + " ".join(line[len(prefix) :].split()))
    return found


def documented_commands() -> dict[str, str]:
    """Every documented command (first occurrence wins) -> the document it is in."""
    found: dict[str, str] = {}
    for doc in DOCS:
        for command in commands_in((ROOT / doc).read_text(encoding="utf-8")):
            found.setdefault(command, doc)
    return found


def python_block(doc: str, marker: str) -> str:
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL) if marker in b]
    assert len(blocks) == 1, f"{doc}: expected one ```python block mentioning {marker!r}"
    return blocks[0]


# ------------------------------------------------------------------------------------- the coverage table
TINY_CYCLEGAN = (
    "--max-steps", "1", "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--crop", "32", "--num-workers", "0",
    "--sample-every", "0", "--val-every", "0", "--save-every", "0", "--log-every", "1",
)  # fmt: skip
TINY_HOVERNET = (
    "--config", "tiny-hovernet.toml", "--max-steps", "1", "--encoder-width", "0.0625", "--decoder-width", "0.125",
    "--phase1-epochs", "0", "--phase2-epochs", "1", "--batch-size-phase2", "2", "--num-workers", "0",
    "--sample-every", "0", "--val-every", "0", "--save-every", "0", "--log-every", "1",
)  # fmt: skip

# `histostain demo` itself runs with the packaged demo weights; its other examples with the tiny ones (faster)
TINY_DEMO = ("--tiles", "1", "-t", "generator_HE.tar", "-w", "hovernet_fast_pannuke_type_tf2pytorch.tar")

PREP_ENDONUKE = "histostain prepare endonuke data.zip --out prepared/endonuke"
PREP_BCI = "histostain prepare bci BCI_dataset --out prepared/bci"
PREP_PANNUKE = "histostain prepare pannuke pannuke --out prepared/pannuke"
TRAIN_CYCLEGAN = "histostain train cyclegan prepared/bci --name bci_ihc2he"
TRAIN_HOVERNET = "histostain train hovernet prepared/pannuke --name pannuke_fast"
IMPORT_HOVERNET = "histostain weights import hovernet_fast-pannuke hovernet_fast_pannuke_type_tf2pytorch.tar"
IMPORT_SEED = "histostain weights import cyclegan-bci.seed generator_HE.tar"
PIPE_QS = (
    "histostain pipeline --input prepared/endonuke/test/images --out runs/endonuke-cyclegan --translator "
    "runs/bci_ihc2he --segmenter-weights hovernet_fast-pannuke --ground-truth prepared/endonuke"
)
PIPE_REAL = (
    "histostain pipeline --input tiles/ --out run/ --translator runs/bci_ihc2he --segmenter-weights "
    "hovernet_fast-pannuke --ground-truth labels/ --mpp 0.5"
)
TRANSLATE_BCI = "histostain translate prepared/bci/test/IHC -w runs/bci_ihc2he --direction ihc2he -o runs/bci-test-he"
PANNUKE_PNGS = "python: the quickstart's PanNuke test images as PNG files"
SEGMENT_PANNUKE = "histostain segment pannuke-test -o runs/pannuke-test-nuclei -w hovernet_fast-pannuke --formats tif"
PIPELINE_OUT = ("report.html", "summary.csv", "pipeline.json", "pipeline.toml")
SCORED_OUT = (*PIPELINE_OUT, "metrics.json")


@dataclass(frozen=True)
class Case:
    """How one documented command is tested.

    kind ``run``: exit code 0 and every path of ``expect`` exists afterwards (relative to the working folder).
    kind ``offline``: with HISTOSTAIN_OFFLINE=1, exit code 2 and an error naming ``model``.
    ``needs``: commands (or setup steps) that must have run first in the same working folder.
    """

    kind: str = "run"
    extra: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()
    model: str = ""


def _under(folder: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{folder}/{name}" for name in names)


COVERED: dict[str, Case] = {
    # docs/quickstart.md (and README.md: `.venv/bin/histostain demo`)
    "histostain demo": Case(
        extra=("--tiles", "1"),
        expect=("histostain-demo/demo.json", "histostain-demo/translate/report.html", "histostain-demo/classical"),
    ),
    PREP_ENDONUKE: Case(expect=("prepared/endonuke/manifest.json", "prepared/endonuke/test/images")),
    "histostain pipeline --input prepared/endonuke/test/images --out runs/endonuke-classical --no-translate "
    "--segmenter classical --ground-truth prepared/endonuke": Case(
        needs=(PREP_ENDONUKE,), expect=_under("runs/endonuke-classical", SCORED_OUT)
    ),
    "histostain weights download hovernet_fast-pannuke": Case(kind="offline", model="hovernet_fast-pannuke"),
    IMPORT_HOVERNET: Case(expect=("home/weights/hovernet_fast-pannuke/record.json",)),
    PREP_PANNUKE: Case(expect=("prepared/pannuke/manifest.json", "prepared/pannuke/test/images.npy")),
    TRAIN_HOVERNET: Case(extra=TINY_HOVERNET, needs=(PREP_PANNUKE,), expect=("runs/pannuke_fast/checkpoints",)),
    PREP_BCI: Case(extra=("--patch", "64", "--size", "64"), expect=("prepared/bci/test/IHC", "prepared/bci/test/HE")),
    TRAIN_CYCLEGAN: Case(extra=TINY_CYCLEGAN, needs=(PREP_BCI,), expect=("runs/bci_ihc2he/checkpoints",)),
    IMPORT_SEED: Case(expect=("home/weights/cyclegan-bci.seed/record.json",)),
    PIPE_QS: Case(
        needs=(PREP_ENDONUKE, TRAIN_CYCLEGAN, IMPORT_HOVERNET),
        expect=(*_under("runs/endonuke-cyclegan", SCORED_OUT), "runs/endonuke-cyclegan/translated"),
    ),
    "histostain pipeline --input prepared/endonuke/test/images --out runs/endonuke-no-translate --no-translate "
    "--segmenter-weights hovernet_fast-pannuke --ground-truth prepared/endonuke": Case(
        needs=(PREP_ENDONUKE, IMPORT_HOVERNET), expect=_under("runs/endonuke-no-translate", SCORED_OUT)
    ),
    "histostain evaluate celldet prepared/endonuke runs/endonuke-cyclegan/nuclei --radius-um 3 --mpp 0.25": Case(
        needs=(PIPE_QS,)
    ),
    TRANSLATE_BCI: Case(needs=(TRAIN_CYCLEGAN,), expect=("runs/bci-test-he/translate.json",)),
    "histostain weights download fid-inception": Case(kind="offline", model="fid-inception"),
    "histostain evaluate fid prepared/bci/test/HE runs/bci-test-he": Case(needs=(TRANSLATE_BCI,)),
    SEGMENT_PANNUKE: Case(
        needs=(PREP_PANNUKE, PANNUKE_PNGS, IMPORT_HOVERNET), expect=("runs/pannuke-test-nuclei/segment.json",)
    ),
    "histostain evaluate instance prepared/pannuke runs/pannuke-test-nuclei": Case(needs=(SEGMENT_PANNUKE,)),
    # docs/pipeline.md
    "histostain pipeline --input endonuke-dev/data/dataset/images --out runs/endonuke-dev-classical --no-translate "
    "--segmenter classical --ground-truth endonuke-dev/data/dataset/labels/bulk/ptg1 --mpp 0.5": Case(
        expect=_under("runs/endonuke-dev-classical", SCORED_OUT)
    ),
    PIPE_REAL: Case(needs=(TRAIN_CYCLEGAN, IMPORT_HOVERNET), expect=(*_under("run", SCORED_OUT), "run/translated")),
    "histostain pipeline --input tiles/ --out run-no-translate/ --no-translate --segmenter-weights "
    "hovernet_fast-pannuke --ground-truth labels/ --mpp 0.5": Case(
        needs=(IMPORT_HOVERNET,), expect=_under("run-no-translate", SCORED_OUT)
    ),
    # docs/commands/pipeline.md
    "histostain pipeline --input tiles/ --out run/ --translator cyclegan-demo --segmenter-weights hovernet-demo "
    "--ground-truth labels/ --mpp 0.5": Case(
        extra=("--overwrite",),  # the folder is shared with the real-route example above
        expect=(*_under("run", SCORED_OUT), "run/translated"),
    ),
    "histostain pipeline --input tiles/ --out run-classical/ --no-translate --segmenter classical --stain ihc "
    "--ground-truth labels/ --mpp 0.5": Case(expect=_under("run-classical", SCORED_OUT)),
    "histostain pipeline --config run/pipeline.toml --out run-again/": Case(
        needs=(PIPE_REAL,), expect=_under("run-again", SCORED_OUT)
    ),
    'histostain pipeline --input "scans/*.png" --out scans-run/ -t cyclegan-bci.seed -w hovernet_fast-pannuke '
    "--num-parts 2 --part-id 0": Case(
        needs=(IMPORT_SEED, IMPORT_HOVERNET),
        expect=("scans-run/summary.part-0-of-2.csv", "scans-run/pipeline.part-0-of-2.json"),
    ),
    # docs/commands/demo.md
    "histostain demo --out histostain-demo/ --tiles 24 --seed 7": Case(
        extra=TINY_DEMO, expect=("histostain-demo/demo.json", "histostain-demo/no-translate/report.html")
    ),
    "histostain demo --json": Case(extra=TINY_DEMO, expect=("histostain-demo/demo.json",)),
}


# ------------------------------------------------------------------------------------------ fabricated data
def _tiny_weights(folder: Path) -> None:
    import torch

    from histostain.segmentation.hovernet import HoVerNet
    from histostain.translation.compat import save_generator
    from histostain.translation.cyclegan import ResnetGenerator, init_weights

    torch.manual_seed(0)
    save_generator(folder / "generator_HE.tar", init_weights(ResnetGenerator(ngf=4, n_blocks=1)), direction="ihc2he")
    net = HoVerNet("fast", 6, encoder_width=1 / 16, units=[1, 1, 1, 1], decoder_width=0.125, decoder_units=[1, 1])
    torch.save({"desc": net.state_dict()}, folder / "hovernet_fast_pannuke_type_tf2pytorch.tar")


def _bci(folder: Path) -> None:
    from histostain.synth import write_dataset

    write_dataset("bci", folder / "_bci", n=4, size=128, seed=1)  # 64 px patches: 4 per image
    (folder / "_bci" / "BCI_dataset").rename(folder / "BCI_dataset")


def _pannuke(folder: Path) -> None:
    from histostain.synth import write_dataset

    write_dataset("pannuke", folder / "pannuke", n=6, size=64, seed=2)


def _endonuke_zip(folder: Path) -> None:
    from histostain.synth import write_dataset

    write_dataset("endonuke", folder / "_endonuke", n=8, size=200, seed=3)
    shutil.make_archive(str(folder / "data"), "zip", root_dir=folder / "_endonuke", base_dir="data")


def _endonuke_dev(folder: Path) -> None:
    from histostain.synth import write_dataset

    write_dataset("endonuke", folder / "endonuke-dev", n=3, size=200, seed=4)


def _tiles_and_labels(folder: Path) -> None:
    from histostain.synth import write_dataset

    write_dataset("tiles", folder / "_tiles", n=2, size=96, seed=5)
    for name, pattern in (("tiles", "ihc/*.png"), ("scans", "ihc/*.png"), ("labels", "ground_truth/*.txt")):
        (folder / name).mkdir()
        for path in (folder / "_tiles").glob(pattern):
            shutil.copy(path, folder / name / path.name)


def _tiny_hovernet_config(folder: Path) -> None:
    (folder / "tiny-hovernet.toml").write_text("units = [1, 1, 1, 1]\ndecoder_units = [1, 1]\n", encoding="utf-8")


# documented path -> how it is fabricated (in the working folder, under the documented name)
FABRICATED: dict[str, Callable[[Path], None]] = {
    "BCI_dataset": _bci,  # BCI_dataset/{HE,IHC}/{train,test}/00000_train_1+.png
    "pannuke": _pannuke,  # pannuke/Fold 1/images/fold1/images.npy ...
    "data.zip": _endonuke_zip,  # the EndoNuke zip: data/dataset/{images,labels/bulk/<annotator>}, data/master_ymls
    "endonuke-dev": _endonuke_dev,  # the EndoNuke layout, unzipped
    "tiles/ labels/ scans/": _tiles_and_labels,  # synthetic IHC tiles and their centroid txt files
    "hovernet_fast_pannuke_type_tf2pytorch.tar generator_HE.tar": _tiny_weights,
    "tiny-hovernet.toml": _tiny_hovernet_config,  # not documented: the tiny units of TINY_HOVERNET
}


class Workspace:
    """One working folder for the module: the fabricated inputs, and every command run so far (in order)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ran: dict[str, tuple[int, str, str]] = {}

    def run(self, command: str, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
        """Run ``command`` (its prerequisites first, each once) as documented plus its ``extra`` options."""
        if command in self.ran:
            return self.ran[command]
        case = COVERED.get(command)
        for need in case.needs if case else ():
            code, out, err = self.run(need, run_cli, monkeypatch)
            assert code == 0, f"prerequisite of {command!r} failed: {need!r} exit {code}\n{out}\n{err}"
        if command == PANNUKE_PNGS:
            exec(compile(python_block("docs/quickstart.md", "pannuke-test"), "quickstart.md", "exec"), {})
            result = (0, "", "")
        else:
            assert case is not None
            result = run_cli(shlex.split(command)[1:] + list(case.extra))
        self.ran[command] = result
        return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("documented")
    for fabricate in FABRICATED.values():
        fabricate(root)
    return Workspace(root)


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HISTOSTAIN_HOME of the test's own (the user's cache is never touched)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HISTOSTAIN_HOME", str(tmp_path / "home"))
    return tmp_path


def _enter(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Run in the working folder with its own HISTOSTAIN_HOME (the user's cache is never touched)."""
    monkeypatch.chdir(workspace.root)
    monkeypatch.setenv("HISTOSTAIN_HOME", str(workspace.root / "home"))
    monkeypatch.setenv("HISTOSTAIN_QUIET", "1")
    return workspace


# ------------------------------------------------------------------------------------------------- tests
def test_parser_reads_bash_blocks_only() -> None:
    text = (
        "```bash\nhistostain a --x 1   # comment\n.venv/bin/histostain b \\\n    --y 2\npip install .\n```\n"
        "```text\nhistostain not-a-command\n```\n"
    )
    assert commands_in(text) == ["histostain a --x 1", "histostain b --y 2"]


def test_every_documented_command_is_covered() -> None:
    documented = documented_commands()
    missing = [f"{doc}: {command}" for command, doc in documented.items() if command not in COVERED]
    assert not missing, "documented command not covered (add it to COVERED):\n" + "\n".join(missing)
    stale = [command for command in COVERED if command not in documented]
    assert not stale, "COVERED lists commands no document shows any more:\n" + "\n".join(stale)
    for command, case in COVERED.items():
        for need in case.needs:
            assert need in COVERED or need == PANNUKE_PNGS, f"{command!r} needs unknown {need!r}"


def _params() -> list[object]:
    return [
        pytest.param(command, marks=() if case.kind == "offline" else pytest.mark.slow, id=command[11:70])
        for command, case in COVERED.items()
    ]


@pytest.mark.parametrize("command", _params())
def test_documented_command_runs(
    command: str, request: pytest.FixtureRequest, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = COVERED[command]
    if case.kind == "offline":  # no data needed: an empty cache and no network
        request.getfixturevalue("offline_home")
        with monkeypatch.context() as patch:
            patch.setenv("HISTOSTAIN_OFFLINE", "1")
            code, out, err = run_cli(shlex.split(command)[1:] + list(case.extra))
        assert code == 2, f"{command}: expected the offline error (exit 2), got {code}\n{out}\n{err}"
        assert case.model in err and "HISTOSTAIN_OFFLINE" in err, err
        assert "Traceback" not in err
        return
    workspace = _enter(request.getfixturevalue("workspace"), monkeypatch)
    if command.startswith("histostain evaluate fid"):  # FID needs pytorch-fid's Inception weights in the cache
        request.getfixturevalue("install_fid_weights")(workspace.root / "home" / "weights")
    code, out, err = workspace.run(command, run_cli, monkeypatch)
    assert code == 0, f"{command} {' '.join(case.extra)}: exit {code}\n{out}\n{err}"
    missing = [path for path in case.expect if not (workspace.root / path).exists()]
    assert not missing, f"{command}: missing outputs {missing}"
    if "--json" in command:
        json.loads(out)
