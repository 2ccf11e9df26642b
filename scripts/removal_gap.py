"""Does T, lambda or longer training move CoDA's pixel-removal gap to occlusion? (docs/paper-vs-codanet.md)

    .venv/bin/python scripts/comparison.py --weights A.safetensors,B.safetensors,... --parts removal \
        --methods CoDA,Occ5 --images 250 --out OUT
    .venv/bin/python scripts/removal_gap.py OUT [--rival Occ5]

Reads every weights folder of such a run and writes OUT/gap_<rival>.md, one row per model -- its
T, lambda, epochs, augmentation and last test accuracy (from the checkpoint), CoDA's removal area
and the paired difference rival - CoDA with its 95 % interval in both orders -- and
OUT/gap_<rival>.png, the differences with their intervals.  Least important first a positive
difference means the rival ranks pixels better; most important first a negative one does.
"""
from __future__ import annotations

import argparse
import json
import os

from codanet.explain.plot import new_figure, save_figure
from codanet.models.pretrained import resolve_weights
from codanet.train.checkpoint import read_state
from codanet.utils.io import write_text

ORDERS = ("removal_least_first", "removal_most_first")


def model_row(folder: str, rival: str) -> dict | None:
    """One model's settings and both orders' CoDA area and rival - CoDA; None without both JSONs."""
    paths = [os.path.join(folder, order + ".json") for order in ORDERS]
    if not all(os.path.isfile(p) for p in paths):
        return None
    orders = []
    for path in paths:
        with open(path) as f:
            orders.append(json.load(f))
    results = [s["results"] for s in orders]
    if any(rival not in r for r in results):
        return None
    checkpoint = orders[0]["checkpoint"]
    state, _ = read_state(resolve_weights(checkpoint))                    # a shipped name or the path itself
    cfg = state["config"]
    return dict(weights=checkpoint, sha256=orders[0]["sha256"][:12], T=float(cfg["temperature"]),
                lam=float(cfg.get("lam", 0.0)), epochs=cfg["epochs"], augment=cfg.get("augment", "none"),
                accuracy=state["history"][-1]["test_top1"] if state.get("history") else None,
                images=len(results[0]["CoDA"]["areas"]),
                coda=[r["CoDA"]["area"] for r in results],
                rival=[r[rival]["area"] for r in results],
                diff=[r[rival]["difference_to_CoDA"] for r in results])


def label(row: dict) -> str:
    text = f"T={row['T']:g}, {row['epochs']} ep"
    text += f", λ={row['lam']:g}" if row["lam"] else ""
    return text + (f", {row['augment']}" if row["augment"] != "none" else "")


def table(rows: list[dict], rival: str) -> str:
    lines = [f"| model | accuracy | images | least first: CoDA area | {rival} − CoDA [95 % CI] | most first: CoDA area "
             f"| {rival} − CoDA [95 % CI] | sha256 |", "|---" * 8 + "|"]
    for r in rows:
        cells = [f"{r['coda'][i]:.3f} | {r['diff'][i]['mean']:+.3f} [{r['diff'][i]['ci95'][0]:+.3f}, "
                 f"{r['diff'][i]['ci95'][1]:+.3f}]" for i in range(2)]
        acc = f"{100 * r['accuracy']:.2f} %" if r["accuracy"] is not None else "—"
        lines.append(f"| {label(r)} | {acc} | {r['images']} | {cells[0]} | {cells[1]} | `{r['sha256']}` |")
    return "\n".join(lines)


def figure(rows: list[dict], rival: str, path: str) -> str:
    """Forest plot: rival - CoDA with its interval per model, one panel per order, 0 marked."""
    fig, axes = new_figure(1, 2, figsize=(10, 0.45 * len(rows) + 1.2), squeeze=False)
    y = list(range(len(rows)))[::-1]
    titles = (f"least important first (> 0: {rival} better)", f"most important first (< 0: {rival} better)")
    for i, (ax, title) in enumerate(zip(axes[0], titles)):
        mean = [r["diff"][i]["mean"] for r in rows]
        err = [[m - r["diff"][i]["ci95"][0] for m, r in zip(mean, rows)],
               [r["diff"][i]["ci95"][1] - m for m, r in zip(mean, rows)]]
        ax.errorbar(mean, y, xerr=err, fmt="o", color="tab:blue", capsize=3)
        ax.axvline(0, color="tab:red", lw=1)
        ax.set_yticks(y, [label(r) for r in rows] if i == 0 else [""] * len(rows), fontsize=8)
        ax.set_xlabel(f"{rival} − CoDA, removal area (95 % CI)", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="a scripts/comparison.py --parts removal folder")
    p.add_argument("--rival", default="Occ5")
    args = p.parse_args()
    if not os.path.isdir(args.out):
        p.error(f"{args.out} is not a folder")
    found = [model_row(os.path.join(args.out, d), args.rival) for d in sorted(os.listdir(args.out))]
    rows = sorted((r for r in found if r), key=lambda r: (r["augment"] != "none", r["epochs"], r["lam"], r["T"]))
    if not rows:
        p.error(f"no model in {args.out} has both removal orders with CoDA and {args.rival}")
    text = table(rows, args.rival)
    write_text(os.path.join(args.out, f"gap_{args.rival}.md"), text + "\n")
    print(text)
    print("wrote", figure(rows, args.rival, os.path.join(args.out, f"gap_{args.rival}.png")))


if __name__ == "__main__":
    main()
