"""The batch engine: run one per-image step over files, folders or globs, resumably, sharded, with I/O overlapped.

Every batch command (translate, segment, pipeline) is the same loop around its own step:

1. :func:`plan_batch` (writes nothing): expand the inputs (``io.inputs``), name each input's outputs, refuse
   output folders inside input folders and outputs that are inputs, and keep this process's share
   (``io.sharding``: flags, SLURM array or torchrun). Cheap, so user errors come before any model is loaded.
2. :func:`run_batch`: compare the step's settings with the records already in the folder (``io.run_record``;
   other settings are refused unless ``overwrite``), delete temp files that a killed run left beside *this
   share's* outputs, write the run record, then process every input whose outputs are not all there yet.
   Decoding the next images and encoding/writing finished ones run in a small thread pool while the step
   computes, both with bounded lookahead so huge images never pile up in memory.

Per-file error policy: an input that cannot be read (or that a step rejects with :class:`InputError`) is
skipped, logged when it happens and listed in ``report.failed``; everything else is still written, and the
caller decides what to do at the end (the CLI exits 2 naming the first failure). Any other exception stops
the run; the record then says ``failed`` (``interrupted`` for Ctrl-C) and finished outputs are kept.

A step subclasses :class:`ImageStep` (one image in, one result out: ``run``) or, to batch work across
consecutive images, :class:`BatchStep` (``process`` consumes a stream of decoded images and reports each
result when it is complete). Either way ``write`` runs in a worker thread and writes every output of one input
(atomically, through ``io.images``/``io.atomic``), so an input counts as done exactly when all its files exist.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from histostain.errors import InputError
from histostain.io.atomic import remove_stale_temp_files
from histostain.io.images import read_image
from histostain.io.inputs import BatchItem, OutputNames, check_output_folder, collect_items, outputs_with
from histostain.io.run_record import RunRecord, is_record_name
from histostain.io.sharding import Shard, resolve_shard
from histostain.io.writable import check_output_folder as writable_folder
from histostain.provenance import Provenance
from histostain.runtime.progress import ProgressTask, progress_task

log = logging.getLogger(__name__)
T = TypeVar("T")  # what the step reads per input (an RGB array by default)
R = TypeVar("R")  # what the step produces per input, handed to ``write``


# ---------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class BatchPlan:
    """What one process of a batch command will do: its share of the inputs and where the outputs go."""

    command: str
    out_dir: Path
    items: tuple[BatchItem, ...]  # this shard's share, in key order
    total: int  # inputs over all shards
    shard: Shard


def plan_batch(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    outputs: OutputNames,
    *,
    command: str,
    recursive: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> BatchPlan:
    """Collect and check the inputs, and pick this process's share; raises user errors, writes nothing."""
    out = writable_folder(out_dir, "--out")  # a file there, a path through a file, a read-only folder: now
    shard = resolve_shard(num_parts, part_id, environ)
    items, specs = collect_items(inputs, out, outputs, recursive=recursive)
    check_output_folder(out, specs, items)
    for item in items:
        for target in item.targets:
            if target.parent == out and is_record_name(target.name, command):
                raise InputError(
                    f"the output of {item.source} would be {target}, the name of the run record",
                    hint="rename that input",
                )
    return BatchPlan(command, out, tuple(shard.select(items)), len(items), shard)


# ---------------------------------------------------------------------------------------------------- steps


class Sink(Generic[R]):
    """Where a step hands each input's outcome: :meth:`done` with its result, or :meth:`failed`."""

    def __init__(self, engine: _Engine[R]) -> None:
        self._engine = engine

    def done(self, item: BatchItem, result: R) -> None:
        """The result of ``item`` is complete: it is written by a worker thread."""
        self._engine.submit_write(item, result)

    def failed(self, item: BatchItem, error: InputError) -> None:
        """``item`` cannot be processed: skipped and reported, the run goes on."""
        self._engine.fail(item, error)


class BatchStep(ABC, Generic[T, R]):
    """A command's work on its inputs, streamed: subclass this to batch work across consecutive images."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The options that change the outputs (weights digest, tile, format, ...): compared with earlier runs.

        Leave out what only changes speed (batch size, workers, device): a resumed run may differ in those.
        """

    def describe(self) -> dict[str, Any]:
        """More run-record content that does not decide the outputs (the weights record, device, batch size)."""
        return {}

    def read(self, path: Path) -> T:
        """Decode one input (in a worker thread); :class:`InputError` marks the input as failed."""
        return cast(T, read_image(path))

    @abstractmethod
    def process(self, work: Iterable[tuple[BatchItem, T]], sink: Sink[R]) -> None:
        """Consume the decoded inputs in order and call ``sink.done`` (or ``sink.failed``) once for each."""

    @abstractmethod
    def write(self, item: BatchItem, result: R) -> None:
        """Write every output of ``item`` (``item.targets``, in the order the output names gave) atomically."""

    def summary(self, report: BatchReport) -> dict[str, Any]:
        """The result stored in the run record at the end (and what a command prints); override to add figures."""
        return report.to_dict()


class ImageStep(BatchStep[T, R]):
    """The simple step: one decoded input in, one result out (segment: image -> nuclei -> four files)."""

    @abstractmethod
    def run(self, item: BatchItem, image: T) -> R:
        """Compute the result of one input (in the main thread: the model lives here)."""

    def process(self, work: Iterable[tuple[BatchItem, T]], sink: Sink[R]) -> None:
        for item, image in work:
            try:
                result = self.run(item, image)
            except InputError as error:
                sink.failed(item, error)
                continue
            sink.done(item, result)


# --------------------------------------------------------------------------------------------------- report


@dataclass
class BatchReport:
    """What one run did; ``done`` counts inputs whose outputs were all written by this run."""

    command: str
    out_dir: str
    record: str
    shard: Shard
    inputs: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    removed_temp_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "inputs": self.inputs,
            "done": self.done,
            "skipped": self.skipped,
            "failed": [{"path": path, "error": error} for path, error in self.failed],
            "seconds": self.seconds,
            "out_dir": self.out_dir,
            "record": self.record,
            "shard": self.shard.to_dict(),
            "removed_temp_files": self.removed_temp_files,
        }


# --------------------------------------------------------------------------------------------------- engine


class _Engine(Generic[R]):
    """The threads of one run: decoding ahead, writing behind, both bounded by ``lookahead``."""

    def __init__(
        self, step: BatchStep[Any, R], report: BatchReport, pool: ThreadPoolExecutor, task: ProgressTask, lookahead: int
    ) -> None:
        self.step, self.report, self.pool, self.task = step, report, pool, task
        self.lookahead = max(1, lookahead)
        self.writes: deque[tuple[BatchItem, Future[None]]] = deque()

    def decoded(self, todo: Sequence[BatchItem]) -> Iterator[tuple[BatchItem, Any]]:
        """The inputs in order, decoded ``lookahead`` ahead in the pool; unreadable ones are reported and left out."""
        queue = iter(todo)
        reads: deque[tuple[BatchItem, Future[Any]]] = deque()
        for item in queue:
            reads.append((item, self.pool.submit(self.step.read, item.source)))
            if len(reads) >= self.lookahead:
                break
        while reads:
            item, future = reads.popleft()
            following = next(queue, None)
            if following is not None:
                reads.append((following, self.pool.submit(self.step.read, following.source)))
            try:
                image = future.result()
            except InputError as error:
                self.fail(item, error)
                continue
            yield item, image

    def submit_write(self, item: BatchItem, result: R) -> None:
        self.writes.append((item, self.pool.submit(self.step.write, item, result)))
        self.task.advance(status=item.source.name)
        self.collect(wait=False)

    def fail(self, item: BatchItem, error: InputError, counted: bool = False) -> None:
        log.error("skipped %s", error.one_line())
        self.report.failed.append((str(item.source), error.message))
        if not counted:
            self.task.advance(status=f"failed: {item.source.name}")

    def collect(self, wait: bool) -> None:
        """Account for finished writes in order; block while more than ``lookahead`` wait (or all, with ``wait``)."""
        while self.writes and (wait or len(self.writes) > self.lookahead or self.writes[0][1].done()):
            item, future = self.writes.popleft()
            try:
                future.result()
            except InputError as error:
                self.fail(item, error, counted=True)
            else:
                self.report.done += 1

    def settle(self) -> None:
        """After the step failed: let the writes in flight finish, logging (not raising) their own errors."""
        while self.writes:
            try:
                self.collect(wait=True)
            except Exception as error:  # the step's exception is the one to report
                log.error("a write failed while stopping: %s", error)


def run_batch(
    plan: BatchPlan,
    step: BatchStep[Any, Any],
    *,
    overwrite: bool = False,
    provenance: Provenance | None = None,
    workers: int = 2,
    lookahead: int = 4,
) -> BatchReport:
    """Run ``step`` over ``plan``'s inputs into its output folder (see the module docstring for the order).

    Inputs whose outputs all exist are skipped unless ``overwrite``. ``provenance``: the CLI's record of the
    invocation (library callers get ``sys.argv`` and the step's settings).
    """
    settings = step.settings()
    record = RunRecord(
        plan.out_dir,
        plan.command,
        plan.shard,
        settings,
        overwrite=overwrite,
        content={
            "provenance": (provenance or Provenance.capture(settings)).to_dict(),
            **step.describe(),
            "inputs": {"total": plan.total, "this_part": len(plan.items)},
        },
    )
    record.check()
    try:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out {plan.out_dir}: {exc.strerror or exc}") from exc
    report = BatchReport(plan.command, str(plan.out_dir), str(record.path), plan.shard, inputs=len(plan.items))
    report.removed_temp_files = remove_stale_temp_files([t for i in plan.items for t in i.targets] + [record.path])
    if report.removed_temp_files:
        log.info("removed %d temporary file(s) left by an interrupted run", report.removed_temp_files)
    record.start()
    todo = list(plan.items) if overwrite else [item for item in plan.items if not item.done()]
    report.skipped = len(plan.items) - len(todo)
    log.info(
        "%s: %d of %d input(s) (%s), %d to do, %d already done",
        plan.command,
        len(plan.items),
        plan.total,
        plan.shard.describe(),
        len(todo),
        report.skipped,
    )
    start = time.perf_counter()
    try:
        _process(step, todo, report, workers, lookahead)
    except BaseException as error:
        report.seconds = time.perf_counter() - start
        record.stop(error, step.summary(report))
        raise
    report.seconds = time.perf_counter() - start
    record.finish(step.summary(report))
    return report


def _process(
    step: BatchStep[Any, Any], todo: Sequence[BatchItem], report: BatchReport, workers: int, lookahead: int
) -> None:
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="batch-io")
    try:
        with progress_task(report.command, total=len(todo), unit="img") as task:
            engine = _Engine(step, report, pool, task, lookahead)
            try:
                step.process(engine.decoded(todo), Sink(engine))
            except BaseException:
                engine.settle()  # outputs already handed over are finished and kept
                raise
            engine.collect(wait=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "BatchItem",
    "BatchPlan",
    "BatchReport",
    "BatchStep",
    "ImageStep",
    "OutputNames",
    "Sink",
    "outputs_with",
    "plan_batch",
    "run_batch",
]
