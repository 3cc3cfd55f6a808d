"""HoVer-Net on an image of any size: tiles in the reference geometry, batched, and the NP/HV/TP maps stitched.

The reference (hover_net tile mode) reflect-pads the image and cuts input patches of ``patch_in`` pixels whose
centres of ``patch_out`` pixels tile the image without overlap (fast: 256 -> 164, margin 46; original: 270 ->
80, margin 95). ``io.tiling.plan_tiles`` with ``margin`` and no overlap is exactly that grid, so each output
pixel comes from one patch, as in the reference. The network sees RGB in 0..255 (it divides by 255 itself);
NP and TP logits become probabilities with a softmax over classes, HV stays as the network returns it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from histostain.errors import InputError
from histostain.io.tiling import Stitcher, iter_tiles, plan_tiles

if TYPE_CHECKING:
    import torch

    from histostain.runtime.device import DeviceManager
    from histostain.segmentation.hovernet import HoVerNet

log = logging.getLogger(__name__)


@dataclass
class HoVerNetMaps:
    """The network's answer for one image: nucleus probability, horizontal/vertical maps, type probabilities."""

    np_prob: np.ndarray  # H x W float32, P(nucleus)
    hv: np.ndarray  # H x W x 2 float32, channel 0 horizontal, 1 vertical
    tp_prob: np.ndarray | None  # H x W x T float32 (T types incl. background), or None without a type branch


class HoVerNetPredictor:
    """Run a HoVer-Net over whole images in its reference tile geometry, ``batch_size`` patches at a time."""

    def __init__(self, model: HoVerNet, device: DeviceManager, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise InputError(f"--batch-size {batch_size}: must be at least 1")
        self.device = device
        self.network = model
        self.model = device.prepare_model(model).eval()
        self.batch_size = int(batch_size)
        self.patch_in, self.patch_out = model.patch_sizes
        self.margin = (self.patch_in - self.patch_out) // 2

    def _forward(self, tiles: list[np.ndarray]) -> dict[str, torch.Tensor]:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(np.stack(tiles))).permute(0, 3, 1, 2).float()
        with torch.inference_mode(), self.device.autocast():
            out = self.model(self.device.to_device(batch))
        return {name: value.float() for name, value in out.items()}

    def maps(self, rgb: np.ndarray) -> HoVerNetMaps:
        """NP/HV/TP maps of a ``H x W x 3`` uint8 image, the same size as the image."""
        import torch

        image = np.asarray(rgb)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected a uint8 H x W x 3 RGB image, got {image.dtype} array of shape {image.shape}")
        grid = plan_tiles(image.shape[0], image.shape[1], self.patch_in, overlap=0, margin=self.margin)
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


__all__ = ["HoVerNetMaps", "HoVerNetPredictor"]
