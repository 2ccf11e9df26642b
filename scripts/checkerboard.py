"""Does a preset whose kernel sizes are divisible by their strides give cleaner maps at equal
accuracy?  Trains coda_cpu (3x3 kernels, two stride-2 layers) and coda_cpu_k4 (4x4 kernels at the
stride-2 layers, every other layer the same) with the same recipe and compares test accuracy, the
checkerboard index of the input contributions (codanet.evaluate.checkerboard) and localisation.

    .venv/bin/python scripts/checkerboard.py [--epochs 1] [--grids 100] [--images 1000]
        [--out runs/checkerboard]

Resumable: a finished training is reused, an interrupted one continues from its checkpoint.
Writes OUT/checkerboard.json, OUT/checkerboard.md (table) and OUT/checkerboard.png (maps of the
same test images and each model's mean |contribution| per pixel phase).  docs/benchmarks.md,
"Checkerboard", holds the measured numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import torch

from codanet.evaluate.checkerboard import checkerboard_index, phase_means
from codanet.evaluate.intervals import bootstrap_interval
from codanet.evaluate.localisation import localisation
from codanet.explain.baselines import CoDA
from codanet.explain.plot import new_figure, save_figure, show_contributions, show_image
from codanet.models.configs import CONFIGS
from codanet.train.checkpoint import has_checkpoint, load_model
from codanet.train.config import load_config_file, make_config
from codanet.train.trainer import train
from codanet.utils.io import write_json, write_text

# 28 -> 14 -> 7 as coda_cpu: padding 1 keeps (28 + 2 - 4) / 2 + 1 = 14 and (14 + 2 - 4) / 2 + 1 = 7
CONFIGS["coda_cpu_k4"] = dict(CONFIGS["coda_cpu"], kernel_sizes=[3, 4, 3, 4, 3, 3, 3, 3, 1])
PRESETS = ("coda_cpu", "coda_cpu_k4")


def trained(name: str, epochs: int, out: str, max_train_images: int | None = None) -> str:
    """Train `name` with the demo recipe for `epochs` epochs into OUT/name (or reuse / resume it)."""
    folder = os.path.join(out, name)
    if not os.path.isfile(os.path.join(folder, "summary.json")):
        overrides = dict(model=name, epochs=epochs, run_name=name, max_train_images=max_train_images)
        cfg = make_config(overrides, base=load_config_file("fashion_mnist_demo"))
        train(cfg, folder, resume=has_checkpoint(folder))
    return folder


def contributions(model, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """(N, H, W) input contributions of each image's predicted class."""
    return torch.cat([model.explain(images[s:s + batch])["contributions"] for s in range(0, len(images), batch)])


def measure(folder: str, images: torch.Tensor, labels: torch.Tensor, grids: int) -> dict:
    model, _ = load_model(os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    period = math.prod(model.arch["strides"])
    maps = contributions(model, images)
    index = checkerboard_index(maps, period).tolist()
    phases = phase_means(maps, period)                                   # (N, P, P)
    loc = localisation(model, CoDA(model), images, labels, grids=grids)
    return dict(test_top1=summary["history"][-1]["test_top1"], train_seconds=summary.get("train_seconds"),
                kernel_sizes=model.arch["kernel_sizes"], strides=model.arch["strides"], period=period,
                checkerboard_index=float(torch.tensor(index).mean()), checkerboard_ci95=bootstrap_interval(index),
                localisation=loc["mean"], localisation_ci95=bootstrap_interval(loc["grid_means"]),
                phase_means=(phases.mean(0) / phases.mean()).tolist(),
                maps=maps[:6])


def figure(results: dict, images: torch.Tensor, path: str) -> None:
    """Rows: the inputs, then each model's maps of the same images and its mean |map| per phase."""
    fig, axes = new_figure(1 + len(results), 7, figsize=(11, 1.7 * (1 + len(results))))
    for j in range(6):
        show_image(axes[0, j], images[j])
    axes[0, 6].axis("off")
    for i, (name, r) in enumerate(results.items(), start=1):
        for j in range(6):
            show_contributions(axes[i, j], r["maps"][j])
        axes[i, 0].set_ylabel(f"{name}\n{r['test_top1']:.1%}", fontsize=8)
        phases = torch.tensor(r["phase_means"])
        im = axes[i, 6].imshow(phases, cmap="viridis", vmin=0, vmax=2)
        axes[i, 6].set_title(f"index {r['checkerboard_index']:.2f}", fontsize=8)
        axes[i, 6].set_xticks([]), axes[i, 6].set_yticks([])
    fig.colorbar(im, ax=axes[1:, 6], fraction=0.08, label="mean |c| per phase / mean")
    period = next(iter(results.values()))["period"]
    fig.suptitle("Input contributions of the predicted class (red +, blue -) and their mean |c| per pixel "
                 f"phase (i mod {period}, j mod {period})", fontsize=9)
    save_figure(fig, path)


def table(results: dict, images_index: float) -> str:
    rows = ["| model | kernels at stride 2 | test top-1 | checkerboard index [95 % CI] | localisation [95 % CI] |",
            "|---|---|---|---|---|"]
    for name, r in results.items():
        k = [k for k, s in zip(r["kernel_sizes"], r["strides"]) if s > 1]
        rows.append(f"| {name} | {k} | {r['test_top1']:.2%} | {r['checkerboard_index']:.3f} "
                    f"[{r['checkerboard_ci95'][0]:.3f}, {r['checkerboard_ci95'][1]:.3f}] | {r['localisation']:.3f} "
                    f"[{r['localisation_ci95'][0]:.3f}, {r['localisation_ci95'][1]:.3f}] |")
    rows.append(f"\nThe test images themselves have index {images_index:.3f} (content alone).")
    return "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--grids", type=int, default=100)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default="runs/checkerboard")
    p.add_argument("--max-train-images", type=int, default=None, help="a quick check on fewer images")
    args = p.parse_args()
    from codanet.evaluate.runner import load_for_evaluation
    folders = {name: trained(name, args.epochs, args.out, args.max_train_images) for name in PRESETS}
    _, images, labels, _ = load_for_evaluation(os.path.join(folders["coda_cpu"], "model.safetensors"),
                                               max_images=args.images)
    results = {name: measure(folder, images, labels, args.grids) for name, folder in folders.items()}
    period = next(iter(results.values()))["period"]                  # both presets: 28 -> 14 -> 7
    images_index = float(checkerboard_index(images[:, 0], period).mean())
    figure(results, images, os.path.join(args.out, "checkerboard.png"))
    write_text(os.path.join(args.out, "checkerboard.md"), table(results, images_index))
    write_json(os.path.join(args.out, "checkerboard.json"),
               {"images_index": images_index,
                **{name: {k: v for k, v in r.items() if k != "maps"} for name, r in results.items()}})
    print(table(results, images_index))


if __name__ == "__main__":
    main()
