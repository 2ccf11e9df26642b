"""The `codanet` command line.  Bad input exits with code 2 and one clear line, no traceback."""
from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codanet", description="Convolutional Dynamic Alignment Networks")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="benchmarks (print a table, write JSON)")
    bsub = b.add_subparsers(dest="bench", required=True)
    bl = bsub.add_parser("layers", help="the nine coda_s layers: efficient vs materialised reference")
    bl.add_argument("--batch", type=int, default=64)
    bl.add_argument("--repeats", type=int, default=3)
    bl.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    bl.add_argument("--json", help="write the results here")

    t = sub.add_parser("train", help="train a CoDA-Net from a config file (configs/*.json)")
    t.add_argument("config", help="JSON config file (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set epochs=5 --set lr=1e-3")
    t.add_argument("--out", help="output folder (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="top-1/top-5 accuracy of a checkpoint on its test split")
    e.add_argument("checkpoint")
    e.add_argument("--data-dir", default=None, help="override the dataset folder")
    e.add_argument("--json", help="write the result here")

    m = sub.add_parser("models", help="list the registered models with their parameter counts")
    m.add_argument("--counts", action="store_true")

    d = sub.add_parser("demo", help="the main job: train the CPU preset on Fashion-MNIST, explain, report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--minutes", type=float, default=None, help="training budget (default: config)")
    return p


def _train(args) -> int:
    import os
    from .train import load_config_file, make_config, parse_set, train
    cfg = make_config(parse_set(args.set), base=load_config_file(args.config))
    out = args.out or os.path.join("runs", cfg["name"])
    if args.resume and not os.path.isdir(out):
        raise FileNotFoundError(f"--resume: run folder {out} does not exist")
    summary = train(cfg, out, resume=args.resume, progress=not args.quiet)
    if summary.get("stopped_by") == "signal":
        return 130
    print(f"test accuracy {summary['test_accuracy']:.4f} (top-5 {summary['test_top5']:.4f}) after "
          f"{summary['epochs']:.2f} epochs, {summary['train_seconds']:.0f} s; results in {out}")
    return 0


def _evaluate(args) -> int:
    from .train import evaluate_accuracy, load_model
    from .data import load_dataset
    from .utils.io import write_json
    model, state = load_model(args.checkpoint)
    cfg = state.get("config") or {}
    if "dataset" not in cfg:
        raise ValueError(f"{args.checkpoint} does not record its dataset")
    test = load_dataset(cfg["dataset"], "test", args.data_dir or cfg.get("data_dir"))
    if test.num_classes != model.num_classes or test.channels != model.in_channels:
        raise ValueError(f"{args.checkpoint}: model has {model.num_classes} classes / {model.in_channels} "
                         f"channels, dataset {test.name} has {test.num_classes} / {test.channels}")
    metrics = evaluate_accuracy(model, test, progress=True)
    result = dict(checkpoint=args.checkpoint, dataset=test.name, images=len(test), **metrics)
    print(f"{test.name} test: top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} ({len(test)} images)")
    if args.json:
        write_json(args.json, result)
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .utils.perf import keep_freed_memory
    keep_freed_memory()
    try:
        if args.command == "bench":
            from .bench import layers
            return layers.main(args)
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "models":
            from . import create_model, list_models
            for name in list_models():
                line = name
                if args.counts:
                    line += f"\t{create_model(name).num_parameters() / 1e6:.2f} M"
                print(line)
            return 0
        if args.command == "demo":
            from .demo import main as demo_main
            return demo_main(args)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        print(f"codanet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"codanet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
