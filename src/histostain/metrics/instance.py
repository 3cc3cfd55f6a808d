"""Instance-segmentation metrics (Dice, AJI, AJI+, DQ, SQ, PQ) with hover_net ``stats_utils`` semantics.

The pure functions reproduce ``metrics/stats_utils.py`` of hover_net (the code the HoVer-Net, PanNuke and
CoNSeP tables come from) value for value, but they work on any integer instance maps:

- ids need not be contiguous (the reference silently mis-indexes its mask list unless ``remap_label`` ran first);
- a map without background pixels, an empty prediction and two empty maps are all handled (the reference raises
  ``ValueError``, ``ValueError`` and ``ZeroDivisionError``). An image where a metric is 0/0 gets NaN
  ("undefined"), which ``nanmean`` aggregations skip, exactly as the PanNuke protocol skips empty images.

Every metric comes from one sparse contingency table of (true id, predicted id) -> overlapping pixels, counted
with ``np.bincount`` over the instance pixels only, instead of the reference's loop over per-instance masks.

The second half of the module is the ``evaluate instance`` service: it reads label TIFFs, hover_net ``.mat``
files, prepared PanNuke data or PanNuke-layout ``masks.npy``, pairs the images and aggregates the scores the way
hover_net's ``compute_stats.py`` reports them (mean over images), plus a dataset-level pooled PQ.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from histostain.errors import ConfigError, InputError

if TYPE_CHECKING:
    from histostain.metrics.report import EvaluationResult

log = logging.getLogger(__name__)

PROTOCOLS = ("hovernet", "pannuke")
SQ_EPS = 1.0e-6  # hover_net: SQ = sum(IoU) / (TP + 1e-6)
AJI_EPS = 1.0e-6  # hover_net AJI/AJI+: IoU = I / (U + 1e-6) when choosing pairs
_DENSE_TABLE_LIMIT = 1 << 22  # (n_true + 1) * (n_pred + 1) cells counted with a dense bincount
_DENSE_HUNGARIAN_LIMIT = 4_000_000  # larger cost matrices are solved per connected overlap component

# --------------------------------------------------------------------------------------------- relabelling


def as_labels(labels: Any, name: str, order: str = "K") -> np.ndarray:
    """An integer array of ``labels`` (bool -> 0/1; integral floats such as PanNuke's float64 ids accepted).

    Integer input is returned as is (a view) unless ``order="C"`` asks for a contiguous copy.
    """
    array = np.asarray(labels)
    if array.dtype == np.bool_:
        return np.asarray(array, np.uint8, order=order)
    if array.dtype.kind in "iu":
        return np.asarray(array, order=order) if order == "C" else array
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):  # NaN/inf cast to garbage, which the comparison then rejects
            ints = np.asarray(array, np.int64, order=order)
            exact = np.array_equal(ints, array)
        if not exact:
            raise ValueError(f"{name}: instance ids must be integers, got non-integer {array.dtype} values")
        return ints
    raise ValueError(f"{name}: instance ids must be integers, got dtype {array.dtype}")


class Labels(NamedTuple):
    """One map relabelled, stored sparsely: only its instance pixels.

    ``index``: flat positions of the instance pixels (ascending); ``label``: their new id 1..n in the ascending
    order of the original ids; ``ids``: the original ids (n,); ``areas``: pixels per instance (n,); ``size``:
    pixels in the whole map. Work is proportional to the instance pixels, not the image.
    """

    index: np.ndarray
    label: np.ndarray
    ids: np.ndarray
    areas: np.ndarray
    size: int

    def dense(self, dtype: Any = np.int32) -> np.ndarray:
        """The flat map with the new ids (0 = background)."""
        out = np.zeros(self.size, dtype)
        out[self.index] = self.label
        return out


_LUT_LIMIT = 1 << 22  # ids up to this use a lookup table; larger (or negative) ids are sorted with np.unique


def relabel(labels: np.ndarray) -> Labels:
    """Relabel any integer map to contiguous ids 1..n, keeping the order of the original ids.

    Value 0 is background wherever it appears in the order of ids (negative ids, if any, are instances).
    """
    flat = labels.ravel()
    index = np.flatnonzero(flat)
    values = flat[index]
    if values.size == 0:
        empty = np.zeros(0, np.int64)
        return Labels(empty, np.zeros(0, np.int32), empty, empty, int(flat.size))
    low, high = int(values.min()), int(values.max())
    if low > 0 and high <= _LUT_LIMIT:
        counts = np.bincount(values)
        ids = np.flatnonzero(counts)
        lut = np.zeros(high + 1, np.int32 if ids.size < 1 << 31 else np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return Labels(index, lut[values], ids.astype(np.int64), counts[ids].astype(np.int64), int(flat.size))
    ids, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return Labels(index, inverse.ravel() + 1, ids.astype(np.int64), counts.astype(np.int64), int(flat.size))


def remap_label(labels: Any, by_size: bool = False) -> np.ndarray:
    """Renumber instance ids to 1..n (int32), keeping their order, as hover_net's ``remap_label``.

    With ``by_size`` larger instances get smaller ids (equal sizes keep their id order, as Python's stable sort).
    Unlike the reference it accepts maps without a background pixel, and a map without instances comes back as
    an int32 array of zeros (the reference returns its input object).
    """
    array = as_labels(labels, "labels")
    found = relabel(array)
    new = found.label
    if by_size and found.areas.size:
        order = np.argsort(-found.areas, kind="stable")  # order[k] = old rank (0-based) of the k-th largest
        rank = np.empty(found.areas.size + 1, np.int64)
        rank[0] = 0
        rank[order + 1] = np.arange(1, found.areas.size + 1)
        new = rank[new]
    out = np.zeros(found.size, np.int32)
    out[found.index] = new
    return out.reshape(array.shape)


# ------------------------------------------------------------------------------------------ contingency table


@dataclass(frozen=True)
class Contingency:
    """Overlaps of two instance maps: the sparse table every metric here is computed from.

    ``true_ids``/``pred_ids`` are the original ids in ascending order; table indices are positions in them.
    ``rows``/``cols``/``inter`` list every overlapping (true, pred) pair, sorted by row then column.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    inter: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def union(self) -> np.ndarray:
        """Union of each listed pair: |T| + |P| - |T n P|."""
        return self.true_area[self.rows] + self.pred_area[self.cols] - self.inter

    def iou(self) -> np.ndarray:
        """IoU of each listed pair exactly as ``get_fast_pq``: I / (|T| + |P| - I)."""
        return self.inter / self.union

    def iou_aji(self) -> np.ndarray:
        """IoU as ``get_fast_aji``/``aji_plus`` rank pairs: I / (U + 1e-6) (it decides ties, so it is kept)."""
        return self.inter / (self.union + AJI_EPS)


def contingency(true: Any, pred: Any) -> Contingency:
    """Count the overlap of every (true, pred) instance pair in one pass over the pixels."""
    true_a = as_labels(true, "true")
    pred_a = as_labels(pred, "pred")
    if true_a.shape != pred_a.shape:
        raise ValueError(f"true and pred differ in shape: {true_a.shape} vs {pred_a.shape}")
    return contingency_of(relabel(true_a), relabel(pred_a))


def contingency_of(true: Labels, pred: Labels) -> Contingency:
    """The contingency table of two relabelled maps (lets callers reuse one relabelling for several tables)."""
    if true.size != pred.size:
        raise ValueError(f"true and pred differ in size: {true.size} vs {pred.size} pixels")
    n_t, n_p = true.ids.size, pred.ids.size
    width = n_p + 1
    if n_t == 0 or n_p == 0:
        rows = cols = inter = np.zeros(0, np.int64)
    else:
        true_at_pred = true.dense()[pred.index]  # true label under every predicted pixel
        both = true_at_pred > 0
        keys = true_at_pred[both].astype(np.int64) * width + pred.label[both]
        cells = (n_t + 1) * width
        if cells <= _DENSE_TABLE_LIMIT:
            table = np.bincount(keys, minlength=cells).reshape(n_t + 1, width)
            rows, cols = np.nonzero(table)
            inter = table[rows, cols]
            rows, cols = rows - 1, cols - 1
        else:
            keys, inter = np.unique(keys, return_counts=True)
            rows, cols = keys // width - 1, keys % width - 1
    return Contingency(
        true_ids=true.ids,
        pred_ids=pred.ids,
        true_area=true.areas,
        pred_area=pred.areas,
        rows=rows.astype(np.int64),
        cols=cols.astype(np.int64),
        inter=inter.astype(np.int64),
    )


def _hungarian(table: Contingency, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairing maximising the summed ``weights`` of the listed pairs (``linear_sum_assignment(-W)``).

    The full ``n_true x n_pred`` matrix is solved as the reference does, so ties resolve the same way; beyond
    a few million cells each connected component of the overlap graph is solved alone (same optimum).
    Returns the indices of the chosen listed pairs with weight > 0 (rows, cols).
    """
    from scipy.optimize import linear_sum_assignment

    n_t, n_p = table.n_true, table.n_pred
    if n_t == 0 or n_p == 0 or table.rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n_t * n_p <= _DENSE_HUNGARIAN_LIMIT:
        dense = np.zeros((n_t, n_p), np.float64)
        dense[table.rows, table.cols] = weights
        rows, cols = linear_sum_assignment(-dense)
        keep = dense[rows, cols] > 0
        return rows[keep], cols[keep]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(table.rows.size), (table.rows, n_t + table.cols)), shape=(n_t + n_p, n_t + n_p))
    _, component = connected_components(graph, directed=False)
    pair_component = component[table.rows]
    order = np.argsort(pair_component, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_component[order])) + 1
    chosen_rows: list[np.ndarray] = []
    chosen_cols: list[np.ndarray] = []
    for group in np.split(order, bounds):
        r_ids, r_local = np.unique(table.rows[group], return_inverse=True)
        c_ids, c_local = np.unique(table.cols[group], return_inverse=True)
        dense = np.zeros((r_ids.size, c_ids.size), np.float64)
        dense[r_local, c_local] = weights[group]
        rows, cols = linear_sum_assignment(-dense)
        keep = dense[rows, cols] > 0
        chosen_rows.append(r_ids[rows[keep]])
        chosen_cols.append(c_ids[cols[keep]])
    rows, cols = np.concatenate(chosen_rows), np.concatenate(chosen_cols)
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


def _pair_index(table: Contingency, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions in the listed pairs of the (row, col) pairs given (all of which must be listed)."""
    keys = table.rows * max(table.n_pred, 1) + table.cols  # listed pairs are sorted by (row, col)
    return np.searchsorted(keys, rows * max(table.n_pred, 1) + cols)


# ------------------------------------------------------------------------------------------------ metrics


def _dice(table: Contingency) -> float:
    denominator = int(table.true_area.sum() + table.pred_area.sum())
    if denominator == 0:
        return math.nan
    return 2.0 * int(table.inter.sum()) / denominator


def _aji_from_pairs(table: Contingency, pairs: np.ndarray, paired_rows: np.ndarray, paired_cols: np.ndarray) -> float:
    """sum I(pairs) / (sum U(pairs) + areas of unpaired true + areas of predictions never paired)."""
    if table.n_true == 0 and table.n_pred == 0:
        return math.nan
    inter = float(table.inter[pairs].sum())
    union = float(table.union[pairs].sum())
    unpaired_true = np.ones(table.n_true, bool)
    unpaired_true[paired_rows] = False
    unpaired_pred = np.ones(table.n_pred, bool)
    unpaired_pred[paired_cols] = False
    union += float(table.true_area[unpaired_true].sum() + table.pred_area[unpaired_pred].sum())
    return inter / union


def _aji(table: Contingency) -> float:
    """MoNuSeg AJI: every true instance takes its argmax-IoU prediction (reuse allowed; first index on ties)."""
    if table.rows.size == 0:
        return _aji_from_pairs(table, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    iou = table.iou_aji()
    order = np.lexsort((table.cols, -iou, table.rows))  # per row: highest IoU first, then the lowest pred index
    sorted_rows = table.rows[order]
    first = np.ones(order.size, bool)
    first[1:] = sorted_rows[1:] != sorted_rows[:-1]
    best = order[first]
    best = best[iou[best] > 0.0]
    return _aji_from_pairs(table, best, table.rows[best], table.cols[best])


def _aji_plus(table: Contingency) -> float:
    """AJI+: unique Hungarian pairing on IoU, pairs with IoU > 0 kept."""
    rows, cols = _hungarian(table, table.iou_aji())
    return _aji_from_pairs(table, _pair_index(table, rows, cols), rows, cols)


@dataclass(frozen=True)
class Pairing:
    """The PQ matching: paired ids (original ids), their IoU, and the unpaired ids (FN on true, FP on pred)."""

    paired_true: np.ndarray
    paired_pred: np.ndarray
    paired_iou: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray

    @property
    def tp(self) -> int:
        return int(self.paired_true.size)

    @property
    def fp(self) -> int:
        return int(self.unpaired_pred.size)

    @property
    def fn(self) -> int:
        return int(self.unpaired_true.size)

    @property
    def iou_sum(self) -> float:
        return float(self.paired_iou.sum())


class PQResult(NamedTuple):
    """``(dq, sq, pq, pairing)`` as ``get_fast_pq`` returns ``[dq, sq, pq], pairing``."""

    dq: float
    sq: float
    pq: float
    pairing: Pairing


def _pairing(table: Contingency, match_iou: float) -> Pairing:
    if not 0.0 <= match_iou <= 1.0:
        raise ValueError(f"match_iou must be within 0..1, got {match_iou}")
    iou = table.iou()
    if match_iou >= 0.5:  # IoU > 0.5 pairs are unique: each instance has at most one such partner
        chosen = np.flatnonzero(iou > match_iou)
    else:
        rows, cols = _hungarian(table, iou)
        chosen = _pair_index(table, rows, cols)
        chosen = chosen[iou[chosen] > match_iou]
    rows, cols = table.rows[chosen], table.cols[chosen]
    unpaired_true = np.ones(table.n_true, bool)
    unpaired_true[rows] = False
    unpaired_pred = np.ones(table.n_pred, bool)
    unpaired_pred[cols] = False
    return Pairing(
        paired_true=table.true_ids[rows],
        paired_pred=table.pred_ids[cols],
        paired_iou=iou[chosen],
        unpaired_true=table.true_ids[unpaired_true],
        unpaired_pred=table.pred_ids[unpaired_pred],
    )


def pq_from_counts(tp: int, fp: int, fn: int, iou_sum: float) -> tuple[float, float, float]:
    """DQ = TP / (TP + FP/2 + FN/2), SQ = sum IoU / (TP + 1e-6), PQ = DQ * SQ; NaN when nothing exists."""
    if tp + fp + fn == 0:
        return math.nan, math.nan, math.nan
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / (tp + SQ_EPS)
    return dq, sq, dq * sq


def pq_of(table: Contingency, match_iou: float) -> PQResult:
    pairing = _pairing(table, match_iou)
    dq, sq, pq_value = pq_from_counts(pairing.tp, pairing.fp, pairing.fn, pairing.iou_sum)
    return PQResult(dq, sq, pq_value, pairing)


def dice(true: Any, pred: Any) -> float:
    """Binary Dice of the foregrounds (hover_net ``get_dice_1``); NaN when both maps are empty."""
    return _dice(contingency(true, pred))


def aji(true: Any, pred: Any) -> float:
    """Aggregated Jaccard Index as MoNuSeg/hover_net ``get_fast_aji`` (argmax-IoU pairing, reuse allowed).

    0 for an empty prediction against a non-empty truth (the reference raises), NaN when both are empty.
    """
    return _aji(contingency(true, pred))


def aji_plus(true: Any, pred: Any) -> float:
    """AJI+ as hover_net ``get_fast_aji_plus`` (unique Hungarian pairing, IoU > 0); NaN when both are empty."""
    return _aji_plus(contingency(true, pred))


def pq(true: Any, pred: Any, match_iou: float = 0.5) -> PQResult:
    """Detection, segmentation and panoptic quality as hover_net ``get_fast_pq``.

    Pairs need IoU strictly above ``match_iou`` (an IoU of exactly 0.5 is not a match); below 0.5 the pairing
    is Hungarian on IoU first. All three values are NaN when both maps are empty (the reference divides by 0).
    """
    return pq_of(contingency(true, pred), match_iou)


def instance_metrics(true: Any, pred: Any, match_iou: float = 0.5) -> dict[str, float | int]:
    """Dice, AJI, AJI+, DQ, SQ, PQ and the PQ counts of one image pair, from one contingency table."""
    table = contingency(true, pred)
    result = pq_of(table, match_iou)
    return {
        "dice": _dice(table),
        "aji": _aji(table),
        "aji_plus": _aji_plus(table),
        "dq": result.dq,
        "sq": result.sq,
        "pq": result.pq,
        "tp": result.pairing.tp,
        "fp": result.pairing.fp,
        "fn": result.pairing.fn,
        "iou_sum": result.pairing.iou_sum,
        "n_true": table.n_true,
        "n_pred": table.n_pred,
    }


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (without numpy's warning) when there are none."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return math.fsum(kept) / len(kept) if kept else math.nan


# ----------------------------------------------------------------------------------------- input sources


@dataclass
class LabelSource:
    """Instance maps on one side of an evaluation: names, a loader per index, and whether they are an array."""

    description: str
    names: list[str]
    load: Callable[[int], np.ndarray]
    where: Callable[[int], str]
    is_array: bool


LABEL_SUFFIXES = (".tif", ".tiff", ".mat")


def _inst_map_from_array(values: Any, where: str) -> np.ndarray:
    try:
        return as_labels(values, where)
    except ValueError as exc:
        raise InputError(f"{where}: {str(exc).split(': ', 1)[-1]}") from exc


def read_mat_inst_map(path: Path) -> np.ndarray:
    """``inst_map`` of a hover_net/CoNSeP ``.mat`` file (``inst_type`` is not needed for these metrics)."""
    from scipy.io import loadmat

    try:
        with Path(path).open("rb") as handle:
            header = handle.read(128)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if header.startswith(b"MATLAB 7.3"):  # v7.3 files are HDF5 containers, which scipy cannot read
        raise InputError(
            f"cannot read {path}: MATLAB v7.3 (HDF5) files are not supported",
            hint="save it with scipy.io.savemat or MATLAB's save -v7",
        )
    try:
        content = loadmat(path, variable_names=["inst_map"])
    except Exception as exc:  # scipy raises several types for damaged files
        raise InputError(f"cannot read {path}: not a readable .mat file ({type(exc).__name__}: {exc})") from exc
    if "inst_map" not in content:
        raise InputError(f"{path}: no 'inst_map' variable", hint="hover_net .mat files hold inst_map (H x W ids)")
    inst = np.asarray(content["inst_map"])
    if inst.ndim != 2:
        raise InputError(f"{path}: inst_map has shape {inst.shape}; expected a 2-D map of instance ids")
    return _inst_map_from_array(inst, str(path))


def _file_source(files: list[Path], description: str) -> LabelSource:
    from histostain.io.images import read_label_tiff

    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise InputError(
                f"{description}: two label files share the stem {path.stem!r} ({stems[path.stem].name}, {path.name})"
            )
        stems[path.stem] = path
    names = sorted(stems)

    def load(index: int) -> np.ndarray:
        path = stems[names[index]]
        if path.suffix.lower() == ".mat":
            return read_mat_inst_map(path)
        return _inst_map_from_array(read_label_tiff(path), str(path))

    return LabelSource(description, names, load, lambda i: str(stems[names[i]]), is_array=False)


def _choose_split(folder: Path, splits: Sequence[str], split: str | None) -> str:
    if split is not None:
        if split not in splits:
            raise ConfigError(f"{folder}: prepared data has no split {split!r}; it has {', '.join(splits)}")
        return split
    if "test" in splits:
        return "test"
    if len(splits) == 1:
        return next(iter(splits))
    raise ConfigError(f"{folder}: holds the splits {', '.join(splits)}; choose one with --split")


class NpyRows:
    """Rows (axis 0) of a C-order ``.npy`` file, read with plain file reads a chunk at a time.

    Behaves like a read-only array for ``len``, ``shape``, ``dtype`` and ``rows[i]`` (a fresh copy). Unlike a
    memory map, whose touched pages count towards the resident size, memory stays at one chunk whatever the
    file size (PanNuke's masks.npy is 8.6 GB of float64 per fold). Pickled object arrays are refused.
    """

    def __init__(self, path: Path, what: str, chunk: int = 16) -> None:
        if not path.is_file():
            raise InputError(f"{what} not found: {path}")
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(
                f"cannot read {path}: {str(exc).splitlines()[0]}", hint="expected a plain numeric .npy array"
            ) from exc
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        if mapped.ndim < 1:
            raise InputError(f"{path}: holds a scalar; expected an array of images")
        if mapped.ndim > 1 and not mapped.flags.c_contiguous:
            raise InputError(f"{path}: stored in Fortran order", hint="re-save it with numpy.ascontiguousarray")
        self.path = path
        self.shape: tuple[int, ...] = tuple(mapped.shape)
        self.dtype = mapped.dtype
        self.ndim = len(self.shape)
        self._offset = int(getattr(mapped, "offset", 0))
        del mapped
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._chunk = max(1, chunk)
        self._buffer: np.ndarray | None = None
        self._start = self._stop = 0
        self._handle: Any = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"row {index} of {self.shape[0]}")
        if not self._start <= index < self._stop:
            stop = min(index + self._chunk, self.shape[0])
            if self._buffer is None:
                self._buffer = np.empty((self._chunk, *self.shape[1:]), self.dtype)
                self._handle = self.path.open("rb")
            view = self._buffer[: stop - index]
            self._handle.seek(self._offset + index * self._row_bytes)
            got = self._handle.readinto(memoryview(view.reshape(-1).view(np.uint8)))
            if got != (stop - index) * self._row_bytes:
                raise InputError(f"{self.path}: truncated at row {index}", hint="the file is shorter than its header")
            self._start, self._stop = index, stop
        assert self._buffer is not None
        return self._buffer[index - self._start].copy()

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:  # also safe on an object whose __init__ raised
            self._handle.close()
            self._handle = None
        self._buffer = None
        self._start = self._stop = 0

    def __del__(self) -> None:
        self.close()


def prepared_pannuke_split(folder: Path, split: str | None) -> tuple[str, list[str]]:
    """The split a prepared PanNuke folder is evaluated on, and its sample ids in row order."""
    from histostain.datasets.prepared import load_prepared

    manifest = load_prepared(folder)
    if manifest.dataset != "pannuke":
        raise InputError(
            f"{folder}: prepared {manifest.dataset!r} data has no instance maps; expected prepared PanNuke data"
        )
    chosen = _choose_split(folder, list(manifest.splits), split)
    ids = [str(s.get("id", i)) for i, s in enumerate(s for s in manifest.samples if s.get("split") == chosen)]
    return chosen, ids


def _array_source(array: NpyRows, names: list[str], path: Path, description: str, binarize: bool) -> LabelSource:
    """Rows of ``(N, H, W)`` instance maps, or ``(N, H, W, C>=5)`` PanNuke masks merged with binarize."""
    if binarize:
        if array.ndim != 4 or array.shape[-1] < 5:
            raise InputError(f"{path}: shape {array.shape}; expected PanNuke masks (N, H, W, 6)")
    elif array.ndim != 3:
        raise InputError(f"{path}: shape {array.shape}; expected instance maps (N, H, W)")
    if len(names) != array.shape[0]:
        raise InputError(f"{path}: holds {array.shape[0]} maps but the manifest lists {len(names)} samples")

    def load(index: int) -> np.ndarray:
        from histostain.metrics.pannuke import binarize as merge

        row = np.asarray(array[index])
        if binarize:
            return merge(_inst_map_from_array(row[..., :5], f"{path} row {index}"))
        return _inst_map_from_array(row, f"{path} row {index}")

    return LabelSource(description, names, load, lambda i: f"{path} row {i}", is_array=True)


def open_label_source(path: Path, split: str | None = None, side: str = "true") -> LabelSource:
    """Instance maps from label TIFFs / ``.mat`` files (a folder or one file), prepared PanNuke data or masks.npy."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{side} not found: {path}")
    if path.is_file():
        if path.name.endswith(".npy"):
            array = NpyRows(path, "masks.npy")
            return _array_source(array, [str(i) for i in range(array.shape[0])], path, str(path), binarize=True)
        if path.suffix.lower() not in LABEL_SUFFIXES:
            raise InputError(f"{path}: not a label file; expected .tif/.tiff label images or hover_net .mat files")
        return _file_source([path], str(path))
    if (path / "manifest.json").is_file():
        chosen, ids = prepared_pannuke_split(path, split)
        maps = path / chosen / "inst_maps.npy"
        return _array_source(NpyRows(maps, "inst_maps.npy"), ids, maps, f"{path} ({chosen})", binarize=False)
    if (path / "masks.npy").is_file():
        array = NpyRows(path / "masks.npy", "masks.npy")
        names = [str(i) for i in range(array.shape[0])]
        return _array_source(array, names, path / "masks.npy", str(path), binarize=True)
    folder = path
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES)
    if not files and (folder / "mat").is_dir():  # a hover_net run_infer output folder
        folder = folder / "mat"
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".mat")
    if not files:
        raise InputError(
            f"{path}: no instance maps found",
            hint="expected label TIFFs (.tif), hover_net .mat files (inst_map), a prepared PanNuke folder "
            "(manifest.json) or a PanNuke-layout folder with masks.npy",
        )
    return _file_source(files, str(folder))


def pair_sources(true: LabelSource, pred: LabelSource) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Index pairs (true, pred): by position when both sides are arrays, else by file stem; plus unmatched names."""
    if true.is_array and pred.is_array:
        if len(true.names) != len(pred.names):
            raise InputError(
                f"{pred.description} holds {len(pred.names)} maps but {true.description} holds {len(true.names)}; "
                "array inputs are paired row by row"
            )
        return [(i, i) for i in range(len(true.names))], [], []
    pred_index = {name: i for i, name in enumerate(pred.names)}
    pairs = [(i, pred_index[name]) for i, name in enumerate(true.names) if name in pred_index]
    matched = {true.names[i] for i, _ in pairs}
    unmatched_true = [name for name in true.names if name not in pred_index]
    unmatched_pred = [name for name in pred.names if name not in matched]
    if not pairs:
        raise InputError(
            f"no image of {true.description} has a prediction with the same name in {pred.description}",
            hint="ground truth and prediction files are paired by file stem (e.g. img_01.tif and img_01.mat)",
        )
    return pairs, unmatched_true, unmatched_pred


# ------------------------------------------------------------------------------------------------ service


def evaluate_instance(
    true: Path,
    pred: Path,
    *,
    protocol: str = "hovernet",
    match_iou: float = 0.5,
    split: str | None = None,
) -> EvaluationResult:
    """Score predicted instance maps against the ground truth.

    ``protocol="hovernet"``: per-image Dice, AJI, AJI+, DQ, SQ, PQ, their means over images (what hover_net's
    ``compute_stats.py`` prints) and the dataset-level pooled DQ/SQ/PQ. ``protocol="pannuke"``: mPQ and bPQ of
    the official PanNuke-metrics script (see :mod:`histostain.metrics.pannuke`).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if not 0.0 <= match_iou < 1.0:
        raise ConfigError(f"match IoU must be within [0, 1), got {match_iou}")
    if protocol == "pannuke":
        from histostain.metrics.pannuke import evaluate_pannuke

        return evaluate_pannuke(Path(true), Path(pred), split=split, match_iou=match_iou)
    return _evaluate_hovernet(Path(true), Path(pred), match_iou, split)


HOVERNET_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")
SUMMARY_NAMES = {"dice": "Dice", "aji": "AJI", "aji_plus": "AJI+", "dq": "DQ", "sq": "SQ", "pq": "PQ"}


def _evaluate_hovernet(true: Path, pred: Path, match_iou: float, split: str | None) -> EvaluationResult:
    from histostain.metrics.report import EvaluationResult
    from histostain.runtime.progress import track

    true_source = open_label_source(true, split, side="true")
    pred_source = open_label_source(pred, split, side="pred")
    pairs, unmatched_true, unmatched_pred = pair_sources(true_source, pred_source)
    rows: list[dict[str, Any]] = []
    for t_index, p_index in track(pairs, "evaluate instance", unit="image"):
        true_map = true_source.load(t_index)
        pred_map = pred_source.load(p_index)
        if true_map.shape != pred_map.shape:
            raise InputError(
                f"{pred_source.where(p_index)}: shape {pred_map.shape} differs from the ground truth "
                f"{true_source.where(t_index)} {true_map.shape}"
            )
        scores = instance_metrics(true_map, pred_map, match_iou)
        rows.append({"image": true_source.names[t_index], **scores})

    summary: dict[str, float | int | None] = {SUMMARY_NAMES[k]: nanmean([r[k] for r in rows]) for k in HOVERNET_KEYS}
    totals = {k: sum(r[k] for r in rows) for k in ("tp", "fp", "fn")}
    iou_sum = math.fsum(r["iou_sum"] for r in rows)
    dq, sq, pq_value = pq_from_counts(totals["tp"], totals["fp"], totals["fn"], iou_sum)
    summary.update({"DQ_pooled": dq, "SQ_pooled": sq, "PQ_pooled": pq_value})
    summary.update({"images": len(rows), "TP": totals["tp"], "FP": totals["fp"], "FN": totals["fn"]})
    undefined = {SUMMARY_NAMES[k]: sum(1 for r in rows if math.isnan(r[k])) for k in HOVERNET_KEYS}
    warnings = []
    if unmatched_true:
        warnings.append(f"{len(unmatched_true)} ground-truth image(s) have no prediction and were left out")
    if unmatched_pred:
        warnings.append(f"{len(unmatched_pred)} prediction(s) have no ground truth and were left out")
    both_empty = sum(1 for r in rows if r["n_true"] == 0 and r["n_pred"] == 0)
    if both_empty:
        warnings.append(f"{both_empty} image(s) are empty in both maps: their scores are undefined and skipped")
    meta = {
        "protocol": "hovernet",
        "match_iou": match_iou,
        "true": true_source.description,
        "pred": pred_source.description,
        "images": len(rows),
        "aggregation": "mean over images of the per-image scores (NaN skipped); *_pooled: TP/FP/FN/IoU summed",
        "undefined_images": undefined,
        "unmatched_true": unmatched_true,
        "unmatched_pred": unmatched_pred,
    }
    for row in rows:
        row.pop("iou_sum")
    log.info("evaluate instance (hover_net protocol): %d images, mean PQ %.4f", len(rows), summary["PQ"])
    return EvaluationResult(metric="instance", summary=summary, per_image=rows, meta=meta, warnings=warnings)
