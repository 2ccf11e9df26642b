"""What a training run is built from: device, data splits, model, learning-rate schedule, and the
test accuracy measured after every epoch (docs/training.md)."""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..data import dataset_options, load_dataset, make_batch
from ..data.datasets import Dataset
from ..models import CoDANet, create_model
from . import distributed


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use device=auto or cpu)")
    return torch.device(name)


def learning_rate(cfg: dict, epoch_progress: float) -> float:
    """lr at a (fractional) epoch, per the configured schedule (the paper's recipes, docs/training.md)."""
    lr, epoch = cfg["lr"], int(epoch_progress)
    if cfg["schedule"] == "constant":
        return lr
    if cfg["schedule"] == "step":                 # CIFAR: 2.5e-4 * 1.5^-floor(epoch/30)
        return lr * cfg["lr_gamma"] ** (epoch // cfg["lr_step_epochs"])
    if cfg["schedule"] == "warmup":               # ImageNet-100: warm-up, then steps
        w = cfg["warmup_epochs"]
        if epoch_progress < w:
            return cfg["warmup_start_lr"] + (lr - cfg["warmup_start_lr"]) * epoch_progress / w
        return lr * cfg["lr_gamma"] ** (int(epoch_progress - w) // cfg["lr_step_epochs"])
    if cfg["schedule"] == "linear":               # to lr * final_lr_fraction at the last epoch
        frac = min(1.0, epoch_progress / cfg["epochs"])
        return lr * (1 - (1 - cfg["final_lr_fraction"]) * frac)
    raise ValueError(f"unknown schedule {cfg['schedule']!r}")


def build_model(cfg: dict, num_classes: int, in_channels: int) -> CoDANet:
    kw = dict(num_classes=num_classes, in_channels=in_channels, nonlinearity=cfg["nonlinearity"])
    if cfg["temperature"] is not None:
        kw["temperature"] = cfg["temperature"]
    if cfg["rank"] is not None:
        kw["rank"] = cfg["rank"]
    return create_model(cfg["model"], **kw)


def input_format(cfg: dict) -> tuple[int, int | None]:
    """(channels, input size) of the model a config trains: that of `init_from`'s weights, else
    the registered architecture's (3 channels unless it says otherwise)."""
    if cfg["init_from"]:
        from ..models.pretrained import resolve_weights
        from .checkpoint import read_state
        arch = read_state(resolve_weights(cfg["init_from"]))[0]["arch"]
    else:
        from ..models.registry import resolve_config
        arch = resolve_config(cfg["model"])
    return arch["in_channels"], arch.get("input_size")


def check_memory(cfg: dict, train_set: Dataset) -> None:
    """Refuse, before allocating anything, a model and batch that cannot fit in memory."""
    from ..models.registry import resolve_config
    from .schema import available_memory_bytes, training_memory_bytes
    arch = resolve_config(cfg["model"], num_classes=train_set.num_classes, in_channels=train_set.channels,
                          rank=cfg["rank"])
    need = training_memory_bytes(arch, cfg["batch_size"], train_set.image_size or arch.get("input_size") or 32)
    have = available_memory_bytes()
    if need > have:
        raise ValueError(f"model {cfg['model']} (ranks {arch['ranks']}) at batch_size {cfg['batch_size']} needs "
                         f"at least {need / 2**30:.1f} GiB, but {have / 2**30:.1f} GiB are available; lower "
                         "rank or batch_size")


def load_splits(cfg: dict, progress: bool = False) -> tuple[Dataset, Dataset]:
    """(train, test) of the config's data set, cut to max_train_images / max_test_images."""
    options = dataset_options(cfg, *input_format(cfg)) if cfg["dataset"] == "folder" else {}
    if options:
        options["progress"] = progress
    train = load_dataset(cfg["dataset"], "train", cfg["data_dir"], **options)
    test = load_dataset(cfg["dataset"], "test", cfg["data_dir"], **options)
    if cfg["max_train_images"]:
        train = train.subset(range(min(len(train), cfg["max_train_images"])))
    if cfg["max_test_images"]:
        test = test.subset(range(min(len(test), cfg["max_test_images"])))
    return train, test


@torch.no_grad()
def evaluate_accuracy(model: CoDANet, dataset: Dataset, batch_size: int = 500, device: str | torch.device = "cpu",
                      progress: bool = False, ctx: distributed.Context | None = None) -> dict:
    """Top-1 and top-5 accuracy on `dataset` (sharded over ranks when distributed)."""
    ctx = ctx or distributed.Context()
    was_training = model.training
    model.eval()
    top1 = top5 = 0.0
    shard = list(ctx.shard(range(len(dataset))))
    for start in tqdm(range(0, len(shard), batch_size), desc="eval", leave=False, disable=not progress):
        idx = shard[start:start + batch_size]
        x = make_batch(dataset, idx, "none", None, train=False).to(device)
        y = dataset.labels[idx].to(device)
        top = model(x).topk(min(5, model.num_classes), 1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(1).sum().item()
    model.train(was_training)
    top1, top5 = ctx.sum([top1, top5])
    n = max(1, len(dataset))
    return {"top1": top1 / n, "top5": top5 / n}
