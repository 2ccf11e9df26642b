"""Ship a trained run as package weights with a model card (JSON + Markdown).

    .venv/bin/python scripts/ship_weights.py RUN_DIR WEIGHTS_NAME --training-command "..." [--average CKPT ...]

Writes src/codanet/weights/<model>-<WEIGHTS_NAME>.{safetensors,json,md}: the float32 weights
(a codanet checkpoint: safetensors + JSON metadata, no optimiser state, no pickle), and a card
with the data set and split, class names, test top-1/top-5 (all test images, and the first
CARD_SUBSET for the CI test), T, b0, localisation and pixel-removal scores with the commands
that measure them, the training config and command, the codanet version and the sha256.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

import codanet
from codanet.data import load_dataset
from codanet.evaluate.runner import run as run_metric
from codanet.models.pretrained import WEIGHTS_DIR, sha256_of
from codanet.train import average_models, evaluate_accuracy, load_model, save_checkpoint
from codanet.utils.io import write_json, write_text

CARD_SUBSET = 1000                      # test images of the CI check (tests/test_pretrained.py)
GRIDS, REMOVAL_IMAGES, REMOVAL_STEPS = 50, 256, 32
LOCALISATION_METHODS = "CoDA,IxG,GradCAM"
REMOVAL_METHODS = "CoDA,IxG,GradCAM"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def metrics(spec: str) -> dict:
    """Localisation and pixel removal of the shipped file, with the commands that reproduce them."""
    out = {}
    loc = run_metric("localisation", spec, LOCALISATION_METHODS.split(","), grids=GRIDS, progress=False)
    out["localisation"] = dict(
        command=f"codanet evaluate localisation {spec} --grids {GRIDS} --methods {LOCALISATION_METHODS}",
        grid="3x3", grids=GRIDS,
        scores={m: dict(mean=round(r["mean"], 4), std=round(r["std"], 4)) for m, r in loc["results"].items()})
    rem = run_metric("pixel-removal", spec, REMOVAL_METHODS.split(","), images=REMOVAL_IMAGES,
                     steps=REMOVAL_STEPS, progress=False)
    out["pixel_removal"] = dict(
        command=f"codanet evaluate pixel-removal {spec} --images {REMOVAL_IMAGES} --steps {REMOVAL_STEPS} "
                f"--methods {REMOVAL_METHODS}",
        order="least important first", images=REMOVAL_IMAGES, steps=REMOVAL_STEPS,
        scores={m: dict(area=round(r["area"], 4), probability_at_25_percent=round(r["final"], 4))
                for m, r in rem["results"].items()})
    return out


def markdown(card: dict) -> str:
    loc = card["localisation"]
    rem = card["pixel_removal"]
    lines = [
        f"# Model card: `{card['model']}:{card['weights']}`", "",
        *([card["note"], ""] if card.get("note") else []),
        f"A CoDA-Net (`{card['model']}`, {card['parameters'] / 1e6:.2f} M parameters, T = {card['temperature']:g}, "
        f"b0 = {card['logit_bias']:.4f}) trained on {card['dataset']} ({card['train_split']}).", "",
        "```python", "import codanet",
        f"model = codanet.create_model({card['model']!r}, pretrained={card['weights']!r})", "```", "",
        "| | |", "|---|---|",
        f"| test split | {card['test_split']} |",
        f"| test top-1 | {100 * card['test_top1']:.2f} % |",
        f"| test top-5 | {100 * card['test_top5']:.2f} % |",
        f"| top-1 on the first {card['subset_images']} test images (CI check) | {100 * card['subset_top1']:.2f} % |",
        f"| classes | {', '.join(card['classes'])} |",
        f"| file | `{card['file']}` ({card['file_bytes'] / 1e6:.1f} MB, float32 safetensors) |",
        f"| sha256 | `{card['sha256']}` |",
        f"| codanet | {card['codanet_version']} (torch {card['torch_version']}) |", "",
        "## Interpretability (docs/evaluation.md)", "",
        f"Localisation on {loc['grids']} {loc['grid']} grids of confidently classified test images "
        f"(uniform: 0.111): `{loc['command']}`", "",
        "| method | mean ± std |", "|---|---|",
        *[f"| {m} | {s['mean']:.3f} ± {s['std']:.3f} |" for m, s in loc["scores"].items()], "",
        f"Pixel removal ({rem['order']}, {rem['images']} test images, {rem['steps']} steps up to 25 %): "
        f"`{rem['command']}`", "",
        "| method | area | target probability after 25 % removed |", "|---|---|---|",
        *[f"| {m} | {s['area']:.3f} | {s['probability_at_25_percent']:.3f} |" for m, s in rem["scores"].items()], "",
        "## Training", "",
        f"`{card['training_command']}` — {card['epochs']} epochs, {card['train_seconds'] / 60:.0f} min on "
        f"{card['trained_on']}. Test top-1 per epoch: "
        + ", ".join(f"{100 * h['test_top1']:.2f}" for h in card["history"]) + " %.", "",
        *([f"The shipped weights are the mean of the weights in {', '.join(card['averaged_from'])} "
           "(weight averaging, `scripts/ship_weights.py --average`).", ""] if card.get("averaged_from") else []),
        "Config:", "", "```json", json.dumps(card["config"], indent=1, sort_keys=True), "```", "",
    ]
    return "\n".join(lines)


def main() -> int:
    from codanet.utils.perf import keep_freed_memory
    keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("weights", help="weights name, e.g. fashion_mnist")
    p.add_argument("--training-command", required=True)
    p.add_argument("--average", nargs="+", metavar="CHECKPOINT",
                   help="ship the mean of these checkpoints' weights (e.g. RUN_DIR/checkpoints/step-*.safetensors "
                        "at the ends of the last epochs) instead of RUN_DIR/model.safetensors")
    p.add_argument("--note", help="a sentence printed under the card's title")
    args = p.parse_args()
    if args.average:
        model, state = average_models(args.average)
    else:
        model, state = load_model(os.path.join(args.run_dir, "model.safetensors"))
    model = model.float()
    cfg = state["config"]
    summary = json.load(open(os.path.join(args.run_dir, "summary.json")))
    history = summary.get("history") or state.get("history", [])
    name = f"{model.name}-{args.weights}.safetensors"
    path = os.path.join(WEIGHTS_DIR, name)
    os.makedirs(WEIGHTS_DIR, exist_ok=True)
    save_checkpoint(path, model, None, dict(config=cfg, dataset=state["dataset"], classes=state["classes"],
                                            history=history))
    test = load_dataset(cfg["dataset"], "test", cfg.get("data_dir"))
    full = evaluate_accuracy(model, test)
    subset = evaluate_accuracy(model, test.subset(range(CARD_SUBSET)))
    card = dict(
        model=model.name, weights=args.weights, file=name, sha256=sha256_of(path), file_bytes=os.path.getsize(path),
        dataset=cfg["dataset"], train_split=f"{summary['train_images']:,} training images",
        test_split=f"{len(test):,} test images", classes=state["classes"],
        test_top1=full["top1"], test_top5=full["top5"], subset_images=CARD_SUBSET, subset_top1=subset["top1"],
        temperature=model.temperature, logit_bias=model.logit_bias, parameters=model.num_parameters(),
        config=cfg, training_command=args.training_command, epochs=summary["epochs"],
        train_seconds=summary["train_seconds"], trained_on=cpu_name(), history=history,
        codanet_version=codanet.__version__, torch_version=torch.__version__.split("+")[0],
        card_written=datetime.date.today().isoformat())
    if args.average:
        card["averaged_from"] = [os.path.basename(c) for c in args.average]
    if args.note:
        card["note"] = args.note
    card.update(metrics(path))
    for block in ("localisation", "pixel_removal"):          # commands name the shipped weights
        card[block]["command"] = card[block]["command"].replace(path, f"{model.name}:{args.weights}")
    base = os.path.join(WEIGHTS_DIR, f"{model.name}-{args.weights}")
    write_json(base + ".json", card)
    write_text(base + ".md", markdown(card))
    print(f"wrote {path} ({card['file_bytes'] / 1e6:.1f} MB), {base}.json, {base}.md: test top-1 "
          f"{full['top1']:.4f}, top-5 {full['top5']:.4f}, CoDA localisation "
          f"{card['localisation']['scores']['CoDA']['mean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
