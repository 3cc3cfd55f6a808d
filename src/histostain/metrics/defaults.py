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

# ----------------------------------------------------------------------------------------------- paired
PAIRED_METRICS = ("psnr", "ssim", "mae", "pearson", "ms_gmsd", "mdsi", "haarpsi")  # all, in table order

# ---------------------------------------------------------------------------------------------- FID/KID
DEFAULT_BATCH_SIZE = 32  # images per forward pass (pytorch-fid: 50; changes nothing but fp32 round-off)
KID_SUBSETS = 100  # torch-fidelity and clean-fid
KID_SUBSET_SIZE = 1000  # torch-fidelity and clean-fid
KID_SEED = 0
GPU_MAX_WORKERS = 4  # decoding processes on a GPU when --num-workers is not given (0 on a CPU)
NUM_WORKERS_SHOWN = f"auto: 0 on a CPU, min({GPU_MAX_WORKERS}, CPUs) on a GPU"
# The published file (pytorch-fid's release); torch hub names a file after the first 8 hex digits of its SHA-256.
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
# Its registry name: the weights cache keeps it as HISTOSTAIN_HOME/weights/fid-inception/<file name>
# (histostain.weights.cache); the flat HISTOSTAIN_HOME/weights/<file name> of earlier versions is still found.
FID_MODEL_NAME = "fid-inception"

# ------------------------------------------------------------------------------- prepared datasets (splits)
# Every evaluate command that reads a prepared folder picks its split the same way: --split if given, else
# "test" when the folder has it, else its only split; several splits and no test split: refused, asking for
# --split. "--split all" pools every split explicitly.
SPLIT_ALL = "all"
DEFAULT_SPLIT = "test"
SPLIT_SHOWN = f"{DEFAULT_SPLIT} if present, else the only split"

__all__ = [
    "COMPAT_MODES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COMPAT",
    "DEFAULT_MATCH_IOU",
    "DEFAULT_PROTOCOL",
    "DEFAULT_RADIUS",
    "DEFAULT_SPLIT",
    "FID_MODEL_NAME",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_SHA256_PREFIX",
    "GPU_MAX_WORKERS",
    "KID_SEED",
    "KID_SUBSETS",
    "KID_SUBSET_SIZE",
    "NUM_WORKERS_SHOWN",
    "PAIRED_METRICS",
    "PROTOCOLS",
    "SPLIT_ALL",
    "SPLIT_SHOWN",
]
