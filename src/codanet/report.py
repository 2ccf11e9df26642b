"""`codanet report RUN_DIR`: one self-contained HTML page (images embedded) for a training run.

Sections: accuracy; contribution maps (paper Fig. 2 layout); a Fig. 8-style comparison (one image
per row, one attribution method per column, red positive / blue negative); a Fig. 7-style 2x2
multi-image grid with the contribution map for each of its classes; localisation bars and
pixel-removal curves (from `codanet evaluate ... --json RUN_DIR/eval/<metric>.json`); the
T and lambda studies when RUN_DIR/temperature/ or RUN_DIR/lam/ exist; the cost of each method.
A folder of evaluations without a training run (scripts/comparison.py's OUT/) gets a page of its
tables (95 % intervals, differences to CoDA) and figures alone.
"""
from __future__ import annotations

import base64
import html
import json
import os
from typing import TYPE_CHECKING

import torch

from .explain.plot import new_figure, save_figure, show_contributions, show_image
from .utils.io import write_text

if TYPE_CHECKING:
    from .data.datasets import Dataset
    from .explain.baselines import Attribution
    from .models import CoDANet

COMPARE_METHODS = ["CoDA", "Grad", "IxG", "IntGrad", "DeepLIFT", "GradCAM", "Occ5", "Occ9"]


def _img_tag(path: str, width: str = "100%") -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:{width}">'


def comparison_figure(model: CoDANet, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                      methods: dict[str, Attribution], path: str) -> str:
    """Fig. 8 style: rows = images, columns = input + one map per method (for the true class)."""
    maps = {name: m.attribute(images, target=labels) for name, m in methods.items()}
    rows, cols = len(images), len(methods) + 1
    fig, axes = new_figure(rows, cols, figsize=(1.35 * cols, 1.4 * rows), squeeze=False)
    for i in range(rows):
        show_image(axes[i, 0], images[i])
        axes[i, 0].set_ylabel(class_names[int(labels[i])], fontsize=7)
        for j, name in enumerate(methods, 1):
            show_contributions(axes[i, j], maps[name][i])
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def multi_image_figure(model: CoDANet, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                       path: str, seed: int = 1) -> str | None:
    """Fig. 7 style: a 2x2 grid of images of different classes, the contribution map per class."""
    from .evaluate.localisation import confident_images, grid_image, make_grids
    pools = confident_images(model, images, labels)
    if len(pools) < 4:
        return None
    cells = make_grids(pools, 2, 1, seed)[0]
    g = grid_image(images, cells, 2)[None]
    targets = torch.tensor([c for c, _ in cells])
    maps = model.explain(g.expand(4, -1, -1, -1).contiguous(), target=targets)["contributions"]
    scale = float(maps.abs().max()) or 1.0
    fig, axes = new_figure(1, 5, figsize=(11, 2.5))
    show_image(axes[0], g[0])
    axes[0].set_title("2x2 grid", fontsize=8)
    for k, (c, _) in enumerate(cells):
        show_contributions(axes[k + 1], maps[k], scale)
        axes[k + 1].set_title(f"class: {class_names[c]}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _table(rows, header) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
    return "\n".join(out) + "</table>"


def build_report(run_dir: str, num_compare: int = 6, methods: list[str] | None = None) -> str:
    """Write RUN_DIR/report.html: accuracy, contribution maps, the methods compared, the metrics
    found in RUN_DIR/eval/, the T and lambda studies and the cost per method; returns its path."""
    from .evaluate.runner import checkpoint_test_split
    summary_path = os.path.join(run_dir, "summary.json")
    model_path = os.path.join(run_dir, "model.safetensors")
    if not os.path.isfile(summary_path) and (found := evaluation_folders(run_dir)):
        return build_evaluation_report(run_dir, found)
    for p in (summary_path, model_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} missing: is {run_dir} a finished training run (codanet train / make demo) "
                                    "or a folder of evaluations (scripts/comparison.py's output)?")
    with open(summary_path) as f:
        summary = json.load(f)
    model, _, test = checkpoint_test_split(model_path)
    parts = [f"<h1>CoDA-Net report: {html.escape(run_dir)}</h1>", _headline(model, test.name, summary)]
    parts += _figures(model, test, run_dir, num_compare, methods or COMPARE_METHODS)
    eval_dir = os.path.join(run_dir, "eval")
    metric_parts, costs = _metrics(eval_dir, _evaluations(eval_dir))
    parts += metric_parts + _studies(run_dir) + _costs(costs)
    return _write_page(run_dir, parts)


def evaluation_folders(folder: str) -> list[tuple[str, list[tuple[str, dict]]]]:
    """(folder, its evaluations) for `folder` and each subfolder that holds evaluation JSONs
    (localisation, pixel removal, sanity); every JSON is read once."""
    subs = sorted(os.path.join(folder, d) for d in os.listdir(folder)) if os.path.isdir(folder) else []
    return [(d, found) for d in [folder] + subs if (found := _evaluations(d))]


def build_evaluation_report(folder: str, found: list | None = None) -> str:
    """Write FOLDER/report.html from evaluation JSONs alone (no training run): one section per
    folder that holds them, e.g. scripts/comparison.py's OUT/<weights>/; returns its path.
    `found`: `evaluation_folders(folder)` when the caller has already read it."""
    parts = [f"<h1>CoDA-Net evaluations: {html.escape(folder)}</h1>"]
    costs: dict = {}
    for d, evaluations in found if found is not None else evaluation_folders(folder):
        metric_parts, found_costs = _metrics(d, evaluations)
        heading = [] if d == folder else [f"<h2>{html.escape(os.path.relpath(d, folder))}</h2>"]
        parts += heading + metric_parts       # FOLDER's own JSONs (evaluation_folders lists it as is) need none
        costs.update(found_costs)
    return _write_page(folder, parts + _costs(costs))


def _costs(costs: dict) -> list[str]:
    if not costs:
        return []
    from .evaluate.runner import COST_NOTE
    return ["<h2>Cost per method</h2>", f"<p>{html.escape(COST_NOTE)}</p>", _table(
        [(m, f"{c['ms_per_image']:.1f}", c.get("evaluations_per_image", "—")) for m, c in costs.items()],
        ["method", "ms / image", "model evaluations / image"])]


def _write_page(folder: str, parts: list[str]) -> str:
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>CoDA-Net report</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    out = os.path.join(folder, "report.html")
    write_text(out, page)
    return out


def _headline(model: CoDANet, dataset: str, summary: dict) -> str:
    return (f"<p>Model <b>{model.name}</b> ({model.num_parameters():,} parameters, {model.nonlinearity.upper()}, "
            f"T = {model.temperature:g}) trained on <b>{html.escape(dataset)}</b>: test accuracy "
            f"<b>{100 * summary['test_accuracy']:.2f} %</b> "
            f"(top-5 {100 * summary.get('test_top5', float('nan')):.2f} %) "
            f"after {summary['epochs']:.2f} epochs, {summary['train_seconds']:.0f} s, "
            f"{summary['images_per_second']:.0f} training images/s.</p>")


def _figures(model: CoDANet, test: Dataset, run_dir: str, num_compare: int, methods: list[str]) -> list[str]:
    """The demo's contribution maps, the methods compared on test images, the multi-image grid."""
    from .data import make_batch
    from .explain.baselines import make_methods
    fig_dir = os.path.join(run_dir, "report_files")
    os.makedirs(fig_dir, exist_ok=True)
    parts = []
    maps_png = os.path.join(run_dir, "contribution_maps.png")
    if os.path.isfile(maps_png):
        parts += ["<h2>Contribution maps (paper Fig. 2 layout)</h2>",
                  "<p>Per image: input with the true class, the contributions to the predicted class and to "
                  "the strongest other class. Red: positive, blue: negative (symmetric scale).</p>", _img_tag(maps_png)]
    n = min(len(test), 2000)
    images = make_batch(test, range(n), "none", None, train=False)
    labels = test.labels[:n]
    compare = comparison_figure(model, images[:num_compare], labels[:num_compare], test.classes,
                                make_methods(model, methods, images.shape[-1]),
                                os.path.join(fig_dir, "comparison.png"))
    parts += ["<h2>Attribution methods compared (paper Fig. 8 style)</h2>",
              "<p>One test image per row, one method per column, all for the true class.</p>", _img_tag(compare)]
    multi = multi_image_figure(model, images, labels, test.classes, os.path.join(fig_dir, "multi_image.png"))
    if multi:
        parts += ["<h2>Multi-image grid (paper Fig. 7 style)</h2>",
                  "<p>The contributions for each class of a 2x2 grid; each should light up its own cell.</p>",
                  _img_tag(multi)]
    return parts


TITLES = {"localisation": "Localisation (eq. 11)", "pixel-removal": "Pixel removal", "sanity": "Sanity check"}


def _evaluations(folder: str) -> list[tuple[str, dict]]:
    """(file name, content) of the evaluation JSONs in `folder` (localisation, pixel removal, sanity)."""
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            path = os.path.join(folder, name)
            try:
                with open(path) as f:
                    ev = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path} is not a JSON file ({e})") from None
            if isinstance(ev, dict) and ev.get("kind") in TITLES:
                found.append((name, ev))
    return found


def _metrics(eval_dir: str, evaluations: list[tuple[str, dict]]) -> tuple[list[str], dict]:
    """Tables and figures of the evaluations read from `eval_dir` (`_evaluations`; eval/*.json of
    `codanet evaluate ... --json`), with 95 % intervals where measured; the methods' costs."""
    parts: list[str] = []
    costs: dict = {}
    for name, ev in evaluations:
        js = os.path.join(eval_dir, name)
        costs.update(ev.get("cost", {}))
        units = len(_first(ev).get("grid_means") or _first(ev).get("areas") or [])      # what was resampled
        order = f"{'most' if _first(ev).get('most_first') else 'least'} important first"
        detail = [ev.get("selection") or (order if ev["kind"] == "pixel-removal" else ""),
                  f"{units} {'grids' if ev['kind'] == 'localisation' else 'images'}" if units else ""]
        parts.append(f"<h2>{TITLES[ev['kind']]} <small>({', '.join([html.escape(name)] + [d for d in detail if d])}; "
                     f"weights sha256 {str(ev.get('sha256') or '?')[:12]})</small></h2>")
        parts.append(_metric_table(ev))
        coda = ev["results"].get("CoDA") if ev["kind"] == "localisation" else None
        if coda:
            parts.append("<p>Per class (CoDA): " + ", ".join(
                f"{html.escape(k)} {v:.2f}" for k, v in coda["per_class"].items()) + "</p>")
        for png in (os.path.splitext(js)[0] + ".png", os.path.splitext(js)[0] + "_maps.png"):
            if os.path.isfile(png):
                parts.append(_img_tag(png, "60%"))
    return parts, costs


def _first(ev: dict) -> dict:
    return next(iter(ev.get("results", {}).values()), {})


def _metric_table(ev: dict) -> str:
    """One evaluation as a table: value [95 % CI], difference to CoDA [95 % CI] (bold where the
    interval excludes 0); the sanity check's Spearman correlations."""
    def ci(c):
        return f" [{c[0]:.3f}, {c[1]:.3f}]" if c else ""

    if ev["kind"] == "sanity":
        rows = [(m, ", ".join(f"{v:.2f}" for v in s["spearman"]), "yes" if s["passes"] else "no")
                for m, s in ev["scores"].items()]
        header = f"Spearman with the trained map, 0..{ev['depths'][-1]} layers re-drawn"
        return _table(rows, ["method", header, "passes"])
    key = "mean" if ev["kind"] == "localisation" else "area"
    rows = []
    for m, r in ev["results"].items():
        d = r.get("difference_to_CoDA")
        diff = f"{d['mean']:+.3f}{ci(d['ci95'])}{' *' if d['significant'] else ''}" if d else "—"
        rows.append((m, f"{r[key]:.3f}{ci(r.get('ci95'))}", diff))
    return _table(rows, ["method", f"{key} [95 % CI]", "minus CoDA [95 % CI] (* interval excludes 0)"])


def _studies(run_dir: str) -> list[str]:
    """The figures of the T and lambda studies found in RUN_DIR/temperature and RUN_DIR/lam."""
    parts = []
    for folder, title in (("temperature", "Temperature study (paper Fig. 4 and Fig. 6, right)"),
                          ("lam", "Lambda study (eq. 10)")):
        d = os.path.join(run_dir, folder)
        pngs = sorted(f for f in os.listdir(d) if f.endswith(".png")) if os.path.isdir(d) else []
        if pngs:
            parts += [f"<h2>{title}</h2>"] + [_img_tag(os.path.join(d, p), "80%") for p in pngs]
    return parts
