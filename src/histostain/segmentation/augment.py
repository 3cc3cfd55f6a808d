"""HoVer-Net's photometric input augmentation (image only): blur, noise, hue/saturation/brightness/contrast.

The reference recipe (hover_net ``dataset.py``) applies these to the image after the geometric transforms;
label maps are never touched. Differences from the reference are documented in docs/commands/train-hovernet.md
(the contrast jitter works here; the reference's clips its input instead of the result and so does nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from histostain.segmentation.config import HoVerNetConfig


def _cv2_gaussian_kernel(ksize: int) -> np.ndarray:
    """OpenCV's ``getGaussianKernel(ksize, 0)``: sigma = 0.3 ((ksize - 1) / 2 - 1) + 0.8, normalised."""
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    offsets = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, max_ksize: int = 5) -> np.ndarray:
    """Gaussian blur with an odd kernel size drawn per axis from 1..max_ksize (1 = no blur on that axis)."""
    ksize_y, ksize_x = (2 * rng.integers(0, max_ksize // 2 + 1, size=2) + 1).tolist()
    out = image.astype(np.float64)
    for axis, ksize in ((0, ksize_y), (1, ksize_x)):
        if ksize > 1:
            out = ndimage.correlate1d(out, _cv2_gaussian_kernel(ksize), axis=axis, mode="nearest")
    return to_uint8(out)


def median_blur(image: np.ndarray, rng: np.random.Generator, max_ksize: int = 5) -> np.ndarray:
    """Per-channel median filter with a square odd kernel drawn from 1..max_ksize (replicated border)."""
    ksize = int(2 * rng.integers(0, max_ksize // 2 + 1) + 1)
    if ksize == 1:
        return image.copy()
    return ndimage.median_filter(image, size=(ksize, ksize, 1), mode="nearest")


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, max_std: float = 0.05 * 255) -> np.ndarray:
    """Additive Gaussian noise, std ~ U(0, max_std); per channel with probability 0.5, else shared by the 3."""
    std = rng.uniform(0.0, max_std)
    per_channel = rng.random() < 0.5
    shape = image.shape if per_channel else (*image.shape[:2], 1)
    return to_uint8(image.astype(np.float64) + rng.normal(0.0, std, size=shape))


def add_hue(image: np.ndarray, rng: np.random.Generator, limit: float = 8.0) -> np.ndarray:
    """Shift the hue by U(-limit, limit) OpenCV units (0..180 = one turn)."""
    from skimage.color import hsv2rgb, rgb2hsv

    shift = rng.uniform(-limit, limit) / 180.0
    hsv = rgb2hsv(image)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return to_uint8(hsv2rgb(hsv) * 255.0)


def add_saturation(image: np.ndarray, rng: np.random.Generator, limit: float = 0.2) -> np.ndarray:
    """Blend with the grey image: ``img * v + grey * (1 - v)``, v = 1 + U(-limit, limit) (BT.601 grey)."""
    value = 1.0 + rng.uniform(-limit, limit)
    rgb = image.astype(np.float64)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    return to_uint8(rgb * value + (grey * (1.0 - value))[..., None])


def add_brightness(image: np.ndarray, rng: np.random.Generator, limit: float = 26.0) -> np.ndarray:
    """Add U(-limit, limit) to every channel."""
    return to_uint8(image.astype(np.float64) + rng.uniform(-limit, limit))


def add_contrast(image: np.ndarray, rng: np.random.Generator, limit: float = 0.25) -> np.ndarray:
    """Scale about the per-channel mean by v = 1 + U(-limit, limit), then clip the *result*.

    The reference's ``add_to_contrast`` clips its input instead of the result, so it returns the image unchanged
    (a no-op); this is the transform it intended.
    """
    value = 1.0 + rng.uniform(-limit, limit)
    rgb = image.astype(np.float64)
    mean = rgb.mean(axis=(0, 1), keepdims=True)
    return to_uint8(rgb * value + mean * (1.0 - value))


@dataclass(frozen=True)
class InputAugment:
    """The reference's image-only augmentation: one of {Gaussian blur, median blur, Gaussian noise}, then hue,
    saturation, brightness and contrast in random order. A zero strength switches a member off."""

    blur_max_ksize: int = 5
    noise_max_std: float = 0.05 * 255
    hue: float = 8.0
    saturation: float = 0.2
    brightness: float = 26.0
    contrast: float = 0.25

    @classmethod
    def from_config(cls, config: HoVerNetConfig) -> InputAugment:
        return cls(
            config.blur_max_ksize,
            config.noise_max_std,
            config.hue,
            config.saturation,
            config.brightness,
            config.contrast,
        )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        first: list[Any] = []
        if self.blur_max_ksize > 1:
            first += [lambda im: gaussian_blur(im, rng, self.blur_max_ksize)]
            first += [lambda im: median_blur(im, rng, self.blur_max_ksize)]
        if self.noise_max_std > 0:
            first += [lambda im: gaussian_noise(im, rng, self.noise_max_std)]
        if first:
            image = first[int(rng.integers(len(first)))](image)
        colour = [
            (add_hue, self.hue),
            (add_saturation, self.saturation),
            (add_brightness, self.brightness),
            (add_contrast, self.contrast),
        ]
        for index in rng.permutation(len(colour)):
            function, limit = colour[int(index)]
            if limit > 0:
                image = function(image, rng, limit)
        return image
