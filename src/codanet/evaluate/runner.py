"""Run the metrics for a trained checkpoint: `codanet evaluate localisation|pixel-removal CKPT`."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import torch

from ..data import dataset_options, load_dataset, make_batch
from ..data.datasets import Dataset
from ..explain.baselines import make_methods
from ..train import distributed
from ..train.checkpoint import load_model
from ..train.setup import select_device
from ..utils.io import write_json
from .localisation import confident_images, localisation, make_grids
from .pixel_removal import pixel_removal
from .plots import plot_localisation, plot_pixel_removal

if TYPE_CHECKING:
    from ..explain.baselines import Attribution
    from ..models import CoDANet

FAST_METHODS = ["CoDA", "Grad", "IxG", "IntGrad", "DeepLIFT", "GradCAM", "Occ5", "Occ9"]


def checkpoint_test_split(checkpoint: str, dataset: str | None = None, data_dir: str | None = None,
                          device: str | torch.device = "cpu") -> tuple[CoDANet, dict, Dataset]:
    """(model, checkpoint state, test split): the checkpoint's own data set, or `dataset` when its
    classes and channels fit; ValueError otherwise.  An image-folder data set is read as the
    model's input (docs/finetuning.md)."""
    model, state = load_model(checkpoint, device=str(device))
    cfg = state.get("config") or {}
    name = dataset or cfg.get("dataset")
    if name is None:
        raise ValueError(f"{checkpoint} does not record its dataset; pass --dataset")
    own = name == cfg.get("dataset")
    options = dataset_options(cfg if own else {"dataset": name}, model.in_channels, model.input_size)
    test = load_dataset(name, "test", data_dir or (cfg.get("data_dir") if own else None), **options)
    if test.num_classes != model.num_classes or test.channels != model.in_channels:
        raise ValueError(f"checkpoint {checkpoint} was trained on {cfg.get('dataset')!r} "
                         f"({model.num_classes} classes, {model.in_channels} channels); dataset {test.name!r} "
                         f"has {test.num_classes} classes, {test.channels} channels")
    if dataset and cfg.get("dataset") and dataset != cfg["dataset"] and test.classes != state.get("classes"):
        raise ValueError(f"checkpoint {checkpoint} was trained on {cfg['dataset']!r}, not {dataset!r} "
                         "(its classes differ)")
    return model, state, test


def load_for_evaluation(checkpoint: str, dataset: str | None = None, data_dir: str | None = None,
                        max_images: int | None = None, device: str | torch.device = "cpu"
                        ) -> tuple[CoDANet, torch.Tensor, torch.Tensor, Dataset]:
    """(model, test images, labels, test split), the first `max_images` images (all: None)."""
    model, _, test = checkpoint_test_split(checkpoint, dataset, data_dir, device)
    n = min(len(test), max_images) if max_images else len(test)
    images = make_batch(test, range(n), "none", None, train=False).to(device)
    return model, images, test.labels[:n].to(device), test


def method_cost(method: Attribution, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Milliseconds per image for one attribution of `images`."""
    t = time.perf_counter()
    method.attribute(images, target=labels)
    return 1e3 * (time.perf_counter() - t) / len(images)


def run(kind: str, checkpoint: str, methods: list[str] | None = None, grid_size: int = 3, grids: int = 100,
        images: int = 256, steps: int = 128, most_first: bool = False, dataset: str | None = None,
        data_dir: str | None = None, out: str | None = None, seed: int = 0,
        progress: bool = True, method_options: dict | None = None, device: str = "auto") -> dict:
    """Evaluate `methods` with one metric; writes JSON + PNG next to `out` when given.

    Under torchrun (`torchrun --nproc_per_node=N -m codanet evaluate ...`) the grids / images are
    sharded over the ranks and the results gathered; rank 0 writes the files.  `device`: auto
    (CUDA when available), cpu or cuda, as in training."""
    ctx = distributed.setup(select_device(device))
    progress = progress and ctx.main
    # localisation ranks the whole test split; pixel removal only needs its first `images`
    model, all_images, all_labels, test = load_for_evaluation(
        checkpoint, dataset, data_dir, max_images=images if kind == "pixel-removal" else None, device=ctx.device)
    n = grid_size
    if kind == "localisation" and n * n > model.num_classes:
        raise ValueError(f"a {n}x{n} grid needs {n * n} distinct classes; {checkpoint} has {model.num_classes} "
                         f"(use --grid-size {int(model.num_classes ** 0.5)} or less)")
    if kind == "pixel-removal" and steps > all_images.shape[-1] * all_images.shape[-2]:
        raise ValueError(f"--steps {steps} is more than the {all_images.shape[-1] * all_images.shape[-2]} "
                         "pixels of an image")
    attributions = make_methods(model, methods or FAST_METHODS, all_images.shape[-1], **(method_options or {}))
    results, costs = {}, {}
    if kind == "localisation":
        grid_cells = make_grids(confident_images(model, all_images, all_labels, ctx=ctx), n, grids, seed)
        for name, m in attributions.items():
            results[name] = localisation(model, m, all_images, all_labels, n, grids, seed, test.classes,
                                         progress, grid_cells=grid_cells, ctx=ctx)
            results[name].pop("scores")
    elif kind == "pixel-removal":
        x, y = all_images[:images], all_labels[:images]
        for name, m in attributions.items():
            results[name] = pixel_removal(model, m, x, y, steps=steps, most_first=most_first,
                                          progress=progress, ctx=ctx)
    else:
        raise ValueError(f"unknown evaluation {kind!r}; use localisation or pixel-removal")
    probe_x, probe_y = all_images[:4], all_labels[:4]
    for name, m in attributions.items():
        costs[name] = dict(ms_per_image=method_cost(m, probe_x, probe_y),
                           evaluations_per_image=m.evaluations_per_image)
    summary = dict(kind=kind, checkpoint=checkpoint, dataset=test.name, results=results, cost=costs,
                   temperature=model.temperature, model=model.name, processes=ctx.world)
    if out and ctx.main:
        write_json(out, summary)
        png = os.path.splitext(out)[0] + ".png"
        title = f"{model.name} T={model.temperature:g} on {test.name}"
        if kind == "localisation":
            plot_localisation(results, png, title)
        else:
            plot_pixel_removal(results, png, title)
        summary["figure"] = png
    return summary


def format_table(summary: dict) -> str:
    kind = summary["kind"]
    head = "| method | localisation mean ± std |" if kind == "localisation" else "| method | area | prob. at 25 % |"
    lines = [head + " ms / image | evaluations / image |", "|---" * (head.count("|") + 1) + "|"]
    for name, r in summary["results"].items():
        c = summary["cost"][name]
        stat = (f"{r['mean']:.3f} ± {r['std']:.3f}" if kind == "localisation"
                else f"{r['area']:.3f} | {r['final']:.3f}")
        lines.append(f"| {name} | {stat} | {c['ms_per_image']:.1f} | {c['evaluations_per_image']} |")
    return "\n".join(lines)
