"""Training batches built ahead of time, so data loading overlaps the training step.

Every batch is a pure function of (epoch permutation, step): `EpochBatches(step)` draws its
augmentation from a generator seeded by (seed, epoch, step, rank) and hands that generator on to
the loss (which draws the random "other class" of eq. 10 from it).  Batches are therefore the
same whether they are built inline, in a background thread or in worker processes, and a resumed
run sees exactly the batches an uninterrupted one would.

    prefetch = "auto"       "processes" for image files when training on a GPU, else "none"
                            (`codanet bench training`, 2 CPU cores: an in-memory batch takes ~1 ms
                            against a 175-360 ms step, and a thread slows the loop to 0.83-0.87x;
                            decoding JPEGs takes 5-7 % of a step, a thread gave 0.90-1.04x in three
                            runs, two worker processes compete with the step for the cores:
                            0.61-0.76x)
             = "none"       build each batch in the training loop
             = "thread"     one background thread keeps `depth` batches ready (in-memory datasets:
                            the augmentation's tensor ops release the GIL)
             = "processes"  `workers` processes (torch DataLoader) for datasets that decode image
                            files (TinyImagenet, ImageNet) when the CPU cores are not busy training
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .augment import make_batch

PREFETCH = ("auto", "none", "thread", "processes")


def batch_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one (epoch, step, rank): augmentation, then the loss's random classes."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1009 + rank)


class EpochBatches(torch.utils.data.Dataset):
    """Step -> (images, labels, generator state) for one epoch of one rank (picklable)."""

    def __init__(self, dataset, perm: torch.Tensor, epoch: int, batch_size: int, cfg: dict,
                 rank: int = 0, world: int = 1):
        self.dataset, self.perm, self.epoch, self.bs = dataset, perm, epoch, batch_size
        self.rank, self.world = rank, world
        self.seed, self.augment, self.crop_padding = cfg["seed"], cfg["augment"], cfg["crop_padding"]
        self.ra_n, self.ra_m = cfg["randaugment_n"], cfg["randaugment_m"]

    def __len__(self) -> int:
        return len(self.perm) // self.bs

    def __getitem__(self, step: int):
        gen = batch_generator(self.seed, self.epoch, step, self.rank)
        idx = self.perm[step * self.bs:(step + 1) * self.bs][self.rank::self.world]
        x = make_batch(self.dataset, idx, self.augment, gen, self.crop_padding, self.ra_n, self.ra_m)
        return x, self.dataset.labels[idx], gen.get_state()


def _with_generator(item):
    x, y, state = item
    gen = torch.Generator()
    gen.set_state(state)
    return x, y, gen


class _Steps(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def prefetched(batches: EpochBatches, start: int, stop: int, prefetch: str = "auto", workers: int = 2,
               depth: int = 2, device_type: str = "cpu"):
    """Yield (images, labels, generator) for steps start..stop-1, in order.

    Close the generator when leaving early (`contextlib.closing`): that cancels the batches
    built ahead and stops the thread or worker processes."""
    if prefetch not in PREFETCH:
        raise ValueError(f"prefetch must be one of {', '.join(PREFETCH)}, got {prefetch!r}")
    if prefetch == "auto":
        files = batches.dataset.paths is not None
        prefetch = "processes" if files and device_type == "cuda" else "none"
    if prefetch == "none":
        for step in range(start, stop):
            yield _with_generator(batches[step])
    elif prefetch == "thread":
        pool = ThreadPoolExecutor(1, thread_name_prefix="codanet-batches")
        try:
            pending = [pool.submit(batches.__getitem__, s) for s in range(start, min(stop, start + depth))]
            for step in range(start, stop):
                item = pending.pop(0).result()
                if step + depth < stop:
                    pending.append(pool.submit(batches.__getitem__, step + depth))
                yield _with_generator(item)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=_Steps(start, stop),
                                             num_workers=workers, prefetch_factor=depth)
        for item in loader:
            yield _with_generator(item)
