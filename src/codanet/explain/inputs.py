"""Users' pictures and clips as model inputs: decoding, channel and size conversion, video frames.

Every reader raises ValueError / FileNotFoundError with one line naming the file and the problem,
so `codanet explain` can report it and go on with the other inputs.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import read_image  # noqa: F401  (re-exported: the reader of user images)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".gif", ".mov", ".avi", ".mkv", ".webm", ".m4v")
RESIZE_MODES = ("fit", "none")


def expand_inputs(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files to explain (folders expanded to their images and videos, sorted) and (path, error)
    for the inputs that cannot be used at all."""
    files, errors = [], []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
            if not found:
                errors.append((p, "folder holds no image or video files "
                                  f"({', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})"))
            files += found
        elif not os.path.exists(p):
            errors.append((p, "no such file or folder"))
        else:
            files.append(p)
    return files, errors


def is_video(path: str) -> bool:
    """Videos by extension, and animated PNG/WebP files (several frames)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return True
    if ext in (".png", ".webp"):
        try:
            from PIL import Image
            with Image.open(path) as im:
                return getattr(im, "n_frames", 1) > 1
        except Exception:        # read_image reports unreadable files
            return False
    return False


def to_model_input(image: np.ndarray, channels: int, size: int | None, resize: str = "fit"
                   ) -> tuple[torch.Tensor, list[str]]:
    """(H, W, C) float in [0, 1] -> (channels, S, S) tensor for the model, and notes.

    Channels: colour -> grey by luminance (ITU-R 601), grey -> colour by repetition.
    resize='fit': shorter side resized to `size` (antialiased bilinear), then centre-cropped to
    size x size; resize='none': the image's own size (CoDA-Nets are fully convolutional).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()   # (C, H, W)
    notes = []
    if x.shape[0] != channels:
        if channels == 1:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            notes.append("colour converted to grey")
        else:
            x = x[:1].expand(channels, -1, -1)
            notes.append(f"grey repeated to {channels} channels")
    h, w = x.shape[1:]
    if resize == "fit" and size and (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, top:top + size, left:left + size]
        cropped = f", centre-cropped to {size}x{size}" if (nh, nw) != (size, size) else ""
        notes.append(f"resized {w}x{h} -> {nw}x{nh}{cropped}")
    return x.clamp(0, 1).contiguous(), notes


class VideoReader:
    """Frames of a video (MP4, GIF, animated PNG, ... anything FFmpeg decodes) through PyAV,
    decoded one at a time: memory stays bounded however long the clip."""

    def __init__(self, path: str):
        import av
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: video file not found")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: file is empty (0 bytes)")
        try:
            self.container = av.open(path)
        except Exception as e:
            raise ValueError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{path}: holds no video stream")
        self.path = path
        self.stream = self.container.streams.video[0]
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self.fps = Fraction(rate)
        self.frames = int(self.stream.frames or 0)        # 0: unknown

    def __iter__(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 frames."""
        try:
            for frame in self.container.decode(self.stream):
                yield frame.to_ndarray(format="rgb24")
        except Exception as e:
            import av
            if isinstance(e, av.error.FFmpegError):
                raise ValueError(f"{self.path}: video could not be decoded ({e})") from None
            raise

    def close(self) -> None:
        self.container.close()


class VideoWriter:
    """An H.264 MP4 at a given frame rate, frame by frame (RGB uint8, sizes padded to even)."""

    def __init__(self, path: str, fps: Fraction, width: int, height: int):
        import av
        self.path = path
        self.container: Any = av.open(path, "w")           # None once closed
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.width, self.height = width + width % 2, height + height % 2
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "18"}

    def write(self, rgb: np.ndarray) -> None:
        import av
        h, w = rgb.shape[:2]
        if (h, w) != (self.height, self.width):
            rgb = np.pad(rgb, ((0, self.height - h), (0, self.width - w), (0, 0)))
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and close the file (once; later calls do nothing)."""
        if self.container is None:
            return
        container, self.container = self.container, None
        try:
            for packet in self.stream.encode():
                container.mux(packet)
        finally:
            container.close()
