"""Fine-tuned vs from scratch on a folder of images (docs/finetuning.md, "Measured").

    python scripts/export_image_folder.py mnist_5k runs/mnist_5k_png
    python scripts/finetune_study.py runs/mnist_5k_png --out runs/finetune_study

For E in --epochs (default 1, 2, 4) trains the `finetune` recipe for E epochs (its own linear
schedule each time) from the shipped coda_cpu:fashion_mnist weights and from random weights, plus
one run that trains only the new class layer; prints a Markdown table and writes study.json.
Finished runs are skipped, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse
import os

from codanet.experiments.study import train_or_resume
from codanet.train import load_config_file, make_config
from codanet.utils.io import write_json


def runs(epochs: list[int], source: str) -> list[tuple[str, str, int, dict]]:
    """(name, start, epochs, config overrides) of every run of the study."""
    out = []
    for e in epochs:
        out.append((f"finetuned_e{e}", source, e, dict(init_from=source)))
        out.append((f"scratch_e{e}", "random", e, dict(init_from=None, model="coda_cpu")))
    last = max(epochs)
    out.append((f"class_layer_only_e{last}", source, last, dict(init_from=source, train_layers="last")))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", help="image folder (root/train/<class>, root/test/<class> or root/<class>)")
    p.add_argument("--out", default="runs/finetune_study")
    p.add_argument("--source", default="coda_cpu:fashion_mnist")
    p.add_argument("--epochs", default="1,2,4")
    args = p.parse_args()
    rows = []
    for name, start, epochs, overrides in runs([int(e) for e in args.epochs.split(",")], args.source):
        run_dir = os.path.join(args.out, name)
        cfg = make_config(dict(overrides, data_dir=args.data_dir, epochs=epochs, run_name=name),
                          base=load_config_file("finetune"))
        summary = train_or_resume(cfg, run_dir)       # read when finished; a stop ends the study, resumable
        rows.append(dict(run=name, start=start, epochs=epochs, train_layers=cfg["train_layers"],
                         test_top1=summary["test_accuracy"], train_seconds=summary["train_seconds"],
                         checkpoint=os.path.join(run_dir, "model.safetensors")))
        print(f"{name}: top-1 {summary['test_accuracy']:.4f}")
    write_json(os.path.join(args.out, "study.json"), dict(data_dir=args.data_dir, source=args.source, rows=rows))
    print("| start | layers trained | epochs | test top-1 | minutes |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['start']} | {r['train_layers']} | {r['epochs']} | {100 * r['test_top1']:.2f} % | "
              f"{r['train_seconds'] / 60:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
