"""Run HoVer-Net post-processing in worker processes, overlapped with inference.

Post-processing is CPU work that often costs more than the network's forward pass (reference ``hovernet.md``
section 5.4: hover_net hands each image's post-processing to a ``ProcessPoolExecutor`` while the GPU moves on).
:class:`PostprocessPool` does the same for histostain: ``submit`` the maps of one image, keep inferring, collect
the :class:`~histostain.segmentation.nuclei.Nuclei` from the returned future.

- **Processes, not threads**: much of the work (the per-nucleus loop, the numpy glue, parts of the watershed)
  holds the GIL; two threads on two cores gave only 1.2-1.3x.
- **Only what the worker needs crosses the process boundary**: the maps are sent as float32 (the post-processing
  casts to float32 first anyway) and the type probabilities as their uint8 argmax (all it reads of them), which
  for PanNuke's 6 types cuts what is pickled for a 2048 x 2048 image from 151 MB to 55 MB.
- **Bounded look-ahead**: ``submit`` blocks while ``max_pending`` results are unfinished, so a fast GPU cannot
  queue up the maps of a whole slide in memory.
- **spawn** start method by default: forking a process that already runs torch's (or OpenCV's) thread pools can
  deadlock the child; spawned workers import only numpy, scipy, scikit-image and OpenCV. Each worker runs OpenCV
  single-threaded so that ``workers`` processes use ``workers`` cores.
- ``workers=0`` runs every job in the caller, synchronously (no process at all), for tests and single-core
  machines; the interface is the same.

The job is :func:`~histostain.segmentation.postprocess.instances_from_argmax`, a plain module-level function, so
a caller with its own executor can submit it directly: ``executor.submit(instances_from_argmax, np_prob, hv,
type_map, scale=scale)`` with ``type_map = type_map_from_probabilities(tp_prob, np_prob.shape)``.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from types import TracebackType

import numpy as np

from histostain.segmentation.nuclei import Nuclei


def _worker_init() -> None:
    """Import the post-processing once when the worker starts (not inside the first job) and let OpenCV use one
    core: the pool's size is the parallelism."""
    import cv2

    import histostain.segmentation.postprocess  # noqa: F401  (numpy, scipy, scikit-image, OpenCV)

    cv2.setNumThreads(1)


class PostprocessPool:
    """``submit(np_prob, hv, tp_prob)`` -> ``Future[Nuclei]``, computed in ``workers`` processes.

    Use it as a context manager; leaving the block waits for every submitted job. Results come back in the
    futures, in whatever order the jobs finish; keep the futures in submission order to write in order.
    """

    def __init__(self, workers: int = 1, *, max_pending: int | None = None, start_method: str = "spawn") -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.max_pending = max(1, 2 * workers if max_pending is None else max_pending)
        self._executor: Executor | None = None
        if workers:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context(start_method),
                initializer=_worker_init,
            )
        self._pending: deque[Future[Nuclei]] = deque()

    def submit(
        self,
        np_prob: np.ndarray,
        hv: np.ndarray,
        tp_prob: np.ndarray | None = None,
        *,
        scale: float = 1.0,
        type_names: Mapping[int, str] | None = None,
        mpp: float | None = None,
    ) -> Future[Nuclei]:
        """Queue one image's maps (the arguments of ``instances_from_hovernet_maps``); blocks while
        ``max_pending`` jobs are unfinished. Errors of the job are raised by ``future.result()``."""
        from histostain.segmentation.postprocess import (
            instances_from_argmax,
            scaled_constants,
            type_map_from_probabilities,
        )

        np_prob = np.asarray(np_prob, dtype=np.float32)  # what the post-processing computes with, and half of
        hv = np.asarray(hv, dtype=np.float32)  # float64's bytes to send
        shape = np_prob.shape
        if len(shape) != 2 or hv.shape != (*shape, 2):  # fail in the caller, not later in a worker
            raise ValueError(f"np_prob must be H x W and hv H x W x 2, got {shape} and {hv.shape}")
        scaled_constants(scale)
        type_map = None if tp_prob is None else type_map_from_probabilities(tp_prob, shape)  # type: ignore[arg-type]
        options = {"scale": scale, "type_names": type_names, "mpp": mpp}
        if self._executor is None:
            future: Future[Nuclei] = Future()
            try:
                future.set_result(instances_from_argmax(np_prob, hv, type_map, **options))  # type: ignore[arg-type]
            except Exception as exc:  # delivered like a worker's error
                future.set_exception(exc)
            return future
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().exception()  # waits; the caller still reads the outcome from its future
            self._drop_finished()
        future = self._executor.submit(instances_from_argmax, np_prob, hv, type_map, **options)
        self._pending.append(future)
        return future

    def _drop_finished(self) -> None:
        self._pending = deque(f for f in self._pending if not f.done())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers (after the queued jobs when ``wait``)."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._pending.clear()

    def __enter__(self) -> PostprocessPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown(wait=True, cancel_futures=exc_type is not None)


__all__ = ["PostprocessPool"]
