"""The localisation metric (paper sec. 4.2, eq. 11; docs/evaluation.md).

n x n grids of test images that the model classifies correctly and confidently, one class per
cell.  For each class c in a grid, the attribution for c over the whole grid image, clamped at 0,
is summed per cell: s_c = (positive mass in c's cell) / (total positive mass).  Oracle: 1,
uniform: 1/n^2.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from ..explain.baselines import Attribution
    from ..models import CoDANet
    from ..train.distributed import Context


@torch.no_grad()
def confident_images(model: CoDANet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
                     ctx: Context | None = None) -> dict:
    """Per class: indices of correctly classified images with sigmoid(logit) > 0.5, sorted by
    decreasing logit.  With a distributed `ctx`, each rank classifies images[rank::world]."""
    mine = ctx.shard(images) if ctx is not None and ctx.active else images
    logits = torch.cat([model(mine[i:i + batch_size]) for i in range(0, len(mine), batch_size)]
                       or [torch.empty(0, model.num_classes)])
    if ctx is not None and ctx.active:
        parts, logits = ctx.gather(logits), torch.empty(len(images), logits.shape[1], dtype=logits.dtype)
        for r, part in enumerate(parts):
            logits[r::ctx.world] = part
    own = logits.gather(1, labels[:, None])[:, 0]
    ok = (logits.argmax(1) == labels) & (torch.sigmoid(own) > 0.5)
    out = {}
    for c in range(model.num_classes):
        idx = torch.nonzero(ok & (labels == c))[:, 0]
        if len(idx):
            out[c] = idx[own[idx].argsort(descending=True)].tolist()
    return out


SELECTIONS = ("most_confident", "random")


class TooFewClasses(ValueError):
    """Fewer classes have confidently and correctly classified test images than a grid has cells
    (e.g. a model whose training collapsed): there are no grids to score."""


def make_grids(pools: dict, n: int, grids: int, seed: int = 0,
               selection: str = "most_confident") -> list[list[tuple[int, int]]]:
    """`grids` grids of n*n (class, image index) cells (n: the grid size); classes distinct within a
    grid, drawn at random (seeded).  selection="most_confident" (the paper's protocol) uses each
    class's images in order of decreasing logit, cycling; "random" in a seeded random order of
    the same pool (correctly and confidently classified images).  The classes per grid do not
    depend on `selection`."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown grid selection {selection!r}; use one of {', '.join(SELECTIONS)}")
    classes = sorted(pools)
    if n * n > len(classes):
        raise TooFewClasses(f"a {n}x{n} grid needs {n * n} distinct classes, but only {len(classes)} classes "
                            "have confidently and correctly classified test images")
    if selection == "random":
        order = np.random.RandomState(seed + 1)
        pools = {c: [pools[c][i] for i in order.permutation(len(pools[c]))] for c in classes}
    rng = np.random.RandomState(seed)
    used = {c: 0 for c in classes}
    out = []
    for _ in range(grids):
        chosen = rng.choice(classes, n * n, replace=False)
        cells = []
        for c in chosen:
            pool = pools[int(c)]
            cells.append((int(c), pool[used[int(c)] % len(pool)]))
            used[int(c)] += 1
        out.append(cells)
    return out


def grid_image(images: torch.Tensor, cells, n: int) -> torch.Tensor:
    """Tile the cell images (C, H, W) into one (C, nH, nW) image, row-major."""
    rows = [torch.cat([images[cells[r * n + k][1]] for k in range(n)], dim=2) for r in range(n)]
    return torch.cat(rows, dim=1)


def cell_sums(x: torch.Tensor, n: int) -> torch.Tensor:
    """(..., nH, nW) -> (..., n*n): the sum over each of the n x n cells, row-major."""
    h, w = x.shape[-2] // n, x.shape[-1] // n
    return x.unflatten(-2, (n, h)).unflatten(-1, (n, w)).sum((-3, -1)).flatten(-2)


def cell_scores(attribution: torch.Tensor, n: int) -> torch.Tensor:
    """(..., nH, nW) map -> (..., n*n) share of positive mass per cell (0 where no positive mass)."""
    per_cell = cell_sums(attribution.clamp_min(0), n)
    total = per_cell.sum(-1, keepdim=True)
    has_mass = total > 0
    return torch.where(has_mass, per_cell / torch.where(has_mass, total, torch.ones_like(total)),
                       torch.zeros_like(per_cell))


def _all_classes(method: Attribution):
    """The method's one-sweep `attribute_all_classes`, or None: then a grid costs n*n passes."""
    return getattr(method, "attribute_all_classes", None)


def grid_scores(method: Attribution, images: torch.Tensor, grids, n: int, progress: bool = True) -> list[list[float]]:
    """For each grid, the localisation score s_c of every cell's class c (row-major)."""
    out = []
    all_classes = _all_classes(method)
    for cells in tqdm(grids, desc=f"localisation {getattr(method, 'name', '')}", disable=not progress, leave=False):
        targets = torch.tensor([c for c, _ in cells])
        if all_classes is not None:        # one pass (one perturbation sweep) serves every cell's class
            maps = all_classes(grid_image(images, cells, n)[None])[0, targets.to(images.device)]
        else:
            g = grid_image(images, cells, n)[None].expand(n * n, -1, -1, -1)
            maps = method.attribute(g.contiguous(), target=targets)     # (n*n, nH, nW)
        share = cell_scores(maps, n)                                 # (n*n, n*n)
        out.append([float(share[k, k]) for k in range(len(cells))])
    return out


def localisation(model: CoDANet, method: Attribution, images: torch.Tensor, labels: torch.Tensor,
                 grid_size: int = 3, grids: int = 500, seed: int = 0, class_names: list[str] | None = None,
                 progress: bool = True, grid_cells: list | None = None, ctx: Context | None = None,
                 selection: str = "most_confident") -> dict:
    """Score one attribution method on `grids` grids of grid_size x grid_size images (or on the
    given `grid_cells`, from `make_grids`); returns mean, std, per-class means, all scores
    (`scores`, cell by cell) and their means per grid (`grid_means`, the bootstrap's units), and
    the cost: model evaluations and seconds per grid (one sweep when the method offers
    `attribute_all_classes`, n*n attribution passes otherwise).

    With a distributed `ctx` (torchrun), every rank scores grids[rank::world] and the scores are
    gathered, so each rank returns the same result as one process would."""
    n = grid_size
    grids_ = grid_cells if grid_cells is not None else make_grids(confident_images(model, images, labels), n,
                                                                   grids, seed, selection)
    start = time.perf_counter()
    if ctx is not None and ctx.active:
        mine = ctx.shard(grids_)
        per_grid = ctx.unshard(ctx.gather(grid_scores(method, images, mine, n, progress)))
        seconds = ctx.sum([time.perf_counter() - start])[0] / max(1, len(grids_))
    else:
        per_grid = grid_scores(method, images, grids_, n, progress)
        seconds = (time.perf_counter() - start) / max(1, len(grids_))
    scores = [s for row in per_grid for s in row]
    classes = [c for cells in grids_ for c, _ in cells]
    scores_np, classes_np = np.array(scores), np.array(classes)
    per_class = {}
    for c in sorted(set(classes)):
        name = class_names[c] if class_names else str(c)
        per_class[name] = float(scores_np[classes_np == c].mean())
    sweeps = 1 if _all_classes(method) is not None else n * n
    return dict(mean=float(scores_np.mean()), std=float(scores_np.std()), grid_size=n, grids=len(grids_),
                per_class=per_class, scores=scores, grid_means=[float(np.mean(row)) for row in per_grid],
                seconds_per_grid=seconds, evaluations_per_grid=sweeps * getattr(method, "evaluations_per_image", 1))
