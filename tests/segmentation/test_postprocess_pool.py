"""Post-processing in worker processes gives the same nuclei as in the caller, bounded and in order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from histostain.segmentation import postprocess
from histostain.segmentation.postprocess import instances_from_hovernet_maps
from histostain.segmentation.postprocess_pool import PostprocessPool
from histostain.segmentation.targets import make_targets


def some_maps(seed: int, size: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    seeds[rng.integers(0, size, 12), rng.integers(0, size, 12)] = np.arange(1, 13)
    distance, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    inst = np.where(distance <= 8, seeds[rows, cols], 0)
    targets = make_targets(inst, inst.shape)
    tp_prob = rng.uniform(0, 1, (size, size, 6)).astype(np.float32)
    return targets.np.astype(np.float32), targets.hv.transpose(1, 2, 0).copy(), tp_prob


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.inst_map, b.inst_map)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.types, b.types)
    np.testing.assert_array_equal(a.type_probs, b.type_probs)
    assert all(np.array_equal(x, y) for x, y in zip(a.contours, b.contours, strict=True))


def test_inline_pool_gives_the_direct_result() -> None:
    maps = some_maps(0)
    with PostprocessPool(workers=0) as pool:
        future = pool.submit(*maps, mpp=0.25)
        assert future.done()
        assert_same(future.result(), instances_from_hovernet_maps(*maps))
        assert future.result().mpp == 0.25


def test_malformed_maps_fail_in_the_caller() -> None:
    with PostprocessPool(workers=0) as pool, pytest.raises(ValueError, match="hv"):
        pool.submit(np.zeros((4, 4)), np.zeros((4, 5, 2)))


def test_a_failing_job_reports_through_its_future(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(postprocess, "instances_from_argmax", broken)
    with PostprocessPool(workers=0) as pool:
        future = pool.submit(*some_maps(1))
    with pytest.raises(RuntimeError, match="boom"):
        future.result()


def test_worker_processes_give_the_direct_results_in_submission_order() -> None:
    maps = [some_maps(seed) for seed in range(4)]
    with PostprocessPool(workers=2, max_pending=2) as pool:
        futures = [pool.submit(*m) for m in maps]
        results = [f.result(timeout=120) for f in futures]
    for m, result in zip(maps, results, strict=True):
        assert_same(result, instances_from_hovernet_maps(*m))
