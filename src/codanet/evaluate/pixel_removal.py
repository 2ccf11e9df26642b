"""The pixel-removal metric (paper sec. 4.2, Fig. 6 bottom; docs/evaluation.md).

Pixels are sorted by their channel-summed attribution for the true class, least important first
(or most important first) and removed -- all encoded channels zeroed -- up to `fraction` (25 %) of
the pixels in `steps` (128) even steps.  We track sigmoid(logit of the true class); the area is the
mean probability over the steps (the normalised area under the curve).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from ..models.coda_net import encode
from ..utils.io import atomic_path

if TYPE_CHECKING:
    from ..explain.baselines import Attribution
    from ..models import CoDANet
    from ..train.distributed import Context


def removal_order(attribution: torch.Tensor, most_first: bool = False, seed: int = 0) -> torch.Tensor:
    """(N, H, W) -> (N, H*W) pixel indices in removal order; ties broken by a seeded permutation."""
    flat = attribution.flatten(1)
    perm = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed)).to(flat.device)
    keyed = -flat[:, perm] if most_first else flat[:, perm]
    return perm[keyed.argsort(dim=1, stable=True)]


def removal_counts(num_pixels: int, fraction: float = 0.25, steps: int = 128) -> list[int]:
    """Pixels removed at each of the steps+1 points (0 included)."""
    return [int(round(v)) for v in np.linspace(0, fraction * num_pixels, steps + 1)]


@torch.no_grad()
def probability_curves(model: CoDANet, images: torch.Tensor, targets: torch.Tensor, order: torch.Tensor,
                       counts, batch_size: int = 512) -> torch.Tensor:
    """Target probability of every image after removing order[:, :k] for every k in counts
    -> (N, len(counts))."""
    enc = encode(images)
    n, _, h, w = enc.shape
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w, device=order.device).expand(n, -1))   # position -> rank
    curves = []
    for k in counts:
        keep = (ranks >= k).view(n, 1, h, w).to(enc.dtype)
        probs = []
        for s in range(0, n, batch_size):
            logits = model.forward_encoded(enc[s:s + batch_size] * keep[s:s + batch_size])
            probs.append(torch.sigmoid(logits.gather(1, targets[s:s + batch_size, None])[:, 0]))
        curves.append(torch.cat(probs))
    return torch.stack(curves, 1)


def probability_curve(model: CoDANet, images: torch.Tensor, targets: torch.Tensor, order: torch.Tensor,
                      counts, batch_size: int = 512) -> torch.Tensor:
    """Mean target probability after removing order[:, :k] for every k in counts -> (len(counts),)."""
    return probability_curves(model, images, targets, order, counts, batch_size).mean(0)


def attribution_maps(method: Attribution, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64,
                     progress: bool = True, path: str | None = None) -> torch.Tensor:
    """(N, H, W) maps of `method` for the true labels, in batches.  With `path` the maps are kept
    there (written atomically) and read back when a later call asks for the same number of images,
    so the second removal order costs no second perturbation sweep (Occ-K, RISE, LIME).  Until
    all are done, the finished batches are kept in `path`.partial, so a stopped call resumes."""
    if path and os.path.isfile(path):
        kept = torch.load(path, map_location=images.device)
        if kept.shape[0] == len(images):
            return kept
    partial = path and path + ".partial"
    maps = _finished_batches(partial, len(images), batch_size, images.device)
    done = sum(len(m) for m in maps)
    for s in tqdm(range(done, len(images), batch_size), desc=f"attributions {getattr(method, 'name', '')}",
                  disable=not progress, leave=False):
        maps.append(method.attribute(images[s:s + batch_size], target=labels[s:s + batch_size]).detach())
        if partial and s + batch_size < len(images):
            _save(torch.cat(maps), partial)
    out = torch.cat(maps) if maps else images.new_zeros(0, *images.shape[2:])
    if path:
        _save(out, path)
        if partial and os.path.isfile(partial):
            os.remove(partial)
    return out


def _finished_batches(partial: str | None, n: int, batch_size: int, device) -> list[torch.Tensor]:
    """[maps of the batches a stopped `attribution_maps` finished], or [] (none, or another batching)."""
    if not partial or not os.path.isfile(partial):
        return []
    kept = torch.load(partial, map_location=device)
    return [kept] if len(kept) < n and len(kept) % batch_size == 0 else []


def _save(maps: torch.Tensor, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(maps.cpu(), tmp)


def pixel_removal(model: CoDANet, method: Attribution, images: torch.Tensor, labels: torch.Tensor,
                  fraction: float = 0.25,
                  steps: int = 128, most_first: bool = False, batch_size: int = 64, progress: bool = True,
                  ctx: Context | None = None, maps_path: str | None = None) -> dict:
    """Curve and area for one method on `images` with targets = true labels, and every image's
    own area (`areas`, the bootstrap's units, in the order of `images`).  `maps_path`: where to
    keep the attributions for the other order (`attribution_maps`).

    With a distributed `ctx` (torchrun), every rank takes images[rank::world] and the curves are
    averaged over all images, so each rank returns what one process would (up to float rounding)."""
    num_pixels = images.shape[2] * images.shape[3]
    counts = removal_counts(num_pixels, fraction, steps)
    if ctx is not None and ctx.active:
        images, labels = ctx.shard(images), ctx.shard(labels)
        maps_path = maps_path and f"{maps_path}.rank{ctx.rank}of{ctx.world}"
    maps = attribution_maps(method, images, labels, batch_size, progress, maps_path)
    if len(maps):
        curves = probability_curves(model, images, labels, removal_order(maps, most_first), counts)
    else:                                     # more ranks than images
        curves = torch.zeros(0, len(counts))
    rows = curves.double().cpu().tolist()
    if ctx is not None and ctx.active:
        rows = ctx.unshard(ctx.gather(rows))
    curve = torch.tensor(rows, dtype=torch.float64).mean(0)
    return dict(fractions=[c / num_pixels for c in counts], curve=curve.tolist(),
                area=float(curve.mean()), final=float(curve[-1]), most_first=most_first,
                areas=[sum(r) / len(r) for r in rows])
