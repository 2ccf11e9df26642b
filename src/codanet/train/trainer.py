"""The training loop: Adam, the paper's schedules, gradient accumulation, per-epoch test accuracy,
CSV log, atomic safetensors checkpoints, exact resume, SIGINT/SIGTERM and NaN handling.

Determinism: the shuffling of epoch e uses seed*1000003 + e, and the randomness of a batch
(augmentation, the lambda term's random class) uses a generator seeded from (seed, epoch, step).
A resumed run therefore replays exactly what an uninterrupted run would have done (on the same
machine and thread count).
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import time

import torch
from tqdm import tqdm

from ..data import load_dataset, make_batch
from ..data.loader import EpochBatches, prefetched
from ..models import create_model
from ..utils.io import atomic_path, folder_lock, write_json
from . import distributed
from .checkpoint import checkpoint_files, load_into, prune, save_checkpoint
from .config import DEFAULTS
from .loss import coda_loss


class TrainingStopped(Exception):
    """Raised when training cannot go on (NaN/Inf); the last good checkpoint stays intact."""


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


def build_model(cfg: dict, num_classes: int, in_channels: int):
    kw = dict(num_classes=num_classes, in_channels=in_channels, nonlinearity=cfg["nonlinearity"])
    if cfg["temperature"] is not None:
        kw["temperature"] = cfg["temperature"]
    if cfg["rank"] is not None:
        kw["rank"] = cfg["rank"]
    return create_model(cfg["model"], **kw)


def check_memory(cfg: dict, train_set) -> None:
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


def load_splits(cfg: dict):
    train = load_dataset(cfg["dataset"], "train", cfg["data_dir"])
    test = load_dataset(cfg["dataset"], "test", cfg["data_dir"])
    if cfg["max_train_images"]:
        train = train.subset(range(min(len(train), cfg["max_train_images"])))
    if cfg["max_test_images"]:
        test = test.subset(range(min(len(test), cfg["max_test_images"])))
    return train, test


@torch.no_grad()
def evaluate_accuracy(model, dataset, batch_size: int = 500, device="cpu", progress=False, ctx=None) -> dict:
    """Top-1 and top-5 accuracy on `dataset` (sharded over ranks when distributed)."""
    ctx = ctx or distributed.Context()
    model.eval()
    top1 = top5 = 0
    shard = list(ctx.shard(range(len(dataset))))
    for start in tqdm(range(0, len(shard), batch_size), desc="eval", leave=False, disable=not progress):
        idx = shard[start:start + batch_size]
        x = make_batch(dataset, idx, "none", None, train=False).to(device)
        y = dataset.labels[idx].to(device)
        logits = model(x)
        k = min(5, logits.shape[1])
        top = logits.topk(k, 1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(1).sum().item()
    model.train()
    top1, top5 = ctx.sum([top1, top5])
    n = max(1, len(dataset))
    return {"top1": top1 / n, "top5": top5 / n}


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and stops at the next update."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:          # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def _tensorboard(out_dir: str):
    """A SummaryWriter when TensorBoard is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:           # tensorboard not installed
        return None
    return SummaryWriter(os.path.join(out_dir, "tensorboard"))


class _LossModule(torch.nn.Module):
    """model + loss in one forward, so DistributedDataParallel sees every parameter's use
    (the lambda term runs its own forward through the layers)."""

    def __init__(self, model, lam: float):
        super().__init__()
        self.model, self.lam = model, lam

    def forward(self, x, y, generator):
        return coda_loss(self.model, x, y, self.lam, generator)


def train(cfg: dict, out_dir: str, resume: bool = False, progress: bool = True) -> dict:
    """Train per `cfg` into `out_dir`; returns the summary (also written to summary.json).
    The folder is locked while training runs: a second training into it is refused."""
    with folder_lock(out_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        return _train(cfg, out_dir, resume, progress)


def _train(cfg: dict, out_dir: str, resume: bool, progress: bool) -> dict:
    from ..utils.perf import keep_freed_memory
    keep_freed_memory()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    ctx = distributed.setup(select_device(cfg["device"]))
    device = ctx.device
    progress = progress and ctx.main
    train_set, test_set = load_splits(cfg)
    check_memory(cfg, train_set)
    model = build_model(cfg, train_set.num_classes, train_set.channels).to(device)
    if cfg["compile"]:
        model.compile()      # in place: parameter names and checkpoints stay the same
    if cfg["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    step_loss = _LossModule(model, cfg["lam"])
    if ctx.active:
        step_loss = torch.nn.parallel.DistributedDataParallel(step_loss)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)

    bs, acc = cfg["batch_size"], cfg["accumulate"]
    if bs % ctx.world:
        raise ValueError(f"batch_size {bs} (the global batch) must be divisible by the {ctx.world} processes")
    steps_per_epoch = (len(train_set) // (bs * acc)) * acc       # whole updates only
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one update "
                         f"(batch_size*accumulate = {bs * acc})")
    epoch, step, history, elapsed = 0, 0, [], 0.0
    if not resume and checkpoint_files(ckpt_dir):
        raise ValueError(f"{ckpt_dir} already holds checkpoints of an earlier run: continue it with --resume "
                         "or choose another --out")
    if resume:
        files = checkpoint_files(ckpt_dir)
        if not files:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        state = load_into(model, files[-1], optimizer)
        # a resumed run may get more time or epochs, and load its data or compile differently
        free = ("max_minutes", "epochs", "prefetch", "data_workers", "compile")
        saved = {k: v for k, v in dict(DEFAULTS, **state["config"]).items() if k not in free}
        now = {k: v for k, v in cfg.items() if k not in free}
        if saved != now:
            diffs = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(now) if saved.get(k) != now.get(k)]
            raise ValueError(f"--resume: the config differs from the checkpoint's ({'; '.join(diffs)})")
        epoch, step, history, elapsed = state["epoch"], state["step"], state["history"], state["elapsed"]
        if progress:
            print(f"resuming from {files[-1]} (epoch {epoch}, step {step})")

    use_bf16 = device.type == "cuda" and cfg["bf16"]
    log_path = os.path.join(out_dir, "log.csv")

    def state_dict():
        return dict(config=cfg, epoch=epoch, step=step, history=history, elapsed=elapsed,
                    dataset=train_set.name, classes=train_set.classes)

    def checkpoint():
        if not ctx.main:
            return
        updates = epoch * (steps_per_epoch // acc) + step // acc
        save_checkpoint(os.path.join(ckpt_dir, f"step-{updates:09d}.safetensors"), model, optimizer, state_dict())
        prune(ckpt_dir, cfg["keep_checkpoints"])

    board = _tensorboard(out_dir) if ctx.main else None

    def write_log():
        if not ctx.main:
            return
        if board is not None and history:
            for key in ("train_loss", "test_top1", "test_top5", "lr"):
                board.add_scalar(key, history[-1][key], history[-1]["epoch"])
            board.flush()
        with atomic_path(log_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "train_loss", "test_top1", "test_top5", "lr", "seconds"])
            w.writeheader()
            w.writerows(history)

    start = time.time() - elapsed
    images_seen, train_loop_seconds = 0, 0.0
    stopped_by = None
    model.train()
    # one bar over the whole run: its ETA is the time left for all epochs
    bar = tqdm(total=cfg["epochs"] * steps_per_epoch, initial=epoch * steps_per_epoch + step, unit="step",
               disable=not progress, dynamic_ncols=True)
    with _StopFlag() as stop, contextlib.closing(bar):
        while epoch < cfg["epochs"] and stopped_by is None:
            perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + epoch))
            running, count = 0.0, 0
            bar.set_description(f"epoch {epoch + 1}/{cfg['epochs']}")
            t_loop = time.time()
            epoch_batches = EpochBatches(train_set, perm, epoch, bs, cfg, ctx.rank, ctx.world)
            with contextlib.closing(prefetched(epoch_batches, step, steps_per_epoch, cfg["prefetch"],
                                               cfg["data_workers"], device_type=device.type)) as batches:
                for x, y, gen in batches:
                    lr = learning_rate(cfg, epoch + step / steps_per_epoch)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    sync = not ctx.active or step % acc == acc - 1    # DDP: all-reduce on the last micro-step
                    with contextlib.nullcontext() if sync else step_loss.no_sync():
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                            loss, _, parts = step_loss(x, y, gen)
                        (loss / acc).backward()
                    if not math.isfinite(loss.item()):
                        raise TrainingStopped(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; stopping. "
                                              f"The last good checkpoint in {ckpt_dir} is intact (lower lr or "
                                              "check the data)")
                    step += 1
                    images_seen += len(y)
                    running += loss.item()
                    count += 1
                    if step % acc == 0:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        if not all(torch.isfinite(p).all() for p in model.parameters()):
                            raise TrainingStopped(f"weights became NaN/Inf at epoch {epoch + 1}, step {step}; "
                                                  f"the last good checkpoint in {ckpt_dir} is intact")
                        elapsed = time.time() - start
                        updates = step // acc
                        over_time = cfg["max_minutes"] is not None and elapsed > 60 * cfg["max_minutes"]
                        if ctx.any(stop.signal is not None or over_time):
                            stopped_by = "time budget" if over_time else "signal"
                            break
                        if updates % cfg["checkpoint_every_steps"] == 0 and step < steps_per_epoch:
                            checkpoint()
                    bar.update(1)
                    bar.set_postfix(loss=f"{running / count:.4f}", lr=f"{lr:.2e}")
            train_loop_seconds += time.time() - t_loop
            elapsed = time.time() - start
            if step >= steps_per_epoch:
                metrics = evaluate_accuracy(model, test_set, cfg["eval_batch_size"], device, ctx=ctx)
                history.append(dict(epoch=epoch + 1, train_loss=running / max(1, count),
                                    test_top1=metrics["top1"], test_top5=metrics["top5"], lr=lr,
                                    seconds=round(elapsed, 1)))
                if progress:
                    tqdm.write(f"epoch {epoch + 1}: train loss {running / max(1, count):.4f}, "
                          f"test top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} ({elapsed:.0f} s)")
                epoch, step = epoch + 1, 0
                write_log()
            checkpoint()
    if stopped_by == "signal":
        print(f"stopped by signal {stop.signal} after writing a checkpoint to {ckpt_dir}; "
              "continue with --resume")
        return dict(stopped_by="signal", epoch=epoch, step=step)

    if board is not None:
        board.close()
    final = evaluate_accuracy(model, test_set, cfg["eval_batch_size"], device, ctx=ctx)
    train_seconds = time.time() - start
    images_seen = ctx.sum([images_seen])[0]
    if ctx.main:
        save_checkpoint(os.path.join(out_dir, "model.safetensors"), model, None,
                        dict(config=cfg, dataset=train_set.name, classes=train_set.classes, history=history))
    summary = dict(
        model=cfg["model"], dataset=train_set.name, temperature=model.temperature,
        nonlinearity=model.nonlinearity, parameters=model.num_parameters(),
        test_accuracy=final["top1"], test_top5=final["top5"],
        epochs=epoch + step / steps_per_epoch, train_seconds=round(train_seconds, 1),
        images_per_second=round(images_seen / max(1e-9, train_loop_seconds), 1),
        train_images=len(train_set), test_images=len(test_set), stopped_by=stopped_by,
        device=str(device), processes=ctx.world, history=history)
    if ctx.main:
        write_json(os.path.join(out_dir, "summary.json"), summary)
    ctx.barrier()
    return summary
