"""pix2pix networks with the reference implementation's module layout (junyanz/pytorch-CycleGAN-and-pix2pix).

``UnetGenerator`` / ``UnetSkipConnectionBlock`` nest exactly as the reference's do, so a reference pix2pix
``latest_net_G.pth`` loads strictly without renaming: the outermost block is ``model``, each block keeps its
layers in an ``nn.Sequential`` named ``model`` (``[downrelu, downconv, downnorm, submodule, uprelu, upconv,
upnorm, (dropout)]``; the outermost ``[downconv, submodule, uprelu, upconv, tanh]``; the innermost
``[downrelu, downconv, uprelu, upconv, upnorm]``), giving keys such as ``model.model.0.weight``,
``model.model.1.model.2.running_mean`` and ``model.model.1.model.3.model.1.weight``. ``unet_256`` (8
downsamplings, ngf 64, batch norm) has 54,413,955 parameters and 82 state-dict entries, 13 of them the
``num_batches_tracked`` counters of its 13 batch norms (both figures checked by building it). Dropout sits at
the end of the ``num_downs - 5`` innermost non-innermost blocks, after the last parametrised layer, so it never
moves a key: a file does not tell whether it was trained with dropout.

Each block's first layer is an in-place ``LeakyReLU``, as in the reference: it overwrites the block input before
``torch.cat([x, model(x)])`` reads it, so a skip connection carries ``LeakyReLU(x)``; the parent's ``ReLU`` comes
next and ``ReLU(LeakyReLU(x)) = ReLU(x)``, so the function is the same either way (checked).

The reference U-Net only takes sides that are multiples of ``2 ** num_downs`` (256 for ``unet_256``; its issue
#452). Here other sizes are padded at the bottom and right (reflection, or replication where the input is too
small to reflect) to the next multiple and the output is cropped back (:func:`pad_to_multiple`): the reference
function on every size it accepts, and a defined one on the others.

The conditional PatchGAN of pix2pix is the CycleGAN :class:`~histostain.translation.cyclegan.NLayerDiscriminator`
with 6 input channels (A and B concatenated) and batch norm: 2,768,705 parameters, 22 entries
(:func:`define_pix2pix_discriminator`). A ``resnet_*blocks`` pix2pix generator (PyramidPix2pix's BCI model) is
the CycleGAN :class:`~histostain.translation.cyclegan.ResnetGenerator` with batch norm (and, by the pix2pix
default, dropout, which moves the residual blocks' second conv to ``conv_block.6``).

Inference with batch norm (:func:`set_norm_mode`): ``eval`` normalises with the running statistics stored in the
weights (the reference ``test.py --eval``); ``per-input`` normalises every network input with its own
statistics (what the reference ``test.py`` does without ``--eval``: train-mode batch norm at batch size 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from histostain.errors import ConfigError
from histostain.translation.cyclegan import NLayerDiscriminator, ResnetGenerator, norm_layer, uses_bias

UNET_NETS = {"unet_128": 7, "unet_256": 8}
RESNET_NETS = {"resnet_6blocks": 6, "resnet_9blocks": 9}
PIX2PIX_GENERATORS = (*UNET_NETS, *RESNET_NETS)
NORM_MODES = ("eval", "per-input")
DEFAULT_NORM_MODE = "eval"
MIN_NUM_DOWNS = 5  # the reference's four fixed outer blocks plus the innermost one


def unet_arch(num_downs: int) -> str:
    """The reference's name for a U-Net of ``num_downs`` downsamplings: ``unet_256`` for 8 (its input side)."""
    return f"unet_{2**num_downs}"


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``N x C x H x W`` at the bottom and right to the next multiple of ``multiple`` on both sides.

    Reflection padding (no artificial edge), or replication when a side is too short to reflect (a reflected pad
    must be shorter than the side). Crop the result back with ``[..., :H, :W]``.
    """
    height, width = int(x.shape[-2]), int(x.shape[-1])
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: ``[down] + [submodule] + [up]``; its output is ``cat(x, up(...))``, except the outermost's."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        bias = uses_bias(norm)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=bias)
        downrelu = nn.LeakyReLU(0.2, True)
        uprelu = nn.ReLU(True)
        layers: list[nn.Module]
        if outermost:
            if submodule is None:
                raise ConfigError("the outermost U-Net block needs a submodule")
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            layers = [downrelu, downconv, uprelu, upconv, norm_layer(norm, outer_nc)]
        else:
            if submodule is None:
                raise ConfigError("an intermediate U-Net block needs a submodule")
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            layers = [downrelu, downconv, norm_layer(norm, inner_nc), submodule, uprelu, upconv]
            layers.append(norm_layer(norm, outer_nc))
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        # the in-place LeakyReLU at model[0] rewrites x before cat reads it (harmless: the parent's ReLU follows)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """The pix2pix U-Net (``unet_256``: ``num_downs=8``), input and output ``N x C x H x W`` in ``[-1, 1]``.

    ``pad_input`` (keyword-only, default on): sides that are not multiples of :attr:`size_multiple`
    (``2 ** num_downs``) are padded by :func:`pad_to_multiple` and the output is cropped back to the input size;
    off, such inputs fail as in the reference.
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = False,
        *,
        pad_input: bool = True,
    ) -> None:
        super().__init__()
        if num_downs < MIN_NUM_DOWNS or ngf < 1 or input_nc < 1 or output_nc < 1:
            raise ConfigError(
                f"invalid U-Net size (input_nc={input_nc}, output_nc={output_nc}, ngf={ngf}, num_downs={num_downs})",
                hint=f"num_downs must be at least {MIN_NUM_DOWNS} (unet_256 has 8, unet_128 7)",
            )
        norm_layer(norm, 1)  # validates the name
        self.input_nc, self.output_nc, self.num_downs, self.ngf = input_nc, output_nc, num_downs, ngf
        self.norm, self.use_dropout, self.pad_input = norm, bool(use_dropout), bool(pad_input)
        self.size_multiple = 2**num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm
        )

    @property
    def arch(self) -> str:
        return unet_arch(self.num_downs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if self.pad_input and (height % self.size_multiple or width % self.size_multiple):
            return self.model(pad_to_multiple(x, self.size_multiple))[..., :height, :width]
        return self.model(x)


_UNET_DEFAULTS: dict[str, Any] = {
    "input_nc": 3,
    "output_nc": 3,
    "num_downs": 8,
    "ngf": 64,
    "norm": "batch",
    "use_dropout": True,  # the pix2pix default (--no_dropout off); dropout is inactive at inference
}


def unet_config(model: UnetGenerator) -> dict[str, Any]:
    """Plain-value description of a U-Net generator (``arch`` = the reference's ``--netG`` name)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, UnetGenerator):
        raise TypeError(f"expected a UnetGenerator, got {type(model).__name__}")
    config: dict[str, Any] = {"arch": model.arch}
    config.update({key: getattr(model, key) for key in _UNET_DEFAULTS})
    return config


def build_unet(config: Mapping[str, Any]) -> UnetGenerator:
    """Rebuild the U-Net :func:`unet_config` describes (``arch`` ``unet_<2**num_downs>`` sets ``num_downs``)."""
    options = dict(config)
    arch = str(options.pop("arch", ""))
    if arch:
        if not arch.startswith("unet_") or not arch[5:].isdigit():
            raise ConfigError(f"U-Net config describes arch {arch!r}", hint="expected unet_256, unet_128, ...")
        side = int(arch[5:])
        num_downs = side.bit_length() - 1
        if 2**num_downs != side or int(options.setdefault("num_downs", num_downs)) != num_downs:
            raise ConfigError(f"U-Net config: arch {arch!r} does not match num_downs={options.get('num_downs')}")
    unknown = sorted(set(options) - set(_UNET_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown U-Net config key(s): {', '.join(unknown)}", hint=f"known keys: {', '.join(_UNET_DEFAULTS)}"
        )
    merged = {**_UNET_DEFAULTS, **options}
    return UnetGenerator(
        int(merged["input_nc"]),
        int(merged["output_nc"]),
        int(merged["num_downs"]),
        int(merged["ngf"]),
        str(merged["norm"]),
        bool(merged["use_dropout"]),
    )


def define_pix2pix_generator(
    netG: str = "unet_256",
    input_nc: int = 3,
    output_nc: int = 3,
    ngf: int = 64,
    norm: str = "batch",
    use_dropout: bool = True,
) -> UnetGenerator | ResnetGenerator:
    """A pix2pix generator by the reference's ``--netG`` name, with pix2pix's defaults (batch norm, dropout).

    ``unet_256`` / ``unet_128``: :class:`UnetGenerator`; ``resnet_9blocks`` / ``resnet_6blocks``: the CycleGAN
    :class:`~histostain.translation.cyclegan.ResnetGenerator` with ``norm`` (reflect padding).
    """
    if netG in UNET_NETS:
        return UnetGenerator(input_nc, output_nc, UNET_NETS[netG], ngf, norm, use_dropout)
    if netG in RESNET_NETS:
        return ResnetGenerator(input_nc, output_nc, ngf, RESNET_NETS[netG], norm, use_dropout)
    raise ConfigError(f"unknown pix2pix generator {netG!r}", hint=f"use one of {', '.join(PIX2PIX_GENERATORS)}")


def define_pix2pix_discriminator(
    input_nc: int = 6, ndf: int = 64, netD: str = "basic", n_layers_D: int = 3, norm: str = "batch"
) -> NLayerDiscriminator:
    """The conditional PatchGAN: ``input_nc`` = channels of A plus B (6 for RGB pairs).

    ``basic`` is the 70x70 PatchGAN (``n_layers=3``); ``n_layers`` takes ``n_layers_D``. The reference's
    ``pixel`` (1x1 PixelGAN) is not provided.
    """
    if netD == "basic":
        return NLayerDiscriminator(input_nc, ndf, 3, norm)
    if netD == "n_layers":
        return NLayerDiscriminator(input_nc, ndf, n_layers_D, norm)
    raise ConfigError(f"unknown pix2pix discriminator {netD!r}", hint="use basic or n_layers")


class PerInputBatchNorm2d(nn.BatchNorm2d):
    """A batch norm that normalises each sample with its own per-channel statistics (then its affine transform).

    This is what train-mode batch norm computes at batch size 1 (biased variance, the layer's ``eps``), without
    updating the running statistics and without mixing the samples of a larger batch. Same parameters and
    buffers as ``nn.BatchNorm2d``, so the state dict is unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(input, None, None, self.weight, self.bias, use_input_stats=True, eps=self.eps)


def check_norm_mode(mode: str) -> str:
    """``mode`` normalised, or a ConfigError naming the choices."""
    value = str(mode).strip().lower().replace("_", "-")
    if value not in NORM_MODES:
        raise ConfigError(f"unknown norm mode {mode!r}", hint=f"use one of {', '.join(NORM_MODES)}")
    return value


def batch_norm_layers(model: nn.Module) -> int:
    """How many batch-norm layers ``model`` has (0 for instance-norm CycleGAN generators)."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def set_norm_mode(model: nn.Module, mode: str) -> int:
    """Switch every 2-D batch norm of ``model`` (in place) to ``eval`` or ``per-input`` statistics.

    ``eval``: the running statistics saved with the weights (the reference ``test.py --eval``).
    ``per-input``: the statistics of each network input (:class:`PerInputBatchNorm2d`), as the reference
    ``test.py`` without ``--eval`` (train-mode batch norm, batch size 1). Only the normalisation changes: the
    model should be in eval mode, so dropout stays off and outputs are deterministic (the reference without
    ``--eval`` also keeps dropout on, which makes every run, and every overlapping tile, differ).
    Returns the number of batch-norm layers switched (0: the model has none and the mode does not matter).
    """
    mode = check_norm_mode(mode)
    target = PerInputBatchNorm2d if mode == "per-input" else nn.BatchNorm2d
    count = 0
    for module in model.modules():
        if type(module) in (nn.BatchNorm2d, PerInputBatchNorm2d):
            module.__class__ = target  # same attributes, parameters and buffers: only forward differs
            count += 1
    return count


__all__ = [
    "DEFAULT_NORM_MODE",
    "NORM_MODES",
    "PIX2PIX_GENERATORS",
    "PerInputBatchNorm2d",
    "UnetGenerator",
    "UnetSkipConnectionBlock",
    "batch_norm_layers",
    "build_unet",
    "check_norm_mode",
    "define_pix2pix_discriminator",
    "define_pix2pix_generator",
    "pad_to_multiple",
    "set_norm_mode",
    "unet_arch",
    "unet_config",
]
