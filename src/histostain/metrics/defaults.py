"""Defaults and choices of the evaluate services, in a module that imports nothing, so the CLI can show them.

``histostain --help`` (and every ``histostain evaluate ... --help``) reads its defaults from here without importing
numpy, scipy or torch; the services take the same constants, so each default is written once.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------- celldet
DEFAULT_RADIUS = 12.0  # px: HoVer-Net compute_stats.py, CoNIC tooling, celldetr and the seed project
COMPAT_MODES = ("histostain", "seed")
DEFAULT_COMPAT = "histostain"

# --------------------------------------------------------------------------------------------- instance
PROTOCOLS = ("hovernet", "pannuke")
DEFAULT_PROTOCOL = "hovernet"
DEFAULT_MATCH_IOU = 0.5  # every published PQ table

# ---------------------------------------------------------------------------------------------- FID/KID
DEFAULT_BATCH_SIZE = 32  # images per forward pass (pytorch-fid: 50; changes nothing but fp32 round-off)
KID_SUBSETS = 100  # torch-fidelity and clean-fid
KID_SUBSET_SIZE = 1000  # torch-fidelity and clean-fid
KID_SEED = 0
GPU_MAX_WORKERS = 4  # decoding processes on a GPU when --num-workers is not given (0 on a CPU)

__all__ = [
    "COMPAT_MODES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COMPAT",
    "DEFAULT_MATCH_IOU",
    "DEFAULT_PROTOCOL",
    "DEFAULT_RADIUS",
    "GPU_MAX_WORKERS",
    "KID_SEED",
    "KID_SUBSETS",
    "KID_SUBSET_SIZE",
    "PROTOCOLS",
]
