"""The localisation metric (paper sec. 4.2, eq. 11; docs/evaluation.md).

n x n grids of test images that the model classifies correctly and confidently, one class per
cell.  For each class c in a grid, the attribution for c over the whole grid image, clamped at 0,
is summed per cell: s_c = (positive mass in c's cell) / (total positive mass).  Oracle: 1,
uniform: 1/n^2.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from ..train.distributed import Context
from ..utils.io import append_line

if TYPE_CHECKING:
    from ..explain.baselines import Attribution
    from ..models import CoDANet


@torch.no_grad()
def confident_images(model: CoDANet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
                     ctx: Context | None = None) -> dict:
    """Per class: indices of correctly classified images with sigmoid(logit) > 0.5, sorted by
    decreasing logit, equal logits by index.  The logits come from a float64 copy of the model:
    float32 logits carry errors (~1e-5) larger than the gaps between neighbours in a class's ranking
    (~1e-6), and their order changed from one process to the next, which moved cells of the random
    protocol's grids (docs/evaluation.md).  With a distributed `ctx`, each rank classifies
    images[rank::world]."""
    exact = copy.deepcopy(model).double()
    mine = (ctx.shard(images) if ctx is not None and ctx.active else images).double()
    logits = torch.cat([exact(mine[i:i + batch_size]) for i in range(0, len(mine), batch_size)]
                       or [torch.empty(0, model.num_classes, dtype=torch.float64)])   # (N, classes)
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
            out[c] = idx[own[idx].argsort(descending=True, stable=True)].tolist()
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


def score_grid(method: Attribution, images: torch.Tensor, cells, n: int, all_classes=None) -> list[float]:
    """The localisation score s_c of every cell's class c in one grid (row-major); `all_classes`:
    the method's `attribute_all_classes` (`_all_classes`), or None for n*n attribution passes."""
    targets = torch.tensor([c for c, _ in cells])
    if all_classes is not None:            # one pass (one perturbation sweep) serves every cell's class
        maps = all_classes(grid_image(images, cells, n)[None])[0, targets.to(images.device)]
    else:
        g = grid_image(images, cells, n)[None].expand(n * n, -1, -1, -1)
        maps = method.attribute(g.contiguous(), target=targets)     # (n*n, nH, nW)
    share = cell_scores(maps, n)                                     # (n*n, n*n)
    return [float(share[k, k]) for k in range(len(cells))]


def journaled_scores(method: Attribution, images: torch.Tensor, grids, indices, n: int, progress: bool = True,
                     journal: str | None = None) -> dict[int, dict]:
    """{i: {"grid": i, "scores": `score_grid`, "seconds"}} for the grids[i] named by `indices`.
    With `journal` (a file) each grid is appended there, fsynced, as soon as it is scored, so a run
    stopped mid-way keeps every finished grid (`read_journal`)."""
    out = {}
    all_classes = _all_classes(method)
    for i in tqdm(indices, desc=f"localisation {getattr(method, 'name', '')}", disable=not progress, leave=False):
        start = time.perf_counter()
        scores = score_grid(method, images, grids[i], n, all_classes)
        out[i] = dict(grid=i, scores=scores, seconds=time.perf_counter() - start)
        if journal:
            append_line(journal, json.dumps(out[i]))
    return out


def grid_scores(method: Attribution, images: torch.Tensor, grids, n: int, progress: bool = True) -> list[list[float]]:
    """For each grid, the localisation score s_c of every cell's class c (row-major)."""
    return [e["scores"] for e in journaled_scores(method, images, grids, range(len(grids)), n, progress).values()]


def read_journal(stem: str) -> dict[int, dict]:
    """The grids an earlier, stopped run finished, from every `<stem>.<rank>.jsonl` (one per
    torchrun rank): {grid index: entry}.  A line the stop cut short is skipped (measured again)."""
    done = {}
    for path in sorted(glob.glob(glob.escape(stem) + ".*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[entry["grid"]] = entry
    return done


def clear_journal(stem: str) -> None:
    """Remove the journal once the finished result is kept elsewhere."""
    for path in glob.glob(glob.escape(stem) + ".*.jsonl"):
        os.remove(path)


def localisation(model: CoDANet, method: Attribution, images: torch.Tensor, labels: torch.Tensor,
                 grid_size: int = 3, grids: int = 500, seed: int = 0, class_names: list[str] | None = None,
                 progress: bool = True, grid_cells: list | None = None, ctx: Context | None = None,
                 selection: str = "most_confident", journal: str | None = None) -> dict:
    """Score one attribution method on `grids` grids of grid_size x grid_size images (or on the
    given `grid_cells`, from `make_grids`); returns mean, std, per-class means, all scores
    (`scores`, cell by cell) and their means per grid (`grid_means`, the bootstrap's units), and
    the cost: model evaluations and seconds per grid (one sweep when the method offers
    `attribute_all_classes`, n*n attribution passes otherwise).  `journal` (a path stem, one per
    method and set of grids): every scored grid is kept there at once, and a stopped call, made
    again, scores only the grids not yet kept (`scores_with_journal`).

    With a distributed `ctx` (torchrun), every rank scores its share of the grids and the scores
    are gathered, so each rank returns the same result as one process would."""
    n = grid_size
    grids_ = grid_cells if grid_cells is not None else make_grids(confident_images(model, images, labels), n,
                                                                   grids, seed, selection)
    entries = scores_with_journal(method, images, grids_, n, progress, ctx or Context(), journal)
    per_grid = [entries[i]["scores"] for i in range(len(grids_))]
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
                seconds_per_grid=sum(e["seconds"] for e in entries.values()) / max(1, len(grids_)),
                evaluations_per_grid=sweeps * getattr(method, "evaluations_per_image", 1))


def scores_with_journal(method: Attribution, images: torch.Tensor, grids, n: int, progress: bool, ctx: Context,
                        journal: str | None = None) -> dict[int, dict]:
    """Every grid's entry (`journaled_scores`): those an earlier run kept in `journal`, the rest
    scored now, shared out over the ranks (each appends to its own `<journal>.<rank>.jsonl`) and
    gathered.  The seconds are each grid's own, so a resumed run reports the same cost."""
    done = read_journal(journal) if journal else {}
    ctx.barrier()                        # every rank has read the journal before any appends to it
    todo = ctx.shard([i for i in range(len(grids)) if i not in done])
    mine = journaled_scores(method, images, grids, todo, n, progress, journal and f"{journal}.{ctx.rank}.jsonl")
    for part in ctx.gather(mine):
        done.update(part)
    return done
