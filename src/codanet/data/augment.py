"""Data augmentation on batches: random crop with padding + horizontal flip (CIFAR recipe) and
RandAugment(n, m) (Cubuk et al. 2020) for the "+aug" recipes.

RandAugment is our own implementation with PIL's ImageOps / ImageEnhance, following the
torchvision operation list and magnitude ranges (m on a 0..30 scale, 10 = the paper's setting):
for every image, n operations drawn uniformly, each with a random sign where it has one.
"""
from __future__ import annotations

import numpy as np
import torch


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator | None,
                     flip: bool = True) -> torch.Tensor:
    """Zero-pad by `padding`, crop back to the original size at a random offset, flip half."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    padded = torch.nn.functional.pad(x, (padding,) * 4) if padding else x
    offs = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        crop = padded[i, :, dy:dy + h, dx:dx + w]
        out[i] = crop.flip(-1) if (flip and flips[i]) else crop
    return out


# (name, magnitude at m=30, signed)
RANDAUGMENT_OPS = [
    ("Identity", 0.0, False), ("AutoContrast", 0.0, False), ("Equalize", 0.0, False),
    ("Rotate", 30.0, True), ("Solarize", 255.0, False), ("Color", 0.9, True),
    ("Posterize", 4.0, False), ("Contrast", 0.9, True), ("Brightness", 0.9, True),
    ("Sharpness", 0.9, True), ("ShearX", 0.3, True), ("ShearY", 0.3, True),
    ("TranslateX", 0.45, True), ("TranslateY", 0.45, True),
]


def _apply_op(im, name: str, mag: float):
    from PIL import Image, ImageEnhance, ImageOps
    AFFINE, NEAREST = Image.Transform.AFFINE, Image.Resampling.NEAREST
    fill = (128,) * len(im.getbands())
    if name == "Identity":
        return im
    if name == "AutoContrast":
        return ImageOps.autocontrast(im)
    if name == "Equalize":
        return ImageOps.equalize(im)
    if name == "Rotate":
        return im.rotate(mag, resample=NEAREST, fillcolor=fill)
    if name == "Solarize":       # threshold falls from 256 (no-op) as m grows
        return ImageOps.solarize(im, int(256 - mag))
    if name == "Posterize":      # bits fall from 8 as m grows
        return ImageOps.posterize(im, max(1, int(8 - round(mag))))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(im).enhance(1.0 + mag)
    if name == "ShearX":
        return im.transform(im.size, AFFINE, (1, mag, 0, 0, 1, 0), NEAREST, fillcolor=fill)
    if name == "ShearY":
        return im.transform(im.size, AFFINE, (1, 0, 0, mag, 1, 0), NEAREST, fillcolor=fill)
    if name == "TranslateX":
        return im.transform(im.size, AFFINE, (1, 0, mag * im.width, 0, 1, 0), NEAREST, fillcolor=fill)
    if name == "TranslateY":
        return im.transform(im.size, AFFINE, (1, 0, 0, 0, 1, mag * im.height), NEAREST, fillcolor=fill)
    raise ValueError(f"unknown RandAugment op {name!r}")


def randaugment(x: torch.Tensor, n: int, m: float, generator: torch.Generator | None) -> torch.Tensor:
    """RandAugment(n, m) on a uint8 batch (N, C, H, W) -> uint8 batch of the same shape."""
    from PIL import Image
    if x.dtype != torch.uint8:
        raise ValueError(f"randaugment expects uint8 images, got {x.dtype}")
    if not (0 <= m <= 30) or n < 0:
        raise ValueError(f"RandAugment needs n >= 0 and 0 <= m <= 30, got n={n}, m={m}")
    out = []
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (len(x), n), generator=generator)
    signs = torch.rand(len(x), n, generator=generator) < 0.5
    for i, img in enumerate(x):
        arr = img.permute(1, 2, 0).numpy()
        im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        for k in range(n):
            name, top, signed = RANDAUGMENT_OPS[int(ops[i, k])]
            mag = top * m / 30.0
            im = _apply_op(im, name, -mag if (signed and signs[i, k]) else mag)
        a = np.asarray(im, dtype=np.uint8)
        out.append(torch.from_numpy(a.copy()).reshape(img.shape[1], img.shape[2], -1).permute(2, 0, 1))
    return torch.stack(out)


def make_batch(dataset, indices, augment: str, generator: torch.Generator | None, crop_padding: int = 4,
               randaugment_n: int = 2, randaugment_m: float = 10.0, train: bool = True) -> torch.Tensor:
    """Float images in [0, 1] for a batch, with the configured augmentation."""
    x = dataset.load_uint8(indices, train=train, generator=generator)
    if train and augment == "randaugment":
        x = randaugment(x, randaugment_n, randaugment_m, generator)
    x = x.float().div_(255)
    if train and augment in ("crop_flip", "randaugment"):
        x = random_crop_flip(x, crop_padding, generator)
    return x


AUGMENTATIONS = ("none", "crop_flip", "randaugment")
