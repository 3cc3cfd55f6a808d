"""CycleGAN networks with the reference implementation's module layout.

The ResNet generator and the PatchGAN discriminator are built as one ``nn.Sequential`` named ``model`` whose
indices are those of junyanz/pytorch-CycleGAN-and-pix2pix, so a reference ``latest_net_G_A.pth`` /
``latest_net_D_A.pth`` state dict loads strictly without renaming (``model.1.weight``, ``model.10.conv_block.5.bias``,
``model.11.weight`` ...). Layers without parameters keep their slot (an ``nn.Identity`` where a norm is switched
off) so the indices never move.

Norm options follow the reference: ``instance`` = ``InstanceNorm2d(affine=False, track_running_stats=False)`` (no
parameters, no buffers), ``batch`` = ``BatchNorm2d(affine=True)``, ``none`` = identity. The reference's bias rule
is kept: convolutions carry a bias only with instance norm (``use_bias = norm is InstanceNorm2d``), except the
first discriminator conv and the last conv of each network, which always have one.

Two keyword-only generator options exist for the seed project's variant (Jorge-G-P/IHC_HE_GenAI, which has the
same tensors but computes something slightly different): ``stem_norm=False`` (no norm after the 7x7 stem) and
``down_padding="reflect"`` (the stride-2 convs pad by reflection instead of zeros). See ``compat.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from histostain.errors import ConfigError

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")
DOWN_PADDINGS = ("zeros", "reflect")
GENERATOR_ARCH = "resnet_generator"


class InstanceNorm2d(nn.InstanceNorm2d):
    """The reference's parameter-free instance norm, computed as a group norm with one channel per group.

    Same function (per-sample, per-channel mean and biased variance; no parameters, no buffers, so the state
    dict is unchanged), but PyTorch's CPU group-norm kernel is several times faster than its instance-norm
    path, which reshapes into a batch norm: on a 2-core CPU the generator spent a fifth of its time there.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.affine or self.track_running_stats or input.dim() != 4:
            return super().forward(input)
        return F.group_norm(input, input.shape[1], eps=self.eps)


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation module the reference uses for ``--norm`` (identity for ``none``)."""
    if norm == "instance":
        return InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {norm!r}", hint=f"use one of {', '.join(NORMS)}")


def uses_bias(norm: str) -> bool:
    """The reference's rule: convs followed by a norm have a bias only when that norm is instance norm."""
    return norm == "instance"


class ResnetBlock(nn.Module):
    """Two 3x3 convs with a skip connection; ``conv_block`` indices match the reference exactly.

    Reflect padding: ``[pad, conv, norm, relu, (dropout), pad, conv, norm]`` so the second conv is
    ``conv_block.5`` (``conv_block.6`` with dropout). Zero padding has no pad layers (the conv pads itself).
    """

    def __init__(self, dim: int, padding_type: str, norm: str, use_dropout: bool, use_bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for second in (False, True):
            pad = 0
            if padding_type == "reflect":
                layers.append(nn.ReflectionPad2d(1))
            elif padding_type == "replicate":
                layers.append(nn.ReplicationPad2d(1))
            elif padding_type == "zero":
                pad = 1
            else:
                raise ConfigError(f"unknown padding type {padding_type!r}", hint=f"use one of {', '.join(PADDINGS)}")
            layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=pad, bias=use_bias), norm_layer(norm, dim)]
            if not second:
                layers.append(nn.ReLU(True))
                if use_dropout:
                    layers.append(nn.Dropout(0.5))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """The CycleGAN ResNet generator (``resnet_9blocks`` by default: 11,378,179 parameters).

    Input and output are ``N x C x H x W`` in ``[-1, 1]``; H and W should be multiples of 4 (the two stride-2
    convs and transposed convs otherwise change the size, as in the reference).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        use_dropout: bool = False,
        padding_type: str = "reflect",
        *,
        stem_norm: bool = True,
        down_padding: str = "zeros",
    ) -> None:
        super().__init__()
        if n_blocks < 0 or ngf < 1 or input_nc < 1 or output_nc < 1:
            raise ConfigError(
                f"invalid generator size (input_nc={input_nc}, output_nc={output_nc}, ngf={ngf}, n_blocks={n_blocks})"
            )
        if padding_type not in PADDINGS:
            raise ConfigError(f"unknown padding type {padding_type!r}", hint=f"use one of {', '.join(PADDINGS)}")
        if down_padding not in DOWN_PADDINGS:
            raise ConfigError(f"unknown down_padding {down_padding!r}", hint=f"use one of {', '.join(DOWN_PADDINGS)}")
        norm_layer(norm, 1)  # validates the name
        self.input_nc, self.output_nc, self.ngf, self.n_blocks = input_nc, output_nc, ngf, n_blocks
        self.norm, self.use_dropout, self.padding_type = norm, bool(use_dropout), padding_type
        self.stem_norm, self.down_padding = bool(stem_norm), down_padding
        bias = uses_bias(norm)

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),  # 0
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=bias),  # 1
            norm_layer(norm, ngf) if stem_norm else nn.Identity(),  # 2
            nn.ReLU(True),  # 3
        ]
        for i in range(2):  # 4..9
            mult = 2**i
            layers += [
                nn.Conv2d(
                    ngf * mult,
                    ngf * mult * 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    bias=bias,
                    padding_mode=down_padding,
                ),
                norm_layer(norm, ngf * mult * 2),
                nn.ReLU(True),
            ]
        for _ in range(n_blocks):  # 10 .. 10 + n_blocks - 1
            layers.append(ResnetBlock(ngf * 4, padding_type, norm, use_dropout, bias))
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult,
                    ngf * mult // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=bias,
                ),
                norm_layer(norm, ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """The PatchGAN discriminator (``n_layers=3``: the 70x70 PatchGAN, 2,764,737 parameters, 30x30 map at 256).

    Outputs raw scores (no sigmoid), as the reference: LSGAN uses MSE on them, vanilla GAN BCE-with-logits.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        if n_layers < 1 or ndf < 1 or input_nc < 1:
            raise ConfigError(f"invalid discriminator size (input_nc={input_nc}, ndf={ndf}, n_layers={n_layers})")
        norm_layer(norm, 1)
        self.input_nc, self.ndf, self.n_layers, self.norm = input_nc, ndf, n_layers, norm
        bias = uses_bias(norm)
        kw, padw = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=stride, padding=padw, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference's ``normal`` init: conv/linear weights N(0, gain), biases 0; batch-norm weights N(1, gain)."""
    for m in module.modules():
        name = type(m).__name__
        if hasattr(m, "weight") and m.weight is not None and ("Conv" in name or "Linear" in name):
            nn.init.normal_(m.weight, 0.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in name and getattr(m, "weight", None) is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.constant_(m.bias, 0.0)
    return module


_GENERATOR_DEFAULTS: dict[str, Any] = {
    "input_nc": 3,
    "output_nc": 3,
    "ngf": 64,
    "n_blocks": 9,
    "norm": "instance",
    "use_dropout": False,
    "padding_type": "reflect",
    "stem_norm": True,
    "down_padding": "zeros",
}
GENERATOR_CONFIG_KEYS = ("arch", *_GENERATOR_DEFAULTS)


def generator_config(model: ResnetGenerator) -> dict[str, Any]:
    """Plain-value description of a generator's architecture (stored as a checkpoint's ``config``)."""
    model = getattr(model, "module", model)  # DDP / DataParallel wrappers
    model = getattr(model, "_orig_mod", model)  # torch.compile
    if not isinstance(model, ResnetGenerator):
        raise TypeError(f"expected a ResnetGenerator, got {type(model).__name__}")
    config: dict[str, Any] = {"arch": GENERATOR_ARCH}
    config.update({key: getattr(model, key) for key in _GENERATOR_DEFAULTS})
    return config


def build_generator(config: Mapping[str, Any]) -> ResnetGenerator:
    """Rebuild the generator described by :func:`generator_config` (missing keys take the reference defaults)."""
    options = dict(config)
    arch = options.pop("arch", GENERATOR_ARCH)
    if arch != GENERATOR_ARCH:
        raise ConfigError(f"generator config describes arch {arch!r}, expected {GENERATOR_ARCH!r}")
    unknown = sorted(set(options) - set(_GENERATOR_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown generator config key(s): {', '.join(unknown)}",
            hint=f"known keys: {', '.join(_GENERATOR_DEFAULTS)}",
        )
    merged = {**_GENERATOR_DEFAULTS, **options}
    return ResnetGenerator(
        int(merged["input_nc"]),
        int(merged["output_nc"]),
        int(merged["ngf"]),
        int(merged["n_blocks"]),
        str(merged["norm"]),
        bool(merged["use_dropout"]),
        str(merged["padding_type"]),
        stem_norm=bool(merged["stem_norm"]),
        down_padding=str(merged["down_padding"]),
    )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not), the figure the reference prints."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "GENERATOR_ARCH",
    "GENERATOR_CONFIG_KEYS",
    "NORMS",
    "NLayerDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "build_generator",
    "count_parameters",
    "generator_config",
    "init_weights",
    "norm_layer",
    "uses_bias",
]
