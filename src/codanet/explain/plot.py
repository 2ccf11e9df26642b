"""Contribution maps as pictures: red = positive, blue = negative, symmetric colour scale."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..models import CoDANet


def new_figure(rows: int = 1, cols: int = 1, figsize=None, **subplots):
    """(figure, axes) that belong to no pyplot backend: codanet never changes the plotting backend
    of a notebook or script that imports it; `save_figure` writes the file."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **subplots)


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) grey or (H, W, 3) RGB for imshow."""
    x = x.detach().cpu().float()
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1).numpy()


def show_contributions(ax, contributions: torch.Tensor, scale: float | None = None):
    """Heatmap of an (H, W) map on `ax`, symmetric around 0 (bwr colormap)."""
    c = contributions.detach().cpu().float().numpy()
    scale = scale or float(np.abs(c).max()) or 1.0
    im = ax.imshow(c, cmap="bwr", vmin=-scale, vmax=scale, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    return im


def show_image(ax, x: torch.Tensor):
    img = to_numpy_image(x)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])


def save_figure(fig, path: str) -> str:
    """Save a figure atomically (temp file + rename)."""
    from ..utils.io import atomic_path
    path = str(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.rsplit(".", 1)[-1])
    return path


def plot_contribution_map(image: torch.Tensor, contributions: torch.Tensor, path: str | None = None, title: str = ""):
    """Image beside its contribution map (red positive, blue negative); saved to `path` if given."""
    fig, axes = new_figure(1, 2, figsize=(5.2, 2.8))
    show_image(axes[0], image)
    axes[0].set_title("input", fontsize=9)
    im = show_contributions(axes[1], contributions)
    axes[1].set_title(title or "contributions", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_explanation_grid(model: CoDANet, images: torch.Tensor, labels: torch.Tensor,
                          class_names: list[str] | None, path: str, columns: int = 4, title: str = "") -> str:
    """Paper Fig. 2 layout: per image, the input (true / predicted class), the contribution map
    for the predicted class and for the strongest other class; shared symmetric colour scale
    per image.  `images` (N, C, H, W) in [0, 1]."""
    n = len(images)
    with torch.no_grad():
        logits = model(images)
    pred = logits.argmax(1)
    other = logits.clone()
    other[torch.arange(n), pred] = -float("inf")
    other = other.argmax(1)
    c_pred = model.explain(images, target=pred)["contributions"]
    c_other = model.explain(images, target=other)["contributions"]
    rows = math.ceil(n / columns)
    fig, axes = new_figure(rows, 3 * columns, figsize=(1.55 * 3 * columns, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    name = lambda i: class_names[i] if class_names else str(i)  # noqa: E731
    for i in range(n):
        r, c = divmod(i, columns)
        a0, a1, a2 = axes[r, 3 * c], axes[r, 3 * c + 1], axes[r, 3 * c + 2]
        for ax in (a0, a1, a2):
            ax.axis("on")
        scale = float(max(c_pred[i].abs().max(), c_other[i].abs().max())) or 1.0
        show_image(a0, images[i])
        ok = "" if pred[i] == labels[i] else " (x)"
        a0.set_title(f"true: {name(int(labels[i]))}", fontsize=6.5)
        show_contributions(a1, c_pred[i], scale)
        a1.set_title(f"pred: {name(int(pred[i]))}{ok}", fontsize=6.5, color="black" if not ok else "red")
        show_contributions(a2, c_other[i], scale)
        a2.set_title(f"other: {name(int(other[i]))}", fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
