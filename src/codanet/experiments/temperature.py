"""Paper Fig. 4 and Fig. 6 (right): the temperature T raises the alignment pressure.

Trains the CPU preset on Fashion-MNIST at several T -- from average pooling (T = number of final
positions, 49 for coda_cpu at 28x28) to ~20x that -- then measures the contributions' localisation
(3x3 grids) and pixel-removal area, and draws the contribution maps of the same test images for
every T.
"""
from __future__ import annotations

import os

import torch

from ..explain.plot import new_figure, save_figure, show_contributions, show_image
from ..utils.io import write_json


def run(temperatures: list[float], out_dir: str, epochs: int = 4, grids: int = 50, images: int = 256,
        data_dir: str | None = None) -> dict:
    """Train (or resume, or skip when finished) one model per T for `epochs` epochs, then measure."""
    from ..demo import DEMO_CONFIG
    from ..evaluate.runner import run as evaluate
    from ..train import load_config_file, make_config, train
    rows = []
    for T in temperatures:
        run_dir = os.path.join(out_dir, f"T{T:g}")
        cfg = make_config(dict(temperature=float(T), epochs=epochs, run_name=f"temperature_T{T:g}",
                               **({"data_dir": data_dir} if data_dir else {})), base=load_config_file(DEMO_CONFIG))
        if os.path.isfile(os.path.join(run_dir, "summary.json")):
            import json
            with open(os.path.join(run_dir, "summary.json")) as f:
                summary = json.load(f)
        else:
            resume = os.path.isdir(os.path.join(run_dir, "checkpoints"))
            summary = train(cfg, run_dir, resume=resume)
        ckpt = os.path.join(run_dir, "model.safetensors")
        loc = evaluate("localisation", ckpt, ["CoDA", "IxG"], grids=grids, progress=False,
                       out=os.path.join(run_dir, "localisation.json"))
        rem = evaluate("pixel-removal", ckpt, ["CoDA", "IxG"], images=images, steps=32, progress=False,
                       out=os.path.join(run_dir, "pixel_removal.json"))
        rows.append(dict(temperature=T, accuracy=summary["test_accuracy"], epochs=summary["epochs"],
                         localisation=loc["results"]["CoDA"]["mean"], localisation_std=loc["results"]["CoDA"]["std"],
                         localisation_ixg=loc["results"]["IxG"]["mean"],
                         removal_area=rem["results"]["CoDA"]["area"], removal_area_ixg=rem["results"]["IxG"]["area"],
                         checkpoint=ckpt))
    result = dict(rows=rows, epochs_per_model=epochs)
    write_json(os.path.join(out_dir, "summary.json"), result)
    plot_scores(result, os.path.join(out_dir, "scores_vs_temperature.png"))
    plot_maps([r["checkpoint"] for r in rows], temperatures, os.path.join(out_dir, "maps_vs_temperature.png"))
    return result


def plot_scores(result: dict, path: str) -> str:
    rows = result["rows"]
    T = [r["temperature"] for r in rows]
    fig, axes = new_figure(1, 3, figsize=(10, 3))
    axes[0].errorbar(T, [r["localisation"] for r in rows], yerr=[r["localisation_std"] for r in rows],
                     marker="o", color="tab:red", capsize=3, label="CoDA")
    axes[0].plot(T, [r["localisation_ixg"] for r in rows], marker="s", color="tab:gray", label="IxG")
    axes[0].set_ylabel("localisation (3x3)")
    axes[1].plot(T, [r["removal_area"] for r in rows], marker="o", color="tab:red", label="CoDA")
    axes[1].plot(T, [r["removal_area_ixg"] for r in rows], marker="s", color="tab:gray", label="IxG")
    axes[1].set_ylabel("pixel removal area (least first)")
    axes[2].plot(T, [r["accuracy"] for r in rows], marker="o")
    axes[2].set_ylabel("test accuracy")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("temperature T")
        ax.legend(fontsize=7) if ax is not axes[2] else None
    fig.tight_layout()
    return save_figure(fig, path)


def plot_maps(checkpoints, temperatures, path: str, count: int = 6) -> str:
    """Fig. 4: the same test images, contribution maps (true class) of the model at each T."""
    from ..data import load_dataset, make_batch
    from ..train import load_model
    models = [load_model(c)[0] for c in checkpoints]
    _, state = load_model(checkpoints[0])
    test = load_dataset(state["config"]["dataset"], "test", state["config"].get("data_dir"))
    idx = torch.arange(count) * 7
    x, y = make_batch(test, idx, "none", None, train=False), test.labels[idx]
    fig, axes = new_figure(count, len(models) + 1, figsize=(1.5 * (len(models) + 1), 1.5 * count), squeeze=False)
    for i in range(count):
        show_image(axes[i, 0], x[i])
        axes[i, 0].set_ylabel(test.classes[int(y[i])], fontsize=7)
    for j, (m, T) in enumerate(zip(models, temperatures), 1):
        maps = m.explain(x, target=y)["contributions"]
        for i in range(count):
            show_contributions(axes[i, j], maps[i])
        axes[0, j].set_title(f"T = {T:g}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def format_table(result: dict) -> str:
    lines = ["| T | accuracy | epochs | localisation CoDA | localisation IxG | removal area CoDA | removal area IxG |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['temperature']:g} | {r['accuracy']:.4f} | {r['epochs']:.2f} | {r['localisation']:.3f} ± "
                     f"{r['localisation_std']:.3f} | {r['localisation_ixg']:.3f} | {r['removal_area']:.3f} | "
                     f"{r['removal_area_ixg']:.3f} |")
    return "\n".join(lines)
