"""Paper Fig. 4 and Fig. 6 (right): the temperature T and the lambda of eq. 10 raise the alignment
pressure (docs/evaluation.md, "T and lambda studies").

`run("temperature", [49, 100, ...])` trains the CPU preset once per value -- from average pooling
(T = number of final positions, 49 for coda_cpu at 28x28) upwards -- with one recipe and a fixed
number of epochs; `run("lam", [0, 0.1, ...], base={"temperature": 500})` does the same for lambda.
Every model is then measured: test accuracy, localisation of CoDA and IxG on 3x3 grids with 95 %
intervals, pixel-removal area, and the sparsity of the maps (Gini index of |contributions|).
Finished models are skipped and an interrupted one resumes from its last checkpoint, so the
study is one command that can be stopped and started again.
"""
from __future__ import annotations

import functools
import os

import torch

from ..explain.plot import new_figure, save_figure, show_contributions, show_image
from ..utils.io import resume_json, write_json

SETTINGS = {"temperature": "T", "lam": "lambda"}


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of |map| per map, (N, ...) -> (N,): 0 when every pixel carries the same mass,
    (n-1)/n when one pixel carries all of it (Hurley & Rickard's sparsity measure)."""
    v = maps.abs().flatten(1).double().sort(dim=1).values                 # ascending, (N, n)
    n = v.shape[1]
    rank = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    total = v.sum(1)
    g = ((2 * rank - n - 1) * v).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.zeros_like(g))


def train_or_resume(cfg: dict, run_dir: str) -> dict:
    """The run's summary: read when finished, else train, resuming from the last checkpoint if an
    earlier call was stopped.  A stop (SIGINT/SIGTERM: the trainer writes a checkpoint first) ends
    the study with KeyboardInterrupt and leaves no summary.json, so the next call resumes this model
    instead of taking it for finished."""
    from ..train import has_checkpoint, train

    def fit() -> dict:
        summary = train(cfg, run_dir, resume=has_checkpoint(run_dir))
        if summary.get("stopped_by") == "signal":
            raise KeyboardInterrupt(f"run the same command again: {run_dir} resumes from its last checkpoint")
        return summary
    return resume_json(os.path.join(run_dir, "summary.json"), fit)


def measure(checkpoint: str, run_dir: str, grids: int, images: int, seed: int = 0) -> dict:
    """Localisation (CoDA, IxG; 95 % intervals), pixel-removal area and Gini of one model.  A model
    that classifies fewer than 9 classes confidently (one whose training collapsed) has no 3x3
    grids: its localisation is None and `localisation_error` says why; the rest is measured."""
    from ..evaluate.localisation import TooFewClasses
    from ..evaluate.runner import load_for_evaluation
    from ..evaluate.runner import run as evaluate
    try:
        loc = evaluate("localisation", checkpoint, ["CoDA", "IxG"], grids=grids, progress=False, seed=seed,
                       out=os.path.join(run_dir, "localisation.json"))["results"]
        scores = dict(localisation=loc["CoDA"]["mean"], localisation_ci95=loc["CoDA"]["ci95"],
                      localisation_ixg=loc["IxG"]["mean"])
    except TooFewClasses as e:
        scores = dict(localisation=None, localisation_ci95=None, localisation_ixg=None, localisation_error=str(e))
    rem = evaluate("pixel-removal", checkpoint, ["CoDA", "IxG"], images=images, steps=32, progress=False,
                   out=os.path.join(run_dir, "pixel_removal.json"))["results"]
    model, x, y, _ = load_for_evaluation(checkpoint, max_images=images)
    sparsity = gini(model.explain(x, target=y)["contributions"])
    return dict(**scores, removal_area=rem["CoDA"]["area"], removal_area_ixg=rem["IxG"]["area"],
                gini=float(sparsity.mean()))


def run(setting: str, values: list[float], out_dir: str, epochs: int = 4, grids: int = 250, images: int = 256,
        base: dict | None = None) -> dict:
    """Train (or skip, or resume) one model per value of `setting` ('temperature' or 'lam') for
    `epochs` epochs of the demo recipe plus `base` overrides, then measure each; writes
    summary.json and two figures (scores, maps) into `out_dir`."""
    from ..demo import DEMO_CONFIG
    from ..train import load_config_file, make_config
    if setting not in SETTINGS:
        raise ValueError(f"unknown study {setting!r}; use one of {', '.join(SETTINGS)}")
    rows = []
    for value in values:
        tag = f"{SETTINGS[setting]}{value:g}"
        run_dir = os.path.join(out_dir, tag)
        overrides = {**(base or {}), setting: float(value), "epochs": epochs, "run_name": f"study_{tag}"}
        summary = train_or_resume(make_config(overrides, base=load_config_file(DEMO_CONFIG)), run_dir)
        checkpoint = os.path.join(run_dir, "model.safetensors")
        scores = resume_json(os.path.join(run_dir, f"scores-{grids}grids-{images}images.json"),
                             functools.partial(measure, checkpoint, run_dir, grids, images))  # measured once
        rows.append(dict(value=value, accuracy=summary["test_accuracy"], epochs=summary["epochs"],
                         checkpoint=checkpoint, **scores))
    result = dict(setting=setting, rows=rows, epochs_per_model=epochs, base=base or {})
    write_json(os.path.join(out_dir, "summary.json"), result)
    plot_scores(result, os.path.join(out_dir, f"scores_vs_{setting}.png"))
    plot_maps([r["checkpoint"] for r in rows], [f"{SETTINGS[setting]} = {v:g}" for v in values],
              os.path.join(out_dir, f"maps_vs_{setting}.png"))
    return result


def plot_scores(result: dict, path: str) -> str:
    """Localisation (with intervals), removal area, Gini and accuracy against the setting."""
    rows, name = result["rows"], SETTINGS[result["setting"]]
    v = [r["value"] for r in rows]
    fig, axes = new_figure(1, 4, figsize=(13, 3))
    graded = [r for r in rows if r["localisation"] is not None]          # a collapsed model has no grids
    low = [r["localisation"] - r["localisation_ci95"][0] for r in graded]
    high = [r["localisation_ci95"][1] - r["localisation"] for r in graded]
    axes[0].errorbar([r["value"] for r in graded], [r["localisation"] for r in graded], yerr=[low, high],
                     marker="o", color="tab:red", capsize=3, label="CoDA")
    axes[0].plot([r["value"] for r in graded], [r["localisation_ixg"] for r in graded], marker="s",
                 color="tab:gray", label="IxG")
    axes[1].plot(v, [r["removal_area"] for r in rows], marker="o", color="tab:red", label="CoDA")
    axes[1].plot(v, [r["removal_area_ixg"] for r in rows], marker="s", color="tab:gray", label="IxG")
    axes[2].plot(v, [r["gini"] for r in rows], marker="o", color="tab:red")
    axes[3].plot(v, [r["accuracy"] for r in rows], marker="o")
    labels = ("localisation (3x3, 95 % CI)", "pixel removal area (least first)", "Gini of |contributions|",
              "test accuracy")
    for ax, label in zip(axes, labels):
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel(name)
        if result["setting"] == "temperature":
            ax.set_xscale("log")
    axes[0].legend(fontsize=7), axes[1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_maps(checkpoints: list[str], titles: list[str], path: str, count: int = 6) -> str:
    """Fig. 4: the same test images, contribution maps (true class) of each model."""
    from ..evaluate.runner import load_for_evaluation
    from ..train import load_model
    _, x, y, test = load_for_evaluation(checkpoints[0], max_images=7 * count)
    x, y = x[::7], y[::7]
    fig, axes = new_figure(count, len(checkpoints) + 1, figsize=(1.5 * (len(checkpoints) + 1), 1.5 * count),
                           squeeze=False)
    for i in range(count):
        show_image(axes[i, 0], x[i])
        axes[i, 0].set_ylabel(test.classes[int(y[i])], fontsize=7)
    for j, (checkpoint, title) in enumerate(zip(checkpoints, titles), 1):
        maps = load_model(checkpoint)[0].explain(x, target=y)["contributions"]
        for i in range(count):
            show_contributions(axes[i, j], maps[i])
        axes[0, j].set_title(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def format_table(result: dict) -> str:
    name = SETTINGS[result["setting"]]
    lines = [f"| {name} | accuracy | epochs | localisation CoDA [95 % CI] | localisation IxG | removal area CoDA "
             "| removal area IxG | Gini CoDA |", "|---" * 8 + "|"]
    for r in result["rows"]:
        if r["localisation"] is None:
            loc = "— (fewer than 9 classes confidently classified: no grids) | —"
        else:
            lo, hi = r["localisation_ci95"]
            loc = f"{r['localisation']:.3f} [{lo:.3f}, {hi:.3f}] | {r['localisation_ixg']:.3f}"
        lines.append(f"| {r['value']:g} | {r['accuracy']:.4f} | {r['epochs']:.2f} | {loc} | {r['removal_area']:.3f} | "
                     f"{r['removal_area_ixg']:.3f} | {r['gini']:.3f} |")
    return "\n".join(lines)
