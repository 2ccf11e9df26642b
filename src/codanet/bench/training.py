"""`codanet bench training`: where a training step of the CPU preset spends its time, and what
overlapped data loading and `torch.compile` change.

coda_cpu on 28x28 images, batch 64, crop+flip augmentation, Adam -- the `make demo` recipe --
on Fashion-MNIST when it is installed (random images otherwise; the timings do not depend on
the pixel values).  Measured in one run:
  * building one batch (`EpochBatches[step]`) alone, and one training step alone;
  * the training loop with batches built inline (prefetch=none) and in a background thread
    (prefetch=thread), as images/s;
  * the same loop with the model under torch.compile: the first (compiling) step separately,
    then images/s;
  * for a dataset of image files (generated JPEGs, 400x300, read like ImageNet folders and
    resized to 64x64; coda_cpu with 3 input channels): batch decoding time and the loop with
    batches built inline, in a thread and in 2 worker processes.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any

import torch

from ..data import load_dataset
from ..data.datasets import Dataset, image_folder
from ..data.loader import EpochBatches, prefetched
from ..models import create_model
from ..train.config import make_config
from ..utils.io import write_json
from .layers import timed
from .models import train_step


def _dataset(n: int = 6400) -> tuple[Dataset, str]:
    try:
        return load_dataset("fashion_mnist", "train").subset(range(n)), "fashion_mnist"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        return Dataset("random", torch.randint(0, 10, (n,), generator=g), [str(c) for c in range(10)],
                       images=images), "random images"


def _jpeg_folder(root: str, classes: int = 4, per_class: int = 96) -> None:
    """ImageNet-style train/<wnid>/*.JPEG of smooth random pictures (decode like photographs)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = os.path.join(root, "train", f"n{c:08d}")
        os.makedirs(folder)
        for i in range(per_class):
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((400, 300), Image.Resampling.BICUBIC)
            im.save(os.path.join(folder, f"{i}.JPEG"), quality=90)


def _image_file_loops(steps: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        _jpeg_folder(root)
        ds = image_folder("train", root, image_size=64, name="jpeg files")
        batches = EpochBatches(ds, torch.randperm(len(ds)), 0, batch, make_config(dict(augment="crop_flip")))
        model = create_model("coda_cpu", num_classes=ds.num_classes, in_channels=3)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        out: dict[str, Any] = dict(images=len(ds), size=64, batch_ms=1e3 * timed(lambda: batches[1], 3))
        x, y, _ = batches[0]
        out["step_ms"] = 1e3 * timed(train_step(model, opt, x, y, ds.num_classes), 3)
        loops = {m: batch / _loop(model, opt, batches, steps, m) for m in ("none", "thread", "processes")}
    out["loop_images_per_second"] = loops
    return out


def _loop(model, opt, batches, steps: int, prefetch: str) -> float:
    """Seconds per step over `steps` steps of the real loop (batches from `prefetched`)."""
    k = batches.dataset.num_classes
    t = time.perf_counter()
    with contextlib.closing(prefetched(batches, 0, steps, prefetch)) as stream:
        for x, y, _ in stream:
            train_step(model, opt, x, y, k)()
    return (time.perf_counter() - t) / steps


def run(steps: int = 40, batch: int = 64, compile: bool = True) -> dict:
    from ..utils.perf import keep_freed_memory
    keep_freed_memory()
    torch.manual_seed(0)
    ds, source = _dataset()
    cfg = make_config(dict(augment="crop_flip", crop_padding=2))
    batches = EpochBatches(ds, torch.randperm(len(ds)), 0, batch, cfg)
    if not 1 <= steps <= len(batches):
        raise ValueError(f"--steps must lie in [1, {len(batches)}], got {steps}")
    model = create_model("coda_cpu", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x, y, _ = batches[0]
    out: dict[str, Any] = dict(model="coda_cpu", batch=batch, steps=steps, data=source, threads=torch.get_num_threads(),
               torch=torch.__version__,
               batch_ms=1e3 * timed(lambda: batches[1], 5),
               step_ms=1e3 * timed(train_step(model, opt, x, y, 10), 5))
    loops: dict[str, float] = {}
    for prefetch in ("none", "thread", "none", "thread"):     # alternate, keep the faster of two
        s = _loop(model, opt, batches, steps, prefetch)
        loops[prefetch] = min(s, loops.get(prefetch, float("inf")))
    speeds = {k: batch / v for k, v in loops.items()}
    out["loop_images_per_second"] = speeds
    out["overlap_speedup"] = loops["none"] / loops["thread"]
    if compile:
        t = time.perf_counter()
        model.compile()
        _loop(model, opt, batches, 1, "none")
        out["compile_seconds"] = time.perf_counter() - t
        s = min(_loop(model, opt, batches, steps, "none") for _ in range(2))
        speeds["none, compiled"] = batch / s
        out["compile_speedup"] = loops["none"] / s
        out["compile_break_even_steps"] = (out["compile_seconds"] / max(1e-9, loops["none"] - s)
                                           if s < loops["none"] else None)
    out["image_files"] = _image_file_loops(min(steps, 6), batch)
    return out


def format_table(r: dict) -> str:
    lines = [f"coda_cpu, batch {r['batch']}, crop+flip, {r['data']}, {r['threads']} threads",
             "", "| measurement | value |", "|---|---|",
             f"| building one batch | {r['batch_ms']:.1f} ms |",
             f"| one training step (forward, backward, Adam) | {r['step_ms']:.1f} ms |"]
    for k, v in r["loop_images_per_second"].items():
        lines.append(f"| training loop, prefetch={k} | {v:.1f} images/s |")
    lines.append(f"| overlap speed-up (thread / none) | {r['overlap_speedup']:.2f}x |")
    if "compile_seconds" in r:
        lines.append(f"| torch.compile: first step | {r['compile_seconds']:.0f} s |")
        lines.append(f"| torch.compile speed-up | {r['compile_speedup']:.2f}x |")
        be = r["compile_break_even_steps"]
        lines.append(f"| steps until compiling pays off | {'never' if be is None else f'{be:.0f}'} |")
    f = r["image_files"]
    lines += ["", f"image files: {f['images']} JPEGs (400x300) decoded and resized to {f['size']}x{f['size']}, "
              f"coda_cpu with 3 input channels, batch {r['batch']}", "", "| measurement | value |", "|---|---|",
              f"| building one batch | {f['batch_ms']:.0f} ms |", f"| one training step | {f['step_ms']:.0f} ms |"]
    for k, v in f["loop_images_per_second"].items():
        lines.append(f"| training loop, prefetch={k} | {v:.1f} images/s |")
    return "\n".join(lines)


def main(args) -> int:
    result = run(args.steps, compile=not args.no_compile)
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
