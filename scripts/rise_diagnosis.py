"""Why RISE localises near the uniform 1/9 on the ResNet but not on the CoDA-Net
(docs/paper-vs-codanet.md, "ResNet baseline").

    .venv/bin/python scripts/rise_diagnosis.py [--weights coda_cpu:fashion_mnist_20ep]
        [--resnet scripts/weights/resnet56-fashion_mnist.safetensors] [--grids 3] [--masks 2000]
        [--p 0.1,0.5] [--out runs/rise_diagnosis]

RISE's map of class k is E_m[s_k(x * M_m) M_m] / p (docs/evaluation.md), positive wherever a mask
keeps pixels: it localises as far as the score s_k = sigmoid(logit_k) rises with how much of class
k's cell a mask keeps and falls with how much of the other cells it keeps.  On the
first `--grids` grids of the ResNet comparison (most confident images both models classify
correctly; the same grids for both models), for each model and keep-probability p this prints, over
the nine cell classes and `--masks` masks:
  - the mean score and the share of (mask, class) pairs whose score is below 0.01,
  - the spread of each class's score across masks, std / mean (scale-free: RISE's map is a
    score-weighted mean of the masks, so a score that barely varies weights all masks alike and
    gives the uniform 1/9 per cell),
  - the correlation between s_k and the share of its own cell the mask keeps, and between s_k and
    the share of the eight other cells it keeps (a score that rises with everything visible weights
    masks that keep much of every cell, and the map spreads),
  - the RISE localisation score from these masks (p = 0.1 is our recipe; the original RISE uses 0.5).
A third model, `CellReader`, reads each class from its own cell alone and ignores the others: a
reference for a model that uses exactly the right evidence (a model whose score also falls with
foreign evidence, as the CoDA-Net's does, gets more from RISE).
Writes OUT/rise_diagnosis.json (atomically).
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn

from codanet.evaluate.localisation import cell_scores, cell_sums, grid_image, make_grids
from codanet.evaluate.runner import load_for_evaluation
from codanet.explain.baselines import RISE
from codanet.models.coda_net import encode
from codanet.utils.io import write_json
from resnet_baseline import RESNET_FASHION_MNIST, both_confident, load_resnet


class CellReader(nn.Module):
    """logit_c = 20 * (mean pixel of the cell where class c sits) - 5, -5 for absent classes: a model
    that uses exactly the right evidence.  `where` (the grid's classes, row-major) is set per grid."""

    name = "cell_reader"

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.num_classes, self.in_channels, self.where = num_classes, in_channels, torch.arange(9)

    def forward_encoded(self, x_encoded: torch.Tensor) -> torch.Tensor:
        x = x_encoded[:, :x_encoded.shape[1] // 2].mean(1, keepdim=True)          # (B, 1, H, W)
        logits = x.new_full((len(x), self.num_classes), -5.0)
        logits[:, self.where] = 20 * F.adaptive_avg_pool2d(x, 3).flatten(1) - 5     # (B, 9) cell means
        return logits


def kept_share(masks: torch.Tensor, n: int) -> torch.Tensor:
    """(M, nH, nW) masks -> (M, n*n): the mean mask value in each grid cell, row-major."""
    return cell_sums(masks, n) / (masks.shape[-2] // n * (masks.shape[-1] // n))


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two (M,) vectors; 0 where one is constant."""
    return torch.corrcoef(torch.stack([a, b]))[0, 1].nan_to_num().item()


def diagnose(model, images, grids, masks: int, p: float) -> dict:
    """Score statistics and localisation of RISE (`masks` masks, keep-probability `p`) on `grids`."""
    rise = RISE(model, masks=masks, p=p)
    per_grid = []
    for cells in grids:
        x = grid_image(images, cells, 3)[None]                                   # (1, C, 84, 84)
        targets = torch.tensor([c for c, _ in cells])
        if isinstance(model, CellReader):
            model.where = targets
        s = rise.scores(encode(x))[:, targets]                                  # (M, 9): s_k of cell k's class
        m = rise.masks(*x.shape[2:])                                            # (M, 84, 84)
        kept = kept_share(m, 3)                                                 # (M, 9)
        others = kept.sum(1, keepdim=True) - kept                                # (M, 9): the other cells' share
        maps = torch.einsum("mk,mhw->khw", s, m)                                # RISE's maps (scale irrelevant)
        per_grid.append(dict(
            mean_score=s.mean().item(), below_001=(s < 0.01).float().mean().item(),
            spread=(s.std(0) / s.mean(0).clamp_min(1e-30)).mean().item(),
            corr=sum(correlation(s[:, k], kept[:, k]) for k in range(9)) / 9,
            corr_others=sum(correlation(s[:, k], others[:, k]) for k in range(9)) / 9,
            localisation=cell_scores(maps, 3).diagonal().mean().item(), class_means=s.mean(0).tolist()))
    mean = {key: sum(g[key] for g in per_grid) / len(per_grid)
            for key in ("mean_score", "below_001", "spread", "corr", "corr_others", "localisation")}
    return dict(model=model.name, p=p, masks=masks, **mean, per_grid=per_grid)


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--weights", default="coda_cpu:fashion_mnist_20ep")
    a.add_argument("--resnet", default=RESNET_FASHION_MNIST)
    a.add_argument("--grids", type=int, default=3)
    a.add_argument("--masks", type=int, default=2000)
    a.add_argument("--p", default="0.1,0.5")
    a.add_argument("--out", default="runs/rise_diagnosis")
    args = a.parse_args()
    coda, images, labels, test = load_for_evaluation(args.weights)
    resnet = load_resnet(args.resnet, test)
    grids = make_grids(both_confident(coda, resnet, images, labels), 3, args.grids, 0, "most_confident")
    rows = [diagnose(model, images, grids, args.masks, float(p)) for p in args.p.split(",")
            for model in (coda, resnet, CellReader(coda.num_classes, coda.in_channels))]
    print("| model | p | mean score | scores < 0.01 | spread (std / mean) | corr(s_k, kept share of cell k) "
          "| corr(s_k, kept share of the other cells) | RISE localisation |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['p']} | {r['mean_score']:.3f} | {r['below_001']:.2f} | {r['spread']:.2f} "
              f"| {r['corr']:.2f} | {r['corr_others']:.2f} | {r['localisation']:.3f} |")
    path = os.path.join(args.out, "rise_diagnosis.json")
    write_json(path, dict(weights=args.weights, resnet=args.resnet, grids=grids, rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
