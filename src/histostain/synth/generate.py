"""The generator service: one seed in, one paired H&E / IHC tile with exact ground truth out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from histostain.synth.constants import KINDS, MIN_SIZE, NUCLEUS_TYPES, PANNUKE_TISSUE_WEIGHTS
from histostain.synth.layout import Layout, build_layout
from histostain.synth.render import MARKERS, render_he, render_ihc
from histostain.vocabulary import BCI_HER2_LEVELS, ENDONUKE_CLASS_NAMES

DEFAULT_MPP = 0.25  # micrometres per pixel, 40x like PanNuke


@dataclass
class SynthNucleus:
    """One ground-truth nucleus: id in the instance map, centroid ``(x, y)`` = (column, row), classes."""

    id: int
    x: float
    y: float
    type: int  # PanNuke type 1..5
    area: int
    endonuke_class: int  # 0 stroma, 1 epithelium, 2 other
    compartment: int

    @property
    def centroid(self) -> tuple[float, float]:
        return (self.x, self.y)


@dataclass
class SynthTile:
    """A paired H&E / IHC tile of one layout with its ground truth."""

    seed: int
    he: np.ndarray  # uint8 H x W x 3
    ihc: np.ndarray  # uint8 H x W x 3
    inst_map: np.ndarray  # int32, 0 background, ids 1..n
    type_map: np.ndarray  # uint8, 0 background, types 1..5
    nuclei: list[SynthNucleus]
    her2: int  # 0..3
    tissue: str  # one of the 19 PanNuke tissue names
    kind: str  # tumour | glandular | stromal
    mpp: float
    compartments: np.ndarray = field(repr=False)  # uint8 compartment map (constants.COMPARTMENTS)
    layout: Layout | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return (int(self.inst_map.shape[1]), int(self.inst_map.shape[0]))

    @property
    def her2_level(self) -> str:
        return BCI_HER2_LEVELS[self.her2]

    @property
    def centroids(self) -> np.ndarray:
        """``(N, 2)`` float64 array of ``(x, y)``."""
        return np.array([(n.x, n.y) for n in self.nuclei], dtype=np.float64).reshape(-1, 2)

    @property
    def types(self) -> np.ndarray:
        return np.array([n.type for n in self.nuclei], dtype=np.int64)

    @property
    def endonuke_classes(self) -> np.ndarray:
        return np.array([n.endonuke_class for n in self.nuclei], dtype=np.int64)

    def counts(self, classes: str = "pannuke") -> dict[str, int]:
        """Nuclei per class name: PanNuke types, or ``classes="endonuke"`` the EndoNuke classes the keypoint
        files carry (stroma, epithelium, other)."""
        if classes == "endonuke":
            codes = self.endonuke_classes
            return {name: int((codes == code).sum()) for code, name in ENDONUKE_CLASS_NAMES.items()}
        types = self.types
        return {name: int((types == code).sum()) for code, name in NUCLEUS_TYPES.items()}


def tile_seeds(seed: int, n: int) -> list[np.random.SeedSequence]:
    """Child seeds: tile ``i`` of a run gets the same seed whatever the number of tiles."""
    return [np.random.SeedSequence(entropy=int(seed), spawn_key=(i,)) for i in range(n)]


def _tile_seed_value(seed: int | np.random.SeedSequence) -> tuple[np.random.SeedSequence, int]:
    if isinstance(seed, np.random.SeedSequence):
        return seed, int(seed.generate_state(1)[0])
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.SeedSequence(int(seed)), int(seed)
    raise ValueError(f"seed must be a non-negative int or a SeedSequence, got {seed!r}")


def generate_tile(
    seed: int | np.random.SeedSequence,
    size: int | tuple[int, int] = 256,
    *,
    mpp: float = DEFAULT_MPP,
    her2: int | None = None,
    kind: str | None = None,
    tissue: str | None = None,
    empty: bool = False,
    inflammation: float = 1.0,
    marker: str = "her2",
    keep_layout: bool = False,
) -> SynthTile:
    """Generate one paired H&E / IHC tile with its ground truth, deterministically from ``seed``.

    ``size`` is a side (square) or ``(height, width)``; ``mpp`` micrometres per pixel sets the nucleus sizes
    in pixels; ``her2`` (0..3) the IHC score, ``kind`` the tissue pattern (tumour, glandular, stromal) and
    ``tissue`` the PanNuke tissue name (all drawn from the seed when None); ``empty`` draws tissue without
    nuclei; ``inflammation`` scales the rate of inflammatory cells; ``marker`` is the IHC target, "her2"
    (membranous DAB set by the score) or "nuclear" (ER/PR-like DAB in a fraction of the nuclei).
    Independent random streams (layout, H&E, IHC, choices) derive from the seed, so choosing the HER2 score
    or the marker does not change the layout.
    """
    sequence, value = _tile_seed_value(seed)
    height, width = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"tile size must be at least {MIN_SIZE} px, got {height} x {width}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if her2 is not None and her2 not in range(4):
        raise ValueError(f"her2 must be 0..3, got {her2!r}")
    if marker not in MARKERS:
        raise ValueError(f"marker must be one of {', '.join(MARKERS)}, got {marker!r}")
    if not inflammation >= 0:
        raise ValueError(f"inflammation must be >= 0, got {inflammation}")
    if tissue is not None and tissue not in PANNUKE_TISSUE_WEIGHTS:
        raise ValueError(f"tissue must be one of the 19 PanNuke names, got {tissue!r}")
    # Children built explicitly (``spawn`` would mutate the caller's SeedSequence and change on a second call).
    layout_seq, he_seq, ihc_seq, meta_seq = (
        np.random.SeedSequence(sequence.entropy, spawn_key=(*sequence.spawn_key, k)) for k in range(4)
    )
    meta = np.random.default_rng(meta_seq)
    names = list(KINDS)
    kind_drawn = names[int(meta.choice(len(names), p=np.array(list(KINDS.values()))))]
    her2_drawn = int(meta.integers(0, 4))
    weights = np.array(list(PANNUKE_TISSUE_WEIGHTS.values()), dtype=np.float64)
    tissue_drawn = list(PANNUKE_TISSUE_WEIGHTS)[int(meta.choice(len(weights), p=weights / weights.sum()))]
    kind = kind or kind_drawn
    her2 = her2_drawn if her2 is None else int(her2)
    tissue = tissue or tissue_drawn

    layout = build_layout(np.random.default_rng(layout_seq), height, width, mpp, kind, empty, inflammation)
    he = render_he(layout, np.random.default_rng(he_seq))
    ihc = render_ihc(layout, her2, np.random.default_rng(ihc_seq), marker)
    nuclei = [
        SynthNucleus(
            id=i + 1,
            x=float(layout.x[i]),
            y=float(layout.y[i]),
            type=int(layout.types[i]),
            area=int(layout.area[i]),
            endonuke_class=int(layout.endonuke[i]),
            compartment=int(layout.compartment[i]),
        )
        for i in range(len(layout))
    ]
    return SynthTile(
        seed=value,
        he=he,
        ihc=ihc,
        inst_map=layout.inst_map,
        type_map=layout.type_map,
        nuclei=nuclei,
        her2=her2,
        tissue=tissue,
        kind=kind,
        mpp=mpp,
        compartments=layout.compartments,
        layout=layout if keep_layout else None,
    )
