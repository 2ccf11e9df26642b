"""A folder of images as a data set: root/<class name>/*.png|jpg|...  (docs/finetuning.md).

Layouts:
  root/<class>/<image>                     one pool, split per class into train and test with a
                                           seeded, stratified draw (`test_fraction` of each class);
  root/train/<class>/... + root/test/<class>/...   the user's own split.
Images of any size, grey or colour, are converted once to the model's input exactly as
`codanet explain` converts a picture (channels by luminance or repetition, shorter side resized,
centre crop) and kept in memory as uint8.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from .datasets import Dataset
from .images import read_image

FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_FOLDER_IMAGES = 1_000_000


def _class_files(folder: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} of the sub-folders of `folder`; ValueError when there are no
    classes or a class has no images."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} does not exist")
    classes = sorted(d for d in os.listdir(folder)
                     if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    if not classes:
        raise ValueError(f"image folder {folder} has no class folders (expected {folder}/<class name>/*.png)")
    files = {c: sorted(os.path.join(folder, c, f) for f in os.listdir(os.path.join(folder, c))
                       if f.lower().endswith(FOLDER_EXTENSIONS)) for c in classes}
    empty = [c for c, fs in files.items() if not fs]
    if empty:
        raise ValueError(f"image folder {folder}: class folder(s) {', '.join(map(repr, empty))} hold no images "
                         f"({', '.join(FOLDER_EXTENSIONS)})")
    if sum(map(len, files.values())) > MAX_FOLDER_IMAGES:
        raise ValueError(f"image folder {folder} holds more than {MAX_FOLDER_IMAGES:,} images")
    return files


def split_files(root: str, split: str, test_fraction: float, seed: int) -> tuple[list[str], list[str], list[int]]:
    """(classes, paths, labels) of one split: root/train|test when both exist, otherwise a seeded
    stratified split of root/<class>: round(test_fraction * n) images of each class (at least one
    when the class has two or more) go to test."""
    own = all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
    if own:
        per_class = _class_files(os.path.join(root, split))
        other = _class_files(os.path.join(root, "test" if split == "train" else "train"))
        classes = sorted(set(per_class) | set(other))
    else:
        per_class = _class_files(root)
        classes = sorted(per_class)
    paths, labels = [], []
    for c, fs in per_class.items():
        if not own:
            order = np.random.RandomState([seed, classes.index(c)]).permutation(len(fs))
            n_test = min(len(fs) - 1, max(1 if len(fs) > 1 else 0, round(test_fraction * len(fs))))
            chosen = order[:n_test] if split == "test" else order[n_test:]
            fs = [fs[i] for i in sorted(chosen)]
        paths += fs
        labels += [classes.index(c)] * len(fs)
    return classes, paths, labels


def folder_dataset(root: str, split: str, *, channels: int, image_size: int | None, test_fraction: float = 0.2,
                   seed: int = 0, skip_bad_files: bool = False, progress: bool = False) -> Dataset:
    """The `split` of the image folder `root`, converted to (channels, image_size, image_size) uint8.
    Unreadable files raise one ValueError listing them, or are skipped (and reported) with
    `skip_bad_files`."""
    from ..explain.inputs import to_model_input
    if root is None:
        raise FileNotFoundError("dataset 'folder' needs data_dir: a folder root/<class name>/*.png")
    classes, paths, labels = split_files(root, split, test_fraction, seed)
    images, kept, bad = [], [], []
    for path, label in tqdm(list(zip(paths, labels)), desc=f"reading {split} images", unit="img",
                            disable=not progress, leave=False):
        try:
            x, _ = to_model_input(read_image(path)[0], channels, image_size)     # (C, S, S) in [0, 1]
        except (ValueError, FileNotFoundError) as e:
            bad.append(str(e))
            continue
        images.append((x * 255).round().to(torch.uint8))
        kept.append(label)
    if bad and not skip_bad_files:
        raise ValueError(f"image folder {root}: {len(bad)} unreadable file(s): " + "; ".join(bad[:5])
                         + (" ..." if len(bad) > 5 else "") + " (skip them with --set skip_bad_files=true)")
    for line in bad:
        print(f"skipped {line}")
    if not images:
        raise ValueError(f"image folder {root}: the {split} split holds no readable images")
    if image_size is None and len({im.shape for im in images}) > 1:
        raise ValueError(f"image folder {root}: images of different sizes need the model's input size")
    return Dataset(f"folder:{os.path.basename(os.path.normpath(root))}", kept, classes, images=torch.stack(images))


def write_image_folder(dataset: Dataset, root: str, split: str | None = None, limit: int | None = None) -> int:
    """Write a data set as PNGs, root/[split/]<class>/<index>.png (the layout `folder_dataset`
    reads); returns the number of files.  Class names are made safe as folder names."""
    from PIL import Image
    n = len(dataset) if limit is None else min(limit, len(dataset))
    images = dataset.load_uint8(range(n))                      # (n, C, H, W) uint8
    for i in range(n):
        label = int(dataset.labels[i])
        folder = os.path.join(root, split or "", _safe_name(dataset.classes[label]))
        os.makedirs(folder, exist_ok=True)
        a = images[i].permute(1, 2, 0).numpy()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(os.path.join(folder, f"{i:06d}.png"))
    return n


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in name).strip() or "class"
