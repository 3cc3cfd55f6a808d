"""HoVer-Net on an image of any size: tiles in the reference geometry, batched, and the NP/HV/TP maps stitched.

The reference (hover_net tile mode) reflect-pads the image and cuts input patches of ``patch_in`` pixels whose
centres of ``patch_out`` pixels tile the image without overlap (fast: 256 -> 164, margin 46; original: 270 ->
80, margin 95). ``io.tiling.plan_tiles`` with ``margin`` and no overlap is exactly that grid, so each output
pixel comes from one patch, as in the reference. The network sees RGB in 0..255 (it divides by 255 itself);
NP and TP logits become probabilities with a softmax over classes, HV stays as the network returns it.

Speed (``compile``, see ``docs/segment-speed.md``): on CPU and CUDA a full-size network is compiled with
``torch.compile`` (Inductor with ``freezing``: weights become constants, batch norms that follow a convolution
are folded into it, weights are pre-packed for oneDNN, and the pointwise work between convolutions is fused)
when the run holds enough patches to pay the compile back (``auto``). On CPU it then runs one patch per call,
one static shape compiled once (larger batches are no faster per patch on a CPU, so no batch needs filling
across images), in one single-threaded stream per torch thread: the patches of a batch are spread over the
streams (two 1-thread streams beat one 2-thread stream on 2 cores, where OpenMP scales poorly on these
layers). On CUDA it takes the batches as they come (a second batch size makes Inductor compile the batch
dimension as dynamic, once). The maps are the eager network's up to float
round-off. A compile that fails falls back to eager with a warning; small (test) networks always run eager.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from histostain.errors import ConfigError, InputError
from histostain.io.tiling import Stitcher, iter_tiles, plan_tiles

if TYPE_CHECKING:
    import torch

    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.hovernet import HoVerNet

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "on", "off")
#: ``compile="auto"`` compiles a network of at least this many parameters (the full-size HoVer-Net has 37.6
#: million; the scaled-down test and demo networks stay eager: their forward pass costs less than compiling) ...
AUTO_COMPILE_MIN_PARAMETERS = 2_000_000
#: ... for a run of at least this many patches: compiling the full network costs 1-2.5 minutes on the 2-core
#: development machine (less once Inductor's on-disk cache is warm) and saves 1-3 s per patch there
AUTO_COMPILE_MIN_PATCHES = 48


def should_compile(choice: str, device_kind: str, parameters: int, patches: int | None) -> bool:
    """Whether ``compile=choice`` compiles: ``on``/``off`` say so; ``auto`` compiles a full-size network on CPU or
    CUDA for a run of at least ``AUTO_COMPILE_MIN_PATCHES`` patches (``patches``: those still to come, when known).
    """
    if choice not in COMPILE_CHOICES:
        raise ConfigError(f"--compile {choice}: unknown choice", hint=f"use one of {', '.join(COMPILE_CHOICES)}")
    if choice != "auto":
        return choice == "on"
    if device_kind not in ("cpu", "cuda") or parameters < AUTO_COMPILE_MIN_PARAMETERS:
        return False
    return patches is not None and patches >= AUTO_COMPILE_MIN_PATCHES


@dataclass
class HoVerNetMaps:
    """The network's answer for one image: nucleus probability, horizontal/vertical maps, type probabilities."""

    np_prob: np.ndarray  # H x W float32, P(nucleus)
    hv: np.ndarray  # H x W x 2 float32, channel 0 horizontal, 1 vertical
    tp_prob: np.ndarray | None  # H x W x T float32 (T types incl. background), or None without a type branch


class HoVerNetPredictor:
    """Run a HoVer-Net over whole images in its reference tile geometry, ``batch_size`` patches at a time.

    ``compile``: ``auto`` | ``on`` | ``off`` (module docstring). With ``auto`` the decision is taken at the first
    forward pass from the patches announced with :meth:`expect` (the segment service announces its whole run),
    else from the first image's; a run that turns out longer (``AUTO_COMPILE_MIN_PATCHES`` patches computed
    eagerly) compiles then.
    """

    def __init__(self, model: HoVerNet, device: DeviceManager, batch_size: int = 8, *, compile: str = "auto") -> None:
        if batch_size < 1:
            raise InputError(f"--batch-size {batch_size}: must be at least 1")
        should_compile(compile, "cpu", 0, None)  # checks the choice
        self.device = device
        self.network = model
        self.model = device.prepare_model(model).eval()
        self.batch_size = int(batch_size)
        self.patch_in, self.patch_out = model.patch_sizes
        self.margin = (self.patch_in - self.patch_out) // 2
        self.compile = compile
        self.parameters = sum(p.numel() for p in model.parameters())
        self.compiled: Callable[..., dict[str, torch.Tensor]] | None = None
        self.compile_state = "eager"  # eager | compiled | failed
        self.compile_seconds = 0.0
        self.patches_done = 0
        self._expected: int | None = None
        self._decided = False
        self._compiled_shapes: set[int] = set()
        self._lock = threading.Lock()
        self._streams: ThreadPoolExecutor | None = None
        self.streams = 1

    # ---------------------------------------------------------------------------------------------- planning
    def patches_for(self, height: int, width: int) -> int:
        """Patches of an ``height x width`` image in the reference geometry."""
        return len(plan_tiles(height, width, self.patch_in, overlap=0, margin=self.margin))

    def expect(self, patches: int) -> None:
        """Announce ``patches`` more patches to come (lets ``compile="auto"`` decide for the whole run)."""
        self._expected = (self._expected or 0) + int(patches)

    @property
    def forward_batch(self) -> int | None:
        """Patches per call of the compiled network: 1 on CPU (one static shape), None (the batch as it comes,
        any size: dynamic batch dimension) elsewhere."""
        return 1 if self.device.plan.kind == "cpu" else None

    def _decide(self, upcoming: int) -> None:
        """Compile if the policy says so: at the first forward pass, and (``auto`` without :meth:`expect`) as soon
        as the patches computed so far and the ``upcoming`` ones make the run long enough."""
        if self.compile_state != "eager":
            return
        if not self._decided:
            self._decided = True
            patches = self._expected if self._expected is not None else upcoming
        elif self.compile == "auto" and self._expected is None:
            patches = self.patches_done + upcoming
        else:
            return
        if should_compile(self.compile, self.device.plan.kind, self.parameters, patches):
            self._build_compiled()

    def _build_compiled(self) -> None:
        import torch

        try:
            # CPU: one static shape (one patch); CUDA: Inductor's default, a second batch size makes the batch
            # dimension dynamic (one more compile) so full and last batches share one graph
            dynamic = False if self.forward_batch == 1 else None
            self.compiled = torch.compile(self.model, dynamic=dynamic, options={"freezing": True})
            threads = torch.get_num_threads()
            if self.forward_batch == 1 and threads > 1:  # CPU: one single-threaded stream of patches per thread
                self._streams = ThreadPoolExecutor(
                    threads, "hovernet-stream", initializer=torch.set_num_threads, initargs=(1,)
                )
                self.streams = threads
        except Exception as exc:  # any failure means: run eager
            self._compile_failed(exc)
            return
        self.compile_state = "compiled"

    def close(self) -> None:
        """Stop the CPU streams' threads (they also stop with the process)."""
        if self._streams is not None:
            self._streams.shutdown(wait=True)
            self._streams = None
            self.streams = 1

    def _compile_failed(self, exc: BaseException) -> None:
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        log.warning("torch.compile failed (%s: %s); running the network eagerly", type(exc).__name__, first_line)
        self.compiled = None
        self.compile_state = "failed"
        self.close()

    # ---------------------------------------------------------------------------------------------- forward
    def _call_compiled(self, part: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        start = time.perf_counter()
        with torch.inference_mode(), self.device.autocast():
            out = self.compiled(part)  # type: ignore[misc]
        with self._lock:
            if len(self._compiled_shapes) < 2 and len(part) not in self._compiled_shapes:
                self._compiled_shapes.add(len(part))  # a first or second batch size: Inductor compiles
                seconds = time.perf_counter() - start
                self.compile_seconds += seconds
                log.info("compiled the network (batch of %d patch(es)) in %.0f s", len(part), seconds)
        return out

    def _run_compiled(self, batch: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The compiled network on ``batch``, ``forward_batch`` patches per call (on CPU in ``streams``
        single-threaded streams). None when compiling or running it failed (then eager from now on)."""
        import torch

        size = self.forward_batch
        parts = [batch] if size is None or len(batch) == size else list(torch.split(batch, size))
        try:
            if self._streams is None:
                outputs = [self._call_compiled(part) for part in parts]
            else:
                if not self._compiled_shapes:  # compile in a stream, i.e. with that stream's one thread
                    outputs = [self._streams.submit(self._call_compiled, parts[0]).result()]
                    parts = parts[1:]
                else:
                    outputs = []
                outputs += list(self._streams.map(self._call_compiled, parts))
        except Exception as exc:  # Inductor compiles at the first call of each shape
            self._compile_failed(exc)
            return None
        if len(outputs) == 1:
            return outputs[0]
        return {name: torch.cat([out[name] for out in outputs]) for name in outputs[0]}

    def _forward(self, tiles: list[np.ndarray]) -> dict[str, torch.Tensor]:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(np.stack(tiles))).permute(0, 3, 1, 2).float()
        batch = self.device.to_device(batch)
        with torch.inference_mode():
            out = self._run_compiled(batch) if self.compiled is not None else None
            if out is None:
                with self.device.autocast():
                    out = self.model(batch)
        self.patches_done += len(tiles)
        return {name: value.float() for name, value in out.items()}

    def maps(self, rgb: np.ndarray) -> HoVerNetMaps:
        """NP/HV/TP maps of a ``H x W x 3`` uint8 image, the same size as the image."""
        import torch

        image = np.asarray(rgb)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected a uint8 H x W x 3 RGB image, got {image.dtype} array of shape {image.shape}")
        grid = plan_tiles(image.shape[0], image.shape[1], self.patch_in, overlap=0, margin=self.margin)
        self._decide(len(grid))
        if self._expected is not None:
            self._expected = max(0, self._expected - len(grid))
        types = self.network.num_types
        np_canvas = Stitcher(grid)
        hv_canvas = Stitcher(grid, channels=2)
        tp_canvas = Stitcher(grid, channels=types) if types else None
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            out = self._forward([tile for _, tile in pending])
            np_prob = torch.softmax(out["np"], dim=1)[:, 1].cpu().numpy()
            hv = out["hv"].permute(0, 2, 3, 1).cpu().numpy()
            tp = torch.softmax(out["tp"], dim=1).permute(0, 2, 3, 1).cpu().numpy() if tp_canvas is not None else None
            for k, (index, _) in enumerate(pending):
                np_canvas.add(index, np_prob[k])
                hv_canvas.add(index, hv[k])
                if tp_canvas is not None and tp is not None:
                    tp_canvas.add(index, tp[k])
            pending.clear()

        for index, _y, _x, tile in iter_tiles(image, grid):
            pending.append((index, tile))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return HoVerNetMaps(
            np_canvas.result().astype(np.float32, copy=False),
            hv_canvas.result().astype(np.float32, copy=False),
            None if tp_canvas is None else tp_canvas.result().astype(np.float32, copy=False),
        )

    def describe(self) -> dict[str, Any]:
        """How the network ran (for the run record)."""
        return {
            "compile": self.compile,
            "compiled": self.compile_state,
            "compile_seconds": round(self.compile_seconds, 1),
            "forward_batch": (self.forward_batch or self.batch_size) if self.compiled is not None else self.batch_size,
            "streams": self.streams,
        }


__all__ = [
    "AUTO_COMPILE_MIN_PATCHES",
    "AUTO_COMPILE_MIN_PARAMETERS",
    "COMPILE_CHOICES",
    "HoVerNetMaps",
    "HoVerNetPredictor",
    "should_compile",
]
