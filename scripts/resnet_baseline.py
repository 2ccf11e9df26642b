"""The post-hoc baseline of the paper's supplement: are a CoDA-Net's own contributions better than
the best post-hoc explanation of an ordinary ResNet of similar accuracy?  (docs/evaluation.md)

    .venv/bin/python scripts/resnet_baseline.py [--weights coda_cpu:fashion_mnist] [--epochs 4]
        [--resnet FILE] [--methods Grad,AbsGrad,IxG,IntGrad,DeepLIFT,GradCAM] [--grids 250]
        [--images 1000] [--out runs/resnet_baseline] [--so-far]

1. Trains ResNet-56 (CIFAR layout, codanet.models.posthoc.resnet56) on the CoDA model's data set
   with the binary cross-entropy a CoDA-Net is trained with (so both models' logits are read as
   sigmoid probabilities by every metric), Adam, lr 1e-3 decaying linearly to 2 %, batch 64,
   crop-and-flip.  Resumable: weights, optimiser and history are written after every epoch
   (atomically); an interrupted epoch is run again.  `--resnet FILE` loads trained weights instead
   (the 4-epoch Fashion-MNIST ResNet the docs measure ships in scripts/weights/, with its card).
2. Localisation on grids that both models classify correctly and confidently (the same grids for
   both, so the differences are paired), under both selection protocols: CoDA's contributions on
   the CoDA-Net against every post-hoc method on the ResNet.
3. Pixel removal (both orders, 128 steps) on the same test images, each model's own probability.

Writes OUT/resnet56.safetensors, OUT/training.json, OUT/<part>.json with its figure OUT/<part>.png,
OUT/tables.md and OUT/report.html (the HTML report; `codanet report OUT` rebuilds it); a part whose
JSON exists is skipped, and within a part each method's work is kept in OUT/kept/ as it is done,
grid by grid and batch by batch of maps (`runner.score`).  Every part names both models' weights by sha256.
`--so-far` measures nothing: it prints the localisation tables over the grids that CoDA and every
method have scored so far (OUT/kept/), while a run of hours goes on or after it was stopped.
"""
from __future__ import annotations

import argparse
import json
import os
from functools import cache, partial

import torch
import torch.nn.functional as F
from tqdm import tqdm

from codanet.data.augment import make_batch
from codanet.data.datasets import Dataset
from codanet.evaluate.localisation import confident_images, make_grids
from codanet.evaluate.runner import (
    checkpoint_sha256,
    draw,
    format_table,
    load_for_evaluation,
    method_costs,
    score,
    select_parts,
    so_far_table,
)
from codanet.explain.baselines import CoDA, make_methods
from codanet.models.posthoc import PlainClassifier, resnet56
from codanet.models.pretrained import sha256_of
from codanet.report import build_evaluation_report
from codanet.train.config import make_config
from codanet.train.setup import evaluate_accuracy, learning_rate, load_splits
from codanet.utils.io import atomic_path, resume_json, write_json, write_text

WEIGHTS = "resnet56.safetensors"                # OUT/WEIGHTS: the ResNet this script trains
# the 4-epoch ResNet the docs measure (card: scripts/weights/resnet56-fashion_mnist.md)
RESNET_FASHION_MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights",
                                    "resnet56-fashion_mnist.safetensors")


def _save(model: PlainClassifier, optimizer, history: list, out: str) -> None:
    from safetensors.torch import save_file
    with atomic_path(os.path.join(out, WEIGHTS)) as tmp:
        save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, tmp)
    with atomic_path(os.path.join(out, "optimizer.pt")) as tmp:
        torch.save(optimizer.state_dict(), tmp)
    write_json(os.path.join(out, "training.json"), dict(epochs_done=len(history), history=history))


def _restore(model: PlainClassifier, optimizer, out: str) -> list:
    """The history of the finished epochs (empty: start afresh), weights and optimiser restored."""
    path = os.path.join(out, "training.json")
    if not os.path.isfile(path):
        return []
    from safetensors.torch import load_file
    model.net.load_state_dict(load_file(os.path.join(out, WEIGHTS)))
    optimizer.load_state_dict(torch.load(os.path.join(out, "optimizer.pt"), weights_only=True))
    with open(path) as f:
        return json.load(f)["history"]


def train_resnet(dataset: str, epochs: int, out: str, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                 max_train_images: int | None = None) -> PlainClassifier:
    train_set, test_set = load_splits(make_config(dict(dataset=dataset, max_train_images=max_train_images)))
    torch.manual_seed(seed)
    model = new_resnet(train_set)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = _restore(model, optimizer, out)
    steps = len(train_set) // batch_size
    schedule = dict(lr=lr, schedule="linear", epochs=epochs, final_lr_fraction=0.02)
    for epoch in range(len(history), epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
        for step in tqdm(range(steps), desc=f"ResNet-56 epoch {epoch + 1}/{epochs}"):
            for group in optimizer.param_groups:        # linear decay to 2 % at the last step
                group["lr"] = learning_rate(schedule, epoch + step / steps)
            idx = order[step * batch_size:(step + 1) * batch_size]
            g = torch.Generator().manual_seed(seed * 1000003 + epoch * 100_003 + step)
            x = make_batch(train_set, idx, "crop_flip", g, crop_padding=2)                 # (B, C, H, W)
            y = F.one_hot(train_set.labels[idx], train_set.num_classes).float()        # (B, K)
            loss = F.binary_cross_entropy_with_logits(model.net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(dict(epoch=epoch + 1, **{f"test_{k}": v for k, v in evaluate_accuracy(model, test_set).items()}))
        print(f"epoch {epoch + 1}: test top-1 {history[-1]['test_top1']:.2%}", flush=True)
        _save(model, optimizer, history, out)
    return model.eval()


def load_resnet(path: str, test_set: Dataset) -> PlainClassifier:
    """A ResNet-56 for `test_set`'s classes with the trained weights in `path` (a state dict of `model.net`)."""
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ResNet-56 weights at {path}")
    model = new_resnet(test_set)
    model.net.load_state_dict(load_file(path))
    return model.eval()


def new_resnet(split: Dataset) -> PlainClassifier:
    """An untrained ResNet-56 for `split`'s classes and channels, named as they are."""
    model = resnet56(split.num_classes, split.channels)
    model.class_names = list(split.classes)
    return model


def joint_pools(a: dict, b: dict) -> dict:
    """Per class, the images both models classify correctly and confidently, ordered by the sum of
    their confidence ranks in the two models (the most confident for both first)."""
    out = {}
    for c in set(a) & set(b):
        rank_a, rank_b = {i: r for r, i in enumerate(a[c])}, {i: r for r, i in enumerate(b[c])}
        both = [i for i in a[c] if i in rank_b]
        if both:
            out[c] = sorted(both, key=lambda i: rank_a[i] + rank_b[i])
    return out


def both_confident(coda, resnet, images, labels) -> dict:
    """`joint_pools` of the two models on `images`: the localisation tables draw their 3x3 grids
    from it (`make_grids`, seed 0), so the same grids for CoDA and every method."""
    return joint_pools(confident_images(coda, images, labels), confident_images(resnet, images, labels))


def so_far(pools: dict, args, parts: list) -> str:
    """Markdown: per localisation table in `parts`, CoDA and every method on the grids all have
    scored so far in OUT/kept/ (measures nothing; `runner.so_far_table`)."""
    return "\n".join(line for kind, name, options in parts if kind == "localisation" for line in so_far_table(
        f"{name.replace('_', ' ')} (CoDA: {args.weights}; others: ResNet-56)", os.path.join(args.out, "kept"),
        args.methods.split(","), make_grids(pools, 3, args.grids, 0, options["selection"])))


def compare(kind: str, coda, resnet, methods: dict, images, labels, args, pools, **options) -> dict:
    """One table: CoDA's contributions on the CoDA-Net, every post-hoc method on the ResNet, scored
    on the same grids / images (paired intervals of the difference to CoDA); `pools()` gives
    `both_confident`'s pools, the same for every localisation table."""
    entries = {"CoDA": (coda, CoDA(coda)), **{name: (resnet, m) for name, m in methods.items()}}
    kept = os.path.join(args.out, "kept")       # each method's work as it is done: a stopped part resumes
    if kind == "localisation":
        cells = make_grids(pools(), 3, args.grids, 0, options["selection"])
        results = score(kind, entries, images, labels, grid_cells=cells, class_names=resnet.class_names,
                        keep_dir=kept)
    else:
        results = score(kind, entries, images[:args.images], labels[:args.images], most_first=options["most_first"],
                        keep_dir=kept)
    cost = method_costs({name: m for name, (_, m) in entries.items()}, images, labels)
    resnet_file = args.resnet or os.path.join(args.out, WEIGHTS)
    return dict(kind=kind, checkpoint=args.weights, sha256=checkpoint_sha256(args.weights), results=results,
                cost=cost, models=dict(CoDA=coda.name, others="resnet56"), resnet_sha256=sha256_of(resnet_file),
                **options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="coda_cpu:fashion_mnist")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--resnet", default=None, help="trained ResNet-56 weights to load instead of training one")
    p.add_argument("--methods", default="Grad,AbsGrad,IxG,IntGrad,DeepLIFT,GradCAM")
    p.add_argument("--parts", default="localisation,removal", help="groups or single tables (localisation_random)")
    p.add_argument("--grids", type=int, default=250)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--max-train-images", type=int, default=None, help="a quick check on fewer images")
    p.add_argument("--out", default="runs/resnet_baseline")
    p.add_argument("--so-far", action="store_true", help="print the localisation scored so far (measures nothing)")
    args = p.parse_args()
    try:
        parts = select_parts(args.parts, groups=("localisation", "removal"))
    except ValueError as e:
        p.error(str(e))
    coda, images, labels, test = load_for_evaluation(args.weights)
    if args.resnet:
        resnet = load_resnet(args.resnet, test)
    else:
        resnet = train_resnet(test.name, args.epochs, args.out, max_train_images=args.max_train_images)
    # both models' confident pools (a pass over the test set each): once, and only if a table needs them
    pools = cache(lambda: both_confident(coda, resnet, images, labels))
    if args.so_far:
        print(so_far(pools(), args, parts))
        return
    methods = make_methods(resnet, args.methods.split(","), images.shape[-1])
    tables = []
    for kind, name, options in parts:
        summary = resume_json(os.path.join(args.out, name + ".json"),
                              partial(compare, kind, coda, resnet, methods, images, labels, args, pools, **options))
        draw(summary, os.path.join(args.out, name + ".png"), f"CoDA ({args.weights}) vs ResNet-56: {name}")
        tables.append(f"## {name} (CoDA: {args.weights}, sha256 {str(summary['sha256'])[:12]}; others: ResNet-56, "
                      f"sha256 {str(summary.get('resnet_sha256'))[:12]})\n\n"
                      + format_table(summary))
    write_text(os.path.join(args.out, "tables.md"), "\n\n".join(tables) + "\n")
    print("\n\n".join(tables))
    print(f"wrote {os.path.join(args.out, 'tables.md')} and {build_evaluation_report(args.out)}")


if __name__ == "__main__":
    main()
