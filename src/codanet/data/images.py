"""Reading image files (TinyImagenet, ImageNet folders, user images) with clear errors."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

MAX_PIXELS = 64_000_000        # refuse larger images (decompression bombs)


def open_rgb(path: str):
    """Open and fully decode an image as RGB; ValueError naming the file on any problem."""
    from PIL import Image
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ValueError(f"{path}: image is {im.width}x{im.height}, larger than the "
                                     f"{MAX_PIXELS:,}-pixel limit")
                im.load()
                return im.convert("RGB")
    except ValueError:
        raise
    except Exception as e:     # PIL raises many types for corrupt / truncated / non-images
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


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
                       Image.BILINEAR)
    w, h = im.size
    if train and size >= 128:
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    else:
        left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
