"""HoVer-Net (Graham et al. 2019), numerically the same function as the official PyTorch network.

Published weights only give published behaviour if every detail matches the reference (``vqdang/hover_net``
``models/hovernet/net_desc.py``; TIAToolbox re-declares the same modules), so this module keeps:

* the state-dict names of the official checkpoints (``conv0./.weight``, ``d0.units.0.conv1/bn.*``,
  ``decoder.tp.u3.dense.units.0.*``, ``upsample2x.unpool_mat``, ...): the module names contain ``/``;
* a pre-activation ResNet-50 encoder without max-pool whose 3x3 convolutions use TensorFlow "SAME" padding,
  which is asymmetric (0 before, 1 after) on the stride-2 convolutions; 1x1 stride-2 shortcuts are unpadded;
* ``fast`` mode (256 -> 164; "same" padded 7x7 stem, 3x3 decoder kernels) and ``original`` mode (270 -> 80;
  valid 7x7 stem, 5x5 decoder kernels);
* nearest 2x upsampling as a product with the ``unpool_mat`` buffer (``ones(2, 2)``), not bilinear;
* the input is RGB in 0..255, divided by 255 inside ``forward`` (no mean/std normalisation).

The widths and depths can be scaled down (``encoder_width``, ``units``, ``decoder_width``, ``decoder_units``)
for tests and small demos; the scaled network runs exactly the same code, the defaults are the published sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histostain.segmentation.geometry import GEOMETRIES, HoVerNetGeometry

MODES = ("fast", "original")
DEFAULT_UNITS = (3, 4, 6, 3)
DEFAULT_DECODER_UNITS = (8, 4)
#: canonical (input, output) patch sizes of each mode, as used by the reference for training and inference
_ENCODER_CHANNELS = ((64, 64, 256), (128, 128, 512), (256, 256, 1024), (512, 512, 2048))
_BN_EPS = 1e-5
_DENSE_GROUPS = 4


def _scaled(channels: int, width: float, what: str) -> int:
    """Scale a published channel count; scaled counts must stay integral so checkpoints can be re-read exactly."""
    value = channels * width
    if value < 1 or abs(value - round(value)) > 1e-9:
        raise ValueError(f"{what}={width} gives a non-integral channel count ({channels} x {width} = {value})")
    return round(value)


def tf_same_padding(size: int, ksize: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "SAME" rule for one spatial dimension: the odd pixel goes after."""
    remainder = size % stride
    pad = max(ksize - (stride if remainder == 0 else remainder), 0)
    return pad // 2, pad - pad // 2


class TFSamePad(nn.Module):
    """Zero padding that reproduces TensorFlow "SAME" (asymmetric when the total padding is odd).

    The reference derives the padding from the height only (square inputs); this computes each dimension on its
    own, which is identical for the square patches HoVer-Net is used with.
    """

    def __init__(self, ksize: int, stride: int) -> None:
        super().__init__()
        self.ksize = ksize
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.ksize, self.stride)
        left, right = tf_same_padding(x.shape[-1], self.ksize, self.stride)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"ksize={self.ksize}, stride={self.stride}"


def crop_by(x: torch.Tensor, amount: tuple[int, int]) -> torch.Tensor:
    """Centre-crop NCHW ``x`` by a total ``(rows, cols)``; the odd pixel is taken from the bottom/right."""
    rows, cols = amount
    top, left = rows // 2, cols // 2
    return x[:, :, top : x.shape[2] - (rows - top), left : x.shape[3] - (cols - left)]


def crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Centre-crop ``x`` to the spatial size of ``like`` (the reference's ``crop_to_shape``)."""
    return crop_by(x, (x.shape[2] - like.shape[2], x.shape[3] - like.shape[3]))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


def _conv(cin: int, cout: int, ksize: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, ksize, stride=stride, padding=0, groups=groups, bias=bias)


class ResidualGroup(nn.Module):
    """One stage of the pre-activation ResNet: bottleneck units, a shortcut on unit 0, and a closing BN-ReLU.

    Unit 0 has no pre-activation because the previous stage ends with ``blk_bna``; the stride sits on the 3x3
    convolution. ``forward(x, freeze=True)`` in training runs the units without gradients (the reference's
    phase-1 semantics: the shortcut and ``blk_bna`` stay trainable).
    """

    def __init__(self, in_ch: int, channels: Sequence[int], unit_count: int, stride: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.units = nn.ModuleList()
        unit_in = in_ch
        for index in range(unit_count):
            unit_stride = stride if index == 0 else 1
            layers: list[tuple[str, nn.Module]] = []
            if index > 0:
                layers += [("preact/bn", _bn(unit_in)), ("preact/relu", nn.ReLU(inplace=True))]
            layers += [
                ("conv1", _conv(unit_in, c1, 1)),
                ("conv1/bn", _bn(c1)),
                ("conv1/relu", nn.ReLU(inplace=True)),
                ("conv2/pad", TFSamePad(3, unit_stride)),
                ("conv2", _conv(c1, c2, 3, stride=unit_stride)),
                ("conv2/bn", _bn(c2)),
                ("conv2/relu", nn.ReLU(inplace=True)),
                ("conv3", _conv(c2, c3, 1)),
            ]
            self.units.append(nn.Sequential(OrderedDict(layers)))
            unit_in = c3
        self.shortcut = _conv(in_ch, c3, 1, stride=stride) if (in_ch != c3 or stride != 1) else None
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(c3)), ("relu", nn.ReLU(inplace=True))]))

    def forward(self, x: torch.Tensor, freeze: bool = False) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        for unit in self.units:
            if self.training and freeze:
                with torch.no_grad():
                    new = unit(x)
            else:
                new = unit(x)
            x = new + shortcut
            shortcut = x
        return self.blk_bna(x)


class DenseBlock(nn.Module):
    """Decoder dense block: valid convolutions, previous features centre-cropped and concatenated."""

    def __init__(self, in_ch: int, ksize: int, bottleneck: int, growth: int, unit_count: int) -> None:
        super().__init__()
        self.units = nn.ModuleList()
        unit_in = in_ch
        for _ in range(unit_count):
            layers = [
                ("preact_bna/bn", _bn(unit_in)),
                ("preact_bna/relu", nn.ReLU(inplace=True)),
                ("conv1", _conv(unit_in, bottleneck, 1)),
                ("conv1/bn", _bn(bottleneck)),
                ("conv1/relu", nn.ReLU(inplace=True)),
                ("conv2", _conv(bottleneck, growth, ksize, groups=_DENSE_GROUPS)),
            ]
            self.units.append(nn.Sequential(OrderedDict(layers)))
            unit_in += growth
        self.out_ch = unit_in
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(unit_in)), ("relu", nn.ReLU(inplace=True))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            new = unit(x)
            x = torch.cat([crop_to(x, new), new], dim=1)
        return self.blk_bna(x)


class UpSample2x(nn.Module):
    """Fixed nearest-neighbour 2x unpooling: each pixel times the ``unpool_mat`` buffer (a checkpoint key)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unpool_mat", torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        mat = self.unpool_mat.to(x.dtype)
        out = x[:, :, :, None, :, None] * mat[:, None, :]  # N C H 2 W 2
        return out.reshape(n, c, 2 * h, 2 * w)


def _decoder_branch(
    out_ch: int, ksize: int, skip_channels: tuple[int, int, int], width: float, dense_units: tuple[int, int]
) -> nn.Sequential:
    """One decoder branch (u3, u2, u1, u0), identical for np, hv and tp apart from the output channels."""
    bottom, mid, top = skip_channels  # channels of d2 (== conv_bot out), d1 and d0
    bottleneck = _scaled(128, width, "decoder_width")
    growth = _scaled(32, width, "decoder_width")
    if bottleneck % _DENSE_GROUPS or growth % _DENSE_GROUPS:
        raise ValueError(f"decoder_width={width} must keep 128*w and 32*w divisible by {_DENSE_GROUPS}")
    a3 = _scaled(256, width, "decoder_width")
    dense3 = DenseBlock(a3, ksize, bottleneck, growth, dense_units[0])
    u3 = OrderedDict([("conva", _conv(bottom, a3, ksize)), ("dense", dense3), ("convf", _conv(dense3.out_ch, mid, 1))])
    a2 = _scaled(128, width, "decoder_width")
    dense2 = DenseBlock(a2, ksize, bottleneck, growth, dense_units[1])
    u2 = OrderedDict([("conva", _conv(mid, a2, ksize)), ("dense", dense2), ("convf", _conv(dense2.out_ch, top, 1))])
    a1 = _scaled(64, width, "decoder_width")
    u1 = OrderedDict([("conva/pad", TFSamePad(ksize, 1)), ("conva", _conv(top, a1, ksize))])
    u0 = OrderedDict([("bn", _bn(a1)), ("relu", nn.ReLU(inplace=True)), ("conv", _conv(a1, out_ch, 1, bias=True))])
    return nn.Sequential(
        OrderedDict(
            [
                ("u3", nn.Sequential(u3)),
                ("u2", nn.Sequential(u2)),
                ("u1", nn.Sequential(u1)),
                ("u0", nn.Sequential(u0)),
            ]
        )
    )


class HoVerNet(nn.Module):
    """HoVer-Net with the official module names.

    ``forward`` takes NCHW float (or uint8) RGB in 0..255 and returns a dict of logits in the reference order
    ``tp`` (``num_types`` channels, only when typed), ``np`` (2 channels: background, nucleus) and ``hv``
    (2 linear channels: channel 0 the horizontal/x map, channel 1 the vertical/y map). The output is the centre
    ``output_size(input)`` window of the input (fast: 256 -> 164, original: 270 -> 80).
    """

    def __init__(
        self,
        mode: str = "fast",
        num_types: int | None = None,
        *,
        encoder_width: float = 1.0,
        units: Sequence[int] = DEFAULT_UNITS,
        decoder_width: float = 1.0,
        decoder_units: Sequence[int] = DEFAULT_DECODER_UNITS,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown HoVer-Net mode {mode!r}; expected one of {', '.join(MODES)}")
        if num_types is not None and num_types < 1:
            raise ValueError(f"num_types must be None (no type branch) or >= 1, got {num_types}")
        if len(units) != 4 or min(units) < 1 or len(decoder_units) != 2 or min(decoder_units) < 1:
            raise ValueError(f"units needs 4 and decoder_units 2 positive counts, got {units} / {decoder_units}")
        self.mode = mode
        self.num_types = num_types
        self.encoder_width = float(encoder_width)
        self.units_per_group = tuple(int(u) for u in units)
        self.decoder_width = float(decoder_width)
        self.decoder_units = tuple(int(u) for u in decoder_units)
        self.freeze = freeze
        self.ksize = 3 if mode == "fast" else 5

        stem = _scaled(64, encoder_width, "encoder_width")
        conv0: list[tuple[str, nn.Module]] = [
            ("/", _conv(3, stem, 7)),
            ("bn", _bn(stem)),
            ("relu", nn.ReLU(inplace=True)),
        ]
        if mode == "fast":
            conv0.insert(0, ("pad", TFSamePad(7, 1)))
        self.conv0 = nn.Sequential(OrderedDict(conv0))

        groups = [tuple(_scaled(c, encoder_width, "encoder_width") for c in chans) for chans in _ENCODER_CHANNELS]
        in_ch = stem
        for index, (chans, count) in enumerate(zip(groups, self.units_per_group, strict=True)):
            setattr(self, f"d{index}", ResidualGroup(in_ch, chans, count, stride=1 if index == 0 else 2))
            in_ch = chans[-1]
        skips = (groups[2][-1], groups[1][-1], groups[0][-1])
        self.conv_bot = _conv(in_ch, skips[0], 1)

        def branch(out_ch: int) -> nn.Sequential:
            return _decoder_branch(out_ch, self.ksize, skips, self.decoder_width, self.decoder_units)

        heads = [("np", branch(2)), ("hv", branch(2))]
        if num_types is not None:
            heads.insert(0, ("tp", branch(num_types)))
        self.decoder = nn.ModuleDict(OrderedDict(heads))
        self.upsample2x = UpSample2x()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: Kaiming-normal (fan_out, ReLU) convolutions, BN weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this network (stored in histostain checkpoints)."""
        return {
            "mode": self.mode,
            "num_types": self.num_types,
            "encoder_width": self.encoder_width,
            "units": list(self.units_per_group),
            "decoder_width": self.decoder_width,
            "decoder_units": list(self.decoder_units),
        }

    @property
    def geometry(self) -> HoVerNetGeometry:
        """The reference geometry of this mode (patch in/out, margin, scale)."""
        return GEOMETRIES[self.mode]

    @property
    def patch_sizes(self) -> tuple[int, int]:
        """(input, output) sides at the reference input size: (256, 164) or (270, 80) at full depth."""
        input_size = self.geometry.patch_in
        return input_size, self.output_size(input_size)

    def output_size(self, input_size: int) -> int:
        """Side of the output window for a square input; ValueError when the sizes do not line up."""
        k = self.ksize
        size = input_size if self.mode == "fast" else input_size - 6
        sizes = [size]
        for _ in range(3):
            sizes.append(-(-sizes[-1] // 2))  # TF "same" stride 2: ceil
        d0, d1, d2, d3 = sizes
        u3 = 2 * d3
        if u3 != d2 or d2 < 1:
            raise ValueError(f"input size {input_size} does not fit HoVer-Net {self.mode}: d3 x2 != d2 ({u3} vs {d2})")
        u3 = u3 - (k - 1) * (1 + self.decoder_units[0])
        u2 = 2 * u3
        u2_out = u2 - (k - 1) * (1 + self.decoder_units[1])
        u1 = 2 * u2_out
        if u3 < 1 or u2_out < 1 or u2 > d1 or u1 > d0:
            raise ValueError(f"input size {input_size} is too small for HoVer-Net {self.mode}")
        return u1

    def forward(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        imgs = imgs / 255.0  # the published weights expect 0..1 inside; callers pass 0..255
        freeze = self.freeze and self.training
        d0 = self.conv0(imgs)
        d0 = self.d0(d0, freeze)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze):
            d1 = self.d1(d0)
            d2 = self.d2(d1)
            d3 = self.d3(d2)
        d3 = self.conv_bot(d3)

        out: dict[str, torch.Tensor] = {}
        for name, branch in self.decoder.items():
            u3 = branch.u3(self.upsample2x(d3) + d2)
            up = self.upsample2x(u3)
            u2 = branch.u2(up + crop_to(d1, up))
            up = self.upsample2x(u2)
            u1 = branch.u1(up + crop_to(d0, up))
            out[name] = branch.u0(u1)
        return out


__all__ = [
    "DEFAULT_DECODER_UNITS",
    "DEFAULT_UNITS",
    "MODES",
    "DenseBlock",
    "HoVerNet",
    "ResidualGroup",
    "TFSamePad",
    "UpSample2x",
    "crop_by",
    "crop_to",
    "tf_same_padding",
]
