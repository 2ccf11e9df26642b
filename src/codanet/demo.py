"""`make demo` / `codanet demo`: the main job.

Trains the CPU preset (coda_cpu) on full Fashion-MNIST within a ~15-minute budget on 2 cores
(configs/fashion_mnist_demo.json), reports the test accuracy, and writes into runs/demo/:
the checkpoint (model.safetensors + checkpoints/), summary.json, log.csv,
contribution_maps.png (16 test images in the layout of the paper's Fig. 2), the two metrics
(eval/localisation.json|png, eval/pixel_removal.json|png) and report.html.
"""
from __future__ import annotations

import os

import torch

DEMO_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "fashion_mnist_demo.json")


def main(args) -> int:
    from .data import load_dataset, make_batch
    from .explain import plot_explanation_grid
    from .train import load_config_file, load_model, make_config, train
    from .utils.io import write_json
    overrides = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.minutes:
        overrides["max_minutes"] = args.minutes
    cfg = make_config(overrides, base=load_config_file(DEMO_CONFIG))
    load_dataset(cfg["dataset"], "test", cfg["data_dir"])         # fail early with a clear message
    out = args.out
    if os.path.exists(os.path.join(out, "summary.json")):          # a finished demo: keep it, start anew
        import time
        kept = f"{out.rstrip(os.sep)}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(out, kept)
        print(f"the previous demo run was moved to {kept}")
    resume = os.path.isdir(os.path.join(out, "checkpoints"))       # an interrupted demo continues
    summary = train(cfg, out, resume=resume)
    if summary.get("stopped_by") == "signal":
        return 130
    model, _ = load_model(os.path.join(out, "model.safetensors"))
    test = load_dataset(cfg["dataset"], "test", cfg["data_dir"])
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(test), generator=g)[:16]
    images = make_batch(test, idx, "none", None, train=False)
    maps = plot_explanation_grid(model, images, test.labels[idx], test.classes,
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


GRID_METHODS = ["CoDA", "Grad", "IxG", "IntGrad", "DeepLIFT", "GradCAM"]
REMOVAL_METHODS = GRID_METHODS + ["Occ5", "Occ9"]


def evaluate_and_report(out: str, grids: int = 30, images: int = 256, steps: int = 32) -> None:
    """The paper's two metrics for the demo model (sized for ~5 CPU minutes: occlusion, 170 model
    evaluations per image, is left out of the 84x84 localisation grids), then report.html."""
    from .evaluate.runner import format_table, run
    from .report import build_report
    ckpt = os.path.join(out, "model.safetensors")
    for kind, key, methods, kw in (("localisation", "localisation", GRID_METHODS, dict(grids=grids)),
                                   ("pixel-removal", "pixel_removal", REMOVAL_METHODS, dict(images=images, steps=steps))):
        result = run(kind, ckpt, methods, out=os.path.join(out, "eval", key + ".json"), **kw)
        print(f"{kind}:\n{format_table(result)}")
    print(f"report: {build_report(out)}")
