"""The paper's central comparison on the shipped models, resumable (docs/paper-vs-codanet.md).

    .venv/bin/python scripts/comparison.py [--weights coda_cpu:fashion_mnist,coda_cpu:mnist_5k,PATH.safetensors]
        [--parts localisation,removal,sanity] [--methods all] [--grids 250] [--images 1000]
        [--out runs/comparison] [--join OUT1,OUT2,...]

For every weights: localisation on `--grids` 3x3 grids under both selection protocols (most
confident, random), pixel removal in both orders at 128 steps over `--images` test images, and the
cascading-randomisation sanity check; each as OUT/<weights>/<part>.json + .png (the runner's files)
and every table, with 95 % intervals, in OUT/tables.md and OUT/report.html (`codanet report OUT`).
`--parts` takes groups (localisation, removal, sanity) or single tables (localisation_random, ...).
A part whose JSON exists is skipped, and within a part each method's work is kept in
OUT/<weights>/kept/ as it is done (grid by grid, batch by batch of maps), so the script can be
stopped at any point and run again until everything is measured.
`--join` measures nothing: it unites the methods that earlier runs measured on the same weights,
part and units into OUT (`runner.join_summaries`), so a slow method can run apart.  `--so-far`
measures nothing either: it prints the localisation tables over the grids every method has
scored so far (kept results and journals), paired with CoDA there, while a run of hours goes on
or after it was stopped.
"""
from __future__ import annotations

import argparse
import json
import os
from functools import partial

from codanet.evaluate.localisation import confident_images, make_grids
from codanet.evaluate.runner import (
    ALL_METHODS,
    FAST_METHODS,
    PARTS,
    format_sanity_table,
    format_table,
    join_summaries,
    load_for_evaluation,
    run,
    run_sanity,
    save,
    select_parts,
    so_far_table,
)
from codanet.report import build_evaluation_report
from codanet.utils.io import resume_json, write_text


def measure(weights: str, kind: str, options: dict, args, out: str) -> dict:
    methods = args.methods.split(",") if args.methods != "all" else list(ALL_METHODS)
    if kind == "sanity":
        return run_sanity(weights, [m for m in methods if m in FAST_METHODS or m == "AbsGrad"],
                          images=args.sanity_images, out=out)
    kept = os.path.join(os.path.dirname(out), "kept")      # each method's finished work (runner.score)
    size = dict(grids=args.grids) if kind == "localisation" else dict(images=args.images, steps=128)
    return run(kind, weights, methods, out=out, keep_dir=kept, **size, **options)


def weights_folder(weights: str) -> str:
    """OUT's subfolder for `weights`: a shipped name as `model-tag`; a checkpoint path, which may
    name any trained model (a study's, say), as its path with separators as dashes, less the suffix:
    `runs/t4/T49/model.safetensors` -> `runs-t4-T49-model`."""
    stem = weights.removesuffix(".safetensors").removesuffix(".pt").strip("/")
    return stem.replace(os.sep, "-").replace(":", "-")


def join(folders: list[str], weights: str, name: str, out: str) -> dict:
    """OUT/<weights>/<part>.json from the same file in each of `folders` that has it."""
    sources = [p for d in folders if os.path.isfile(p := os.path.join(d, weights_folder(weights), name + ".json"))]
    if not sources:
        raise FileNotFoundError(f"no {name}.json for {weights} in {', '.join(folders)}")
    summaries = []
    for path in sources:
        with open(path) as f:
            summaries.append(json.load(f))
    summary = join_summaries(summaries, sources)
    save(summary, out)
    return summary


def so_far(weights: str, methods: list[str], grids: int, out: str) -> str:
    """Markdown: per selection protocol, CoDA and `methods` on the grids all have scored so far
    (draws the grids as `run` does; measures nothing else)."""
    model, images, labels, _ = load_for_evaluation(weights)
    pools = confident_images(model, images, labels)
    kept = os.path.join(out, weights_folder(weights), "kept")
    return "\n".join(line for name, options in PARTS["localisation"][1] for line in so_far_table(
        f"{weights}: {name.replace('_', ' ')}", kept, methods,
        make_grids(pools, 3, grids, selection=options["selection"])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="coda_cpu:fashion_mnist,coda_cpu:mnist_5k")
    p.add_argument("--parts", default="localisation,removal,sanity")
    p.add_argument("--methods", default="all")
    p.add_argument("--grids", type=int, default=250)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--sanity-images", type=int, default=64)
    p.add_argument("--out", default="runs/comparison")
    p.add_argument("--join", default="", help="comma-separated earlier OUT folders to unite (measures nothing)")
    p.add_argument("--so-far", action="store_true", help="print the localisation scored so far (measures nothing)")
    args = p.parse_args()
    if args.so_far:
        methods = args.methods.split(",") if args.methods != "all" else list(ALL_METHODS)
        for weights in args.weights.split(","):
            print(so_far(weights, methods, args.grids, args.out))
        return
    try:
        parts = select_parts(args.parts)
    except ValueError as e:
        p.error(str(e))
    tables = []
    for weights in args.weights.split(","):
        for kind, name, options in parts:
            out = os.path.join(args.out, weights_folder(weights), name + ".json")
            if args.join:
                summary = join(args.join.split(","), weights, name, out)
            else:
                summary = resume_json(out, partial(measure, weights, kind, options, args, out))
            table = format_sanity_table(summary) if kind == "sanity" else format_table(summary)
            tables += [f"## {weights}: {name.replace('_', ' ')} (sha256 {summary['sha256'][:12]})", "", table, ""]
            print("\n".join(tables[-4:]), flush=True)
    write_text(os.path.join(args.out, "tables.md"), "\n".join(tables))
    print(f"wrote {os.path.join(args.out, 'tables.md')} and {build_evaluation_report(args.out)}")


if __name__ == "__main__":
    main()
