"""The training loop: Adam, the paper's schedules, gradient accumulation, per-epoch test accuracy,
CSV log, atomic safetensors checkpoints, exact resume, SIGINT/SIGTERM and NaN handling.

A `Run` is built from a config (`setup.py` makes its parts), `restore`s a checkpoint when resumed,
then `run_epoch` after epoch, `checkpoint`ing as it goes, and `finish`es with a summary.

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

from ..data.loader import EpochBatches, prefetched
from ..utils.io import atomic_path, folder_lock, write_json
from . import distributed
from .checkpoint import checkpoint_files, load_into, prune, save_checkpoint
from .config import DEFAULTS
from .finetune import model_from, set_trainable, trainable_layers, write_card
from .loss import coda_loss
from .setup import build_model, check_memory, evaluate_accuracy, learning_rate, load_splits, select_device

# a resumed run may get more time or epochs, and load its data or compile differently
RESUME_MAY_CHANGE = ("max_minutes", "epochs", "prefetch", "data_workers", "compile")
SYNC_EVERY = 20          # steps between reading the loss on the host (NaN check, progress bar)


class TrainingStopped(Exception):
    """Raised when training cannot go on (NaN/Inf); the last good checkpoint stays intact."""


def train(cfg: dict, out_dir: str, resume: bool = False, progress: bool = True) -> dict:
    """Train per `cfg` into `out_dir`; returns the summary (also written to summary.json).
    The folder is locked while training runs: a second training into it is refused."""
    with folder_lock(out_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        run = Run(cfg, out_dir, progress)
        if resume:
            run.restore()
        elif checkpoint_files(run.ckpt_dir):
            raise ValueError(f"{run.ckpt_dir} already holds checkpoints of an earlier run: continue it with "
                             "--resume or choose another --out")
        return run.run()


class _LossModule(torch.nn.Module):
    """model + loss in one forward, so DistributedDataParallel sees every parameter's use
    (the lambda term runs its own forward through the layers)."""

    def __init__(self, model, lam: float):
        super().__init__()
        self.model, self.lam = model, lam

    def forward(self, x, y, generator):
        # batches are uint8 / 255 (data/augment.py): in [0, 1] by construction, so no value check
        return coda_loss(self.model, x, y, self.lam, generator, check=False)


class Run:
    """One training run into `out_dir`: model, optimiser, data and counters (epoch, step within
    the epoch, metric history, elapsed seconds)."""

    def __init__(self, cfg: dict, out_dir: str, progress: bool = True):
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg["seed"])
        self.ctx = distributed.setup(select_device(cfg["device"]))
        self.device, self.progress = self.ctx.device, progress and self.ctx.main
        self.train_set, self.test_set = load_splits(cfg, self.progress)
        self.model, self.cfg = self._model(cfg)
        self.optimizer = (torch.optim.SGD(self.model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
                          if cfg["optimizer"] == "sgd" else torch.optim.Adam(self.model.parameters(), lr=cfg["lr"]))
        self.step_loss: torch.nn.Module = _LossModule(self.model, cfg["lam"])
        if self.ctx.active and cfg["train_layers"] != "all":
            raise ValueError("train_layers (freezing layers) is not supported with torchrun; train with one "
                             "process or set train_layers=all")
        if self.ctx.active:
            self.step_loss = torch.nn.parallel.DistributedDataParallel(self.step_loss)
        self.out_dir, self.ckpt_dir = out_dir, os.path.join(out_dir, "checkpoints")
        os.makedirs(self.ckpt_dir, exist_ok=True)
        bs, self.acc = cfg["batch_size"], cfg["accumulate"]
        if bs % self.ctx.world:
            raise ValueError(f"batch_size {bs} (the global batch) must be divisible by the {self.ctx.world} processes")
        self.steps_per_epoch = (len(self.train_set) // (bs * self.acc)) * self.acc       # whole updates only
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set has {len(self.train_set)} images, fewer than one update "
                             f"(batch_size*accumulate = {bs * self.acc})")
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.history: list[dict] = []
        self.images_seen, self.loop_seconds = 0, 0.0
        self.stopped_by: str | None = None
        self.board = _tensorboard(out_dir) if self.ctx.main else None

    def _model(self, cfg: dict):
        """The model (new, or `init_from`'s weights) on the device, and the config naming it."""
        if cfg["init_from"]:
            model = model_from(cfg["init_from"], self.train_set.num_classes, self.train_set.channels,
                               cfg["temperature"])
            cfg = dict(cfg, model=model.name)
        else:
            check_memory(cfg, self.train_set)
            model = build_model(cfg, self.train_set.num_classes, self.train_set.channels)
        model.class_names = list(self.train_set.classes)
        model = model.to(self.device).train()
        if cfg["compile"]:
            model.compile()      # in place: parameter names and checkpoints stay the same
        return model, cfg

    # -- checkpoints -----------------------------------------------------------------
    def restore(self) -> None:
        """Continue from the newest checkpoint; its config must equal this one (but for
        RESUME_MAY_CHANGE)."""
        files = checkpoint_files(self.ckpt_dir)
        if not files:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.ckpt_dir}")
        state = load_into(self.model, files[-1], self.optimizer)
        config = dict(state["config"])
        if "name" in config:                          # written before the key was called run_name
            config["run_name"] = config.pop("name")
        saved = {k: v for k, v in dict(DEFAULTS, **config).items() if k not in RESUME_MAY_CHANGE}
        now = {k: v for k, v in self.cfg.items() if k not in RESUME_MAY_CHANGE}
        if saved != now:
            diffs = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(now) if saved.get(k) != now.get(k)]
            raise ValueError(f"--resume: the config differs from the checkpoint's ({'; '.join(diffs)})")
        self.epoch, self.step, self.history, self.elapsed = (state["epoch"], state["step"], state["history"],
                                                             state["elapsed"])
        if self.progress:
            print(f"resuming from {files[-1]} (epoch {self.epoch}, step {self.step})")

    def state(self) -> dict:
        return dict(config=self.cfg, epoch=self.epoch, step=self.step, history=self.history,
                    elapsed=self.elapsed, dataset=self.train_set.name, classes=self.train_set.classes)

    def checkpoint(self) -> None:
        """Write step-<updates>.safetensors (rank 0), keeping the newest keep_checkpoints; never
        writes non-finite weights."""
        if not self.ctx.main:
            return
        self._check_weights()
        updates = self.epoch * (self.steps_per_epoch // self.acc) + self.step // self.acc
        save_checkpoint(os.path.join(self.ckpt_dir, f"step-{updates:09d}.safetensors"), self.model,
                        self.optimizer, self.state())
        prune(self.ckpt_dir, self.cfg["keep_checkpoints"])

    def _check_weights(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise TrainingStopped(f"weights became NaN/Inf at epoch {self.epoch + 1}, step {self.step}; "
                                  f"the last good checkpoint in {self.ckpt_dir} is intact")

    # -- the loop --------------------------------------------------------------------
    def run(self) -> dict:
        """Epochs until cfg['epochs'], a signal or the time budget; then `finish`."""
        start = time.time() - self.elapsed
        # one bar over the whole run: its ETA is the time left for all epochs
        bar = tqdm(total=self.cfg["epochs"] * self.steps_per_epoch,
                   initial=self.epoch * self.steps_per_epoch + self.step, unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        with _StopFlag() as stop, contextlib.closing(bar):
            while self.epoch < self.cfg["epochs"] and self.stopped_by is None:
                self.run_epoch(bar, lambda: self._should_stop(stop, start))
                self.elapsed = time.time() - start
                if self.step >= self.steps_per_epoch:
                    self.end_epoch()
                self.checkpoint()
        return self.finish(start, stop.signal)

    def _should_stop(self, stop: _StopFlag, start: float) -> bool:
        self.elapsed = time.time() - start
        over_time = self.cfg["max_minutes"] is not None and self.elapsed > 60 * self.cfg["max_minutes"]
        if self.ctx.any(stop.signal is not None or over_time):
            self.stopped_by = "time budget" if over_time else "signal"
        return self.stopped_by is not None

    def run_epoch(self, bar: tqdm, should_stop) -> None:
        """Steps from self.step to the end of the epoch (or until `should_stop()` after an update)."""
        cfg = self.cfg
        set_trainable(self.model, trainable_layers(cfg, len(self.model.layers), self.epoch))
        perm = torch.randperm(len(self.train_set),
                              generator=torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + self.epoch))
        running, count = torch.zeros((), device=self.device), 0     # summed on the device: no sync per step
        bar.set_description(f"epoch {self.epoch + 1}/{cfg['epochs']}")
        t_loop = time.time()
        batches = EpochBatches(self.train_set, perm, self.epoch, cfg["batch_size"], cfg, self.ctx.rank, self.ctx.world)
        with contextlib.closing(prefetched(batches, self.step, self.steps_per_epoch, cfg["prefetch"],
                                           cfg["data_workers"], device_type=self.device.type)) as stream:
            for x, y, gen in stream:
                self.lr = lr = learning_rate(cfg, self.epoch + self.step / self.steps_per_epoch)
                running += self.train_step(x, y, gen, lr)
                count += 1
                self.step += 1
                self.images_seen += len(y)
                updated = self.step % self.acc == 0
                if count % SYNC_EVERY == 0 or self.step == self.steps_per_epoch or (
                        updated and (self.step // self.acc) % cfg["checkpoint_every_steps"] == 0):
                    self._check_loss(running.item(), count, bar, lr)
                bar.update(1)
                if updated and should_stop():
                    break
                if updated and (self.step // self.acc) % cfg["checkpoint_every_steps"] == 0 \
                        and self.step < self.steps_per_epoch:
                    self.checkpoint()
        self.loop_seconds += time.time() - t_loop
        self.epoch_loss = running.item() / max(1, count)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, lr: float) -> torch.Tensor:
        """Forward, backward, and (every `accumulate` steps) an optimiser update; the loss, detached."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        sync = not self.ctx.active or self.step % self.acc == self.acc - 1   # DDP: all-reduce on the last micro-step
        use_bf16 = self.device.type == "cuda" and self.cfg["bf16"]
        with contextlib.nullcontext() if sync else self.step_loss.no_sync():  # type: ignore[operator]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, _, _ = self.step_loss(x, y, gen)
            (loss / self.acc).backward()
        if self.step % self.acc == self.acc - 1:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _check_loss(self, loss_sum: float, count: int, bar: tqdm, lr: float) -> None:
        """Stop on a non-finite loss (a NaN anywhere in the epoch makes the sum NaN); show the mean."""
        if not math.isfinite(loss_sum):
            raise TrainingStopped(f"loss is {loss_sum} at epoch {self.epoch + 1}, step {self.step}; stopping. "
                                  f"The last good checkpoint in {self.ckpt_dir} is intact (lower lr or check "
                                  "the data)")
        bar.set_postfix(loss=f"{loss_sum / count:.4f}", lr=f"{lr:.2e}")

    def end_epoch(self) -> None:
        """Test accuracy, one history row, the CSV log (and TensorBoard); next epoch."""
        metrics = evaluate_accuracy(self.model, self.test_set, self.cfg["eval_batch_size"], self.device, ctx=self.ctx)
        self.history.append(dict(epoch=self.epoch + 1, train_loss=self.epoch_loss, test_top1=metrics["top1"],
                                 test_top5=metrics["top5"], lr=self.lr, seconds=round(self.elapsed, 1)))
        if self.progress:
            tqdm.write(f"epoch {self.epoch + 1}: train loss {self.epoch_loss:.4f}, test top-1 {metrics['top1']:.4f}, "
                       f"top-5 {metrics['top5']:.4f} ({self.elapsed:.0f} s)")
        self.epoch, self.step = self.epoch + 1, 0
        self.write_log()

    def write_log(self) -> None:
        if not self.ctx.main:
            return
        if self.board is not None and self.history:
            for key in ("train_loss", "test_top1", "test_top5", "lr"):
                self.board.add_scalar(key, self.history[-1][key], self.history[-1]["epoch"])
            self.board.flush()
        with atomic_path(os.path.join(self.out_dir, "log.csv")) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "train_loss", "test_top1", "test_top5", "lr", "seconds"])
            w.writeheader()
            w.writerows(self.history)

    def finish(self, start: float, signum: int | None) -> dict:
        """After a signal: a short summary (the checkpoint is written).  Otherwise: final test
        accuracy, model.safetensors and summary.json.  Both close the log and meet at the barrier."""
        if self.board is not None:
            self.board.close()
        if self.stopped_by == "signal":
            if self.ctx.main:
                print(f"stopped by signal {signum} after writing a checkpoint to {self.ckpt_dir}; "
                      "continue with --resume")
            self.ctx.barrier()
            return dict(stopped_by="signal", epoch=self.epoch, step=self.step)
        final = evaluate_accuracy(self.model, self.test_set, self.cfg["eval_batch_size"], self.device, ctx=self.ctx)
        train_seconds = time.time() - start
        images_seen = self.ctx.sum([self.images_seen])[0]
        model = self.model
        summary = dict(
            model=self.cfg["model"], dataset=self.train_set.name, temperature=model.temperature,
            nonlinearity=model.nonlinearity, parameters=model.num_parameters(),
            test_accuracy=final["top1"], test_top5=final["top5"],
            epochs=self.epoch + self.step / self.steps_per_epoch, train_seconds=round(train_seconds, 1),
            images_per_second=round(images_seen / max(1e-9, self.loop_seconds), 1),
            train_images=len(self.train_set), test_images=len(self.test_set), stopped_by=self.stopped_by,
            device=str(self.device), processes=self.ctx.world, history=self.history)
        if self.ctx.main:
            save_checkpoint(os.path.join(self.out_dir, "model.safetensors"), model, None,
                            dict(config=self.cfg, dataset=self.train_set.name, classes=self.train_set.classes,
                                 history=self.history))
            write_json(os.path.join(self.out_dir, "summary.json"), summary)
            if self.cfg["init_from"]:
                write_card(self.out_dir, self.cfg, summary, self.train_set.classes)
        self.ctx.barrier()
        return summary


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
