"""Reading image files (TinyImagenet, ImageNet folders, user images) with clear errors."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

MAX_PIXELS = 64_000_000        # refuse larger images (decompression bombs)


def _as_float(im) -> tuple[np.ndarray, str]:
    """A PIL image as (H, W, C) float32 in [0, 1] and a note on what its mode needed."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im, dtype=np.float32) / 65535.0
        return a[..., None], "16-bit grey scaled to [0, 1]"
    if mode == "I":                                   # 32-bit ints; PNG 16-bit often opens as I
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return (np.clip(a / top, 0, 1).astype(np.float32))[..., None], f"integer image scaled by 1/{top:g}"
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError("floating-point image holds NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return a[..., None], "floating-point image"
        return ((a - lo) / max(hi - lo, 1e-12))[..., None], f"floating-point image rescaled from [{lo:.3g}, {hi:.3g}]"
    note = ""
    if mode in ("1", "L", "LA", "La"):
        im, note = im.convert("L"), ("" if mode == "L" else f"{mode} converted to grey")
    elif mode in ("RGB",):
        pass
    else:                                             # P, PA, RGBA, CMYK, YCbCr, LAB, HSV, ...
        im, note = im.convert("RGB"), f"{mode} converted to RGB"
    a = np.asarray(im, dtype=np.float32) / 255.0
    return (a[..., None] if a.ndim == 2 else a), note


def read_image(path: str) -> tuple[np.ndarray, list[str]]:
    """Decode an image file to (H, W, C) float32 in [0, 1] (C = 1 or 3) and notes on conversions."""
    from PIL import Image
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ValueError(f"image is {im.width}x{im.height}, above the {MAX_PIXELS:,}-pixel limit")
                frames = getattr(im, "n_frames", 1)
                if frames > 1:
                    raise ValueError(f"animated image with {frames} frames (explained as a video "
                                     "when it is passed as one: .gif, .mp4, animated .png)")
                im.load()
                a, note = _as_float(im)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:       # PIL raises many types for corrupt / truncated / non-images
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return a, [note] if note else []


def open_rgb(path: str):
    """Open and fully decode an image as an RGB PIL image (16-bit and float images scaled to
    8 bits); ValueError naming the file on any problem."""
    from PIL import Image
    a, _ = read_image(path)
    a = np.repeat(a, 3, -1) if a.shape[-1] == 1 else a
    return Image.fromarray((a * 255).round().astype(np.uint8), "RGB")


def load_image(path: str, size: int, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Decode to (3, size, size) uint8.  Large images (size >= 128, ImageNet): shorter side
    resized to size*256/240, then a random (train) or centre (test) crop; small ones (TinyImagenet):
    shorter side resized to `size` and centre-cropped."""
    from PIL import Image
    im = open_rgb(path)
    short = round(size * 256 / 240) if size >= 128 else size
    scale = short / min(im.size)
    if im.size != (size, size):
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                       Image.Resampling.BILINEAR)
    w, h = im.size
    if train and size >= 128:
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    else:
        left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
