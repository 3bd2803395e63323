"""Batched data augmentation that runs on the tensor's own device (CPU or GPU).

Self-supervised clustering compares two random *views* of each sample (the student sees
one, the teacher another). Every image in a batch gets its own random parameters, but the
work is done by a handful of batched tensor operations — no Python loop over images:

* random resized crop + horizontal flip: one affine matrix per image, applied with
  ``affine_grid`` + ``grid_sample`` (bilinear);
* colour jitter (brightness, contrast, saturation, hue) and random grayscale;
* optional Gaussian pixel noise.

Parameters are drawn once by :meth:`ImageAugment.sample_params` and applied by
:meth:`ImageAugment.apply`, so the same parameters can be replayed one image at a time
(:func:`augment_per_image_reference`) to check and time the batched version.
Use :func:`augmentation_for` to get the preset for a dataset.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from klteach.data import Dataset, to_float

LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601 weights of R, G, B in the grey level (the Y of YIQ)."""
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))

Augmentation = Callable[..., Tensor]
"""Any ``augment(x, generator=None) -> Tensor``."""


# ---------------------------------------------------------------- colour operations (batched)

def grayscale(x: Tensor) -> Tensor:
    """Grey level of RGB images ``(N, 3, H, W)`` as ``(N, 1, H, W)``; 1-channel images are returned as is."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor·x + (1-factor)·other``, clipped to ``[0, 1]``; ``factor`` has one value per image."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale every pixel by ``factor`` (1 = unchanged)."""
    return blend(x, x.new_zeros(()), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Move pixels towards (factor < 1) or away from each image's mean grey level."""
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Move colours towards (factor < 1) or away from their own grey level."""
    return blend(x, grayscale(x), factor)


def rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the hue of RGB images by ``turns`` (fraction of a full turn) in YIQ colour space."""
    to_yiq = torch.tensor(RGB_TO_YIQ, dtype=x.dtype, device=x.device)
    angle = 2 * math.pi * turns.to(x.dtype)
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones_like(angle), torch.zeros_like(angle)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(-1, 3, 3)
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (N, 3, 3): RGB -> YIQ -> rotate -> RGB
    return torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)


# ---------------------------------------------------------------- images

@dataclass
class AugmentParams:
    """The random parameters of one batch; every field has one row per image."""

    crop: Tensor        # (N, 2, 3) affine map from output to input coordinates (crop and flip)
    brightness: Tensor  # (N,) factors, 1 = unchanged
    contrast: Tensor    # (N,)
    saturation: Tensor  # (N,)
    hue: Tensor         # (N,) turns, 0 = unchanged
    grayscale: Tensor   # (N,) bool
    noise: Tensor | None  # (N, C, H, W) pixel noise, or None

    def map(self, change: Callable[[Tensor], Tensor]) -> AugmentParams:
        """The parameters with ``change`` applied to every field (``noise`` stays None if it is)."""
        return AugmentParams(change(self.crop), change(self.brightness), change(self.contrast),
                             change(self.saturation), change(self.hue), change(self.grayscale),
                             None if self.noise is None else change(self.noise))

    def __getitem__(self, rows: slice | Tensor) -> AugmentParams:
        """The parameters of the images selected by ``rows`` (use a slice to keep the batch axis)."""
        return self.map(lambda field: field[rows])

    def to(self, device: torch.device) -> AugmentParams:
        """The parameters on ``device``."""
        return self.map(lambda field: field.to(device))


def _check_range(name: str, pair: tuple[float, float], low: float, high: float) -> None:
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {pair!r}")


def _check_probability(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class ImageAugment:
    """Random resized crop, horizontal flip, colour jitter, grayscale and noise for a batch.

    ``crop_scale``: range of the crop's area as a fraction of the image; ``crop_ratio``:
    range of its width/height ratio; the crop is resized to ``size`` (default: the input
    size). ``jitter`` = maximal (brightness, contrast, saturation, hue) changes, applied
    together with probability ``jitter_p``; ``gray_p``: probability of grayscale;
    ``noise_std``: standard deviation of added Gaussian pixel noise.
    Call it on ``uint8`` (0..255) or float (0..1) images ``(N, C, H, W)``, ``C`` = 1 or 3;
    it returns float32 images in ``[0, 1]`` on the same device.
    """

    size: int | tuple[int, int] | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        _check_range("crop_scale", self.crop_scale, 1e-6, 1.0)
        _check_range("crop_ratio", self.crop_ratio, 1e-6, float("inf"))
        if len(self.jitter) != 4 or min(self.jitter) < 0 or max(self.jitter[:3]) > 1 or self.jitter[3] > 0.5:
            raise ValueError("jitter must be (brightness, contrast, saturation, hue) with the first "
                             f"three in [0, 1] and hue in [0, 0.5], got {self.jitter!r}")
        _check_probability("jitter_p", self.jitter_p)
        _check_probability("gray_p", self.gray_p)
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")

    def output_shape(self, images: Tensor) -> tuple[int, int, int, int]:
        """``(N, C, H, W)`` of the augmented batch; checks that ``images`` is a batch of images."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
        size = (self.size, self.size) if isinstance(self.size, int) else self.size
        height, width = size or images.shape[2:]
        return images.shape[0], images.shape[1], height, width

    def sample_params(self, shape: tuple[int, int, int, int], device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> AugmentParams:
        """Draw independent parameters for each of ``shape[0]`` images; returned on ``device``.

        Drawn on the generator's device (so a CPU generator works for GPU images), else on ``device``.
        """
        n = shape[0]
        draw_on = generator.device if generator is not None else torch.device(device)

        def uniform(low: float, high: float) -> Tensor:
            return low + (high - low) * torch.rand(n, generator=generator, device=draw_on)

        # Random resized crop: area fraction and aspect ratio give the half-width/height of
        # the crop in [-1, 1] image coordinates; its centre is placed so it stays inside.
        area = uniform(*self.crop_scale)
        ratio = uniform(*map(math.log, self.crop_ratio)).exp()
        half_w, half_h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        centre_x, centre_y = (1 - half_w) * uniform(-1, 1), (1 - half_h) * uniform(-1, 1)
        mirror = uniform(0, 1) < (0.5 if self.flip else 0.0)
        crop = torch.zeros(n, 2, 3, device=draw_on)
        crop[:, 0, 0] = torch.where(mirror, -half_w, half_w)
        crop[:, 0, 2], crop[:, 1, 1], crop[:, 1, 2] = centre_x, half_h, centre_y

        jittered = uniform(0, 1) < self.jitter_p
        brightness, contrast, saturation, hue = self.jitter
        factor = lambda s: torch.where(jittered, uniform(1 - s, 1 + s), 1.0)  # noqa: E731
        params = AugmentParams(
            crop=crop, brightness=factor(brightness), contrast=factor(contrast),
            saturation=factor(saturation), hue=torch.where(jittered, uniform(-hue, hue), 0.0),
            grayscale=uniform(0, 1) < self.gray_p,
            noise=(self.noise_std * torch.randn(*shape, generator=generator, device=draw_on)
                   if self.noise_std > 0 else None))
        return params.to(torch.device(device))

    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """Apply given parameters to a batch: all images at once, no Python loop."""
        shape = self.output_shape(images)
        x = to_float(images)
        grid = F.affine_grid(params.crop.to(x.dtype), list(shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = adjust_brightness(x, params.brightness)
        x = adjust_contrast(x, params.contrast)
        if x.shape[1] == 3:
            x = adjust_saturation(x, params.saturation)
            x = rotate_hue(x, params.hue)
            x = torch.where(params.grayscale.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if params.noise is not None:
            x = (x + params.noise).clamp(0, 1)
        return x

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One random view of every image in the batch."""
        shape = self.output_shape(images)
        return self.apply(images, self.sample_params(shape, images.device, generator))


def augment_per_image_reference(augment: ImageAugment, images: Tensor, params: AugmentParams) -> Tensor:
    """The same transforms and parameters, applied one image at a time in a Python loop.

    Only for tests (the batched result must equal it) and benchmarks (it is what a
    per-image pipeline costs). Do not use it for training.
    """
    return torch.cat([augment.apply(images[i:i + 1], params[i:i + 1]) for i in range(len(images))])


# ---------------------------------------------------------------- vectors on the sphere

@dataclass(frozen=True)
class SphereNoise:
    """A view of unit vectors: add Gaussian noise of std ``sigma`` and project back onto the sphere."""

    sigma: float = 0.1

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected vectors of shape (N, D), got {tuple(x.shape)}")
        draw_on = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=draw_on).to(x.device)
        return F.normalize(x.float() + self.sigma * noise, dim=1)


# ---------------------------------------------------------------- presets

CIFAR_AUGMENT = ImageAugment()
"""SimCLR/DINO-style strong views for 32×32 colour images."""
DIGITS_AUGMENT = ImageAugment(crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip=False,
                              jitter=(0.3, 0.3, 0.0, 0.0), jitter_p=0.8, gray_p=0.0, noise_std=0.03)
"""Mild views for 8×8 digits: no flip (digits are not mirror-symmetric)."""
TOY_AUGMENT = SphereNoise(sigma=0.1)
"""Noisy copies of points on the sphere."""
PRESETS: dict[str, Augmentation] = {
    "toy": TOY_AUGMENT, "vectors": TOY_AUGMENT, "digits": DIGITS_AUGMENT,
    "cifar10": CIFAR_AUGMENT, "cifar10-sample": CIFAR_AUGMENT, "images": CIFAR_AUGMENT,
}


def augmentation_for(dataset: str | Dataset) -> Augmentation:
    """The preset augmentation for a dataset name, a kind (``"images"``/``"vectors"``) or a Dataset.

    An image folder (a Dataset whose name is a path) gets the CIFAR preset.
    """
    if isinstance(dataset, Dataset):
        return PRESETS.get(dataset.name, PRESETS[dataset.kind])
    if dataset not in PRESETS:
        raise ValueError(f"no augmentation preset for {dataset!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[dataset]
