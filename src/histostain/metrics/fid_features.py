"""FID-Inception pool3 features of image files: decoding and resizing in DataLoader workers, the network in fp32.

Each image is read as uint8 RGB, scaled to [0, 1] (torchvision's ``ToTensor``) and resized bilinearly to
299 x 299 (``align_corners=False``, no antialiasing) on its own, in a worker process, so decoding overlaps with
the network and a folder may mix sizes; the network (:mod:`histostain.metrics.inception`) maps to [-1, 1] and
returns the 2048-d pool3 features: the pytorch-fid pipeline. The network always runs in fp32 (reduced precision
would move the numbers, and FID is only useful when it is reproducible).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from histostain.errors import ConfigError, HistostainError, InputError
from histostain.io.images import read_image
from histostain.metrics.defaults import DEFAULT_BATCH_SIZE, GPU_MAX_WORKERS
from histostain.metrics.inception import FID_FEATURE_DIM, FID_INPUT_SIZE
from histostain.runtime.device import DeviceManager
from histostain.runtime.progress import progress_task

RESIZE_RULE = "bilinear to 299x299, align_corners=False, no antialias; [0,1] -> 2x-1 (pytorch-fid)"


class ImageTensorDataset:
    """Map-style dataset: path -> float 3 x 299 x 299 in [0, 1], decoded and resized in the worker process.

    Resizing each image on its own gives the same numbers as resizing a batch (bilinear resampling is
    per-image) and lets a folder mix image sizes. A read failure is returned, not raised, so the main process
    can raise the original one-line :class:`InputError` instead of the DataLoader's re-wrapped traceback.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        try:
            image = read_image(self.paths[index])
        except HistostainError as exc:
            return None, exc.one_line()
        if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (some decoders return them)
            image = image.copy()
        # exactly torchvision's ToTensor: uint8 -> float32 / 255
        tensor = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if tensor.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            size = (FID_INPUT_SIZE, FID_INPUT_SIZE)
            tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=False)
        return tensor[0], None


def collate(items: list[tuple[torch.Tensor | None, str | None]]) -> tuple[torch.Tensor | None, str | None]:
    """Stack a batch, or pass on the first read error (the main process raises it as one line)."""
    for _, error in items:
        if error is not None:
            return None, error
    return torch.stack([tensor for tensor, _ in items if tensor is not None]), None


def check_loader_options(batch_size: int, num_workers: int | None) -> None:
    """A batch size of at least 1 and a worker count of at least 0 (None: the device decides)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")


def resolve_num_workers(requested: int | None, device_kind: str) -> int:
    """Decoding processes for :func:`extract_features`: ``requested``, or by device when it is None.

    On a CPU the network already uses every core and decoding is ~2% of the work, so workers only compete
    (measured: 10.0 images/s in-process vs 8.1 with 2 workers on 2 cores): 0. On a GPU they hide decoding:
    ``min(GPU_MAX_WORKERS, CPUs)``.
    """
    if requested is not None:
        return requested
    return 0 if device_kind == "cpu" else min(GPU_MAX_WORKERS, os.cpu_count() or 1)


def extract_features(
    paths: Sequence[Path],
    model: torch.nn.Module,
    device: DeviceManager,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    description: str = "FID features",
    channels_last: bool | None = None,
) -> np.ndarray:
    """Pool3 features (N x 2048, float32, in ``paths`` order) of the images, batched, decoding in workers.

    ``channels_last=None`` uses channels_last memory where the device plan asks for it and on CPU, where
    oneDNN runs this network faster (benchmarks/bench_fid.py) with features equal to fp32
    round-off. Workers (``num_workers`` processes, at most one per batch; None: :func:`resolve_num_workers`)
    decode and resize while the main process runs the network.
    """
    from torch.utils.data import DataLoader

    check_loader_options(batch_size, num_workers)
    num_workers = resolve_num_workers(num_workers, device.plan.kind)
    paths = list(paths)
    batches = -(-len(paths) // batch_size)
    loader = DataLoader(
        ImageTensorDataset(paths),  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=min(num_workers, batches),
        collate_fn=collate,
        pin_memory=device.plan.kind == "cuda",
    )
    if channels_last is None:
        channels_last = device.plan.channels_last or device.plan.kind == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = device.prepare_model(model).to(memory_format=memory_format).eval()
    out = np.empty((len(paths), FID_FEATURE_DIM), dtype=np.float32)
    filled = 0
    with torch.inference_mode(), progress_task(description, total=len(paths), unit="img") as task:
        for batch, error in loader:
            if error is not None:
                raise InputError(error)
            assert batch is not None
            batch = device.to_device(batch).contiguous(memory_format=memory_format)
            features = model(batch).float()
            count = features.shape[0]
            out[filled : filled + count] = features.cpu().numpy()
            filled += count
            task.advance(count)
    return out


__all__ = [
    "RESIZE_RULE",
    "ImageTensorDataset",
    "check_loader_options",
    "collate",
    "extract_features",
    "resolve_num_workers",
]
