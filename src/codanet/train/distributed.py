"""Multi-process training and evaluation on torch.distributed (launched with torchrun).

`torchrun --nproc_per_node=N -m codanet train CONFIG` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*;
we initialise gloo on CPU and NCCL on GPU.  The config's batch_size is the *global* batch: each
rank takes every world-th image of it, and DistributedDataParallel averages the gradients, so N
ranks compute the same update as one process with the full batch.  Multi-node: run torchrun on
every node with --nnodes, --node_rank and a shared --rdzv_endpoint (see the README).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Context:
    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Sum numbers over ranks (identity with one process)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects; [obj] with one process)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def shard(self, items):
        """This rank's share of a sequence: items[rank::world]."""
        return items[self.rank::self.world]

    def unshard(self, parts: list[list]) -> list:
        """Inverse of shard: interleave the per-rank lists back into the original order."""
        out: list = []
        for i in range(max(map(len, parts), default=0)):
            out.extend(p[i] for p in parts if i < len(p))
        return out

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0

    def barrier(self):
        if self.active:
            dist.barrier()


def setup(device: torch.device) -> Context:
    """A Context from torchrun's environment (single process when WORLD_SIZE is unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Context(rank, dist.get_world_size(), device)


def teardown() -> None:
    """Destroy the process group if one was created (a gloo group left to the interpreter's exit
    can abort the process: "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
