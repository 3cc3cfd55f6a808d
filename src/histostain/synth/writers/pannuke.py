"""PanNuke layout (datasets.md section 1): ``Fold K/images/foldK/{images,types}.npy``, ``Fold K/masks/foldK/masks.npy``.

images.npy is float64 ``(N, S, S, 3)`` with integer values 0..255; masks.npy float64 ``(N, S, S, 6)``, channels
0-4 the instance ids of neoplastic, inflammatory, connective, dead and epithelial nuclei, channel 5 the
background flag; types.npy a fixed-width unicode array of the 19 tissue names. Both big arrays are streamed to
disk tile by tile. Tiles are split over the folds in order (fold 1 first). Tiles with index % 25 == 13 have no
nuclei (as about 4% of real patches), with a normal background channel (all ones).

``--quirks`` injects the published irregularities into fold 1, each recorded in the summary (fold, patch index
in that fold, channel, id, pixel) and nowhere inside the fold folders:

- ``background_all_zero``: patch 0 has no nuclei and its background channel is all zero (a "void" patch);
- ``pixel_in_two_channels``: patch min(1, N-1): a pixel of nucleus A that touches nucleus B of another type is
  also set in B's channel with B's id (if no such pair touches, A's pixel is repeated in the next channel);
- ``id_split``: patch min(2, N-1): the tallest nucleus loses the pixels of its middle row, so its id covers two
  4-connected (and 8-connected) pieces; the cut pixels become background;
- ``id_reused_across_channels``: patch min(3, N-1): nucleus B (another channel than A) takes A's id;
- ``ids_above_1000``: patch min(4, N-1): all ids are mapped, consistently across channels, to increasing
  non-contiguous values in 1001..3999 (recorded ids of other quirks in that patch are the mapped ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from histostain.errors import ConfigError
from histostain.io.npy import NpyWriter
from histostain.synth.constants import NUCLEUS_TYPES
from histostain.synth.generate import SynthTile
from histostain.synth.writers.base import LayoutWriter, TileSpec
from histostain.vocabulary import PANNUKE_TISSUES

TISSUE_DTYPE = f"<U{max(len(name) for name in PANNUKE_TISSUES)}"
QUIRK_PATCHES = {
    "pixel_in_two_channels": 1,
    "id_split": 2,
    "id_reused_across_channels": 3,
    "ids_above_1000": 4,
}
QUIRK_ORDER = ("pixel_in_two_channels", "id_split", "id_reused_across_channels", "ids_above_1000")

MASKS_README = """Synthetic PanNuke-layout masks written by `histostain synth --layout pannuke`.

masks.npy: float64 (N, H, W, 6). Channels: 0 Neoplastic, 1 Inflammatory, 2 Connective/Soft tissue cells,
3 Dead cells, 4 (non-neoplastic) Epithelial: instance ids, 0 = none; 5 Background: 1 where no nucleus.
"""


def fold_sizes(n: int, folds: int) -> list[int]:
    return [n // folds + (1 if k < n % folds else 0) for k in range(folds)]


def masks_of(tile: SynthTile) -> np.ndarray:
    """``(H, W, 6)`` float64 PanNuke masks of a tile: instance ids per type channel, background flag."""
    inst, types = tile.inst_map, tile.type_map
    masks = np.zeros((*inst.shape, 6), dtype=np.float64)
    for code in NUCLEUS_TYPES:
        masks[..., code - 1] = np.where(types == code, inst, 0)
    masks[..., 5] = inst == 0
    return masks


class PanNukeWriter(LayoutWriter):
    name = "pannuke"

    @staticmethod
    def validate(n: int, size: int | None, quirks: bool, **options: Any) -> None:
        folds = int(options.get("folds", 3))
        if folds < 1:
            raise ConfigError(f"--folds must be at least 1, got {folds}")
        if n < folds:
            raise ConfigError(f"--n {n} is smaller than --folds {folds}", hint="every fold needs at least one patch")
        if quirks and fold_sizes(n, folds)[0] < 2:
            raise ConfigError(
                "--quirks needs at least 2 patches in fold 1", hint="raise --n or lower --folds (e.g. --n 10)"
            )

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.folds = int(self.options.get("folds", 3))
        self.sizes = fold_sizes(self.n, self.folds)
        self._fold = 0
        self._images: NpyWriter | None = None
        self._masks: NpyWriter | None = None
        self._types: list[str] = []
        self._rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2**31,)))

    def plan(self) -> list[TileSpec]:
        specs = []
        index = 0
        for fold, count in enumerate(self.sizes, start=1):
            quirk_at: dict[int, list[str]] = {}
            if self.quirks and fold == 1:
                for quirk in QUIRK_ORDER:
                    quirk_at.setdefault(min(QUIRK_PATCHES[quirk], count - 1), []).append(quirk)
            for patch in range(count):
                void = self.quirks and fold == 1 and patch == 0
                quirks = quirk_at.get(patch, [])
                spec = TileSpec(
                    index,
                    self.size or 256,
                    kind="tumour" if quirks else None,
                    empty=void or (index % 25 == 13 and not quirks),
                    extra={"fold": fold, "patch": patch, "void": void, "quirks": quirks},
                )
                specs.append(spec)
                index += 1
        return specs

    def _open_fold(self, fold: int, size: int) -> None:
        count = self.sizes[fold - 1]
        base = self.root / f"Fold {fold}"
        self._images = NpyWriter(base / f"images/fold{fold}/images.npy", np.float64, (count, size, size, 3))
        self._masks = NpyWriter(base / f"masks/fold{fold}/masks.npy", np.float64, (count, size, size, 6))
        self._types = []
        self._fold = fold

    def _close_fold(self) -> None:
        if self._images is None or self._masks is None:
            return
        self._images.close()
        self._masks.close()
        self.files_written += 2
        fold = self._fold
        base = f"Fold {fold}"
        path = self.root / base / f"images/fold{fold}/types.npy"
        np.save(path, np.array(self._types, dtype=TISSUE_DTYPE))
        self.files_written += 1
        self.write_text(f"{base}/masks/README.md", MASKS_README)
        self.write_text(
            f"{base}/README.md",
            f"Synthetic PanNuke-layout fold {fold}: images/fold{fold}/images.npy, images/fold{fold}/types.npy, "
            f"masks/fold{fold}/masks.npy.\n",
        )
        self._images = self._masks = None

    def add(self, spec: TileSpec, tile: SynthTile) -> None:
        fold = spec.extra["fold"]
        if fold != self._fold:
            self._close_fold()
            self._open_fold(fold, tile.he.shape[0])
        assert self._images is not None and self._masks is not None
        masks = masks_of(tile)
        if spec.extra["void"]:
            masks[..., 5] = 0.0
            self._record("background_all_zero", fold, spec.extra["patch"])
        self._inject(spec, tile, masks)
        self._images.append(tile.he[None])
        self._masks.append(masks[None])
        self._types.append(tile.tissue)

    def close(self) -> None:
        self._close_fold()

    def abort(self) -> None:
        for stream in (self._images, self._masks):
            if stream is not None:
                stream.abort()

    # ------------------------------------------------------------------------------------------- quirks

    def _record(self, quirk: str, fold: int, patch: int, **details: Any) -> dict[str, Any]:
        record = {"quirk": quirk, "fold": fold, "patch": patch, **details}
        self.quirk_records.append(record)
        return record

    def _inject(self, spec: TileSpec, tile: SynthTile, masks: np.ndarray) -> None:
        fold, patch = spec.extra["fold"], spec.extra["patch"]
        inst, types = tile.inst_map, tile.type_map
        records = []
        for quirk in spec.extra["quirks"]:
            if not len(tile.nuclei):
                self._record(quirk, fold, patch, skipped="the patch has no nuclei")
                continue
            if quirk == "pixel_in_two_channels":
                records.append(self._two_channels(fold, patch, inst, types, masks))
            elif quirk == "id_split":
                records.append(self._split(fold, patch, tile, masks))
            elif quirk == "id_reused_across_channels":
                records.append(self._reuse(fold, patch, tile, masks))
            elif quirk == "ids_above_1000":
                self._renumber(fold, patch, masks, records)

    def _two_channels(self, fold: int, patch: int, inst: np.ndarray, types: np.ndarray, masks: np.ndarray) -> dict:
        for axis in (1, 0):
            a = inst[:, :-1] if axis == 1 else inst[:-1, :]
            b = inst[:, 1:] if axis == 1 else inst[1:, :]
            ta = types[:, :-1] if axis == 1 else types[:-1, :]
            tb = types[:, 1:] if axis == 1 else types[1:, :]
            touching = np.argwhere((a > 0) & (b > 0) & (ta != tb))
            if len(touching):
                y, x = (int(v) for v in touching[0])
                id_b, type_b = int(b[y, x]), int(tb[y, x])
                id_a, type_a = int(a[y, x]), int(ta[y, x])
                masks[y, x, type_b - 1] = id_b
                return self._record(
                    "pixel_in_two_channels", fold, patch, pixel=[x, y], channels=[type_a - 1, type_b - 1],
                    ids=[id_a, id_b],
                )  # fmt: skip
        y, x = (int(v) for v in np.argwhere(inst > 0)[0])
        id_a, type_a = int(inst[y, x]), int(types[y, x])
        other = type_a % 5  # the next channel (0-based) after the nucleus' own
        masks[y, x, other] = id_a
        return self._record(
            "pixel_in_two_channels", fold, patch, pixel=[x, y], channels=[type_a - 1, other], ids=[id_a, id_a]
        )

    def _split(self, fold: int, patch: int, tile: SynthTile, masks: np.ndarray) -> dict:
        inst = tile.inst_map
        best, best_height, best_rows = None, 0, (0, 0)
        objects = ndi.find_objects(inst)
        for nucleus in tile.nuclei:
            box = objects[nucleus.id - 1]
            if box is None:
                continue
            height = box[0].stop - box[0].start
            if height > best_height:
                best, best_height, best_rows = nucleus, height, (box[0].start, box[0].stop - 1)
        if best is None or best_height < 3:
            return self._record("id_split", fold, patch, skipped="no nucleus is 3 or more rows tall")
        channel = best.type - 1
        row = (best_rows[0] + best_rows[1]) // 2
        cut = np.nonzero(masks[row, :, channel] == best.id)[0]
        masks[row, cut, channel] = 0
        masks[row, cut, 5] = 1.0
        return self._record("id_split", fold, patch, channel=channel, id=best.id, cut_row=row)

    def _reuse(self, fold: int, patch: int, tile: SynthTile, masks: np.ndarray) -> dict:
        first = tile.nuclei[0]
        other = next((n for n in tile.nuclei if n.type != first.type), None)
        moved = False
        if other is None:  # one type only: the second nucleus moves to the next channel and takes the id
            if len(tile.nuclei) < 2:
                return self._record("id_reused_across_channels", fold, patch, skipped="the patch has one nucleus")
            other, moved = tile.nuclei[1], True
        source = other.type - 1
        target = first.type % 5 if moved else source
        pixels = masks[..., source] == other.id
        masks[..., source][pixels] = 0
        masks[..., target][pixels] = first.id
        return self._record(
            "id_reused_across_channels", fold, patch, id=first.id, channels=[first.type - 1, target],
            replaced_id=other.id, moved_to_other_channel=moved,
        )  # fmt: skip

    def _renumber(self, fold: int, patch: int, masks: np.ndarray, records: list[dict]) -> None:
        classes = masks[..., :5]
        present = np.unique(classes[classes > 0]).astype(np.int64)
        new = np.sort(self._rng.choice(np.arange(1001, 4000), size=present.size, replace=False))
        lut = np.zeros(int(present.max()) + 1, dtype=np.float64)
        lut[present] = new
        masks[..., :5] = lut[classes.astype(np.int64)]
        mapping = dict(zip(present.tolist(), new.tolist(), strict=True))
        for record in records:  # other quirks of the same patch report the final ids
            for key in ("id", "replaced_id"):
                if key in record and record[key] in mapping:
                    record[key] = mapping[record[key]]
            if "ids" in record:
                record["ids"] = [mapping.get(i, i) for i in record["ids"]]
        self._record("ids_above_1000", fold, patch, ids=new.tolist())
