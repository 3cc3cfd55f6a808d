"""Export the demo training runs as histostain's packaged demo weights (fp16 histostain checkpoints).

Called by ``scripts/train_demo_weights.sh``; also usable alone::

    python scripts/export_demo_weights.py --hovernet-run RUNS/hovernet-demo --cyclegan-run RUNS/cyclegan-demo \
        --out src/histostain/weights/demo

Each run's best checkpoint (else its last) is read with histostain's own loaders (``load_hovernet``,
``load_generator``), its floating tensors are stored as float16 (the loaders cast them back to float32) and it
is written as a histostain checkpoint the same loaders recognise, with the facts the cards repeat: HoVer-Net's
input scale (mpp) and class names, the generator's config and direction, and a DEMO notice. The files are
checked by loading them again and comparing the outputs with the fp32 networks on a synthetic tile. The sha256
and size of each file are printed for ``src/histostain/weights/models.toml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

NOTICE = (
    "DEMO ONLY: trained on synthetic tissue from `histostain synth` by scripts/train_demo_weights.sh; "
    "not for real tissue"
)
MAX_BYTES = 5 * 1024 * 1024


def say(text: str) -> None:
    """One progress line on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_checkpoint(run: Path) -> Path:
    """The run's best checkpoint, else its last."""
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        if path.is_file():
            return path
    raise SystemExit(f"{run} has no checkpoints/best.pt or checkpoints/last.pt")


def half_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors as float16 (integer buffers such as BN counters kept)."""
    return {
        key: (value.detach().cpu().half() if value.is_floating_point() else value.detach().cpu())
        for key, value in model.state_dict().items()
    }


def synthetic_tile(seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (H&E, IHC) pair of 256 px."""
    from histostain.synth.generate import generate_tile

    tile = generate_tile(seed, size=256)
    return tile.he, tile.ihc


def export_hovernet(run: Path, out: Path) -> Path:
    from histostain.runtime.checkpoint import make_checkpoint, save_checkpoint
    from histostain.segmentation.compat import ARCH, load_hovernet

    source = run_checkpoint(run)
    model, info = load_hovernet(source)
    say(f"hovernet: {source} ({info.format}, config {info.config}, mpp {info.mpp})")
    extra: dict[str, Any] = {"mpp": info.mpp, "notice": NOTICE, "trained_on": "synthetic", "source_run": run.name}
    if info.class_names is not None:
        extra["class_names"] = dict(info.class_names)
    path = out / "hovernet-demo.pt"
    save_checkpoint(path, make_checkpoint(ARCH, half_state(model), model.config(), **extra))
    again, again_info = load_hovernet(path)
    he, _ = synthetic_tile()
    x = torch.from_numpy(he).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        a, b = model(x), again(x)
    worst = max(float((a[key] - b[key]).abs().max()) for key in a)
    say(f"  reloaded: mpp {again_info.mpp}, classes {again_info.class_names}; fp16 max logit change {worst:.4f}")
    return path


def export_cyclegan(run: Path, out: Path, direction: str) -> Path:
    from histostain.translation.compat import load_generator, save_generator

    source = run_checkpoint(run)
    model, info = load_generator(source, direction=direction)
    say(f"cyclegan: {source} ({info.format} {info.entry}, config {info.config}, direction {info.direction})")
    path = out / "cyclegan-demo.pt"
    _, ihc = synthetic_tile()
    x = torch.from_numpy(ihc).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        a = model(x)
    save_generator(path, model.half(), direction=direction, notice=NOTICE, trained_on="synthetic", source_run=run.name)
    again, again_info = load_generator(path)
    with torch.no_grad():
        b = again(x)
    say(f"  reloaded: direction {again_info.direction}; fp16 max output change {float((a - b).abs().max()):.4f}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hovernet-run", type=Path, required=True)
    parser.add_argument("--cyclegan-run", type=Path, required=True)
    parser.add_argument("--direction", default="ihc2he")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    from histostain.runtime.checkpoint import sha256_file

    paths = [export_hovernet(args.hovernet_run, args.out), export_cyclegan(args.cyclegan_run, args.out, args.direction)]
    status = 0
    for path in paths:
        size = path.stat().st_size
        say(f'{path.name}: size_bytes = {size} ({size / 1e6:.2f} MB), sha256 = "{sha256_file(path)}"')
        if size > MAX_BYTES:
            sys.stderr.write(f"  {path.name} is larger than 5 MB\n")
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
