"""`make demo` / `codanet demo`: the main job.

First explains 16 test images with the shipped model (coda_cpu:fashion_mnist, seconds:
pretrained_maps.png), then trains the CPU preset (coda_cpu) on full Fashion-MNIST for a fixed
3 epochs (configs/fashion_mnist_demo.json; `--max-minutes` caps the time if asked), reports the
test accuracy, and writes into runs/demo/: the checkpoint (model.safetensors + checkpoints/), summary.json, log.csv,
contribution_maps.png (16 test images in the layout of the paper's Fig. 2), the two metrics
(eval/localisation.json|png, eval/pixel_removal.json|png) and report.html.
"""
from __future__ import annotations

import os
from typing import Any

import torch

DEMO_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "fashion_mnist_demo.json")


def main(args) -> int:
    from .data import load_dataset
    from .explain import plot_explanation_grid
    from .train import has_checkpoint, load_config_file, load_model, make_config, train
    from .utils.io import write_json
    overrides = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.max_minutes:
        overrides["max_minutes"] = args.max_minutes
    cfg = make_config(overrides, base=load_config_file(DEMO_CONFIG))
    load_dataset(cfg["dataset"], "test", cfg["data_dir"])         # fail early with a clear message
    out = args.out
    if os.path.exists(os.path.join(out, "summary.json")):          # a finished demo: keep it, start anew
        import time
        kept = f"{out.rstrip(os.sep)}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(out, kept)
        print(f"the previous demo run was moved to {kept}")
    resume = has_checkpoint(out)                                   # an interrupted demo continues
    explain_with_shipped_model(out, cfg["data_dir"])
    summary = train(cfg, out, resume=resume)
    if summary.get("stopped_by") == "signal":
        return 130
    model, _ = load_model(os.path.join(out, "model.safetensors"))
    images, labels, classes = sample_test_images(16, cfg["data_dir"])
    maps = plot_explanation_grid(model, images, labels, classes,
                                 os.path.join(out, "contribution_maps.png"),
                                 title=f"CoDA-Net ({cfg['model']}, T={model.temperature:g}) on Fashion-MNIST: "
                                       "input | predicted class | strongest other class")
    summary["figures"] = [os.path.basename(maps)]
    write_json(os.path.join(out, "summary.json"), summary)
    evaluate_and_report(out)
    print(f"demo: test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']:.2f} epochs "
          f"({summary['train_seconds']:.0f} s, {summary['images_per_second']:.0f} images/s); "
          f"contribution maps in {maps}")
    return 0


def sample_test_images(n: int = 16, data_dir: str | None = None):
    """n seeded test images of Fashion-MNIST, (images, labels, class names)."""
    from .data import load_dataset, make_batch
    test = load_dataset("fashion_mnist", "test", data_dir)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n]
    return make_batch(test, idx, "none", None, train=False), test.labels[idx], test.classes


def explain_with_shipped_model(out: str, data_dir: str | None = None) -> str | None:
    """Explanations at once, before any training: the shipped coda_cpu:fashion_mnist model on 16
    test images (paper Fig. 2 layout) -> out/pretrained_maps.png."""
    from . import create_model
    from .explain import plot_explanation_grid
    from .models.pretrained import available_weights
    if "fashion_mnist" not in available_weights("coda_cpu").get("coda_cpu", []):
        print("no shipped coda_cpu:fashion_mnist weights; skipping the pretrained explanations")
        return None
    model = create_model("coda_cpu", pretrained="fashion_mnist")
    images, labels, classes = sample_test_images(16, data_dir)
    path = plot_explanation_grid(model, images, labels, classes, os.path.join(out, "pretrained_maps.png"),
                                 title="shipped model coda_cpu:fashion_mnist: input | predicted class | "
                                       "strongest other class")
    print(f"explanations of the shipped model (before training): {path}")
    return path


GRID_METHODS = ["CoDA", "Grad", "IxG", "IntGrad", "DeepLIFT", "GradCAM"]
REMOVAL_METHODS = GRID_METHODS + ["Occ5", "Occ9"]


def evaluate_and_report(out: str, grids: int = 30, images: int = 256, steps: int = 32) -> None:
    """The paper's two metrics for the demo model (sized for ~5 CPU minutes: occlusion, 170 model
    evaluations per image, is left out of the 84x84 localisation grids), then report.html."""
    from .evaluate.runner import format_table, run
    from .report import build_report
    ckpt = os.path.join(out, "model.safetensors")
    jobs: list[tuple[str, str, list[str], dict[str, Any]]] = [
            ("localisation", "localisation", GRID_METHODS, dict(grids=grids)),
            ("pixel-removal", "pixel_removal", REMOVAL_METHODS, dict(images=images, steps=steps))]
    for kind, key, methods, kw in jobs:
        result = run(kind, ckpt, methods, out=os.path.join(out, "eval", key + ".json"), **kw)
        print(f"{kind}:\n{format_table(result)}")
    print(f"report: {build_report(out)}")
