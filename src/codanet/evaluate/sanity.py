"""Sanity check by cascading randomisation (Adebayo et al., NeurIPS 2018; docs/evaluation.md).

An explanation should be about the model: re-draw the model's layers at random from the top (the
class layer) down, one more at a time, and the maps should stop resembling the trained model's.
For each method and depth k (k top layers re-drawn; k = 0 is the trained model) we compare
|map| of every image with the trained model's |map| for the same image and class by Spearman's
rank correlation and SSIM (both maps scaled to [0, 1] by their maximum).  A method passes when
its mean Spearman correlation with all layers re-drawn is below `PASS_BELOW`.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from ..explain.baselines import make_methods
from ..explain.plot import new_figure, save_figure, show_image

if TYPE_CHECKING:
    from ..models import CoDANet

PASS_BELOW = 0.5


def randomised(model: CoDANet, depth: int, seed: int = 0) -> CoDANet:
    """A copy of `model` whose top `depth` DAU layers are re-drawn with their initial
    distribution (`reset_parameters`).  Cascading: the layers are drawn top first from one seeded
    generator, so the re-drawn layers of depth k are also those of depth k + 1."""
    out = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    for layer in list(reversed(out.blocks()))[:depth]:
        layer.reset_parameters(generator)
    return out


def similarities(reference: torch.Tensor, other: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image (N, H, W): Spearman correlation and SSIM of the |maps| (NaN where a map is constant)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    spearman, ssim = [], []
    for a, b in zip(reference.abs().double().cpu().numpy(), other.abs().double().cpu().numpy()):
        if a.max() == a.min() or b.max() == b.min():
            spearman.append(math.nan)
            ssim.append(math.nan)
            continue
        spearman.append(float(spearmanr(a.ravel(), b.ravel()).statistic))
        side = min(a.shape)
        window = 7 if side >= 7 else side - (1 - side % 2)                 # odd, at most the map's side
        ssim.append(float(structural_similarity(a / a.max(), b / b.max(), data_range=1.0, win_size=window)))
    return np.array(spearman), np.array(ssim)


def cascading_randomisation(model: CoDANet, methods: list[str], images: torch.Tensor, labels: torch.Tensor,
                            seed: int = 0, method_options: dict | None = None, progress: bool = True) -> dict:
    """Scores (mean Spearman and SSIM per depth) and the maps themselves for every method.

    Returns dict(depths, layers, scores={method: dict(spearman, ssim, passes)}, maps={method:
    (depths, N, H, W) tensor}); targets are the true labels at every depth."""
    depths = list(range(len(model.blocks()) + 1))
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in methods}
    for k in tqdm(depths, desc="randomised layers", disable=not progress, leave=False):
        attributions = make_methods(randomised(model, k, seed), methods, images.shape[-1], **(method_options or {}))
        for name, method in attributions.items():
            maps[name].append(method.attribute(images, target=labels).float().cpu())
    scores = {}
    for name, per_depth in maps.items():
        pairs = [similarities(per_depth[0], m) for m in per_depth]
        spearman = [float(np.nanmean(s)) if np.isfinite(s).any() else math.nan for s, _ in pairs]
        ssim = [float(np.nanmean(s)) if np.isfinite(s).any() else math.nan for _, s in pairs]
        scores[name] = dict(spearman=spearman, ssim=ssim, passes=bool(spearman[-1] < PASS_BELOW))
    return dict(depths=depths, layers=len(depths) - 1, scores=scores,
                maps={name: torch.stack(m) for name, m in maps.items()})


def plot_sanity_maps(result: dict, images: torch.Tensor, path: str, index: int = 0) -> str:
    """Rows = methods, columns = number of top layers re-drawn; |map| of one image, each panel
    scaled to its own maximum (grey, as in the original paper)."""
    names, depths = list(result["maps"]), result["depths"]
    fig, axes = new_figure(len(names), len(depths) + 1, figsize=(1.1 * (len(depths) + 1), 1.15 * len(names)),
                           squeeze=False)
    for r, name in enumerate(names):
        show_image(axes[r, 0], images[index])
        axes[r, 0].set_ylabel(name, fontsize=8)
        for c, k in enumerate(depths):
            m = result["maps"][name][k, index].abs()
            axes[r, c + 1].imshow(m.numpy(), cmap="gray", vmin=0, vmax=float(m.max()) or 1.0,
                                  interpolation="nearest")
            axes[r, c + 1].set_xticks([]), axes[r, c + 1].set_yticks([])
            if r == 0:
                axes[r, c + 1].set_title("trained" if k == 0 else f"top {k}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sanity_scores(result: dict, path: str, title: str = "") -> str:
    """Mean Spearman and SSIM with the trained model's map against the number of re-drawn layers."""
    fig, axes = new_figure(1, 2, figsize=(9, 3.2))
    for name, s in result["scores"].items():
        style = dict(lw=2.2, color="tab:red") if name == "CoDA" else dict(lw=1.1)
        axes[0].plot(result["depths"], s["spearman"], marker="o", ms=3, label=name, **style)
        axes[1].plot(result["depths"], s["ssim"], marker="o", ms=3, label=name, **style)
    for ax, what in zip(axes, ("Spearman rank correlation", "SSIM")):
        ax.set_xlabel("top layers re-drawn at random")
        ax.set_ylabel(f"{what} with the trained model's |map|", fontsize=8)
        ax.set_ylim(-0.1, 1.02)
    axes[0].axhline(PASS_BELOW, ls="--", color="k", lw=0.7)
    axes[1].legend(fontsize=6.5, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
