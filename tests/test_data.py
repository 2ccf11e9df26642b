"""Dataset readers on small files generated in each dataset's real format."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from codanet.data import load_dataset, make_batch, randaugment, random_crop_flip, read_idx
from codanet.data.datasets import mnist_5k


def write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    head = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = head + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_idx_folder(folder, n_train=12, n_test=6, gz=True):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"),
                  rng.randint(0, 256, (n, 28, 28)).astype(np.uint8), gz)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"),
                  (np.arange(n) % 10).astype(np.uint8), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    make_idx_folder(tmp_path, gz=gz)
    train = load_dataset("fashion_mnist", "train", str(tmp_path))
    test = load_dataset("fashion_mnist", "test", str(tmp_path))
    assert len(train) == 12 and len(test) == 6 and train.num_classes == 10
    x = make_batch(train, range(4), "none", None, train=False)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert train.labels.tolist() == [i % 10 for i in range(12)]
    mn = load_dataset("mnist", "train", str(tmp_path))
    assert mn.classes[3] == "3"


def test_idx_errors_name_the_file(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-10])                           # truncated
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("fashion_mnist", "train", str(tmp_path))
    path.write_bytes(b"hello world, not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="train-images"):
        read_idx(path)
    gzp = tmp_path / "x.gz"
    gzp.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(ValueError, match="x.gz"):
        read_idx(gzp)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion_mnist", "train", str(tmp_path / "nowhere"))


def test_idx_label_mismatch(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="12 images but 5 labels"):
        load_dataset("fashion_mnist", "train", str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 11, np.uint8))
    with pytest.raises(ValueError, match="labels must lie in"):
        load_dataset("fashion_mnist", "train", str(tmp_path))


def test_mnist_5k_split():
    train, test = mnist_5k("train"), mnist_5k("test")
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(train.labels.numpy()).tolist() == [400] * 10
    assert np.bincount(test.labels.numpy()).tolist() == [100] * 10
    assert len(set(test.labels[:30].tolist())) == 10        # shuffled: the first images cover all classes
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)


def make_cifar(folder, n=7):
    root = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(root)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.randint(0, 10, n)],
             b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"x.png"] * n}
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(d, f, protocol=2)
    return root


def test_cifar10_batches(tmp_path):
    root = make_cifar(tmp_path)
    train = load_dataset("cifar10", "train", str(tmp_path))
    test = load_dataset("cifar10", "test", root)
    assert len(train) == 35 and len(test) == 7 and train.images.shape[1:] == (3, 32, 32)
    # the channel layout is R plane, G plane, B plane (CIFAR's row-major 3x1024)
    with open(os.path.join(root, "test_batch"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert torch.equal(test.images[0, 1].flatten(), torch.from_numpy(raw[0, 1024:2048]))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/codanet-pwned",))


def test_cifar10_refuses_code_and_corrupt_files(tmp_path):
    root = make_cifar(tmp_path)
    with open(os.path.join(root, "test_batch"), "wb") as f:
        pickle.dump({b"data": _Payload(), b"labels": []}, f)
    with pytest.raises(ValueError, match="test_batch.*refusing"):
        load_dataset("cifar10", "test", root)
    assert not os.path.exists("/tmp/codanet-pwned")
    with open(os.path.join(root, "data_batch_1"), "wb") as f:
        f.write(b"\x80\x02}q")                                 # truncated pickle
    with pytest.raises(ValueError, match="data_batch_1"):
        load_dataset("cifar10", "train", root)
    os.remove(os.path.join(root, "data_batch_1"))
    with pytest.raises(FileNotFoundError, match="data_batch"):
        load_dataset("cifar10", "train", root)


def _save_jpeg(path, size=(64, 64), seed=0):
    from PIL import Image
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(path)


def make_tiny_imagenet(folder, wnids=("n01443537", "n01629819", "n01641577"), per_class=3):
    root = os.path.join(folder, "tiny-imagenet-200")
    os.makedirs(os.path.join(root, "val", "images"))
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    lines = []
    for i, w in enumerate(wnids):
        d = os.path.join(root, "train", w, "images")
        os.makedirs(d)
        for j in range(per_class):
            _save_jpeg(os.path.join(d, f"{w}_{j}.JPEG"), seed=j)
        name = f"val_{i}.JPEG"
        _save_jpeg(os.path.join(root, "val", "images", name), seed=10 + i)
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_layout(tmp_path):
    root = make_tiny_imagenet(tmp_path)
    train = load_dataset("tiny_imagenet", "train", str(tmp_path))
    test = load_dataset("tiny_imagenet", "test", root)
    assert len(train) == 9 and len(test) == 3 and train.num_classes == 3
    assert test.labels.tolist() == [0, 1, 2]
    x = make_batch(train, [0, 4], "crop_flip", torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    with open(os.path.join(root, "val", "val_annotations.txt"), "a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt: line 4"):
        load_dataset("tiny_imagenet", "test", root)
    os.remove(os.path.join(root, "wnids.txt"))
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        load_dataset("tiny_imagenet", "train", root)


def test_imagenet_folders_with_class_subset(tmp_path):
    for split in ("train", "val"):
        for c in ("n02", "n01", "n03"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            _save_jpeg(d / "a.JPEG", size=(300, 260))
    ds = load_dataset("imagenet", "train", str(tmp_path))
    assert ds.classes == ["n01", "n02", "n03"]
    from codanet.data.datasets import image_folder
    sub = image_folder("test", str(tmp_path), num_classes=2)
    assert sub.classes == ["n01", "n02"] and len(sub) == 2
    x = make_batch(sub, [0, 1], "none", None, train=False)
    assert x.shape == (2, 3, 240, 240)
    with pytest.raises(ValueError, match="asked for 5 classes"):
        image_folder("train", str(tmp_path), num_classes=5)
    (tmp_path / "train" / "n01" / "a.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(ValueError, match="a.JPEG: not a readable image"):
        make_batch(ds, [0], "none", None)
    (tmp_path / "train" / "n01" / "a.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        make_batch(ds, [0], "none", None)
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        load_dataset("imagenet", "train", str(tmp_path / "missing"))


def test_crop_flip_and_randaugment():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    y = random_crop_flip(x, 0, g, flip=False)
    assert torch.equal(x, y)
    y = random_crop_flip(x, 2, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    # each output is a (possibly flipped) shifted window of the zero-padded input
    padded = torch.nn.functional.pad(x, (2,) * 4)
    for i in range(6):
        found = any(torch.equal(y[i], c) or torch.equal(y[i], c.flip(-1))
                    for dy in range(5) for dx in range(5) for c in [padded[i, :, dy:dy + 8, dx:dx + 8]])
        assert found
    u8 = (torch.rand(5, 3, 16, 16) * 255).to(torch.uint8)
    a = randaugment(u8, 2, 10, torch.Generator().manual_seed(3))
    b = randaugment(u8, 2, 10, torch.Generator().manual_seed(3))
    assert a.dtype == torch.uint8 and a.shape == u8.shape and torch.equal(a, b)
    assert not torch.equal(a, u8)
    assert torch.equal(randaugment(u8, 0, 10, g), u8)
    grey = (torch.rand(2, 1, 16, 16) * 255).to(torch.uint8)
    assert randaugment(grey, 2, 30, g).shape == grey.shape
    with pytest.raises(ValueError, match="0 <= m <= 30"):
        randaugment(u8, 2, 31, g)


def test_prefetched_batches_are_the_same_in_every_mode():
    """inline, background thread and worker processes give identical batches and generators."""
    import contextlib

    from codanet.data.loader import EpochBatches, prefetched
    from codanet.train import make_config
    ds = load_dataset("mnist_5k", "train").subset(range(40))
    cfg = make_config(dict(augment="randaugment", crop_padding=2))
    batches = EpochBatches(ds, torch.randperm(40), epoch=3, batch_size=8, cfg=cfg)
    runs = {}
    for mode in ("none", "thread", "processes"):
        with contextlib.closing(prefetched(batches, 1, 5, mode, workers=2)) as stream:
            runs[mode] = [(x, y, torch.rand(3, generator=g)) for x, y, g in stream]
    ref = runs["none"]
    assert len(ref) == 4 and ref[0][0].shape == (8, 1, 28, 28)
    assert not torch.equal(ref[0][0], ref[1][0])
    for mode in ("thread", "processes"):
        for a, b in zip(ref, runs[mode], strict=True):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    # leaving early stops the thread without waiting for the whole epoch
    with contextlib.closing(prefetched(batches, 0, 5, "thread")) as stream:
        assert torch.equal(next(iter(stream))[0], batches[0][0])
    with pytest.raises(ValueError, match="prefetch must be one of"):
        next(prefetched(batches, 0, 5, "async"))
