"""klteach.augment: batched per-sample augmentation, checked against a per-image loop."""
from __future__ import annotations

import pytest
import torch

from klteach.augment import (
    CIFAR_AUGMENT,
    DIGITS_AUGMENT,
    LUMA,
    AugmentParams,
    ImageAugment,
    SphereNoise,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    augment_per_image_reference,
    augmentation_for,
    grayscale,
    rotate_hue,
)
from klteach.data import Dataset, load_dataset, to_float

PLAIN = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, jitter_p=0.0, gray_p=0.0)


def images(n: int = 16, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random uint8 images with some smooth structure (so crops differ visibly)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (n, channels, 4, 4), generator=generator).float()
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return smooth.round().clamp(0, 255).to(torch.uint8)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("preset, channels, size", [(CIFAR_AUGMENT, 3, 32), (DIGITS_AUGMENT, 1, 8)])
@pytest.mark.parametrize("as_float", [False, True])
def test_output_shape_range_dtype_device(preset, channels, size, as_float):
    x = images(8, channels, size)
    out = preset(to_float(x) if as_float else x, seeded(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


def test_every_sample_gets_its_own_parameters():
    x = images(1).expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    out = CIFAR_AUGMENT(x, seeded(0))
    for i in range(8):
        for j in range(i):
            assert not torch.allclose(out[i], out[j])


def test_seeded_generator_makes_it_repeatable():
    x = images(8)
    assert torch.equal(CIFAR_AUGMENT(x, seeded(5)), CIFAR_AUGMENT(x, seeded(5)))
    assert not torch.equal(CIFAR_AUGMENT(x, seeded(5)), CIFAR_AUGMENT(x, seeded(6)))


@pytest.mark.parametrize("augment_, channels, size", [
    (CIFAR_AUGMENT, 3, 32), (DIGITS_AUGMENT, 1, 8),
    (ImageAugment(size=(20, 24), noise_std=0.05, gray_p=0.5), 3, 32),
    (ImageAugment(size=16), 3, 32)])
def test_batched_equals_per_image_loop_with_identical_parameters(augment_, channels, size):
    x = images(12, channels, size)
    params = augment_.sample_params(augment_.output_shape(x), x.device, seeded(1))
    batched = augment_.apply(x, params)
    looped = augment_per_image_reference(augment_, x, params)
    assert batched.shape == looped.shape == augment_.output_shape(x)
    torch.testing.assert_close(batched, looped, atol=1e-6, rtol=0)


def test_full_image_crop_without_flip_is_the_identity():
    x = images(4)
    torch.testing.assert_close(ImageAugment(**PLAIN)(x, seeded(0)), to_float(x), atol=1e-6, rtol=0)


def test_flip_mirrors_left_and_right():
    x = images(64)
    out = ImageAugment(**{**PLAIN, "flip": True})(x, seeded(0))
    mirrored = torch.tensor([torch.allclose(o, to_float(i).flip(-1), atol=1e-6) for o, i in zip(out, x)])
    unchanged = torch.tensor([torch.allclose(o, to_float(i), atol=1e-6) for o, i in zip(out, x)])
    assert (mirrored | unchanged).all() and 16 < mirrored.sum() < 48


def test_crop_takes_the_chosen_region():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    x[..., 4:] = 255  # left half black, right half white
    aug = ImageAugment(**PLAIN)
    params = aug.sample_params(x.shape, "cpu", seeded(0))
    params.crop = torch.tensor([[[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]])  # the right half, stretched
    right = aug.apply(x, params)  # (bilinear: the edge column blends in a little of the black)
    assert (right[..., 1:] == 1).all() and torch.allclose(right[..., 0], torch.tensor(0.75))
    params.crop[0, 0, 2] = -0.5  # the left half
    left = aug.apply(x, params)
    assert (left[..., :-1] == 0).all() and torch.allclose(left[..., -1], torch.tensor(0.25))


def test_crop_scale_bounds_the_zoom():
    x = images(200)
    params = CIFAR_AUGMENT.sample_params(x.shape, "cpu", seeded(0))
    area = params.crop[:, 0, 0].abs() * params.crop[:, 1, 1]
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1 + 1e-6 and area.std() > 0.1
    inside = (params.crop[:, 0, 0].abs() + params.crop[:, 0, 2].abs() <= 1 + 1e-6)
    assert inside.all()  # every crop stays within the image


def test_grayscale_makes_the_channels_equal():
    x = images(4)
    out = ImageAugment(**{**PLAIN, "gray_p": 1.0})(x, seeded(0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    expected = sum(w * to_float(x)[:, c] for c, w in enumerate(LUMA))
    torch.testing.assert_close(out[:, 0], expected, atol=1e-6, rtol=0)


def test_colour_operations():
    x = to_float(images(4))
    one = torch.ones(4)
    torch.testing.assert_close(adjust_brightness(x, 0.5 * one), x * 0.5)
    flat = adjust_contrast(x, 0 * one)  # contrast 0: each image becomes its mean grey level
    assert torch.allclose(flat.amax(dim=(1, 2, 3)), flat.amin(dim=(1, 2, 3)))
    torch.testing.assert_close(adjust_saturation(x, 0 * one), grayscale(x).expand_as(x))
    torch.testing.assert_close(rotate_hue(x, 0 * one), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_hue(x, one), x, atol=1e-5, rtol=0)  # a full turn
    mid = 0.25 + 0.5 * x  # no clipping: a hue rotation keeps the grey level (Y of YIQ)
    turned = rotate_hue(mid, 0.3 * one)
    assert not torch.allclose(turned, mid, atol=1e-3)
    torch.testing.assert_close(grayscale(turned), grayscale(mid), atol=1e-5, rtol=0)


def test_params_select_rows():
    params = CIFAR_AUGMENT.sample_params((6, 3, 32, 32), "cpu", seeded(0))
    part = params[2:4]
    assert isinstance(part, AugmentParams) and part.crop.shape == (2, 2, 3)
    assert torch.equal(part.hue, params.hue[2:4]) and part.noise is None


def test_bad_settings_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="crop_scale"):
        ImageAugment(crop_scale=(0.5, 2.0))
    with pytest.raises(ValueError, match="gray_p"):
        ImageAugment(gray_p=1.5)
    with pytest.raises(ValueError, match="jitter"):
        ImageAugment(jitter=(0.4, 0.4, 0.4, 0.9))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(32, 32\)"):
        CIFAR_AUGMENT(torch.zeros(32, 32))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        CIFAR_AUGMENT(torch.zeros(2, 2, 8, 8))


def test_sphere_noise_stays_on_the_sphere():
    x = load_dataset("toy").train[:100]
    out = SphereNoise(0.2)(x, seeded(0))
    assert torch.allclose(out.norm(dim=1), torch.ones(100), atol=1e-6)
    assert 0.05 < (out - x).norm(dim=1).mean() < 0.5
    assert torch.equal(out, SphereNoise(0.2)(x, seeded(0)))
    torch.testing.assert_close(SphereNoise(0.0)(x), x)
    with pytest.raises(ValueError, match="sigma"):
        SphereNoise(-1.0)


def test_presets_by_name_kind_and_dataset():
    assert augmentation_for("digits") is DIGITS_AUGMENT and not DIGITS_AUGMENT.flip
    assert augmentation_for("cifar10-sample") is CIFAR_AUGMENT
    assert isinstance(augmentation_for("toy"), SphereNoise)
    folder = Dataset("/some/folder", torch.zeros(1, 3, 4, 4, dtype=torch.uint8), None,
                     torch.zeros(1, 3, 4, 4, dtype=torch.uint8), None, ["a"], "images")
    assert augmentation_for(folder) is CIFAR_AUGMENT
    assert augmentation_for("images")(images(2), seeded(0)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"no augmentation preset for 'mnist'.*digits"):
        augmentation_for("mnist")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_gpu_with_either_generator():
    x = images(8).cuda()
    on_gpu = CIFAR_AUGMENT(x, torch.Generator(device="cuda").manual_seed(0))
    from_cpu = CIFAR_AUGMENT(x, seeded(0))
    assert on_gpu.device == from_cpu.device == x.device
    params = CIFAR_AUGMENT.sample_params(x.shape, "cpu", seeded(0))
    torch.testing.assert_close(from_cpu.cpu(), CIFAR_AUGMENT.apply(x.cpu(), params), atol=1e-5, rtol=0)
