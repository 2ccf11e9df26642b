"""Run the metrics for a trained checkpoint: `codanet evaluate localisation|pixel-removal CKPT`."""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data import dataset_options, load_dataset, make_batch
from ..data.datasets import Dataset
from ..explain.baselines import make_methods
from ..models.pretrained import resolve_weights, sha256_of
from ..train import distributed
from ..train.checkpoint import load_model
from ..train.setup import select_device
from ..utils.io import resume_json, write_json
from .intervals import with_intervals
from .localisation import clear_journal, confident_images, localisation, make_grids, read_journal
from .pixel_removal import pixel_removal
from .plots import plot_localisation, plot_pixel_removal

if TYPE_CHECKING:
    from ..explain.baselines import Attribution
    from ..models import CoDANet
    from ..train.distributed import Context

FAST_METHODS = ["CoDA", "Grad", "IxG", "IntGrad", "DeepLIFT", "GradCAM", "Occ5", "Occ9"]
ALL_METHODS = ["CoDA", "Grad", "AbsGrad", "IxG", "IntGrad", "DeepLIFT", "GradCAM", "Occ5", "Occ9", "RISE", "LIME"]


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


def checkpoint_sha256(checkpoint: str) -> str | None:
    """sha256 of the weights file a checkpoint argument names (None for a folder): every number
    names the weights it was measured on."""
    path = resolve_weights(checkpoint)
    return sha256_of(path) if os.path.isfile(path) else None


# What a summary's "ms / image" is, said under every table that shows it (markdown and report.html).
COST_IMAGES = 4
COST_NOTE = (f"ms / image: one attribution of {COST_IMAGES} test images, timed once when the summary was "
             "written, so on the machine of a resumed run's last sitting; the localisation tables' s / grid "
             "average over every grid.")


def method_cost(method: Attribution, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Milliseconds per image for one attribution of the first COST_IMAGES `images` (see COST_NOTE)."""
    images, labels = images[:COST_IMAGES], labels[:COST_IMAGES]
    t = time.perf_counter()
    method.attribute(images, target=labels)
    return 1e3 * (time.perf_counter() - t) / len(images)


def method_costs(methods: dict[str, Attribution], images: torch.Tensor, labels: torch.Tensor) -> dict[str, dict]:
    """A summary's "cost": per method, ms per image (`method_cost`) and model evaluations per image."""
    return {name: dict(ms_per_image=method_cost(m, images, labels), evaluations_per_image=m.evaluations_per_image)
            for name, m in methods.items()}


def run(kind: str, checkpoint: str, methods: list[str] | None = None, grid_size: int = 3, grids: int = 100,
        images: int = 256, steps: int = 128, most_first: bool = False, dataset: str | None = None,
        data_dir: str | None = None, out: str | None = None, seed: int = 0,
        progress: bool = True, method_options: dict | None = None, device: str = "auto",
        selection: str = "most_confident", keep_dir: str | None = None) -> dict:
    """Evaluate `methods` with one metric; writes JSON + PNG next to `out` when given.  Every
    method gets a 95 % bootstrap interval of its mean and of its paired difference to CoDA
    (`intervals.with_intervals`).  `selection`: how localisation grids pick their images
    (`make_grids`).  `keep_dir` (one folder per weights): each method's work is kept there
    as it is done (`score`), so a stopped run resumes where it stopped and the other removal order
    reuses the maps.

    Under torchrun (`torchrun --nproc_per_node=N -m codanet evaluate ...`) the grids / images are
    sharded over the ranks and the results gathered; rank 0 writes the files.  `device`: auto
    (CUDA when available), cpu or cuda, as in training."""
    ctx = distributed.setup(select_device(device))
    progress = progress and ctx.main
    # localisation ranks the whole test split; pixel removal only needs its first `images`
    model, all_images, all_labels, test = load_for_evaluation(
        checkpoint, dataset, data_dir, max_images=images if kind == "pixel-removal" else None, device=ctx.device)
    n = grid_size
    _check_sizes(kind, checkpoint, model, all_images, n, steps)
    attributions = make_methods(model, methods or FAST_METHODS, all_images.shape[-1], **(method_options or {}))
    if kind == "localisation":
        grid_cells = make_grids(confident_images(model, all_images, all_labels, ctx=ctx), n, grids, seed, selection)
        x, y = all_images, all_labels
    elif kind == "pixel-removal":
        grid_cells, x, y = None, all_images[:images], all_labels[:images]
    else:
        raise ValueError(f"unknown evaluation {kind!r}; use localisation or pixel-removal")
    entries = {name: (model, m) for name, m in attributions.items()}
    results = score(kind, entries, x, y, grid_cells=grid_cells, grid_size=n, steps=steps, most_first=most_first,
                    seed=seed, class_names=test.classes, progress=progress, ctx=ctx, keep_dir=keep_dir)
    costs = method_costs(attributions, all_images, all_labels)
    summary = dict(kind=kind, checkpoint=checkpoint, sha256=checkpoint_sha256(checkpoint), dataset=test.name,
                   results=results, cost=costs, temperature=model.temperature, model=model.name,
                   processes=ctx.world, selection=selection if kind == "localisation" else None)
    if out and ctx.main:
        save(summary, out)
    return summary


def save(summary: dict, out: str) -> None:
    """Write `summary` to `out` (JSON) and its figure next to it (PNG)."""
    summary["figure"] = png = os.path.splitext(out)[0] + ".png"
    write_json(out, summary)                             # the numbers are safe before anything is drawn
    draw(summary, png, f"{summary['model']} T={summary['temperature']:g} on {summary['dataset']}")


def draw(summary: dict, png: str, title: str) -> str:
    """The figure of a localisation (bars) or pixel-removal (curves) summary, written to `png`."""
    plot = plot_localisation if summary["kind"] == "localisation" else plot_pixel_removal
    return plot(summary["results"], png, title)


JOIN_KEYS = ("kind", "sha256", "dataset", "model", "temperature", "selection")


def join_summaries(summaries: list[dict], sources: list[str] | None = None) -> dict:
    """One table from evaluations of the same weights and metric made in separate runs (the cheap
    methods in one run, occlusion and LIME in another): the methods united, the first run's
    entry kept for a name measured twice, and every interval and difference to CoDA recomputed
    over the shared units.  The units must be the same: the same first images for pixel removal
    (and the same order), the same `grids` and seed for localisation (grids are drawn
    deterministically); ValueError where a recorded setting or the number of units differs."""
    if not summaries:
        raise ValueError("nothing to join")
    first = summaries[0]
    for s in summaries[1:]:
        if differ := [k for k in JOIN_KEYS if s.get(k) != first.get(k)]:
            raise ValueError(f"cannot join evaluations that differ in {', '.join(differ)}")
    results: dict = {}
    cost: dict = {}
    for s in summaries:
        for name, r in s["results"].items():
            results.setdefault(name, {k: v for k, v in r.items() if k != "difference_to_CoDA"})
            cost.setdefault(name, s["cost"][name])
    if len({r.get("most_first") for r in results.values()}) > 1:
        raise ValueError("cannot join the two pixel-removal orders into one table")
    order = {name: i for i, name in enumerate(ALL_METHODS)}                # the methods' usual order, CoDA first
    results = dict(sorted(results.items(), key=lambda item: order.get(item[0], len(order))))
    add_intervals(first["kind"], results)
    return dict(first, results=results, cost=cost, processes=max(s["processes"] for s in summaries),
                joined_from=sources or [])


def score(kind: str, entries: dict[str, tuple[CoDANet, Attribution]], images: torch.Tensor, labels: torch.Tensor,
          grid_cells: list | None = None, grid_size: int = 3, steps: int = 128, most_first: bool = False,
          seed: int = 0, class_names: list[str] | None = None, progress: bool = True,
          ctx: Context | None = None, keep_dir: str | None = None) -> dict:
    """Score every entry {name: (model, method)} with one metric on the same grids (localisation:
    `grid_cells` of `images`) or the same images (pixel removal: all of `images`), so the
    differences are paired; each result gets its 95 % interval and its difference to "CoDA"
    (`intervals.with_intervals`).  `run` passes one model for every method; a baseline study may
    pair each method with its own model (scripts/resnet_baseline.py).

    `keep_dir` (one folder per pair of models): each method's work is kept there as it is done,
    so a stopped run, run again, goes on where it stopped.  Pixel removal keeps the maps, batch by
    batch (both orders share them, `pixel_removal.attribution_maps`); localisation keeps each
    scored grid in a journal (`localisation.scores_with_journal`) and then the method's result on
    these grids, in a file named by the method and a hash of the grids."""
    if kind not in ("localisation", "pixel-removal"):
        raise ValueError(f"unknown evaluation {kind!r}; use localisation or pixel-removal")
    cells = grid_cells or []
    if kind == "localisation" and not cells:
        raise ValueError("localisation scores need the grids' cells (grid_cells)")
    results = {}
    for name, (model, method) in entries.items():
        if kind == "localisation":
            stem = keep_dir and kept_stem(keep_dir, name, cells)

            def measure(model=model, method=method, stem=stem) -> dict:
                result = localisation(model, method, images, labels, grid_size, len(cells), seed, class_names,
                                      progress, grid_cells=cells, ctx=ctx, journal=stem or None)
                result.pop("scores")
                return result
            if stem:              # every rank reads the same kept file, so sharded work stays in step
                results[name] = resume_json(stem + ".json", measure, write=ctx is None or ctx.main)
                if ctx is None or ctx.main:
                    clear_journal(stem)         # the kept result holds every grid now
            else:
                results[name] = measure()
        else:
            kept = keep_dir and os.path.join(keep_dir, f"{name}-{len(images)}images.pt")
            results[name] = pixel_removal(model, method, images, labels, steps=steps, most_first=most_first,
                                          progress=progress, ctx=ctx, maps_path=kept or None)
    return add_intervals(kind, results, seed)


def kept_stem(keep_dir: str, name: str, cells: list) -> str:
    """Where one method's localisation work on these grids is kept: `<stem>.json` (the result) and
    `<stem>.<rank>.jsonl` (the journal).  Named by the method, the number of grids and a hash of
    every (class, image) cell, so other grids never reuse it."""
    digest = hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:12]
    return os.path.join(keep_dir, f"{name}-{len(cells)}grids-{digest}")


def scored_so_far(stem: str) -> dict[int, tuple[float, float]]:
    """{grid index: (mean score of its cells, seconds)} from a method's kept result or its journal."""
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json") as f:
            kept = json.load(f)
        return {i: (m, kept["seconds_per_grid"]) for i, m in enumerate(kept["grid_means"])}
    return {i: (float(np.mean(e["scores"])), e["seconds"]) for i, e in read_journal(stem).items()}


def so_far_table(heading: str, keep_dir: str, methods: list[str], cells: list) -> list[str]:
    """Markdown lines: CoDA and `methods` on the grids of `cells` that every one of them has
    scored so far in `keep_dir` (kept results and journals, see `score`), with 95 % intervals of
    the means and of the paired differences to CoDA; measures nothing (`--so-far` of
    scripts/comparison.py and scripts/resnet_baseline.py)."""
    methods = ["CoDA"] + [m for m in methods if m != "CoDA"]
    done = {m: scored_so_far(kept_stem(keep_dir, m, cells)) for m in methods}
    common = sorted(set.intersection(*(set(d) for d in done.values())))
    lines = [f"## {heading}, {len(common)} of {len(cells)} grids scored by {', '.join(methods)}", "",
             "| method | localisation [95 % CI] | − CoDA [95 % CI] | s / grid |", "|---|---|---|---|"]
    rows = with_intervals({m: [d[i][0] for i in common] for m, d in done.items()}) if common else {}
    for m, r in rows.items():
        diff = r.get("difference_to_CoDA")
        lines.append(f"| {m} | {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | " + (
            f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff else "—") +
            f" | {np.mean([done[m][i][1] for i in common]):.2f} |")
    return lines + [""]


# The comparison's tables (scripts/comparison.py, scripts/resnet_baseline.py), docs/evaluation.md:
# group -> (the evaluation it runs, [(table, its options)]).
PARTS: dict[str, tuple[str, list[tuple[str, dict]]]] = {
    "localisation": ("localisation", [("localisation_most_confident", dict(selection="most_confident")),
                                      ("localisation_random", dict(selection="random"))]),
    "removal": ("pixel-removal", [("removal_least_first", dict(most_first=False)),
                                  ("removal_most_first", dict(most_first=True))]),
    "sanity": ("sanity", [("sanity", {})]),
}


def select_parts(spec: str, groups: tuple[str, ...] = tuple(PARTS)) -> list[tuple[str, str, dict]]:
    """(evaluation, table, options) for each entry of a comma-separated `--parts`: one of `groups`
    of PARTS ("localisation": both selection protocols) or one of its tables ("localisation_random"),
    in the order given. An unknown entry raises ValueError naming the choices."""
    chosen = []
    for entry in spec.split(","):
        found = [(PARTS[g][0], name, options) for g in groups for name, options in PARTS[g][1] if entry in (g, name)]
        if not found:
            choices = [c for g in groups for c in [g] + [name for name, _ in PARTS[g][1]]]
            raise ValueError(f"--parts: unknown part {entry!r}; choose from {', '.join(choices)}")
        chosen += [c for c in found if c not in chosen]
    return chosen


def add_intervals(kind: str, results: dict, seed: int = 0) -> dict:
    """Give every result its 95 % interval and its paired difference to CoDA over its units
    (grids for localisation, images for pixel removal); `results` is updated and returned."""
    unit = "grid_means" if kind == "localisation" else "areas"
    for name, extra in with_intervals({name: r[unit] for name, r in results.items()}, seed=seed).items():
        results[name].update({k: v for k, v in extra.items() if k != "mean"})
    return results


def _check_sizes(kind: str, checkpoint: str, model: CoDANet, images: torch.Tensor, n: int, steps: int) -> None:
    """ValueError before any work when the grid or the removal steps cannot fit."""
    if kind == "localisation" and n * n > model.num_classes:
        raise ValueError(f"a {n}x{n} grid needs {n * n} distinct classes; {checkpoint} has {model.num_classes} "
                         f"(use --grid-size {int(model.num_classes ** 0.5)} or less)")
    if kind == "pixel-removal" and steps > images.shape[-1] * images.shape[-2]:
        raise ValueError(f"--steps {steps} is more than the {images.shape[-1] * images.shape[-2]} "
                         "pixels of an image")


def run_sanity(checkpoint: str, methods: list[str] | None = None, images: int = 64, out: str | None = None,
               seed: int = 0, progress: bool = True, device: str = "auto", method_options: dict | None = None,
               dataset: str | None = None, data_dir: str | None = None) -> dict:
    """Cascading randomisation (`sanity.cascading_randomisation`) on the first `images` test
    images; writes JSON and two figures (maps, scores) beside `out` when given."""
    from .sanity import cascading_randomisation, plot_sanity_maps, plot_sanity_scores
    model, x, y, test = load_for_evaluation(checkpoint, dataset, data_dir, images, select_device(device))
    result = cascading_randomisation(model, methods or FAST_METHODS, x, y, seed, method_options, progress)
    maps = result.pop("maps")
    summary = dict(kind="sanity", checkpoint=checkpoint, sha256=checkpoint_sha256(checkpoint), dataset=test.name,
                   images=len(x), model=model.name, **result)
    if out:
        write_json(out, summary)
        stem = os.path.splitext(out)[0]
        summary["figures"] = [plot_sanity_maps({**result, "maps": maps}, x.cpu(), stem + "_maps.png"),
                              plot_sanity_scores(result, stem + ".png", f"{model.name} on {test.name}: "
                                                 "cascading randomisation")]
    return summary


def format_sanity_table(summary: dict) -> str:
    """Markdown: Spearman / SSIM with the trained model's map after 1, half and all layers re-drawn."""
    depths = summary["depths"]
    picks = sorted({1, len(depths) // 2, depths[-1]})
    head = "| method | " + " | ".join(f"top {k}: Spearman / SSIM" for k in picks) + " | passes |"
    lines = [head, "|---" * (len(picks) + 2) + "|"]
    for name, s in summary["scores"].items():
        cells = " | ".join(f"{s['spearman'][k]:.2f} / {s['ssim'][k]:.2f}" for k in picks)
        lines.append(f"| {name} | {cells} | {'yes' if s['passes'] else 'no'} |")
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    """Markdown table: each method's mean [95 % interval], its difference to CoDA [interval]
    (bold where the interval excludes 0), and its cost."""
    kind = summary["kind"]
    stat = "localisation" if kind == "localisation" else "area"
    head = f"| method | {stat} [95 % CI] | − CoDA [95 % CI] |"
    head += " std | s / grid | evaluations / grid |" if kind == "localisation" else " prob. at 25 % | ms / image |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, r in summary["results"].items():
        value = r["mean"] if kind == "localisation" else r["area"]
        row = f"| {name} | {value:.3f} {_interval(r.get('ci95'))} | "
        diff = r.get("difference_to_CoDA")
        if diff:
            text = f"{diff['mean']:+.3f} {_interval(diff['ci95'])}"
            row += f"**{text}** |" if diff["significant"] else f"{text} |"
        else:
            row += "— |"
        if kind == "localisation":
            row += f" {r['std']:.3f} | {r['seconds_per_grid']:.2f} | {r['evaluations_per_grid']} |"
        else:
            row += f" {r['final']:.3f} | {summary['cost'][name]['ms_per_image']:.1f} |"
        lines.append(row)
    return "\n".join(lines + ([] if kind == "localisation" else ["", COST_NOTE]))


def _interval(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
